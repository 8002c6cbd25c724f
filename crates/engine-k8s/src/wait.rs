//! Waiting for a pod to run, on a watch (not a poll loop), by the policy of `policy.rs`: fail
//! at once for definitive reasons, wait (saying what for) while the cluster works on it, and
//! time out naming what was awaited last.

use std::time::Duration;

use berth_engine_core::{EnvironmentSpec, Error, ErrorKind, PullPolicy, Result};
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
/// Read at most once per [`NODES_FRESH`] per engine: hundreds of starts share one list.
async fn node_sizes(engine: &KubernetesEngine) -> Option<Vec<(f64, f64)>> {
    if let Some((at, sizes)) = engine
        .node_sizes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
    {
        if at.elapsed() < NODES_FRESH {
            return sizes.clone();
        }
    }
    let sizes = list_node_sizes(engine).await;
    *engine
        .node_sizes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) =
        Some((std::time::Instant::now(), sizes.clone()));
    sizes
}

/// How long a list of the nodes' sizes serves starts.
const NODES_FRESH: Duration = Duration::from_secs(10);

async fn list_node_sizes(engine: &KubernetesEngine) -> Option<Vec<(f64, f64)>> {
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
    let started = tokio::time::Instant::now();
    // Shared by the work and the timeout that names it.
    let last = std::sync::Mutex::new(Awaiting::Pod);
    let mut wait = Wait {
        engine,
        target,
        policy: Policy::new(target.what, target.image, engine.config.scale_up_grace),
        nodes: node_sizes(engine).await,
        started,
        last: &last,
    };
    let work = wait.until_decided();
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

/// The state of one wait: what it watches, its policy, and what it awaits last.
struct Wait<'a> {
    engine: &'a KubernetesEngine,
    target: &'a Target<'a>,
    policy: Policy,
    nodes: Option<Vec<(f64, f64)>>,
    started: tokio::time::Instant,
    last: &'a std::sync::Mutex<Awaiting>,
}

impl Wait<'_> {
    /// Lists the target's pods and watches them from the listed resourceVersion, again and
    /// again, until one runs or the policy fails the wait; unbounded (the caller bounds it).
    async fn until_decided(&mut self) -> Result<String> {
        loop {
            if let Some(view) = self.engine.pod_view().await {
                if let Some(outcome) = self.follow_view(&view).await {
                    return outcome;
                }
                // The view fell behind or went silent: one list (and watch) of our own.
            }
            let list = self
                .engine
                .pod_api()
                .list(&ListParams::default().labels(&self.target.selector))
                .await
                .map_err(|e| errors::api(&self.engine.address, "list pods", e))?;
            if list.items.is_empty() {
                if let Some(outcome) = self.judge(None).await {
                    return outcome;
                }
            }
            for pod in &list.items {
                if let Some(outcome) = self.judge(Some(pod)).await {
                    return outcome;
                }
            }
            let version = list.metadata.resource_version.unwrap_or_else(|| "0".into());
            let secs = watch_seconds(self.last);
            let watched = tokio::time::timeout(
                Duration::from_secs(secs.into()) + WATCH_MARGIN,
                self.watch_once(&version, secs),
            )
            .await;
            match watched {
                Ok(Ok(Some(name))) => return Ok(name),
                Ok(Err(e)) => return Err(e),
                // Ended (its timeout, or expired): list again.
                Ok(Ok(None)) => {}
                // The server should have ended it by now: its connection went silent while
                // the API still answers (else the heartbeat would have said so). The list
                // sees what the watch missed.
                Err(_) => tracing::info!(
                    "{}: the watch of its pods was silent {}s past its end; listing again",
                    self.target.what,
                    WATCH_MARGIN.as_secs()
                ),
            }
        }
    }

    /// Follows the target's pods in the engine's shared view until one runs or the policy
    /// fails the wait; `None` when the view stops being current, or stays silent longer than
    /// a watch of our own would have (its watch may have stalled: the caller lists).
    async fn follow_view(&mut self, view: &crate::cache::Shared) -> Option<Result<String>> {
        let mut changed = view.subscribe();
        let mut quiet = Duration::ZERO;
        loop {
            if !view.current() {
                return None;
            }
            let pods = view.pods_matching(&self.target.selector);
            if pods.is_empty() {
                if let Some(outcome) = self.judge(None).await {
                    return Some(outcome);
                }
            }
            for pod in &pods {
                if let Some(outcome) = self.judge(Some(pod)).await {
                    return Some(outcome);
                }
            }
            let secs = Duration::from_secs(watch_seconds(self.last).into());
            if quiet >= secs + WATCH_MARGIN {
                return None;
            }
            match tokio::time::timeout(secs, changed.changed()).await {
                Ok(Ok(())) => quiet = Duration::ZERO,
                Ok(Err(_)) => return None,
                // Nothing changed: the policy looks again (its graces are times).
                Err(_) => quiet += secs,
            }
        }
    }

    /// One watch of the target's pods from `version`, asked to last `secs`: the running
    /// pod's name, a failure, or `None` when the watch ended (or expired) undecided.
    async fn watch_once(&mut self, version: &str, secs: u32) -> Result<Option<String>> {
        let params = WatchParams::default()
            .labels(&self.target.selector)
            .timeout(secs);
        let address = &self.engine.address;
        let mut stream = self
            .engine
            .pod_api()
            .watch(&params, version)
            .await
            .map_err(|e| errors::api(address, "watch pods", e))?
            .boxed();
        while let Some(event) = stream
            .try_next()
            .await
            .map_err(|e| errors::api(address, "watch pods", e))?
        {
            match event {
                WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                    if let Some(outcome) = self.judge(Some(&pod)).await {
                        return outcome.map(Some);
                    }
                }
                // Expired or otherwise broken: list again.
                WatchEvent::Error(_) => return Ok(None),
                _ => {}
            }
        }
        Ok(None)
    }

    /// One look at `pod` (`None`: the Job has none yet): the outcome once decided, else
    /// notes what is awaited.
    async fn judge(&mut self, pod: Option<&Pod>) -> Option<Result<String>> {
        match look(
            self.engine,
            self.target,
            &mut self.policy,
            pod,
            self.nodes.as_deref(),
            self.started,
        )
        .await
        {
            Decision::Running(name) => Some(Ok(name)),
            Decision::Fail(e) => Some(Err(e)),
            Decision::Wait(a) => {
                note(self.target.what, self.last, a);
                None
            }
        }
    }
}

