//! What the API server's decoder does to a request body before anything else sees it: YAML
//! bodies become objects, quantities take their canonical form, and fields the schema does not
//! declare are dropped, with `fieldValidation` choosing whether that is an error (`Strict`), a
//! warning (`Warn`, the default) or silent (`Ignore`).
//!
//! The schema is k8s-openapi's for Kubernetes 1.33: a body is decoded into the typed object and
//! encoded again, and every member of the body that did not survive the round trip is unknown.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::errors::ApiError;
use crate::quantity;
use crate::store::Res;

/// How unknown fields are handled (the `fieldValidation` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    /// Parses the parameter; absent is `Warn`, as on the API server since 1.27.
    pub(crate) fn parse(param: Option<&str>) -> Result<Self, ApiError> {
        match param {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: invalid value {other:?}: supported values are \"Ignore\", \"Warn\", \"Strict\""
            ))),
        }
    }
}

/// `error` as the decoder words it: `Job in version "v1" cannot be handled as a Job: ...`.
fn decode_error(res: Res, error: &str) -> ApiError {
    ApiError::bad_request(format!(
        "{kind} in version \"v1\" cannot be handled as a {kind}: {error}",
        kind = res.kind()
    ))
}

/// Canonicalizes the quantities of `obj`, a `res`.
fn canonicalize(res: Res, obj: &mut Value) -> Result<(), ApiError> {
    let result = match res {
        Res::Pod => obj
            .get_mut("spec")
            .map_or(Ok(()), quantity::canonicalize_pod_spec),
        Res::Job => obj
            .get_mut("spec")
            .and_then(|s| s.get_mut("template"))
            .and_then(|t| t.get_mut("spec"))
            .map_or(Ok(()), quantity::canonicalize_pod_spec),
        Res::CronJob => obj
            .get_mut("spec")
            .and_then(|s| s.get_mut("jobTemplate"))
            .and_then(|s| s.get_mut("spec"))
            .and_then(|s| s.get_mut("template"))
            .and_then(|t| t.get_mut("spec"))
            .map_or(Ok(()), quantity::canonicalize_pod_spec),
        Res::Deployment => obj
            .get_mut("spec")
            .and_then(|s| s.get_mut("template"))
            .and_then(|t| t.get_mut("spec"))
            .map_or(Ok(()), quantity::canonicalize_pod_spec),
        Res::Pvc => quantity::canonicalize_claim(obj),
        // Quota and LimitRange quantities are stored as sent (not canonicalized).
        Res::Namespace
        | Res::Node
        | Res::Event
        | Res::ResourceQuota
        | Res::LimitRange
        | Res::ConfigMap
        | Res::Secret
        | Res::Service
        | Res::ServiceAccount
        | Res::Role
        | Res::RoleBinding
        | Res::NetworkPolicy => Ok(()),
        // Custom resources: stored as sent (their CRDs' schemas are not checked).
        Res::Workflow | Res::CronWorkflow => Ok(()),
    };
    result.map_err(|e| decode_error(res, &e))
}

/// The typed round trip of `obj`, or `None` when the typed decoder refuses it (the simulator's
/// own validation then answers, as it did before).
fn round_trip<T: DeserializeOwned + Serialize>(obj: &Value) -> Option<Value> {
    let typed: T = serde_json::from_value(obj.clone()).ok()?;
    serde_json::to_value(&typed).ok()
}

