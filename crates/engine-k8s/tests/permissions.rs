//! Verbs berth uses beyond get/list/watch/create/delete, each refused by the simulator's RBAC
//! stand-in (`Sim::deny`) to show what needs it: `berth up` labels its Job detached (`patch
//! jobs`), so a Role without it fails every `berth up` (the README's permissions and
//! `berth render --rbac` list it).

mod common;

use std::time::Duration;

use berth_engine_core::{ContainerEngine, EnvironmentSpec, ErrorKind, SessionId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_recording_detached_needs_patch_on_jobs() {
    let (engine, image, guard) = common::sim_engine(|_| {}).await;
    let spec = EnvironmentSpec::new(image, SessionId::generate())
        .with_max_lifetime(Duration::from_secs(600));
    let env = engine.start(&spec).await.expect("start");
    guard.sim.deny("patch", "jobs");
    let err = engine
        .mark_detached(&env)
        .await
        .expect_err("patching the Job is refused");
    assert_eq!(err.kind(), ErrorKind::Forbidden, "{err} ({err:?})");
    assert!(err.to_string().contains("patch"), "{err}");
    guard.sim.allow("patch", "jobs");
    engine.mark_detached(&env).await.expect("granted again");
    engine.stop(&env).await.expect("stop");
}
