//! Builds berth's test image (`berth-test/busybox:2`) on the local Docker daemon, without a
//! registry: a `FROM scratch` image holding the host's static busybox (Debian's
//! `busybox-static`). Run it with `cargo run -p berth-engine-docker --example test-image`.

use berth_engine_core::testkit::ensure_test_image;
use berth_engine_docker::{DockerConfig, DockerEngine};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = DockerEngine::connect(&DockerConfig::default()).await?;
    let image = ensure_test_image(&engine).await?;
    println!("{image}");
    Ok(())
}
