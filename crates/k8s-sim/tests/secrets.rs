//! Secrets and ConfigMaps in the simulator, checked with the real kubectl 1.32 and the
//! official Python client: stored (`stringData` folded into base64 `data`, `type: Opaque`,
//! the server's table), injected as env (`envFrom` with a prefix, `secretKeyRef`,
//! `configMapKeyRef`, `optional`), mounted as files (items, `defaultMode`, read-only), and a
//! missing one reported with the kubelet's reason and message.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

const IMAGE: &str = berth_engine_core::testkit::TEST_IMAGE;

/// kubectl 1.32 (as `kubectl.rs` finds it), else `kubectl` on PATH.
fn kubectl_binary() -> PathBuf {
    [
        "/usr/lib/google-cloud-sdk/bin/kubectl.1.32",
        "/usr/local/bin/kubectl.1.32",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .unwrap_or_else(|| PathBuf::from("kubectl"))
}

struct Kubectl {
    started: support::Started,
    binary: PathBuf,
}

impl Kubectl {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut cmd = Command::new(&self.binary);
        cmd.env("KUBECONFIG", self.started.kubeconfig())
            .env("HOME", self.started.dir.path())
            .args(args);
        let out = match stdin {
            None => cmd.output(),
            Some(text) => {
                let file = self.started.dir.path().join("stdin.yaml");
                std::fs::write(&file, text).expect("write");
                cmd.arg("-f").arg(&file).output()
            }
        }
        .expect("kubectl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args, None);
        assert!(ok, "kubectl {args:?}: {out}{err}");
        out
    }

    /// Polls `kubectl get pod NAME -o jsonpath=PATH` until it is `want` (or 60 s pass).
    fn wait_for(&self, pod: &str, path: &str, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.ok(&["get", "pod", pod, "-o", &format!("jsonpath={path}")]);
            if got == want || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Kubectl {
    /// Creates pod `pod` mounting the volume `source` at `/v`, and returns its events once
    /// they hold a FailedMount (or after 60 s).
    fn failed_mount(&self, pod: &str, source: &str) -> String {
        let volumes = format!("  volumes:\n  - name: v\n{source}");
        let container = "    volumeMounts: [{name: v, mountPath: /v}]\n";
        let (ok, _, err) = self.run(&["create"], Some(&pod_yaml(pod, container, &volumes)));
        assert!(ok, "{err}");
        let selector = format!("involvedObject.name={pod}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let events = self.ok(&["get", "events", "--field-selector", &selector]);
            if events.contains("FailedMount") || Instant::now() > deadline {
                return events;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn pod_yaml(name: &str, container: &str, volumes: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: {IMAGE}\n    command: [sleep, \"600\"]\n{container}{volumes}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_secrets_and_config_maps_are_stored_injected_and_mounted() {
    let k = Kubectl {
        started: support::start_sim().await,
        binary: kubectl_binary(),
    };
    k.ok(&[
        "create",
        "secret",
        "generic",
        "api",
        "--from-literal=TOKEN=s3cret value",
        "--from-literal=USER=bot",
    ]);
    k.ok(&[
        "create",
        "configmap",
        "app",
        "--from-literal=settings.yaml=mode: fast",
        "--from-literal=LEVEL=debug",
    ]);
    // Stored as the API server stores them: base64 data, type Opaque, the server's table.
    let yaml = k.ok(&["get", "secret", "api", "-o", "yaml"]);
    assert!(yaml.contains("TOKEN: czNjcmV0IHZhbHVl"), "{yaml}");
    assert!(yaml.contains("type: Opaque"), "{yaml}");
    let table = k.ok(&["get", "secrets"]);
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(&row[..3], ["api", "Opaque", "2"], "{table}");
    // stringData folds into data.
    let (ok, _, err) = k.run(
        &["create"],
        Some("apiVersion: v1\nkind: Secret\nmetadata: {name: typed}\nstringData: {password: hunter2}\n"),
    );
    assert!(ok, "{err}");
    let data = k.ok(&["get", "secret", "typed", "-o", "jsonpath={.data.password}"]);
    assert_eq!(data, "aHVudGVyMg==");

    let container = "    envFrom:\n    - prefix: API_\n      secretRef: {name: api}\n    - configMapRef: {name: absent, optional: true}\n    env:\n    - name: PASSWORD\n      valueFrom: {secretKeyRef: {name: typed, key: password}}\n    - name: LEVEL\n      valueFrom: {configMapKeyRef: {name: app, key: LEVEL}}\n    - name: MAYBE\n      valueFrom: {secretKeyRef: {name: api, key: NOPE, optional: true}}\n    volumeMounts:\n    - {name: conf, mountPath: /etc/app}\n    - {name: opt, mountPath: /etc/opt}\n";
    let volumes = "  volumes:\n  - name: conf\n    configMap:\n      name: app\n      defaultMode: 0440\n      items: [{key: settings.yaml, path: conf/app.yaml}]\n  - name: opt\n    secret: {secretName: absent, optional: true}\n";
    let (ok, _, err) = k.run(&["create"], Some(&pod_yaml("holder", container, volumes)));
    assert!(ok, "{err}");
    let ready = k.wait_for("holder", "{.status.phase}", "Running");
    assert_eq!(ready, "Running");
    let out = k.ok(&[
        "exec",
        "holder",
        "--",
        "sh",
        "-c",
        "echo \"$API_TOKEN|$API_USER|$PASSWORD|$LEVEL|${MAYBE-unset}\"; cat /etc/app/conf/app.yaml; echo; stat -c %a /etc/app/conf/app.yaml; ls -A /etc/opt | wc -l; touch /etc/app/x 2>/dev/null || echo read-only",
    ]);
    assert_eq!(
        out,
        "s3cret value|bot|hunter2|debug|unset\nmode: fast\n440\n0\nread-only\n"
    );

    // A required secret that is missing, and a missing key: the kubelet's reason and message.
    for (pod, reference, message) in [
        (
            "no-secret",
            "secretKeyRef: {name: nowhere, key: T}",
            "secret \"nowhere\" not found",
        ),
        (
            "no-key",
            "configMapKeyRef: {name: app, key: MISSING}",
            "couldn't find key MISSING in ConfigMap default/app",
        ),
    ] {
        let container = format!("    env:\n    - name: T\n      valueFrom: {{{reference}}}\n");
        let (ok, _, err) = k.run(&["create"], Some(&pod_yaml(pod, &container, "")));
        assert!(ok, "{err}");
        let waiting = "{.status.containerStatuses[0].state.waiting";
        let reason = k.wait_for(
            pod,
            &format!("{waiting}.reason}}"),
            "CreateContainerConfigError",
        );
        assert_eq!(reason, "CreateContainerConfigError");
        let got = k.ok(&[
            "get",
            "pod",
            pod,
            "-o",
            &format!("jsonpath={waiting}.message}}"),
        ]);
        assert_eq!(got, message);
    }
    // A missing required volume source keeps the pod ContainerCreating with FailedMount.
    let events = k.failed_mount("no-mount", "    secret: {secretName: gone}\n");
    assert!(
        events.contains("MountVolume.SetUp failed for volume \"v\" : secret \"gone\" not found"),
        "{events}"
    );
}

/// The official Python client creates, reads and lists Secrets and ConfigMaps.
const PYTHON_CHECK: &str = r#"
import base64, sys
from kubernetes import client, config
config.load_kube_config(sys.argv[1])
v1 = client.CoreV1Api()
v1.create_namespaced_secret("default", client.V1Secret(
    metadata=client.V1ObjectMeta(name="py"), string_data={"k": "v a l"}))
s = v1.read_namespaced_secret("py", "default")
assert s.type == "Opaque", s.type
assert base64.b64decode(s.data["k"]) == b"v a l", s.data
assert [x.metadata.name for x in v1.list_namespaced_secret("default").items] == ["py"]
v1.create_namespaced_config_map("default", client.V1ConfigMap(
    metadata=client.V1ObjectMeta(name="pc"), data={"a.yaml": "x: 1\n"}))
assert v1.read_namespaced_config_map("pc", "default").data == {"a.yaml": "x: 1\n"}
v1.delete_namespaced_secret("py", "default")
assert v1.list_namespaced_secret("default").items == []
print("ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_creates_reads_lists_and_deletes_secrets() {
    let started = support::start_sim().await;
    let python =
        std::env::var_os("BERTH_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let out = Command::new(python)
        .arg("-c")
        .arg(PYTHON_CHECK)
        .arg(started.kubeconfig())
        .output()
        .expect("python3 (with pip install kubernetes)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

/// Keys become file names: one that would leave the volume (`..`) is refused by the API, and a
/// mount never writes outside its volume even when such a key got in through a patch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_keys_cannot_escape_the_volume() {
    let k = Kubectl {
        started: support::start_sim().await,
        binary: kubectl_binary(),
    };
    let (ok, _, err) = k.run(
        &["create"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: evil}\ndata: {\"..\": x}\n"),
    );
    assert!(!ok && err.contains("must not be '..'"), "{err}");
    let (ok, _, err) = k.run(
        &["create"],
        Some("apiVersion: v1\nkind: Secret\nmetadata: {name: evil}\nstringData: {\"../x\": x}\n"),
    );
    assert!(!ok && err.contains("a valid config key"), "{err}");
    k.ok(&["create", "configmap", "patched", "--from-literal=ok=1"]);
    let (patched, _, _) = k.run(
        &[
            "patch",
            "configmap",
            "patched",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"..":"escaped"}}"#,
        ],
        None,
    );
    if patched {
        let events = k.failed_mount("evil", "    configMap: {name: patched}\n");
        assert!(events.contains("invalid path \"..\""), "{events}");
    }
}
