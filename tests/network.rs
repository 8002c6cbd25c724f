//! `runner.network` and `berth network` through the binary: on the Kubernetes simulator the
//! environment's NetworkPolicy is created (checked by `kubernetes-validate` and read back by
//! `kubectl`), replaced at run time and removed with the environment; bad policies are refused
//! before any I/O, naming the field and the entry.

use std::process::Command;

use berth_engine_core::testkit::ensure_test_image;
use berth_engine_core::SessionId;
use berth_engine_docker::{DockerConfig, DockerEngine};
use berth_k8s_sim::Sim;

mod common;

use common::{assert_valid_kubernetes, json_of, text};

struct Cluster {
    _sim: Sim,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(config: &str) -> Self {
        let docker = DockerEngine::connect(&DockerConfig::default())
            .await
            .unwrap_or_else(|e| panic!("these tests need a running Docker daemon: {e}"));
        ensure_test_image(&docker).await.expect("test image");
        let sim = Sim::start().await.expect("simulator");
        let dir = tempfile::tempdir().expect("tempdir");
        sim.write_kubeconfig(&dir.path().join("kubeconfig"))
            .expect("kubeconfig");
        std::fs::write(dir.path().join("berth.yaml"), config).expect("config");
        Self { _sim: sim, dir }
    }

    fn berth(&self, args: &[&str]) -> Command {
        let dir = self.dir.path();
        let mut cmd = common::berth_in(dir, &dir.join("state"), args);
        common::on_kubernetes(&mut cmd, &dir.join("kubeconfig"));
        cmd
    }

    fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .output()
            .expect("kubectl")
    }

    /// The NetworkPolicy `name` as kubectl reads it, `None` when there is none.
    fn policy(&self, name: &str) -> Option<serde_json::Value> {
        let out = self.kubectl(&["get", "networkpolicy", name, "-o", "json"]);
        if !out.status.success() {
            assert!(
                text(&out.stderr).contains("NotFound"),
                "{}",
                text(&out.stderr)
            );
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("json"))
    }
}

const ALLOW: &str =
    "runner:\n  network:\n    allow: [10.0.0.0/8:443, 192.168.1.7]\n    dns: true\n";

#[tokio::test]
async fn an_environments_network_policy_lives_and_dies_with_it_on_kubernetes() {
    let c = Cluster::start(ALLOW).await;
    let session = SessionId::generate().to_string();

    // Rendered: the policy next to the Job, valid for Kubernetes 1.33.
    let out = c
        .berth(&["render", "--session", &session])
        .output()
        .expect("render");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert!(yaml.contains("kind: NetworkPolicy"), "{yaml}");
    assert!(yaml.contains("cidr: 10.0.0.0/8"), "{yaml}");
    assert_valid_kubernetes(c.dir.path(), &out.stdout, "1.33.0");
    // And the Role berth needs for it.
    let out = c
        .berth(&["render", "--rbac"])
        .output()
        .expect("render rbac");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("networkpolicies"),
        "{}",
        text(&out.stdout)
    );

    let out = c
        .berth(&["--json", "up", "--session", &session])
        .output()
        .expect("up");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = json_of(&out)["id"].as_str().expect("id").to_owned();
    let policy = c.policy(&id).expect("a policy named like the environment");
    assert_eq!(
        policy["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "berth"
    );
    assert_eq!(
        policy["metadata"]["labels"]["berth.dev/session"],
        session.as_str()
    );
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["job-name"],
        id.as_str()
    );
    assert_eq!(policy["spec"]["policyTypes"], serde_json::json!(["Egress"]));
    let egress = policy["spec"]["egress"].as_array().expect("egress");
    assert_eq!(egress.len(), 3, "{policy}");
    assert_eq!(egress[0]["ports"][0]["port"], 53);
    assert_eq!(egress[1]["to"][0]["ipBlock"]["cidr"], "10.0.0.0/8");
    assert_eq!(egress[2]["to"][0]["ipBlock"]["cidr"], "192.168.1.7/32");
    assert_eq!(policy["metadata"]["ownerReferences"][0]["kind"], "Job");
    // The pod it selects is the environment's.
    let out = c.kubectl(&["get", "pods", "-l", &format!("job-name={id}"), "-o", "name"]);
    assert!(text(&out.stdout).contains(&id), "{}", text(&out.stdout));
    // kubectl's table of them.
    let out = c.kubectl(&["get", "netpol"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.contains("POD-SELECTOR") && table.contains(&id),
        "{table}"
    );

    // Replaced at run time.
    let out = c
        .berth(&["network", &id, "--allow", "172.16.0.0/12:8080", "--dns"])
        .output()
        .expect("network");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("172.16.0.0/12:8080"),
        "{}",
        text(&out.stdout)
    );
    let egress = c.policy(&id).expect("policy")["spec"]["egress"].clone();
    assert_eq!(
        egress[1]["to"][0]["ipBlock"]["cidr"], "172.16.0.0/12",
        "{egress}"
    );
    assert_eq!(egress[1]["ports"][0]["port"], 8080, "{egress}");
    assert_eq!(egress.as_array().map(Vec::len), Some(2), "{egress}");
    let out = c.berth(&["network", &id, "--full"]).output().expect("full");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(c.policy(&id).is_none(), "full has no policy");
    let out = c.berth(&["network", &id, "--none"]).output().expect("none");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let none = c.policy(&id).expect("none is a policy");
    assert_eq!(none["spec"]["egress"], serde_json::json!([]), "{none}");
    // kubectl sees no egress rule at all: `egress: []` may also come back absent.
    let out = c.berth(&["down", &id]).output().expect("down");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(c.policy(&id).is_none(), "removed with the environment");
}

