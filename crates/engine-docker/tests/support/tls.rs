//! The test TLS endpoint: a CA, daemon and client certificates made with rcgen, and a
//! TLS-terminating proxy (tokio-rustls, requiring a client certificate of the CA) in front of
//! the local daemon's socket. Included by the bench too (`#[path]`), beside `sshd.rs`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use berth_engine_docker::TlsConfig;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, UnixStream};

use super::sshd::TempDir;

/// A CA, a daemon certificate for 127.0.0.1 and a client certificate, written as PEM files.
pub struct Pki {
    pub dir: TempDir,
}

impl Pki {
    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    /// `expired`: the daemon's certificate ended in 2021.
    pub fn new(expired: bool) -> Self {
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

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    pub fn client(&self, ca: &str) -> TlsConfig {
        let mut tls = TlsConfig::from_dir(&self.dir.0);
        tls.ca = Some(self.path(ca));
        tls
    }
}

/// A TLS-terminating proxy in front of the daemon's socket; stops on drop.
pub struct TlsProxy {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsProxy {
    pub async fn start(pki: &Pki) -> Self {
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

    pub fn address(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }
}
