//! `berth submit --engine argo` end to end on the Kubernetes simulator: the `berth` binary
//! and the real kubectl against the simulator's socket. The simulator stores Workflows but
//! runs none, so the test plays Argo's Workflow controller: it makes the Workflow's pod
//! (label `workflows.argoproj.io/workflow`, container `main`, the template's command) and
//! patches the Workflow's `status.phase` as the pod goes.
//!
//! Needs Docker (under the simulator), kubectl, and python3 with `argo-workflows` (the SDK
//! model check of the stored Workflow).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_k8s_sim::Sim;
use serde_json::{json, Value};

mod common;

use common::{argo_check, expect_exit, json_of, text};

const NO_CRDS: &str = "the cluster has no Argo Workflows CRDs (argoproj.io/v1alpha1 workflows): install Argo Workflows or use --engine job";

struct Cluster {
    sim: Sim,
    dir: tempfile::TempDir,
    session: String,
}

impl Cluster {
    async fn start() -> Self {
        let (sim, dir) = common::simulator().await;
        let session = berth_engine_core::SessionId::generate().to_string();
        Self { sim, dir, session }
    }

    fn kubeconfig(&self) -> std::path::PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn berth(&self, args: &[&str]) -> Command {
        let mut cmd = common::berth_in(self.dir.path(), &self.dir.path().join("state"), args);
        common::on_kubernetes(&mut cmd, &self.kubeconfig());
        cmd
    }

    /// The real kubectl; its stdout, failing on a non-zero exit.
    fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .expect("kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn kubectl_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all)).expect("kubectl JSON")
    }

