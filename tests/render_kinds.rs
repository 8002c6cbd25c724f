//! `berth render --kind job|cronjob|workflow|cron-workflow`: a command's run as the object of
//! a cluster's scheduler, checked by validators berth did not write. Job and CronJob YAML go
//! through `kubernetes-validate --strict` for Kubernetes 1.31, 1.32 and 1.33; Workflow and
//! CronWorkflow YAML through the models of the Argo Python SDK (`argo-workflows` on PyPI);
//! the Job through `kubectl create --dry-run=server` against the simulator, and its pod
//! through the simulator's Pod Security admission in a `restricted` namespace. The
//! simulator serves no CronJobs, so the CronJob is checked by kubernetes-validate only.
//! kubectl, kubernetes-validate, python3 with argo_workflows and Docker (under the simulator)
//! missing is a failure, not a skip.

use std::path::Path;
use std::process::{Command, Output};

use berth_k8s_sim::Sim;
use serde_json::Value;

mod common;

use common::{argo_check, assert_valid_kubernetes, json_of, output_with_stdin, text};

const PROFILES: [&str; 2] = ["hardened", "restricted"];

/// `berth render` in `dir` with a Kubernetes config of `profile`, a workspace claim and a
/// service account; the runner backend left at Docker (the manifest is for a cluster anyway).
fn render(dir: &Path, profile: &str, args: &[&str]) -> Output {
    common::berth_in(dir, &dir.join("state"), args)
        .env("BERTH_RUNNER__IMAGE", "busybox:1.36")
        .env("BERTH_KUBERNETES__NAMESPACE", "agents")
        .env("BERTH_KUBERNETES__PVC_NAME", "ws")
        .env("BERTH_KUBERNETES__CREATE_PVC", "true")
        .env("BERTH_KUBERNETES__SERVICE_ACCOUNT", "runner")
        .env("BERTH_KUBERNETES__SECURITY", profile)
        .env("BERTH_KUBERNETES__RUN_AS_USER", "1000")
        .output()
        .expect("berth runs")
}

fn render_ok(dir: &Path, profile: &str, args: &[&str]) -> Output {
    let out = render(dir, profile, args);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn kind_args(kind: &str, json: bool) -> Vec<&str> {
    let mut args = Vec::new();
    if json {
        args.push("--json");
    }
    args.extend(["render", "--kind", kind, "--name", "nightly"]);
    if kind.starts_with("cron") {
        args.extend(["--schedule", "0 4 * * *", "--timezone", "Europe/Berlin"]);
    }
    args.extend([
        "-e",
        "MODE=ci",
        "-w",
        "/workspace",
        "--",
        "sh",
        "-c",
        "make test",
    ]);
    args
}

/// The last object `render --json` printed for `kind` (the claim comes first).
fn rendered(dir: &Path, profile: &str, kind: &str) -> Value {
    let out = render_ok(dir, profile, &kind_args(kind, true));
    let objects = json_of(&out);
    let objects = objects.as_array().expect("an array");
    assert_eq!(objects[0]["kind"], "PersistentVolumeClaim", "{objects:?}");
    objects.last().expect("an object").clone()
}

#[test]
fn each_kind_runs_the_command_with_what_an_environment_carries() {
    let dir = tempfile::tempdir().expect("tempdir");
    for profile in PROFILES {
        let job = rendered(dir.path(), profile, "job");
        assert_eq!(job["kind"], "Job");
        assert_eq!(job["metadata"]["name"], "berth-nightly");
        let pod = &job["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(
            container["command"],
            serde_json::json!(["sh", "-c", "make test"])
        );
        assert_eq!(container["env"][0]["name"], "MODE");
        assert_eq!(container["workingDir"], "/workspace");
        assert_eq!(container["securityContext"]["runAsUser"], 1000);
        assert_eq!(pod["serviceAccountName"], "runner");
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(
            pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "ws"
        );
        assert_eq!(job["spec"]["activeDeadlineSeconds"], 86400);
        assert!(job["spec"]["ttlSecondsAfterFinished"].is_number(), "{job}");
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"].as_bool(),
            (profile == "restricted").then_some(true),
            "{profile}"
        );

        let cron = rendered(dir.path(), profile, "cronjob");
        assert_eq!(cron["spec"]["schedule"], "0 4 * * *");
        assert_eq!(cron["spec"]["timeZone"], "Europe/Berlin");
        assert_eq!(cron["spec"]["jobTemplate"]["spec"], job["spec"]);

        let wf = rendered(dir.path(), profile, "workflow");
        assert_eq!(wf["kind"], "Workflow");
        assert_eq!(wf["spec"]["entrypoint"], "main");
        assert_eq!(
            wf["spec"]["templates"][0]["container"]["command"],
            container["command"]
        );
        assert_eq!(wf["spec"]["securityContext"], pod["securityContext"]);
        assert_eq!(wf["spec"]["podGC"]["strategy"], "OnPodSuccess");
        assert!(wf["spec"]["ttlStrategy"]["secondsAfterCompletion"].is_number());

        let cwf = rendered(dir.path(), profile, "cron-workflow");
        assert_eq!(cwf["kind"], "CronWorkflow");
        assert_eq!(cwf["spec"]["schedule"], "0 4 * * *");
        assert_eq!(cwf["spec"]["timezone"], "Europe/Berlin");
        assert_eq!(cwf["spec"]["concurrencyPolicy"], "Forbid");
        assert_eq!(cwf["spec"]["workflowSpec"], wf["spec"]);
    }
}

