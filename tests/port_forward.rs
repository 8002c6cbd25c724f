//! End-to-end tests of `berth port-forward` against the real Docker daemon: curl reaches
//! busybox httpd inside an environment through the built binary, a closed port fails only its
//! client, Ctrl-C ends the forward with 130, and a removed environment with 125.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use berth_engine_core::testkit::TEST_IMAGE;

mod common;

use common::{fresh_session, json_of, text};

fn berth(args: &[&str]) -> Command {
    common::berth_with_state("berth-state-port-forward", args)
}

fn run(args: &[&str]) -> Output {
    berth(args)
        .output()
        .unwrap_or_else(|e| panic!("berth {args:?}: {e}"))
}

/// curl (a client berth did not write) GETs `url`; its output, exit code and stderr.
fn curl(url: &str) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "30", url])
        .output()
        .expect("these tests need curl (apt-get install curl)")
}

/// Kills the forward if the test fails before it does.
struct Forward(Child);

impl Forward {
    /// Spawns `berth --json port-forward ...` and reads the address it printed once listening.
    fn spawn(mut cmd: Command) -> (Self, String) {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn berth port-forward");
        let mut forward = Forward(child);
        let mut line = String::new();
        BufReader::new(forward.0.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("read the address line");
        let printed: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert_eq!(printed["remote_port"], 8080, "{printed}");
        let address = printed["address"].as_str().expect("address").to_owned();
        (forward, address)
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn curl_reaches_httpd_through_port_forward_ctrl_c_exits_130_a_removed_env_125() {
    let (session, _cleanup) = fresh_session().await;
    let out = run(&["--json", "up", "--image", TEST_IMAGE, "--session", &session]);
    assert!(out.status.success(), "up: {}", text(&out.stderr));
    let env = json_of(&out)["id"].as_str().expect("id").to_owned();

    let (mut forward, address) = Forward::spawn(berth(&["--json", "port-forward", &env, "8080"]));
    assert!(address.starts_with("127.0.0.1:"), "{address}");
    assert_ne!(address, "127.0.0.1:0");

    // Nothing listens inside yet: that client fails, the forward goes on.
    let refused = curl(&format!("http://{address}/"));
    assert!(!refused.status.success(), "{}", text(&refused.stdout));

    let out = run(&[
        "exec",
        &env,
        "--",
        "sh",
        "-c",
        "mkdir -p /tmp/www && echo served from inside > /tmp/www/index.html && httpd -p 8080 -h /tmp/www",
    ]);
    assert!(out.status.success(), "exec httpd: {}", text(&out.stderr));
    let answer = curl(&format!("http://{address}/index.html"));
    assert!(answer.status.success(), "curl: {}", text(&answer.stderr));
    assert_eq!(text(&answer.stdout), "served from inside\n");

    Command::new("kill")
        .args(["-INT", &forward.0.id().to_string()])
        .status()
        .expect("kill -INT");
    let status = forward.0.wait().expect("wait for berth");
    assert_eq!(status.code(), Some(130), "Ctrl-C must exit 130");
    let mut stderr = String::new();
    std::io::Read::read_to_string(forward.0.stderr.as_mut().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(
        stderr.contains("cannot connect to port 8080"),
        "the refused client was not reported: {stderr}"
    );
    assert!(
        curl(&format!("http://{address}/")).status.code() != Some(0),
        "still listening after Ctrl-C"
    );

    // A forward whose environment goes away ends with 125 at its next client.
    let (mut forward, address) = Forward::spawn(berth(&["--json", "port-forward", &env, "8080"]));
    let out = run(&["down", &env]);
    assert!(out.status.success(), "down: {}", text(&out.stderr));
    let _ = curl(&format!("http://{address}/"));
    let status = forward.0.wait().expect("wait for berth");
    assert_eq!(
        status.code(),
        Some(125),
        "a forward to a removed environment"
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(forward.0.stderr.as_mut().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(
        stderr.contains(&format!("stopped forwarding to {env}")),
        "{stderr}"
    );
}

#[test]
fn bad_ports_and_missing_environments_exit_125() {
    for ports in ["0", "x", "8080:0", "70000"] {
        let out = run(&["port-forward", "berth-nope", ports]);
        assert_eq!(
            out.status.code(),
            Some(125),
            "{ports}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("[LOCAL:]REMOTE"),
            "{ports}: {}",
            text(&out.stderr)
        );
    }
    let out = run(&["port-forward", "berth-no-such-environment", "8080"]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("berth-no-such-environment"),
        "{}",
        text(&out.stderr)
    );
}

/// The same forward with `runner.backend: kubernetes`, against the simulator (its pods are
/// Docker containers): curl gets httpd's page from inside the pod.
#[tokio::test]
async fn curl_reaches_httpd_through_port_forward_on_kubernetes() {
    common::test_image().await;
    let sim = berth_k8s_sim::Sim::start().await.expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let k8s = |args: &[&str]| {
        let mut cmd = common::berth_in(dir.path(), &dir.path().join("state"), args);
        common::on_kubernetes(&mut cmd, &kubeconfig);
        cmd
    };
    let session = berth_engine_core::SessionId::generate().to_string();
    let out = k8s(&["--json", "up", "--session", &session])
        .output()
        .expect("up");
    assert!(out.status.success(), "up: {}", text(&out.stderr));
    let env = json_of(&out)["id"].as_str().expect("id").to_owned();
    let out = k8s(&[
        "exec",
        &env,
        "--",
        "sh",
        "-c",
        "mkdir -p /tmp/www && echo served from a pod > /tmp/www/index.html && httpd -p 8080 -h /tmp/www",
    ])
    .output()
    .expect("exec");
    assert!(out.status.success(), "exec httpd: {}", text(&out.stderr));

    let (forward, address) = Forward::spawn(k8s(&["--json", "port-forward", &env, "0:8080"]));
    let answer = curl(&format!("http://{address}/index.html"));
    assert!(answer.status.success(), "curl: {}", text(&answer.stderr));
    assert_eq!(text(&answer.stdout), "served from a pod\n");
    drop(forward);

    let out = k8s(&["down", &env]).output().expect("down");
    assert!(out.status.success(), "down: {}", text(&out.stderr));
}
