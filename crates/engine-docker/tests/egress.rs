//! Egress policy on Docker against the real daemon: an allow list lets through what it names
//! and refuses the rest (real TCP connections to a listener on this machine), `none` has no
//! route, a running environment's policy changes, and what runs inside cannot undo it.
//!
//! The listener is a sibling environment (full network) running two busybox `httpd`s; a
//! control environment with the full network reaches both, so a refusal is the policy's.
//! Needs root on the daemon's host (as CI runs); fails loudly otherwise.

use std::time::Duration;

use berth_engine_core::testkit::ensure_test_image;
use berth_engine_core::{
    ContainerEngine, EgressAllow, EnvironmentId, EnvironmentSpec, ErrorKind, ExecRequest, ImageRef,
    Network, SessionId,
};
use berth_engine_docker::{DockerConfig, DockerEngine};

async fn engine() -> (DockerEngine, ImageRef) {
    let engine = DockerEngine::connect(&DockerConfig::default())
        .await
        .unwrap_or_else(|e| panic!("these tests need a running Docker daemon: {e}"));
    let image = ensure_test_image(&engine).await.expect("test image");
    (engine, image)
}

/// Stops every environment it holds when dropped, panic or not.
struct Envs {
    engine: DockerEngine,
    ids: Vec<EnvironmentId>,
}

impl Drop for Envs {
    fn drop(&mut self) {
        let ids = std::mem::take(&mut self.ids);
        let engine = self.engine.clone();
        let stop = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .expect("runtime")
                .block_on(async {
                    for id in ids {
                        let _ = engine.stop(&id).await;
                    }
                });
        });
        let _ = stop.join();
    }
}

impl Envs {
    async fn start(&mut self, image: &ImageRef, name: &str, network: Network) -> EnvironmentId {
        let mut spec = EnvironmentSpec::new(image.clone(), SessionId::generate())
            .with_max_lifetime(Duration::from_secs(600))
            .with_network(network);
        spec.name = name.into();
        let id = self
            .engine
            .start(&spec)
            .await
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.ids.push(id.clone());
        id
    }
}

/// `sh -c script` in `env`: (exit code, stdout + stderr).
async fn sh(engine: &DockerEngine, env: &EnvironmentId, script: &str) -> (i32, String) {
    let out = engine
        .exec(
            env,
            ExecRequest::new(["sh", "-c", script]).with_timeout(Duration::from_secs(20)),
        )
        .await
        .unwrap_or_else(|e| panic!("exec {script}: {e}"));
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Whether an HTTP GET of `ip:port` from `env` answers `hi` (a real TCP connection, made
/// with busybox `nc`: the static busybox's `wget` crashes resolving).
async fn reaches(engine: &DockerEngine, env: &EnvironmentId, ip: &str, port: u16) -> bool {
    let (code, out) = sh(
        engine,
        env,
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port} 2>&1"),
    )
    .await;
    code == 0 && out.contains("hi")
}

/// A listener environment serving `hi` on ports 8080, 8081 and 53 (TCP, standing for a DNS
/// server that is not the environment's resolver); its bridge address.
async fn listener(envs: &mut Envs, image: &ImageRef) -> String {
    let env = envs.start(image, "listener", Network::Full).await;
    let (code, out) = sh(
        &envs.engine,
        &env,
        "mkdir -p /tmp/www && echo hi > /tmp/www/index.html && httpd -p 8080 -h /tmp/www && httpd -p 8081 -h /tmp/www && httpd -p 53 -h /tmp/www",
    )
    .await;
    assert_eq!(code, 0, "httpd: {out}");
    let (_, ip) = sh(
        &envs.engine,
        &env,
        "ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1",
    )
    .await;
    let ip = ip.trim().to_owned();
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "address {ip:?}");
    ip
}

fn allow(entries: &[String], dns: bool) -> Network {
    Network::Allow(EgressAllow::parse(entries, dns).expect("allow list"))
}

