//! A pod's containers in Docker: creating them (after the image is on the node, retrying with
//! the kubelet's waiting reasons and events), starting them, their environment, and waiting
//! for one to exit (an out-of-memory kill ends the whole container).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, StartContainerOptions};
use futures_util::StreamExt;
use serde_json::Value;

use super::status::{ContainerState, ContainerStatus};
use super::{Stop, Worker, POD_PIDS_LIMIT, POD_UID_LABEL};
use crate::meta::{self, json_str};
use crate::store::Res;
use crate::NODE_NAME;

impl Worker {
    /// Creates every container of the pod, each once its image is on the node, retrying
    /// (with the kubelet's waiting reason, events and back-off) while the image is missing or
    /// the container's configuration is refused.
    pub(super) async fn create_containers(
        &self,
        pod: &Value,
        containers: &[Value],
        statuses: &mut [ContainerStatus],
    ) -> Result<(), Stop> {
        for (i, c) in containers.iter().enumerate() {
            let mut attempt = 0_u32;
            loop {
                let created = match self.pull(c).await {
                    Ok(()) => self.create_container(pod, c, 0).await,
                    Err(e) => Err(e),
                };
                match created {
                    Ok((id, image_id)) => {
                        let msg = format!("Created container: {}", statuses[i].name);
                        self.event("Normal", "Created", &msg, "kubelet");
                        statuses[i].id = Some(id);
                        statuses[i].image_id = image_id;
                        break;
                    }
                    Err(CreateError::NeverPull(message)) => {
                        self.event("Warning", "ErrImageNeverPull", &message, "kubelet");
                        self.event("Warning", "Failed", "Error: ErrImageNeverPull", "kubelet");
                        self.set_waiting(statuses, i, "ErrImageNeverPull", message)?;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Err(CreateError::ImageMissing(message)) => {
                        self.event("Warning", "Failed", &message, "kubelet");
                        self.event("Warning", "Failed", "Error: ErrImagePull", "kubelet");
                        self.set_waiting(statuses, i, "ErrImagePull", message)?;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let msg = format!("Back-off pulling image \"{}\"", statuses[i].image);
                        self.set_waiting(statuses, i, "ImagePullBackOff", msg.clone())?;
                        self.event("Normal", "BackOff", &msg, "kubelet");
                        self.event("Warning", "Failed", "Error: ImagePullBackOff", "kubelet");
                        let backoff = 2_u64.saturating_pow(attempt.min(4));
                        attempt += 1;
                        tokio::time::sleep(Duration::from_secs(backoff)).await;
                    }
                    Err(CreateError::Config(message)) => {
                        self.event("Warning", "Failed", &format!("Error: {message}"), "kubelet");
                        self.set_waiting(statuses, i, "CreateContainerConfigError", message)?;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Err(CreateError::Mount(message)) => {
                        // The kubelet keeps the pod ContainerCreating and retries the mount.
                        self.event("Warning", "FailedMount", &message, "kubelet");
                        self.set_waiting(statuses, i, "ContainerCreating", String::new())?;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Err(CreateError::Other(message)) => {
                        self.set_waiting(statuses, i, "CreateContainerError", message)?;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
                if self
                    .pod()
                    .is_none_or(|p| !p["metadata"]["deletionTimestamp"].is_null())
                {
                    return Err(Stop::Deleted);
                }
            }
        }
        Ok(())
    }

    /// Starts the created containers and records each one's state; returns the pod IP (the
    /// first container's address).
    pub(super) async fn start_containers(
        &self,
        statuses: &mut [ContainerStatus],
    ) -> Option<String> {
        let mut ip = None;
        for info in statuses.iter_mut() {
            let id = info.id.clone().unwrap_or_default();
            let started = self
                .inner
                .docker
                .start_container(&id, None::<StartContainerOptions>)
                .await;
            let inspect = self.inner.docker.inspect_container(&id, None).await.ok();
            let state = inspect.as_ref().and_then(|i| i.state.clone());
            let started_at = state
                .as_ref()
                .and_then(|s| s.started_at.clone())
                .map_or_else(meta::now_rfc3339, |t| trim_docker_time(&t));
            if ip.is_none() {
                ip = inspect
                    .as_ref()
                    .and_then(|i| i.network_settings.as_ref())
                    .and_then(|n| n.networks.as_ref())
                    .and_then(|n| n.values().find_map(|e| e.ip_address.clone()))
                    .filter(|i| !i.is_empty());
            }
            info.state = match started {
                Ok(()) => {
                    let msg = format!("Started container {}", info.name);
                    self.event("Normal", "Started", &msg, "kubelet");
                    ContainerState::Running { started_at }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "container start failed");
                    ContainerState::Terminated {
                        exit_code: 128,
                        reason: "StartError".to_owned(),
                        started_at: meta::rfc3339(0),
                        finished_at: meta::now_rfc3339(),
                    }
                }
            };
        }
        ip
    }
    /// The keys of the Secret or ConfigMap `name` as text, `None` when it is missing and
    /// `optional`; missing and required is the kubelet's CreateContainerConfigError with its
    /// message (`secret "x" not found`).
    fn object_keys(
        &self,
        res: Res,
        name: &str,
        optional: bool,
    ) -> Result<Option<BTreeMap<String, String>>, CreateError> {
        match self.inner.store.get(res, &self.ns, name) {
            Some(obj) => Ok(Some(
                super::volumes::object_data(&obj, res, false)
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect(),
            )),
            None if optional => Ok(None),
            None => {
                let kind = if res == Res::Secret {
                    "secret"
                } else {
                    "configmap"
                };
                Err(CreateError::Config(format!("{kind} \"{name}\" not found")))
            }
        }
    }

    /// The container's environment, as the kubelet makes it: `envFrom` first (each key with
    /// the prefix; invalid names skipped), then `env` values, `fieldRef`s and
    /// `secretKeyRef`/`configMapKeyRef`s, later ones winning.
    fn env(&self, pod: &Value, container: &Value) -> Result<Vec<String>, CreateError> {
        let mut vars: Vec<(String, String)> = Vec::new();
        let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
            vars.retain(|(n, _)| *n != k);
            vars.push((k, v));
        };
        for from in container["envFrom"].as_array().cloned().unwrap_or_default() {
            let (res, r) = if from["secretRef"].is_object() {
                (Res::Secret, &from["secretRef"])
            } else {
                (Res::ConfigMap, &from["configMapRef"])
            };
            let optional = r["optional"].as_bool() == Some(true);
            let prefix = json_str(&from["prefix"]);
            if let Some(keys) = self.object_keys(res, json_str(&r["name"]), optional)? {
                for (k, v) in keys {
                    let name = format!("{prefix}{k}");
                    let valid = !name.is_empty()
                        && !name.starts_with(|c: char| c.is_ascii_digit())
                        && name
                            .bytes()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'));
                    if valid {
                        set(&mut vars, name, v);
                    }
                }
            }
        }
        for e in container["env"].as_array().cloned().unwrap_or_default() {
            let name = json_str(&e["name"]);
            let key_ref = [
                (Res::Secret, "Secret", &e["valueFrom"]["secretKeyRef"]),
                (
                    Res::ConfigMap,
                    "ConfigMap",
                    &e["valueFrom"]["configMapKeyRef"],
                ),
            ]
            .into_iter()
            .find(|(_, _, r)| r.is_object());
            if let Some((res, kind, r)) = key_ref {
                let optional = r["optional"].as_bool() == Some(true);
                let (object, key) = (json_str(&r["name"]), json_str(&r["key"]));
                let Some(keys) = self.object_keys(res, object, optional)? else {
                    continue;
                };
                match keys.get(key) {
                    Some(v) => set(&mut vars, name.to_owned(), v.clone()),
                    None if optional => {}
                    None => {
                        return Err(CreateError::Config(format!(
                            "couldn't find key {key} in {kind} {}/{object}",
                            self.ns
                        )))
                    }
                }
                continue;
            }
            let value = if let Some(v) = e["value"].as_str() {
                v.to_owned()
            } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match path {
                    "metadata.name" => self.name.clone(),
                    "metadata.namespace" => self.ns.clone(),
                    "metadata.uid" => self.uid.clone(),
                    "spec.nodeName" => NODE_NAME.to_owned(),
                    "spec.serviceAccountName" => {
                        json_str(&pod["spec"]["serviceAccountName"]).to_owned()
                    }
                    "status.hostIP" => "127.0.0.1".to_owned(),
                    other if other.starts_with("metadata.labels['") => {
                        let key = other
                            .trim_start_matches("metadata.labels['")
                            .trim_end_matches("']");
                        json_str(&pod["metadata"]["labels"][key]).to_owned()
                    }
                    other => {
                        return Err(CreateError::Config(format!(
                            "fieldRef {other:?} is not simulated"
                        )))
                    }
                }
            } else {
                String::new()
            };
            set(&mut vars, name.to_owned(), value);
        }
        Ok(vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
    }

    /// Creates (does not start) the Docker container for `c`, instance `attempt` (0 first, the
    /// restart count later); returns the container id and the image id.
    pub(super) async fn create_container(
        &self,
        pod: &Value,
        c: &Value,
        attempt: i64,
    ) -> Result<(String, String), CreateError> {
        let image = json_str(&c["image"]).to_owned();
        let (image_id, image_user) = match self.inner.docker.inspect_image(&image).await {
            Ok(i) => (
                i.id.unwrap_or_default(),
                i.config.and_then(|c| c.user).unwrap_or_default(),
            ),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                return Err(CreateError::ImageMissing(format!(
                    "Failed to pull image \"{image}\": the image is not present on the node and the simulator never pulls"
                )))
            }
            Err(e) => return Err(CreateError::Other(format!("inspecting image {image}: {e}"))),
        };
        let env = self.env(pod, c)?;
        let mounts = self.mounts(pod, c).await?;
        let sc = &c["securityContext"];
        let psc = &pod["spec"]["securityContext"];
        let uid = sc["runAsUser"]
            .as_i64()
            .or_else(|| psc["runAsUser"].as_i64());
        let gid = sc["runAsGroup"]
            .as_i64()
            .or_else(|| psc["runAsGroup"].as_i64());
        let user = match (uid, gid) {
            (Some(u), Some(g)) => Some(format!("{u}:{g}")),
            (Some(u), None) => Some(u.to_string()),
            _ => None,
        };
        let non_root = sc["runAsNonRoot"]
            .as_bool()
            .or_else(|| psc["runAsNonRoot"].as_bool())
            == Some(true);
        if non_root {
            let image_uid = image_user.split(':').next().unwrap_or("");
            let root = match uid {
                Some(u) => u == 0,
                None => image_uid.is_empty() || image_uid == "0" || image_uid == "root",
            };
            if root {
                return Err(CreateError::Config(format!(
                    "container has runAsNonRoot and image will run as root (pod: \"{}_{}({})\", container: {})",
                    self.name, self.ns, self.uid, json_str(&c["name"])
                )));
            }
        }
        let caps = |k: &str| {
            sc["capabilities"][k].as_array().map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
        };
        let mut security_opt = Vec::new();
        if sc["allowPrivilegeEscalation"].as_bool() == Some(false) {
            security_opt.push("no-new-privileges:true".to_owned());
        }
        let mut groups: Vec<String> = psc["supplementalGroups"]
            .as_array()
            .map(|g| {
                g.iter()
                    .filter_map(Value::as_i64)
                    .map(|g| g.to_string())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(g) = psc["fsGroup"].as_i64() {
            groups.push(g.to_string());
        }
        let limits = &c["resources"]["limits"];
        #[allow(clippy::cast_possible_truncation)]
        let memory = meta::parse_quantity(&limits["memory"]).map(|m| m as i64);
        #[allow(clippy::cast_possible_truncation)]
        let nano_cpus = meta::parse_quantity(&limits["cpu"]).map(|c| (c * 1e9) as i64);
        let strings = |v: &Value| {
            v.as_array().map(|a| {
                a.iter()
                    .map(|x| x.as_str().unwrap_or("").to_owned())
                    .collect::<Vec<_>>()
            })
        };
        let cname = json_str(&c["name"]).to_owned();
        let mut labels = self.inner.docker_labels(Some(&pod["metadata"]["labels"]));
        labels.insert(POD_UID_LABEL.to_owned(), self.uid.clone());
        labels.insert("io.kubernetes.pod.name".to_owned(), self.name.clone());
        labels.insert("io.kubernetes.pod.namespace".to_owned(), self.ns.clone());
        labels.insert("io.kubernetes.container.name".to_owned(), cname.clone());
        let hostname: String = self.name.chars().take(63).collect();
        // As on a node, the container's command is its PID 1 and reaps nothing, unless the pod
        // shares one process namespace: then the sandbox's pause process is PID 1 and reaps
        // orphans, which Docker's init (tini) stands in for here.
        let shared_pids = pod["spec"]["shareProcessNamespace"].as_bool() == Some(true);
        let body = ContainerCreateBody {
            image: Some(image),
            entrypoint: strings(&c["command"]),
            cmd: strings(&c["args"]),
            env: Some(env),
            working_dir: c["workingDir"].as_str().map(str::to_owned),
            user,
            labels: Some(labels),
            hostname: Some(hostname),
            tty: Some(c["tty"].as_bool().unwrap_or(false)),
            open_stdin: Some(c["stdin"].as_bool().unwrap_or(false)),
            stop_timeout: Some(1),
            host_config: Some(HostConfig {
                init: Some(shared_pids),
                mounts: Some(mounts),
                group_add: (!groups.is_empty()).then_some(groups),
                memory,
                // No swap, as on a kubelet: a container over its limit is OOM-killed.
                memory_swap: memory,
                nano_cpus,
                // A kubelet's podPidsLimit: a fork bomb in one pod cannot exhaust the node.
                pids_limit: Some(POD_PIDS_LIMIT),
                cap_add: caps("add"),
                cap_drop: caps("drop"),
                privileged: sc["privileged"].as_bool(),
                readonly_rootfs: sc["readOnlyRootFilesystem"].as_bool(),
                security_opt: (!security_opt.is_empty()).then_some(security_opt),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut name = format!(
            "k8s-sim-{}-{}-{}-{}",
            self.inner.id,
            self.name,
            &self.uid[..8.min(self.uid.len())],
            cname
        );
        if attempt > 0 {
            name = format!("{name}-{attempt}");
        }
        let created = self
            .inner
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| CreateError::Other(format!("creating the container: {e}")))?;
        Ok((created.id, image_id))
    }
}

/// Why a container could not be created, by the waiting reason the kubelet reports.
pub(super) enum CreateError {
    /// `imagePullPolicy: Never` and the image is not on the node.
    NeverPull(String),
    ImageMissing(String),
    Config(String),
    /// A volume cannot be set up (a missing Secret or ConfigMap): the pod stays
    /// ContainerCreating with a FailedMount event.
    Mount(String),
    Other(String),
}

/// Waits for container `id` to exit, then yields `i`. Like a kubelet on cgroup v2
/// (memory.oom.group, the default since 1.28), an out-of-memory kill of any process in the
/// container ends the whole container: Docker reports the kill as an `oom` event, the container is killed, and its
/// state then says OOMKilled (which the pod status reports as the reason).
pub(super) async fn wait_exit(docker: bollard::Docker, id: String, i: usize) -> usize {
    let mut wait = docker.wait_container(&id, None);
    let exited = async { while wait.next().await.is_some() {} };
    let oom = async {
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("event".to_owned(), vec!["oom".to_owned()]),
            ("container".to_owned(), vec![id.clone()]),
        ]);
        let mut events = docker.events(Some(bollard::query_parameters::EventsOptions {
            filters: Some(filters),
            ..Default::default()
        }));
        if let Some(Ok(_)) = events.next().await {
            let _ = docker
                .kill_container(&id, None::<bollard::query_parameters::KillContainerOptions>)
                .await;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = exited => {}
        () = oom => {}
    }
    i
}

/// Docker's nanosecond timestamps, cut to the API's second precision.
pub(super) fn trim_docker_time(t: &str) -> String {
    match t.get(..19) {
        Some(prefix) if t.len() > 19 => format!("{prefix}Z"),
        _ => t.to_owned(),
    }
}
