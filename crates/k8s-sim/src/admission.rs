//! Admission of pods, in the API server's order: LimitRanger (defaults, then bounds), Pod
//! Security admission (the namespace's `pod-security.kubernetes.io/enforce` label), then
//! ResourceQuota. Each refusal is the server's 403 with its own wording.

use serde_json::{json, Value};

use crate::errors::ApiError;
use crate::meta::{self, json_str};
use crate::store::Res;
use crate::Inner;

/// Admits pod `pod` into namespace `ns`, filling LimitRange defaults in place.
pub(crate) fn admit_pod(inner: &Inner, ns: &str, pod: &mut Value) -> Result<(), ApiError> {
    // Names from generateName are chosen before admission, so refusals can name the pod.
    if json_str(&pod["metadata"]["name"]).is_empty() {
        if let Some(prefix) = pod["metadata"]["generateName"].as_str() {
            pod["metadata"]["name"] = json!(format!("{prefix}{}", meta::random_suffix(5)));
        }
    }
    let name = json_str(&pod["metadata"]["name"]).to_owned();
    let (ranges, _) = inner.store.list(Res::LimitRange, Some(ns));
    limit_ranges(&ranges, pod).map_err(|why| ApiError::forbidden(Res::Pod, &name, &why))?;
    let labels = inner
        .store
        .get(Res::Namespace, "", ns)
        .map(|n| n["metadata"]["labels"].clone())
        .unwrap_or_default();
    let level = json_str(&labels["pod-security.kubernetes.io/enforce"]);
    let version = labels["pod-security.kubernetes.io/enforce-version"]
        .as_str()
        .unwrap_or("latest");
    let violations = pod_security(level, &pod["spec"]);
    if !violations.is_empty() {
        return Err(ApiError::forbidden(
            Res::Pod,
            &name,
            &format!(
                "violates PodSecurity \"{level}:{version}\": {}",
                violations.join(", ")
            ),
        ));
    }
    let (quotas, _) = inner.store.list(Res::ResourceQuota, Some(ns));
    let (pods, _) = inner.store.list(Res::Pod, Some(ns));
    quota(&quotas, &pods, pod).map_err(|why| ApiError::forbidden(Res::Pod, &name, &why))
}

/// Quantity text as the API server prints it in these messages (`512Mi`, `2Gi`, `500m`).
pub(crate) fn format_quantity(resource: &str, v: f64) -> String {
    if resource.ends_with("cpu") {
        let millis = (v * 1000.0).round();
        if millis % 1000.0 == 0.0 {
            return format!("{}", millis / 1000.0);
        }
        return format!("{millis}m");
    }
    for (suffix, f) in [
        ("Gi", 1024.0_f64.powi(3)),
        ("Mi", 1024.0_f64.powi(2)),
        ("Ki", 1024.0),
    ] {
        if v >= f && (v / f).fract() == 0.0 {
            return format!("{}{suffix}", v / f);
        }
    }
    format!("{v}")
}

/// LimitRanger: `default`/`defaultRequest` of `type: Container` items fill missing limits and
/// requests (a missing `defaultRequest` falls back to `default`, as the API server defaults
/// it); `max`/`min` bound them. Returns the refusal's reason.
fn limit_ranges(ranges: &[Value], pod: &mut Value) -> Result<(), String> {
    let items: Vec<Value> = ranges
        .iter()
        .flat_map(|r| r["spec"]["limits"].as_array().cloned().unwrap_or_default())
        .filter(|i| json_str(&i["type"]) == "Container")
        .collect();
    if items.is_empty() {
        return Ok(());
    }
    let mut set = Vec::new();
    let containers = pod["spec"]["containers"]
        .as_array_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let mut out = Vec::new();
    for mut c in containers {
        let cname = json_str(&c["name"]).to_owned();
        for item in &items {
            for res in ["cpu", "memory"] {
                let default = &item["default"][res];
                let request = if item["defaultRequest"][res].is_null() {
                    default
                } else {
                    &item["defaultRequest"][res]
                };
                if !default.is_null() && c["resources"]["limits"][res].is_null() {
                    c["resources"]["limits"][res] = default.clone();
                    set.push(format!("{res} limit for container {cname}"));
                }
                if !request.is_null()
                    && c["resources"]["requests"][res].is_null()
                    && c["resources"]["limits"][res] == *default
                {
                    c["resources"]["requests"][res] = request.clone();
                    set.push(format!("{res} request for container {cname}"));
                }
                let limit = meta::parse_quantity(&c["resources"]["limits"][res]);
                let req = meta::parse_quantity(&c["resources"]["requests"][res]).or(limit);
                if let (Some(max), Some(l)) = (meta::parse_quantity(&item["max"][res]), limit) {
                    if l > max {
                        return Err(format!(
                            "maximum {res} usage per Container is {}, but limit is {}",
                            json_str(&item["max"][res]),
                            format_quantity(res, l)
                        ));
                    }
                }
                if let (Some(min), Some(r)) = (meta::parse_quantity(&item["min"][res]), req) {
                    if r < min {
                        return Err(format!(
                            "minimum {res} usage per Container is {}, but request is {}",
                            json_str(&item["min"][res]),
                            format_quantity(res, r)
                        ));
                    }
                }
            }
        }
        out.push(c);
    }
    pod["spec"]["containers"] = json!(out);
    if !set.is_empty() {
        pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"] =
            json!(format!("LimitRanger plugin set: {}", set.join("; ")));
    }
    Ok(())
}