/// A policy whose Job is gone (berth died between creating the two) is found and removed
/// by `berth gc`; a fresh one (a start in progress) is left alone.
#[tokio::test]
async fn gc_removes_a_network_policy_left_without_its_job() {
    let c = Cluster::start(ALLOW).await;
    let session = SessionId::generate().to_string();
    let policy = |name: &str, created: u64| {
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "labels": {
                "app.kubernetes.io/managed-by": "berth",
                "berth.dev/session": session,
                "berth.dev/name": "main",
                "berth.dev/created": created.to_string(),
            }},
            "spec": {"podSelector": {"matchLabels": {"job-name": name}},
                "policyTypes": ["Egress"], "egress": []},
        })
        .to_string()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let old = format!("berth-{session}-main-old00");
    let fresh = format!("berth-{session}-main-new00");
    for (name, created) in [(&old, now - 3600), (&fresh, now)] {
        let out = common::output_with_stdin(
            Command::new("kubectl")
                .args(["create", "-f", "-"])
                .env("KUBECONFIG", c.dir.path().join("kubeconfig")),
            policy(name, created).as_bytes(),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let out = c.berth(&["gc"]).output().expect("gc");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&old), "{}", text(&out.stdout));
    assert!(c.policy(&old).is_none(), "the orphan is removed");
    assert!(
        c.policy(&fresh).is_some(),
        "a start in progress keeps its policy"
    );
    let out = c.kubectl(&["delete", "networkpolicy", &fresh]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[tokio::test]
async fn host_names_are_refused_on_kubernetes_naming_the_entry() {
    let c = Cluster::start("runner:\n  network: {allow: [pypi.org:443]}\n").await;
    let session = SessionId::generate().to_string();
    for args in [
        vec!["up", "--session", &session],
        vec!["render", "--session", &session],
    ] {
        let out = c.berth(&args).output().expect("berth");
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("network.allow") && err.contains("pypi.org:443"),
            "{args:?}: {err}"
        );
    }
    let out = c.kubectl(&["get", "networkpolicies,jobs", "-o", "name"]);
    assert_eq!(text(&out.stdout).trim(), "", "nothing created");
}

#[test]
fn bad_policies_are_refused_before_any_io() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("berth.yaml"),
        "runner:\n  network: {allow: [10.0.0.0/33]}\n",
    )
    .expect("config");
    let out = common::berth_in(dir.path(), &dir.path().join("state"), &["ls"])
        .output()
        .expect("ls");
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(
        err.contains("runner.network") && err.contains("10.0.0.0/33") && err.contains("prefix"),
        "{err}"
    );
    std::fs::write(dir.path().join("berth.yaml"), "runner:\n  network: maybe\n").expect("config");
    let out = common::berth_in(dir.path(), &dir.path().join("state"), &["ls"])
        .output()
        .expect("ls");
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("none, full"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_file(dir.path().join("berth.yaml")).expect("rm");
    for (args, want) in [
        (
            vec!["network", "some-env", "--allow", "example.com:http"],
            "example.com:http",
        ),
        (vec!["network", "some-env"], "--allow"),
    ] {
        let out = common::berth_in(dir.path(), &dir.path().join("state"), &args)
            .env("DOCKER_HOST", "unix:///nonexistent/berth.sock")
            .output()
            .expect("network");
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        assert!(
            text(&out.stderr).contains(want),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let out = common::berth_in(
        dir.path(),
        &dir.path().join("state"),
        &["network", "some-env", "--none", "--full"],
    )
    .output()
    .expect("network");
    assert_eq!(out.status.code(), Some(125), "conflicting flags");
}
