//! The waiting policy: what a pod (and what was said about it) means for getting to Running.
//!
//! A pure decision, fed one [`Observation`] at a time by the watch in `wait.rs`; it keeps
//! only what it must remember between looks (when scheduling first failed, the last pull
//! error, the last thing awaited). The policy, as the README states it:
//!
//! - **Fail at once** when the reason is definitive: the image does not exist or access to it
//!   is denied (`ErrImagePull`/`ImagePullBackOff` saying "not found", "manifest unknown",
//!   "pull access denied", "unauthorized", ...; `ErrImageNeverPull`; `InvalidImageName`), a
//!   claim that does not exist, a request larger than every node (when nodes can be read), an
//!   autoscaler that says it will not help (`NotTriggerScaleUp`), `CreateContainerConfigError`
//!   and the other container creation errors, and a pod the API server refuses to create
//!   (admission: Pod Security, ResourceQuota, LimitRange; the Job's `FailedCreate` event).
//! - **Keep waiting, saying what is awaited**, while a scale-up was triggered
//!   (`TriggeredScaleUp` from cluster-autoscaler, `Nominated` from Karpenter), a claim is being
//!   bound ("unbound immediate PersistentVolumeClaims", `WaitForFirstConsumer`), or the
//!   kubelet retries a pull that failed for a transient reason (a timeout, a refused
//!   connection, a DNS failure, a rate limit, a 5xx).
//! - An unschedulable pod with no autoscaler event yet waits `scale_up_grace` for one (an
//!   autoscaler scans every ~10 s), then fails with the scheduler's message.
//! - Everything is bounded by the start timeout ([`KubernetesConfig::start_timeout`](crate::KubernetesConfig)); the caller then fails with
//!   [`Error::Timeout`] naming the last thing awaited ([`Awaiting`]).
//!
//! Longer than 500 lines for a reason: about half is the fixture tests of the decision
//! table (one per reason above), which belong next to it.

use std::time::Duration;

use berth_engine_core::Error;
use k8s_openapi::api::core::v1::{Event, Pod};

use crate::errors::BACKEND;

/// What a wait is waiting for: shown on the way (tracing) and named by the timeout.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Awaiting {
    /// The Job controller has not created the pod yet.
    Pod,
    /// The scheduler has not placed the pod and no autoscaler has answered yet.
    Scheduling(String),
    /// An autoscaler is adding a node for the pod.
    ScaleUp(String),
    /// A claim the pod needs is being bound or provisioned.
    ClaimBinding(String),
    /// The kubelet retries a pull that failed for a transient reason.
    PullRetry(String),
    /// The container is being created or started.
    Container(String),
}

impl std::fmt::Display for Awaiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pod => f.write_str("the Job controller to create the pod"),
            Self::Scheduling(m) => write!(f, "a node with room (scheduler: {m})"),
            Self::ScaleUp(m) => write!(f, "a scale-up ({m})"),
            Self::ClaimBinding(m) => write!(f, "a volume claim to bind ({m})"),
            Self::PullRetry(m) => write!(f, "the kubelet to retry the image pull ({m})"),
            Self::Container(m) => write!(f, "the container to start ({m})"),
        }
    }
}

/// What to do after one look.
#[derive(Debug)]
pub(crate) enum Decision {
    /// The pod runs; its name.
    Running(String),
    /// Give up now with this error.
    Fail(Error),
    /// Keep waiting for this.
    Wait(Awaiting),
}

/// One look at the pod and what was said about it.
#[derive(Debug, Default)]
pub(crate) struct Observation<'a> {
    /// The pod, once there is one.
    pub(crate) pod: Option<&'a Pod>,
    /// Events about the pod and its Job, in the order the server lists them.
    pub(crate) events: &'a [Event],
    /// Each node's allocatable (CPU cores, memory bytes); `None` when nodes cannot be read.
    pub(crate) nodes: Option<&'a [(f64, f64)]>,
    /// Time since the wait began.
    pub(crate) elapsed: Duration,
}

/// The policy's memory between looks.
#[derive(Debug)]
pub(crate) struct Policy {
    what: String,
    image: String,
    scale_up_grace: Duration,
    unschedulable_since: Option<Duration>,
    last_pull_error: Option<String>,
}

