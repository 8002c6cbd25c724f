//! `berth render --server`: the objects that run `berth serve`, the job agent, in a cluster
//! with the Kubernetes backend.
//!
//! The API keys are not rendered: the Deployment mounts the keys of a Secret the user creates
//! ([`API_KEYS_SECRET`], key [`API_KEYS_KEY`], one key per line) as the file the deployed
//! config names in `server.api_keys_file`, so no key is ever printed or stored in a manifest.

use std::path::PathBuf;

use berth_engine_core::BackendKind;
use serde_json::{json, Value};

use crate::config::{format_memory_bytes, BerthConfig, DockerSection, ServerTls};
use crate::error::{Result, RunnerError};
use crate::rbac;

/// The name of every object (ServiceAccount, Role, RoleBinding, ConfigMap, Deployment,
/// Service) and the value of its `app.kubernetes.io/name` label.
pub const NAME: &str = "berth-server";
/// The port the server listens on in the pod, and the Service's port.
pub const PORT: u16 = 8080;
/// The Secret holding the API keys, which the user creates before the pod can start.
pub const API_KEYS_SECRET: &str = "berth-server-api-keys";
/// The key of [`API_KEYS_SECRET`] whose value is the keys file (one key per line).
pub const API_KEYS_KEY: &str = "keys";
/// The `kubernetes.io/tls` Secret mounted when `server.tls` is configured.
pub const TLS_SECRET: &str = "berth-server-tls";
/// Where the deployed config is mounted, and what `berth serve --config` reads.
pub const CONFIG_PATH: &str = "/etc/berth/config.yaml";
/// The extra time, beyond `server.drain_timeout`, the pod has after SIGTERM to cancel what is
/// left and remove every environment it started before the kubelet kills it.
pub const CLEANUP_GRACE_SECS: u64 = 30;

const CONFIG_KEY: &str = "config.yaml";
const API_KEYS_DIR: &str = "/etc/berth/api-keys";
const TLS_DIR: &str = "/etc/berth/tls";
/// The `nonroot` user of distroless images: any uid works, as long as it is not 0.
const RUN_AS: u64 = 65_532;
/// What the server itself needs besides the jobs' captured output.
const BASE_MEMORY: u64 = 256 << 20;

/// The labels every rendered object carries; the pods are selected by the name alone.
fn labels() -> Value {
    json!({"app.kubernetes.io/name": NAME, "app.kubernetes.io/managed-by": "berth"})
}

fn metadata(namespace: &str) -> Value {
    json!({"name": NAME, "namespace": namespace, "labels": labels()})
}

/// The config the deployed server runs with: `config` with the Kubernetes backend, in-cluster
/// credentials (no kubeconfig or context), listening on all addresses at [`PORT`], the keys
/// file from [`API_KEYS_SECRET`], and the TLS files from [`TLS_SECRET`] when `server.tls` is
/// set. The rest (the server's limits, the environments' image, resources, namespace and
/// security) is the user's.
#[must_use]
pub fn deployed_config(config: &BerthConfig) -> BerthConfig {
    let mut out = config.clone();
    out.runner.backend = BackendKind::Kubernetes;
    out.docker = DockerSection::default();
    out.kubernetes.kubeconfig = None;
    out.kubernetes.context = None;
    out.server.listen = format!("0.0.0.0:{PORT}");
    out.server.api_keys_file = Some(PathBuf::from(format!("{API_KEYS_DIR}/{API_KEYS_KEY}")));
    if tls_enabled(config) {
        out.server.tls = ServerTls {
            cert: Some(PathBuf::from(format!("{TLS_DIR}/tls.crt"))),
            key: Some(PathBuf::from(format!("{TLS_DIR}/tls.key"))),
        };
    }
    out
}

fn tls_enabled(config: &BerthConfig) -> bool {
    config.server.tls.cert.is_some()
}

/// The YAML text of the deployed config, as the ConfigMap holds it: unset values left out.
fn config_text(config: &BerthConfig) -> Result<String> {
    let mut value = serde_json::to_value(config).map_err(|e| RunnerError::Config {
        key: "server".into(),
        reason: format!("cannot write the deployed config: {e}"),
    })?;
    drop_nulls(&mut value);
    let text = super::yaml(&[value])?;
    Ok(text.strip_prefix("---\n").unwrap_or(&text).to_owned())
}

