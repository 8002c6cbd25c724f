//! The engine-core conformance suite, unchanged, against the real Docker daemon.
//!
//! These tests need a running daemon and fail loudly without one.

use std::sync::Arc;

use berth_engine_core::testkit::{ensure_test_image, Fixture};
use berth_engine_docker::{DockerConfig, DockerEngine};
use bollard::Docker;

mod support;

use support::PlainContainers;

async fn docker_fixture() -> Fixture {
    let engine = DockerEngine::connect(&DockerConfig::default())
        .await
        .unwrap_or_else(|e| panic!("these tests need a running Docker daemon: {e}"));
    let image = ensure_test_image(&engine)
        .await
        .unwrap_or_else(|e| panic!("building the test image failed: {e}"));
    let raw = Docker::connect_with_defaults().expect("a Docker client");
    Fixture::new(Arc::new(engine), image).with_foreign(PlainContainers(raw))
}

berth_engine_core::conformance_suite!(docker_fixture());
