//! What create, patch and delete do beyond storing an object: a create's checks, defaults
//! and admission, then the kubelet or the job controller; a patch as JSON merge patch or JSON
//! patch; a delete's propagation policy and what it sets going.

use std::sync::Arc;

use serde_json::{json, Value};

use super::Params;
use crate::errors::ApiError;
use crate::meta;
use crate::store::Res;
use crate::{admission, jobs, kubelet, Inner};

/// PATCH bodies are applied as JSON merge patches (strategic merge patches included, which
/// then replace lists instead of merging them) and as JSON patches when the body is an array;
/// `decode` then sees the patched object, as the API server decodes the result of a patch.
pub(super) fn patch(
    inner: &Arc<Inner>,
    res: Res,
    ns: &str,
    name: &str,
    body: &Value,
    decode: impl FnOnce(&mut Value) -> Result<(), ApiError>,
) -> Result<Value, ApiError> {
    // A merge patch naming a resourceVersion is a precondition, as on the API server: a
    // stale one is 409 Conflict (how optimistic concurrency, e.g. a pool claim, works).
    let expected = body["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_owned);
    inner
        .store
        .update(res, ns, name, expected.as_deref(), |obj| {
            if let Value::Array(ops) = body {
                json_patch(obj, ops)?;
            } else {
                meta::merge_patch(obj, body);
            }
            decode(obj)
        })
}

/// A small RFC 6902 subset: add, replace and remove on object paths and array indexes.
fn json_patch(obj: &mut Value, ops: &[Value]) -> Result<(), ApiError> {
    for op in ops {
        let path = op["path"].as_str().unwrap_or("");
        let parts: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|p| p.replace("~1", "/").replace("~0", "~"))
            .collect();
        let Some((last, parents)) = parts.split_last() else {
            return Err(ApiError::bad_request("empty JSON patch path"));
        };
        let mut cur = &mut *obj;
        for p in parents {
            cur = match cur {
                Value::Object(m) => m.entry(p.clone()).or_insert(json!({})),
                Value::Array(a) => p
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| a.get_mut(i))
                    .ok_or_else(|| ApiError::bad_request(format!("no path {path}")))?,
                _ => return Err(ApiError::bad_request(format!("no path {path}"))),
            };
        }
        match (op["op"].as_str().unwrap_or(""), cur) {
            ("add" | "replace", Value::Object(m)) => {
                m.insert(last.clone(), op["value"].clone());
            }
            ("add", Value::Array(a)) if last == "-" => a.push(op["value"].clone()),
            ("add" | "replace", Value::Array(a)) => {
                let i: usize = last
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("bad index in {path}")))?;
                if i < a.len() {
                    a[i] = op["value"].clone();
                } else {
                    a.push(op["value"].clone());
                }
            }
            ("remove", Value::Object(m)) => {
                m.remove(last);
            }
            ("remove", Value::Array(a)) => {
                if let Ok(i) = last.parse::<usize>() {
                    if i < a.len() {
                        a.remove(i);
                    }
                }
            }
            (other, _) => {
                return Err(ApiError::bad_request(format!(
                    "unsupported JSON patch op {other:?} at {path}"
                )))
            }
        }
    }
    Ok(())
}

/// Fills a namespace's defaults.
pub(crate) fn default_namespace(mut obj: Value) -> Value {
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
    obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
    obj["spec"] = json!({"finalizers": ["kubernetes"]});
    obj["status"] = json!({"phase": "Active"});
    obj
}

/// The next service address (the low 16 bits of 10.96.0.0/16), shared by the simulators of
/// a process: addresses only need to differ.
static NEXT_SERVICE_IP: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// Fills a Service's defaults as the API server does: type ClusterIP with an address from
/// the service range, TCP ports whose target is their own port.
/// A key of a Secret's or ConfigMap's `field`, as the API server validates it (it becomes a
/// file name in a volume, so `.` and `..` are refused too).
fn check_config_key(res: Res, name: &str, field: &str, k: &str) -> Result<(), ApiError> {
    let key_ok = !k.is_empty()
        && k.len() <= 253
        && k.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if !key_ok {
        return Err(ApiError::invalid(
            res,
            name,
            &format!("{field}[{k}]"),
            "FieldValueInvalid",
            &format!("Invalid value: \"{k}\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"),
        ));
    }
    if k == "." || k == ".." {
        return Err(ApiError::invalid(
            res,
            name,
            &format!("{field}[{k}]"),
            "FieldValueInvalid",
            &format!("Invalid value: \"{k}\": must not be '{k}'"),
        ));
    }
    Ok(())
}