fn drop_nulls(value: &mut Value) {
    if let Value::Object(map) = value {
        map.retain(|_, v| !v.is_null());
        map.values_mut().for_each(drop_nulls);
    }
}

/// The objects that deploy `berth serve` in `kubernetes.namespace`, in the order to create
/// them: a ServiceAccount, the Role and RoleBinding of [`rbac::objects`] (exactly the
/// verbs the Kubernetes backend needs) bound to it, a ConfigMap holding
/// [`deployed_config`], a Deployment of one replica of `server.image` (probes on `/health`,
/// requests and limits, the restricted Pod Security Standard), and a ClusterIP Service on
/// [`PORT`]. All are named [`NAME`] and labelled `app.kubernetes.io/name=berth-server`,
/// `app.kubernetes.io/managed-by=berth`.
///
/// The pod's memory limit is 256Mi plus room for the captured output of every running job
/// (`2 × server.max_output_bytes × server.max_concurrent_jobs`); its grace period after
/// SIGTERM is `server.drain_timeout` plus [`CLEANUP_GRACE_SECS`].
///
/// ```
/// use berth_runner::config::BerthConfig;
/// use berth_runner::render::{self, server};
///
/// let config = BerthConfig::from_yaml_str("kubernetes:\n  namespace: agents\n").unwrap();
/// let objects = server::server_objects(&config).unwrap();
/// let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
/// assert_eq!(
///     kinds,
///     ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Deployment", "Service"]
/// );
/// assert!(objects.iter().all(|o| o["metadata"]["namespace"] == "agents"));
/// print!("{}", render::yaml(&objects).unwrap());
/// ```
///
/// # Errors
/// [`RunnerError::Config`] when the deployed config cannot be written as YAML (it always
/// can for a config that loaded).
pub fn server_objects(config: &BerthConfig) -> Result<Vec<Value>> {
    let deployed = deployed_config(config);
    let ns = deployed.kubernetes.namespace.clone();
    let mut rbac_objects = rbac::objects(&deployed, NAME).into_iter();
    let (Some(mut role), Some(mut binding)) = (rbac_objects.next(), rbac_objects.next()) else {
        return Err(RunnerError::Config {
            key: "kubernetes".into(),
            reason: "the Role berth needs was not rendered".into(),
        });
    };
    role["metadata"] = metadata(&ns);
    binding["metadata"] = metadata(&ns);
    binding["roleRef"]["name"] = json!(NAME);
    let text = config_text(&deployed)?;
    Ok(vec![
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(&ns),
            "automountServiceAccountToken": true,
        }),
        role,
        binding,
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(&ns),
            "data": {CONFIG_KEY: text},
        }),
        deployment(&deployed, &ns, &text),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(&ns),
            "spec": {
                "type": "ClusterIP",
                "selector": {"app.kubernetes.io/name": NAME},
                "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
            },
        }),
    ])
}

/// The pod template's annotation holding a digest of the deployed config: the file is
/// mounted by `subPath`, which the kubelet never refreshes, so a changed config changes the
/// template and `kubectl apply` rolls the pod.
pub const CONFIG_DIGEST_ANNOTATION: &str = "berth.dev/config-digest";

