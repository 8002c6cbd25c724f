//! The node: a kubelet and a scheduler for the simulator's pods, which run as Docker
//! containers.
//!
//! - [`defaults`]: what the API server fills into a new pod (and a Job's template);
//! - [`volumes`]: claims as Docker volumes, and a container's mounts;
//! - [`worker`]: one task per pod, from scheduling to the removal of its containers;
//! - [`scheduler`]: where a pod fits, and the simulated cluster-autoscaler;
//! - [`image`] and [`container`]: getting the image, creating and starting the containers;
//! - [`status`]: the pod status reported from the containers' states;
//! - [`logs`]: the container behind `exec` and `log`, and `pods/log` itself.
//!
//! This module holds what they share: the [`Worker`] of one pod, events, and pod deletion.

mod container;
mod defaults;
mod image;
mod logs;
mod scheduler;
mod status;
mod virtual_node;
mod volumes;
mod worker;

use std::sync::Arc;

use serde_json::{json, Value};

pub(crate) use defaults::{default_pod, default_pod_spec};
pub(crate) use logs::{container_id, logs};
pub(crate) use virtual_node::{start_shared_container, VirtualNode};
pub(crate) use volumes::{
    bind_later, create_claim_volume, default_pvc, remove_claim_volume, unbind,
};

use crate::errors::ApiError;
use crate::meta::{self, json_str};
use crate::store::Res;
use crate::{Inner, NODE_NAME};

/// The pids limit of every pod container, as a kubelet's `podPidsLimit` sets it (Kubernetes
/// has no per-pod field for it).
const POD_PIDS_LIMIT: i64 = 512;

/// The Docker label naming the pod uid a container or emptyDir volume belongs to.
const POD_UID_LABEL: &str = "berth.dev/k8s-sim-pod-uid";

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
    let ns = json_str(&md["namespace"]);
    let now = meta::now_rfc3339();
    let event = json!({
        "metadata": {"name": format!("{}.{}", json_str(&md["name"]), meta::random_suffix(10))},
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
    let mut running = inner
        .kubelets
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Only the names of pods without a worker are copied out: with a thousand pods this runs
    // on every store change.
    let mut new = Vec::new();
    inner.store.scan(Res::Pod, None, |pod| {
        let uid = json_str(&pod["metadata"]["uid"]);
        if !running.contains(uid) {
            new.push((
                uid.to_owned(),
                json_str(&pod["metadata"]["namespace"]).to_owned(),
                json_str(&pod["metadata"]["name"]).to_owned(),
            ));
        }
    });
    for (uid, ns, name) in new {
        if running.insert(uid.clone()) {
            let worker = Worker {
                inner: inner.clone(),
                ns,
                name,
                uid,
            };
            match inner.virtual_node.get() {
                Some(node) => tokio::spawn(worker.run_virtual(node.clone())),
                None => tokio::spawn(worker.run()),
            };
        }
    }
}

/// The worker of one pod (the kubelet's pod worker), by namespace, name and uid: a pod
/// deleted and created again under the same name gets a new worker.
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