/// The OUTPUT rules in `env`'s network namespace, read from the host.
fn output_rules(env: &EnvironmentId) -> String {
    let pid = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Pid}}", env.as_str()])
        .output()
        .expect("docker inspect");
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_owned();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["iptables", "-S", "OUTPUT"])
        .output()
        .expect("nsenter iptables");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn an_allow_list_lets_through_what_it_names_and_refuses_the_rest() {
    let (engine, image) = engine().await;
    let mut envs = Envs {
        engine: engine.clone(),
        ids: Vec::new(),
    };
    let ip = listener(&mut envs, &image).await;
    let control = envs.start(&image, "control", Network::Full).await;
    assert!(reaches(&engine, &control, &ip, 8080).await);
    assert!(reaches(&engine, &control, &ip, 8081).await);

    let limited = envs
        .start(&image, "limited", allow(&[format!("{ip}:8080")], false))
        .await;
    assert!(reaches(&engine, &limited, &ip, 8080).await, "allowed");
    assert!(!reaches(&engine, &limited, &ip, 8081).await, "denied port");
    // Refused at once (a reset), not left to time out.
    let (code, out) = sh(&engine, &limited, &format!("nc -w 5 {ip} 8081 </dev/null")).await;
    assert_ne!(code, 0, "{out}");
    // Attacks from inside: the firewall and routes cannot be changed, raw sockets (ping)
    // get nowhere.
    for attack in [
        "ip route del default",
        "ip link set eth0 down",
        "ip addr add 10.99.0.1/32 dev eth0",
        &format!("ping -c 1 -W 2 {ip}"),
    ] {
        let (code, out) = sh(&engine, &limited, attack).await;
        assert_ne!(code, 0, "{attack} worked: {out}");
    }
    assert!(reaches(&engine, &limited, &ip, 8080).await, "still allowed");
    let rules = output_rules(&limited);
    assert!(rules.contains("-P OUTPUT DROP"), "{rules}");
    assert!(
        !rules.contains("--dport 53"),
        "dns: false has no DNS rule: {rules}"
    );

    // A CIDR without a port allows every port of the block; dns: true opens the resolver.
    let block = envs
        .start(&image, "block", allow(&[format!("{ip}/32")], true))
        .await;
    assert!(reaches(&engine, &block, &ip, 8080).await);
    assert!(reaches(&engine, &block, &ip, 8081).await);
    let rules = output_rules(&block);
    assert!(rules.contains("--dport 53"), "dns: true: {rules}");

    // dns: true opens port 53 of the resolver only, not of any address.
    assert!(reaches(&engine, &control, &ip, 53).await);
    let dns_only = envs.start(&image, "dnsonly", allow(&[], true)).await;
    assert!(!reaches(&engine, &dns_only, &ip, 53).await, "53 elsewhere");
    assert!(!reaches(&engine, &dns_only, &ip, 8080).await);
}

#[tokio::test]
async fn none_has_no_route_and_a_running_policy_changes() {
    let (engine, image) = engine().await;
    let mut envs = Envs {
        engine: engine.clone(),
        ids: Vec::new(),
    };
    let ip = listener(&mut envs, &image).await;

    let none = envs.start(&image, "none", Network::None).await;
    let (_, routes) = sh(&engine, &none, "ip route").await;
    assert!(routes.trim().is_empty(), "routes: {routes}");
    assert!(!reaches(&engine, &none, &ip, 8080).await);

    let env = envs
        .start(&image, "changing", allow(&[format!("{ip}:8080")], false))
        .await;
    assert!(reaches(&engine, &env, &ip, 8080).await);
    assert!(!reaches(&engine, &env, &ip, 8081).await);
    engine
        .set_network(&env, &allow(&[format!("{ip}:8081")], false))
        .await
        .expect("to 8081");
    assert!(!reaches(&engine, &env, &ip, 8080).await, "8080 now denied");
    assert!(reaches(&engine, &env, &ip, 8081).await, "8081 now allowed");
    engine
        .set_network(&env, &Network::None)
        .await
        .expect("none");
    let (_, routes) = sh(&engine, &env, "ip route").await;
    assert!(routes.trim().is_empty(), "routes after none: {routes}");
    assert!(!reaches(&engine, &env, &ip, 8081).await);
    engine
        .set_network(&env, &Network::Full)
        .await
        .expect("full");
    assert!(reaches(&engine, &env, &ip, 8080).await, "full again");
    assert!(reaches(&engine, &env, &ip, 8081).await, "full again");
    // From none straight to an allow list: the rules come before the interface.
    engine
        .set_network(&none, &allow(&[format!("{ip}:8081")], true))
        .await
        .expect("none to allow");
    assert!(reaches(&engine, &none, &ip, 8081).await);
    assert!(!reaches(&engine, &none, &ip, 8080).await);

    // The environment renames itself and names the listener as its resolver, then asks for
    // DNS: the policy still applies to it, and a policy applied later does not take the
    // environment's word for where its resolver is.
    let (code, out) = sh(
        &engine,
        &env,
        &format!("echo 'nameserver {ip}' > /etc/resolv.conf && echo forged > /etc/hostname"),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    engine
        .set_network(&env, &allow(&[format!("{ip}:8080")], true))
        .await
        .expect("with dns");
    assert!(reaches(&engine, &env, &ip, 8080).await);
    assert!(!reaches(&engine, &env, &ip, 53).await, "a forged resolver");

    let missing = EnvironmentId::new("berth-no-such-environment").unwrap();
    let err = engine
        .set_network(&missing, &Network::Full)
        .await
        .expect_err("missing");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn a_run_with_an_allow_list_is_refused_and_a_bad_host_names_the_entry() {
    let (engine, image) = engine().await;
    let spec = EnvironmentSpec::new(image.clone(), SessionId::generate())
        .with_network(allow(&["10.0.0.0/8:443".to_owned()], true));
    let run = berth_engine_core::RunSpec::new(spec, ["true"]);
    let err = engine.submit_run(&run).await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("first process"), "{err}");

    // A name that does not resolve: the start fails naming it, and leaves nothing behind.
    let session = SessionId::generate();
    let spec = EnvironmentSpec::new(image, session.clone())
        .with_network(allow(&["no-such-host.invalid:443".to_owned()], true));
    let err = engine.start(&spec).await.expect_err("unresolvable");
    assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{err}");
    assert!(err.to_string().contains("no-such-host.invalid"), "{err}");
    let left = engine
        .list(&berth_engine_core::LabelSelector::session(&session))
        .await
        .expect("list");
    assert!(left.is_empty(), "{left:?}");
}
