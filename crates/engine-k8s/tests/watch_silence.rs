//! A start whose watches go silent while the rest of the API answers (a proxy that holds back
//! every `watch=` request and forwards all others): the heartbeat sees a live server, so only
//! the watch's own deadline notices. The start re-lists and still reports what really
//! happened: the pod running, a definitive failure, or (when nothing happens) a timeout naming
//! what the re-list saw; never a hang until `start_timeout`.

mod common;

use std::time::{Duration, Instant};

use berth_engine_core::{
    ContainerEngine, EnvironmentSpec, ErrorKind, ExecRequest, ImageRef, LabelSelector, SessionId,
};
use berth_engine_k8s::KubernetesEngine;

/// Far below the proxied engines' 60 s `start_timeout`, far above what a start needs when it
/// re-lists after each silent watch (a watch of at most 10 s plus a 5 s margin).
const BOUND: Duration = Duration::from_secs(40);

fn spec(image: &ImageRef) -> EnvironmentSpec {
    EnvironmentSpec::new(image.clone(), SessionId::generate())
        .with_max_lifetime(Duration::from_secs(600))
}

/// Stops, through the simulator directly, what the start of `spec` left.
async fn clean_up(direct: &KubernetesEngine, spec: &EnvironmentSpec) {
    for env in direct
        .list(&LabelSelector::session(&spec.session))
        .await
        .expect("list")
    {
        direct.stop(&env.id).await.expect("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_silence_start_completes_when_the_relist_finds_the_pod_running() {
    let (direct, image, guard) = common::sim_engine(|_| {}).await;
    let (engine, proxy, _dir) = common::proxy::engine_behind_proxy(&guard.sim, |_| {}).await;
    proxy.freeze_watches();
    let spec = spec(&image);
    let started = Instant::now();
    let env = tokio::time::timeout(BOUND, engine.start(&spec))
        .await
        .unwrap_or_else(|_| panic!("a start whose watches are silent hung past {BOUND:?}"))
        .expect("the pod runs; the re-list sees it");
    assert!(
        proxy.stalled_watches() >= 1,
        "the start watched nothing, so the test tested nothing"
    );
    // Found by a re-list, so after a watch deadline, not at once.
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let out = engine
        .exec(&env, ExecRequest::new(["echo", "running"]))
        .await
        .expect("exec through the proxy (not a watch)");
    assert_eq!(out.stdout_lossy(), "running\n");
    drop(proxy);
    clean_up(&direct, &spec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_silence_a_definitive_failure_is_found_by_the_relist() {
    let (direct, _image, guard) = common::sim_engine(|_| {}).await;
    let (engine, proxy, _dir) = common::proxy::engine_behind_proxy(&guard.sim, |c| {
        c.image_pull_policy = Some("Never".into());
    })
    .await;
    proxy.freeze_watches();
    let missing = ImageRef::new("berth-test/not-on-the-node:1").expect("ref");
    let spec = spec(&missing);
    let err = tokio::time::timeout(BOUND, engine.start(&spec))
        .await
        .unwrap_or_else(|_| panic!("a start whose watches are silent hung past {BOUND:?}"))
        .expect_err("the image is not on the node");
    assert_eq!(err.kind(), ErrorKind::ImageNotFound, "{err} ({err:?})");
    assert!(err.to_string().contains("ErrImageNeverPull"), "{err}");
    drop(proxy);
    clean_up(&direct, &spec).await;
}

/// Nothing happens (the registry refuses every pull) and the watches stay silent: the start
/// times out at `start_timeout`, no sooner and as nothing else (the API answers, so this is no
/// lost connection), naming what the re-lists saw rather than what was known before the
/// watch went silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_silence_a_real_timeout_names_what_the_relist_saw() {
    let (direct, image, guard) = common::sim_engine(|_| {}).await;
    guard.sim.fail_pulls(image.as_str(), 1000);
    let timeout = Duration::from_secs(25);
    let (engine, proxy, _dir) = common::proxy::engine_behind_proxy(&guard.sim, |c| {
        c.start_timeout = timeout;
    })
    .await;
    proxy.freeze_watches();
    let spec = spec(&image);
    let started = Instant::now();
    let err = tokio::time::timeout(timeout + Duration::from_secs(15), engine.start(&spec))
        .await
        .expect("start_timeout bounds the start")
        .expect_err("the pull never succeeds");
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err} ({err:?})");
    assert!(took >= timeout, "{took:?}");
    assert!(
        err.to_string()
            .contains("the kubelet to retry the image pull"),
        "{err}"
    );
    drop(proxy);
    clean_up(&direct, &spec).await;
}
