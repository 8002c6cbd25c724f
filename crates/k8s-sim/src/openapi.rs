//! Minimal OpenAPI v3 documents: one PATCH operation per kind that declares the
//! `fieldValidation` parameter, which is what kubectl reads to choose server-side validation
//! (so it needs no schemas). The simulator accepts `fieldValidation` and ignores it.

use serde_json::{json, Map, Value};

use crate::store::{Res, ARGO_GROUP};

const HASH: &str = "B3C4A5D6E7F8";

/// `GET /openapi/v3`: the index of group-version documents (with Argo's when its CRDs are
/// installed).
pub(crate) fn index(argo: bool) -> Value {
    let mut index = json!({"paths": {
        "api/v1": {"serverRelativeURL": format!("/openapi/v3/api/v1?hash={HASH}")},
        "apis/authorization.k8s.io/v1": {"serverRelativeURL":
            format!("/openapi/v3/apis/authorization.k8s.io/v1?hash={HASH}")},
        "apis/batch/v1": {"serverRelativeURL": format!("/openapi/v3/apis/batch/v1?hash={HASH}")},
        "apis/apps/v1": {"serverRelativeURL": format!("/openapi/v3/apis/apps/v1?hash={HASH}")},
        "apis/rbac.authorization.k8s.io/v1": {"serverRelativeURL":
            format!("/openapi/v3/apis/rbac.authorization.k8s.io/v1?hash={HASH}")},
        "apis/networking.k8s.io/v1": {"serverRelativeURL":
            format!("/openapi/v3/apis/networking.k8s.io/v1?hash={HASH}")},
    }});
    if argo {
        index["paths"][format!("apis/{ARGO_GROUP}/v1alpha1")] = json!({"serverRelativeURL":
            format!("/openapi/v3/apis/{ARGO_GROUP}/v1alpha1?hash={HASH}")});
    }
    index
}

/// The document of one group-version (`""`, `"batch"`, `"apps"`, `"rbac.authorization.k8s.io"`,
/// `"authorization.k8s.io"` or `"argoproj.io"`).
pub(crate) fn group_version(group: &str) -> Value {
    let mut paths = Map::new();
    if group == crate::authz::GROUP {
        // SelfSubjectAccessReview is create-only: one POST.
        let op = json!({
            "operationId": "createAuthorizationV1SelfSubjectAccessReview",
            "x-kubernetes-action": "post",
            "x-kubernetes-group-version-kind":
                {"group": group, "version": "v1", "kind": "SelfSubjectAccessReview"},
            "parameters": [
                {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {"201": {"description": "Created"}},
        });
        paths.insert(
            format!("/apis/{group}/v1/selfsubjectaccessreviews"),
            json!({"post": op}),
        );
    }
    // Argo's CRDs are served at v1alpha1; every other group here at v1.
    let version = if group == ARGO_GROUP {
        "v1alpha1"
    } else {
        "v1"
    };
    for res in Res::ALL.into_iter().filter(|r| r.group() == group) {
        let prefix = if group.is_empty() {
            "/api/v1".to_owned()
        } else {
            format!("/apis/{group}/{version}")
        };
        let path = if res.namespaced() {
            format!(
                "{prefix}/namespaces/{{namespace}}/{}/{{name}}",
                res.plural()
            )
        } else {
            format!("{prefix}/{}/{{name}}", res.plural())
        };
        let op = json!({
            "operationId": format!("patch{}", res.kind()),
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": res.kind()},
            "parameters": [
                {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                {"name": "force", "in": "query", "schema": {"type": "boolean"}},
            ],
            "responses": {"200": {"description": "OK"}},
        });
        paths.insert(path, json!({"patch": op}));
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}},
    })
}