/// A pull error that no retry can fix: the image (or the right to read it) is not there.
pub(crate) fn pull_error_is_definitive(message: &str) -> bool {
    let m = message.to_lowercase();
    [
        "not found",
        "manifest unknown",
        "name unknown",
        "pull access denied",
        "repository does not exist",
        "unauthorized",
        "authentication required",
        "access denied",
        "access to the resource is denied",
        "insufficient_scope",
        "invalid reference format",
    ]
    .iter()
    .any(|w| m.contains(w))
}

/// Parses a quantity (`500m`, `2`, `8049408Ki`, `1.5Gi`, `1e3`) to base units.
pub(crate) fn quantity(text: &str) -> Option<f64> {
    let t = text.trim();
    let split = t
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        _ => return None,
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// The pod's CPU (cores) and memory (bytes) requests, limits standing in for missing ones,
/// as the scheduler counts them.
fn pod_requests(pod: &Pod) -> (f64, f64) {
    let mut total = (0.0, 0.0);
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let r = c.resources.as_ref();
        let get = |k: &str| {
            r.and_then(|r| r.requests.as_ref().and_then(|q| q.get(k)))
                .or_else(|| r.and_then(|r| r.limits.as_ref().and_then(|q| q.get(k))))
                .and_then(|q| quantity(&q.0))
                .unwrap_or(0.0)
        };
        total.0 += get("cpu");
        total.1 += get("memory");
    }
    total
}

/// The latest event with one of `reasons`.
fn latest<'e>(events: &'e [Event], reasons: &[&str]) -> Option<&'e Event> {
    events
        .iter()
        .filter(|e| e.reason.as_deref().is_some_and(|r| reasons.contains(&r)))
        .max_by_key(|e| {
            e.last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or_else(|| e.event_time.as_ref().map(|t| t.0))
        })
}

fn said(e: &Event) -> String {
    let from = e
        .source
        .as_ref()
        .and_then(|s| s.component.clone())
        .or_else(|| e.reporting_component.clone())
        .unwrap_or_default();
    let reason = e.reason.clone().unwrap_or_default();
    let message = e.message.clone().unwrap_or_default();
    if from.is_empty() {
        format!("{reason}: {message}")
    } else {
        format!("{from}: {reason}: {message}")
    }
}

/// What to tell a caller refused by admission, by the server's message.
pub(crate) fn refusal_hint(message: &str) -> &'static str {
    if message.contains("violates PodSecurity") {
        "the namespace enforces a Pod Security level (label pod-security.kubernetes.io/enforce); berth's restricted security profile passes every level"
    } else if message.contains("exceeded quota") || message.contains("failed quota") {
        "a ResourceQuota of the namespace refuses it (kubectl describe resourcequota); lower the environment's resources or free quota"
    } else if message.contains("per Container") || message.contains("per Pod") {
        "a LimitRange of the namespace refuses it (kubectl describe limitrange); fit the environment's resources into its bounds"
    } else {
        "grant the service account or user RBAC for it (kubectl auth can-i; berth render --rbac prints a Role)"
    }
}

/// A refusal by the API server of a pod berth (or its Job) asked for.
pub(crate) fn refused(address: &str, action: &str, message: &str) -> Error {
    Error::Forbidden {
        backend: BACKEND,
        address: address.to_owned(),
        action: action.to_owned(),
        reason: format!("{message}; {}", refusal_hint(message)),
    }
}

impl Policy {
    /// A policy for `what` ("environment berth-x") running `image`.
    pub(crate) fn new(what: &str, image: &str, scale_up_grace: Duration) -> Self {
        Self {
            what: what.to_owned(),
            image: image.to_owned(),
            scale_up_grace,
            unschedulable_since: None,
            last_pull_error: None,
        }
    }

