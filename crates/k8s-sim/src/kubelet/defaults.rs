//! What the API server does to a new pod before storing it: validation of the containers, the
//! defaults of a pod spec (also for a Job's template), the `ServiceAccount` and
//! `DefaultTolerationSeconds` admission plugins, and the QoS class in the initial status.

use serde_json::{json, Value};

use crate::errors::ApiError;
use crate::meta::{self, json_str};
use crate::store::Res;

/// Fills a pod spec's defaults, in place.
pub(crate) fn default_pod_spec(spec: &mut Value) {
    if spec["restartPolicy"].is_null() {
        spec["restartPolicy"] = json!("Always");
    }
    for (k, v) in [
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("securityContext", json!({})),
        ("enableServiceLinks", json!(true)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
        ("priority", json!(0)),
    ] {
        if spec[k].is_null() {
            spec[k] = v;
        }
    }
    if let Some(containers) = spec["containers"].as_array_mut() {
        for c in containers {
            let image = json_str(&c["image"]).to_owned();
            if c["imagePullPolicy"].is_null() {
                let latest = !image.contains(':') || image.ends_with(":latest");
                c["imagePullPolicy"] = json!(if latest { "Always" } else { "IfNotPresent" });
            }
            for (k, v) in [
                ("terminationMessagePath", json!("/dev/termination-log")),
                ("terminationMessagePolicy", json!("File")),
                ("resources", json!({})),
            ] {
                if c[k].is_null() {
                    c[k] = v;
                }
            }
        }
    }
}

/// Checks that the pod spec at `path` has containers, each with a name and an image.
fn validate_pod_spec(spec: &Value, res: Res, name: &str, path: &str) -> Result<(), ApiError> {
    let required = |field: String| {
        ApiError::invalid(res, name, &field, "FieldValueRequired", "Required value")
    };
    let containers = spec["containers"].as_array().filter(|c| !c.is_empty());
    let Some(containers) = containers else {
        return Err(required(format!("{path}.containers")));
    };
    for (i, c) in containers.iter().enumerate() {
        for field in ["name", "image"] {
            if json_str(&c[field]).is_empty() {
                return Err(required(format!("{path}.containers[{i}].{field}")));
            }
        }
    }
    Ok(())
}

/// The pod's QoS class from its containers' requests and limits.
fn qos_class(spec: &Value) -> &'static str {
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let (req, lim) = (&c["resources"]["requests"], &c["resources"]["limits"]);
        for r in ["cpu", "memory"] {
            let l = meta::parse_quantity(&lim[r]);
            let q = meta::parse_quantity(&req[r]).or(l);
            any |= l.is_some() || q.is_some();
            guaranteed &= l.is_some() && l == q;
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// The tolerations the `DefaultTolerationSeconds` admission plugin gives every pod: five
/// minutes on a node that is not ready or unreachable before the pod is evicted.
const DEFAULT_TOLERATIONS: [&str; 2] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];

/// What the admission plugins of a real control plane add to every pod, also to those a
/// controller creates: the `ServiceAccount` plugin's `serviceAccountName` (`default` when
/// unset, mirrored in the deprecated `serviceAccount`) and `DefaultTolerationSeconds`'
/// tolerations. The plugin's token volume is not added (see the crate docs).
fn admit_pod(spec: &mut Value) {
    let account = match json_str(&spec["serviceAccountName"]) {
        "" => match json_str(&spec["serviceAccount"]) {
            "" => "default".to_owned(),
            old => old.to_owned(),
        },
        name => name.to_owned(),
    };
    spec["serviceAccountName"] = json!(account);
    spec["serviceAccount"] = json!(account);
    let mut tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
    for key in DEFAULT_TOLERATIONS {
        let tolerated = tolerations.iter().any(|t| {
            let effect = json_str(&t["effect"]);
            let key_matches = json_str(&t["key"]) == key
                || (json_str(&t["key"]).is_empty() && json_str(&t["operator"]) == "Exists");
            key_matches && (effect.is_empty() || effect == "NoExecute")
        });
        if !tolerated {
            tolerations.push(
                json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": 300}),
            );
        }
    }
    spec["tolerations"] = json!(tolerations);
}

/// Validates a pod and fills its defaults and initial status.
pub(crate) fn default_pod(mut pod: Value, name: &str) -> Result<Value, ApiError> {
    validate_pod_spec(&pod["spec"], Res::Pod, name, "spec")?;
    default_pod_spec(&mut pod["spec"]);
    admit_pod(&mut pod["spec"]);
    let qos = qos_class(&pod["spec"]);
    pod["status"] = json!({"phase": "Pending", "qosClass": qos});
    Ok(pod)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::default_pod;

    fn refusal(spec: serde_json::Value) -> String {
        let e = default_pod(json!({"spec": spec}), "p").expect_err("refused");
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        e.message
    }

    #[test]
    fn required_fields_are_named_in_order() {
        assert_eq!(
            refusal(json!({})),
            "Pod \"p\" is invalid: spec.containers: Required value"
        );
        assert_eq!(
            refusal(json!({"containers": [{"name": "a", "image": "i"}, {"image": "i"}]})),
            "Pod \"p\" is invalid: spec.containers[1].name: Required value"
        );
        assert_eq!(
            refusal(json!({"containers": [{"name": "a"}]})),
            "Pod \"p\" is invalid: spec.containers[0].image: Required value"
        );
    }

    #[test]
    fn defaults_and_admission_fill_a_valid_pod() {
        let pod = default_pod(
            json!({"spec": {"containers": [{"name": "a", "image": "busybox"}]}}),
            "p",
        )
        .expect("valid");
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["spec"]["serviceAccountName"], "default");
        assert_eq!(pod["spec"]["tolerations"].as_array().map(Vec::len), Some(2));
        assert_eq!(pod["status"]["phase"], "Pending");
        assert_eq!(pod["status"]["qosClass"], "BestEffort");
    }
}
