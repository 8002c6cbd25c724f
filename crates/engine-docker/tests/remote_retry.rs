//! Idempotent Docker calls survive dropped connections; creates are never repeated. A unix
//! socket proxy in front of the daemon's socket closes its open connections and drops the
//! next N it accepts (real sockets, the real daemon).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_engine_core::{
    ContainerEngine, EnvironmentSpec, ErrorKind, ImageRef, LabelSelector, SessionId,
};
use berth_engine_docker::{DockerConfig, DockerEngine};
use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
use bollard::Docker;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// A proxy to the daemon's socket. [`FlakyProxy::fail_next`] closes every open connection
/// and drops the next `n` connections as soon as they are accepted.
struct FlakyProxy {
    path: PathBuf,
    to_drop: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    cut: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl FlakyProxy {
    fn start() -> Self {
        let path = std::env::temp_dir().join(format!(
            "berth-retry-{}.sock",
            uuid::Uuid::new_v4().simple()
        ));
        let listener = UnixListener::bind(&path).expect("bind the proxy socket");
        let to_drop = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (cut, cut_rx) = watch::channel(0u64);
        let (drop_count, seen) = (to_drop.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                let dropped = drop_count
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if dropped {
                    drop(client);
                    continue;
                }
                let Ok(server) = UnixStream::connect("/var/run/docker.sock").await else {
                    continue;
                };
                let mut rx = cut_rx.clone();
                rx.mark_unchanged();
                tokio::spawn(async move {
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = rx.changed() => {}
                    }
                });
            }
        });
        Self {
            path,
            to_drop,
            accepted,
            cut,
            task,
        }
    }

    fn address(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Closes the open connections and drops the next `n`; returns the accept count so far.
    fn fail_next(&self, n: usize) -> usize {
        self.to_drop.store(n, Ordering::SeqCst);
        self.cut.send_modify(|c| *c += 1);
        self.accepted.load(Ordering::SeqCst)
    }

    fn accepted_since(&self, mark: usize) -> usize {
        self.accepted.load(Ordering::SeqCst) - mark
    }
}

async fn engine_through(proxy: &FlakyProxy) -> DockerEngine {
    DockerEngine::connect(&DockerConfig::with_host(proxy.address()))
        .await
        .unwrap_or_else(|e| panic!("connecting through the proxy failed: {e}"))
}

#[tokio::test]
async fn idempotent_calls_are_retried_through_dropped_connections() {
    let proxy = FlakyProxy::start();
    let engine = engine_through(&proxy).await;

    let mark = proxy.fail_next(3);
    let info = engine
        .init()
        .await
        .unwrap_or_else(|e| panic!("version after 3 dropped connections: {e}"));
    assert!(!info.server_version.is_empty());
    assert_eq!(proxy.accepted_since(mark), 4, "3 dropped, the 4th answered");

    let mark = proxy.fail_next(2);
    engine
        .list(&LabelSelector::all())
        .await
        .unwrap_or_else(|e| panic!("list after 2 dropped connections: {e}"));
    assert!(proxy.accepted_since(mark) >= 3);
}

#[tokio::test]
async fn retries_give_up_within_seconds_with_unavailable() {
    let proxy = FlakyProxy::start();
    let engine = engine_through(&proxy).await;
    let mark = proxy.fail_next(usize::MAX / 2);
    let since = Instant::now();
    let err = engine
        .init()
        .await
        .expect_err("every connection is dropped");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains(&proxy.address()), "{err}");
    assert_eq!(proxy.accepted_since(mark), 6, "one call and 5 retries");
    assert!(
        since.elapsed() < Duration::from_secs(10),
        "{:?}",
        since.elapsed()
    );
}

#[tokio::test]
async fn a_create_is_never_repeated() {
    let proxy = FlakyProxy::start();
    let engine = engine_through(&proxy).await;
    let session = SessionId::generate();
    let spec = EnvironmentSpec::new(
        ImageRef::new("berth-test/busybox:2").unwrap(),
        session.clone(),
    );

    let mark = proxy.fail_next(1);
    let result = engine.start(&spec).await;
    let attempts = proxy.accepted_since(mark);

    // Whatever happened, leave nothing behind.
    let raw = Docker::connect_with_defaults().expect("a Docker client");
    let label = format!("{}={}", berth_engine_core::LABEL_SESSION, session.as_str());
    let left = raw
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some([("label".to_owned(), vec![label])].into()),
            ..Default::default()
        }))
        .await
        .expect("list containers");
    for c in &left {
        let _ = raw
            .remove_container(
                c.id.as_deref().unwrap_or_default(),
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }

    let err = result.expect_err("the create's connection was dropped");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert_eq!(attempts, 1, "the create was sent once, not retried");
    assert!(left.is_empty(), "no container was created: {left:?}");
}
