//! The Docker backend over `tcp://` with TLS and client certificates: a TLS-terminating proxy
//! on 127.0.0.1 (tokio-rustls, requiring a client certificate of the test CA) forwards to the
//! local daemon's socket. Certificates are made at test time with rcgen. The conformance suite
//! runs through it, and through a docker context pointing at it; a wrong CA, an expired
//! daemon certificate and a missing file fail clearly.
//!
//! Needs a running daemon on /var/run/docker.sock. Run with `--test-threads=2` at most.

mod support;

use std::sync::Arc;

use berth_engine_core::testkit::{ensure_test_image, Fixture};
use berth_engine_core::{ContainerEngine, ErrorKind};
use berth_engine_docker::{DockerConfig, DockerEngine, TlsConfig};
use bollard::Docker;
use support::tls::{Pki, TlsProxy};
use support::{PlainContainers, TempDir};

fn tls_config(proxy: &TlsProxy, tls: TlsConfig) -> DockerConfig {
    let mut config = DockerConfig::with_host(proxy.address());
    config.tls = Some(tls);
    config
}

async fn tls_fixture() -> Fixture {
    let pki = Pki::new(false);
    let proxy = TlsProxy::start(&pki).await;
    let engine = DockerEngine::connect(&tls_config(&proxy, pki.client("ca.pem")))
        .await
        .unwrap_or_else(|e| panic!("connecting over tcp+TLS failed: {e}"));
    let image = ensure_test_image(&engine)
        .await
        .unwrap_or_else(|e| panic!("building the test image failed: {e}"));
    let raw = Docker::connect_with_defaults().expect("a Docker client");
    Fixture::new(Arc::new(engine), image)
        .with_foreign(PlainContainers(raw))
        .with_guard((pki, proxy))
}

berth_engine_core::conformance_suite!(tls_fixture());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_wrong_ca_says_the_certificate_was_not_trusted() {
    let pki = Pki::new(false);
    let proxy = TlsProxy::start(&pki).await;
    let err = DockerEngine::connect(&tls_config(&proxy, pki.client("other-ca.pem")))
        .await
        .expect_err("a daemon certificate from another CA must not be trusted");
    let text = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{text}");
    assert!(text.contains("was not trusted"), "{text}");
    assert!(text.contains("other-ca.pem"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_expired_daemon_certificate_says_expired() {
    let pki = Pki::new(true);
    let proxy = TlsProxy::start(&pki).await;
    let err = DockerEngine::connect(&tls_config(&proxy, pki.client("ca.pem")))
        .await
        .expect_err("an expired daemon certificate must not be accepted");
    let text = err.to_string();
    assert!(text.contains("expired"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_missing_client_key_names_the_file() {
    let pki = Pki::new(false);
    let proxy = TlsProxy::start(&pki).await;
    let mut tls = pki.client("ca.pem");
    tls.key = Some(pki.path("no-such-key.pem"));
    let err = DockerEngine::connect(&tls_config(&proxy, tls))
        .await
        .expect_err("a missing key file must fail");
    let text = err.to_string();
    assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{text}");
    assert!(
        text.contains("tls.key") && text.contains("no-such-key.pem"),
        "{text}"
    );
}

/// A docker context store in a temp DOCKER_CONFIG, as `docker context create` writes it,
/// pointing at the TLS endpoint with its certificates: `docker.context` connects through it,
/// and an unknown name lists the known ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_docker_context_connects_and_unknown_names_are_listed() {
    let pki = Pki::new(false);
    let proxy = TlsProxy::start(&pki).await;
    let store = TempDir::new("berth-docker-config");
    berth_engine_docker::context::write(
        &store.0,
        "far-tls",
        &proxy.address(),
        Some((
            &pki.path("ca.pem"),
            &pki.path("cert.pem"),
            &pki.path("key.pem"),
        )),
    )
    .unwrap();
    // The tests of this binary read no other DOCKER_CONFIG.
    std::env::set_var("DOCKER_CONFIG", &store.0);
    let engine = DockerEngine::connect(&DockerConfig::with_context("far-tls"))
        .await
        .unwrap_or_else(|e| panic!("connecting through the context failed: {e}"));
    assert_eq!(engine.address(), proxy.address());
    let info = engine.init().await.expect("version through the context");
    assert!(!info.server_version.is_empty());
    let err = DockerEngine::connect(&DockerConfig::with_context("near"))
        .await
        .expect_err("an unknown context");
    let text = err.to_string();
    assert!(
        text.contains("\"near\"") && text.contains("far-tls") && text.contains("context"),
        "{text}"
    );
    std::env::remove_var("DOCKER_CONFIG");
}
