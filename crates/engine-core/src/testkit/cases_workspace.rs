//! Conformance cases: workspaces that outlive an environment (host paths, volumes,
//! sub-paths) and the volumes berth lists and removes.

use std::time::{Duration, Instant};

use super::cases::run;
use super::Fixture;
use crate::{ExecRequest, LabelSelector, RemoveOutcome, SessionId, Workspace};

/// A host-path workspace written by one environment is read by the next.
pub async fn host_path_workspace_persists_across_environments(fx: &Fixture) {
    let dir = std::env::temp_dir().join(format!("berth-ws-{}", SessionId::generate()));
    std::fs::create_dir_all(&dir).expect("create workspace dir");
    let workspace = Workspace::HostPath { path: dir.clone() };
    let first = fx.spec().with_workspace(workspace.clone());
    fx.with_env(&first, |env| async move {
        let out = run(fx, &env, ExecRequest::shell("echo kept > /workspace/note")).await;
        assert!(out.status.success(), "{}", out.stderr_lossy());
    })
    .await;
    let second = fx.spec().with_workspace(workspace);
    fx.with_env(&second, |env| async move {
        let out = run(fx, &env, ExecRequest::new(["cat", "/workspace/note"])).await;
        assert_eq!(out.stdout_lossy(), "kept\n");
    })
    .await;
    let on_host = std::fs::read_to_string(dir.join("note")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(on_host, "kept\n", "the file is on the host path");
}

/// A named volume workspace written by one environment is read by the next, and
/// `remove_volume` removes it (twice is fine).
pub async fn volume_workspace_persists_across_environments(fx: &Fixture) {
    let name = format!("berth-test-{}", SessionId::generate());
    let workspace = Workspace::Volume {
        name: name.clone(),
        sub_path: None,
    };
    let first = fx.spec().with_workspace(workspace.clone());
    let second = fx.spec().with_workspace(workspace);
    let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async {
        fx.with_env(&first, |env| async move {
            let out = run(fx, &env, ExecRequest::shell("echo kept > /workspace/note")).await;
            assert!(out.status.success(), "{}", out.stderr_lossy());
        })
        .await;
        fx.with_env(&second, |env| async move {
            let out = run(fx, &env, ExecRequest::new(["cat", "/workspace/note"])).await;
            assert_eq!(out.stdout_lossy(), "kept\n");
        })
        .await;
    }))
    .await;
    let removed = fx.engine.remove_volume(&name).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert_eq!(removed.expect("remove_volume"), RemoveOutcome::Removed);
    assert_eq!(
        fx.engine.remove_volume(&name).await.expect("remove again"),
        RemoveOutcome::AlreadyGone
    );
}

/// A volume berth creates for a workspace carries the session's labels, so `list_volumes`
/// (and `berth gc --volumes`) finds it after its environments are gone, and stops listing it
/// once it is removed.
pub async fn list_volumes_finds_workspace_volumes_by_label(fx: &Fixture) {
    let name = format!("berth-test-{}", SessionId::generate());
    let spec = fx.spec().with_workspace(Workspace::Volume {
        name: name.clone(),
        sub_path: None,
    });
    let selector = LabelSelector::session(&spec.session);
    let (selector, wanted) = (&selector, name.as_str());
    let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async {
        fx.with_env(&spec, |_env| async move {
            let found = fx
                .engine
                .list_volumes(selector)
                .await
                .expect("list_volumes");
            let names: Vec<&str> = found.iter().map(|v| v.name.as_str()).collect();
            assert_eq!(names, [wanted], "the session's volumes");
            assert!(
                found[0].in_use,
                "mounted by a running environment: {:?}",
                found[0]
            );
        })
        .await;
        // An environment being removed may hold its volume a moment longer.
        let deadline = Instant::now() + Duration::from_secs(60);
        let found = loop {
            let found = fx
                .engine
                .list_volumes(selector)
                .await
                .expect("list_volumes");
            if found.iter().all(|v| !v.in_use) || Instant::now() > deadline {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let names: Vec<&str> = found.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, [wanted], "still listed once its environment is gone");
        assert!(
            !found[0].in_use,
            "no environment mounts it now: {:?}",
            found[0]
        );
        assert_eq!(found[0].session.as_ref(), Some(&spec.session));
        assert!(found[0].created_unix_secs.is_some(), "{:?}", found[0]);
        let other = LabelSelector::session(&SessionId::generate());
        let none = fx.engine.list_volumes(&other).await.expect("list_volumes");
        assert!(
            none.is_empty(),
            "another session's selector matched {none:?}"
        );
    }))
    .await;
    let removed = fx.engine.remove_volume(&name).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert_eq!(removed.expect("remove_volume"), RemoveOutcome::Removed);
    let left = fx
        .engine
        .list_volumes(selector)
        .await
        .expect("list_volumes");
    assert!(left.is_empty(), "still listed after removal: {left:?}");
}

/// A volume workspace mounted at a sub-path keeps each sub-path apart (or the backend says
/// it cannot, with a reason).
pub async fn volume_sub_path_is_kept_apart_or_unsupported(fx: &Fixture) {
    let name = format!("berth-test-{}", SessionId::generate());
    let at = |sub: &str| {
        fx.spec().with_workspace(Workspace::Volume {
            name: name.clone(),
            sub_path: Some(sub.to_owned()),
        })
    };
    let (a, b, a_again) = (at("agent-a"), at("agent-b"), at("agent-a"));
    let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async {
        match fx.engine.start(&a).await {
            Err(e) if e.is_unsupported() => {
                assert!(e.to_string().len() > 40, "Unsupported needs a reason: {e}");
                return;
            }
            Err(e) => panic!("start at a sub-path: {e}"),
            Ok(env) => {
                let out = fx
                    .engine
                    .exec(&env, ExecRequest::shell("echo a > /workspace/note"))
                    .await;
                fx.engine.stop(&env).await.expect("stop");
                assert!(out.expect("write").status.success());
            }
        }
        fx.with_env(&b, |env| async move {
            let out = run(fx, &env, ExecRequest::shell("ls /workspace")).await;
            assert_eq!(out.stdout_lossy(), "", "agent-b sees agent-a's files");
        })
        .await;
        fx.with_env(&a_again, |env| async move {
            let out = run(fx, &env, ExecRequest::new(["cat", "/workspace/note"])).await;
            assert_eq!(out.stdout_lossy(), "a\n");
        })
        .await;
    }))
    .await;
    let _ = fx.engine.remove_volume(&name).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
