//! Docker-only behaviour: connection errors, the hardened container the backend creates, and
//! the keepalive's response to SIGTERM. Needs a running daemon; fails loudly without one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_engine_core::testkit::ensure_test_image;
use berth_engine_core::{
    ContainerEngine, EnvironmentSpec, EnvironmentState, ErrorKind, ExecRequest, LabelSelector,
    Resources, SessionId, Workspace, HARDENED_CAPABILITIES, LABEL_MANAGED_BY, LABEL_SESSION,
};
use berth_engine_docker::{DockerConfig, DockerEngine};
use bollard::query_parameters::{KillContainerOptions, ListVolumesOptions};
use bollard::Docker;

mod support;

use support::StopOnDrop;

async fn engine() -> (DockerEngine, berth_engine_core::ImageRef) {
    let engine = DockerEngine::connect(&DockerConfig::default())
        .await
        .unwrap_or_else(|e| panic!("these tests need a running Docker daemon: {e}"));
    let image = ensure_test_image(&engine).await.expect("test image");
    (engine, image)
}

fn raw() -> Docker {
    Docker::connect_with_defaults().expect("docker client")
}

#[tokio::test]
async fn unreachable_daemon_is_unavailable_naming_the_address() {
    let err = DockerEngine::connect(&DockerConfig::with_host("unix:///nonexistent/berth.sock"))
        .await
        .expect_err("no daemon there");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let text = err.to_string();
    assert!(text.contains("unix:///nonexistent/berth.sock"), "{text}");
    assert!(text.contains("DOCKER_HOST"), "says what to do: {text}");
    let err = DockerEngine::connect(&DockerConfig::with_host("tcp://127.0.0.1:1"))
        .await
        .expect_err("nothing listens on port 1");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}

#[tokio::test]
async fn malformed_host_is_invalid_spec() {
    let err = DockerEngine::connect(&DockerConfig::with_host("ftp://example"))
        .await
        .expect_err("not a daemon address");
    assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{err}");
    assert!(
        err.to_string()
            .starts_with("invalid host: \"ftp://example\""),
        "{err}"
    );
    assert!(
        !err.to_string().contains("docker.host"),
        "engines name no config keys: {err}"
    );
}

#[tokio::test]
async fn api_version_is_negotiated() {
    let (engine, _) = engine().await;
    let info = engine.init().await.expect("init");
    let api = info.api_version.expect("api version");
    let daemon_max = raw()
        .version()
        .await
        .expect("version")
        .api_version
        .expect("api");
    let as_pair = |v: &str| -> (u32, u32) {
        let (a, b) = v.split_once('.').expect("major.minor");
        (a.parse().expect("major"), b.parse().expect("minor"))
    };
    assert!(
        as_pair(&api) <= as_pair(&daemon_max),
        "{api} > {daemon_max}"
    );
}

