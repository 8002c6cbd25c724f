//! Env files and secret files on Docker: variables read from a local `KEY=VALUE` file, a
//! local file mounted read-only, and a missing file an error naming it. Needs a running local
//! daemon; fails loudly without one.

mod support;

use std::collections::BTreeMap;

use berth_engine_core::testkit::ensure_test_image;
use berth_engine_core::{ContainerEngine, EnvironmentSpec, ErrorKind, ExecRequest, SessionId};
use berth_engine_docker::{ContainerFiles, DockerConfig, DockerEngine};

/// Removes the environment's container when the test ends, also on a panic.
struct Removed(String);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", "-v", &self.0])
            .output();
    }
}

async fn engine(files: ContainerFiles) -> (DockerEngine, berth_engine_core::ImageRef) {
    let mut config = DockerConfig::default();
    config.files = files;
    let engine = DockerEngine::connect(&config)
        .await
        .unwrap_or_else(|e| panic!("these tests need a running Docker daemon: {e}"));
    let image = ensure_test_image(&engine).await.expect("test image");
    (engine, image)
}

#[tokio::test]
async fn env_files_and_read_only_secret_files_reach_the_environment() {
    let dir = support::TempDir::new("berth-files");
    let env_file = dir.0.join("app.env");
    std::fs::write(&env_file, "# settings\nAPI_TOKEN=s3cret value\nMODE=file\n").unwrap();
    let secret = dir.0.join("token");
    std::fs::write(&secret, "top-secret\n").unwrap();
    let files = ContainerFiles::new(
        vec![env_file],
        BTreeMap::from([("/run/secrets/token".to_owned(), secret.clone())]),
    );
    let (engine, image) = engine(files).await;
    let mut spec = EnvironmentSpec::new(image, SessionId::generate());
    spec.env.insert("MODE".into(), "spec".into());
    let env = engine.start(&spec).await.expect("start");
    let _removed = Removed(env.as_str().to_owned());
    let out = engine
        .exec(
            &env,
            ExecRequest::shell("echo \"$API_TOKEN|$MODE\"; cat /run/secrets/token"),
        )
        .await
        .expect("exec");
    assert_eq!(
        out.stdout_lossy(),
        "s3cret value|spec\ntop-secret\n",
        "the spec's own env wins over a file's"
    );
    let out = engine
        .exec(
            &env,
            ExecRequest::shell("echo changed > /run/secrets/token"),
        )
        .await
        .expect("exec");
    assert!(!out.status.success(), "the secret file is read-only inside");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "top-secret\n");
    engine.stop(&env).await.expect("stop");
}

#[tokio::test]
async fn a_missing_local_file_is_an_error_naming_it() {
    let dir = support::TempDir::new("berth-files");
    let missing = dir.0.join("no-such-token");
    let (engine, image) = engine(ContainerFiles::new(
        Vec::new(),
        BTreeMap::from([("/run/secrets/token".to_owned(), missing.clone())]),
    ))
    .await;
    let spec = EnvironmentSpec::new(image.clone(), SessionId::generate());
    let err = engine.start(&spec).await.expect_err("missing secret file");
    assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{err}");
    assert!(err.to_string().contains("no-such-token"), "{err}");
    let (engine, image) = engine_with_env_file(&dir.0.join("no-such.env")).await;
    let err = engine
        .start(&EnvironmentSpec::new(image, SessionId::generate()))
        .await
        .expect_err("missing env file");
    assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{err}");
    assert!(err.to_string().contains("no-such.env"), "{err}");
}

async fn engine_with_env_file(
    file: &std::path::Path,
) -> (DockerEngine, berth_engine_core::ImageRef) {
    engine(ContainerFiles::new(vec![file.to_owned()], BTreeMap::new())).await
}
