//! A TCP proxy between the engine and the simulator that can go silent: on every connection
//! at once (a half-open peer), or only on the connections that carry a watch (`watch=` in the
//! request line) while every other request still passes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_engine_k8s::{KubernetesConfig, KubernetesEngine};
use berth_k8s_sim::Sim;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// A proxy that forwards until frozen, then forwards nothing more while keeping the frozen
/// connections open, so the client's peer is silent rather than gone.
pub struct FreezingProxy {
    /// Where the proxy listens.
    pub addr: SocketAddr,
    rules: Arc<Rules>,
    task: tokio::task::JoinHandle<()>,
}

/// What the proxy freezes, shared by its connections.
#[derive(Default)]
struct Rules {
    /// Every connection, from its next chunk on.
    everything: AtomicBool,
    /// Only connections on which a watch is requested, from that request on.
    watches: AtomicBool,
    /// How many watch requests were held back.
    stalled_watches: AtomicUsize,
    /// The request line of every request sent through the proxy.
    requests: std::sync::Mutex<Vec<String>>,
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `chunk`, read from the client at a request boundary, opens a watch: its request
/// line (`GET /api/v1/...?...&watch=true HTTP/1.1`) names one. hyper neither pipelines nor
/// splits a bodiless GET, so a request line starts a chunk.
fn opens_watch(chunk: &[u8]) -> bool {
    let line = chunk.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    line.starts_with("GET ") && line.contains("watch=")
}

/// Forwards `from` to `to` until either closes, or forever nothing once the connection is
/// frozen (by `rules`, or by `conn` when a watch went through it).
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    rules: Arc<Rules>,
    conn: Arc<AtomicBool>,
    from_client: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if from_client {
            let line = buf[..n].split(|b| *b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line).trim_end().to_owned();
            if ["GET /", "POST /", "PUT /", "PATCH /", "DELETE /", "HEAD /"]
                .iter()
                .any(|m| line.starts_with(m))
            {
                rules
                    .requests
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(line);
            }
        }
        if from_client && rules.watches.load(Ordering::SeqCst) && opens_watch(&buf[..n]) {
            rules.stalled_watches.fetch_add(1, Ordering::SeqCst);
            conn.store(true, Ordering::SeqCst);
        }
        if rules.everything.load(Ordering::SeqCst) || conn.load(Ordering::SeqCst) {
            // Hold both sockets open and forward nothing, for ever.
            let _keep = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl FreezingProxy {
    /// Listens on a free loopback port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let rules = Arc::new(Rules::default());
        let shared = rules.clone();
        let task = tokio::spawn(async move {
            let mut pumps = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let conn = Arc::new(AtomicBool::new(false));
                pumps.spawn(pump(cr, sw, shared.clone(), conn.clone(), true));
                pumps.spawn(pump(sr, cw, shared.clone(), conn, false));
            }
        });
        Self { addr, rules, task }
    }

    /// From now on, every connection forwards nothing more (a half-open peer).
    pub fn freeze(&self) {
        self.rules.everything.store(true, Ordering::SeqCst);
    }

    /// From now on, a connection that carries a watch request forwards nothing more, that
    /// request included; every other request passes.
    pub fn freeze_watches(&self) {
        self.rules.watches.store(true, Ordering::SeqCst);
    }

    /// The request lines (`GET /api/v1/... HTTP/1.1`) forwarded so far, and forgets them.
    pub fn take_requests(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .rules
                .requests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// How many watch requests [`Self::freeze_watches`] held back so far.
    pub fn stalled_watches(&self) -> usize {
        self.rules.stalled_watches.load(Ordering::SeqCst)
    }
}

/// An engine that reaches `sim` through a [`FreezingProxy`] (60 s start timeout, then
/// `adjust`); the directory holds its kubeconfig and must outlive the engine's use.
pub async fn engine_behind_proxy(
    sim: &Sim,
    adjust: impl FnOnce(&mut KubernetesConfig),
) -> (KubernetesEngine, FreezingProxy, tempfile::TempDir) {
    let upstream: SocketAddr = sim
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .expect("sim address");
    let proxy = FreezingProxy::start(upstream).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        sim.kubeconfig()
            .replace(sim.base_url(), &format!("http://{}", proxy.addr)),
    )
    .expect("write kubeconfig");
    let mut config = KubernetesConfig::default();
    config.kubeconfig = Some(kubeconfig);
    config.start_timeout = Duration::from_secs(60);
    adjust(&mut config);
    let engine = KubernetesEngine::connect(config).await.expect("connect");
    (engine, proxy, dir)
}