    /// Waits for the Workflow (the one of this test's session not yet `seen`) to appear.
    fn next_workflow(&self, seen: &[String]) -> Value {
        let start = Instant::now();
        loop {
            let list = self.kubectl_json(&[
                "get",
                "workflows",
                "-l",
                &format!("berth.dev/session={}", self.session),
            ]);
            if let Some(wf) = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|w| !seen.iter().any(|s| w["metadata"]["name"] == s.as_str()))
            {
                return wf.clone();
            }
            assert!(start.elapsed() < Duration::from_secs(60), "no workflow");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn set_phase(&self, workflow: &str, phase: &str) {
        let patch = json!({"status": {"phase": phase}}).to_string();
        self.kubectl(&[
            "patch",
            "workflow",
            workflow,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ]);
    }

    /// Plays Argo's controller for `wf`: its pod, named as the Workflow, labelled with it,
    /// running the template's container as `main`; the phase Running while it runs, then
    /// Succeeded or Failed from the pod's phase. Returns the pod's final phase.
    fn run_workflow(&self, wf: &Value) -> String {
        let name = wf["metadata"]["name"].as_str().expect("a name").to_owned();
        let spec = &wf["spec"];
        let mut container = spec["templates"][0]["container"].clone();
        container["name"] = "main".into();
        let mut labels = spec["podMetadata"]["labels"].clone();
        labels["workflows.argoproj.io/workflow"] = name.clone().into();
        let mut pod_spec = json!({
            "restartPolicy": "Never",
            "containers": [container],
            "automountServiceAccountToken": false,
        });
        for key in ["securityContext", "volumes"] {
            if !spec[key].is_null() {
                pod_spec[key] = spec[key].clone();
            }
        }
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": pod_spec,
        });
        let file = self.dir.path().join(format!("{name}-pod.json"));
        std::fs::write(&file, pod.to_string()).expect("write pod");
        self.kubectl(&["create", "-f", file.to_str().expect("utf-8 path")]);
        self.set_phase(&name, "Running");
        let start = Instant::now();
        loop {
            let phase = self.kubectl(&["get", "pod", &name, "-o", "jsonpath={.status.phase}"]);
            if matches!(phase.as_str(), "Succeeded" | "Failed") {
                self.set_phase(&name, &phase);
                return phase;
            }
            assert!(start.elapsed() < Duration::from_secs(90), "pod {phase}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_argo_crds_submit_says_so_and_exits_125() {
    let c = Cluster::start().await;
    for extra in [&[][..], &["--schedule", "0 4 * * *"][..]] {
        let mut args = vec!["submit", "--engine", "argo", "--session", &c.session];
        args.extend_from_slice(extra);
        args.extend(["--", "true"]);
        let out = expect_exit(&mut c.berth(&args), 125);
        common::assert_stderr_has(&out, NO_CRDS);
    }
    // The kube-apiserver's answer for a group it does not serve, as kubectl reads it.
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .args([
            "get",
            "--raw",
            "/apis/argoproj.io/v1alpha1/namespaces/default/workflows",
        ])
        .output()
        .expect("kubectl");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("NotFound"),
        "{}",
        text(&out.stderr)
    );
    // Job runs and the run commands are untouched by the missing CRDs.
    let out = expect_exit(
        &mut c.berth(&["--json", "ls", "--runs", "--session", &c.session]),
        0,
    );
    assert_eq!(json_of(&out), json!([]));
    let out = expect_exit(&mut c.berth(&["status", "berth-no-such-run-0"]), 125);
    common::assert_stderr_has(&out, "run not found");
    // gc skips the missing Workflow resources quietly.
    let out = expect_exit(&mut c.berth(&["gc", "--session", &c.session]), 0);
    assert_eq!(text(&out.stderr), "", "{}", text(&out.stdout));
    // Off Kubernetes, --engine argo is refused, saying where it runs.
    let out = expect_exit(
        c.berth(&["submit", "--engine", "argo", "--", "true"])
            .env("BERTH_RUNNER__BACKEND", "docker"),
        125,
    );
    common::assert_stderr_has(
        &out,
        "--engine argo runs on Kubernetes, not the docker backend",
    );
    // An unknown engine names the flag.
    let out = expect_exit(
        &mut c.berth(&["submit", "--engine", "airflow", "--", "true"]),
        125,
    );
    common::assert_stderr_has(&out, "expected job or argo");
    c.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_argo_workflow_is_created_followed_and_exits_with_the_commands_code() {
    let c = Cluster::start().await;
    c.sim.install_argo_crds();
    let mut seen = Vec::new();
    for code in [0, 3] {
        let script = format!("echo one; echo two; exit {code}");
        let child = c
            .berth(&[
                "submit",
                "--engine",
                "argo",
                "--watch",
                "--session",
                &c.session,
                "--name",
                "wf",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn berth");
        let wf = c.next_workflow(&seen);
        let name = wf["metadata"]["name"].as_str().expect("name").to_owned();
        seen.push(name.clone());

        // The real kubectl lists it; it is labelled as berth's runs are.
        let listed = c.kubectl(&["get", "workflows"]);
        assert!(listed.contains(&name), "{listed}");
        let labels = &wf["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/managed-by"], "berth", "{wf}");
        assert_eq!(labels["berth.dev/run"], "once", "{wf}");
        assert_eq!(labels["berth.dev/session"], c.session.as_str(), "{wf}");
        assert_eq!(
            wf["spec"]["podMetadata"]["labels"]["berth.dev/session"],
            c.session.as_str()
        );
        // The stored Workflow still passes the Argo SDK's models.
        let file = c.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, c.kubectl(&["get", "workflow", &name, "-o", "yaml"])).expect("write");
        let checked = argo_check(c.dir.path(), &file);
        assert!(
            checked.status.success(),
            "{}{}",
            text(&checked.stdout),
            text(&checked.stderr)
        );

        let phase = c.run_workflow(&wf);
        assert_eq!(phase, if code == 0 { "Succeeded" } else { "Failed" });
        let out = child.wait_with_output().expect("berth");
        assert_eq!(
            out.status.code(),
            Some(code),
            "stdout {} / stderr {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "one\ntwo\n");

        // status and logs read the same run from another process.
        let out = expect_exit(&mut c.berth(&["--json", "status", &name]), 0);
        let status = json_of(&out);
        let state = if code == 0 { "succeeded" } else { "failed" };
        assert_eq!(status["state"], state, "{status}");
        assert_eq!(status["exit_code"], code, "{status}");
        let out = expect_exit(&mut c.berth(&["logs", &name]), 0);
        assert_eq!(text(&out.stdout), "one\ntwo\n");
    }

    // `down` cancels a running Argo run: labelled cancelled, `spec.shutdown: Terminate`.
    let out = expect_exit(
        &mut c.berth(&[
            "submit",
            "--engine",
            "argo",
            "--session",
            &c.session,
            "--",
            "sleep",
            "600",
        ]),
        0,
    );
    let sleeper = text(&out.stdout).trim().to_owned();
    let wf = c.next_workflow(&seen);
    assert_eq!(wf["metadata"]["name"], sleeper.as_str());
    c.set_phase(&sleeper, "Running");
    let out = expect_exit(&mut c.berth(&["down", &sleeper]), 0);
    assert_eq!(text(&out.stdout), format!("{sleeper}: cancelled\n"));
    assert_eq!(
        c.kubectl(&[
            "get",
            "workflow",
            &sleeper,
            "-o",
            "jsonpath={.spec.shutdown}"
        ]),
        "Terminate"
    );
    let out = expect_exit(&mut c.berth(&["--json", "status", &sleeper]), 0);
    assert_eq!(json_of(&out)["state"], "cancelled");

    // A Workflow berth did not make is no run of berth's: not read, not cancelled.
    let foreign = c.dir.path().join("foreign.json");
    let object = json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "foreign", "labels": {"berth.dev/session": c.session.as_str()}},
        "spec": {"entrypoint": "main", "templates": [{"name": "main",
            "container": {"image": "busybox", "command": ["true"]}}]}});
    std::fs::write(&foreign, object.to_string()).expect("write");
    c.kubectl(&["create", "-f", foreign.to_str().expect("utf-8 path")]);
    let out = expect_exit(&mut c.berth(&["status", "foreign"]), 125);
    common::assert_stderr_has(&out, "run not found");
    let out = c.berth(&["down", "foreign"]).output().expect("berth down");
    assert!(
        !text(&out.stdout).contains("cancelled"),
        "{}",
        text(&out.stdout)
    );
    let kept = c.kubectl_json(&["get", "workflow", "foreign"]);
    assert!(kept["spec"]["shutdown"].is_null(), "{kept}");
    assert!(
        kept["metadata"]["labels"]["berth.dev/cancelled"].is_null(),
        "{kept}"
    );

