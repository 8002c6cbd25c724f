//! A lost connection is an error within seconds, never a hang, a timeout or a success: the
//! API server killed, every exec connection dropped, a half-open connection (a proxy that
//! stops forwarding). And a pod deleted under a command: the command's error says so, and
//! the Job fails instead of coming back in a fresh pod.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use berth_engine_core::testkit::ensure_test_image;
use berth_engine_core::{
    ContainerEngine, EnvironmentId, EnvironmentSpec, EnvironmentState, ErrorKind, ExecProcess,
    ExecRequest, LabelSelector, SessionId,
};
use berth_engine_docker::{DockerConfig, DockerEngine};
use berth_engine_k8s::{KubernetesConfig, KubernetesEngine};
use berth_k8s_sim::Sim;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::Api;

/// The bound the issue sets: a lost connection is an error within this long.
const WITHIN: Duration = Duration::from_secs(5);

async fn engine_for(kubeconfig: &Path) -> KubernetesEngine {
    let mut config = KubernetesConfig::default();
    config.kubeconfig = Some(kubeconfig.to_owned());
    config.start_timeout = Duration::from_secs(60);
    KubernetesEngine::connect(config).await.expect("connect")
}

fn spec(image: &berth_engine_core::ImageRef) -> EnvironmentSpec {
    EnvironmentSpec::new(image.clone(), SessionId::generate())
        .with_max_lifetime(Duration::from_secs(600))
}

/// Starts `sleep 300` in `env` and waits a moment so it is surely running.
async fn long_exec(engine: &KubernetesEngine, env: &EnvironmentId) -> ExecProcess {
    let process = engine
        .exec_streaming(env, ExecRequest::new(["sleep", "300"]))
        .await
        .expect("exec sleep");
    tokio::time::sleep(Duration::from_millis(800)).await;
    process
}