    /// Decides on one look; `address` names the cluster in errors.
    pub(crate) fn decide(&mut self, seen: &Observation<'_>, address: &str) -> Decision {
        let Some(pod) = seen.pod else {
            // No pod: admission may have refused the Job's (its FailedCreate event says so).
            if let Some(e) = latest(seen.events, &["FailedCreate"]) {
                let message = e.message.clone().unwrap_or_default();
                if message.contains("forbidden") {
                    return Decision::Fail(refused(
                        address,
                        &format!("create the pod of {}", self.what),
                        &message,
                    ));
                }
                if message.contains("is invalid") {
                    return Decision::Fail(Error::invalid_spec(
                        crate::errors::field_in_message(&message).unwrap_or("pod"),
                        format!("the API server refused the pod of {}: {message}", self.what),
                    ));
                }
            }
            // Or the Job ended before its pod ran: its deadline (the environment's maximum
            // lifetime) ran out, or its pods failed past the back-off limit, and the Job
            // controller removed them. Nothing more will come.
            if let Some(e) = latest(seen.events, &["DeadlineExceeded", "BackoffLimitExceeded"]) {
                let why = if e.reason.as_deref() == Some("DeadlineExceeded") {
                    "its maximum lifetime (the Job's activeDeadlineSeconds) ran out before it ran"
                } else {
                    "its pod failed more often than the Job's backoffLimit allows"
                };
                return Decision::Fail(Error::EnvironmentGone {
                    env: self.what.clone(),
                    operation: "the start".into(),
                    reason: format!("{why} ({})", said(e)),
                });
            }
            return Decision::Wait(Awaiting::Pod);
        };
        if let Some(d) = self.containers(pod) {
            return d;
        }
        // A Secret or ConfigMap volume whose object (or an item's key) is missing: the
        // kubelet retries the mount for ever, the pod stays ContainerCreating.
        if let Some(e) = latest(seen.events, &["FailedMount"]) {
            let message = e.message.clone().unwrap_or_default();
            let missing = (message.contains("secret \"") || message.contains("configmap \""))
                && message.contains("not found")
                || message.contains("references non-existent");
            if missing {
                return Decision::Fail(Error::invalid_spec(
                    "mounts",
                    format!("{} cannot mount a volume ({})", self.what, said(e)),
                ));
            }
        }
        if let Some(d) = self.scheduling(pod, seen) {
            return d;
        }
        self.unschedulable_since = None;
        let Some(status) = &pod.status else {
            return Decision::Wait(Awaiting::Container("Pending".into()));
        };
        match status.phase.as_deref() {
            Some("Running") => {
                let running = status
                    .container_statuses
                    .iter()
                    .flatten()
                    .all(|cs| cs.state.as_ref().is_some_and(|s| s.running.is_some()));
                if running {
                    Decision::Running(pod.metadata.name.clone().unwrap_or_default())
                } else {
                    Decision::Wait(Awaiting::Container(describe(pod)))
                }
            }
            Some(phase @ ("Succeeded" | "Failed")) => Decision::Fail(Error::invalid_spec(
                "image",
                format!(
                    "{} ended ({phase}{}) before it ran",
                    self.what,
                    status
                        .reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ),
            )),
            _ => Decision::Wait(Awaiting::Container(describe(pod))),
        }
    }

