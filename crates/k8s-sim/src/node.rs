//! The nodes: their size (the host's, or what a test says), their objects as the API server
//! serves them, and the simulated cluster-autoscaler's node group.

use std::time::Duration;

use bollard::Docker;
use serde_json::json;

use crate::{api, meta, NODE_NAME};

/// The node's allocatable resources: CPU in cores and memory in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeSize {
    /// Allocatable CPU, in cores (the host's available parallelism).
    pub cpu: f64,
    /// Allocatable memory, in bytes (the host's `MemTotal`).
    pub memory: f64,
}

impl NodeSize {
    /// The size of this host: `cpu` = available parallelism, `memory` = `MemTotal` from
    /// `/proc/meminfo` (8 GiB when unreadable).
    #[must_use]
    pub fn of_host() -> Self {
        let cpu = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .map_or(8.0 * 1024.0 * 1024.0 * 1024.0, |kb| kb * 1024.0);
        #[allow(clippy::cast_precision_loss)]
        Self {
            cpu: cpu as f64,
            memory,
        }
    }
}

/// The node object: capacity = allocatable = [`NodeSize`], always Ready.
pub(crate) fn node_object(name: &str, node: &NodeSize, runtime_version: &str) -> serde_json::Value {
    let memory_kib = (node.memory / 1024.0).floor();
    let resources = json!({
        "cpu": format!("{}", node.cpu),
        "memory": format!("{memory_kib}Ki"),
        "pods": "110",
        "ephemeral-storage": "100Gi",
    });
    let now = meta::now_rfc3339();
    let mut object = json!({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            "node-role.kubernetes.io/control-plane": "",
        }},
        "spec": {},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name}],
            "nodeInfo": {
                "kubeletVersion": format!("v1.{}.0", api::VERSION_MINOR),
                "containerRuntimeVersion": format!("docker://{runtime_version}"),
                "osImage": "berth k8s-sim",
                "kernelVersion": "",
                "operatingSystem": "linux",
                "architecture": std::env::consts::ARCH,
            },
        },
    });
    // Only the first node runs the control plane; a scaled-up one is a worker.
    if name != NODE_NAME {
        if let Some(labels) = object["metadata"]["labels"].as_object_mut() {
            labels.remove("node-role.kubernetes.io/control-plane");
        }
    }
    object
}

/// The Docker daemon's version, for the nodes' `containerRuntimeVersion`.
pub(crate) async fn runtime_version(docker: &Docker) -> String {
    docker
        .version()
        .await
        .ok()
        .and_then(|v| v.version)
        .unwrap_or_default()
}

/// A node group of one more node that a simulated cluster-autoscaler adds on demand.
#[derive(Debug, Clone)]
pub(crate) struct Autoscaler {
    /// The size of the node it adds.
    pub(crate) node: NodeSize,
    /// How long the node takes to join after the scale-up is triggered.
    pub(crate) delay: Duration,
    /// Whether the scale-up was triggered (the group is at its maximum, 1).
    pub(crate) triggered: bool,
}

/// The name of the node the autoscaler adds.
pub const SCALED_NODE_NAME: &str = "berth-sim-node-2";
