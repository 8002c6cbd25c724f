//! Discovery, as kubectl and kube-rs read it: `/version`, the health endpoints, the API
//! groups and resource lists (unaggregated), and the OpenAPI v3 index and documents.

use hyper::Response;
use serde_json::{json, Value};

use super::{full, json_response, Body, VERSION_MINOR};
use crate::store::{ARGO_GROUP, NETWORKING_GROUP, RBAC_GROUP};
use crate::{authz, openapi, Inner};

/// The answer to a discovery path (split into segments), or `None` for any other path.
pub(super) fn answer(inner: &Inner, segs: &[&str]) -> Option<Response<Body>> {
    let resp = match segs {
        ["version"] => json_response(
            200,
            &json!({
                "major": "1", "minor": VERSION_MINOR,
                "gitVersion": format!("v1.{VERSION_MINOR}.0"),
                "gitCommit": "berth-k8s-sim", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
                "compiler": "gc", "platform": "linux/amd64",
            }),
        ),
        ["healthz" | "livez" | "readyz", ..] => {
            let mut r = Response::new(full("ok"));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain"),
            );
            r
        }
        ["api"] => json_response(
            200,
            &json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": inner.addr.to_string()}],
            }),
        ),
        ["api", "v1"] => json_response(200, &core_resources()),
        ["apis"] => json_response(
            200,
            &json!({"kind": "APIGroupList", "apiVersion": "v1",
            "groups": groups(inner)}),
        ),
        ["apis", authz::GROUP] => {
            let mut g = authz::group();
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            json_response(200, &g)
        }
        ["apis", authz::GROUP, "v1"] => json_response(200, &authz::resources()),
        ["apis", group @ ("batch" | "apps" | RBAC_GROUP | NETWORKING_GROUP)] => {
            let mut g = group_entry(group);
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            json_response(200, &g)
        }
        ["apis", "batch", "v1"] => json_response(200, &batch_resources()),
        ["apis", "apps", "v1"] => json_response(200, &apps_resources()),
        ["apis", RBAC_GROUP, "v1"] => json_response(200, &rbac_resources()),
        ["apis", NETWORKING_GROUP, "v1"] => json_response(200, &networking_resources()),
        // Argo's CRDs, once installed (`Sim::install_argo_crds`).
        ["apis", ARGO_GROUP] if argo(inner) => {
            let mut g = argo_group();
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            json_response(200, &g)
        }
        ["apis", ARGO_GROUP, "v1alpha1"] if argo(inner) => json_response(200, &argo_resources()),
        ["openapi", "v3", "apis", ARGO_GROUP, "v1alpha1"] if argo(inner) => {
            json_response(200, &openapi::group_version(ARGO_GROUP))
        }
        ["openapi", "v3"] => json_response(200, &openapi::index(argo(inner))),
        ["openapi", "v3", "api", "v1"] => json_response(200, &openapi::group_version("")),
        ["openapi", "v3", "apis", group @ ("batch" | "apps" | RBAC_GROUP | NETWORKING_GROUP), "v1"] => {
            json_response(200, &openapi::group_version(group))
        }
        ["openapi", "v3", "apis", authz::GROUP, "v1"] => {
            json_response(200, &openapi::group_version(authz::GROUP))
        }
        _ => return None,
    };
    Some(resp)
}

/// One entry of an `APIResourceList`.
fn resource_entry(
    name: &str,
    singular: &str,
    namespaced: bool,
    kind: &str,
    verbs: &[&str],
    short: &[&str],
) -> Value {
    let mut r = json!({
        "name": name, "singularName": singular, "namespaced": namespaced,
        "kind": kind, "verbs": verbs,
    });
    if !short.is_empty() {
        r["shortNames"] = json!(short);
    }
    if matches!(name, "pods" | "jobs" | "services" | "deployments") {
        r["categories"] = json!(["all"]);
    }
    r
}