    // `ls --runs` lists the three Argo runs (not the foreign Workflow).
    let out = expect_exit(
        &mut c.berth(&["--json", "ls", "--runs", "--session", &c.session]),
        0,
    );
    let listed = json_of(&out);
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");

    // gc removes the finished Argo runs (succeeded, failed, cancelled), never the foreign
    // Workflow.
    let out = expect_exit(&mut c.berth(&["--json", "gc", "--session", &c.session]), 0);
    let report = json_of(&out);
    let mut removed: Vec<&str> = report["garbage"]
        .as_array()
        .expect("garbage")
        .iter()
        .filter(|g| g["removed"] == true && g["reason"] == "a batch run that has finished")
        .filter_map(|g| g["id"].as_str())
        .collect();
    removed.sort_unstable();
    let mut want: Vec<&str> = seen.iter().map(String::as_str).collect();
    want.push(&sleeper);
    want.sort_unstable();
    assert_eq!(removed, want, "{report}");
    let left = c.kubectl_json(&["get", "workflows"]);
    let names: Vec<&str> = left["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|w| w["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["foreign"], "{left}");
    let out = expect_exit(
        &mut c.berth(&["--json", "ls", "--runs", "--session", &c.session]),
        0,
    );
    assert_eq!(json_of(&out), json!([]));
    c.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_argo_run_is_a_cron_workflow() {
    let c = Cluster::start().await;
    c.sim.install_argo_crds();
    let out = expect_exit(
        &mut c.berth(&[
            "submit",
            "--engine",
            "argo",
            "--schedule",
            "0 4 * * *",
            "--session",
            &c.session,
            "--name",
            "nightly",
            "--",
            "sh",
            "-c",
            "echo hi",
        ]),
        0,
    );
    let name = text(&out.stdout).trim().to_owned();
    let listed = c.kubectl(&["get", "cronworkflows"]);
    assert!(listed.contains(&name), "{listed}");
    let cron = c.kubectl_json(&["get", "cronworkflow", &name]);
    assert_eq!(cron["spec"]["schedule"], "0 4 * * *");
    assert_eq!(
        cron["spec"]["workflowMetadata"]["labels"]["berth.dev/session"],
        c.session.as_str()
    );
    let file = c.dir.path().join("cron.yaml");
    std::fs::write(
        &file,
        c.kubectl(&["get", "cronworkflow", &name, "-o", "yaml"]),
    )
    .expect("write");
    let checked = argo_check(c.dir.path(), &file);
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    let out = expect_exit(&mut c.berth(&["--json", "status", &name]), 0);
    let status = json_of(&out);
    assert_eq!(status["state"], "scheduled", "{status}");
    assert_eq!(status["schedule"], "0 4 * * *", "{status}");
    // gc keeps a schedule: `down` removes it.
    let out = expect_exit(&mut c.berth(&["--json", "gc", "--session", &c.session]), 0);
    assert_eq!(json_of(&out)["garbage"], json!([]), "{}", text(&out.stdout));
    assert!(c.kubectl(&["get", "cronworkflows"]).contains(&name));
    let out = expect_exit(&mut c.berth(&["down", &name]), 0);
    assert_eq!(text(&out.stdout), format!("{name}: schedule removed\n"));
    assert!(!c.kubectl(&["get", "cronworkflows"]).contains(&name));
    c.sim.shutdown().await;
}
