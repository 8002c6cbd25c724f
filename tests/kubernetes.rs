//! The `berth` binary with `runner.backend: kubernetes`, end to end against the simulator:
//! the same commands as on Docker, switched by configuration alone.

use std::process::{Command, Stdio};

use berth_engine_core::testkit::ensure_test_image;
use berth_engine_core::SessionId;
use berth_engine_docker::{DockerConfig, DockerEngine};
use berth_k8s_sim::Sim;

mod common;

use common::{assert_valid_kubernetes, check_of, json_of, text};

struct Cluster {
    sim: Sim,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Self {
        let docker = DockerEngine::connect(&DockerConfig::default())
            .await
            .unwrap_or_else(|e| panic!("these tests need a running Docker daemon: {e}"));
        ensure_test_image(&docker).await.expect("test image");
        let sim = Sim::start().await.expect("simulator");
        let dir = tempfile::tempdir().expect("tempdir");
        sim.write_kubeconfig(&dir.path().join("kubeconfig"))
            .expect("kubeconfig");
        Self { sim, dir }
    }

    fn berth(&self, args: &[&str]) -> Command {
        let dir = self.dir.path();
        let mut cmd = common::berth_in(dir, &dir.join("state"), args);
        common::on_kubernetes(&mut cmd, &dir.join("kubeconfig"));
        cmd
    }
}

#[tokio::test]
async fn run_and_doctor_on_kubernetes() {
    let c = Cluster::start().await;
    let out = c
        .berth(&["run", "--", "sh", "-c", "echo out; echo err >&2; exit 3"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");

    let out = c.berth(&["--json", "doctor"]).output().expect("doctor");
    let report = json_of(&out);
    assert_eq!(report["ok"], true, "{report}");
    let checks: Vec<String> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| c["check"].as_str().unwrap_or("").to_owned())
        .collect();
    for want in [
        "engine",
        "namespace",
        "rbac: create jobs",
        "rbac: create pods/exec",
    ] {
        assert!(
            checks.iter().any(|c| c == want),
            "{want} missing: {checks:?}"
        );
    }

    // An identity that may not exec: doctor says which permission is missing, and fails.
    c.sim.deny("create", "pods/exec");
    let out = c.berth(&["--json", "doctor"]).output().expect("doctor");
    let report = json_of(&out);
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(out.status.code(), Some(1));
    let check = |name: &str| check_of(&report, name);
    let exec = check("rbac: create pods/exec");
    assert_eq!(exec["ok"], false, "{exec}");
    let jobs = check("rbac: create jobs");
    assert_eq!(jobs["ok"], true, "{jobs}");
}

#[tokio::test]
async fn up_exec_cp_ls_down_on_kubernetes() {
    let c = Cluster::start().await;
    let session = SessionId::generate().to_string();
    let out = c
        .berth(&["--json", "up", "--session", &session])
        .output()
        .expect("up");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = json_of(&out)["id"].as_str().expect("id").to_owned();

    let out = common::output_with_stdin(
        &mut c.berth(&[
            "exec",
            "-i",
            "-u",
            "1000",
            &id,
            "--",
            "sh",
            "-c",
            "id -u; cat",
        ]),
        b"piped in\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1000\npiped in\n");

    let local = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(local.path().join("tree")).expect("mkdir");
    std::fs::write(local.path().join("tree/file"), "content\n").expect("write");
    let src = local.path().join("tree");
    let out = c
        .berth(&["cp", src.to_str().expect("utf8"), &format!("{id}:/tmp")])
        .output()
        .expect("cp in");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let back = local.path().join("back");
    std::fs::create_dir(&back).expect("mkdir");
    let out = c
        .berth(&[
            "cp",
            &format!("{id}:/tmp/tree"),
            back.to_str().expect("utf8"),
        ])
        .output()
        .expect("cp out");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(back.join("tree/file")).expect("copied"),
        "content\n"
    );

    let out = c
        .berth(&["--json", "ls", "--session", &session])
        .output()
        .expect("ls");
    assert_eq!(json_of(&out)[0]["id"], id.as_str());
    let out = c.berth(&["down", &id]).output().expect("down");
    assert!(
        text(&out.stdout).contains("stopped"),
        "{}",
        text(&out.stdout)
    );
    let out = c
        .berth(&["--json", "ls", "--session", &session])
        .output()
        .expect("ls");
    assert_eq!(json_of(&out), serde_json::json!([]));
}