/// The verbs of a resource served in full.
const OBJECT_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `/api/v1`: the core resources the simulator serves.
fn core_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            resource_entry("configmaps", "configmap", true, "ConfigMap", OBJECT_VERBS, &["cm"]),
            resource_entry("secrets", "secret", true, "Secret", OBJECT_VERBS, &[]),
            resource_entry("events", "event", true, "Event", OBJECT_VERBS, &["ev"]),
            resource_entry("limitranges", "limitrange", true, "LimitRange", OBJECT_VERBS, &["limits"]),
            resource_entry("namespaces", "namespace", false, "Namespace",
                &["create", "delete", "get", "list", "patch", "update", "watch"], &["ns"]),
            resource_entry("nodes", "node", false, "Node",
                &["create", "delete", "get", "list", "patch", "update", "watch"], &["no"]),
            resource_entry("persistentvolumeclaims", "persistentvolumeclaim", true,
                "PersistentVolumeClaim", OBJECT_VERBS, &["pvc"]),
            resource_entry("pods", "pod", true, "Pod", OBJECT_VERBS, &["po"]),
            resource_entry("pods/exec", "", true, "PodExecOptions", &["create", "get"], &[]),
            resource_entry("pods/log", "", true, "Pod", &["get"], &[]),
            resource_entry("pods/status", "", true, "Pod", &["get", "patch", "update"], &[]),
            resource_entry("resourcequotas", "resourcequota", true, "ResourceQuota", OBJECT_VERBS, &["quota"]),
            resource_entry("serviceaccounts", "serviceaccount", true, "ServiceAccount", OBJECT_VERBS, &["sa"]),
            resource_entry("services", "service", true, "Service",
                &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"], &["svc"]),
            resource_entry("services/status", "", true, "Service", &["get", "patch", "update"], &[]),
        ],
    })
}

/// The API group `name`, served at version `v1` only.
fn group_entry(name: &str) -> Value {
    let gv = format!("{name}/v1");
    json!({
        "name": name,
        "versions": [{"groupVersion": gv, "version": "v1"}],
        "preferredVersion": {"groupVersion": gv, "version": "v1"},
    })
}

/// `/apis/batch/v1`: jobs and cronjobs.
fn batch_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "batch/v1",
        "resources": [
            resource_entry("jobs", "job", true, "Job", OBJECT_VERBS, &[]),
            resource_entry("jobs/status", "", true, "Job", &["get", "patch", "update"], &[]),
            resource_entry("cronjobs", "cronjob", true, "CronJob", OBJECT_VERBS, &["cj"]),
            resource_entry("cronjobs/status", "", true, "CronJob", &["get", "patch", "update"], &[]),
        ],
    })
}

/// `/apis/apps/v1`: deployments (stored only: no ReplicaSets or pods are made).
fn apps_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "apps/v1",
        "resources": [
            resource_entry("deployments", "deployment", true, "Deployment", OBJECT_VERBS, &["deploy"]),
            resource_entry("deployments/status", "", true, "Deployment", &["get", "patch", "update"], &[]),
        ],
    })
}

/// `/apis/rbac.authorization.k8s.io/v1`: roles and role bindings (stored only: the deny list
/// of [`crate::Sim::deny`] stands in for authorization).
fn rbac_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{RBAC_GROUP}/v1"),
        "resources": [
            resource_entry("rolebindings", "rolebinding", true, "RoleBinding", OBJECT_VERBS, &[]),
            resource_entry("roles", "role", true, "Role", OBJECT_VERBS, &[]),
        ],
    })
}

/// `/apis/networking.k8s.io/v1`: network policies (stored only: the simulator's pods are on
/// Docker's bridge, and nothing enforces them).
fn networking_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{NETWORKING_GROUP}/v1"),
        "resources": [
            resource_entry("networkpolicies", "networkpolicy", true, "NetworkPolicy", OBJECT_VERBS, &["netpol"]),
        ],
    })
}

/// The API groups `/apis` lists.
fn groups(inner: &Inner) -> Vec<Value> {
    let mut groups = vec![
        authz::group(),
        group_entry("batch"),
        group_entry("apps"),
        group_entry(RBAC_GROUP),
        group_entry(NETWORKING_GROUP),
    ];
    if argo(inner) {
        groups.push(argo_group());
    }
    groups
}

/// Whether Argo's CRDs are installed.
fn argo(inner: &Inner) -> bool {
    inner.argo_crds.load(std::sync::atomic::Ordering::SeqCst)
}

/// The `argoproj.io` group, served at `v1alpha1` (the Workflow CRDs' only version).
fn argo_group() -> Value {
    let gv = format!("{ARGO_GROUP}/v1alpha1");
    json!({
        "name": ARGO_GROUP,
        "versions": [{"groupVersion": gv, "version": "v1alpha1"}],
        "preferredVersion": {"groupVersion": gv, "version": "v1alpha1"},
    })
}

/// `/apis/argoproj.io/v1alpha1`: workflows and cronworkflows (stored only).
fn argo_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{ARGO_GROUP}/v1alpha1"),
        "resources": [
            resource_entry("cronworkflows", "cronworkflow", true, "CronWorkflow", OBJECT_VERBS, &["cwf", "cronwf"]),
            resource_entry("cronworkflows/status", "", true, "CronWorkflow", &["get", "patch", "update"], &[]),
            resource_entry("workflows", "workflow", true, "Workflow", OBJECT_VERBS, &["wf"]),
            resource_entry("workflows/status", "", true, "Workflow", &["get", "patch", "update"], &[]),
        ],
    })
}