/// The Pod Security Standards checks of `level` (`baseline` or `restricted`; anything else is
/// `privileged`, which checks nothing), worded as the admission plugin words them.
pub(crate) fn pod_security(level: &str, spec: &Value) -> Vec<String> {
    let restricted = level == "restricted";
    if !restricted && level != "baseline" {
        return Vec::new();
    }
    let mut out = Vec::new();
    // Every container the pod runs, init containers first, as the admission plugin checks.
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .filter_map(|list| spec[*list].as_array())
        .flatten()
        .collect();
    let names = |pred: &dyn Fn(&Value) -> bool| -> Vec<String> {
        containers
            .iter()
            .filter(|c| pred(c))
            .map(|c| format!("\"{}\"", json_str(&c["name"])))
            .collect()
    };
    let quoted = |n: &[String]| {
        if n.len() == 1 {
            format!("container {}", n[0])
        } else {
            format!("containers {}", n.join(", "))
        }
    };
    let ns_flags: Vec<&str> = ["hostNetwork", "hostPID", "hostIPC"]
        .into_iter()
        .filter(|k| spec[*k].as_bool() == Some(true))
        .collect();
    if !ns_flags.is_empty() {
        let parts: Vec<String> = ns_flags.iter().map(|k| format!("{k}=true")).collect();
        out.push(format!("host namespaces ({})", parts.join(", ")));
    }
    let privileged = names(&|c| c["securityContext"]["privileged"].as_bool() == Some(true));
    if !privileged.is_empty() {
        out.push(format!(
            "privileged ({} must not set securityContext.privileged=true)",
            quoted(&privileged)
        ));
    }
    const BASELINE_CAPS: [&str; 13] = [
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ];
    let beyond_baseline = capabilities_beyond(&containers, &|cap| BASELINE_CAPS.contains(&cap));
    if !beyond_baseline.is_empty() {
        out.push(format!(
            "non-default capabilities ({})",
            beyond_baseline.join("; ")
        ));
    }
    let host_paths: Vec<String> = spec["volumes"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter(|v| v["hostPath"].is_object())
                .map(|v| format!("\"{}\"", json_str(&v["name"])))
                .collect()
        })
        .unwrap_or_default();
    if !host_paths.is_empty() {
        let what = if host_paths.len() == 1 {
            "volume"
        } else {
            "volumes"
        };
        out.push(format!(
            "hostPath volumes ({what} {})",
            host_paths.join(", ")
        ));
    }
    if !restricted {
        return out;
    }
    let restricted_volumes: Vec<String> = spec["volumes"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter(|v| v["hostPath"].is_object())
                .map(|v| {
                    format!(
                        "volume \"{}\" uses restricted volume type \"hostPath\"",
                        json_str(&v["name"])
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if !restricted_volumes.is_empty() {
        out.push(format!(
            "restricted volume types ({})",
            restricted_volumes.join("; ")
        ));
    }
    let escalating =
        names(&|c| c["securityContext"]["allowPrivilegeEscalation"].as_bool() != Some(false));
    if !escalating.is_empty() {
        out.push(format!(
            "allowPrivilegeEscalation != false ({} must set securityContext.allowPrivilegeEscalation=false)",
            quoted(&escalating)
        ));
    }
    let mut caps = Vec::new();
    let no_drop = names(&|c| {
        !c["securityContext"]["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| json_str(x) == "ALL"))
    });
    if !no_drop.is_empty() {
        caps.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            quoted(&no_drop)
        ));
    }
    caps.extend(capabilities_beyond(&containers, &|cap| {
        cap == "NET_BIND_SERVICE"
    }));
    if !caps.is_empty() {
        out.push(format!("unrestricted capabilities ({})", caps.join("; ")));
    }
    let pod_non_root = spec["securityContext"]["runAsNonRoot"].as_bool();
    let not_non_root = names(&|c| {
        let own = c["securityContext"]["runAsNonRoot"].as_bool();
        own.or(pod_non_root) != Some(true)
    });
    if pod_non_root == Some(false) {
        out.push(
            "runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false)".to_owned(),
        );
    } else if !not_non_root.is_empty() {
        let who = if pod_non_root.is_none() {
            "pod or "
        } else {
            ""
        };
        out.push(format!(
            "runAsNonRoot != true ({who}{} must set securityContext.runAsNonRoot=true)",
            quoted(&not_non_root)
        ));
    }
    let root_users = names(&|c| c["securityContext"]["runAsUser"].as_i64() == Some(0));
    if spec["securityContext"]["runAsUser"].as_i64() == Some(0) {
        out.push("runAsUser=0 (pod must not set runAsUser=0)".to_owned());
    } else if !root_users.is_empty() {
        out.push(format!(
            "runAsUser=0 ({} must not set runAsUser=0)",
            quoted(&root_users)
        ));
    }
    let pod_seccomp = json_str(&spec["securityContext"]["seccompProfile"]["type"]).to_owned();
    let ok_profile = |t: &str| t == "RuntimeDefault" || t == "Localhost";
    let no_seccomp = names(&|c| {
        let own = json_str(&c["securityContext"]["seccompProfile"]["type"]);
        let t = if own.is_empty() {
            pod_seccomp.as_str()
        } else {
            own
        };
        !ok_profile(t)
    });
    if !no_seccomp.is_empty() {
        let who = if pod_seccomp.is_empty() {
            "pod or "
        } else {
            ""
        };
        out.push(format!(
            "seccompProfile ({who}{} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
            quoted(&no_seccomp)
        ));
    }
    out
}

/// "container "c" must not include "X" in securityContext.capabilities.add" for each
/// container adding capabilities that `allowed` does not allow.
fn capabilities_beyond(containers: &[&Value], allowed: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for c in containers {
        let extra: Vec<String> = c["securityContext"]["capabilities"]["add"]
            .as_array()
            .into_iter()
            .flatten()
            .map(json_str)
            .filter(|cap| !allowed(cap))
            .map(|cap| format!("\"{cap}\""))
            .collect();
        if !extra.is_empty() {
            out.push(format!(
                "container \"{}\" must not include {} in securityContext.capabilities.add",
                json_str(&c["name"]),
                extra.join(", ")
            ));
        }
    }
    out
}

/// A pod's total for a quota key (`requests.cpu`, `limits.memory`, `cpu` = `requests.cpu`,
/// `pods`), or `None` for a compute key some container does not specify (with their names).
fn pod_usage(pod: &Value, key: &str) -> Result<f64, Vec<String>> {
    if key == "pods" {
        return Ok(1.0);
    }
    let (kind, res) = match key.split_once('.') {
        Some((k, r)) => (k, r),
        None => ("requests", key),
    };
    let mut total = 0.0;
    let mut missing = Vec::new();
    for c in pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let r = &c["resources"];
        let v = if kind == "limits" {
            meta::parse_quantity(&r["limits"][res])
        } else {
            meta::parse_quantity(&r["requests"][res])
                .or_else(|| meta::parse_quantity(&r["limits"][res]))
        };
        match v {
            Some(v) => total += v,
            None => missing.push(json_str(&c["name"]).to_owned()),
        }
    }
    if missing.is_empty() {
        Ok(total)
    } else {
        Err(missing)
    }
}

/// ResourceQuota: every quota of the namespace must hold the pod beside the namespace's other
/// unfinished pods. Returns the refusal's reason.
fn quota(quotas: &[Value], pods: &[Value], pod: &Value) -> Result<(), String> {
    const KEYS: [&str; 7] = [
        "pods",
        "cpu",
        "memory",
        "requests.cpu",
        "requests.memory",
        "limits.cpu",
        "limits.memory",
    ];
    for q in quotas {
        let qname = json_str(&q["metadata"]["name"]);
        let hard = &q["spec"]["hard"];
        let keys: Vec<&str> = KEYS.into_iter().filter(|k| !hard[*k].is_null()).collect();
        let mut must = Vec::new();
        for key in &keys {
            if let Err(missing) = pod_usage(pod, key) {
                must.push(format!("{key} for: {}", missing.join(",")));
            }
        }
        if !must.is_empty() {
            return Err(format!(
                "failed quota: {qname}: must specify {}",
                must.join("; ")
            ));
        }
        let (mut requested, mut used, mut limited) = (Vec::new(), Vec::new(), Vec::new());
        let mut exceeded = false;
        for key in &keys {
            let want = pod_usage(pod, key).unwrap_or(0.0);
            let have: f64 = pods
                .iter()
                .filter(|p| !matches!(json_str(&p["status"]["phase"]), "Succeeded" | "Failed"))
                .filter(|p| p["metadata"]["uid"] != pod["metadata"]["uid"])
                .map(|p| pod_usage(p, key).unwrap_or(0.0))
                // An empty f64 sum is -0.0, which would print as "-0".
                .fold(0.0, |a, b| a + b);
            let limit = meta::parse_quantity(&hard[*key]).unwrap_or(f64::MAX);
            if have + want > limit + 1e-9 {
                exceeded = true;
                requested.push(format!("{key}={}", format_quantity(key, want)));
                used.push(format!("{key}={}", format_quantity(key, have)));
                limited.push(format!("{key}={}", json_str(&hard[*key])));
            }
        }
        if exceeded {
            return Err(format!(
                "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                requested.join(","),
                used.join(","),
                limited.join(",")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(container_sc: Value, pod_sc: Value) -> Value {
        json!({"containers": [{"name": "env", "image": "i", "securityContext": container_sc}],
            "securityContext": pod_sc})
    }

    #[test]
    fn restricted_names_every_missing_setting_as_the_plugin_does() {
        let v = pod_security("restricted", &spec(json!({}), json!({})));
        assert_eq!(v, vec![
            "allowPrivilegeEscalation != false (container \"env\" must set securityContext.allowPrivilegeEscalation=false)",
            "unrestricted capabilities (container \"env\" must set securityContext.capabilities.drop=[\"ALL\"])",
            "runAsNonRoot != true (pod or container \"env\" must set securityContext.runAsNonRoot=true)",
            "seccompProfile (pod or container \"env\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
        ]);
        let ok = spec(
            json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}),
            json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}),
        );
        assert!(pod_security("restricted", &ok).is_empty());
    }

    #[test]
    fn baseline_refuses_privilege_and_extra_capabilities_only() {
        let v = pod_security(
            "baseline",
            &spec(
                json!({"privileged": true, "capabilities": {"add": ["SYS_ADMIN", "CHOWN"]}}),
                json!({}),
            ),
        );
        assert_eq!(v, vec![
            "privileged (container \"env\" must not set securityContext.privileged=true)",
            "non-default capabilities (container \"env\" must not include \"SYS_ADMIN\" in securityContext.capabilities.add)",
        ]);
        assert!(pod_security("baseline", &spec(json!({}), json!({}))).is_empty());
        assert!(
            pod_security("privileged", &spec(json!({"privileged": true}), json!({}))).is_empty()
        );
    }

    #[test]
    fn quota_counts_other_pods_and_words_the_refusal() {
        let q = json!({"metadata": {"name": "q"}, "spec": {"hard": {"limits.memory": "1Gi"}}});
        let pod = |uid: &str, mem: &str| {
            json!({"metadata": {"uid": uid}, "status": {"phase": "Running"},
            "spec": {"containers": [{"name": "env", "resources": {"limits": {"memory": mem}}}]}})
        };
        let other = pod("a", "512Mi");
        assert!(quota(
            std::slice::from_ref(&q),
            std::slice::from_ref(&other),
            &pod("b", "512Mi")
        )
        .is_ok());
        assert_eq!(
            quota(std::slice::from_ref(&q), &[other], &pod("b", "1Gi")).unwrap_err(),
            "exceeded quota: q, requested: limits.memory=1Gi, used: limits.memory=512Mi, limited: limits.memory=1Gi"
        );
        let bare = json!({"metadata": {"uid": "c"}, "spec": {"containers": [{"name": "env"}]}});
        assert_eq!(
            quota(&[q], &[], &bare).unwrap_err(),
            "failed quota: q: must specify limits.memory for: env"
        );
    }

    #[test]
    fn limit_ranges_fill_defaults_and_bound_limits() {
        let lr = json!({"spec": {"limits": [{"type": "Container", "default": {"memory": "256Mi"},
            "defaultRequest": {"memory": "128Mi"}, "max": {"memory": "1Gi"}}]}});
        let mut pod =
            json!({"metadata": {}, "spec": {"containers": [{"name": "env", "resources": {}}]}});
        limit_ranges(std::slice::from_ref(&lr), &mut pod).expect("admitted");
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["limits"]["memory"],
            "256Mi"
        );
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["requests"]["memory"],
            "128Mi"
        );
        assert!(
            json_str(&pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"])
                .contains("memory limit for container env")
        );
        let mut big = json!({"metadata": {}, "spec": {"containers": [{"name": "env",
            "resources": {"limits": {"memory": "2Gi"}}}]}});
        assert_eq!(
            limit_ranges(&[lr], &mut big).unwrap_err(),
            "maximum memory usage per Container is 1Gi, but limit is 2Gi"
        );
    }
}