/// FNV-1a, 64 bits: stable across Rust versions and platforms, unlike std's hasher.
fn digest(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

fn deployment(config: &BerthConfig, ns: &str, config_text: &str) -> Value {
    let server = &config.server;
    let tls = tls_enabled(config);
    let scheme = if tls { "HTTPS" } else { "HTTP" };
    let probe = |period: u64, failures: u64| {
        json!({
            "httpGet": {"path": "/health", "port": "http", "scheme": scheme},
            "periodSeconds": period,
            "timeoutSeconds": 5,
            "failureThreshold": failures,
        })
    };
    let output_room = server
        .max_output_bytes
        .bytes()
        .saturating_mul(2)
        .saturating_mul(server.max_concurrent_jobs);
    let memory_limit = format_memory_bytes(BASE_MEMORY.saturating_add(output_room));
    let drain = server.drain_timeout.get();
    let grace = drain.as_secs() + u64::from(drain.subsec_nanos() > 0) + CLEANUP_GRACE_SECS;

    let mut mounts = vec![
        json!({"name": "config", "mountPath": CONFIG_PATH, "subPath": CONFIG_KEY, "readOnly": true}),
        json!({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": true}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    let mut volumes = vec![
        json!({"name": "config", "configMap": {"name": NAME}}),
        json!({"name": "api-keys", "secret": {"secretName": API_KEYS_SECRET,
            "items": [{"key": API_KEYS_KEY, "path": API_KEYS_KEY}]}}),
        json!({"name": "tmp", "emptyDir": {}}),
    ];
    if tls {
        mounts.push(json!({"name": "tls", "mountPath": TLS_DIR, "readOnly": true}));
        volumes.push(json!({"name": "tls", "secret": {"secretName": TLS_SECRET}}));
    }
    let seccomp = json!({"type": "RuntimeDefault"});
    let container = json!({
        "name": "berth",
        "image": server.image,
        "command": ["berth"],
        "args": ["serve", "--config", CONFIG_PATH],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        // Whatever berth writes besides its config goes to the writable /tmp.
        "env": [
            {"name": "HOME", "value": "/tmp"},
            {"name": "BERTH_STATE_DIR", "value": "/tmp/berth-state"},
        ],
        "readinessProbe": probe(10, 3),
        "livenessProbe": probe(20, 6),
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": memory_limit},
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": seccomp,
        },
        "volumeMounts": mounts,
    });
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(ns),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
            "template": {
                "metadata": {
                    "labels": labels(),
                    "annotations": {CONFIG_DIGEST_ANNOTATION: digest(config_text)},
                },
                "spec": {
                    "serviceAccountName": NAME,
                    "automountServiceAccountToken": true,
                    "enableServiceLinks": false,
                    "terminationGracePeriodSeconds": grace,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "fsGroup": RUN_AS,
                        "seccompProfile": seccomp,
                    },
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> BerthConfig {
        BerthConfig::from_yaml_str(yaml).expect("config")
    }

    fn of_kind<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
        objects
            .iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {objects:?}"))
    }

    #[test]
    fn every_object_is_named_labelled_and_in_the_namespace() {
        let objects = server_objects(&config("kubernetes:\n  namespace: agents\n")).expect("ok");
        assert_eq!(objects.len(), 6);
        for o in &objects {
            let md = &o["metadata"];
            assert_eq!(md["name"], NAME, "{o}");
            assert_eq!(md["namespace"], "agents", "{o}");
            assert_eq!(md["labels"], labels(), "{o}");
        }
        let binding = of_kind(&objects, "RoleBinding");
        assert_eq!(binding["roleRef"]["name"], NAME);
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": NAME, "namespace": "agents"}])
        );
        let service = of_kind(&objects, "Service");
        assert_eq!(service["spec"]["type"], "ClusterIP");
        assert_eq!(service["spec"]["ports"][0]["port"], 8080);
        assert_eq!(
            service["spec"]["selector"],
            of_kind(&objects, "Deployment")["spec"]["selector"]["matchLabels"]
        );
    }

    #[test]
    fn the_role_holds_exactly_the_backends_verbs() {
        for yaml in ["{}", "kubernetes:\n  create_pvc: true\n  pvc_name: work\n"] {
            let c = config(yaml);
            let objects = server_objects(&c).expect("ok");
            let role = of_kind(&objects, "Role");
            assert_eq!(role["rules"], rbac::objects(&c, NAME)[0]["rules"], "{yaml}");
            let mut granted: Vec<String> = role["rules"]
                .as_array()
                .expect("rules")
                .iter()
                .flat_map(|r| {
                    let resource = r["resources"][0].as_str().unwrap_or("").to_owned();
                    r["verbs"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(move |v| format!("{} {resource}", v.as_str().unwrap_or("")))
                })
                .collect();
            let mut wanted: Vec<String> = rbac::required(&c)
                .iter()
                .map(rbac::Permission::name)
                .collect();
            granted.sort();
            wanted.sort();
            assert_eq!(granted, wanted, "{yaml}");
        }
    }

    #[test]
    fn the_pod_is_restricted_probed_and_bounded() {
        let objects = server_objects(&config(
            "server:\n  drain_timeout: 2m\n  image: registry.example/berth:1.2\n",
        ))
        .expect("ok");
        let deployment = of_kind(&objects, "Deployment");
        assert_eq!(deployment["spec"]["replicas"], 1);
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], NAME);
        assert_eq!(pod["automountServiceAccountToken"], true);
        assert_eq!(pod["terminationGracePeriodSeconds"], 150);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "registry.example/berth:1.2");
        assert_eq!(c["args"], json!(["serve", "--config", CONFIG_PATH]));
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["runAsUser"], 65_532);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(c[probe]["httpGet"]["path"], "/health", "{probe}");
            assert_eq!(c[probe]["httpGet"]["port"], "http", "{probe}");
            assert_eq!(c[probe]["httpGet"]["scheme"], "HTTP", "{probe}");
        }
        assert_eq!(c["ports"][0]["containerPort"], 8080);
        // Defaults: 4Mi of output per stream, 4 jobs at once.
        assert_eq!(c["resources"]["limits"]["memory"], "288Mi");
        assert_eq!(c["resources"]["requests"]["memory"], "128Mi");
        let tmp = c["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["mountPath"] == "/tmp")
            .expect("a /tmp mount");
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == tmp["name"])
            .expect("its volume");
        assert_eq!(volume["emptyDir"], json!({}));
        let keys = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == "api-keys")
            .expect("keys volume");
        assert_eq!(keys["secret"]["secretName"], API_KEYS_SECRET);
        assert_eq!(keys["secret"]["items"][0]["key"], API_KEYS_KEY);
    }

    #[test]
    fn the_config_map_holds_the_deployed_config() {
        let c = config(
            "runner:\n  image: busybox:1.36\nkubernetes:\n  namespace: agents\n  kubeconfig: /home/me/.kube/config\nserver:\n  max_concurrent_jobs: 2\n",
        );
        let objects = server_objects(&c).expect("ok");
        let text = of_kind(&objects, "ConfigMap")["data"]["config.yaml"]
            .as_str()
            .expect("config text")
            .to_owned();
        let read = BerthConfig::from_yaml_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(read, deployed_config(&c), "{text}");
        assert_eq!(read.runner.backend, BackendKind::Kubernetes);
        assert_eq!(read.kubernetes.namespace, "agents");
        assert_eq!(read.kubernetes.kubeconfig, None);
        assert_eq!(read.server.listen, "0.0.0.0:8080");
        assert_eq!(read.server.max_concurrent_jobs, 2);
        assert_eq!(read.runner.image.as_deref(), Some("busybox:1.36"));
        assert_eq!(
            read.server.api_keys_file,
            Some(PathBuf::from("/etc/berth/api-keys/keys"))
        );
        read.validate("configmap")
            .expect("the deployed config is valid");
        assert!(!text.contains("null"), "{text}");
    }

    #[test]
    fn a_changed_config_changes_the_pod_template() {
        let annotation = |yaml: &str| {
            let objects = server_objects(&config(yaml)).expect("ok");
            of_kind(&objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
                [CONFIG_DIGEST_ANNOTATION]
                .as_str()
                .expect("a digest")
                .to_owned()
        };
        let plain = annotation("{}");
        assert_eq!(plain.len(), 16, "{plain}");
        assert_eq!(annotation("{}"), plain);
        assert_ne!(annotation("server:\n  max_concurrent_jobs: 2\n"), plain);
        assert_eq!(digest(""), "cbf29ce484222325");
        assert_eq!(digest("a"), "af63dc4c8601ec8c");
    }

    #[test]
    fn tls_mounts_its_secret_and_probes_https() {
        let c = config("server:\n  tls:\n    cert: /home/me/cert.pem\n    key: /home/me/key.pem\n");
        let objects = server_objects(&c).expect("ok");
        let pod = &of_kind(&objects, "Deployment")["spec"]["template"]["spec"];
        assert_eq!(
            pod["containers"][0]["readinessProbe"]["httpGet"]["scheme"],
            "HTTPS"
        );
        assert!(pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v["secret"]["secretName"] == TLS_SECRET));
        let deployed = deployed_config(&c);
        assert_eq!(
            deployed.server.tls.cert,
            Some(PathBuf::from("/etc/berth/tls/tls.crt"))
        );
        assert_eq!(
            deployed.server.tls.key,
            Some(PathBuf::from("/etc/berth/tls/tls.key"))
        );
    }
}