/// A Secret as the API server stores it: `stringData` merged into `data` (base64), `type`
/// defaulting to `Opaque`, keys checked.
fn default_secret(mut secret: Value, name: &str) -> Result<Value, ApiError> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut data = secret["data"].as_object().cloned().unwrap_or_default();
    if let Some(strings) = secret["stringData"].as_object() {
        for (k, v) in strings {
            data.insert(k.clone(), json!(b64.encode(v.as_str().unwrap_or_default())));
        }
    }
    for (k, v) in &data {
        check_config_key(Res::Secret, name, "data", k)?;
        if v.as_str().is_none_or(|t| b64.decode(t).is_err()) {
            return Err(ApiError::bad_request(format!(
                "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data in data[{k}]"
            )));
        }
    }
    if let Some(obj) = secret.as_object_mut() {
        obj.remove("stringData");
    }
    secret["data"] = Value::Object(data);
    if secret["type"].as_str().is_none_or(str::is_empty) {
        secret["type"] = json!("Opaque");
    }
    Ok(secret)
}

fn default_service(mut svc: Value) -> Value {
    let spec = &mut svc["spec"];
    if spec["type"].is_null() {
        spec["type"] = json!("ClusterIP");
    }
    if spec["type"] != "ExternalName" && spec["clusterIP"].is_null() {
        let n = NEXT_SERVICE_IP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ip = format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff);
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!([ip]);
        spec["ipFamilies"] = json!(["IPv4"]);
        spec["ipFamilyPolicy"] = json!("SingleStack");
        spec["internalTrafficPolicy"] = json!("Cluster");
    }
    if spec["sessionAffinity"].is_null() {
        spec["sessionAffinity"] = json!("None");
    }
    if let Some(ports) = spec["ports"].as_array_mut() {
        for port in ports {
            if port["protocol"].is_null() {
                port["protocol"] = json!("TCP");
            }
            if port["targetPort"].is_null() {
                port["targetPort"] = port["port"].clone();
            }
        }
    }
    svc["status"] = json!({"loadBalancer": {}});
    svc
}

