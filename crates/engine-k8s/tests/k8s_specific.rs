//! Kubernetes-only behaviour against the simulator: failing fast with the scheduler's reason,
//! a missing claim, many environments at once, and what `render` produces.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_engine_core::{
    ContainerEngine, EnvironmentSpec, ErrorKind, ExecRequest, ImageRef, LabelSelector, SessionId,
    Workspace,
};
use berth_engine_k8s::{KubernetesConfig, KubernetesEngine};

struct Cluster {
    engine: Arc<KubernetesEngine>,
    image: ImageRef,
    guard: common::SimGuard,
}

async fn cluster(adjust: impl FnOnce(&mut KubernetesConfig)) -> Cluster {
    let (engine, image, guard) = common::sim_engine(adjust).await;
    Cluster {
        engine: Arc::new(engine),
        image,
        guard,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_is_unschedulable_with_the_schedulers_message() {
    let c = cluster(|config| config.requests.cpu_millis = Some(1_000_000)).await;
    let spec = EnvironmentSpec::new(c.image.clone(), SessionId::generate());
    let started = Instant::now();
    let err = c.engine.start(&spec).await.expect_err("cannot fit");
    assert_eq!(err.kind(), ErrorKind::Unschedulable, "{err}");
    assert!(err.to_string().contains("Insufficient cpu"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "fails fast, not at the timeout"
    );
    let left = c
        .engine
        .list(&LabelSelector::session(&spec.session))
        .await
        .expect("list");
    assert!(left.is_empty(), "a failed start leaves no Job: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_refusals_are_forbidden_named_and_not_retried() {
    let c = cluster(|_| {}).await;
    let may_create_jobs = || c.engine.can_i("create", "batch", "jobs", None);
    assert_eq!(may_create_jobs().await.expect("review"), Some(true));

    c.guard.sim.deny("create", "jobs");
    let spec = EnvironmentSpec::new(c.image.clone(), SessionId::generate());
    let err = c
        .engine
        .start(&spec)
        .await
        .expect_err("creating a Job is denied");
    assert_eq!(err.kind(), ErrorKind::Forbidden, "{err}");
    assert!(!err.is_retryable(), "a refusal is not retried: {err}");
    let text = err.to_string();
    assert!(text.contains("create job"), "names the action: {text}");
    assert!(
        text.contains(r#"cannot create resource "jobs" in API group "batch""#),
        "carries the server's message: {text}"
    );
    assert_eq!(may_create_jobs().await.expect("review"), Some(false));

    c.guard.sim.allow("create", "jobs");
    c.guard.sim.deny("create", "pods/exec");
    let env = c.engine.start(&spec).await.expect("start once allowed");
    let err = c
        .engine
        .exec(&env, ExecRequest::new(["true"]))
        .await
        .expect_err("exec is denied");
    c.engine.stop(&env).await.expect("stop");
    assert_eq!(err.kind(), ErrorKind::Forbidden, "{err}");
    assert!(err.to_string().contains("pods/exec"), "{err}");
}

/// An image with neither `sh`, util-linux `setpriv` nor `su` (a distroless-like image):
/// commands still run, and running as another user is `Unsupported` with a sentence saying
/// what the image lacks, not a backend failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_as_user_without_a_user_tool_is_unsupported_with_a_reason() {
    use berth_engine_core::testkit::{busybox_build_context_with_applets, busybox_path};
    use berth_engine_core::{tar_stream_from_bytes, BuildSpec, Progress};
    use berth_engine_docker::{DockerConfig, DockerEngine};

    let c = cluster(|_| {}).await;
    let docker = DockerEngine::connect(&DockerConfig::default())
        .await
        .expect("docker");
    let image = ImageRef::new("berth-test/busybox-no-shell:1").expect("ref");
    let context = busybox_build_context_with_applets(
        &busybox_path(),
        &["/bin/sleep", "/usr/bin/env", "/usr/bin/id", "/bin/cat"],
    )
    .expect("build context");
    docker
        .build_image(
            BuildSpec::new(image.clone(), tar_stream_from_bytes(context)),
            &Progress::none(),
        )
        .await
        .expect("build the image");
    let spec = EnvironmentSpec::new(image, SessionId::generate());
    let env = c.engine.start(&spec).await.expect("start");
    let plain = c.engine.exec(&env, ExecRequest::new(["id", "-u"])).await;
    let as_user = c
        .engine
        .exec_as_user(&env, "1000", ExecRequest::new(["id", "-u"]))
        .await;
    c.engine.stop(&env).await.expect("stop");
    assert_eq!(plain.expect("plain exec").stdout_lossy(), "0\n");
    let err = as_user.expect_err("no way to switch users");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err} ({err:?})");
    assert!(
        err.to_string()
            .contains("neither util-linux setpriv nor su"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_claim_is_a_clear_error() {
    let c = cluster(|_| {}).await;
    let spec = EnvironmentSpec::new(c.image.clone(), SessionId::generate()).with_workspace(
        Workspace::Volume {
            name: "no-such-claim".into(),
            sub_path: None,
        },
    );
    let err = c.engine.start(&spec).await.expect_err("no claim");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("no-such-claim"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_environments_at_once_all_exec_and_all_go() {
    let c = cluster(|_| {}).await;
    let session = SessionId::generate();
    let specs: Vec<EnvironmentSpec> = (0..10)
        .map(|i| {
            let mut s = EnvironmentSpec::new(c.image.clone(), session.clone())
                .with_name(format!("agent{i}"));
            s.max_lifetime = Duration::from_secs(600);
            s
        })
        .collect();
    let started = futures_util::future::join_all(specs.iter().map(|s| c.engine.start(s))).await;
    let ids: Vec<_> = started
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    let execs = futures_util::future::join_all(ids.iter().map(|id| {
        c.engine
            .exec(id, ExecRequest::shell("echo $BERTH_EXEC_ID | wc -c"))
    }))
    .await;
    for id in &ids {
        c.engine.stop(id).await.expect("stop");
    }
    for r in started {
        r.expect("start");
    }
    for out in execs {
        let out = out.expect("exec");
        assert!(out.status.success());
        assert_eq!(
            out.stdout_lossy().trim(),
            "33",
            "the marker is set: {out:?}"
        );
    }
    let left = c
        .engine
        .list(&LabelSelector::session(&session))
        .await
        .expect("list");
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_shows_the_job_and_claim_without_creating_them() {
    let c = cluster(|config| {
        config.namespace = "berth-agents".into();
        config.create_missing_claims = true;
    })
    .await;
    let spec = EnvironmentSpec::new(c.image.clone(), SessionId::generate()).with_workspace(
        Workspace::Volume {
            name: "ws".into(),
            sub_path: None,
        },
    );
    let objects = berth_engine_k8s::render(&spec, c.engine.config()).expect("render");
    assert_eq!(objects.len(), 2);
    assert_eq!(objects[0]["kind"], "PersistentVolumeClaim");
    assert_eq!(objects[1]["kind"], "Job");
    assert_eq!(objects[1]["apiVersion"], "batch/v1");
    assert_eq!(objects[1]["metadata"]["namespace"], "berth-agents");
    assert_eq!(
        objects[1]["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
    let listed = c
        .engine
        .list(&LabelSelector::session(&spec.session))
        .await
        .expect("list");
    assert!(listed.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_deleted_mid_exec_is_an_error_not_a_success() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{DeleteParams, ListParams};

    let c = cluster(|_| {}).await;
    let spec = EnvironmentSpec::new(c.image.clone(), SessionId::generate());
    let env = c.engine.start(&spec).await.expect("start");
    let process = c
        .engine
        .exec_streaming(&env, ExecRequest::new(["sleep", "60"]))
        .await
        .expect("exec");
    let kubeconfig = kube::config::Kubeconfig::read_from(
        c.engine.config().kubeconfig.as_ref().expect("kubeconfig"),
    )
    .expect("read kubeconfig");
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("config"),
    )
    .expect("client");
    let pods: kube::Api<Pod> = kube::Api::namespaced(client, "default");
    tokio::time::sleep(Duration::from_millis(500)).await;
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels(&format!("job-name={env}")),
    )
    .await
    .expect("delete the pod");
    let outcome = tokio::time::timeout(Duration::from_secs(60), process.wait())
        .await
        .expect("the exec ends when its pod goes");
    c.engine.stop(&env).await.expect("stop");
    eprintln!("exec whose pod was deleted: {outcome:?}");
    match outcome {
        Ok(status) => assert!(
            !status.success(),
            "a killed exec must not look successful: {status}"
        ),
        Err(e) => assert_ne!(e.kind(), ErrorKind::InvalidSpec, "{e}"),
    }
}

/// A `restricted` environment shares its pod's process namespace too: it starts, runs as its
/// user, its orphans are reaped by the pause process, and a timed-out command's tree is still
/// found and killed through `/proc`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_environment_reaps_orphans_and_kills_timed_out_trees() {
    let c = cluster(|_| {}).await;
    let mut spec = EnvironmentSpec::new(c.image.clone(), SessionId::generate());
    spec.security = berth_engine_core::SecurityProfile::Restricted;
    spec.user = Some("1000".into());
    let env = c
        .engine
        .start(&spec)
        .await
        .expect("a restricted environment starts");
    let outcome = async {
        let id = c.engine.exec(&env, ExecRequest::new(["id", "-u"])).await?;
        let orphans = c
            .engine
            .exec(&env, ExecRequest::shell("sleep 0.1 &"))
            .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let zombies = c
            .engine
            .exec(
                &env,
                ExecRequest::shell("cat /proc/[0-9]*/stat 2>/dev/null | grep ') Z ' || true"),
            )
            .await?;
        let timed_out = c
            .engine
            .exec(
                &env,
                ExecRequest::shell("sleep 777 & sleep 778").with_timeout(Duration::from_secs(1)),
            )
            .await;
        let left = c
            .engine
            .exec(
                &env,
                ExecRequest::shell("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '"),
            )
            .await?;
        Ok::<_, berth_engine_core::Error>((id, orphans, zombies, timed_out, left))
    }
    .await;
    c.engine.stop(&env).await.expect("stop");
    let (id, orphans, zombies, timed_out, left) = outcome.expect("the execs run");
    assert_eq!(id.stdout_lossy(), "1000\n");
    assert!(orphans.status.success(), "{orphans:?}");
    assert_eq!(zombies.stdout_lossy(), "", "zombies were left");
    let err = timed_out.expect_err("the command times out");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let left = left.stdout_lossy();
    assert!(
        !left.contains("sleep 777") && !left.contains("sleep 778"),
        "the timed-out tree survived: {left}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_check_whose_pod_cannot_be_deleted_says_so() {
    let c = cluster(|_| {}).await;
    c.guard.sim.deny("delete", "pods");
    let spec = EnvironmentSpec::new(c.image.clone(), SessionId::generate());
    let err = c
        .engine
        .check_image_like(&spec)
        .await
        .expect_err("a passed check whose pod is left behind is not a success");
    assert_eq!(err.kind(), ErrorKind::Forbidden, "{err}");
    assert!(
        err.to_string().contains("delete the image check pod"),
        "names the cleanup: {err}"
    );
    c.guard.sim.allow("delete", "pods");
}