#[tokio::test]
async fn container_is_hardened_labelled_and_limited() {
    let (engine, image) = engine().await;
    let session = SessionId::generate();
    let mut spec = EnvironmentSpec::new(image, session.clone())
        .with_workspace(Workspace::Ephemeral)
        .with_resources({
            let mut r = Resources::default();
            r.memory_bytes = Some(256 * 1024 * 1024);
            r.cpu_millis = Some(500);
            r.pids = Some(128);
            r
        });
    spec.name = "hardened".into();
    let env = engine.start(&spec).await.expect("start");
    let _cleanup = StopOnDrop(env.clone());
    let inspect = raw().inspect_container(env.as_str(), None).await;
    let status = engine
        .exec(
            &env,
            ExecRequest::shell("grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status"),
        )
        .await;
    let volumes_during = raw()
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("{LABEL_SESSION}={session}")],
            )])),
        }))
        .await;
    engine.stop(&env).await.expect("stop");
    let inspect = inspect.expect("inspect");
    let host = inspect.host_config.expect("host config");
    assert_eq!(host.init, Some(true));
    assert_eq!(host.privileged, Some(false));
    assert!(host
        .security_opt
        .unwrap_or_default()
        .iter()
        .any(|o| o.starts_with("no-new-privileges")));
    let dropped = host.cap_drop.unwrap_or_default();
    let added = host.cap_add.unwrap_or_default();
    if engine.is_podman() {
        // Podman reports the drop expanded against its own default set (which lacks
        // SYS_ADMIN and the like anyway), never "ALL": the effective set below is the proof.
        for dangerous in ["NET_RAW", "MKNOD", "SYS_CHROOT", "SETFCAP"] {
            assert!(
                dropped.iter().any(|c| c.ends_with(dangerous)),
                "{dangerous} not in the dropped {dropped:?}"
            );
        }
    } else {
        assert_eq!(dropped, ["ALL"]);
    }
    for dangerous in ["SYS_ADMIN", "NET_RAW", "MKNOD", "SYS_PTRACE"] {
        assert!(
            !added.iter().any(|c| c.ends_with(dangerous)),
            "{dangerous} in {added:?}"
        );
    }
    for kept in &added {
        let name = kept.trim_start_matches("CAP_");
        assert!(
            HARDENED_CAPABILITIES.contains(&name),
            "{kept} is not one of berth's hardened set {HARDENED_CAPABILITIES:?}"
        );
    }
    // What the kernel grants: exactly berth's hardened set, effective and bounding.
    let bit = |name: &str| match name {
        "CHOWN" => 0,
        "DAC_OVERRIDE" => 1,
        "FOWNER" => 3,
        "FSETID" => 4,
        "KILL" => 5,
        "SETGID" => 6,
        "SETUID" => 7,
        "NET_BIND_SERVICE" => 10,
        other => panic!("add {other}'s bit here"),
    };
    let expected: u64 = HARDENED_CAPABILITIES.iter().map(|c| 1 << bit(c)).sum();
    let status = status.expect("exec").stdout_lossy();
    for field in ["CapEff", "CapBnd"] {
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"));
        assert_eq!(value, Some(expected), "{field} in {status}");
    }
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert_eq!(host.pids_limit, Some(128));
    assert_eq!(host.memory, Some(256 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    let mounts = inspect.mounts.unwrap_or_default();
    assert!(
        !mounts
            .iter()
            .any(|m| m.source.as_deref().unwrap_or("").contains("docker.sock")),
        "the Docker socket must never be mounted: {mounts:?}"
    );
    let labels = inspect.config.expect("config").labels.expect("labels");
    assert_eq!(
        labels.get(LABEL_MANAGED_BY).map(String::as_str),
        Some("berth")
    );
    assert_eq!(labels.get(LABEL_SESSION), Some(&session.to_string()));
    let volumes = volumes_during
        .expect("list volumes")
        .volumes
        .unwrap_or_default();
    assert_eq!(
        volumes.len(),
        1,
        "the ephemeral workspace volume is labelled: {volumes:?}"
    );
    // And it went with the environment.
    let after = raw()
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("{LABEL_SESSION}={session}")],
            )])),
        }))
        .await
        .expect("list volumes")
        .volumes
        .unwrap_or_default();
    assert!(after.is_empty(), "left behind: {after:?}");
}

#[tokio::test]
async fn keepalive_dies_promptly_on_sigterm() {
    let (engine, image) = engine().await;
    let session = SessionId::generate();
    let spec = EnvironmentSpec::new(image, session.clone());
    let env = engine.start(&spec).await.expect("start");
    let _cleanup = StopOnDrop(env.clone());
    // A signal reaches PID 1 of a namespace only once it handles it: wait until the init
    // (Docker's tini, Podman's catatonit) has started the keepalive, which each does after
    // setting up its signal handling, an instant after start returns on a fast daemon.
    let ready = Instant::now();
    loop {
        let children = engine
            .exec(&env, ExecRequest::new(["cat", "/proc/1/task/1/children"]))
            .await
            .expect("read init's children")
            .stdout_lossy();
        if !children.trim().is_empty() {
            break;
        }
        assert!(
            ready.elapsed() < Duration::from_secs(10),
            "init never started the keepalive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let docker = raw();
    let sent = Instant::now();
    let killed = docker
        .kill_container(
            env.as_str(),
            Some(KillContainerOptions {
                signal: "SIGTERM".into(),
            }),
        )
        .await;
    let mut exited = None;
    while killed.is_ok() && sent.elapsed() < Duration::from_secs(20) {
        // Through the engine's list: it reads Podman's own states (`stopped`), which a
        // plain bollard inspect cannot.
        let listed = engine
            .list(&LabelSelector::session(&session))
            .await
            .expect("list");
        let state = listed.iter().find(|s| s.id == env).map(|s| s.state);
        if matches!(state, Some(EnvironmentState::Exited) | None) {
            exited = Some(sent.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine.stop(&env).await.expect("stop");
    killed.expect("send SIGTERM");
    let exited = exited.expect("the keepalive ignored SIGTERM for 20 s");
    eprintln!("keepalive exited {exited:?} after SIGTERM");
}

#[tokio::test]
async fn failed_pull_names_the_image() {
    let (engine, _) = engine().await;
    let image = berth_engine_core::ImageRef::new(format!(
        "berth-test/never-published:{}",
        SessionId::generate()
    ))
    .expect("image ref");
    let err = engine
        .ensure_image(
            &image,
            berth_engine_core::PullPolicy::IfNotPresent,
            &berth_engine_core::Progress::none(),
        )
        .await
        .expect_err("nothing can publish this image");
    // Offline the registry is unreachable (ImagePull); online it says not found.
    assert!(
        matches!(err.kind(), ErrorKind::ImagePull | ErrorKind::ImageNotFound),
        "{err:?}"
    );
    assert!(err.to_string().contains(image.as_str()), "{err}");
}