/// How long the API server is asked to keep a watch open (`timeoutSeconds`), from what is
/// awaited. Autoscaler and Job events change no pod, and the scale-up grace is a time: while
/// they matter, the wait lists again soon. Otherwise the watch carries every change, and its
/// length only bounds how late a watch that went silent is noticed (with [`WATCH_MARGIN`]):
/// 10 s costs one small list per 10 s of waiting.
fn watch_seconds(last: &std::sync::Mutex<Awaiting>) -> u32 {
    match *last
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        Awaiting::Pod | Awaiting::Scheduling(_) => 2,
        // A node takes minutes to join; its events need no haste.
        Awaiting::ScaleUp(_) => 5,
        _ => 10,
    }
}

/// How long past its `timeoutSeconds` a watch may stay open before the wait gives up on it
/// and lists again. kube-apiserver ends a watch at exactly `timeoutSeconds`; the margin
/// covers its wait for a fresh enough cache before it starts the watch (up to 3 s, then it
/// answers 504 "Too large resource version") and the round trip. A watch still open after it
/// went silent: its connection stalled (a proxy, a load balancer, a NAT entry dropped) while
/// the rest of the API answers, which the heartbeat cannot see.
const WATCH_MARGIN: Duration = Duration::from_secs(5);

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
    // On the node, a pod still ContainerCreating may be held by a volume it cannot mount (a
    // missing Secret or ConfigMap): only the kubelet's FailedMount event says so.
    let creating = pod.is_some_and(|p| crate::policy::describe(p).ends_with(", ContainerCreating"));
    let events = if bound && !creating {
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
    let cleanup = match engine
        .pod_api()
        .delete(
            &name,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
        )
        .await
    {
        Err(e) => Some(errors::api(
            &engine.address,
            "delete the image check pod",
            e,
        ))
        .filter(|e| e.kind() != ErrorKind::NotFound),
        Ok(_) => None,
    };
    let checked = match result {
        Ok(_) => Ok(()),
        // An image without `sleep` still exists.
        Err(Error::InvalidSpec { field, .. }) if field == "image" => Ok(()),
        Err(e) => Err(e),
    }
    .map_err(|e: Error| match e {
        Error::Backend { .. } => Error::backend(BACKEND, "check image", e),
        other => other,
    });
    // A failed check and its failed cleanup are both reported; a passed check whose pod could
    // not be deleted reports the leak rather than success.
    match (checked, cleanup) {
        (Err(e), Some(cleanup)) => Err(e.with_cleanup_failure(cleanup)),
        (Ok(()), Some(cleanup)) => Err(cleanup),
        (checked, None) => checked,
    }
}
