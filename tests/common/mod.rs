//! The one helper module of the end-to-end tests that drive the built `berth` binary
//! (registered as integration tests of `berth-cli`, so `CARGO_BIN_EXE_berth` is the binary).
#![allow(dead_code)] // each test file uses its own subset

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use berth_engine_core::testkit::ensure_test_image;
use berth_engine_docker::{DockerConfig, DockerEngine};

/// The built `berth`, run in `dir` with the state directory `state`: no `RUST_LOG` and no
/// `BERTH_*__*` config variables from the caller's environment.
pub fn berth_in(dir: &Path, state: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BERTH_") && k.contains("__") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .current_dir(dir)
        .env("BERTH_STATE_DIR", state)
        .env_remove("RUST_LOG");
    cmd
}

/// `berth_in` the test target's scratch directory, with the state directory `state_name`
/// under it.
pub fn berth_with_state(state_name: &str, args: &[&str]) -> Command {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    berth_in(tmp, &tmp.join(state_name), args)
}

/// Points `cmd` at a cluster through `kubeconfig`, with the test image as `runner.image`.
pub fn on_kubernetes<'a>(cmd: &'a mut Command, kubeconfig: &Path) -> &'a mut Command {
    cmd.env("BERTH_RUNNER__BACKEND", "kubernetes")
        .env(
            "BERTH_RUNNER__IMAGE",
            berth_engine_core::testkit::TEST_IMAGE,
        )
        .env("BERTH_KUBERNETES__KUBECONFIG", kubeconfig)
}

/// Runs `cmd` with `input` on its stdin (then EOF), capturing its output.
pub fn output_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write");
    child.wait_with_output().expect("wait")
}

/// Bytes as text, lossily.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The JSON `berth --json` printed, or a panic showing what it printed instead.
pub fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {} / {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

/// The docker CLI's trimmed stdout (a client berth did not write).
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    text(&out.stdout).trim().to_owned()
}

fn labelled(kind: &[&str], session: &str) -> Vec<String> {
    let filter = format!("label=berth.dev/session={session}");
    let mut args = kind.to_vec();
    args.extend(["-q", "--filter", &filter]);
    docker(&args).lines().map(str::to_owned).collect()
}

/// Containers labelled with `session`, stopped ones included.
pub fn containers_of(session: &str) -> Vec<String> {
    labelled(&["ps", "-a"], session)
}

/// Volumes labelled with `session`.
pub fn volumes_of(session: &str) -> Vec<String> {
    labelled(&["volume", "ls"], session)
}

/// Removes a session's containers and volumes with the docker CLI when a test ends, pass or
/// fail.
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in containers_of(&self.0) {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v", &id])
                .output();
        }
        for volume in volumes_of(&self.0) {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", &volume])
                .output();
        }
    }
}

/// Kills `child` with SIGKILL (no chance to clean up) and reaps it.
pub fn kill9(child: &mut std::process::Child) {
    Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .expect("kill -9");
    let _ = child.wait();
}

/// Builds the test image once, failing loudly without a Docker daemon.
pub async fn test_image() {
    let engine = DockerEngine::connect(&DockerConfig::default())
        .await
        .unwrap_or_else(|e| panic!("these tests need a running Docker daemon: {e}"));
    ensure_test_image(&engine).await.expect("test image");
}

/// Asserts that `out`'s stderr contains `needle`, showing the whole stderr when it does not.
#[track_caller]
pub fn assert_stderr_has(out: &Output, needle: &str) {
    let stderr = text(&out.stderr);
    assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
}

/// Builds the test image and gives a fresh session id, with the guard that removes what the
/// session leaves behind when the test ends.
pub async fn fresh_session() -> (String, Cleanup) {
    test_image().await;
    let session = berth_engine_core::SessionId::generate().to_string();
    (session.clone(), Cleanup(session))
}

