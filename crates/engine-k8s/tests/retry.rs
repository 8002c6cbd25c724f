//! A canned-HTTP test of a protocol corner the simulator does not provoke: the API server
//! answering 429 with Retry-After. The client (kube's default retry layer) must wait and retry
//! rather than fail.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_engine_core::ContainerEngine;
use berth_engine_k8s::{KubernetesConfig, KubernetesEngine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const VERSION: &str = r#"{"major":"1","minor":"32","gitVersion":"v1.32.0","gitCommit":"x","gitTreeState":"clean","buildDate":"2026-01-01T00:00:00Z","goVersion":"go1.23","compiler":"gc","platform":"linux/amd64"}"#;

#[tokio::test]
async fn too_many_requests_is_retried_after_the_servers_delay() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let served = hits.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let served = served.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    let reply = if served.fetch_add(1, Ordering::SeqCst) == 0 {
                        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".to_owned()
                    } else {
                        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{VERSION}", VERSION.len())
                    };
                    if socket.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n"
        ),
    )
    .expect("write kubeconfig");
    let mut config = KubernetesConfig::default();
    config.kubeconfig = Some(kubeconfig);
    let engine = KubernetesEngine::connect(config).await.expect("connect");
    let started = Instant::now();
    let info = engine.init().await.expect("init succeeds after one 429");
    server.abort();
    assert_eq!(info.server_version, "v1.32.0");
    assert_eq!(hits.load(Ordering::SeqCst), 2, "one 429, then one success");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited for Retry-After: {:?}",
        started.elapsed()
    );
}
