//! The node: scheduling checks, pod workers running pods as Docker containers, claims as
//! Docker volumes, and `pods/log`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, ListVolumesOptions, LogsOptions,
    RemoveContainerOptions, RemoveVolumeOptions, StartContainerOptions,
};
use bytes::Bytes;
use futures_util::StreamExt;
use hyper::Response;
use serde_json::{json, Value};

use crate::api::{self, Body, Params};
use crate::errors::ApiError;
use crate::meta;
use crate::store::Res;
use crate::{Inner, INSTANCE_LABEL, NODE_NAME};

/// The pids limit of every pod container, as a kubelet's `podPidsLimit` sets it (Kubernetes
/// has no per-pod field for it).
pub(crate) const POD_PIDS_LIMIT: i64 = 512;

/// The Docker label naming the pod uid a container or emptyDir volume belongs to.
const POD_UID_LABEL: &str = "berth.dev/k8s-sim-pod-uid";

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

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
            let image = s(&c["image"]).to_owned();
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

fn validate_pod_spec(spec: &Value, res: Res, name: &str, path: &str) -> Result<(), ApiError> {
    let containers = spec["containers"].as_array().filter(|c| !c.is_empty());
    let Some(containers) = containers else {
        return Err(ApiError::invalid(
            res,
            name,
            &format!("{path}.containers"),
            "FieldValueRequired",
            "Required value",
        ));
    };
    for (i, c) in containers.iter().enumerate() {
        if s(&c["name"]).is_empty() {
            return Err(ApiError::invalid(
                res,
                name,
                &format!("{path}.containers[{i}].name"),
                "FieldValueRequired",
                "Required value",
            ));
        }
        if s(&c["image"]).is_empty() {
            return Err(ApiError::invalid(
                res,
                name,
                &format!("{path}.containers[{i}].image"),
                "FieldValueRequired",
                "Required value",
            ));
        }
    }
    Ok(())
}

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
    let account = match s(&spec["serviceAccountName"]) {
        "" => match s(&spec["serviceAccount"]) {
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
            let effect = s(&t["effect"]);
            let key_matches =
                s(&t["key"]) == key || (s(&t["key"]).is_empty() && s(&t["operator"]) == "Exists");
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

/// Validates a claim and binds it at once.
pub(crate) fn default_pvc(mut pvc: Value, name: &str) -> Result<Value, ApiError> {
    let storage = pvc["spec"]["resources"]["requests"]["storage"].clone();
    if storage.is_null() {
        return Err(ApiError::invalid(
            Res::Pvc,
            name,
            "spec.resources[storage]",
            "FieldValueRequired",
            "Required value",
        ));
    }
    let modes = pvc["spec"]["accessModes"].clone();
    if modes.as_array().is_none_or(Vec::is_empty) {
        return Err(ApiError::invalid(
            Res::Pvc,
            name,
            "spec.accessModes",
            "FieldValueRequired",
            "Required value: at least 1 access mode is required",
        ));
    }
    if pvc["spec"]["volumeMode"].is_null() {
        pvc["spec"]["volumeMode"] = json!("Filesystem");
    }
    if pvc["spec"]["volumeName"].is_null() {
        pvc["spec"]["volumeName"] = json!(format!("pvc-{}", meta::new_uid()));
    }
    pvc["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] = json!("yes");
    pvc["status"] = json!({
        "phase": "Bound",
        "accessModes": modes,
        "capacity": {"storage": storage},
    });
    Ok(pvc)
}

/// Leaves a new claim Pending, as a claim waiting for its provisioner is.
pub(crate) fn unbind(pvc: &mut Value) {
    if let Some(a) = pvc["metadata"]["annotations"].as_object_mut() {
        a.remove("pv.kubernetes.io/bind-completed");
    }
    pvc["status"] = json!({"phase": "Pending"});
}

/// Binds a Pending claim after `delay`, with the provisioner's events.
pub(crate) fn bind_later(inner: &Arc<Inner>, pvc: &Value, delay: Duration) {
    let waiting = "Waiting for a volume to be created either by the external provisioner 'berth.dev/k8s-sim' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.";
    record_event(
        inner,
        pvc,
        "Normal",
        "ExternalProvisioning",
        waiting,
        "persistentvolume-controller",
    );
    let inner = inner.clone();
    let (ns, name, uid) = (
        s(&pvc["metadata"]["namespace"]).to_owned(),
        s(&pvc["metadata"]["name"]).to_owned(),
        pvc["metadata"]["uid"].clone(),
    );
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let bound = inner.store.update(Res::Pvc, &ns, &name, None, |c| {
            if c["metadata"]["uid"] != uid {
                return Err(ApiError::not_found(Res::Pvc, &name));
            }
            c["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] = json!("yes");
            c["status"] = json!({
                "phase": "Bound",
                "accessModes": c["spec"]["accessModes"],
                "capacity": {"storage": c["spec"]["resources"]["requests"]["storage"]},
            });
            Ok(())
        });
        if let Ok(claim) = bound {
            let msg = format!(
                "Successfully provisioned volume {}",
                s(&claim["spec"]["volumeName"])
            );
            record_event(
                &inner,
                &claim,
                "Normal",
                "ProvisioningSucceeded",
                &msg,
                "berth.dev/k8s-sim",
            );
        }
    });
}

fn claim_volume(inner: &Inner, pvc: &Value) -> String {
    format!("k8s-sim-{}-{}", inner.id, s(&pvc["spec"]["volumeName"]))
}

/// Creates the Docker volume behind a claim.
pub(crate) async fn create_claim_volume(inner: &Inner, pvc: &Value) -> Result<(), ApiError> {
    let mut labels = inner.docker_labels(Some(&pvc["metadata"]["labels"]));
    labels.insert(
        "berth.dev/k8s-sim-claim".to_owned(),
        s(&pvc["metadata"]["name"]).to_owned(),
    );
    inner
        .docker
        .create_volume(VolumeCreateRequest {
            name: Some(claim_volume(inner, pvc)),
            labels: Some(labels),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|e| ApiError::internal(format!("creating the volume of the claim: {e}")))
}

/// Removes a deleted claim's volume once no container uses it any more.
pub(crate) fn remove_claim_volume(inner: &Arc<Inner>, pvc: &Value) {
    let name = claim_volume(inner, pvc);
    let inner = inner.clone();
    tokio::spawn(async move {
        for _ in 0..600 {
            match inner
                .docker
                .remove_volume(&name, Some(RemoveVolumeOptions { force: false }))
                .await
            {
                Ok(()) => return,
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => return,
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    });
}

/// Records a core/v1 Event about `obj` (a pod or a job).
pub(crate) fn record_event(
    inner: &Inner,
    obj: &Value,
    typ: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    let md = &obj["metadata"];
    let ns = s(&md["namespace"]);
    let now = meta::now_rfc3339();
    let event = json!({
        "metadata": {"name": format!("{}.{}", s(&md["name"]), meta::random_suffix(10))},
        "involvedObject": {
            "kind": obj["kind"], "apiVersion": obj["apiVersion"], "namespace": ns,
            "name": md["name"], "uid": md["uid"], "resourceVersion": md["resourceVersion"],
        },
        "type": typ, "reason": reason, "message": message,
        "source": {"component": component, "host": NODE_NAME},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        "reportingComponent": component, "reportingInstance": NODE_NAME,
    });
    let _ = inner.store.create(Res::Event, ns, event);
}

/// Marks a pod for deletion; its worker removes the containers and then the object.
pub(crate) fn delete_pod(inner: &Arc<Inner>, ns: &str, name: &str) -> Result<Value, ApiError> {
    let obj = inner.store.update(Res::Pod, ns, name, None, |pod| {
        if pod["metadata"]["deletionTimestamp"].is_null() {
            pod["metadata"]["deletionTimestamp"] = json!(meta::now_rfc3339());
            pod["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        }
        Ok(())
    })?;
    ensure_workers(inner);
    Ok(obj)
}

/// Starts a worker for every pod that has none.
pub(crate) fn ensure_workers(inner: &Arc<Inner>) {
    if inner.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let (pods, _) = inner.store.list(Res::Pod, None);
    let mut running = inner
        .kubelets
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for pod in pods {
        let uid = s(&pod["metadata"]["uid"]).to_owned();
        if running.insert(uid.clone()) {
            let worker = Worker {
                inner: inner.clone(),
                ns: s(&pod["metadata"]["namespace"]).to_owned(),
                name: s(&pod["metadata"]["name"]).to_owned(),
                uid,
            };
            tokio::spawn(worker.run());
        }
    }
}

#[derive(Debug, Clone)]
enum CState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: String,
    },
    Terminated {
        exit_code: i64,
        reason: String,
        started_at: String,
        finished_at: String,
    },
}

#[derive(Debug, Clone)]
struct CInfo {
    name: String,
    image: String,
    id: Option<String>,
    image_id: String,
    state: CState,
    restarts: i64,
    /// The previous instance's terminated state (with its containerID), after a restart.
    last_state: Option<Value>,
}

impl CInfo {
    fn to_json(&self) -> Value {
        let state = match &self.state {
            CState::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                json!({"waiting": w})
            }
            CState::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            CState::Terminated {
                exit_code,
                reason,
                started_at,
                finished_at,
            } => json!({"terminated": {
                "exitCode": exit_code, "reason": reason,
                "startedAt": started_at, "finishedAt": finished_at,
                "containerID": self.id.as_ref().map(|i| format!("docker://{i}")),
            }}),
        };
        let running = matches!(self.state, CState::Running { .. });
        let mut v = json!({
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "state": state,
            "lastState": self.last_state.clone().unwrap_or_else(|| json!({})),
            "ready": running,
            "restartCount": self.restarts,
            "started": running,
        });
        if let Some(id) = &self.id {
            v["containerID"] = json!(format!("docker://{id}"));
        }
        v
    }
}

fn condition(
    old: &Value,
    typ: &str,
    status: bool,
    reason: Option<&str>,
    msg: Option<&str>,
) -> Value {
    let status = if status { "True" } else { "False" };
    let previous = old["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == typ).cloned());
    let since = previous.filter(|p| p["status"] == status).map_or_else(
        || json!(meta::now_rfc3339()),
        |p| p["lastTransitionTime"].clone(),
    );
    let mut c = json!({"type": typ, "status": status, "lastProbeTime": null,
        "lastTransitionTime": since});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    if let Some(m) = msg {
        c["message"] = json!(m);
    }
    c
}

struct Worker {
    inner: Arc<Inner>,
    ns: String,
    name: String,
    uid: String,
}

/// Why a pod worker stopped early.
enum Stop {
    /// The pod is gone or being deleted.
    Deleted,
}

impl Worker {
    async fn run(self) {
        let deleted = self.wait_deleted();
        tokio::select! {
            () = deleted => {}
            _ = self.lifecycle() => { self.wait_deleted().await; }
            () = self.deadline() => {
                self.fail_deadline().await;
                self.wait_deleted().await;
            }
        }
        self.cleanup().await;
        // A container create that was in flight when the worker stopped may land just after
        // the first sweep: sweep once more a little later, without holding up the deletion.
        let late = Worker {
            inner: self.inner.clone(),
            ns: self.ns.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
        };
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            late.cleanup().await;
        });
        let still_ours = self
            .inner
            .store
            .get(Res::Pod, &self.ns, &self.name)
            .is_some_and(|p| p["metadata"]["uid"] == self.uid.as_str());
        if still_ours {
            self.inner.store.remove(Res::Pod, &self.ns, &self.name);
        }
        self.inner
            .kubelets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.uid);
    }

    /// Returns when the pod's `activeDeadlineSeconds` (counted from its startTime) has passed;
    /// never when it has none.
    async fn deadline(&self) {
        loop {
            let pod = self.pod();
            let deadline = pod.as_ref().and_then(|p| {
                let secs = p["spec"]["activeDeadlineSeconds"].as_i64()?;
                let start = p["status"]["startTime"]
                    .as_str()
                    .and_then(meta::parse_rfc3339)?;
                Some(start + secs)
            });
            let terminal = pod
                .as_ref()
                .is_some_and(|p| matches!(s(&p["status"]["phase"]), "Succeeded" | "Failed"));
            match deadline {
                Some(d) if !terminal => {
                    let left = d - meta::now_secs();
                    if left <= 0 {
                        return;
                    }
                    let left = u64::try_from(left).unwrap_or(1).min(1);
                    tokio::time::sleep(Duration::from_secs(left)).await;
                }
                _ => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// Kills the pod's containers and fails it with reason DeadlineExceeded, as a kubelet does.
    async fn fail_deadline(&self) {
        let filter = HashMap::from([(
            "label".to_owned(),
            vec![format!("{POD_UID_LABEL}={}", self.uid)],
        )]);
        if let Ok(list) = self
            .inner
            .docker
            .list_containers(Some(ListContainersOptions {
                all: false,
                filters: Some(filter),
                ..Default::default()
            }))
            .await
        {
            for c in list {
                if let Some(id) = c.id {
                    let _ = self
                        .inner
                        .docker
                        .kill_container(
                            &id,
                            None::<bollard::query_parameters::KillContainerOptions>,
                        )
                        .await;
                }
            }
        }
        let message = "Pod was active on the node longer than the specified deadline";
        let _ = self.update(|p| {
            let now = meta::now_rfc3339();
            let st = &mut p["status"];
            st["phase"] = json!("Failed");
            st["reason"] = json!("DeadlineExceeded");
            st["message"] = json!(message);
            if let Some(cs) = st["containerStatuses"].as_array_mut() {
                for c in cs {
                    let started = c["state"]["running"]["startedAt"].clone();
                    if !started.is_null() {
                        c["state"] = json!({"terminated": {"exitCode": 137, "reason": "Error",
                            "startedAt": started, "finishedAt": now,
                            "containerID": c["containerID"]}});
                        c["ready"] = json!(false);
                        c["started"] = json!(false);
                    }
                }
            }
            if let Some(conds) = st["conditions"].as_array_mut() {
                for c in conds {
                    if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                        c["status"] = json!("False");
                        c["reason"] = json!("PodFailed");
                        c["lastTransitionTime"] = json!(now);
                    }
                }
            }
        });
        self.event("Warning", "DeadlineExceeded", message, "kubelet");
    }

    fn pod(&self) -> Option<Value> {
        self.inner
            .store
            .get(Res::Pod, &self.ns, &self.name)
            .filter(|p| p["metadata"]["uid"] == self.uid.as_str())
    }

    async fn wait_deleted(&self) {
        let mut changes = self.inner.store.subscribe_changes();
        loop {
            match self.pod() {
                None => return,
                Some(p) if !p["metadata"]["deletionTimestamp"].is_null() => return,
                Some(_) => {}
            }
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    fn event(&self, typ: &str, reason: &str, message: &str, component: &str) {
        if let Some(pod) = self.pod() {
            record_event(&self.inner, &pod, typ, reason, message, component);
        }
    }

    fn update(&self, f: impl FnOnce(&mut Value)) -> Result<Value, Stop> {
        if self.pod().is_none() {
            return Err(Stop::Deleted);
        }
        self.inner
            .store
            .update(Res::Pod, &self.ns, &self.name, None, |p| {
                f(p);
                Ok(())
            })
            .map_err(|_| Stop::Deleted)
    }

    /// Writes the pod status for containers `infos`.
    fn set_status(&self, infos: &[CInfo], ip: Option<&str>) -> Result<Value, Stop> {
        self.update(|pod| {
            let old = pod["status"].clone();
            let all_running = infos
                .iter()
                .all(|i| matches!(i.state, CState::Running { .. }));
            let all_done = infos
                .iter()
                .all(|i| matches!(i.state, CState::Terminated { .. }));
            let any_started = infos
                .iter()
                .any(|i| i.restarts > 0 || !matches!(i.state, CState::Waiting { .. }));
            let phase = if all_done {
                let ok = infos
                    .iter()
                    .all(|i| matches!(i.state, CState::Terminated { exit_code: 0, .. }));
                if ok {
                    "Succeeded"
                } else {
                    "Failed"
                }
            } else if any_started {
                "Running"
            } else {
                "Pending"
            };
            let unready: Vec<&str> = infos
                .iter()
                .filter(|i| !matches!(i.state, CState::Running { .. }))
                .map(|i| i.name.as_str())
                .collect();
            let (reason, msg) = if all_done {
                (Some("PodCompleted"), None)
            } else if all_running {
                (None, None)
            } else {
                (
                    Some("ContainersNotReady"),
                    Some(format!(
                        "containers with unready status: [{}]",
                        unready.join(" ")
                    )),
                )
            };
            let conditions = vec![
                condition(&old, "PodReadyToStartContainers", !all_done, None, None),
                condition(&old, "Initialized", true, None, None),
                condition(&old, "Ready", all_running, reason, msg.as_deref()),
                condition(&old, "ContainersReady", all_running, reason, msg.as_deref()),
                condition(&old, "PodScheduled", true, None, None),
            ];
            let start = if old["startTime"].is_null() {
                json!(meta::now_rfc3339())
            } else {
                old["startTime"].clone()
            };
            let mut status = json!({
                "phase": phase,
                "conditions": conditions,
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "startTime": start,
                "qosClass": old["qosClass"],
                "containerStatuses": infos.iter().map(CInfo::to_json).collect::<Vec<_>>(),
            });
            let ip = ip
                .map(str::to_owned)
                .or_else(|| old["podIP"].as_str().map(str::to_owned));
            if let Some(ip) = ip.filter(|i| !i.is_empty()) {
                status["podIP"] = json!(ip);
                status["podIPs"] = json!([{"ip": ip}]);
            }
            pod["status"] = status;
        })
    }

    async fn lifecycle(&self) -> Result<(), Stop> {
        self.schedule().await?;
        let pod = self.pod().ok_or(Stop::Deleted)?;
        let containers = pod["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut infos: Vec<CInfo> = containers
            .iter()
            .map(|c| CInfo {
                name: s(&c["name"]).to_owned(),
                image: s(&c["image"]).to_owned(),
                id: None,
                image_id: String::new(),
                state: CState::Waiting {
                    reason: "ContainerCreating".to_owned(),
                    message: None,
                },
                restarts: 0,
                last_state: None,
            })
            .collect();
        self.set_status(&infos, None)?;
        // Create every container (retrying missing images and config errors), then start them.
        for (i, c) in containers.iter().enumerate() {
            let mut attempt = 0_u32;
            loop {
                let created = match self.pull(c).await {
                    Ok(()) => self.create_container(&pod, c, 0).await,
                    Err(e) => Err(e),
                };
                match created {
                    Ok((id, image_id)) => {
                        let msg = format!("Created container: {}", infos[i].name);
                        self.event("Normal", "Created", &msg, "kubelet");
                        infos[i].id = Some(id);
                        infos[i].image_id = image_id;
                        break;
                    }
                    Err(CreateError::NeverPull(message)) => {
                        self.event("Warning", "ErrImageNeverPull", &message, "kubelet");
                        self.event("Warning", "Failed", "Error: ErrImageNeverPull", "kubelet");
                        infos[i].state = CState::Waiting {
                            reason: "ErrImageNeverPull".to_owned(),
                            message: Some(message),
                        };
                        self.set_status(&infos, None)?;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Err(CreateError::ImageMissing(message)) => {
                        self.event("Warning", "Failed", &message, "kubelet");
                        self.event("Warning", "Failed", "Error: ErrImagePull", "kubelet");
                        infos[i].state = CState::Waiting {
                            reason: "ErrImagePull".to_owned(),
                            message: Some(message),
                        };
                        self.set_status(&infos, None)?;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        infos[i].state = CState::Waiting {
                            reason: "ImagePullBackOff".to_owned(),
                            message: Some(format!("Back-off pulling image \"{}\"", infos[i].image)),
                        };
                        self.set_status(&infos, None)?;
                        let msg = format!("Back-off pulling image \"{}\"", infos[i].image);
                        self.event("Normal", "BackOff", &msg, "kubelet");
                        self.event("Warning", "Failed", "Error: ImagePullBackOff", "kubelet");
                        let backoff = 2_u64.saturating_pow(attempt.min(4));
                        attempt += 1;
                        tokio::time::sleep(Duration::from_secs(backoff)).await;
                    }
                    Err(CreateError::Config(message)) => {
                        self.event("Warning", "Failed", &format!("Error: {message}"), "kubelet");
                        infos[i].state = CState::Waiting {
                            reason: "CreateContainerConfigError".to_owned(),
                            message: Some(message),
                        };
                        self.set_status(&infos, None)?;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Err(CreateError::Other(message)) => {
                        infos[i].state = CState::Waiting {
                            reason: "CreateContainerError".to_owned(),
                            message: Some(message),
                        };
                        self.set_status(&infos, None)?;
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
        let mut ip = None;
        for info in &mut infos {
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
                    CState::Running { started_at }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "container start failed");
                    CState::Terminated {
                        exit_code: 128,
                        reason: "StartError".to_owned(),
                        started_at: meta::rfc3339(0),
                        finished_at: meta::now_rfc3339(),
                    }
                }
            };
        }
        self.set_status(&infos, ip.as_deref())?;
        // Wait for each container to end.
        let policy = s(&pod["spec"]["restartPolicy"]).to_owned();
        let waits = infos.iter().enumerate().map(|(i, info)| {
            wait_exit(
                self.inner.docker.clone(),
                info.id.clone().unwrap_or_default(),
                i,
            )
        });
        let mut waits: futures_util::stream::FuturesUnordered<_> = waits.collect();
        while let Some(i) = waits.next().await {
            if !matches!(infos[i].state, CState::Running { .. }) {
                continue;
            }
            let id = infos[i].id.clone().unwrap_or_default();
            let inspect = self.inner.docker.inspect_container(&id, None).await.ok();
            let Some(state) = inspect.and_then(|i| i.state) else {
                // Removed under us: the pod is being deleted.
                return Err(Stop::Deleted);
            };
            let exit_code = state.exit_code.unwrap_or(0);
            let reason = if state.oom_killed == Some(true) {
                "OOMKilled"
            } else if exit_code == 0 {
                "Completed"
            } else {
                "Error"
            };
            let started_at = match &infos[i].state {
                CState::Running { started_at } => started_at.clone(),
                _ => meta::now_rfc3339(),
            };
            infos[i].state = CState::Terminated {
                exit_code,
                reason: reason.to_owned(),
                started_at,
                finished_at: state
                    .finished_at
                    .map_or_else(meta::now_rfc3339, |t| trim_docker_time(&t)),
            };
            let restart = policy == "Always" || (policy == "OnFailure" && exit_code != 0);
            if !restart {
                self.set_status(&infos, None)?;
                continue;
            }
            // Restart as a kubelet does: a new container after a back-off, the dead one kept
            // (and named in lastState) for `logs --previous`, older ones removed.
            let terminated = infos[i].to_json()["state"].clone();
            if let Some(old) = infos[i].last_state.as_ref().and_then(|l| {
                l["terminated"]["containerID"]
                    .as_str()
                    .and_then(|c| c.strip_prefix("docker://"))
                    .map(str::to_owned)
            }) {
                let _ = self
                    .inner
                    .docker
                    .remove_container(
                        &old,
                        Some(RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                    .await;
            }
            infos[i].last_state = Some(terminated);
            infos[i].restarts += 1;
            let backoff = Duration::from_secs(1 << infos[i].restarts.clamp(1, 5).saturating_sub(1));
            infos[i].state = CState::Waiting {
                reason: "CrashLoopBackOff".to_owned(),
                message: Some(format!(
                    "back-off {}s restarting failed container={} pod={}_{}({})",
                    backoff.as_secs(),
                    infos[i].name,
                    self.name,
                    self.ns,
                    self.uid
                )),
            };
            self.set_status(&infos, None)?;
            let msg = format!("Back-off restarting failed container {}", infos[i].name);
            self.event("Warning", "BackOff", &msg, "kubelet");
            tokio::time::sleep(backoff).await;
            let spec = &containers[i];
            match self.create_container(&pod, spec, infos[i].restarts).await {
                Ok((id, _)) => {
                    if self
                        .inner
                        .docker
                        .start_container(&id, None::<StartContainerOptions>)
                        .await
                        .is_ok()
                    {
                        infos[i].id = Some(id.clone());
                        infos[i].state = CState::Running {
                            started_at: meta::now_rfc3339(),
                        };
                        let msg = format!("Started container {}", infos[i].name);
                        self.event("Normal", "Started", &msg, "kubelet");
                        waits.push(wait_exit(self.inner.docker.clone(), id, i));
                    }
                }
                Err(
                    CreateError::NeverPull(m)
                    | CreateError::ImageMissing(m)
                    | CreateError::Config(m)
                    | CreateError::Other(m),
                ) => {
                    infos[i].state = CState::Waiting {
                        reason: "CreateContainerError".to_owned(),
                        message: Some(m),
                    };
                }
            }
            self.set_status(&infos, None)?;
        }
        Ok(())
    }

    /// Waits until the pod fits on a node, then binds it there.
    async fn schedule(&self) -> Result<(), Stop> {
        let mut changes = self.inner.store.subscribe_changes();
        let mut reported = String::new();
        loop {
            let pod = self.pod().ok_or(Stop::Deleted)?;
            if !pod["spec"]["nodeName"].is_null() {
                return Ok(());
            }
            match self.fits(&pod) {
                Ok(node) => {
                    self.update(|p| {
                        p["spec"]["nodeName"] = json!(node);
                        let old = p["status"].clone();
                        p["status"]["conditions"] =
                            json!([condition(&old, "PodScheduled", true, None, None)]);
                    })?;
                    let msg = format!("Successfully assigned {}/{} to {node}", self.ns, self.name);
                    self.event("Normal", "Scheduled", &msg, "default-scheduler");
                    return Ok(());
                }
                Err((message, short)) => {
                    self.update(|p| {
                        let old = p["status"].clone();
                        p["status"]["phase"] = json!("Pending");
                        p["status"]["conditions"] = json!([condition(
                            &old,
                            "PodScheduled",
                            false,
                            Some("Unschedulable"),
                            Some(&message)
                        )]);
                    })?;
                    if reported != message {
                        self.event("Warning", "FailedScheduling", &message, "default-scheduler");
                        if short {
                            self.autoscale(&pod);
                        }
                        reported = message;
                    }
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), changes.changed()).await;
        }
    }

    /// The simulated cluster-autoscaler's answer to a pod short of resources
    /// ([`crate::Sim::autoscale`]): a scale-up when the new node would hold it, then the node
    /// after the delay; otherwise `NotTriggerScaleUp` with the reason.
    fn autoscale(&self, pod: &Value) {
        let mut guard = self
            .inner
            .autoscaler
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(scaler) = guard.as_mut() else {
            return;
        };
        let (cpu, mem) = requests(pod);
        let mut short = Vec::new();
        if cpu > scaler.node.cpu + 1e-9 {
            short.push("1 Insufficient cpu");
        }
        if mem > scaler.node.memory {
            short.push("1 Insufficient memory");
        }
        if scaler.triggered {
            // While the scale-up is in flight the autoscaler counts the upcoming node: a pod
            // asked about again (its scheduling message changed) is not refused for the
            // group's size, or a pod that itself triggered the scale-up would read as refused.
            let joined = !self
                .inner
                .extra_nodes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_empty();
            if !joined && short.is_empty() {
                return;
            }
            short.push("1 max node group size reached");
        }
        if !short.is_empty() {
            let msg = format!("pod didn't trigger scale-up: {}", short.join(", "));
            drop(guard);
            self.event("Normal", "NotTriggerScaleUp", &msg, "cluster-autoscaler");
            return;
        }
        scaler.triggered = true;
        let (node, delay) = (scaler.node, scaler.delay);
        drop(guard);
        self.event(
            "Normal",
            "TriggeredScaleUp",
            "pod triggered scale-up: [{berth-sim-pool 1->2 (max: 2)}]",
            "cluster-autoscaler",
        );
        let inner = self.inner.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let runtime = crate::runtime_version(&inner.docker).await;
            inner
                .extra_nodes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((crate::SCALED_NODE_NAME.to_owned(), node));
            let object = crate::node_object(crate::SCALED_NODE_NAME, &node, &runtime);
            if let Err(e) = inner.store.create(Res::Node, "", object) {
                tracing::warn!(error = %e.message, "adding the scaled-up node failed");
            }
        });
    }

    /// The node the pod fits on (its claims bound, its requests beside those of the other
    /// bound, unfinished pods), or the scheduler's message and whether resources were short.
    fn fits(&self, pod: &Value) -> Result<String, (String, bool)> {
        let mut nodes = vec![(NODE_NAME.to_owned(), self.inner.node)];
        nodes.extend(
            self.inner
                .extra_nodes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .cloned(),
        );
        let n = nodes.len();
        for v in pod["spec"]["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                match self.inner.store.get(Res::Pvc, &self.ns, claim) {
                    None => return Err((format!(
                        "0/{n} nodes are available: persistentvolumeclaim \"{claim}\" not found. preemption: 0/{n} nodes are available: {n} Preemption is not helpful for scheduling."
                    ), false)),
                    Some(pvc) if pvc["status"]["phase"] != "Bound" => return Err((format!(
                        "0/{n} nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/{n} nodes are available: {n} Preemption is not helpful for scheduling."
                    ), false)),
                    Some(_) => {}
                }
            }
        }
        let (cpu, mem) = requests(pod);
        let (pods, _) = self.inner.store.list(Res::Pod, None);
        let (mut short_cpu, mut short_mem) = (0, 0);
        for (name, size) in &nodes {
            let (mut used_cpu, mut used_mem) = (0.0, 0.0);
            for other in &pods {
                let here = other["spec"]["nodeName"] == name.as_str();
                let done = matches!(s(&other["status"]["phase"]), "Succeeded" | "Failed");
                if here && !done && other["metadata"]["uid"] != self.uid.as_str() {
                    let (c, m) = requests(other);
                    used_cpu += c;
                    used_mem += m;
                }
            }
            let no_cpu = used_cpu + cpu > size.cpu + 1e-9;
            let no_mem = used_mem + mem > size.memory;
            if !no_cpu && !no_mem {
                return Ok(name.clone());
            }
            short_cpu += usize::from(no_cpu);
            short_mem += usize::from(no_mem);
        }
        let mut short = Vec::new();
        if short_cpu > 0 {
            short.push(format!("{short_cpu} Insufficient cpu"));
        }
        if short_mem > 0 {
            short.push(format!("{short_mem} Insufficient memory"));
        }
        Err((format!(
            "0/{n} nodes are available: {}. preemption: 0/{n} nodes are available: {n} No preemption victims found for incoming pod.",
            short.join(", ")
        ), true))
    }

    async fn mounts(&self, pod: &Value, container: &Value) -> Result<Vec<Mount>, CreateError> {
        let volumes = pod["spec"]["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let fs_group = pod["spec"]["securityContext"]["fsGroup"]
            .as_u64()
            .and_then(|g| u32::try_from(g).ok());
        let mut mounts = Vec::new();
        for vm in container["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let vname = s(&vm["name"]);
            let target = s(&vm["mountPath"]).to_owned();
            let read_only = vm["readOnly"].as_bool().unwrap_or(false);
            let sub_path = s(&vm["subPath"]).trim_matches('/').to_owned();
            if sub_path.split('/').any(|p| p == "..") {
                return Err(CreateError::Config(format!(
                    "subPath {sub_path:?} must not contain '..'"
                )));
            }
            let Some(vol) = volumes.iter().find(|v| v["name"] == vname) else {
                return Err(CreateError::Config(format!(
                    "volumeMount {vname:?} names no volume of the pod"
                )));
            };
            // (docker volume name) or (host path)
            let source: Result<String, String> = if let Some(claim) =
                vol["persistentVolumeClaim"]["claimName"].as_str()
            {
                let pvc = self
                    .inner
                    .store
                    .get(Res::Pvc, &self.ns, claim)
                    .ok_or_else(|| {
                        CreateError::Config(format!("persistentvolumeclaim \"{claim}\" not found"))
                    })?;
                Ok(claim_volume(&self.inner, &pvc))
            } else if vol["emptyDir"].is_object() {
                let name = format!(
                    "k8s-sim-{}-{}-{}",
                    self.inner.id,
                    &self.uid[..8.min(self.uid.len())],
                    vname
                );
                let mut labels = self.inner.docker_labels(None);
                labels.insert(POD_UID_LABEL.to_owned(), self.uid.clone());
                self.inner
                    .docker
                    .create_volume(VolumeCreateRequest {
                        name: Some(name.clone()),
                        labels: Some(labels),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| CreateError::Other(format!("creating emptyDir {vname}: {e}")))?;
                Ok(name)
            } else if let Some(path) = vol["hostPath"]["path"].as_str() {
                let typ = s(&vol["hostPath"]["type"]);
                if typ == "DirectoryOrCreate" {
                    let _ = std::fs::create_dir_all(path);
                }
                Err(path.to_owned())
            } else {
                return Err(CreateError::Config(format!(
                    "volume {vname:?}: only persistentVolumeClaim, emptyDir and hostPath volumes are simulated"
                )));
            };
            // fsGroup: the volume's directory (on the daemon's host, which is this host) gets
            // the group, group rwx and setgid, like the kubelet's ownership management.
            if let (Some(gid), Ok(volume)) = (fs_group, &source) {
                if let Ok(v) = self.inner.docker.inspect_volume(volume).await {
                    give_to_group(std::path::Path::new(&v.mountpoint), gid);
                }
            }
            let mount = match (source, sub_path.is_empty()) {
                (Ok(volume), true) => Mount {
                    target: Some(target),
                    source: Some(volume),
                    typ: Some(MountType::VOLUME),
                    read_only: Some(read_only),
                    ..Default::default()
                },
                (Err(host), true) => Mount {
                    target: Some(target),
                    source: Some(host),
                    typ: Some(MountType::BIND),
                    read_only: Some(read_only),
                    ..Default::default()
                },
                (source, false) => {
                    // Docker 20.10 has no volume subpath: bind the sub-directory of the
                    // volume's (or host path's) directory on the host instead.
                    let base = match source {
                        Ok(volume) => {
                            self.inner
                                .docker
                                .inspect_volume(&volume)
                                .await
                                .map_err(|e| {
                                    CreateError::Other(format!("inspecting {volume}: {e}"))
                                })?
                                .mountpoint
                        }
                        Err(host) => host,
                    };
                    let dir = std::path::Path::new(&base).join(&sub_path);
                    std::fs::create_dir_all(&dir).map_err(|e| {
                        CreateError::Config(format!(
                            "failed to create subPath directory for volumeMount {vname:?} of container {:?}: {e}",
                            s(&container["name"])
                        ))
                    })?;
                    if let Some(gid) = fs_group {
                        let base = std::path::Path::new(&base);
                        let mut p = dir.as_path();
                        while p.starts_with(base) && p != base {
                            give_to_group(p, gid);
                            p = p.parent().unwrap_or(base);
                        }
                    }
                    Mount {
                        target: Some(target),
                        source: Some(dir.to_string_lossy().into_owned()),
                        typ: Some(MountType::BIND),
                        read_only: Some(read_only),
                        ..Default::default()
                    }
                }
            };
            mounts.push(mount);
        }
        Ok(mounts)
    }

    fn env(&self, pod: &Value, container: &Value) -> Result<Vec<String>, CreateError> {
        let mut env = Vec::new();
        if let Some(from) = container["envFrom"].as_array().and_then(|a| a.first()) {
            let (kind, name) = if from["secretRef"].is_object() {
                ("secret", s(&from["secretRef"]["name"]))
            } else {
                ("configmap", s(&from["configMapRef"]["name"]))
            };
            return Err(CreateError::Config(format!("{kind} \"{name}\" not found")));
        }
        for e in container["env"].as_array().cloned().unwrap_or_default() {
            let name = s(&e["name"]);
            let value = if let Some(v) = e["value"].as_str() {
                v.to_owned()
            } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match path {
                    "metadata.name" => self.name.clone(),
                    "metadata.namespace" => self.ns.clone(),
                    "metadata.uid" => self.uid.clone(),
                    "spec.nodeName" => NODE_NAME.to_owned(),
                    "spec.serviceAccountName" => s(&pod["spec"]["serviceAccountName"]).to_owned(),
                    "status.hostIP" => "127.0.0.1".to_owned(),
                    other if other.starts_with("metadata.labels['") => {
                        let key = other
                            .trim_start_matches("metadata.labels['")
                            .trim_end_matches("']");
                        s(&pod["metadata"]["labels"][key]).to_owned()
                    }
                    other => {
                        return Err(CreateError::Config(format!(
                            "fieldRef {other:?} is not simulated"
                        )))
                    }
                }
            } else if e["valueFrom"]["secretKeyRef"].is_object() {
                let n = s(&e["valueFrom"]["secretKeyRef"]["name"]);
                return Err(CreateError::Config(format!("secret \"{n}\" not found")));
            } else if e["valueFrom"]["configMapKeyRef"].is_object() {
                let n = s(&e["valueFrom"]["configMapKeyRef"]["name"]);
                return Err(CreateError::Config(format!("configmap \"{n}\" not found")));
            } else {
                String::new()
            };
            env.push(format!("{name}={value}"));
        }
        Ok(env)
    }

    /// Gets container `c`'s image onto the node as its `imagePullPolicy` says, with the
    /// kubelet's events: `Never` uses only what is there (`ErrImageNeverPull`); `Always` pulls
    /// through Docker (here it fails: no registry can be reached, with Docker's own message);
    /// `IfNotPresent` uses what is there and answers a missing image as a registry answers
    /// for an image that does not exist. Faults from [`crate::Sim::fail_pulls`] come first.
    async fn pull(&self, c: &Value) -> Result<(), CreateError> {
        let image = s(&c["image"]).to_owned();
        let policy = s(&c["imagePullPolicy"]).to_owned();
        let present = self.inner.docker.inspect_image(&image).await.is_ok();
        if policy == "Never" {
            if present {
                let msg = format!("Container image \"{image}\" already present on machine");
                self.event("Normal", "Pulled", &msg, "kubelet");
                return Ok(());
            }
            return Err(CreateError::NeverPull(format!(
                "Container image \"{image}\" is not present with pull policy of Never"
            )));
        }
        let fault = {
            let mut faults = self
                .inner
                .pull_faults
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match faults.get_mut(&image) {
                Some((left, message)) if *left > 0 => {
                    *left -= 1;
                    Some(message.clone())
                }
                _ => None,
            }
        };
        // An image with faults set was not on the node: it must be pulled.
        if policy != "Always" && present && !self.was_faulted(&image) {
            let msg = format!("Container image \"{image}\" already present on machine");
            self.event("Normal", "Pulled", &msg, "kubelet");
            return Ok(());
        }
        self.event(
            "Normal",
            "Pulling",
            &format!("Pulling image \"{image}\""),
            "kubelet",
        );
        let began = std::time::Instant::now();
        if let Some(message) = fault {
            return Err(CreateError::ImageMissing(format!(
                "Failed to pull image \"{image}\": {message}"
            )));
        }
        let pulled = if policy == "Always" {
            self.docker_pull(&image).await
        } else if present {
            // The faults are used up: this pull "succeeds" with the image already here.
            Ok(())
        } else {
            let repo = image.rsplit_once(':').map_or(image.as_str(), |(r, t)| {
                if t.contains('/') {
                    image.as_str()
                } else {
                    r
                }
            });
            Err(format!(
                "Error response from daemon: pull access denied for {repo}, repository does not exist or may require 'docker login': denied: requested access to the resource is denied"
            ))
        };
        match pulled {
            Ok(()) => {
                let took = began.elapsed().as_secs_f64();
                let size = self
                    .inner
                    .docker
                    .inspect_image(&image)
                    .await
                    .ok()
                    .and_then(|i| i.size)
                    .unwrap_or(0);
                let msg = format!(
                    "Successfully pulled image \"{image}\" in {took:.3}s ({took:.3}s including waiting). Image size: {size} bytes."
                );
                self.event("Normal", "Pulled", &msg, "kubelet");
                Ok(())
            }
            Err(message) => Err(CreateError::ImageMissing(format!(
                "Failed to pull image \"{image}\": {message}"
            ))),
        }
    }

    /// Whether a fault of [`crate::Sim::fail_pulls`] was ever set for `image` (its node
    /// then "pulls" it once the faults are used up).
    fn was_faulted(&self, image: &str) -> bool {
        self.inner
            .pull_faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(image)
    }

    /// A real pull through Docker (30 s at most); the error is Docker's message.
    async fn docker_pull(&self, image: &str) -> Result<(), String> {
        let (from_image, tag) = match image.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r.to_owned(), t.to_owned()),
            _ => (image.to_owned(), "latest".to_owned()),
        };
        let pull = async {
            let mut stream = self.inner.docker.create_image(
                Some(bollard::query_parameters::CreateImageOptions {
                    from_image: Some(from_image),
                    tag: Some(tag),
                    ..Default::default()
                }),
                None,
                None,
            );
            while let Some(item) = stream.next().await {
                match item {
                    Ok(info) => {
                        if let Some(m) = info.error_detail.and_then(|d| d.message) {
                            return Err(format!("Error response from daemon: {m}"));
                        }
                    }
                    Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => {
                        return Err(format!("Error response from daemon: {message}"))
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(30), pull)
            .await
            .unwrap_or_else(|_| Err("context deadline exceeded".to_owned()))
    }

    async fn create_container(
        &self,
        pod: &Value,
        c: &Value,
        attempt: i64,
    ) -> Result<(String, String), CreateError> {
        let image = s(&c["image"]).to_owned();
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
                    self.name, self.ns, self.uid, s(&c["name"])
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
        let cname = s(&c["name"]).to_owned();
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

    async fn cleanup(&self) {
        let filter = HashMap::from([(
            "label".to_owned(),
            vec![
                format!("{INSTANCE_LABEL}={}", self.inner.id),
                format!("{POD_UID_LABEL}={}", self.uid),
            ],
        )]);
        let docker = &self.inner.docker;
        if let Ok(list) = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filter.clone()),
                ..Default::default()
            }))
            .await
        {
            for c in list {
                if let Some(id) = c.id {
                    let _ = docker
                        .remove_container(
                            &id,
                            Some(RemoveContainerOptions {
                                force: true,
                                v: true,
                                ..Default::default()
                            }),
                        )
                        .await;
                }
            }
        }
        if let Ok(list) = docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filter),
            }))
            .await
        {
            for v in list.volumes.unwrap_or_default() {
                let _ = docker
                    .remove_volume(&v.name, Some(RemoveVolumeOptions { force: true }))
                    .await;
            }
        }
    }
}

enum CreateError {
    /// `imagePullPolicy: Never` and the image is not on the node.
    NeverPull(String),
    ImageMissing(String),
    Config(String),
    Other(String),
}

/// Waits until container `id` stops; yields `i`.
/// Waits for container `id` to exit. Like a kubelet on cgroup v2 (memory.oom.group, the
/// default since 1.28), an out-of-memory kill of any process in the container ends the whole
/// container: Docker reports the kill as an `oom` event, the container is killed, and its
/// state then says OOMKilled (which the pod status reports as the reason).
async fn wait_exit(docker: bollard::Docker, id: String, i: usize) -> usize {
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

/// Gives `dir` to group `gid` with group rwx and setgid (errors are logged, not fatal).
fn give_to_group(dir: &std::path::Path, gid: u32) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::os::unix::fs::chown(dir, None, Some(gid)) {
        tracing::warn!(dir = %dir.display(), error = %e, "fsGroup: chown failed");
        return;
    }
    if let Ok(meta) = std::fs::metadata(dir) {
        let mode = meta.permissions().mode() | 0o2070;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
    }
}

/// Docker's nanosecond timestamps, cut to the API's second precision.
fn trim_docker_time(t: &str) -> String {
    match t.get(..19) {
        Some(prefix) if t.len() > 19 => format!("{prefix}Z"),
        _ => t.to_owned(),
    }
}

/// A pod's CPU (cores) and memory (bytes) requests; limits stand in for missing requests.
fn requests(pod: &Value) -> (f64, f64) {
    let mut cpu = 0.0;
    let mut mem = 0.0;
    for c in pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let r = &c["resources"];
        let get = |k: &str| {
            meta::parse_quantity(&r["requests"][k])
                .or_else(|| meta::parse_quantity(&r["limits"][k]))
        };
        cpu += get("cpu").unwrap_or(0.0);
        mem += get("memory").unwrap_or(0.0);
    }
    (cpu, mem)
}

/// Whether no node was assigned to `pod` yet: the API server then has no kubelet to send an
/// exec or a log request to.
pub(crate) fn unscheduled(pod: &Value) -> bool {
    s(&pod["spec"]["nodeName"]).is_empty()
}

/// The name of `container` in `pod` (the only one when `None`), or the API server's 400.
pub(crate) fn container_name(pod: &Value, container: Option<&str>) -> Result<String, ApiError> {
    let name = s(&pod["metadata"]["name"]);
    let specs = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = specs.iter().map(|c| s(&c["name"])).collect();
    let container = match container.filter(|c| !c.is_empty()) {
        Some(c) => c.to_owned(),
        None if names.len() == 1 => names[0].to_owned(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                names.join(" ")
            )))
        }
    };
    if !names.contains(&container.as_str()) {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    Ok(container)
}

