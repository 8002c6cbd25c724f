//! The Docker backend over `tcp://` with TLS and client certificates: a TLS-terminating proxy
//! on 127.0.0.1 (tokio-rustls, requiring a client certificate of the test CA) forwards to the
//! local daemon's socket. Certificates are made at test time with rcgen. The conformance suite
//! runs through it, and through a docker context pointing at it; a wrong CA, an expired
//! daemon certificate and a missing file fail clearly.
//!
//! Needs a running daemon on /var/run/docker.sock. Run with `--test-threads=2` at most.

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use berth_engine_core::testkit::{ensure_test_image, Fixture};
use berth_engine_core::{ContainerEngine, ErrorKind};
use berth_engine_docker::{DockerConfig, DockerEngine, TlsConfig};
use bollard::Docker;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::{PlainContainers, TempDir};
use tokio::net::{TcpListener, UnixStream};

/// A CA, a daemon certificate for 127.0.0.1 and a client certificate, written as PEM files.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    /// `expired`: the daemon's certificate ended in 2021.
    fn new(expired: bool) -> Self {
        let dir = TempDir::new("berth-tls");
        let d = &dir.0;
        let ca = Self::ca("berth test CA");
        let other_ca = Self::ca("some other CA");
        let mut server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        if expired {
            server.not_before = rcgen::date_time_ymd(2020, 1, 1);
            server.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &ca).unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client.distinguished_name.push(DnType::CommonName, "berth");
        client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().unwrap();
        let client_cert = client.signed_by(&client_key, &ca).unwrap();
        let write = |name: &str, text: String| std::fs::write(d.join(name), text).unwrap();
        write("ca.pem", ca.pem());
        write("other-ca.pem", other_ca.pem());
        write("server-cert.pem", server_cert.pem());
        write("server-key.pem", server_key.serialize_pem());
        write("cert.pem", client_cert.pem());
        write("key.pem", client_key.serialize_pem());
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    fn client(&self, ca: &str) -> TlsConfig {
        let mut tls = TlsConfig::from_dir(&self.dir.0);
        tls.ca = Some(self.path(ca));
        tls
    }
}

/// A TLS-terminating proxy in front of the daemon's socket; stops on drop.
struct TlsProxy {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsProxy {
    async fn start(pki: &Pki) -> Self {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(pki.path("server-cert.pem"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(pki.path("server-key.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { return };
                        let acceptor = acceptor.clone();
                        conns.spawn(async move {
                            let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                            let Ok(mut daemon) = UnixStream::connect("/var/run/docker.sock").await else { return };
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut daemon).await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Self { port, task }
    }

    fn address(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }
}

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
