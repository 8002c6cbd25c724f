//! Waiting for a pod to run, on a watch (not a poll loop), by the policy of `policy.rs`: fail
//! at once for definitive reasons, wait (saying what for) while the cluster works on it, and
//! time out naming what was awaited last.

use std::time::Duration;

use berth_engine_core::{EnvironmentSpec, Error, PullPolicy, Result};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::Api;

use crate::errors::{self, BACKEND};
use crate::policy::{self, Awaiting, Decision, Observation, Policy};
use crate::{manifest, KubernetesEngine};

/// Each node's allocatable (CPU cores, memory bytes), or `None` when nodes cannot be read
/// (a namespaced Role does not grant it; the policy then waits its grace instead).
async fn node_sizes(engine: &KubernetesEngine) -> Option<Vec<(f64, f64)>> {
    let nodes: Api<Node> = Api::all(engine.client.clone());
    match nodes.list(&ListParams::default()).await {
        Ok(list) => Some(
            list.items
                .iter()
                .filter_map(|n| {
                    let a = n.status.as_ref()?.allocatable.as_ref()?;
                    Some((
                        policy::quantity(&a.get("cpu")?.0)?,
                        policy::quantity(&a.get("memory")?.0)?,
                    ))
                })
                .collect(),
        ),
        Err(e) => {
            tracing::debug!(error = %e, "cannot list nodes; an oversized request waits the scale-up grace");
            None
        }
    }
}

/// Events about the objects named `names` (the pod, its Job); none when they cannot be read.
async fn events_about(engine: &KubernetesEngine, names: &[&str]) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(engine.client.clone(), &engine.config.namespace);
    let mut out = Vec::new();
    for name in names {
        let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
        match api.list(&params).await {
            Ok(list) => out.extend(list.items),
            Err(e) => tracing::debug!(error = %e, "cannot list events; scale-ups go unseen"),
        }
    }
    out
}

/// What a wait watches: the pods of `selector`, made by Job `job` when there is one.
struct Target<'a> {
    selector: String,
    job: Option<&'a str>,
    image: &'a str,
    what: &'a str,
}

/// Watches the target's pods until one runs or the policy gives up, bounded by `timeout`;
/// then fails with what was awaited last.
async fn watch_pods(
    engine: &KubernetesEngine,
    target: &Target<'_>,
    timeout: Duration,
) -> Result<String> {
    let pods = engine.pod_api();
    let started = tokio::time::Instant::now();
    let mut policy = Policy::new(target.what, target.image, engine.config.scale_up_grace);
    // Shared by the work and the timeout that names it.
    let last = std::sync::Mutex::new(Awaiting::Pod);
    let nodes = node_sizes(engine).await;
    let nodes = nodes.as_deref();
    let work = async {
        loop {
            let list = pods
                .list(&ListParams::default().labels(&target.selector))
                .await
                .map_err(|e| errors::api(&engine.address, "list pods", e))?;
            let mut seen: Vec<Option<&Pod>> = list.items.iter().map(Some).collect();
            if seen.is_empty() {
                seen.push(None);
            }
            for pod in seen {
                match look(engine, target, &mut policy, pod, nodes, started).await {
                    Decision::Running(name) => return Ok(name),
                    Decision::Fail(e) => return Err(e),
                    Decision::Wait(a) => note(target.what, &last, a),
                }
            }
            // Autoscaler and Job events change no pod, and the scale-up grace is a time:
            // while they matter, look again soon.
            let secs = match *last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
            {
                Awaiting::Pod | Awaiting::Scheduling(_) => 2,
                // A node takes minutes to join; its events need no haste.
                Awaiting::ScaleUp(_) => 5,
                _ => 30,
            };
            let version = list.metadata.resource_version.unwrap_or_else(|| "0".into());
            let params = WatchParams::default()
                .labels(&target.selector)
                .timeout(secs);
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
                        match look(engine, target, &mut policy, Some(&pod), nodes, started).await {
                            Decision::Running(name) => return Ok(name),
                            Decision::Fail(e) => return Err(e),
                            Decision::Wait(a) => note(target.what, &last, a),
                        }
                    }
                    // Expired or otherwise broken: list again.
                    WatchEvent::Error(_) => break,
                    _ => {}
                }
            }
        }
    };
    let mut work = std::pin::pin!(work);
    tokio::select! {
        result = &mut work => result.map_err(|e| lost_if_transport(engine, target, e)),
        lost = heartbeat(engine, target) => Err(lost),
        () = tokio::time::sleep_until(started + timeout) => Err(Error::Timeout {
            operation: format!(
                "waiting for {} to run (still awaiting {})",
                target.what,
                last.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
            ),
            after: timeout,
        }),
    }
}

/// How often, and how patiently, a wait checks that the API server still answers: a watch
/// on a half-open connection (the peer went silent without closing) would otherwise look
/// like a quiet cluster until `start_timeout`.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const HEARTBEAT_PATIENCE: Duration = Duration::from_secs(2);

/// The error of a wait whose connection to the API server was lost.
fn lost(
    engine: &KubernetesEngine,
    target: &Target<'_>,
    source: Option<berth_engine_core::BoxError>,
) -> Error {
    Error::ConnectionLost {
        backend: BACKEND,
        address: engine.address.clone(),
        operation: format!("waiting for {} to run", target.what),
        hint: "the environment may have been created; once the API server answers again, `berth ls` shows it and `berth gc` removes it".to_owned(),
        source,
    }
}

