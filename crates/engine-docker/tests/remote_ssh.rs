//! The Docker backend over `ssh://`: an sshd on 127.0.0.1 started by the harness (as root, so
//! the remote side's `docker system dial-stdio` reaches the local daemon), the whole
//! conformance suite through it, and its failures: a wrong client key, an unknown or changed
//! host key, a refused port, sshd killed mid-exec.
//!
//! Needs `openssh-server` (`apt-get install -y openssh-server`), root, and a running daemon.
//! Run with `--test-threads=2` at most.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_engine_core::testkit::{ensure_test_image, Fixture};
use berth_engine_core::{ContainerEngine, EnvironmentSpec, ErrorKind, ExecRequest, SessionId};
use berth_engine_docker::{DockerConfig, DockerEngine};
use bollard::Docker;
use support::{PlainContainers, Sshd};

fn ssh_config(sshd: &Sshd, client: std::path::PathBuf) -> DockerConfig {
    let mut config = DockerConfig::with_host(sshd.address());
    config.ssh_config = Some(client);
    config
}

async fn ssh_fixture() -> Fixture {
    let sshd = Sshd::start();
    let engine = DockerEngine::connect(&ssh_config(&sshd, sshd.good_config()))
        .await
        .unwrap_or_else(|e| panic!("connecting over ssh:// failed: {e}"));
    assert!(engine.address().starts_with("ssh://"));
    let image = ensure_test_image(&engine)
        .await
        .unwrap_or_else(|e| panic!("building the test image failed: {e}"));
    let raw = Docker::connect_with_defaults().expect("a Docker client");
    Fixture::new(Arc::new(engine), image)
        .with_foreign(PlainContainers(raw))
        .with_guard(sshd)
}

berth_engine_core::conformance_suite!(ssh_fixture());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_wrong_client_key_is_an_authentication_error_naming_the_host() {
    let sshd = Sshd::start();
    let err = DockerEngine::connect(&ssh_config(
        &sshd,
        sshd.client_config("other_key", "known_hosts"),
    ))
    .await
    .expect_err("a key the server does not know must not connect");
    let text = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Forbidden, "{text}");
    assert!(text.contains("authentication failed"), "{text}");
    assert!(text.contains("root@127.0.0.1"), "{text}");
    assert!(text.contains("ssh-add"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_unknown_host_key_is_a_host_key_error_never_a_prompt() {
    let sshd = Sshd::start();
    let started = Instant::now();
    let err = DockerEngine::connect(&ssh_config(
        &sshd,
        sshd.client_config("client_key", "empty_known_hosts"),
    ))
    .await
    .expect_err("an unknown host key must not connect");
    let text = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Forbidden, "{text}");
    assert!(text.contains("not in known_hosts"), "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(20), "it waited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_changed_host_key_is_a_mismatch_error() {
    let sshd = Sshd::start();
    let d = &sshd.dir.0;
    let other = std::fs::read_to_string(d.join("other_key.pub")).unwrap();
    let other: Vec<&str> = other.split_whitespace().take(2).collect();
    std::fs::write(
        d.join("wrong_known_hosts"),
        format!("[127.0.0.1]:{} {}\n", sshd.port, other.join(" ")),
    )
    .unwrap();
    let err = DockerEngine::connect(&ssh_config(
        &sshd,
        sshd.client_config("client_key", "wrong_known_hosts"),
    ))
    .await
    .expect_err("a changed host key must not connect");
    let text = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Forbidden, "{text}");
    assert!(text.contains("does not match"), "{text}");
    assert!(text.contains("ssh-keygen -R 127.0.0.1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_refused_port_is_unavailable_naming_the_host() {
    let mut sshd = Sshd::start();
    let config = ssh_config(&sshd, sshd.good_config());
    sshd.kill();
    let err = DockerEngine::connect(&config)
        .await
        .expect_err("nothing listens any more");
    let text = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{text}");
    assert!(
        text.contains("refused") && text.contains("127.0.0.1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_sshd_killed_mid_exec_is_connection_lost_within_seconds() {
    let direct = DockerEngine::connect(&DockerConfig::default())
        .await
        .unwrap_or_else(|e| panic!("these tests need a running Docker daemon: {e}"));
    let image = ensure_test_image(&direct).await.expect("test image");
    let mut sshd = Sshd::start();
    let engine = DockerEngine::connect(&ssh_config(&sshd, sshd.good_config()))
        .await
        .expect("connect over ssh");
    let spec = EnvironmentSpec::new(image, SessionId::generate())
        .with_max_lifetime(Duration::from_secs(600));
    let env = engine.start(&spec).await.expect("start over ssh");
    let outcome = async {
        let process = engine
            .exec_streaming(&env, ExecRequest::new(["sleep", "300"]))
            .await
            .expect("exec sleep");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let fault = Instant::now();
        sshd.kill();
        let outcome = tokio::time::timeout(Duration::from_secs(30), process.wait())
            .await
            .expect("the exec must not hang after sshd died");
        let err = outcome.expect_err("a lost connection is never a success");
        assert_eq!(err.kind(), ErrorKind::ConnectionLost, "{err} ({err:?})");
        assert!(err.to_string().contains("ssh://root@127.0.0.1"), "{err}");
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

/// A docker context store in a temp DOCKER_CONFIG whose context points at the ssh endpoint:
/// `docker.context` connects through it, the engine reports the ssh address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_docker_context_connects_through_ssh() {
    let sshd = Sshd::start();
    let store = support::TempDir::new("berth-docker-config");
    berth_engine_docker::context::write(&store.0, "far-ssh", &sshd.address(), None).unwrap();
    // The other tests of this binary name their host and read no DOCKER_CONFIG.
    std::env::set_var("DOCKER_CONFIG", &store.0);
    let mut config = DockerConfig::with_context("far-ssh");
    config.ssh_config = Some(sshd.good_config());
    let result = DockerEngine::connect(&config).await;
    std::env::remove_var("DOCKER_CONFIG");
    let engine = result.unwrap_or_else(|e| panic!("connecting through the context failed: {e}"));
    assert_eq!(engine.address(), sshd.address());
    let info = engine.init().await.expect("version over ssh");
    assert!(!info.server_version.is_empty());
}