#[tokio::test]
async fn kill_9_then_gc_on_kubernetes() {
    let c = Cluster::start().await;
    let session = SessionId::generate().to_string();
    let mut child = c
        .berth(&["run", "--session", &session, "--", "sleep", "600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = c
            .berth(&["--json", "ls", "--session", &session])
            .output()
            .expect("ls");
        let listed = json_of(&out);
        if listed
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["state"] == "running"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never running");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Let the exec start, then crash.
    std::thread::sleep(std::time::Duration::from_millis(500));
    Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .expect("kill");
    let _ = child.wait();
    let out = c
        .berth(&["--json", "gc", "--session", &session])
        .output()
        .expect("gc");
    let report = json_of(&out);
    assert_eq!(
        report["garbage"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    let out = c
        .berth(&["--json", "ls", "--session", &session])
        .output()
        .expect("ls");
    assert_eq!(json_of(&out), serde_json::json!([]));
}

#[test]
fn render_shows_the_claim_at_the_sessions_sub_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("berth.yaml");
    std::fs::write(
        &config,
        "runner:\n  backend: kubernetes\n  image: busybox:1.36\nkubernetes:\n  namespace: agents\n  pvc_name: shared\n  per_session_sub_path: true\n  security: restricted\n  run_as_user: \"1000\"\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "--config",
            config.to_str().expect("utf8"),
            "render",
            "--session",
            "s42",
        ])
        .output()
        .expect("render");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    for want in [
        "kind: Job",
        "namespace: agents",
        "claimName: shared",
        "subPath: s42",
        "runAsNonRoot: true",
        "runAsUser: 1000",
        "automountServiceAccountToken: false",
    ] {
        assert!(yaml.contains(want), "{want} missing:\n{yaml}");
    }
}

#[tokio::test]
async fn rendered_yaml_is_accepted_by_kubectl_create() {
    let c = Cluster::start().await;
    let session = SessionId::generate().to_string();
    let out = c
        .berth(&["render", "--session", &session])
        .output()
        .expect("render");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let created = common::output_with_stdin(
        Command::new("kubectl")
            .args(["create", "-f", "-", "-o", "name"])
            .env("KUBECONFIG", c.dir.path().join("kubeconfig")),
        &out.stdout,
    );
    assert!(
        created.status.success(),
        "kubectl refused berth render's YAML: {}",
        text(&created.stderr)
    );
    let name = text(&created.stdout)
        .trim()
        .trim_start_matches("job.batch/")
        .to_owned();
    assert!(
        name.starts_with(&format!("berth-{session}-main-")),
        "{name}"
    );
    // berth sees the Job kubectl created, as one of its own, and removes it.
    let out = c
        .berth(&["--json", "ls", "--session", &session])
        .output()
        .expect("ls");
    assert_eq!(json_of(&out)[0]["id"], name.as_str());
    let out = c.berth(&["down", &name]).output().expect("down");
    assert!(
        text(&out.stdout).contains("stopped"),
        "{}",
        text(&out.stdout)
    );
}

/// A claim berth created (`kubernetes.create_pvc`) is listed, kept while a pod mounts it or
/// when not asked, and removed by `gc --volumes` once nothing uses it.
#[tokio::test]
async fn gc_volumes_removes_an_unused_claim_on_kubernetes() {
    let c = Cluster::start().await;
    let session = SessionId::generate().to_string();
    let claim = format!("ws-{session}");
    let berth = |args: &[&str]| {
        let mut cmd = c.berth(args);
        cmd.env("BERTH_KUBERNETES__PVC_NAME", &claim)
            .env("BERTH_KUBERNETES__CREATE_PVC", "true");
        cmd
    };
    let out = berth(&["--json", "up", "--session", &session])
        .output()
        .expect("up");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = json_of(&out)["id"].as_str().expect("id").to_owned();
    let listed = json_of(
        &berth(&["--json", "ls", "--volumes", "--session", &session])
            .output()
            .expect("ls --volumes"),
    );
    assert_eq!(listed[0]["name"], claim.as_str(), "{listed}");
    assert_eq!(listed[0]["in_use"], true, "{listed}");
    let report = json_of(
        &berth(&["--json", "gc", "--session", &session, "--volumes"])
            .output()
            .expect("gc"),
    );
    assert_eq!(report["volumes"], serde_json::json!([]), "in use: {report}");

    let out = berth(&["down", &id]).output().expect("down");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = json_of(
        &berth(&["--json", "gc", "--session", &session])
            .output()
            .expect("gc"),
    );
    assert_eq!(report["volumes_kept"], 1, "not asked: {report}");
    // The pod may take a moment to go after its Job.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let report = loop {
        let report = json_of(
            &berth(&["--json", "gc", "--session", &session, "--volumes"])
                .output()
                .expect("gc"),
        );
        if report["volumes"][0]["removed"] == true || std::time::Instant::now() > deadline {
            break report;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert_eq!(report["volumes"][0]["name"], claim.as_str(), "{report}");
    assert_eq!(report["volumes"][0]["removed"], true, "{report}");
    let listed = json_of(
        &berth(&["--json", "ls", "--volumes", "--session", &session])
            .output()
            .expect("ls --volumes"),
    );
    assert_eq!(listed, serde_json::json!([]));
}

#[tokio::test]
async fn simwait_doctor_checks_every_verb_and_names_the_rule_that_grants_it() {
    let c = Cluster::start().await;
    c.sim.deny("watch", "pods");
    c.sim.deny("list", "events");
    let out = c.berth(&["--json", "doctor"]).output().expect("doctor");
    let report = json_of(&out);
    assert_eq!(report["ok"], false, "{report}");
    let check = |name: &str| check_of(&report, name);
    let watch = check("rbac: watch pods");
    assert_eq!(watch["ok"], false, "{watch}");
    assert!(
        watch["fix"].as_str().unwrap_or("").contains(
            r#"grant it with the Role rule {apiGroups: [""], resources: ["pods"], verbs: ["watch"]}"#
        ),
        "{watch}"
    );
    assert_eq!(check("rbac: list events")["ok"], false);
    for allowed in [
        "rbac: create jobs",
        "rbac: get jobs",
        "rbac: list jobs",
        "rbac: watch jobs",
        "rbac: delete jobs",
        "rbac: patch jobs",
        "rbac: get pods",
        "rbac: deletecollection pods",
        "rbac: list pods",
        "rbac: create pods/exec",
        "rbac: get pods/exec",
    ] {
        assert_eq!(check(allowed)["ok"], true, "{allowed}");
    }
}

#[tokio::test]
async fn simwait_doctor_checks_the_image_as_an_environment_in_a_restricted_namespace() {
    let c = Cluster::start().await;
    let ns = c.dir.path().join("ns.json");
    std::fs::write(
        &ns,
        r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "locked",
            "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}"#,
    )
    .expect("write");
    let created = Command::new("kubectl")
        .args(["create", "-f"])
        .arg(&ns)
        .env("KUBECONFIG", c.dir.path().join("kubeconfig"))
        .output()
        .expect("kubectl");
    assert!(created.status.success(), "{}", text(&created.stderr));
    let doctor = |security: &str| {
        let out = c
            .berth(&["--json", "doctor"])
            .env("BERTH_KUBERNETES__NAMESPACE", "locked")
            .env("BERTH_KUBERNETES__SECURITY", security)
            .env("BERTH_KUBERNETES__RUN_AS_USER", "1000")
            .output()
            .expect("doctor");
        check_of(&json_of(&out), "image")
    };
    let restricted = doctor("restricted");
    assert_eq!(restricted["ok"], true, "{restricted}");
    // A hardened environment would be refused there, and so is its check, with the reason.
    let hardened = doctor("hardened");
    assert_eq!(hardened["ok"], false, "{hardened}");
    assert!(
        hardened["detail"]
            .as_str()
            .unwrap_or("")
            .contains("violates PodSecurity \"restricted:latest\""),
        "{hardened}"
    );
    // A run refused the same way says so, and the CLI names the config key that fixes it
    // (the engine speaks of its profile, not of berth's config).
    let refused = c
        .berth(&["run", "--", "true"])
        .env("BERTH_KUBERNETES__NAMESPACE", "locked")
        .env("BERTH_KUBERNETES__SECURITY", "hardened")
        .output()
        .expect("run");
    assert_eq!(refused.status.code(), Some(125));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("violates PodSecurity")
            && stderr.contains("kubernetes.security: restricted"),
        "{stderr}"
    );
}

#[tokio::test]
async fn simwait_render_rbac_prints_a_valid_least_privilege_role() {
    let c = Cluster::start().await;
    let out = c
        .berth(&["render", "--rbac", "agent-runner"])
        .output()
        .expect("render");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_valid_kubernetes(c.dir.path(), &out.stdout, "1.33.0");
    let out = c
        .berth(&["--json", "render", "--rbac"])
        .output()
        .expect("render");
    let objects = json_of(&out);
    assert_eq!(objects[0]["kind"], "Role");
    assert_eq!(objects[1]["subjects"][0]["name"], "berth");
    let rules = objects[0]["rules"].as_array().expect("rules");
    let exec = rules
        .iter()
        .find(|r| r["resources"][0] == "pods/exec")
        .expect("an exec rule");
    assert_eq!(exec["verbs"], serde_json::json!(["create", "get"]));
    // Patch only where berth patches: the Job's detached label.
    assert!(
        rules
            .iter()
            .all(|r| r["verbs"]
                .as_array()
                .is_some_and(|v| !v.iter().any(|v| v == "*"
                    || v == "update"
                    || (v == "patch" && r["resources"][0] != "jobs")))),
        "least privilege: {rules:?}"
    );
    // With --engine argo: the verbs on Argo's workflows and cronworkflows too, still valid.
    let out = c
        .berth(&["render", "--rbac", "--engine", "argo"])
        .output()
        .expect("render");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_valid_kubernetes(c.dir.path(), &out.stdout, "1.33.0");
    let out = c
        .berth(&["--json", "render", "--rbac", "--engine", "argo"])
        .output()
        .expect("render");
    let objects = json_of(&out);
    let rules = objects[0]["rules"].as_array().expect("rules");
    let argo = |resource: &str| {
        rules
            .iter()
            .find(|r| r["apiGroups"][0] == "argoproj.io" && r["resources"][0] == resource)
            .map(|r| r["verbs"].clone())
    };
    assert_eq!(
        argo("workflows"),
        Some(serde_json::json!([
            "create", "get", "list", "patch", "delete"
        ]))
    );
    assert_eq!(
        argo("cronworkflows"),
        Some(serde_json::json!(["create", "get", "list", "delete"]))
    );
    // --engine is for --rbac only.
    let out = c
        .berth(&["render", "--engine", "argo"])
        .output()
        .expect("render");
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
}

#[tokio::test]
async fn simwait_up_says_what_a_start_waits_for() {
    let c = Cluster::start().await;
    c.sim.fail_pulls(berth_engine_core::testkit::TEST_IMAGE, 2);
    let session = SessionId::generate().to_string();
    let out = c
        .berth(&["up", "--session", &session])
        .output()
        .expect("up");
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Not a terminal: a line each time what the start waits for changes, then ready.
    let waiting = stderr
        .find("berth: starting: waiting for the kubelet to retry the image pull")
        .unwrap_or_else(|| panic!("the pull retry was not said: {stderr}"));
    let ready = stderr
        .find("berth: ready: ")
        .unwrap_or_else(|| panic!("no ready line: {stderr}"));
    assert!(waiting < ready, "{stderr}");
    let out = c
        .berth(&["down", "--session", &session])
        .output()
        .expect("down");
    assert!(out.status.success(), "{}", text(&out.stderr));
}