/// What each kind renders, byte for byte, against the files in `tests/golden/render/`: a
/// change to a rendered manifest shows up as a diff to review. `BERTH_BLESS=1` rewrites the
/// files from the current output instead of comparing.
#[test]
fn each_kind_matches_its_golden_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/render");
    let bless = std::env::var_os("BERTH_BLESS").is_some();
    for kind in ["job", "cronjob", "workflow", "cron-workflow"] {
        let out = render_ok(dir.path(), "restricted", &kind_args(kind, false));
        let file = golden.join(format!("{kind}.yaml"));
        if bless {
            std::fs::create_dir_all(&golden).expect("golden dir");
            std::fs::write(&file, &out.stdout).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (BERTH_BLESS=1 writes it)", file.display()));
        let got = text(&out.stdout);
        if got != want {
            let first = got
                .lines()
                .zip(want.lines())
                .position(|(g, w)| g != w)
                .unwrap_or_else(|| got.lines().count().min(want.lines().count()));
            panic!(
                "{kind}: the rendered manifest differs from {} from line {} on \
                 (review, then BERTH_BLESS=1 to accept):\n--- got\n{got}\n--- golden\n{want}",
                file.display(),
                first + 1
            );
        }
    }
}

#[test]
fn job_and_cronjob_pass_kubernetes_validate_strict_for_1_31_to_1_33() {
    let dir = tempfile::tempdir().expect("tempdir");
    for profile in PROFILES {
        for kind in ["job", "cronjob"] {
            let out = render_ok(dir.path(), profile, &kind_args(kind, false));
            let yaml = text(&out.stdout);
            assert_eq!(yaml.matches("---").count(), 2, "{yaml}");
            for version in ["1.31.0", "1.32.0", "1.33.0"] {
                assert_valid_kubernetes(dir.path(), &out.stdout, version);
            }
        }
    }
}

#[test]
fn workflow_and_cron_workflow_pass_the_argo_sdk_models() {
    let dir = tempfile::tempdir().expect("tempdir");
    for profile in PROFILES {
        for (kind, name) in [("workflow", "Workflow"), ("cron-workflow", "CronWorkflow")] {
            let out = render_ok(dir.path(), profile, &kind_args(kind, false));
            let file = dir.path().join(format!("{kind}-{profile}.yaml"));
            std::fs::write(&file, &out.stdout).expect("write");
            let checked = argo_check(dir.path(), &file);
            assert!(
                checked.status.success(),
                "{kind} {profile}: {}{}\n{}",
                text(&checked.stdout),
                text(&checked.stderr),
                text(&out.stdout)
            );
            assert_eq!(text(&checked.stdout).trim(), format!("ok {name}"));
        }
    }
}