/// A transport failure while listing or watching (the server closed or reset the connection)
/// is a lost connection, not an unavailable server: the Job was already created.
fn lost_if_transport(engine: &KubernetesEngine, target: &Target<'_>, err: Error) -> Error {
    match err {
        Error::Unavailable { source, .. } => lost(engine, target, source),
        other => other,
    }
}

/// Resolves only when the API server stops answering a cheap request (`GET /version`)
/// within [`HEARTBEAT_PATIENCE`] (a silent peer) or fails at the transport (a closed one),
/// with the [`Error::ConnectionLost`] to report. Runs next to a wait, never ends otherwise.
async fn heartbeat(engine: &KubernetesEngine, target: &Target<'_>) -> Error {
    loop {
        tokio::time::sleep(HEARTBEAT_EVERY).await;
        match tokio::time::timeout(HEARTBEAT_PATIENCE, engine.client.apiserver_version()).await {
            Err(_) => {
                return lost(
                    engine,
                    target,
                    Some(
                        format!(
                        "the API server did not answer GET /version within {HEARTBEAT_PATIENCE:?}"
                    )
                        .into(),
                    ),
                )
            }
            Ok(Err(
                e @ (kube::Error::HyperError(_)
                | kube::Error::Service(_)
                | kube::Error::HttpError(_)),
            )) => return lost(engine, target, Some(Box::new(e))),
            // An answer of any kind (even a refusal) means the server is there.
            Ok(_) => {}
        }
    }
}

/// One decision. Events are fetched only while the pod is missing or not yet bound to a
/// node: there, Job controller and autoscaler events are what the policy needs.
async fn look(
    engine: &KubernetesEngine,
    target: &Target<'_>,
    policy: &mut Policy,
    pod: Option<&Pod>,
    nodes: Option<&[(f64, f64)]>,
    started: tokio::time::Instant,
) -> Decision {
    let bound = pod.is_some_and(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()));
    let events = if bound {
        Vec::new()
    } else {
        let mut names: Vec<&str> = target.job.into_iter().collect();
        names.extend(pod.and_then(|p| p.metadata.name.as_deref()));
        events_about(engine, &names).await
    };
    policy.decide(
        &Observation {
            pod,
            events: &events,
            nodes,
            elapsed: started.elapsed(),
        },
        &engine.address,
    )
}

/// Records what is awaited, telling tracing when it changes.
fn note(what: &str, last: &std::sync::Mutex<Awaiting>, now: Awaiting) {
    let mut last = last
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *last != now {
        tracing::info!("{what}: waiting for {now}");
        crate::progress::waiting_for(&now);
        *last = now;
    }
}

/// Waits until the pod of Job `job` runs; returns the pod's name.
pub(crate) async fn until_running(
    engine: &KubernetesEngine,
    job: &str,
    spec: &EnvironmentSpec,
) -> Result<String> {
    watch_pods(
        engine,
        &Target {
            selector: format!("job-name={job}"),
            job: Some(job),
            image: spec.image.as_str(),
            what: &format!("environment {job}"),
        },
        engine.config.start_timeout,
    )
    .await
}

/// Checks the image of `spec` runs on the cluster with a short-lived pod built exactly like
/// the environment's (security profile, resources, service account, pull policy), so that
/// admission and quotas judge it as they will judge the environment. A cluster cannot be
/// asked whether a node has an image or a registry serves it; running it is the only test.
/// `PullPolicy::Always` forces `imagePullPolicy: Always`; otherwise the environment's policy
/// (`kubernetes.image_pull_policy`) holds, never `Never`: a node without the image cached
/// would fail a check the environment itself would pass.
pub(crate) async fn check_image(
    engine: &KubernetesEngine,
    spec: &EnvironmentSpec,
    pull: PullPolicy,
) -> Result<()> {
    let name = format!(
        "berth-image-check-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let job = manifest::job(spec, &engine.config, &name, crate::now_unix())?;
    let template = job.spec.map(|s| s.template).unwrap_or_default();
    let mut labels = template.metadata.and_then(|m| m.labels).unwrap_or_default();
    labels.insert("berth.dev/image-check".to_owned(), name.clone());
    let mut pod_spec = template.spec.unwrap_or_default();
    if matches!(pull, PullPolicy::Always) {
        for c in &mut pod_spec.containers {
            c.image_pull_policy = Some("Always".into());
        }
    }
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    };
    engine
        .pod_api()
        .create(&PostParams::default(), &pod)
        .await
        .map_err(|e| errors::api(&engine.address, "create the image check pod", e))?;
    let result = watch_pods(
        engine,
        &Target {
            selector: format!("berth.dev/image-check={name}"),
            job: None,
            image: spec.image.as_str(),
            what: "image check pod",
        },
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
        Err(Error::InvalidSpec { field, .. }) if field == "image" => Ok(()),
        Err(e) => Err(e),
    }
    .map_err(|e: Error| match e {
        Error::Backend { .. } => Error::backend(BACKEND, "check image", e),
        other => other,
    })
}
