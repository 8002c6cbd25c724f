//! Shared by the `berth` binary's test files.

use berth_engine_core::testkit::ensure_test_image;
use berth_engine_docker::{DockerConfig, DockerEngine};

/// Builds the test image once, failing loudly without a Docker daemon.
pub async fn test_image() {
    let engine = DockerEngine::connect(&DockerConfig::default())
        .await
        .unwrap_or_else(|e| panic!("these tests need a running Docker daemon: {e}"));
    ensure_test_image(&engine).await.expect("test image");
}