/// Checks a Deployment as the API server does where a mistake is easy (a selector its pod
/// template's labels do not match) and fills its defaults. No controller acts on it: it makes
/// no ReplicaSets or pods, and its status stays empty.
fn default_deployment(mut deploy: Value, name: &str) -> Result<Value, ApiError> {
    let selector = deploy["spec"]["selector"]["matchLabels"].clone();
    let Some(selector) = selector.as_object().filter(|m| !m.is_empty()) else {
        return Err(ApiError::invalid(
            Res::Deployment,
            name,
            "spec.selector",
            "FieldValueRequired",
            "Required value",
        ));
    };
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    if selector.iter().any(|(k, v)| labels[k] != *v) {
        return Err(ApiError::invalid(
            Res::Deployment,
            name,
            "spec.template.metadata.labels",
            "FieldValueInvalid",
            &format!("Invalid value: {labels}: `selector` does not match template `labels`"),
        ));
    }
    let spec = &mut deploy["spec"];
    for (field, value) in [
        ("replicas", json!(1)),
        ("revisionHistoryLimit", json!(10)),
        ("progressDeadlineSeconds", json!(600)),
        (
            "strategy",
            json!({"type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
        ),
    ] {
        if spec[field].is_null() {
            spec[field] = value;
        }
    }
    deploy["status"] = json!({});
    Ok(deploy)
}

/// How long a new claim stays Pending ([`crate::Sim::bind_claims_after`]).
fn pending_claim_delay(inner: &Inner) -> Option<std::time::Duration> {
    *inner
        .claim_bind_delay
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Creates an object of `res` in `ns` from `body` (checked, defaulted and admitted first);
/// nothing is stored on a dry run.
pub(super) async fn create(
    inner: &Arc<Inner>,
    res: Res,
    ns: &str,
    mut body: Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    if let Some(kind) = body["kind"].as_str() {
        if kind != res.kind() {
            return Err(ApiError::bad_request(format!(
                "the kind {kind:?} of the object does not match the resource {}",
                res.plural()
            )));
        }
    }
    if let Some(body_ns) = body["metadata"]["namespace"].as_str() {
        if res.namespaced() && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    let name = body["metadata"]["name"].as_str().unwrap_or("").to_owned();
    body = match res {
        Res::Namespace => default_namespace(body),
        Res::Pod => {
            let mut pod = kubelet::default_pod(body, &name)?;
            admission::admit_pod(inner, ns, &mut pod)?;
            pod
        }
        Res::Pvc => {
            let mut pvc = kubelet::default_pvc(body, &name)?;
            if pending_claim_delay(inner).is_some() {
                kubelet::unbind(&mut pvc);
            }
            pvc
        }
        Res::Job => jobs::default_job(body, &name)?,
        Res::CronJob => jobs::default_cron_job(body, &name)?,
        Res::Node | Res::Event | Res::LimitRange => body,
        Res::Service => default_service(body),
        Res::Deployment => default_deployment(body, &name)?,
        Res::ServiceAccount | Res::Role | Res::RoleBinding | Res::NetworkPolicy => body,
        Res::Workflow | Res::CronWorkflow => body,
        Res::ConfigMap => {
            for field in ["data", "binaryData"] {
                for key in body[field].as_object().into_iter().flat_map(|m| m.keys()) {
                    check_config_key(Res::ConfigMap, &name, field, key)?;
                }
            }
            body
        }
        Res::Secret => default_secret(body, &name)?,
        Res::ResourceQuota => {
            let mut quota = body;
            quota["status"] = json!({"hard": quota["spec"]["hard"], "used": {}});
            quota
        }
    };
    if dry_run {
        return Ok(body);
    }
    if res == Res::Job {
        // The job's uid labels its pod template: fill it in before anyone sees the job.
        let created = inner.store.create_with(res, ns, body, |obj| {
            let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
            let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_owned();
            jobs::label_template(obj, &name, &uid);
        })?;
        let name = created["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        // Create the first pod at once, so `kubectl wait -l job-name=...` right after
        // `kubectl create` finds it.
        jobs::reconcile(inner);
        return Ok(inner.store.get(res, ns, &name).unwrap_or(created));
    }
    let created = inner.store.create(res, ns, body)?;
    if res == Res::Pvc {
        if let Err(e) = kubelet::create_claim_volume(inner, &created).await {
            let name = created["metadata"]["name"].as_str().unwrap_or("");
            inner.store.remove(res, ns, name);
            return Err(e);
        }
        if let Some(delay) = pending_claim_delay(inner) {
            kubelet::bind_later(inner, &created, delay);
        }
    }
    if res == Res::Pod {
        kubelet::ensure_workers(inner);
    }
    Ok(created)
}

/// How dependents are handled when deleting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Propagation {
    Orphan,
    Background,
    Foreground,
}

/// Deletes object `name` by the propagation policy the request asks for (or the
/// resource's default), checking its preconditions.
pub(super) async fn delete(
    inner: &Arc<Inner>,
    res: Res,
    ns: &str,
    name: &str,
    params: &Params,
    body: &Value,
) -> Result<Value, ApiError> {
    let policy = body["propagationPolicy"]
        .as_str()
        .or_else(|| params.get("propagationPolicy"))
        .map(str::to_owned);
    let orphan_flag = body["orphanDependents"]
        .as_bool()
        .or_else(|| params.get("orphanDependents").map(|v| v == "true"));
    let policy = match (policy.as_deref(), orphan_flag) {
        (Some("Foreground"), _) => Propagation::Foreground,
        (Some("Background"), _) => Propagation::Background,
        (Some("Orphan"), _) | (None, Some(true)) => Propagation::Orphan,
        (Some(other), _) => {
            return Err(ApiError::bad_request(format!(
                "unknown propagationPolicy {other:?}"
            )))
        }
        // batch/v1 jobs orphan their pods by default; everything else deletes in background.
        (None, _) if res == Res::Job => Propagation::Orphan,
        (None, _) => Propagation::Background,
    };
    if let Some(pre) = body["preconditions"]["uid"].as_str() {
        let current = inner
            .store
            .get(res, ns, name)
            .ok_or_else(|| ApiError::not_found(res, name))?;
        if current["metadata"]["uid"].as_str() != Some(pre) {
            return Err(ApiError::conflict(res, name));
        }
    }
    match res {
        Res::Namespace => {
            if matches!(name, "default" | "kube-system" | "kube-public") {
                return Err(ApiError::forbidden(
                    res,
                    name,
                    "this namespace may not be deleted",
                ));
            }
            let obj = inner.store.update(res, "", name, None, |obj| {
                if obj["metadata"]["deletionTimestamp"].is_null() {
                    obj["metadata"]["deletionTimestamp"] = json!(meta::now_rfc3339());
                    obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                }
                obj["status"]["phase"] = json!("Terminating");
                Ok(())
            })?;
            jobs::reconcile(inner);
            Ok(obj)
        }
        Res::Pod => {
            jobs::count_deleted_pod(inner, ns, name);
            kubelet::delete_pod(inner, ns, name)
        }
        Res::Pvc => {
            let obj = inner
                .store
                .remove(res, ns, name)
                .ok_or_else(|| ApiError::not_found(res, name))?;
            kubelet::remove_claim_volume(inner, &obj);
            Ok(obj)
        }
        Res::Job => jobs::delete_job(inner, ns, name, policy),
        Res::Node
        | Res::CronJob
        | Res::Event
        | Res::ResourceQuota
        | Res::LimitRange
        | Res::ConfigMap
        | Res::Secret
        | Res::Service
        | Res::ServiceAccount
        | Res::Deployment
        | Res::Role
        | Res::RoleBinding
        | Res::NetworkPolicy
        | Res::Workflow
        | Res::CronWorkflow => inner
            .store
            .remove(res, ns, name)
            .ok_or_else(|| ApiError::not_found(res, name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_gets_an_address_and_full_ports() {
        let svc = default_service(json!({"spec": {"ports": [{"port": 8080}],
            "selector": {"app": "x"}}}));
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        let ip = svc["spec"]["clusterIP"].as_str().expect("an address");
        assert!(ip.starts_with("10.96."), "{ip}");
        assert_eq!(svc["spec"]["clusterIPs"], json!([ip]));
        assert_eq!(
            svc["spec"]["ports"][0],
            json!({"port": 8080, "protocol": "TCP", "targetPort": 8080})
        );
        let other = default_service(json!({"spec": {"ports": [{"port": 80}]}}));
        assert_ne!(other["spec"]["clusterIP"], svc["spec"]["clusterIP"]);
        let external = default_service(json!({"spec": {"type": "ExternalName",
            "externalName": "example.com"}}));
        assert!(external["spec"]["clusterIP"].is_null(), "{external}");
    }

    #[test]
    fn a_deployment_selects_its_own_template() {
        let deploy = |selector: Value, labels: Value| {
            json!({"spec": {"selector": {"matchLabels": selector},
                "template": {"metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
        };
        let ok = default_deployment(deploy(json!({"a": "b"}), json!({"a": "b", "c": "d"})), "d")
            .expect("a matching selector");
        assert_eq!(ok["spec"]["replicas"], 1);
        assert_eq!(ok["spec"]["strategy"]["type"], "RollingUpdate");
        let kept = default_deployment(
            {
                let mut d = deploy(json!({"a": "b"}), json!({"a": "b"}));
                d["spec"]["replicas"] = json!(3);
                d
            },
            "d",
        )
        .expect("ok");
        assert_eq!(kept["spec"]["replicas"], 3);
        let bad = default_deployment(deploy(json!({"a": "b"}), json!({"a": "c"})), "d")
            .expect_err("a selector that does not match");
        assert_eq!(bad.code, 422);
        assert!(
            bad.message
                .contains("spec.template.metadata.labels: Invalid value"),
            "{}",
            bad.message
        );
        let none =
            default_deployment(deploy(json!({}), json!({"a": "b"})), "d").expect_err("no selector");
        assert!(
            none.message.contains("spec.selector: Required value"),
            "{}",
            none.message
        );
    }
}
