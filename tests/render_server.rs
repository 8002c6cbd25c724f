//! `berth render --server`: the manifests that deploy `berth serve` on Kubernetes, checked
//! against the 1.33 schemas by kubernetes-validate and created, read back and deleted with
//! kubectl against the simulator. kubectl, kubernetes-validate and Docker (under the
//! simulator) missing is a failure, not a skip.

use std::path::Path;
use std::process::{Command, Output};

use berth_k8s_sim::Sim;

mod common;

use common::{assert_valid_kubernetes, json_of, output_with_stdin, text};

const KINDS: [&str; 6] = [
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ConfigMap",
    "Deployment",
    "Service",
];

fn render(dir: &Path, args: &[&str]) -> Output {
    common::berth_in(dir, &dir.join("state"), args)
        .env("BERTH_KUBERNETES__NAMESPACE", "agents")
        .env("BERTH_SERVER__IMAGE", "registry.example/berth:1.0")
        .output()
        .expect("berth runs")
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("kubectl");
    cmd.env("KUBECONFIG", kubeconfig).args(args);
    cmd
}

#[test]
fn render_server_prints_valid_manifests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = render(dir.path(), &["--json", "render", "--server"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let objects = json_of(&out);
    let objects = objects.as_array().expect("an array");
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(kinds, KINDS);
    for o in objects {
        assert_eq!(o["metadata"]["name"], "berth-server", "{o}");
        assert_eq!(o["metadata"]["namespace"], "agents", "{o}");
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "berth"
        );
    }
    let deployment = &objects[4];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example/berth:1.0");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/health");

    // The YAML form, against the Kubernetes 1.33 schemas.
    let out = render(dir.path(), &["render", "--server"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert_eq!(yaml.matches("---").count(), 6, "{yaml}");
    assert_valid_kubernetes(dir.path(), &out.stdout, "1.33.0");
}

#[test]
fn render_server_refuses_the_other_render_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (flag, value) in [
        ("--rbac", "x"),
        ("--image", "busybox:1.36"),
        ("--session", "s1"),
        ("--name", "other"),
    ] {
        let out = render(dir.path(), &["render", "--server", flag, value]);
        assert_eq!(out.status.code(), Some(125), "{flag}");
        let err = text(&out.stderr);
        assert!(
            err.contains("--server") && err.contains(flag),
            "{flag}: {err}"
        );
        assert!(out.stdout.is_empty(), "{flag}: {}", text(&out.stdout));
    }
}

#[tokio::test]
async fn simwait_kubectl_creates_reads_and_deletes_the_rendered_objects() {
    let sim = Sim::start()
        .await
        .unwrap_or_else(|e| panic!("the simulator needs a running Docker daemon: {e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let out = render(dir.path(), &["render", "--server"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = out.stdout;

    // `kubectl create namespace` sends protobuf, which the simulator does not read.
    let ns = output_with_stdin(
        &mut kubectl(&kubeconfig, &["create", "-f", "-"]),
        b"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: agents\n",
    );
    assert!(ns.status.success(), "{}", text(&ns.stderr));
    let created = output_with_stdin(&mut kubectl(&kubeconfig, &["create", "-f", "-"]), &yaml);
    assert!(
        created.status.success(),
        "{}{}",
        text(&created.stdout),
        text(&created.stderr)
    );
    // Strict server-side validation found no unknown field.
    assert!(
        !text(&created.stderr).contains("unknown field"),
        "{}",
        text(&created.stderr)
    );
    let names = text(&created.stdout);
    for want in [
        "serviceaccount/berth-server created",
        "role.rbac.authorization.k8s.io/berth-server created",
        "rolebinding.rbac.authorization.k8s.io/berth-server created",
        "configmap/berth-server created",
        "deployment.apps/berth-server created",
        "service/berth-server created",
    ] {
        assert!(names.contains(want), "{want} missing: {names}");
    }

    let kinds = "serviceaccount,role,rolebinding,configmap,deployment,service";
    let got = kubectl(
        &kubeconfig,
        &[
            "get",
            kinds,
            "-n",
            "agents",
            "-l",
            "app.kubernetes.io/name=berth-server",
            "-o",
            "json",
        ],
    )
    .output()
    .expect("kubectl");
    assert!(got.status.success(), "{}", text(&got.stderr));
    let list = json_of(&got);
    let items = list["items"].as_array().expect("items");
    let mut kinds_read: Vec<&str> = items.iter().filter_map(|o| o["kind"].as_str()).collect();
    kinds_read.sort_unstable();
    let mut want = KINDS.to_vec();
    want.sort_unstable();
    assert_eq!(kinds_read, want, "{list}");
    let of_kind = |kind: &str| {
        items
            .iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let deployment = of_kind("Deployment");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "berth-server"
    );
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]
            ["readOnlyRootFilesystem"],
        true
    );
    let role = of_kind("Role");
    assert!(
        role["rules"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["resources"][0] == "pods/exec")),
        "{role}"
    );
    assert!(of_kind("ConfigMap")["data"]["config.yaml"]
        .as_str()
        .is_some_and(|c| c.contains("backend: kubernetes")));
    assert_eq!(of_kind("Service")["spec"]["type"], "ClusterIP");

    // The table form, as a user reads it.
    let table = kubectl(&kubeconfig, &["get", kinds, "-n", "agents"])
        .output()
        .expect("kubectl");
    assert!(table.status.success(), "{}", text(&table.stderr));
    let table = text(&table.stdout);
    for want in [
        "deployment.apps/berth-server",
        "service/berth-server",
        "ClusterIP",
        "8080/TCP",
        "Role/berth-server",
    ] {
        assert!(table.contains(want), "{want} missing:\n{table}");
    }

    let deleted = output_with_stdin(&mut kubectl(&kubeconfig, &["delete", "-f", "-"]), &yaml);
    assert!(deleted.status.success(), "{}", text(&deleted.stderr));
    let gone = kubectl(&kubeconfig, &["get", kinds, "-n", "agents", "-o", "name"])
        .output()
        .expect("kubectl");
    assert!(gone.status.success(), "{}", text(&gone.stderr));
    assert_eq!(text(&gone.stdout), "", "left after delete");
}
