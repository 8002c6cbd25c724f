//! Canned-HTTP tests of protocol corners the simulator does not provoke: an API server (or a
//! proxy in front of it) answering 429, 500, 502 or 503. berth's client waits and retries
//! where repeating the request is harmless, honours Retry-After, and gives up within seconds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_engine_core::{ContainerEngine, EnvironmentSpec, ImageRef, SessionId};
use berth_engine_k8s::{KubernetesConfig, KubernetesEngine};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const VERSION: &str = r#"{"major":"1","minor":"32","gitVersion":"v1.32.0","gitCommit":"x","gitTreeState":"clean","buildDate":"2026-01-01T00:00:00Z","goVersion":"go1.23","compiler":"gc","platform":"linux/amd64"}"#;

/// An answer: status line, extra headers, body.
type Answer = (&'static str, &'static str, String);

/// A server answering each request (`"METHOD /path"`, its 0-based number) with `respond`; it
/// records the request lines it saw.
struct Canned {
    seen: Arc<Mutex<Vec<String>>>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
    engine: KubernetesEngine,
}

impl Canned {
    async fn start(respond: fn(&str, usize) -> Answer) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let server = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, log.clone(), respond));
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
        Self {
            seen,
            server,
            _dir: dir,
            engine,
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for Canned {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Reads whole requests (headers, then Content-Length bytes of body) off one keep-alive
/// connection and answers each.
async fn serve(
    socket: tokio::net::TcpStream,
    seen: Arc<Mutex<Vec<String>>>,
    respond: fn(&str, usize) -> Answer,
) {
    let mut reader = BufReader::new(socket);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let line: String = request_line
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let number = {
            let mut seen = seen.lock().expect("lock");
            seen.push(line.clone());
            seen.len() - 1
        };
        let (status, headers, body) = respond(&line, number);
        let reply = format!(
            "HTTP/1.1 {status}\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if reader.get_mut().write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn failure(code: u16, reason: &str, message: &str) -> String {
    format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"{message}","reason":"{reason}","code":{code}}}"#
    )
}

#[tokio::test]
async fn too_many_requests_is_retried_after_the_servers_delay() {
    let canned = Canned::start(|_, n| match n {
        0 => (
            "429 Too Many Requests",
            "Retry-After: 1\r\n",
            failure(429, "TooManyRequests", "slow down"),
        ),
        _ => ("200 OK", "", VERSION.to_owned()),
    })
    .await;
    let started = Instant::now();
    let info = canned
        .engine
        .init()
        .await
        .expect("init succeeds after one 429");
    assert_eq!(info.server_version, "v1.32.0");
    assert_eq!(canned.seen().len(), 2, "one 429, then one success");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited for Retry-After: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_proxys_bad_gateway_is_retried_for_reads() {
    let canned = Canned::start(|_, n| match n {
        0 | 1 => ("502 Bad Gateway", "", "{}".to_owned()),
        _ => ("200 OK", "", VERSION.to_owned()),
    })
    .await;
    let info = canned.engine.init().await.expect("init after two 502s");
    assert_eq!(info.server_version, "v1.32.0");
    assert_eq!(canned.seen(), ["GET /version"; 3]);
}

#[tokio::test]
async fn an_internal_error_on_create_is_not_repeated() {
    let canned = Canned::start(|_, _| {
        (
            "500 Internal Server Error",
            "",
            failure(500, "InternalError", "etcdserver: request timed out"),
        )
    })
    .await;
    let spec = EnvironmentSpec::new(
        ImageRef::new("busybox:1").expect("ref"),
        SessionId::generate(),
    );
    let err = canned
        .engine
        .start(&spec)
        .await
        .expect_err("the create failed");
    let posts = canned
        .seen()
        .into_iter()
        .filter(|l| l.starts_with("POST "))
        .count();
    assert_eq!(
        posts,
        1,
        "a POST that may have been processed is not repeated: {:?}",
        canned.seen()
    );
    assert!(format!("{err:?}").contains("etcdserver"), "{err:?}");
}

#[tokio::test]
async fn an_unavailable_server_is_given_up_on_within_seconds() {
    let canned = Canned::start(|_, _| {
        (
            "503 Service Unavailable",
            "",
            failure(503, "ServiceUnavailable", "apiserver is shutting down"),
        )
    })
    .await;
    let started = Instant::now();
    let err = canned.engine.init().await.expect_err("never available");
    let took = started.elapsed();
    assert_eq!(canned.seen().len(), 6, "the request and five retries");
    assert!(took < Duration::from_secs(20), "gave up after {took:?}");
    assert!(format!("{err:?}").contains("shutting down"), "{err:?}");
}

#[tokio::test]
async fn too_many_requests_pauses_the_engines_other_requests_too() {
    let canned = Canned::start(|_, n| match n {
        0 => (
            "429 Too Many Requests",
            "Retry-After: 2\r\n",
            failure(429, "TooManyRequests", "slow down"),
        ),
        _ => ("200 OK", "", VERSION.to_owned()),
    })
    .await;
    let started = Instant::now();
    let first = canned.engine.init();
    let second = async {
        // Sent while the first one waits out its Retry-After.
        tokio::time::sleep(Duration::from_millis(300)).await;
        canned.engine.init().await.expect("second init");
        started.elapsed()
    };
    let (first, second) = tokio::join!(first, second);
    first.expect("first init after its 429");
    assert!(
        second >= Duration::from_millis(1800),
        "another request of the engine went out during the server's Retry-After: {second:?}"
    );
    assert_eq!(canned.seen().len(), 3, "{:?}", canned.seen());
}