    /// The containers' own verdict: pulls, creation errors, an early exit.
    fn containers(&mut self, pod: &Pod) -> Option<Decision> {
        let status = pod.status.as_ref()?;
        for cs in status.container_statuses.iter().flatten() {
            if let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
                let reason = waiting.reason.as_deref().unwrap_or("");
                let message = waiting.message.clone().unwrap_or_default();
                match reason {
                    "ErrImageNeverPull" | "InvalidImageName" => {
                        return Some(Decision::Fail(self.image_error(reason, &message)));
                    }
                    "ErrImagePull" | "ImagePullBackOff" => {
                        // The back-off's own message only says "Back-off pulling image": the
                        // reason is the last pull error seen.
                        if reason == "ErrImagePull" && !message.is_empty() {
                            self.last_pull_error = Some(message.clone());
                        }
                        let cause = self.last_pull_error.clone().unwrap_or(message);
                        if pull_error_is_definitive(&cause) {
                            return Some(Decision::Fail(self.image_error(reason, &cause)));
                        }
                        return Some(Decision::Wait(Awaiting::PullRetry(format!(
                            "{reason}: {cause}"
                        ))));
                    }
                    "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError" => {
                        return Some(Decision::Fail(Error::invalid_spec(
                            // The container's configuration as the kubelet assembled it
                            // (env and volume references, user, security context).
                            "spec.template.spec.containers[0]",
                            format!(
                                "{}'s container cannot start: {reason}: {message}",
                                self.what
                            ),
                        )));
                    }
                    _ => {}
                }
            }
            if let Some(t) = cs.state.as_ref().and_then(|s| s.terminated.as_ref()) {
                return Some(Decision::Fail(Error::invalid_spec(
                    "image",
                    format!(
                        "{}'s keepalive exited with code {} ({}{}); the image needs `sleep`",
                        self.what,
                        t.exit_code,
                        t.reason.as_deref().unwrap_or("?"),
                        t.message
                            .as_deref()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    ),
                )));
            }
        }
        None
    }

    fn image_error(&self, reason: &str, message: &str) -> Error {
        let detail = if message.is_empty() {
            reason.to_owned()
        } else {
            format!("{reason}: {message}")
        };
        Error::ImageNotFound {
            image: self.image.clone(),
            reason: detail,
        }
    }

    /// The scheduler's verdict, with the autoscaler's word on it.
    fn scheduling(&mut self, pod: &Pod, seen: &Observation<'_>) -> Option<Decision> {
        let status = pod.status.as_ref()?;
        let cond = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
        let message = cond.message.clone().unwrap_or_default();
        let lower = message.to_lowercase();
        if lower.contains("persistentvolumeclaim \"") && lower.contains("not found") {
            return Some(Decision::Fail(Error::NotFound {
                what: "persistent volume claim",
                name: message,
            }));
        }
        if lower.contains("unbound immediate persistentvolumeclaims")
            || lower.contains("waiting for first consumer")
            || lower.contains("waitforfirstconsumer")
        {
            return Some(Decision::Wait(Awaiting::ClaimBinding(message)));
        }
        if cond.reason.as_deref() != Some("Unschedulable") {
            return Some(Decision::Wait(Awaiting::Scheduling(message)));
        }
        let scale = latest(
            seen.events,
            &["TriggeredScaleUp", "Nominated", "NotTriggerScaleUp"],
        );
        match scale {
            Some(e) if e.reason.as_deref() == Some("NotTriggerScaleUp") => {
                return Some(Decision::Fail(Error::Unschedulable {
                    what: self.what.clone(),
                    reason: format!("{message} (and {})", said(e)),
                }));
            }
            Some(e) => return Some(Decision::Wait(Awaiting::ScaleUp(said(e)))),
            None => {}
        }
        let (cpu, memory) = pod_requests(pod);
        if let Some(nodes) = seen.nodes.filter(|n| !n.is_empty()) {
            let fits_one = nodes.iter().any(|(c, m)| cpu <= *c + 1e-9 && memory <= *m);
            if !fits_one {
                let (max_cpu, max_mem) = nodes
                    .iter()
                    .fold((0.0_f64, 0.0_f64), |a, n| (a.0.max(n.0), a.1.max(n.1)));
                return Some(Decision::Fail(Error::Unschedulable {
                    what: self.what.clone(),
                    reason: format!(
                        "{message} (it requests {cpu} CPU and {} MiB; the largest node offers {max_cpu} CPU and {} MiB)",
                        (memory / 1_048_576.0).round(),
                        (max_mem / 1_048_576.0).round()
                    ),
                }));
            }
        }
        let since = *self.unschedulable_since.get_or_insert(seen.elapsed);
        if seen.elapsed.saturating_sub(since) >= self.scale_up_grace {
            return Some(Decision::Fail(Error::Unschedulable {
                what: self.what.clone(),
                reason: format!(
                    "{message} (no autoscaler announced a scale-up within {:?})",
                    self.scale_up_grace
                ),
            }));
        }
        Some(Decision::Wait(Awaiting::Scheduling(message)))
    }
}