/// Checks `yaml` against the Kubernetes `version` schemas (e.g. "1.33.0") with
/// `kubernetes-validate --strict`, a validator berth did not write; fails (never skips)
/// when it is missing.
pub fn assert_valid_kubernetes(dir: &Path, yaml: &[u8], version: &str) {
    let file = dir.join(format!("validate-{version}.yaml"));
    std::fs::write(&file, yaml).expect("write the manifests");
    let validated = Command::new("kubernetes-validate")
        .args(["--strict", "-k", version])
        .arg(&file)
        .output()
        .expect("kubernetes-validate (pip install kubernetes-validate)");
    assert!(
        validated.status.success(),
        "{}{}\n{}",
        text(&validated.stdout),
        text(&validated.stderr),
        text(yaml)
    );
}

/// Reads the Workflow or CronWorkflow of a YAML (or JSON) file into the Argo SDK's model,
/// which refuses a missing required field or a wrong type; then refuses any key the models
/// do not know (they would keep it as an extra property) and a wrong apiVersion.
pub const ARGO_CHECK: &str = r#"
import sys, yaml
from argo_workflows.configuration import Configuration
from argo_workflows.model_utils import OpenApiModel, validate_and_convert_types
from argo_workflows.model.io_argoproj_workflow_v1alpha1_workflow import IoArgoprojWorkflowV1alpha1Workflow
from argo_workflows.model.io_argoproj_workflow_v1alpha1_cron_workflow import IoArgoprojWorkflowV1alpha1CronWorkflow
MODELS = {"Workflow": IoArgoprojWorkflowV1alpha1Workflow, "CronWorkflow": IoArgoprojWorkflowV1alpha1CronWorkflow}
def unknown(obj, path):
    if isinstance(obj, OpenApiModel):
        for key, value in obj._data_store.items():
            if key not in type(obj).attribute_map:
                yield f"{path}.{key}"
            else:
                yield from unknown(value, f"{path}.{type(obj).attribute_map[key]}")
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from unknown(item, f"{path}[{i}]")
with open(sys.argv[1]) as f:
    docs = [d for d in yaml.safe_load_all(f) if d and d.get("kind") in MODELS]
if len(docs) != 1:
    sys.exit(f"expected one Workflow or CronWorkflow, found {len(docs)}")
doc = docs[0]
if doc.get("apiVersion") != "argoproj.io/v1alpha1":
    sys.exit(f"apiVersion {doc.get('apiVersion')!r}")
model = validate_and_convert_types(doc, (MODELS[doc["kind"]],), ["doc"], True, True, configuration=Configuration())
bad = list(unknown(model, "doc"))
if bad:
    sys.exit("unknown fields: " + ", ".join(bad))
print("ok", doc["kind"])
"#;

/// Runs [`ARGO_CHECK`] on `file` (python3 with `pip install argo-workflows`), writing the
/// script into `dir`.
pub fn argo_check(dir: &Path, file: &Path) -> Output {
    let script = dir.join("argo_check.py");
    std::fs::write(&script, ARGO_CHECK).expect("write");
    Command::new("python3")
        .arg(&script)
        .arg(file)
        .output()
        .expect("python3 (with pip install argo-workflows)")
}

/// Runs `cmd`, failing with its stderr unless it exits `code`.
#[track_caller]
pub fn expect_exit(cmd: &mut Command, code: i32) -> std::process::Output {
    let out = cmd.output().expect("run berth");
    assert_eq!(
        out.status.code(),
        Some(code),
        "{cmd:?}: stdout {} / stderr {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// A simulator, with the test image built and a kubeconfig in the returned directory.
pub async fn simulator() -> (berth_k8s_sim::Sim, tempfile::TempDir) {
    let docker = DockerEngine::connect(&DockerConfig::default())
        .await
        .unwrap_or_else(|e| panic!("these tests need a running Docker daemon: {e}"));
    ensure_test_image(&docker).await.expect("test image");
    let sim = berth_k8s_sim::Sim::start().await.expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");
    sim.write_kubeconfig(&dir.path().join("kubeconfig"))
        .expect("kubeconfig");
    (sim, dir)
}

/// Doctor's check `name` in its JSON `report`.
pub fn check_of(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check: {report}"))
        .clone()
}
