//! The engine's shared view of its pods (one list and watch per engine): execs ask the API
//! server nothing but the exec itself; a pod deleted while the view says it runs takes no
//! command (whether or not the view has seen the delete); a watch that expires (410) is
//! followed by a relist that loses no delete; an account that may not watch falls back to
//! asking on every exec, without an error.

mod common;

use std::time::Duration;

use berth_engine_core::{
    ContainerEngine, EnvironmentId, EnvironmentSpec, ErrorKind, ExecRequest, ImageRef, SessionId,
};
use berth_engine_k8s::KubernetesEngine;
use berth_k8s_sim::Sim;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::Api;

fn spec(image: &ImageRef) -> EnvironmentSpec {
    EnvironmentSpec::new(image.clone(), SessionId::generate())
        .with_max_lifetime(Duration::from_secs(600))
}

/// A plain client of the simulator, for changes behind the engine's back.
async fn direct_client(sim: &Sim) -> kube::Client {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&sim.kubeconfig()).expect("kubeconfig"),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("config");
    kube::Client::try_from(config).expect("client")
}

/// Deletes the pod of `env` at once (grace 0), as a node drain or an operator would, and
/// waits until the API server no longer has it.
async fn delete_pod_of(client: &kube::Client, env: &EnvironmentId) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let list = pods
        .list(&ListParams::default().labels(&format!("job-name={env}")))
        .await
        .expect("list pods");
    assert_eq!(list.items.len(), 1, "one pod for {env}");
    let name = list.items[0].metadata.name.clone().expect("name");
    pods.delete(
        &name,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .expect("delete pod");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pods.get_opt(&name).await.expect("get pod").is_some() {
        assert!(tokio::time::Instant::now() < deadline, "pod {name} stays");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_exec(line: &str) -> bool {
    line.starts_with("GET ") && line.contains("/exec?")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_view_execs_read_no_pods() {
    let (direct, image, guard) = common::sim_engine(|_| {}).await;
    let (engine, proxy, _dir) = common::proxy::engine_behind_proxy(&guard.sim, |_| {}).await;
    let env = engine.start(&spec(&image)).await.expect("start");
    proxy.take_requests();
    for i in 0..10 {
        let out = engine
            .exec(&env, ExecRequest::shell(format!("echo {i}")))
            .await
            .expect("exec");
        assert_eq!(out.stdout_lossy().trim(), i.to_string());
    }
    let requests = proxy.take_requests();
    let other: Vec<&String> = requests.iter().filter(|l| !is_exec(l)).collect();
    assert!(
        other.is_empty(),
        "10 execs sent more than their exec: {other:#?}"
    );
    assert_eq!(requests.len(), 10, "{requests:#?}");
    direct.stop(&env).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_view_a_pod_deleted_while_cached_running_takes_no_command() {
    let (direct, image, guard) = common::sim_engine(|_| {}).await;
    let (engine, proxy, _dir) = common::proxy::engine_behind_proxy(&guard.sim, |_| {}).await;
    let client = direct_client(&guard.sim).await;
    let seen = engine.start(&spec(&image)).await.expect("start");
    let unseen = engine.start(&spec(&image)).await.expect("start");
    engine
        .exec(&unseen, ExecRequest::shell("true"))
        .await
        .expect("exec before the delete");

    // The view sees this delete: the exec is refused (after the API server confirms it).
    delete_pod_of(&client, &seen).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let err = loop {
        match engine.exec(&seen, ExecRequest::shell("echo ran")).await {
            Err(e) => break e,
            Ok(out) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a deleted pod still took commands: {}",
                    out.stdout_lossy()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err} ({err:?})");

    // The view never sees this one (its watch is held back): the view still says Running,
    // and the exec's own 404 says the environment is gone.
    // Its open watch expires; the relist passes, the new watch is held back.
    proxy.freeze_watches();
    guard.sim.expire_watches();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while proxy.stalled_watches() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the view did not watch again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    delete_pod_of(&client, &unseen).await;
    let err = engine
        .exec(&unseen, ExecRequest::shell("echo ran"))
        .await
        .expect_err("an exec in a deleted pod");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err} ({err:?})");
    assert!(err.to_string().contains(unseen.as_str()), "{err}");
    for env in [&seen, &unseen] {
        direct.stop(env).await.expect("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_view_resyncs_after_a_watch_expires() {
    let (direct, image, guard) = common::sim_engine(|_| {}).await;
    let (engine, proxy, _dir) = common::proxy::engine_behind_proxy(&guard.sim, |_| {}).await;
    let client = direct_client(&guard.sim).await;
    let kept = engine.start(&spec(&image)).await.expect("start");
    let gone = engine.start(&spec(&image)).await.expect("start");
    proxy.take_requests();
    // The watch expires, and a pod goes before the relist: the relist must not lose it.
    guard.sim.expire_watches();
    delete_pod_of(&client, &gone).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let relisted = proxy.take_requests().iter().any(|l| {
            l.starts_with("GET /api/v1/namespaces/default/pods?") && !l.contains("watch=")
        });
        if relisted {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the view did not list again after its watch expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = engine
        .exec(&gone, ExecRequest::shell("echo ran"))
        .await
        .expect_err("an exec in a pod deleted across the expiry");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err} ({err:?})");
    let out = engine
        .exec(&kept, ExecRequest::shell("echo still"))
        .await
        .expect("exec after the resync");
    assert_eq!(out.stdout_lossy().trim(), "still");
    // And the view is live again: starting waits on it, and execs read nothing.
    let fresh = engine
        .start(&spec(&image))
        .await
        .expect("start after the resync");
    proxy.take_requests();
    engine
        .exec(&fresh, ExecRequest::shell("true"))
        .await
        .expect("exec");
    let requests = proxy.take_requests();
    assert!(requests.iter().all(|l| is_exec(l)), "{requests:#?}");
    for env in [&kept, &gone, &fresh] {
        direct.stop(env).await.expect("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_view_an_account_that_may_not_watch_asks_on_every_exec() {
    let (direct, image, guard) = common::sim_engine(|_| {}).await;
    let env = direct.start(&spec(&image)).await.expect("start");
    guard.sim.deny("watch", "pods");
    let (engine, proxy, _dir) = common::proxy::engine_behind_proxy(&guard.sim, |_| {}).await;
    // A fresh engine: its view is started by this exec and refused its watch.
    for i in 0..5 {
        let out = engine
            .exec(&env, ExecRequest::shell(format!("echo {i}")))
            .await
            .expect("exec without a watch");
        assert_eq!(out.stdout_lossy().trim(), i.to_string());
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let watches = proxy
        .take_requests()
        .into_iter()
        .filter(|l| l.contains("watch="))
        .count();
    assert_eq!(watches, 1, "a refused watch is not asked again");
    engine
        .exec(&env, ExecRequest::shell("true"))
        .await
        .expect("exec");
    let requests = proxy.take_requests();
    assert!(
        requests
            .iter()
            .any(|l| l.starts_with("GET /api/v1/namespaces/default/pods/") && !is_exec(l)),
        "the fallback asks the API server for the pod: {requests:#?}"
    );
    // The pod deleted: the fallback says so too.
    let client = direct_client(&guard.sim).await;
    delete_pod_of(&client, &env).await;
    let err = engine
        .exec(&env, ExecRequest::shell("echo ran"))
        .await
        .expect_err("exec in a deleted pod");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err} ({err:?})");
    guard.sim.allow("watch", "pods");
    direct.stop(&env).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_view_a_zero_write_bound_is_refused_by_name() {
    let err = KubernetesEngine::connect({
        let mut c = berth_engine_k8s::KubernetesConfig::default();
        c.max_concurrent_writes = 0;
        c
    })
    .await
    .expect_err("0 writes at once");
    assert!(err.to_string().contains("max_concurrent_writes"), "{err}");
}

/// Not a check: what one start and one stop ask of the API server once the view runs, for the
/// report (`--nocapture`). The budget is measured in the bench binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_view_requests_per_start_and_stop() {
    let (_direct, image, guard) = common::sim_engine(|_| {}).await;
    let (engine, proxy, _dir) = common::proxy::engine_behind_proxy(&guard.sim, |_| {}).await;
    let warm = engine.start(&spec(&image)).await.expect("start");
    proxy.take_requests();
    let env = engine.start(&spec(&image)).await.expect("start");
    let start = proxy.take_requests();
    engine.stop(&env).await.expect("stop");
    let stop = proxy.take_requests();
    println!("start: {start:#?}\nstop: {stop:#?}");
    engine.stop(&warm).await.expect("stop");
}