/// Waits for `process` after a fault at `fault`: it must fail with `ConnectionLost`, within
/// [`WITHIN`] of the fault.
async fn expect_lost(process: ExecProcess, fault: Instant, env: &EnvironmentId) {
    let outcome = tokio::time::timeout(Duration::from_secs(30), process.wait())
        .await
        .expect("the exec must not hang after its connection is lost");
    let err = outcome.expect_err("a lost connection is never a success");
    assert_eq!(err.kind(), ErrorKind::ConnectionLost, "{err} ({err:?})");
    let text = err.to_string();
    assert!(text.contains("may still be running"), "{text}");
    assert!(text.contains(&format!("berth exec {env} -- ps")), "{text}");
    assert!(
        fault.elapsed() < WITHIN,
        "reported {:?} after the loss",
        fault.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connloss_dropped_exec_connections_are_connection_lost() {
    let (engine, image, guard) = common::sim_engine(|_| {}).await;
    let env = engine.start(&spec(&image)).await.expect("start");
    let process = long_exec(&engine, &env).await;
    let fault = Instant::now();
    guard.sim.drop_exec_connections();
    expect_lost(process, fault, &env).await;
    // The environment itself is fine: the next command runs.
    let out = engine
        .exec(&env, ExecRequest::new(["echo", "still here"]))
        .await
        .expect("exec after the fault");
    assert_eq!(out.stdout_lossy(), "still here\n");
    engine.stop(&env).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connloss_half_open_connection_is_connection_lost() {
    let (_direct, image, guard) = common::sim_engine(|_| {}).await;
    let (engine, proxy, _dir) = common::proxy::engine_behind_proxy(&guard.sim, |_| {}).await;
    let env = engine.start(&spec(&image)).await.expect("start");
    let process = long_exec(&engine, &env).await;
    let fault = Instant::now();
    proxy.freeze();
    expect_lost(process, fault, &env).await;
    drop(proxy);
    // Clean up through the simulator directly.
    _direct.stop(&env).await.expect("stop");
}

/// A start waiting on a watch (here for a pull the kubelet keeps retrying) whose connection
/// goes half-open: `ConnectionLost` within seconds, not a quiet wait until `start_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connloss_half_open_during_start_is_connection_lost() {
    let (direct, image, guard) = common::sim_engine(|_| {}).await;
    // The pod stays waiting on a transient pull failure, which the policy waits out.
    guard.sim.fail_pulls(image.as_str(), 1000);
    let (engine, proxy, _dir) = common::proxy::engine_behind_proxy(&guard.sim, |_| {}).await;
    let spec = spec(&image);
    let start = tokio::time::timeout(Duration::from_secs(40), engine.start(&spec));
    let freeze = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        proxy.freeze();
        Instant::now()
    };
    let (result, fault) = tokio::join!(start, freeze);
    let err = result
        .expect("start must not wait out start_timeout on a silent connection")
        .expect_err("a start whose connection was lost is never a success");
    assert_eq!(err.kind(), ErrorKind::ConnectionLost, "{err} ({err:?})");
    assert!(err.to_string().contains("berth gc"), "{err}");
    assert!(
        fault.elapsed() < WITHIN,
        "reported {:?} after the loss",
        fault.elapsed()
    );
    drop(proxy);
    // The Job the lost start created, removed through the simulator directly.
    for env in direct
        .list(&LabelSelector::session(&spec.session))
        .await
        .expect("list")
    {
        direct.stop(&env.id).await.expect("stop");
    }
}

const SIM_CHILD_VAR: &str = "BERTH_CONNLOSS_SIM_KUBECONFIG";

/// Not a test: the simulator process that `connloss_killed_api_server_is_connection_lost`
/// starts (this same binary, with [`SIM_CHILD_VAR`] set) and kills.
#[test]
#[ignore = "a helper process for connloss_killed_api_server_is_connection_lost"]
fn connloss_helper_sim_process() {
    let Some(path) = std::env::var_os(SIM_CHILD_VAR) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let sim = Sim::start().await.expect("start the simulator");
        let path = Path::new(&path);
        let partial = path.with_extension("partial");
        sim.write_kubeconfig(&partial).expect("kubeconfig");
        std::fs::rename(&partial, path).expect("publish the kubeconfig");
        std::future::pending::<()>().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connloss_killed_api_server_is_connection_lost() {
    let docker = DockerEngine::connect(&DockerConfig::default())
        .await
        .expect("these tests need a running Docker daemon");
    let image = ensure_test_image(&docker).await.expect("test image");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "connloss_helper_sim_process"])
        .env(SIM_CHILD_VAR, &kubeconfig)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the simulator process");
    let outcome = async {
        let waiting = Instant::now();
        while !kubeconfig.exists() {
            assert!(
                waiting.elapsed() < Duration::from_secs(60),
                "the simulator process did not come up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let engine = engine_for(&kubeconfig).await;
        let env = engine.start(&spec(&image)).await.expect("start");
        let process = long_exec(&engine, &env).await;
        let fault = Instant::now();
        child.kill().expect("SIGKILL the simulator");
        expect_lost(process, fault, &env).await;
    };
    let result = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(outcome)).await;
    let _ = child.kill();
    let _ = child.wait();
    // A new simulator removes the containers of simulators whose process is gone.
    Sim::start()
        .await
        .expect("a simulator to clean up")
        .shutdown()
        .await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

async fn kube_client(kubeconfig: &Path) -> kube::Client {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig"),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("config");
    kube::Client::try_from(config).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connloss_pod_deleted_under_exec_is_environment_gone_and_the_job_fails() {
    let (engine, image, guard) = common::sim_engine(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    guard.sim.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let client = kube_client(&kubeconfig).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(client, "default");
    let spec = spec(&image);
    let env = engine.start(&spec).await.expect("start");
    let selector = format!("job-name={env}");
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("list pods");
    assert_eq!(listed.items.len(), 1);
    let pod = listed.items[0].metadata.name.clone().expect("pod name");
    let process = long_exec(&engine, &env).await;
    let deleted = Instant::now();
    pods.delete(&pod, &DeleteParams::default())
        .await
        .expect("delete the pod");
    let outcome = tokio::time::timeout(Duration::from_secs(30), process.wait())
        .await
        .expect("the exec ends when its pod is deleted");
    let err = outcome.expect_err("a deleted environment is not the command's exit code");
    assert_eq!(err.kind(), ErrorKind::EnvironmentGone, "{err} ({err:?})");
    assert!(
        err.to_string().contains("stopped while the command ran"),
        "{err}"
    );
    assert!(
        deleted.elapsed() < Duration::from_secs(15),
        "{:?}",
        deleted.elapsed()
    );

    // backoffLimit 0: the deleted pod counts as failed and the Job fails; no pod comes back.
    let waiting = Instant::now();
    let failed = loop {
        let job = jobs.get(env.as_str()).await.expect("the job");
        let conditions = job.status.and_then(|s| s.conditions).unwrap_or_default();
        if let Some(c) = conditions
            .iter()
            .find(|c| c.type_ == "Failed" && c.status == "True")
        {
            break c.reason.clone();
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(15),
            "the job did not fail: {conditions:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(failed.as_deref(), Some("BackoffLimitExceeded"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let left: Vec<String> = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect();
    assert!(left.is_empty(), "no replacement pod: {left:?}");
    let listed = engine
        .list(&LabelSelector::session(&spec.session))
        .await
        .expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].state, EnvironmentState::Exited, "{listed:?}");
    let err = engine
        .exec(&env, ExecRequest::new(["true"]))
        .await
        .expect_err("no exec in a failed environment");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    engine.stop(&env).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connloss_copy_out_stream_cut_is_connection_lost() {
    let (engine, image, guard) = common::sim_engine(|_| {}).await;
    let env = engine.start(&spec(&image)).await.expect("start");
    let made = engine
        .exec(
            &env,
            ExecRequest::shell("head -c 100m /dev/zero > /tmp/big"),
        )
        .await
        .expect("make a big file");
    assert!(made.status.success(), "{made:?}");
    let mut archive = engine.copy_out(&env, "/tmp/big").await.expect("copy out");
    let first = futures_util::StreamExt::next(&mut archive).await;
    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    let fault = Instant::now();
    guard.sim.drop_exec_connections();
    let read = async {
        while let Some(item) = futures_util::StreamExt::next(&mut archive).await {
            if let Err(e) = item {
                return Some(e);
            }
        }
        None
    };
    let err = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the copy must not hang")
        .expect("a cut copy is an error, never a complete archive");
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<berth_engine_core::Error>())
        .unwrap_or_else(|| panic!("not a berth error: {err:?}"));
    assert_eq!(inner.kind(), ErrorKind::ConnectionLost, "{inner}");
    assert!(inner.to_string().contains("copy out of"), "{inner}");
    assert!(fault.elapsed() < WITHIN, "{:?}", fault.elapsed());
    engine.stop(&env).await.expect("stop");
}
