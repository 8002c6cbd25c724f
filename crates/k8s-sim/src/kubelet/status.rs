//! The pod status a kubelet reports: each container's state (waiting, running, terminated,
//! with restarts and the previous instance), the pod's phase and conditions derived from them,
//! and the pod IP.

use serde_json::{json, Value};

use super::{Stop, Worker};
use crate::meta;

/// A container's state as the kubelet tracks it (the pod status's `state`).
#[derive(Debug, Clone)]
pub(super) enum ContainerState {
    /// Not running yet (or between restarts), with the kubelet's reason.
    Waiting {
        reason: String,
        message: Option<String>,
    },
    /// Started at `started_at` (RFC 3339).
    Running { started_at: String },
    /// Ended with `exit_code`.
    Terminated {
        exit_code: i64,
        reason: String,
        started_at: String,
        finished_at: String,
    },
}

/// What the kubelet knows of one container of the pod: the source of its entry in the pod
/// status's `containerStatuses`.
#[derive(Debug, Clone)]
pub(super) struct ContainerStatus {
    /// The container's name in the pod spec.
    pub(super) name: String,
    /// The image as the spec names it.
    pub(super) image: String,
    /// The Docker id of the current instance, once created.
    pub(super) id: Option<String>,
    /// The Docker id of the image, once created.
    pub(super) image_id: String,
    pub(super) state: ContainerState,
    pub(super) restarts: i64,
    /// The previous instance's terminated state (with its containerID), after a restart.
    pub(super) last_state: Option<Value>,
}

impl ContainerStatus {
    /// The entry of `status.containerStatuses`.
    pub(super) fn to_json(&self) -> Value {
        let state = match &self.state {
            ContainerState::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                json!({"waiting": w})
            }
            ContainerState::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            ContainerState::Terminated {
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
        let running = matches!(self.state, ContainerState::Running { .. });
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

/// Pod condition `typ`, keeping its `lastTransitionTime` from `old` (the previous status)
/// while its status is unchanged.
pub(super) fn condition(
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

impl Worker {
    /// Sets container `i` waiting for `reason` and writes the pod status.
    pub(super) fn set_waiting(
        &self,
        statuses: &mut [ContainerStatus],
        i: usize,
        reason: &str,
        message: String,
    ) -> Result<Value, Stop> {
        statuses[i].state = ContainerState::Waiting {
            reason: reason.to_owned(),
            message: Some(message),
        };
        self.set_status(statuses, None)
    }

    /// Writes the pod status for containers `statuses`.
    pub(super) fn set_status(
        &self,
        statuses: &[ContainerStatus],
        ip: Option<&str>,
    ) -> Result<Value, Stop> {
        self.update(|pod| {
            let old = pod["status"].clone();
            let all_running = statuses
                .iter()
                .all(|i| matches!(i.state, ContainerState::Running { .. }));
            let all_done = statuses
                .iter()
                .all(|i| matches!(i.state, ContainerState::Terminated { .. }));
            let any_started = statuses
                .iter()
                .any(|i| i.restarts > 0 || !matches!(i.state, ContainerState::Waiting { .. }));
            let phase = if all_done {
                let ok = statuses
                    .iter()
                    .all(|i| matches!(i.state, ContainerState::Terminated { exit_code: 0, .. }));
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
            let unready: Vec<&str> = statuses
                .iter()
                .filter(|i| !matches!(i.state, ContainerState::Running { .. }))
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
            // Init containers (their statuses written by the worker as they run) all ended
            // well, or there are none.
            let init = old["initContainerStatuses"].clone();
            let initialized = init.as_array().is_none_or(|a| {
                a.iter()
                    .all(|c| c["state"]["terminated"]["exitCode"] == 0)
            });
            let pending_init: Vec<&str> = init
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["state"]["terminated"]["exitCode"] != 0)
                .filter_map(|c| c["name"].as_str())
                .collect();
            let init_msg = format!(
                "containers with incomplete status: [{}]",
                pending_init.join(" ")
            );
            let conditions = vec![
                condition(&old, "PodReadyToStartContainers", !all_done, None, None),
                condition(
                    &old,
                    "Initialized",
                    initialized,
                    (!initialized).then_some("ContainersNotInitialized"),
                    (!initialized).then_some(init_msg.as_str()),
                ),
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
                "containerStatuses": statuses.iter().map(ContainerStatus::to_json).collect::<Vec<_>>(),
            });
            if !init.is_null() {
                status["initContainerStatuses"] = init;
            }
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
}
