//! Conformance cases: berth acts only on what berth created. Each needs the fixture's
//! [`ForeignObjects`](super::ForeignObjects) hook to make an object berth did not create.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

use super::Fixture;
use crate::{
    tar_stream_from_bytes, EnvironmentId, ErrorKind, ExecRequest, LabelSelector, Result, Stdin,
};

/// A one-file tar archive, so that a refused copy-in is refused for its target, not its input.
fn small_archive() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(6);
    tar.append_data(&mut h, "pwned", &b"pwned\n"[..])
        .expect("append");
    tar.into_inner().expect("tar")
}

fn assert_refused<T>(what: &str, given: &str, result: Result<T>) {
    match result {
        Ok(_) => panic!("{what} on {given:?}, an object berth did not create, succeeded"),
        Err(e) => {
            assert_eq!(
                e.kind(),
                ErrorKind::NotFound,
                "{what} on {given:?}: expected NotFound, got {e} ({e:?})"
            );
            assert!(
                e.to_string().contains("not a berth environment"),
                "{what} on {given:?}: the message should say it is not a berth environment: {e}"
            );
        }
    }
}

/// A container or Job berth did not create (no `app.kubernetes.io/managed-by=berth` label) is
/// refused by exec, streaming exec, copy in, copy out, connect_port and stop, whether named by
/// its name or another id (a full id, an id prefix), with NotFound "not a berth environment";
/// it keeps running, untouched, and `list` never shows it.
pub async fn foreign_objects_are_refused_and_left_alone(fx: &Fixture) {
    let foreign = fx.foreign.as_ref().expect(
        "this fixture cannot make foreign objects: give it a ForeignObjects hook (Fixture::with_foreign)",
    );
    let ids = foreign.create(&fx.image).await;
    let name = ids
        .first()
        .expect("the hook returns the object's name")
        .clone();
    let outcome = AssertUnwindSafe(async {
        for given in &ids {
            let env = EnvironmentId::new(given.clone())
                .unwrap_or_else(|e| panic!("{given:?} is not a valid environment id: {e}"));
            assert_refused(
                "exec",
                given,
                fx.engine
                    .exec(&env, ExecRequest::shell("touch /tmp/pwned"))
                    .await,
            );
            assert_refused(
                "exec_streaming",
                given,
                fx.engine
                    .exec_streaming(&env, ExecRequest::new(["cat"]).with_stdin(Stdin::Piped))
                    .await,
            );
            assert_refused(
                "copy_in",
                given,
                fx.engine
                    .copy_in(&env, "/tmp", tar_stream_from_bytes(small_archive()))
                    .await,
            );
            assert_refused("copy_out", given, fx.engine.copy_out(&env, "/etc").await);
            assert_refused(
                "connect_port",
                given,
                fx.engine.connect_port(&env, 80).await,
            );
            assert_refused("stop", given, fx.engine.stop(&env).await);
            assert!(
                foreign.is_alive(&name).await,
                "the foreign object {name} did not survive berth's calls on {given:?}"
            );
        }
        let listed = fx
            .engine
            .list(&LabelSelector::all())
            .await
            .unwrap_or_else(|e| panic!("list failed: {e}"));
        assert!(
            listed.iter().all(|e| e.id.as_str() != name),
            "list shows the foreign object {name}"
        );
    })
    .catch_unwind()
    .await;
    foreign.remove(&name).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A workspace volume (a Docker volume, a claim) berth did not create is refused by
/// `remove_volume` with NotFound "not a berth volume", and stays where it is.
pub async fn foreign_volumes_are_refused_and_left_alone(fx: &Fixture) {
    let foreign = fx.foreign.as_ref().expect(
        "this fixture cannot make foreign objects: give it a ForeignObjects hook (Fixture::with_foreign)",
    );
    let name = foreign.create_volume().await;
    let outcome = AssertUnwindSafe(async {
        match fx.engine.remove_volume(&name).await {
            Ok(outcome) => panic!(
                "remove_volume of {name}, a volume berth did not create, succeeded: {outcome:?}"
            ),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
                assert!(
                    e.to_string().contains("not a berth volume"),
                    "the message should say it is not a berth volume: {e}"
                );
            }
        }
        assert!(
            foreign.volume_exists(&name).await,
            "the foreign volume {name} did not survive remove_volume"
        );
    })
    .catch_unwind()
    .await;
    foreign.remove_volume(&name).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
