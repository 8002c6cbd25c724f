//! The engine-core conformance suite, unchanged, against the Kubernetes API simulator (whose
//! pods are real Docker containers). Needs a running Docker daemon; fails loudly without one.
//!
//! Against a real cluster (kind, minikube, k3s): set `BERTH_E2E_KUBECONFIG` to its kubeconfig
//! and `BERTH_E2E_IMAGE` to an image the cluster can pull that holds what the test image holds
//! (push `berth-test/busybox:2`, built by `cargo run -p berth-engine-docker --example
//! test-image`, to a registry the cluster reads); `BERTH_E2E_NAMESPACE` defaults to `default`.
//! The host-path workspace case needs the node to share this machine's filesystem (minikube
//! with the `none` driver); on other clusters expect that one case to fail.
//!
//! On k3s in a container, in one command (opt-in, `BERTH_E2E_K3S=1`):
//! [`k3s_conformance_suite`] starts k3s with testcontainers, loads the test image into it,
//! and runs this binary again with `BERTH_E2E_KUBECONFIG` pointing at it, so every case goes
//! through the same fixture; then it removes the container.

mod common;
mod k3s;

use std::sync::Arc;

use berth_engine_core::testkit::{Fixture, ForeignObjects};
use berth_engine_core::ImageRef;
use berth_engine_k8s::{KubernetesConfig, KubernetesEngine};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::Api;

/// Jobs created with the plain Kubernetes API, as `kubectl create job` would: no berth
/// labels. Their pods carry only the controller's labels.
struct PlainJobs {
    jobs: Api<Job>,
    pods: Api<Pod>,
    claims: Api<PersistentVolumeClaim>,
}

impl PlainJobs {
    async fn new(config: &KubernetesConfig) -> Self {
        let path = config.kubeconfig.as_ref().expect("a kubeconfig file");
        let file = kube::config::Kubeconfig::read_from(path).expect("read the kubeconfig");
        let kube_config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .expect("kubeconfig");
        let client = kube::Client::try_from(kube_config).expect("client");
        Self {
            jobs: Api::namespaced(client.clone(), &config.namespace),
            pods: Api::namespaced(client.clone(), &config.namespace),
            claims: Api::namespaced(client, &config.namespace),
        }
    }
}

#[async_trait::async_trait]
impl ForeignObjects for PlainJobs {
    async fn create(&self, image: &ImageRef) -> Vec<String> {
        let name = format!("foreign-{}", std::process::id() ^ rand_suffix());
        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "backoffLimit": 0,
                "template": {"spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": image.as_str(), "command": ["sleep", "600"]}],
                }},
            },
        }))
        .expect("job");
        self.jobs
            .create(&PostParams::default(), &job)
            .await
            .expect("create a foreign job");
        // Its pod, by name, is another thing a user could pass.
        let selector = ListParams::default().labels(&format!("job-name={name}"));
        for _ in 0..600 {
            let pods = self.pods.list(&selector).await.expect("list pods");
            if let Some(pod) = pods.items.into_iter().find_map(|p| p.metadata.name) {
                return vec![name, pod];
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the foreign job {name} got no pod within 60 s");
    }

    async fn is_alive(&self, name: &str) -> bool {
        matches!(self.jobs.get_opt(name).await, Ok(Some(j)) if j.metadata.deletion_timestamp.is_none())
    }

    async fn remove(&self, name: &str) {
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        let _ = self.jobs.delete(name, &params).await;
        let _ = self
            .pods
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels(&format!("job-name={name}")),
            )
            .await;
    }

    async fn create_volume(&self) -> String {
        let name = format!("foreign-claim-{}", std::process::id() ^ rand_suffix());
        let claim: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }))
        .expect("claim");
        self.claims
            .create(&PostParams::default(), &claim)
            .await
            .expect("create a foreign claim");
        name
    }

    async fn volume_exists(&self, name: &str) -> bool {
        matches!(self.claims.get_opt(name).await, Ok(Some(c)) if c.metadata.deletion_timestamp.is_none())
    }

    async fn remove_volume(&self, name: &str) {
        let _ = self.claims.delete(name, &DeleteParams::default()).await;
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

async fn k8s_fixture() -> Fixture {
    if let Some(kubeconfig) = std::env::var_os("BERTH_E2E_KUBECONFIG") {
        let image = std::env::var("BERTH_E2E_IMAGE")
            .expect("BERTH_E2E_IMAGE: an image the cluster can pull, like the test image");
        let mut config = KubernetesConfig::default();
        config.kubeconfig = Some(kubeconfig.into());
        config.namespace =
            std::env::var("BERTH_E2E_NAMESPACE").unwrap_or_else(|_| "default".into());
        config.create_missing_claims = true;
        let foreign = PlainJobs::new(&config).await;
        let engine = KubernetesEngine::connect(config).await.expect("connect");
        let image = berth_engine_core::ImageRef::new(image).expect("BERTH_E2E_IMAGE");
        return Fixture::new(Arc::new(engine), image).with_foreign(foreign);
    }
    let (engine, image, guard) = common::sim_engine(|config| {
        config.start_timeout = std::time::Duration::from_secs(120);
        // Docker creates named volumes on first use; the same behaviour here.
        config.create_missing_claims = true;
    })
    .await;
    let foreign = PlainJobs::new(engine.config()).await;
    Fixture::new(Arc::new(engine), image)
        .with_guard(guard)
        .with_foreign(foreign)
}

berth_engine_core::conformance_suite!(k8s_fixture());

/// Opt-in (`BERTH_E2E_K3S=1`, with the k3s image present locally): every other case of this
/// file, run by a child process of this binary against k3s in a container. Without the opt-in
/// or the image it says why and passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k3s_conformance_suite() {
    let k3s_image = match k3s::image_to_run().await {
        Ok(image) => image,
        Err(why) => {
            k3s::say(&format!("k3s_conformance_suite: not run: {why}"));
            return;
        }
    };
    let docker = berth_engine_docker::DockerEngine::connect(&Default::default())
        .await
        .expect("a running Docker daemon");
    let image = berth_engine_core::testkit::ensure_test_image(&docker)
        .await
        .expect("the test image");
    let cluster = k3s::K3sCluster::start(&k3s_image, &image).await;
    let mut child = std::process::Command::new(std::env::current_exe().expect("this binary"));
    child
        .args(["--skip", "k3s_conformance_suite"])
        .env("BERTH_E2E_KUBECONFIG", &cluster.kubeconfig)
        .env("BERTH_E2E_IMAGE", image.as_str())
        .env("BERTH_E2E_NAMESPACE", "default")
        // The host-path case makes its directory here, which the node sees at the same path.
        .env("TMPDIR", &cluster.shared_dir)
        .env_remove("BERTH_E2E_K3S");
    let status = tokio::task::spawn_blocking(move || child.status())
        .await
        .expect("join")
        .expect("run the suite");
    cluster.remove().await;
    assert!(
        status.success(),
        "the conformance suite failed on k3s ({k3s_image}): {status}; its output is above"
    );
}