/// "Pending, ContainerCreating": the phase and the first container's waiting reason.
pub(crate) fn describe(pod: &Pod) -> String {
    let status = pod.status.as_ref();
    let phase = status
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Unknown".into());
    let waiting = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.clone());
    match waiting {
        Some(w) => format!("{phase}, {w}"),
        None => phase,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_engine_core::ErrorKind;
    use serde_json::json;

    const ADDR: &str = "https://cluster/ns";

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "berth-x-abcde"},
            "spec": {"containers": [{"name": "env", "image": "img:1",
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                              "limits": {"cpu": "2", "memory": "4Gi"}}}]},
            "status": status,
        }))
        .expect("pod")
    }

    fn waiting(reason: &str, message: &str) -> Pod {
        pod(json!({"phase": "Pending", "containerStatuses": [{
            "name": "env", "image": "img:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}}}]}))
    }

    fn unschedulable(message: &str) -> Pod {
        pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
            "status": "False", "reason": "Unschedulable", "message": message}]}),
        )
    }

    fn event(reason: &str, message: &str, component: &str, at: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "berth-x-abcde"},
            "reason": reason, "message": message, "source": {"component": component},
            "lastTimestamp": at,
        }))
        .expect("event")
    }

    fn policy() -> Policy {
        Policy::new("environment berth-x", "img:1", Duration::from_secs(20))
    }

    fn look(p: &mut Policy, pod: Option<&Pod>, events: &[Event], secs: u64) -> Decision {
        let nodes = [(4.0, 16.0 * 1024.0 * 1024.0 * 1024.0)];
        p.decide(
            &Observation {
                pod,
                events,
                nodes: Some(&nodes),
                elapsed: Duration::from_secs(secs),
            },
            ADDR,
        )
    }

    fn fails(d: Decision) -> Error {
        match d {
            Decision::Fail(e) => e,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    fn awaits(d: Decision) -> Awaiting {
        match d {
            Decision::Wait(a) => a,
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    #[test]
    fn definitive_image_errors_fail_at_once() {
        for (reason, message) in [
            ("ErrImageNeverPull", "Container image \"img:1\" is not present with pull policy of Never"),
            ("InvalidImageName", "Failed to apply default image tag \"IMG\": couldn't parse image name"),
            ("ErrImagePull", "Failed to pull image \"img:1\": rpc error: code = NotFound desc = failed to pull and unpack image \"docker.io/library/img:1\": failed to resolve reference \"docker.io/library/img:1\": docker.io/library/img:1: not found"),
            ("ErrImagePull", "Failed to pull image \"img:1\": Error response from daemon: pull access denied for img, repository does not exist or may require 'docker login': denied: requested access to the resource is denied"),
            ("ErrImagePull", "Failed to pull image \"reg/img:1\": failed to authorize: failed to fetch anonymous token: unexpected status: 401 Unauthorized"),
        ] {
            let e = fails(look(&mut policy(), Some(&waiting(reason, message)), &[], 0));
            assert_eq!(e.kind(), ErrorKind::ImageNotFound, "{reason}: {message}");
            assert!(e.to_string().contains(message), "{e}");
        }
    }

    #[test]
    fn transient_pull_errors_wait_and_the_back_off_remembers_why() {
        let mut p = policy();
        let transient = "Failed to pull image \"img:1\": Error response from daemon: toomanyrequests: You have reached your pull rate limit.";
        let a = awaits(look(
            &mut p,
            Some(&waiting("ErrImagePull", transient)),
            &[],
            0,
        ));
        assert!(
            matches!(&a, Awaiting::PullRetry(m) if m.contains("toomanyrequests")),
            "{a:?}"
        );
        let backoff = waiting("ImagePullBackOff", "Back-off pulling image \"img:1\"");
        let a = awaits(look(&mut p, Some(&backoff), &[], 5));
        assert!(a.to_string().contains("toomanyrequests"), "{a}");
        for m in [
            "dial tcp: lookup registry-1.docker.io on 10.0.0.53:53: no such host",
            "net/http: TLS handshake timeout",
            "received unexpected HTTP status: 503 Service Unavailable",
        ] {
            let d = look(&mut policy(), Some(&waiting("ErrImagePull", m)), &[], 0);
            assert!(matches!(d, Decision::Wait(Awaiting::PullRetry(_))), "{m}");
        }
    }

    #[test]
    fn a_job_that_ended_before_its_pod_ran_fails_at_once() {
        let e = fails(look(
            &mut policy(),
            None,
            &[event(
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
                "job-controller",
                "2026-01-01T00:00:00Z",
            )],
            3,
        ));
        assert_eq!(
            e.kind(),
            berth_engine_core::ErrorKind::EnvironmentGone,
            "{e}"
        );
        assert!(e.to_string().contains("maximum lifetime"), "{e}");
        let e = fails(look(
            &mut policy(),
            None,
            &[event(
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
                "job-controller",
                "2026-01-01T00:00:00Z",
            )],
            3,
        ));
        assert!(e.to_string().contains("backoffLimit"), "{e}");
        assert!(matches!(
            look(&mut policy(), None, &[], 3),
            Decision::Wait(Awaiting::Pod)
        ));
    }

    #[test]
    fn container_config_errors_fail_at_once() {
        let e = fails(look(
            &mut policy(),
            Some(&waiting(
                "CreateContainerConfigError",
                "secret \"s\" not found",
            )),
            &[],
            0,
        ));
        assert_eq!(e.kind(), ErrorKind::InvalidSpec);
        assert!(e.to_string().contains("secret \"s\" not found"), "{e}");
    }

    #[test]
    fn a_missing_secret_or_config_map_volume_fails_at_once() {
        let creating = waiting("ContainerCreating", "");
        for message in [
            "MountVolume.SetUp failed for volume \"tls\" : secret \"tls\" not found",
            "MountVolume.SetUp failed for volume \"conf\" : configmap references non-existent config key: app.yaml",
        ] {
            let events = [event("FailedMount", message, "kubelet", "2026-01-01T00:00:00Z")];
            let e = fails(look(&mut policy(), Some(&creating), &events, 0));
            assert_eq!(e.kind(), ErrorKind::InvalidSpec);
            assert!(e.to_string().contains(message), "{e}");
        }
        // Another mount failure (a slow attach) is awaited.
        let slow = [event(
            "FailedMount",
            "Unable to attach or mount volumes: timed out waiting for the condition",
            "kubelet",
            "2026-01-01T00:00:00Z",
        )];
        awaits(look(&mut policy(), Some(&creating), &slow, 0));
    }

    #[test]
    fn a_missing_claim_fails_and_a_binding_claim_is_awaited() {
        let missing = unschedulable("0/1 nodes are available: persistentvolumeclaim \"ws\" not found. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.");
        assert_eq!(
            fails(look(&mut policy(), Some(&missing), &[], 0)).kind(),
            ErrorKind::NotFound
        );
        let unbound = unschedulable("0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.");
        let mut p = policy();
        for secs in [0, 30, 200] {
            let a = awaits(look(&mut p, Some(&unbound), &[], secs));
            assert!(matches!(a, Awaiting::ClaimBinding(_)), "{a:?}");
        }
    }

    #[test]
    fn unschedulable_waits_for_a_scale_up_the_autoscaler_announced() {
        let full = unschedulable("0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.");
        let mut p = policy();
        let events = [
            event(
                "FailedScheduling",
                "0/3 nodes are available: 3 Insufficient cpu.",
                "default-scheduler",
                "2026-11-29T10:00:00Z",
            ),
            event(
                "TriggeredScaleUp",
                "pod triggered scale-up: [{pool-a 3->4 (max: 10)}]",
                "cluster-autoscaler",
                "2026-11-29T10:00:05Z",
            ),
        ];
        for secs in [0, 25, 120] {
            let a = awaits(look(&mut p, Some(&full), &events, secs));
            assert!(
                matches!(&a, Awaiting::ScaleUp(m) if m.contains("pool-a 3->4")),
                "{a:?}"
            );
        }
        let karpenter = [event(
            "Nominated",
            "Pod should schedule on: nodeclaim/default-x2k9p",
            "karpenter",
            "2026-11-29T10:00:05Z",
        )];
        let a = awaits(look(&mut policy(), Some(&full), &karpenter, 60));
        assert!(a.to_string().contains("nodeclaim/default-x2k9p"), "{a}");
    }

    #[test]
    fn unschedulable_without_an_autoscaler_fails_after_the_grace() {
        let full = unschedulable("0/1 nodes are available: 1 Insufficient cpu.");
        let mut p = policy();
        assert!(matches!(
            look(&mut p, Some(&full), &[], 3),
            Decision::Wait(Awaiting::Scheduling(_))
        ));
        assert!(matches!(
            look(&mut p, Some(&full), &[], 22),
            Decision::Wait(_)
        ));
        let e = fails(look(&mut p, Some(&full), &[], 23));
        assert_eq!(e.kind(), ErrorKind::Unschedulable);
        assert!(e.to_string().contains("Insufficient cpu"), "{e}");
    }

    #[test]
    fn an_autoscaler_that_will_not_help_fails_at_once() {
        let full = unschedulable("0/3 nodes are available: 3 Insufficient memory.");
        let events = [
            event(
                "TriggeredScaleUp",
                "pod triggered scale-up: [{pool-a 3->4 (max: 4)}]",
                "cluster-autoscaler",
                "2026-11-29T10:00:05Z",
            ),
            event(
                "NotTriggerScaleUp",
                "pod didn't trigger scale-up: 1 max node group size reached",
                "cluster-autoscaler",
                "2026-11-29T10:02:00Z",
            ),
        ];
        let e = fails(look(&mut policy(), Some(&full), &events, 0));
        assert_eq!(e.kind(), ErrorKind::Unschedulable);
        assert!(e.to_string().contains("max node group size reached"), "{e}");
    }

    #[test]
    fn a_request_larger_than_every_node_fails_at_once() {
        let mut big = unschedulable("0/1 nodes are available: 1 Insufficient memory.");
        big.spec.as_mut().expect("spec").containers[0].resources =
            serde_json::from_value(json!({"requests": {"memory": "64Gi"}})).ok();
        let e = fails(look(&mut policy(), Some(&big), &[], 0));
        assert_eq!(e.kind(), ErrorKind::Unschedulable);
        assert!(
            e.to_string()
                .contains("largest node offers 4 CPU and 16384 MiB"),
            "{e}"
        );
        // Without node sizes (RBAC), the grace applies instead.
        let mut p = policy();
        let d = p.decide(
            &Observation {
                pod: Some(&big),
                ..Observation::default()
            },
            ADDR,
        );
        assert!(
            matches!(d, Decision::Wait(Awaiting::Scheduling(_))),
            "{d:?}"
        );
    }

    #[test]
    fn admission_refusals_of_the_jobs_pod_fail_with_the_servers_message() {
        let psa = "Error creating: pods \"berth-x-abcde-q2w\" is forbidden: violates PodSecurity \"restricted:latest\": runAsNonRoot != true (pod or container \"env\" must set securityContext.runAsNonRoot=true)";
        let e = fails(look(
            &mut policy(),
            None,
            &[event(
                "FailedCreate",
                psa,
                "job-controller",
                "2026-11-29T10:00:00Z",
            )],
            0,
        ));
        assert_eq!(e.kind(), ErrorKind::Forbidden);
        assert!(
            e.to_string().contains("violates PodSecurity")
                && e.to_string().contains("restricted security profile"),
            "{e}"
        );
        let quota = "Error creating: pods \"berth-x-abcde-q2w\" is forbidden: exceeded quota: q, requested: limits.memory=4Gi, used: limits.memory=0, limited: limits.memory=1Gi";
        let e = fails(look(
            &mut policy(),
            None,
            &[event(
                "FailedCreate",
                quota,
                "job-controller",
                "2026-11-29T10:00:00Z",
            )],
            0,
        ));
        assert!(
            e.to_string().contains("exceeded quota") && e.to_string().contains("ResourceQuota"),
            "{e}"
        );
        assert!(matches!(
            look(&mut policy(), None, &[], 0),
            Decision::Wait(Awaiting::Pod)
        ));
    }

    #[test]
    fn a_running_pod_is_running() {
        let p = pod(json!({"phase": "Running", "containerStatuses": [{
            "name": "env", "image": "img:1", "imageID": "", "ready": true, "restartCount": 0,
            "state": {"running": {"startedAt": "2026-11-29T10:00:00Z"}}}]}));
        assert!(
            matches!(look(&mut policy(), Some(&p), &[], 0), Decision::Running(n) if n == "berth-x-abcde")
        );
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(quantity("500m"), Some(0.5));
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("8Ki"), Some(8192.0));
        assert_eq!(quantity("1e3"), Some(1000.0));
        assert_eq!(quantity("1.5Gi"), Some(1.5 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(quantity("3x"), None);
    }
}