fn typed(res: Res, obj: &Value) -> Option<Value> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    use k8s_openapi::api::core::v1::{
        ConfigMap, Event, LimitRange, Namespace, Node, PersistentVolumeClaim, Pod, ResourceQuota,
        Service, ServiceAccount,
    };
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    match res {
        Res::Pod => round_trip::<Pod>(obj),
        Res::Job => round_trip::<Job>(obj),
        Res::CronJob => round_trip::<CronJob>(obj),
        Res::Pvc => round_trip::<PersistentVolumeClaim>(obj),
        Res::Namespace => round_trip::<Namespace>(obj),
        Res::Node => round_trip::<Node>(obj),
        Res::Event => round_trip::<Event>(obj),
        Res::ResourceQuota => round_trip::<ResourceQuota>(obj),
        Res::LimitRange => round_trip::<LimitRange>(obj),
        Res::ConfigMap => round_trip::<ConfigMap>(obj),
        Res::Secret => round_trip::<k8s_openapi::api::core::v1::Secret>(obj),
        Res::Service => round_trip::<Service>(obj),
        Res::ServiceAccount => round_trip::<ServiceAccount>(obj),
        Res::Deployment => round_trip::<Deployment>(obj),
        Res::Role => round_trip::<Role>(obj),
        Res::RoleBinding => round_trip::<RoleBinding>(obj),
        Res::NetworkPolicy => round_trip::<k8s_openapi::api::networking::v1::NetworkPolicy>(obj),
        // No typed model: a custom resource keeps every field (as a CRD with
        // `x-kubernetes-preserve-unknown-fields`, which Argo's minimal CRDs are).
        Res::Workflow | Res::CronWorkflow => None,
    }
}

