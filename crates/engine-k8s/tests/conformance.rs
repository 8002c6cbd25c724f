//! The engine-core conformance suite, unchanged, against the Kubernetes API simulator (whose
//! pods are real Docker containers). Needs a running Docker daemon; fails loudly without one.
//!
//! Against a real cluster (kind, minikube, k3s): set `BERTH_E2E_KUBECONFIG` to its kubeconfig
//! and `BERTH_E2E_IMAGE` to an image the cluster can pull that holds what the test image holds
//! (push `berth-test/busybox:2`, built by `cargo run -p berth-engine-docker --example
//! test-image`, to a registry the cluster reads); `BERTH_E2E_NAMESPACE` defaults to `default`.
//! The host-path workspace case needs the node to share this machine's filesystem (minikube
//! with the `none` driver); on other clusters expect that one case to fail.

mod common;

use std::sync::Arc;

use berth_engine_core::testkit::Fixture;
use berth_engine_k8s::{KubernetesConfig, KubernetesEngine};

async fn k8s_fixture() -> Fixture {
    if let Some(kubeconfig) = std::env::var_os("BERTH_E2E_KUBECONFIG") {
        let image = std::env::var("BERTH_E2E_IMAGE")
            .expect("BERTH_E2E_IMAGE: an image the cluster can pull, like the test image");
        let mut config = KubernetesConfig::default();
        config.kubeconfig = Some(kubeconfig.into());
        config.namespace =
            std::env::var("BERTH_E2E_NAMESPACE").unwrap_or_else(|_| "default".into());
        config.create_missing_claims = true;
        let engine = KubernetesEngine::connect(config).await.expect("connect");
        let image = berth_engine_core::ImageRef::new(image).expect("BERTH_E2E_IMAGE");
        return Fixture::new(Arc::new(engine), image);
    }
    let (engine, image, guard) = common::sim_engine(|config| {
        config.start_timeout = std::time::Duration::from_secs(120);
        // Docker creates named volumes on first use; the same behaviour here.
        config.create_missing_claims = true;
    })
    .await;
    Fixture::new(Arc::new(engine), image).with_guard(guard)
}

berth_engine_core::conformance_suite!(k8s_fixture());