/// The Docker id of `container` in `pod`, or the error the API server would answer: the
/// container name is checked first, then that the pod has a node (as the API server's
/// `streamLocation` does), then the kubelet's view of the container.
pub(crate) fn container_id(pod: &Value, container: Option<&str>) -> Result<String, ApiError> {
    let name = s(&pod["metadata"]["name"]);
    let container = container_name(pod, container)?;
    if unscheduled(pod) {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let st = statuses.iter().find(|c| c["name"] == container.as_str());
    let id = st
        .and_then(|c| c["containerID"].as_str())
        .and_then(|id| id.strip_prefix("docker://"));
    match id {
        Some(id) => Ok(id.to_owned()),
        None => {
            let reason = st
                .and_then(|c| c["state"]["waiting"]["reason"].as_str())
                .unwrap_or("ContainerCreating");
            Err(ApiError::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
            )))
        }
    }
}

/// `GET .../pods/NAME/log`: the container's Docker logs, followed when `follow=true`.
pub(crate) async fn logs(
    inner: &Arc<Inner>,
    ns: &str,
    name: &str,
    params: &Params,
) -> Result<Response<Body>, ApiError> {
    let pod = inner
        .store
        .get(Res::Pod, ns, name)
        .ok_or_else(|| ApiError::not_found(Res::Pod, name))?;
    if unscheduled(&pod) {
        // The API server's LogLocation has no node to ask and streams nothing: 204.
        container_name(&pod, params.get("container"))?;
        let mut resp = Response::new(api::full(Bytes::new()));
        *resp.status_mut() = hyper::StatusCode::NO_CONTENT;
        return Ok(resp);
    }
    let mut id = container_id(&pod, params.get("container"))?;
    if params.flag("previous") {
        let container = params
            .get("container")
            .or_else(|| pod["spec"]["containers"][0]["name"].as_str())
            .unwrap_or("");
        let previous = pod["status"]["containerStatuses"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == container))
            .and_then(|c| c["lastState"]["terminated"]["containerID"].as_str())
            .and_then(|c| c.strip_prefix("docker://"))
            .map(str::to_owned);
        id = previous.ok_or_else(|| {
            ApiError::bad_request(format!(
                "previous terminated container \"{container}\" in pod \"{name}\" not found"
            ))
        })?;
    }
    let follow = params.flag("follow");
    let options = LogsOptions {
        follow,
        stdout: true,
        stderr: true,
        timestamps: params.flag("timestamps"),
        tail: params
            .get("tailLines")
            .filter(|t| t.parse::<u64>().is_ok())
            .unwrap_or("all")
            .to_owned(),
        since: params
            .get("sinceSeconds")
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(|s| i32::try_from(meta::now_secs() - s).ok())
            .unwrap_or(0),
        ..Default::default()
    };
    let limit = params
        .get("limitBytes")
        .and_then(|l| l.parse::<usize>().ok());
    let (tx, resp) = api::streaming("text/plain");
    let docker = inner.docker.clone();
    tokio::spawn(async move {
        let mut stream = docker.logs(&id, Some(options));
        let mut sent = 0_usize;
        while let Some(Ok(chunk)) = stream.next().await {
            let mut bytes: Bytes = chunk.into_bytes();
            if let Some(limit) = limit {
                if sent >= limit {
                    break;
                }
                bytes.truncate(limit - sent);
            }
            sent += bytes.len();
            if tx.send(bytes).await.is_err() {
                break;
            }
        }
    });
    Ok(resp)
}