/// Removes the members of `obj` that `known` lacks, recording their paths the way the API
/// server writes them (`spec.template.spec.containers[0].bogus`).
fn prune(obj: &mut Value, known: &Value, path: &str, unknown: &mut Vec<String>) {
    match (obj, known) {
        (Value::Object(members), Value::Object(known)) => {
            members.retain(|k, v| {
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match known.get(k) {
                    // The status is the simulator's own to write (and the main resource
                    // ignores it): only what a client sends is checked.
                    Some(_) if here == "status" => true,
                    Some(kv) => {
                        prune(v, kv, &here, unknown);
                        true
                    }
                    // An explicit null is "not set", which every field may be.
                    None if v.is_null() => true,
                    None => {
                        unknown.push(here);
                        false
                    }
                }
            });
        }
        (Value::Array(items), Value::Array(known)) => {
            for (i, (item, k)) in items.iter_mut().zip(known).enumerate() {
                prune(item, k, &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

/// Decodes `obj` as the API server would: canonical quantities, unknown fields dropped and
/// handled per `validation`. Returns the warnings to send (`Warning` headers).
///
/// # Errors
/// 400 `BadRequest` for a malformed quantity, and for unknown fields under `Strict`.
pub(crate) fn decode(
    res: Res,
    obj: &mut Value,
    validation: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    if !obj.is_object() {
        return Ok(Vec::new());
    }
    canonicalize(res, obj)?;
    let Some(known) = typed(res, obj) else {
        return Ok(Vec::new());
    };
    let mut unknown = Vec::new();
    prune(obj, &known, "", &mut unknown);
    let messages: Vec<String> = unknown
        .iter()
        .map(|p| format!("unknown field \"{p}\""))
        .collect();
    match validation {
        FieldValidation::Strict if !messages.is_empty() => Err(decode_error(
            res,
            &format!("strict decoding error: {}", messages.join(", ")),
        )),
        FieldValidation::Warn => Ok(messages),
        _ => Ok(Vec::new()),
    }
}

/// A `Warning` header value for `message` (RFC 7234 warn-code 299, as the API server sends).
pub(crate) fn warning_header(message: &str) -> String {
    format!(
        "299 - \"{}\"",
        message.replace('\\', "\\\\").replace('"', "\\\"")
    )
}

/// The body as JSON, also when it was sent as YAML (`application/yaml`, or server-side
/// apply's `application/apply-patch+yaml`).
///
/// # Errors
/// When the bytes are neither.
pub(crate) fn parse_yaml(text: &str) -> Result<Value, String> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    Ok(docs.into_iter().next().map_or(Value::Null, yaml_to_json))
}

fn yaml_to_json(y: yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(r) => r
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::String(r), Value::Number),
        Yaml::Integer(i) => Value::from(i),
        Yaml::String(s) => Value::String(s),
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Array(a) => Value::Array(a.into_iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) | Yaml::Real(s) => s,
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        other => format!("{other:?}"),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Null | Yaml::BadValue | Yaml::Alias(_) => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(extra_spec: &Value, container_extra: &Value) -> Value {
        let mut container = json!({"name": "main", "image": "x:1",
            "resources": {"requests": {"cpu": "1000m"}}});
        meta_merge(&mut container, container_extra);
        let mut job = json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "j", "creationTimestamp": null},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [container]}}}});
        meta_merge(&mut job["spec"], extra_spec);
        job
    }

    fn meta_merge(target: &mut Value, extra: &Value) {
        if let (Some(t), Some(e)) = (target.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                t.insert(k.clone(), v.clone());
            }
        }
    }

    #[test]
    fn unknown_fields_per_mode() {
        let body = job(&json!({"bogus": 1}), &json!({"cmmand": ["x"]}));
        let mut strict = body.clone();
        let err = decode(Res::Job, &mut strict, FieldValidation::Strict).expect_err("strict");
        assert_eq!(err.code, 400);
        assert_eq!(
            err.message,
            "Job in version \"v1\" cannot be handled as a Job: strict decoding error: unknown field \"spec.bogus\", unknown field \"spec.template.spec.containers[0].cmmand\""
        );

        let mut warn = body.clone();
        let warnings = decode(Res::Job, &mut warn, FieldValidation::Warn).expect("warn");
        assert_eq!(
            warnings,
            [
                "unknown field \"spec.bogus\"",
                "unknown field \"spec.template.spec.containers[0].cmmand\""
            ]
        );
        assert!(warn["spec"].get("bogus").is_none(), "{warn}");
        assert!(warn["spec"]["template"]["spec"]["containers"][0]
            .get("cmmand")
            .is_none());
        // Known fields, nulls and quantities survive (the quantity canonical).
        assert_eq!(warn["metadata"]["creationTimestamp"], Value::Null);
        assert_eq!(
            warn["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "1"
        );

        let mut ignore = body;
        assert!(decode(Res::Job, &mut ignore, FieldValidation::Ignore)
            .expect("ignore")
            .is_empty());
        assert_eq!(ignore, warn);
    }

    #[test]
    fn clean_bodies_pass_untouched() {
        let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p",
            "labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i",
            "command": ["sleep", "1"], "securityContext": {}, "env": [{"name": "A", "value": "1"}]}],
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]}});
        let mut strict = body.clone();
        assert!(decode(Res::Pod, &mut strict, FieldValidation::Strict)
            .expect("clean")
            .is_empty());
        assert_eq!(strict, body);
    }

    #[test]
    fn bad_quantities_and_modes() {
        let mut body = json!({"spec": {"resources": {"requests": {"storage": "lots"}}}});
        let err = decode(Res::Pvc, &mut body, FieldValidation::Warn).expect_err("bad quantity");
        assert!(err
            .message
            .starts_with("PersistentVolumeClaim in version \"v1\" cannot be handled as a PersistentVolumeClaim: quantities must match"));
        assert!(FieldValidation::parse(Some("Loud")).is_err());
        assert_eq!(
            FieldValidation::parse(None).ok(),
            Some(FieldValidation::Warn)
        );
    }

    #[test]
    fn yaml_bodies_and_warnings() {
        let v = parse_yaml("kind: Pod\nspec:\n  containers:\n  - name: c\n    args: [\"1\", 2]\n    tty: true\n  x: 1.5\n").expect("yaml");
        assert_eq!(
            v,
            json!({"kind": "Pod", "spec": {"containers": [{"name": "c", "args": ["1", 2], "tty": true}], "x": 1.5}})
        );
        assert_eq!(
            warning_header("unknown field \"spec.bogus\""),
            r#"299 - "unknown field \"spec.bogus\"""#
        );
    }
}
