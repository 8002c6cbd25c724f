//! What a pod's status says about a command that was running in it: an out-of-memory
//! kill, a deletion, or nothing (the command ended by itself).

use std::time::Duration;

use berth_engine_core::backend::OomReport;
use berth_engine_core::{EnvironmentId, Error, ExitStatus, OomKill, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use crate::manifest::CONTAINER;

/// How long to watch the pod after a command died of SIGKILL (137) for the reason: the
/// kubelet reports an out-of-memory kill or a deletion a moment after the exec stream ends.
pub(crate) const VERDICT_WINDOW: Duration = Duration::from_secs(2);

/// What the pod says about an exec that died of SIGKILL or lost its connection.
pub(crate) struct Verdict {
    pub(crate) pods: Api<Pod>,
    pub(crate) pod: String,
    pub(crate) address: String,
    pub(crate) oom: OomReport,
}

/// What a pod's state means for a command that was running in it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PodFate {
    /// Running as before: the exit code is the command's own.
    Running,
    /// Its container was killed by the out-of-memory killer (limit in bytes, if set).
    OomKilled(Option<u64>),
    /// Deleted, being deleted, or its container ended: the reason.
    Gone(String),
}

/// Reads a pod (`None`: it no longer exists) the way [`Verdict`] needs.
pub(crate) fn pod_fate(pod: Option<&Pod>) -> PodFate {
    let Some(pod) = pod else {
        return PodFate::Gone("its pod was deleted".to_owned());
    };
    let limit = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == CONTAINER))
        .and_then(|c| c.resources.as_ref())
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .and_then(|q| parse_memory(&q.0));
    let status = pod.status.as_ref();
    let terminated = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == CONTAINER))
        .and_then(|c| c.state.as_ref())
        .and_then(|st| st.terminated.as_ref());
    if let Some(t) = terminated {
        if t.reason.as_deref() == Some("OOMKilled") {
            return PodFate::OomKilled(limit);
        }
        return PodFate::Gone(format!(
            "its container ended with exit code {} ({})",
            t.exit_code,
            t.reason.as_deref().unwrap_or("no reason given")
        ));
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return PodFate::Gone("its pod was deleted".to_owned());
    }
    match status.and_then(|s| s.phase.as_deref()) {
        Some(phase @ ("Failed" | "Succeeded")) => PodFate::Gone(format!("its pod is {phase}")),
        _ => PodFate::Running,
    }
}

/// A memory quantity (`64Mi`, `1G`, `67108864`) in bytes; `None` for forms berth never
/// writes (milli-bytes, exponents).
pub(crate) fn parse_memory(q: &str) -> Option<u64> {
    let digits = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (number, unit) = q.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

impl Verdict {
    /// Turns a command's 137, or a lost connection, into what happened to the environment:
    /// an out-of-memory kill (recorded in the report, the 137 kept), or
    /// [`Error::EnvironmentGone`] when the pod was deleted or its container ended.
    pub(crate) async fn judge(
        &self,
        env: &EnvironmentId,
        result: Result<ExitStatus>,
    ) -> Result<ExitStatus> {
        let lost = matches!(&result, Err(e) if e.is_connection_lost());
        let suspicious = match &result {
            Ok(status) => status.code() == 137,
            // A pod deleted under the exec can end its stream with a failure status.
            Err(e) => !e.is_timeout(),
        };
        if !suspicious {
            return result;
        }
        let started = tokio::time::Instant::now();
        loop {
            let fate =
                match tokio::time::timeout(VERDICT_WINDOW, self.pods.get_opt(&self.pod)).await {
                    Ok(Ok(pod)) => pod_fate(pod.as_ref()),
                    // The API server is not answering either: the lost connection stands.
                    _ => return result,
                };
            match fate {
                PodFate::OomKilled(limit) => {
                    self.oom.set(OomKill::new(limit));
                    return Ok(ExitStatus(137));
                }
                PodFate::Gone(reason) => {
                    return Err(Error::EnvironmentGone {
                        env: env.to_string(),
                        operation: "the command".to_owned(),
                        reason,
                    })
                }
                PodFate::Running
                    if lost || result.is_err() || started.elapsed() >= VERDICT_WINDOW =>
                {
                    tracing::debug!(address = %self.address, pod = %self.pod, "pod still running after the exec ended");
                    return result;
                }
                PodFate::Running => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_quantities() {
        assert_eq!(parse_memory("64Mi"), Some(64 << 20));
        assert_eq!(parse_memory("1G"), Some(1_000_000_000));
        assert_eq!(parse_memory("67108864"), Some(67_108_864));
        assert_eq!(parse_memory("100m"), None);
    }

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("a pod")
    }

    #[test]
    fn pod_fates() {
        assert!(matches!(pod_fate(None), PodFate::Gone(_)));
        let running = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": CONTAINER, "resources": {"limits": {"memory": "64Mi"}}}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": CONTAINER, "image": "i",
                "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]},
        }));
        assert_eq!(pod_fate(Some(&running)), PodFate::Running);
        let mut oom = running.clone();
        let st = oom
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap();
        st[0].state = Some(
            serde_json::from_value(serde_json::json!(
                {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
            ))
            .unwrap(),
        );
        assert_eq!(pod_fate(Some(&oom)), PodFate::OomKilled(Some(64 << 20)));
        let mut deleted = running;
        deleted.metadata.deletion_timestamp = oom.metadata.creation_timestamp.clone().or(Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-11-29T15:00:00Z".parse().unwrap(),
            ),
        ));
        assert!(matches!(pod_fate(Some(&deleted)), PodFate::Gone(r) if r.contains("deleted")));
    }
}