#[test]
fn the_argo_check_fails_on_a_missing_required_field_or_an_unknown_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wf = rendered(dir.path(), "restricted", "workflow");
    let cwf = rendered(dir.path(), "restricted", "cron-workflow");
    let mut no_image = wf.clone();
    no_image["spec"]["templates"][0]["container"]
        .as_object_mut()
        .expect("container")
        .remove("image");
    let mut unknown = wf.clone();
    unknown["spec"]["templates"][0]["container"]["imagePullPolice"] = "Always".into();
    let mut no_workflow_spec = cwf.clone();
    no_workflow_spec["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("workflowSpec");
    let mut wrong_type = cwf;
    wrong_type["spec"]["workflowSpec"]["activeDeadlineSeconds"] = "a day".into();
    for (case, doc, needle) in [
        ("no image", no_image, "image"),
        ("unknown field", unknown, "imagePullPolice"),
        ("no workflowSpec", no_workflow_spec, "workflow_spec"),
        ("wrong type", wrong_type, "active_deadline_seconds"),
    ] {
        let file = dir.path().join("bad.json");
        std::fs::write(&file, doc.to_string()).expect("write");
        let checked = argo_check(dir.path(), &file);
        assert!(
            !checked.status.success(),
            "{case}: {}",
            text(&checked.stdout)
        );
        let err = text(&checked.stderr);
        assert!(err.contains(needle), "{case}: {err}");
    }
}

#[test]
fn kind_flags_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let refused = |args: &[&str], needles: &[&str]| {
        let out = render(dir.path(), "hardened", args);
        assert_eq!(
            out.status.code(),
            Some(125),
            "{args:?}: {}",
            text(&out.stdout)
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
        let err = text(&out.stderr);
        for needle in needles {
            assert!(err.contains(needle), "{args:?}: {needle} not in {err}");
        }
    };
    refused(
        &["render", "--kind", "job", "--rbac", "x", "--", "true"],
        &["--kind", "--rbac"],
    );
    refused(
        &["render", "--kind", "job", "--server", "--", "true"],
        &["--kind", "--server"],
    );
    refused(&["render", "--kind", "job"], &["command", "--kind job"]);
    refused(
        &["render", "--kind", "pod", "--", "true"],
        &["--kind", "cron-workflow"],
    );
    refused(
        &["render", "--kind", "cronjob", "--", "true"],
        &["--schedule"],
    );
    refused(
        &[
            "render",
            "--kind",
            "cron-workflow",
            "--schedule",
            "0 4 * *",
            "--",
            "true",
        ],
        &["--schedule", "five fields"],
    );
    refused(
        &[
            "render",
            "--kind",
            "workflow",
            "--schedule",
            "0 4 * * *",
            "--",
            "true",
        ],
        &["--schedule", "workflow"],
    );
    refused(
        &["render", "--kind", "job", "--timezone", "UTC", "--", "true"],
        &["--timezone"],
    );
    refused(&["render", "--schedule", "0 4 * * *"], &["--kind"]);
    refused(&["render", "--", "true"], &["--kind"]);
    refused(
        &["render", "--kind", "job", "-e", "NOEQUALS", "--", "true"],
        &["--env", "KEY=VALUE"],
    );
    // The other forms still work.
    render_ok(dir.path(), "hardened", &["render", "--rbac"]);
    render_ok(dir.path(), "hardened", &["render"]);
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("kubectl");
    cmd.env("KUBECONFIG", kubeconfig).args(args);
    cmd
}

/// The pod of `job`, as its controller would create it, through Pod Security admission
/// (`kubectl create --dry-run=server`).
fn admit_pod(kubeconfig: &Path, job: &Value) -> Output {
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "berth-nightly-pod", "namespace": "agents",
                     "labels": job["spec"]["template"]["metadata"]["labels"]},
        "spec": job["spec"]["template"]["spec"],
    });
    output_with_stdin(
        &mut kubectl(kubeconfig, &["create", "--dry-run=server", "-f", "-"]),
        pod.to_string().as_bytes(),
    )
}

