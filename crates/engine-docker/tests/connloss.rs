//! A lost daemon connection is an error within seconds, never a hang, a timeout or a
//! success: a proxy in front of the daemon's socket closes its connections mid-exec.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_engine_core::testkit::ensure_test_image;
use berth_engine_core::{ContainerEngine, EnvironmentSpec, ErrorKind, ExecRequest, SessionId};
use berth_engine_docker::{DockerConfig, DockerEngine};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// A unix socket proxy in front of the daemon's socket. `cut` closes every open connection;
/// with `die` it also stops accepting (the proxy is gone), without it new connections work.
struct SocketProxy {
    path: PathBuf,
    cut: watch::Sender<Option<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SocketProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl SocketProxy {
    fn start(upstream: PathBuf) -> Self {
        let path = std::env::temp_dir().join(format!(
            "berth-connloss-{}.sock",
            uuid::Uuid::new_v4().simple()
        ));
        let listener = UnixListener::bind(&path).expect("bind the proxy socket");
        let (cut, cut_rx) = watch::channel(None::<bool>);
        let task = tokio::spawn(async move {
            let mut accept_rx = cut_rx.clone();
            loop {
                let client = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => return,
                    },
                    _ = accept_rx.changed() => {
                        if *accept_rx.borrow() == Some(true) {
                            return;
                        }
                        continue;
                    }
                };
                let Ok(server) = UnixStream::connect(&upstream).await else {
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
        Self { path, cut, task }
    }

    fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }
}

fn daemon_socket() -> PathBuf {
    let address = DockerConfig::default().address();
    PathBuf::from(
        address
            .strip_prefix("unix://")
            .expect("these tests need the daemon on a unix socket"),
    )
}

/// Runs `sleep 300` through the proxy, cuts it (`die`: the proxy goes away entirely), and
/// expects `ConnectionLost` within 5 s.
async fn cut_mid_exec(die: bool) {
    let direct = DockerEngine::connect(&DockerConfig::default())
        .await
        .unwrap_or_else(|e| panic!("these tests need a running Docker daemon: {e}"));
    let image = ensure_test_image(&direct).await.expect("test image");
    let proxy = SocketProxy::start(daemon_socket());
    let engine = DockerEngine::connect(&DockerConfig::with_host(proxy.host()))
        .await
        .expect("connect through the proxy");
    let spec = EnvironmentSpec::new(image, SessionId::generate())
        .with_max_lifetime(Duration::from_secs(600));
    let env = engine.start(&spec).await.expect("start");
    let outcome = async {
        let process = engine
            .exec_streaming(&env, ExecRequest::new(["sleep", "300"]))
            .await
            .expect("exec sleep");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let fault = Instant::now();
        proxy.cut.send_replace(Some(die));
        let outcome = tokio::time::timeout(Duration::from_secs(30), process.wait())
            .await
            .expect("the exec must not hang after its connection is lost");
        let err = outcome.expect_err("a lost connection is never a success");
        assert_eq!(err.kind(), ErrorKind::ConnectionLost, "{err} ({err:?})");
        assert!(
            err.to_string().contains(&format!("berth exec {env} -- ps")),
            "{err}"
        );
        assert!(
            fault.elapsed() < Duration::from_secs(5),
            "reported {:?} after the loss",
            fault.elapsed()
        );
    };
    let result = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(outcome)).await;
    direct.stop(&env).await.expect("stop");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connloss_proxy_gone_mid_exec_is_connection_lost() {
    cut_mid_exec(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connloss_connection_closed_mid_exec_is_connection_lost() {
    cut_mid_exec(false).await;
}
