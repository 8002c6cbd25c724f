//! The scheduler: a pod waits (Pending, `Unschedulable`, a `FailedScheduling` event) until its
//! claims are bound and its requests fit beside those of the other bound, unfinished pods on
//! a node, then is bound there; a pod short of resources asks the simulated
//! cluster-autoscaler ([`crate::Sim::autoscale`]) for a node.

use std::time::Duration;

use serde_json::{json, Value};

use super::status::condition;
use super::{Stop, Worker};
use crate::meta::{self, json_str};
use crate::store::Res;
use crate::NODE_NAME;

impl Worker {
    /// Waits until the pod fits on a node, then binds it there.
    pub(super) async fn schedule(&self) -> Result<(), Stop> {
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
            let runtime = crate::node::runtime_version(&inner.docker).await;
            inner
                .extra_nodes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((crate::SCALED_NODE_NAME.to_owned(), node));
            let object = crate::node::node_object(crate::SCALED_NODE_NAME, &node, &runtime);
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
                let done = matches!(json_str(&other["status"]["phase"]), "Succeeded" | "Failed");
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
