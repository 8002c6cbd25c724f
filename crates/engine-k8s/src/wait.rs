//! Waiting for a pod to run, on a watch (not a poll loop), failing fast with the real reason.

use std::time::Duration;

use berth_engine_core::{Error, ImageRef, PullPolicy, Result, LABEL_MANAGED_BY, MANAGED_BY_VALUE};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};

use crate::errors::{self, BACKEND};
use crate::KubernetesEngine;

/// What a pod's status says about getting to Running.
enum Verdict {
    Running(String),
    Failed(Error),
    Waiting,
}

fn image_failure(image: &str, reason: &str, message: &str) -> Error {
    let lower = message.to_lowercase();
    let transient = [
        "unauthorized",
        "timeout",
        "connection refused",
        "no such host",
        "tls",
        "i/o",
    ]
    .iter()
    .any(|w| lower.contains(w));
    let detail = if message.is_empty() {
        reason.to_owned()
    } else {
        format!("{reason}: {message}")
    };
    if transient {
        Error::ImagePull {
            image: image.to_owned(),
            reason: detail,
        }
    } else {
        Error::ImageNotFound {
            image: image.to_owned(),
            reason: detail,
        }
    }
}

fn verdict(pod: &Pod, image: &str, what: &str) -> Verdict {
    let Some(status) = &pod.status else {
        return Verdict::Waiting;
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    for cs in status.container_statuses.iter().flatten() {
        if let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = waiting.reason.as_deref().unwrap_or("");
            let message = waiting.message.as_deref().unwrap_or("");
            match reason {
                "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => {
                    return Verdict::Failed(image_failure(image, reason, message));
                }
                "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError" => {
                    return Verdict::Failed(Error::invalid_spec(
                        "kubernetes",
                        format!("{what}'s container cannot start: {reason}: {message}"),
                    ));
                }
                _ => {}
            }
        }
        if let Some(t) = cs.state.as_ref().and_then(|s| s.terminated.as_ref()) {
            return Verdict::Failed(Error::invalid_spec(
                "image",
                format!(
                    "{what}'s keepalive exited with code {} ({}{}); the image needs `sleep`",
                    t.exit_code,
                    t.reason.as_deref().unwrap_or("?"),
                    t.message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
            ));
        }
    }
    for c in status.conditions.iter().flatten() {
        if c.type_ == "PodScheduled" && c.status == "False" {
            let message = c.message.clone().unwrap_or_default();
            if message.contains("persistentvolumeclaim") {
                return Verdict::Failed(Error::NotFound {
                    what: "persistent volume claim",
                    name: message,
                });
            }
            if c.reason.as_deref() == Some("Unschedulable") {
                return Verdict::Failed(Error::Unschedulable {
                    what: what.to_owned(),
                    reason: message,
                });
            }
        }
    }
    match status.phase.as_deref() {
        Some("Running") => {
            let running = status
                .container_statuses
                .iter()
                .flatten()
                .all(|cs| cs.state.as_ref().is_some_and(|s| s.running.is_some()));
            if running {
                Verdict::Running(name)
            } else {
                Verdict::Waiting
            }
        }
        Some(phase @ ("Succeeded" | "Failed")) => Verdict::Failed(Error::invalid_spec(
            "image",
            format!(
                "{what} ended ({phase}{}) before it ran",
                status
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        )),
        _ => Verdict::Waiting,
    }
}

/// Watches the pods of `selector` until one runs or fails, bounded by `timeout`.
async fn watch_pods(
    engine: &KubernetesEngine,
    selector: &str,
    image: &str,
    what: &str,
    timeout: Duration,
) -> Result<String> {
    let pods = engine.pod_api();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_seen = String::from("no pod yet");
    let work = async {
        loop {
            let list = pods
                .list(&ListParams::default().labels(selector))
                .await
                .map_err(|e| errors::api(&engine.address, "list pods", e))?;
            for pod in &list.items {
                match verdict(pod, image, what) {
                    Verdict::Running(name) => return Ok(name),
                    Verdict::Failed(e) => return Err(e),
                    Verdict::Waiting => last_seen = describe(pod),
                }
            }
            let version = list.metadata.resource_version.unwrap_or_else(|| "0".into());
            let params = WatchParams::default().labels(selector).timeout(60);
            let mut stream = pods
                .watch(&params, &version)
                .await
                .map_err(|e| errors::api(&engine.address, "watch pods", e))?
                .boxed();
            while let Some(event) = stream
                .try_next()
                .await
                .map_err(|e| errors::api(&engine.address, "watch pods", e))?
            {
                match event {
                    WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                        match verdict(&pod, image, what) {
                            Verdict::Running(name) => return Ok(name),
                            Verdict::Failed(e) => return Err(e),
                            Verdict::Waiting => last_seen = describe(&pod),
                        }
                    }
                    // Expired or otherwise broken: list again.
                    WatchEvent::Error(_) => break,
                    _ => {}
                }
            }
        }
    };
    match tokio::time::timeout_at(deadline, work).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout {
            operation: format!("waiting for {what} to run (last seen: {last_seen})"),
            after: timeout,
        }),
    }
}

fn describe(pod: &Pod) -> String {
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

/// Waits until the pod of Job `job` runs; returns the pod's name.
pub(crate) async fn until_running(
    engine: &KubernetesEngine,
    job: &str,
    image: &ImageRef,
) -> Result<String> {
    watch_pods(
        engine,
        &format!("job-name={job}"),
        image.as_str(),
        &format!("environment {job}"),
        engine.config.start_timeout,
    )
    .await
}

/// Checks `image` can run on the cluster with a short-lived pod: a cluster cannot be asked
/// whether a node has an image or a registry serves it.
pub(crate) async fn check_image(
    engine: &KubernetesEngine,
    image: &ImageRef,
    policy: PullPolicy,
) -> Result<()> {
    let name = format!(
        "berth-image-check-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let pull = match policy {
        PullPolicy::Always => "Always",
        PullPolicy::Never => "Never",
        _ => "IfNotPresent",
    };
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(
                [
                    (LABEL_MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned()),
                    ("berth.dev/image-check".to_owned(), name.clone()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "check".into(),
                image: Some(image.to_string()),
                image_pull_policy: Some(pull.into()),
                command: Some(vec!["sleep".into(), "30".into()]),
                ..Default::default()
            }],
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            termination_grace_period_seconds: Some(0),
            ..Default::default()
        }),
        status: None,
    };
    engine
        .pod_api()
        .create(&PostParams::default(), &pod)
        .await
        .map_err(|e| errors::api(&engine.address, "create image check pod", e))?;
    let result = watch_pods(
        engine,
        &format!("berth.dev/image-check={name}"),
        image.as_str(),
        "image check pod",
        engine.config.start_timeout,
    )
    .await;
    let _ = engine
        .pod_api()
        .delete(
            &name,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
        )
        .await;
    match result {
        Ok(_) => Ok(()),
        // An image without `sleep` still exists.
        Err(Error::InvalidSpec { .. }) => Ok(()),
        Err(e) => Err(e),
    }
    .map_err(|e: Error| match e {
        Error::Backend { .. } => Error::backend(BACKEND, "check image", e),
        other => other,
    })
}