#[tokio::test]
async fn simwait_kubectl_dry_run_accepts_the_job_and_pod_security_admits_restricted_only() {
    let sim = Sim::start()
        .await
        .unwrap_or_else(|e| panic!("the simulator needs a running Docker daemon: {e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    // `kubectl create namespace` sends protobuf, which the simulator does not read.
    let ns = output_with_stdin(
        &mut kubectl(&kubeconfig, &["create", "-f", "-"]),
        br#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "agents",
            "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}"#,
    );
    assert!(ns.status.success(), "{}", text(&ns.stderr));
    for profile in PROFILES {
        let job = rendered(dir.path(), profile, "job");
        let created = output_with_stdin(
            &mut kubectl(&kubeconfig, &["create", "--dry-run=server", "-f", "-"]),
            job.to_string().as_bytes(),
        );
        assert!(
            created.status.success(),
            "{profile}: {}{}",
            text(&created.stdout),
            text(&created.stderr)
        );
        assert!(
            text(&created.stdout).contains("job.batch/berth-nightly created (server dry run)"),
            "{}",
            text(&created.stdout)
        );
        assert!(!text(&created.stderr).contains("unknown field"));

        let admitted = admit_pod(&kubeconfig, &job);
        let err = text(&admitted.stderr);
        if profile == "restricted" {
            assert!(admitted.status.success(), "restricted refused: {err}");
        } else {
            // The check bites: hardened adds capabilities and may run as root.
            assert!(!admitted.status.success(), "hardened admitted");
            assert!(err.contains("violates PodSecurity \"restricted"), "{err}");
        }
    }
    // The restricted profile still passes with secrets, config maps, caches and the security
    // context overrides.
    let config = dir.path().join("secrets.yaml");
    std::fs::write(&config, SECRETS_CONFIG).expect("write");
    let mut args = vec!["--config", config.to_str().expect("utf-8")];
    args.extend(kind_args("job", true));
    let out = common::berth_in(dir.path(), &dir.path().join("state"), &args)
        .output()
        .expect("berth runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let objects = json_of(&out);
    let job = objects.as_array().and_then(|o| o.last()).expect("the job");
    let admitted = admit_pod(&kubeconfig, job);
    assert!(
        admitted.status.success(),
        "restricted with secrets refused: {}",
        text(&admitted.stderr)
    );
    // With the clone's init container, restricted still passes; and admission does look at
    // init containers (hardened's clone is named among the violations).
    for (profile, admit) in [("restricted", true), ("hardened", false)] {
        let mut args = vec!["--config", config.to_str().expect("utf-8")];
        args.extend(git_kind_args("job", true));
        let out = common::berth_in(dir.path(), &dir.path().join("state"), &args)
            .env("BERTH_KUBERNETES__SECURITY", profile)
            .output()
            .expect("berth runs");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let objects = json_of(&out);
        let job = objects.as_array().and_then(|o| o.last()).expect("the job");
        let admitted = admit_pod(&kubeconfig, job);
        let err = text(&admitted.stderr);
        assert_eq!(
            admitted.status.success(),
            admit,
            "{profile} with --git: {err}"
        );
        if !admit {
            assert!(err.contains("\"git-clone\""), "{err}");
        }
    }
    // Nothing was stored.
    let jobs = kubectl(&kubeconfig, &["get", "jobs", "-n", "agents", "-o", "json"])
        .output()
        .expect("kubectl");
    assert!(jobs.status.success(), "{}", text(&jobs.stderr));
    assert_eq!(json_of(&jobs)["items"], serde_json::json!([]));
}

/// A config with every option of the pod's secrets, config maps, caches, security context,
/// annotations and labels.
const SECRETS_CONFIG: &str = r#"
runner:
  image: busybox:1.36
kubernetes:
  namespace: agents
  service_account: runner
  security: restricted
  run_as_user: "1000"
  env_from:
    - {secret: api-keys, prefix: API_}
    - {config_map: settings, optional: true}
  secret_env:
    DB_PASSWORD: {secret: db, key: password}
    LOG_LEVEL: {config_map: settings, key: level, optional: true}
  mounts:
    - {secret: tls, path: /etc/tls, items: {tls.crt: cert.pem, tls.key: private/key.pem}, mode: "0440"}
    - {config_map: settings, path: /etc/app, optional: true}
  caches:
    - {claim: shared-cache, path: /cache, read_only: true}
    - {claim: build-cache, path: /root/.cache, create: {size: 5Gi, storage_class: fast, access_modes: [ReadWriteOnce]}}
  security_context:
    read_only_root_filesystem: true
    fs_group: 2000
    supplemental_groups: [3000, 3001]
    run_as_group: 1000
  annotations:
    example.com/team: agents
  labels:
    team: agents
"#;

/// `kind_args(kind, json)` with `--git URL --branch main` before the command.
fn git_kind_args(kind: &str, json: bool) -> Vec<&str> {
    let mut args = kind_args(kind, json);
    let at = args.iter().position(|a| *a == "--").expect("--");
    for (i, a) in [
        "--git",
        "https://example.com/agents/app.git",
        "--branch",
        "main",
    ]
    .into_iter()
    .enumerate()
    {
        args.insert(at + i, a);
    }
    args
}

#[test]
fn git_adds_a_clone_to_every_kind_that_passes_the_validators() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("berth.yaml");
    std::fs::write(
        &config,
        format!("{SECRETS_CONFIG}  git_secret: git-token\n  git_image: example.com/git:2\n"),
    )
    .expect("write");
    let config = config.to_str().expect("utf-8");
    for (kind, argo, pod) in [
        ("job", None, "/spec/template/spec"),
        ("cronjob", None, "/spec/jobTemplate/spec/template/spec"),
        ("workflow", Some("Workflow"), "/spec/templates/0"),
        (
            "cron-workflow",
            Some("CronWorkflow"),
            "/spec/workflowSpec/templates/0",
        ),
    ] {
        let mut args = vec!["--config", config];
        args.extend(git_kind_args(kind, true));
        let out = common::berth_in(dir.path(), &dir.path().join("state"), &args)
            .output()
            .expect("berth runs");
        assert!(out.status.success(), "{kind}: {}", text(&out.stderr));
        let objects = json_of(&out);
        let object = objects
            .as_array()
            .and_then(|o| o.last())
            .expect("an object");
        let init = &object.pointer(pod).expect("a pod")["initContainers"][0];
        assert_eq!(init["name"], "git-clone", "{kind}: {object}");
        assert_eq!(init["image"], "example.com/git:2");
        let command = init["command"].as_array().expect("a command");
        assert_eq!(command[4], "https://example.com/agents/app.git");
        assert_eq!(command[6], "main");
        let token = init["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == "BERTH_GIT_TOKEN")
            .expect("the token variable");
        assert_eq!(
            token["valueFrom"]["secretKeyRef"],
            serde_json::json!({"name": "git-token", "key": "token", "optional": false})
        );
        // The clone has the command's security context (restricted here).
        let container = if argo.is_some() {
            &object.pointer(pod).expect("a template")["container"]
        } else {
            &object.pointer(pod).expect("a pod")["containers"][0]
        };
        assert_eq!(init["securityContext"], container["securityContext"]);
        assert_eq!(init["securityContext"]["runAsNonRoot"], true);
        // The same as YAML, through the validators.
        let mut args = vec!["--config", config];
        args.extend(git_kind_args(kind, false));
        let out = common::berth_in(dir.path(), &dir.path().join("state"), &args)
            .output()
            .expect("berth runs");
        assert!(out.status.success(), "{kind}: {}", text(&out.stderr));
        match argo {
            None => {
                for version in ["1.31.0", "1.32.0", "1.33.0"] {
                    assert_valid_kubernetes(dir.path(), &out.stdout, version);
                }
            }
            Some(name) => {
                let file = dir.path().join(format!("{kind}-git.yaml"));
                std::fs::write(&file, &out.stdout).expect("write");
                let checked = argo_check(dir.path(), &file);
                assert!(
                    checked.status.success(),
                    "{kind}: {}{}",
                    text(&checked.stdout),
                    text(&checked.stderr)
                );
                assert_eq!(text(&checked.stdout).trim(), format!("ok {name}"));
            }
        }
    }
    // Without a workspace in the config, the clone gets one of its own (emptyDir), and the
    // command starts in it.
    let bare = tempfile::tempdir().expect("tempdir");
    let out = common::berth_in(
        bare.path(),
        &bare.path().join("state"),
        &[
            "--json",
            "render",
            "--kind",
            "job",
            "--git",
            "https://example.com/r.git",
            "--",
            "make",
        ],
    )
    .env("BERTH_RUNNER__IMAGE", "busybox:1.36")
    .output()
    .expect("berth runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let objects = json_of(&out);
    let job = objects.as_array().and_then(|o| o.last()).expect("the job");
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["workingDir"], "/workspace", "{pod}");
    assert_eq!(
        pod["volumes"][0]["emptyDir"],
        serde_json::json!({}),
        "{pod}"
    );
    assert_eq!(pod["initContainers"][0]["image"], "alpine/git:2.47.2");
    // --branch needs --git; a URL git would take as an option is refused, naming --git.
    let out = render(
        dir.path(),
        "hardened",
        &["render", "--kind", "job", "--branch", "main", "--", "make"],
    );
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let out = render(
        dir.path(),
        "hardened",
        &["render", "--kind", "job", "--git=-oops", "--", "make"],
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("git"), "{}", text(&out.stderr));
}

#[test]
fn every_kind_with_secrets_mounts_and_caches_passes_the_validators() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("berth.yaml");
    std::fs::write(&config, SECRETS_CONFIG).expect("write");
    let config = config.to_str().expect("utf-8");
    for (kind, argo) in [
        ("job", None),
        ("cronjob", None),
        ("workflow", Some("Workflow")),
        ("cron-workflow", Some("CronWorkflow")),
    ] {
        let mut args = vec!["--config", config];
        args.extend(kind_args(kind, false));
        let out = common::berth_in(dir.path(), &dir.path().join("state"), &args)
            .output()
            .expect("berth runs");
        let yaml = text(&out.stdout);
        assert!(out.status.success(), "{kind}: {yaml}{}", text(&out.stderr));
        for needle in [
            "prefix: API_",
            "secretKeyRef",
            "configMapKeyRef",
            "path: private/key.pem",
            "defaultMode: 288",
            "readOnlyRootFilesystem: true",
            "fsGroup: 2000",
            "example.com/team: agents",
            "team: agents",
            "claimName: shared-cache",
        ] {
            assert!(yaml.contains(needle), "{kind} lacks {needle}:\n{yaml}");
        }
        match argo {
            None => {
                // The claim berth would create comes first, with its storage class.
                assert!(yaml.contains("storageClassName: fast"), "{yaml}");
                assert!(yaml.contains("claimName: build-cache"), "{yaml}");
                for version in ["1.31.0", "1.32.0", "1.33.0"] {
                    assert_valid_kubernetes(dir.path(), &out.stdout, version);
                }
            }
            Some(name) => {
                // A per-workflow claim: a volumeClaimTemplate, not a volume.
                assert!(yaml.contains("volumeClaimTemplates"), "{yaml}");
                assert!(!yaml.contains("claimName: build-cache"), "{yaml}");
                let file = dir.path().join(format!("{kind}-secrets.yaml"));
                std::fs::write(&file, &out.stdout).expect("write");
                let checked = argo_check(dir.path(), &file);
                assert!(
                    checked.status.success(),
                    "{kind}: {}{}\n{yaml}",
                    text(&checked.stdout),
                    text(&checked.stderr)
                );
                assert_eq!(text(&checked.stdout).trim(), format!("ok {name}"));
            }
        }
    }
}
