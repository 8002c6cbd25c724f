//! Virtual pods, as kwok makes them: after [`crate::Sim::virtual_pods`], a new pod is bound to
//! the node and reported Running without a Docker container of its own. Every container of
//! every virtual pod names ONE shared real container (started once from the test image) as its
//! `containerID`, so `exec` and `log` reach that container. Deletion goes the way of a real pod:
//! the worker sees the deletion timestamp and removes the object (there is nothing to kill).

use std::sync::Arc;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, StartContainerOptions};
use serde_json::{json, Value};

use super::status::{condition, ContainerState, ContainerStatus};
use super::{record_event, Stop, Worker};
use crate::meta::{self, json_str};
use crate::store::Res;
use crate::{Inner, NODE_NAME};

/// The one real container behind every virtual pod.
#[derive(Debug, Clone)]
pub(crate) struct VirtualNode {
    /// Its Docker id: the `containerID` (`docker://...`) of every virtual pod's containers.
    pub(crate) container: String,
    /// Its Docker image id, the `imageID` of every virtual container.
    pub(crate) image_id: String,
    /// Its bridge address, the `podIP` of every virtual pod.
    pub(crate) ip: String,
}

/// Creates and starts the shared container from `image` (labelled as every object of the
/// instance, so it is removed on drop and found by a leak check).
pub(crate) async fn start_shared_container(
    inner: &Arc<Inner>,
    image: &str,
) -> Result<VirtualNode, String> {
    let name = format!("k8s-sim-{}-virtual-node", inner.id);
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        // PID 1 waits forever; Docker's init reaps what execs leave behind.
        entrypoint: Some(vec!["sleep".to_owned()]),
        cmd: Some(vec!["2147483647".to_owned()]),
        labels: Some(inner.docker_labels(None)),
        host_config: Some(HostConfig {
            init: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = inner
        .docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name),
                ..Default::default()
            }),
            body,
        )
        .await
        .map_err(|e| format!("creating the virtual pods' shared container from {image}: {e}"))?;
    inner
        .docker
        .start_container(&created.id, None::<StartContainerOptions>)
        .await
        .map_err(|e| format!("starting the virtual pods' shared container: {e}"))?;
    let inspect = inner
        .docker
        .inspect_container(&created.id, None)
        .await
        .map_err(|e| format!("inspecting the virtual pods' shared container: {e}"))?;
    let ip = inspect
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .and_then(|n| n.values().find_map(|e| e.ip_address.clone()))
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| "10.244.0.2".to_owned());
    Ok(VirtualNode {
        container: created.id,
        image_id: inspect.image.unwrap_or_default(),
        ip,
    })
}

impl Worker {
    /// The worker of a virtual pod: bound at once (no capacity check, as kwok's nodes are
    /// as large as asked), Running at once, kept until it is deleted (or its
    /// `activeDeadlineSeconds` passes), then removed.
    pub(super) async fn run_virtual(self, node: VirtualNode) {
        tokio::select! {
            () = self.wait_gone_or_deleting() => {}
            _ = self.virtual_lifecycle(&node) => { self.wait_gone_or_deleting().await; }
        }
        let still_ours = self
            .inner
            .store
            .peek(Res::Pod, &self.ns, &self.name, |p| {
                p["metadata"]["uid"] == self.uid.as_str()
            })
            .unwrap_or(false);
        if still_ours {
            self.inner.store.remove(Res::Pod, &self.ns, &self.name);
        }
        self.inner
            .kubelets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.uid);
    }

    /// Like `wait_deleted`, without copying the pod on every change of the store (a thousand
    /// workers wake on each).
    async fn wait_gone_or_deleting(&self) {
        let mut changes = self.inner.store.subscribe_changes();
        loop {
            let live = self
                .inner
                .store
                .peek(Res::Pod, &self.ns, &self.name, |p| {
                    p["metadata"]["uid"] == self.uid.as_str()
                        && p["metadata"]["deletionTimestamp"].is_null()
                })
                .unwrap_or(false);
            if !live {
                return;
            }
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    async fn virtual_lifecycle(&self, node: &VirtualNode) -> Result<(), Stop> {
        let scheduled = self.update(|p| {
            if p["spec"]["nodeName"].is_null() {
                p["spec"]["nodeName"] = json!(NODE_NAME);
            }
            let old = p["status"].clone();
            p["status"]["conditions"] = json!([condition(&old, "PodScheduled", true, None, None)]);
        })?;
        let msg = format!(
            "Successfully assigned {}/{} to {}",
            self.ns,
            self.name,
            json_str(&scheduled["spec"]["nodeName"])
        );
        record_event(
            &self.inner,
            &scheduled,
            "Normal",
            "Scheduled",
            &msg,
            "default-scheduler",
        );
        let started_at = meta::now_rfc3339();
        let statuses: Vec<ContainerStatus> = scheduled["spec"]["containers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|c| ContainerStatus {
                name: json_str(&c["name"]).to_owned(),
                image: json_str(&c["image"]).to_owned(),
                id: Some(node.container.clone()),
                image_id: node.image_id.clone(),
                state: ContainerState::Running {
                    started_at: started_at.clone(),
                },
                restarts: 0,
                last_state: None,
            })
            .collect();
        let pod = self.set_status(&statuses, Some(&node.ip))?;
        self.virtual_deadline(&pod).await;
        Ok(())
    }

    /// Waits for the pod's `activeDeadlineSeconds` and fails it as the kubelet does; never
    /// returns when it has none.
    async fn virtual_deadline(&self, pod: &Value) {
        let Some(secs) = pod["spec"]["activeDeadlineSeconds"].as_i64() else {
            return std::future::pending().await;
        };
        let start = pod["status"]["startTime"]
            .as_str()
            .and_then(meta::parse_rfc3339)
            .unwrap_or_else(meta::now_secs);
        let left = (start + secs - meta::now_secs()).max(0);
        tokio::time::sleep(Duration::from_secs(u64::try_from(left).unwrap_or(0))).await;
        self.fail_deadline().await;
        std::future::pending::<()>().await;
    }
}
