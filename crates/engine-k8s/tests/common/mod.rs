//! Shared by the Kubernetes test files: a simulator, a kubeconfig for it, and an engine.

#[allow(dead_code)] // only the files that test silent connections use it
pub mod proxy;

use std::time::Duration;

use berth_engine_core::testkit::ensure_test_image;
use berth_engine_core::ImageRef;
use berth_engine_docker::{DockerConfig, DockerEngine};
use berth_engine_k8s::{KubernetesConfig, KubernetesEngine};
use berth_k8s_sim::Sim;

/// A running simulator and the kubeconfig file pointing at it; both go when it is dropped.
pub struct SimGuard {
    /// The simulator, for tests that change it (`Sim::deny`).
    #[allow(dead_code)] // not every test file reaches into the simulator
    pub sim: Sim,
    _dir: tempfile::TempDir,
}

/// Builds the test image, starts a simulator, and connects an engine to it with `adjust`
/// applied to the config (60 s start timeout by default).
pub async fn sim_engine(
    adjust: impl FnOnce(&mut KubernetesConfig),
) -> (KubernetesEngine, ImageRef, SimGuard) {
    sim_engine_with(None, adjust).await
}

/// [`sim_engine`] on a simulator whose node has `node`'s size (the host's when `None`).
#[allow(dead_code)] // not every test file sizes the node
pub async fn sim_engine_with(
    node: Option<berth_k8s_sim::NodeSize>,
    adjust: impl FnOnce(&mut KubernetesConfig),
) -> (KubernetesEngine, ImageRef, SimGuard) {
    let docker = DockerEngine::connect(&DockerConfig::default())
        .await
        .unwrap_or_else(|e| panic!("these tests need a running Docker daemon: {e}"));
    let image = ensure_test_image(&docker).await.expect("test image");
    let sim = match node {
        Some(node) => Sim::start_with_node(node).await,
        None => Sim::start().await,
    }
    .expect("start the simulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let mut config = KubernetesConfig::default();
    config.kubeconfig = Some(kubeconfig);
    config.start_timeout = Duration::from_secs(60);
    adjust(&mut config);
    let engine = KubernetesEngine::connect(config).await.expect("connect");
    (engine, image, SimGuard { sim, _dir: dir })
}
