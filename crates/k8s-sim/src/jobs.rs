//! The controllers: jobs (pods, status, deadlines, TTL), garbage collection of pods whose job
//! is gone, foreground deletion, and namespace termination.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::api::Propagation;
use crate::errors::ApiError;
use crate::meta::json_str;
use crate::store::Res;
use crate::{kubelet, meta, Inner};

/// The finalizer the job controller puts on each pod it creates and takes off once it has
/// counted the finished pod (or the job is gone).
pub(crate) const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";

/// Takes the tracking finalizer off a pod of `ns`; `orphan` also drops its owner references.
fn untrack(inner: &Arc<Inner>, ns: &str, pod: &Value, orphan: bool) {
    let has = pod["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == TRACKING_FINALIZER));
    if !has && !orphan {
        return;
    }
    let _ = inner.store.update(
        Res::Pod,
        ns,
        json_str(&pod["metadata"]["name"]),
        None,
        |p| {
            if let Some(md) = p["metadata"].as_object_mut() {
                if orphan {
                    md.remove("ownerReferences");
                }
                if let Some(f) = md.get_mut("finalizers").and_then(Value::as_array_mut) {
                    f.retain(|x| x != TRACKING_FINALIZER);
                    if f.is_empty() {
                        md.remove("finalizers");
                    }
                }
            }
            Ok(())
        },
    );
}

/// Runs the controllers until the runtime stops: on every store change and every half second.
pub(crate) async fn run(inner: Arc<Inner>) {
    let mut changes = inner.store.subscribe_changes();
    loop {
        reconcile(&inner);
        let _ = tokio::time::timeout(Duration::from_millis(500), changes.changed()).await;
    }
}

/// Validates a job and fills its defaults.
pub(crate) fn default_job(mut job: Value, name: &str) -> Result<Value, ApiError> {
    let template = &mut job["spec"]["template"];
    if !template.is_object() {
        return Err(ApiError::invalid(
            Res::Job,
            name,
            "spec.template",
            "FieldValueRequired",
            "Required value",
        ));
    }
    let spec = &mut template["spec"];
    if spec["containers"].as_array().is_none_or(Vec::is_empty) {
        return Err(ApiError::invalid(
            Res::Job,
            name,
            "spec.template.spec.containers",
            "FieldValueRequired",
            "Required value",
        ));
    }
    kubelet::default_pod_spec(spec);
    let policy = json_str(&spec["restartPolicy"]).to_owned();
    if policy != "Never" && policy != "OnFailure" {
        return Err(ApiError::invalid(
            Res::Job,
            name,
            "spec.template.spec.restartPolicy",
            "FieldValueNotSupported",
            &format!("Unsupported value: \"{policy}\": supported values: \"OnFailure\", \"Never\""),
        ));
    }
    let spec = &mut job["spec"];
    for (k, v) in [
        ("parallelism", json!(1)),
        ("completions", json!(1)),
        ("backoffLimit", json!(6)),
        ("completionMode", json!("NonIndexed")),
        ("suspend", json!(false)),
        ("podReplacementPolicy", json!("TerminatingOrFailed")),
        ("manualSelector", Value::Null),
    ] {
        if spec[k].is_null() && !v.is_null() {
            spec[k] = v;
        }
    }
    job["status"] = json!({});
    Ok(job)
}

/// Sets the selector and the pod template's labels from the job's name and uid.
pub(crate) fn label_template(job: &mut Value, name: &str, uid: &str) {
    let labels = json!({
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    });
    if job["spec"]["selector"].is_null() {
        job["spec"]["selector"] =
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    }
    let tl = &mut job["spec"]["template"]["metadata"]["labels"];
    for (k, v) in labels.as_object().into_iter().flatten() {
        tl[k] = v.clone();
    }
    // Like batch/v1 defaulting: a job without labels gets its template's.
    let template_labels = job["spec"]["template"]["metadata"]["labels"].clone();
    let jl = &mut job["metadata"]["labels"];
    if jl.as_object().is_none_or(serde_json::Map::is_empty) {
        *jl = template_labels;
    }
}

fn controller_uid(pod: &Value) -> Option<&str> {
    pod["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|o| o["controller"].as_bool() == Some(true) && o["kind"] == "Job")
        .and_then(|o| o["uid"].as_str())
}

fn has_condition(job: &Value, typ: &str) -> bool {
    job["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == typ && c["status"] == "True"))
}

fn job_condition(typ: &str, reason: &str, message: &str) -> Value {
    let now = meta::now_rfc3339();
    json!({"type": typ, "status": "True", "lastProbeTime": now, "lastTransitionTime": now,
        "reason": reason, "message": message})
}

fn is_terminal(pod: &Value) -> bool {
    matches!(json_str(&pod["status"]["phase"]), "Succeeded" | "Failed")
}

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Remembers a pod of a job deleted through the API before it finished: like a real job
/// controller (`isPodFailed`: with podReplacementPolicy TerminatingOrFailed and no pod failure
/// policy, a deleted pod that has not succeeded is a failure), the job counts it as failed, so
/// a job with `backoffLimit: 0` fails instead of starting a replacement.
pub(crate) fn count_deleted_pod(inner: &Arc<Inner>, ns: &str, name: &str) {
    let Some(pod) = inner.store.get(Res::Pod, ns, name) else {
        return;
    };
    let (Some(job_uid), false) = (controller_uid(&pod), is_terminal(&pod)) else {
        return;
    };
    let job = inner
        .store
        .list(Res::Job, Some(ns))
        .0
        .into_iter()
        .find(|j| json_str(&j["metadata"]["uid"]) == job_uid);
    if job.is_some_and(|j| only_replace_failed(&j)) {
        return;
    }
    inner
        .deleted_unfinished
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(job_uid.to_owned())
        .or_default()
        .insert(json_str(&pod["metadata"]["uid"]).to_owned());
}

/// The real controller's `onlyReplaceFailedPods`: deleted pods are then not failures.
fn only_replace_failed(job: &Value) -> bool {
    job["spec"]["podReplacementPolicy"] == "Failed" || !job["spec"]["podFailurePolicy"].is_null()
}

/// Deletes a job with `policy`.
pub(crate) fn delete_job(
    inner: &Arc<Inner>,
    ns: &str,
    name: &str,
    policy: Propagation,
) -> Result<Value, ApiError> {
    let job = inner
        .store
        .get(Res::Job, ns, name)
        .ok_or_else(|| ApiError::not_found(Res::Job, name))?;
    let uid = json_str(&job["metadata"]["uid"]).to_owned();
    let result = match policy {
        Propagation::Foreground => inner.store.update(Res::Job, ns, name, None, |j| {
            if j["metadata"]["deletionTimestamp"].is_null() {
                j["metadata"]["deletionTimestamp"] = json!(meta::now_rfc3339());
                j["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            }
            let finalizers = &mut j["metadata"]["finalizers"];
            if !finalizers.is_array() {
                *finalizers = json!([]);
            }
            if let Some(f) = finalizers.as_array_mut() {
                if !f.iter().any(|x| x == "foregroundDeletion") {
                    f.push(json!("foregroundDeletion"));
                }
            }
            Ok(())
        }),
        Propagation::Orphan => {
            let (pods, _) = inner.store.list(Res::Pod, Some(ns));
            for pod in pods
                .iter()
                .filter(|p| controller_uid(p) == Some(uid.as_str()))
            {
                untrack(inner, ns, pod, true);
            }
            inner
                .store
                .remove(Res::Job, ns, name)
                .ok_or_else(|| ApiError::not_found(Res::Job, name))
        }
        Propagation::Background => inner
            .store
            .remove(Res::Job, ns, name)
            .ok_or_else(|| ApiError::not_found(Res::Job, name)),
    };
    reconcile(inner);
    result
}

/// One pass of every controller.
pub(crate) fn reconcile(inner: &Arc<Inner>) {
    if inner.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let _one_at_a_time = inner
        .reconciling
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    terminate_namespaces(inner);
    reconcile_cron_jobs(inner);
    let (jobs, _) = inner.store.list(Res::Job, None);
    let (pods, _) = inner.store.list(Res::Pod, None);
    // Each job's pods, by the job's uid: one pass over the pods, not one per job.
    let mut by_job: std::collections::HashMap<&str, Vec<&Value>> = std::collections::HashMap::new();
    for pod in &pods {
        if let Some(uid) = controller_uid(pod) {
            by_job.entry(uid).or_default().push(pod);
        }
    }
    let mut live = HashSet::new();
    for job in &jobs {
        let uid = json_str(&job["metadata"]["uid"]);
        live.insert(uid.to_owned());
        reconcile_job(inner, job, by_job.get(uid).map_or(&[], Vec::as_slice));
    }
    inner
        .deleted_unfinished
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|job, _| live.contains(job));
    // Garbage collection: pods whose controlling job is gone.
    for pod in &pods {
        if let Some(uid) = controller_uid(pod) {
            if !live.contains(uid) && pod["metadata"]["deletionTimestamp"].is_null() {
                let _ = kubelet::delete_pod(
                    inner,
                    json_str(&pod["metadata"]["namespace"]),
                    json_str(&pod["metadata"]["name"]),
                );
            }
        }
    }
    kubelet::ensure_workers(inner);
}

fn terminate_namespaces(inner: &Arc<Inner>) {
    let (namespaces, _) = inner.store.list(Res::Namespace, None);
    for ns in namespaces
        .iter()
        .filter(|n| !n["metadata"]["deletionTimestamp"].is_null())
    {
        let name = json_str(&ns["metadata"]["name"]);
        let mut remaining = 0;
        for res in
            Res::STORED_ONLY
                .into_iter()
                .chain([Res::CronJob, Res::Workflow, Res::CronWorkflow])
        {
            let (items, _) = inner.store.list(res, Some(name));
            for item in items {
                let _ = inner
                    .store
                    .remove(res, name, json_str(&item["metadata"]["name"]));
            }
        }
        for res in [Res::Job, Res::Pod, Res::Pvc, Res::Event] {
            let (items, _) = inner.store.list(res, Some(name));
            remaining += items.len();
            for item in items {
                let n = json_str(&item["metadata"]["name"]);
                match res {
                    Res::Job => {
                        let _ = inner.store.remove(Res::Job, name, n);
                    }
                    Res::Pod => {
                        if item["metadata"]["deletionTimestamp"].is_null() {
                            let _ = kubelet::delete_pod(inner, name, n);
                        }
                    }
                    Res::Event => {
                        let _ = inner.store.remove(Res::Event, name, n);
                    }
                    _ => {
                        if let Some(pvc) = inner.store.remove(Res::Pvc, name, n) {
                            kubelet::remove_claim_volume(inner, &pvc);
                        }
                    }
                }
            }
        }
        if remaining == 0 {
            inner.store.remove(Res::Namespace, "", name);
        }
    }
}

fn create_pod(inner: &Arc<Inner>, job: &Value) {
    let md = &job["metadata"];
    let (ns, name, uid) = (
        json_str(&md["namespace"]),
        json_str(&md["name"]),
        json_str(&md["uid"]),
    );
    let template = &job["spec"]["template"];
    let mut annotations = template["metadata"]["annotations"].clone();
    if !annotations.is_object() {
        annotations = json!({});
    }
    annotations["batch.kubernetes.io/job-tracking"] = json!("");
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{name}-"),
            "namespace": ns,
            "labels": template["metadata"]["labels"],
            "annotations": annotations,
            "finalizers": [TRACKING_FINALIZER],
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid,
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": template["spec"],
    });
    // Admission judges a Job's pods as any other; a refusal is the Job's FailedCreate event.
    let admitted = kubelet::default_pod(pod, "").and_then(|mut pod| {
        crate::admission::admit_pod(inner, ns, &mut pod)?;
        Ok(pod)
    });
    if let Err(e) = &admitted {
        let msg = format!("Error creating: {}", e.message);
        // The controller retries every half second: one event per distinct refusal, as the
        // real recorder aggregates repeats.
        let (events, _) = inner.store.list(Res::Event, Some(ns));
        let seen = events.iter().any(|e| {
            e["involvedObject"]["uid"] == job["metadata"]["uid"] && e["reason"] == "FailedCreate"
        });
        if !seen {
            kubelet::record_event(
                inner,
                job,
                "Warning",
                "FailedCreate",
                &msg,
                "job-controller",
            );
        }
    }
    match admitted {
        Ok(pod) => match inner.store.create(Res::Pod, ns, pod) {
            Ok(pod) => {
                let msg = format!("Created pod: {}", json_str(&pod["metadata"]["name"]));
                kubelet::record_event(
                    inner,
                    job,
                    "Normal",
                    "SuccessfulCreate",
                    &msg,
                    "job-controller",
                );
            }
            Err(e) => {
                tracing::warn!(job = name, error = %e.message, "creating a job's pod failed");
            }
        },
        Err(e) => tracing::warn!(job = name, error = %e.message, "a job's pod is invalid"),
    }
}

#[allow(clippy::too_many_lines)]
fn reconcile_job(inner: &Arc<Inner>, job: &Value, pods: &[&Value]) {
    let md = &job["metadata"];
    let (ns, name, uid) = (
        json_str(&md["namespace"]),
        json_str(&md["name"]),
        json_str(&md["uid"]),
    );
    let owned: Vec<&Value> = pods
        .iter()
        .copied()
        .filter(|p| controller_uid(p) == Some(uid))
        .collect();
    let now = meta::now_secs();
    if !md["deletionTimestamp"].is_null() {
        let foreground = md["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "foregroundDeletion"));
        if foreground {
            for p in &owned {
                if p["metadata"]["deletionTimestamp"].is_null() {
                    let _ = kubelet::delete_pod(inner, ns, json_str(&p["metadata"]["name"]));
                }
            }
            if owned.is_empty() {
                inner.store.remove(Res::Job, ns, name);
            }
        }
        return;
    }
    let finished = has_condition(job, "Complete") || has_condition(job, "Failed");
    if finished {
        if let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_i64() {
            let done = job["status"]["completionTime"]
                .as_str()
                .or_else(|| {
                    job["status"]["conditions"].as_array().and_then(|cs| {
                        cs.iter()
                            .find(|c| c["type"] == "Failed")
                            .and_then(|c| c["lastTransitionTime"].as_str())
                    })
                })
                .and_then(meta::parse_rfc3339)
                .unwrap_or(now);
            if now >= done + ttl {
                let _ = inner.store.remove(Res::Job, ns, name);
            }
        }
        return;
    }
    let deleting = |p: &&&Value| p["metadata"]["deletionTimestamp"].is_null();
    let active: Vec<&&Value> = owned
        .iter()
        .filter(|p| !is_terminal(p))
        .filter(deleting)
        .collect();
    let succeeded_now = owned
        .iter()
        .filter(|p| json_str(&p["status"]["phase"]) == "Succeeded")
        .count();
    // With restartPolicy OnFailure a failure is a container restart, not a failed pod.
    let restarts: usize = owned
        .iter()
        .flat_map(|p| {
            p["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| usize::try_from(c["restartCount"].as_u64().unwrap_or(0)).unwrap_or(0))
        .sum();
    let deleted: HashSet<String> = inner
        .deleted_unfinished
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(uid)
        .cloned()
        .unwrap_or_default();
    let failed_now = owned
        .iter()
        .filter(|p| json_str(&p["status"]["phase"]) == "Failed")
        .filter(|p| !deleted.contains(json_str(&p["metadata"]["uid"])))
        .count()
        + restarts
        + deleted.len();
    let prev =
        |k: &str| usize::try_from(job["status"][k].as_u64().unwrap_or(0)).unwrap_or(usize::MAX);
    let succeeded = succeeded_now.max(prev("succeeded"));
    let failed = failed_now.max(prev("failed"));
    // Finished pods are counted now: their tracking finalizer comes off.
    for p in owned.iter().filter(|p| is_terminal(p)) {
        untrack(inner, ns, p, false);
    }
    let ready = active.iter().filter(|p| pod_ready(p)).count();
    let as_usize = |k: &str, d: u64| {
        usize::try_from(job["spec"][k].as_u64().unwrap_or(d)).unwrap_or(usize::MAX)
    };
    let completions = as_usize("completions", 1);
    let parallelism = as_usize("parallelism", 1);
    let backoff_limit = as_usize("backoffLimit", 6);
    let start = job["status"]["startTime"]
        .as_str()
        .and_then(meta::parse_rfc3339);
    let suspended = job["spec"]["suspend"].as_bool() == Some(true);

    let mut terminal: Option<(&str, &str, &str)> = None;
    let mut complete = false;
    if let (Some(deadline), Some(start)) = (job["spec"]["activeDeadlineSeconds"].as_i64(), start) {
        if now - start >= deadline {
            terminal = Some((
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
                "FailureTarget",
            ));
        }
    }
    if terminal.is_none() && succeeded >= completions {
        complete = true;
    } else if terminal.is_none() && failed > backoff_limit {
        terminal = Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
            "FailureTarget",
        ));
    }
    let kill_active = terminal.is_some() || complete || suspended;
    if kill_active {
        for p in &active {
            let _ = kubelet::delete_pod(inner, ns, json_str(&p["metadata"]["name"]));
        }
    } else {
        let remaining = completions.saturating_sub(succeeded);
        let want = parallelism.min(remaining);
        for _ in active.len()..want {
            create_pod(inner, job);
        }
    }
    let active_count = if kill_active {
        0
    } else {
        let mut count = 0;
        inner.store.scan(Res::Pod, Some(ns), |p| {
            if controller_uid(p) == Some(uid)
                && !is_terminal(p)
                && p["metadata"]["deletionTimestamp"].is_null()
            {
                count += 1;
            }
        });
        count
    };
    if complete {
        kubelet::record_event(
            inner,
            job,
            "Normal",
            "Completed",
            "Job completed",
            "job-controller",
        );
    } else if let Some((reason, message, _)) = terminal {
        kubelet::record_event(inner, job, "Warning", reason, message, "job-controller");
    }
    let _ = inner.store.update(Res::Job, ns, name, None, |j| {
        let st = &mut j["status"];
        if !st.is_object() {
            *st = json!({});
        }
        if st["startTime"].is_null() && !suspended {
            st["startTime"] = json!(meta::now_rfc3339());
        }
        st["active"] = json!(active_count);
        st["ready"] = json!(if kill_active { 0 } else { ready });
        st["succeeded"] = json!(succeeded);
        st["failed"] = json!(failed);
        st["terminating"] = json!(0);
        st["uncountedTerminatedPods"] = json!({});
        for k in ["active", "succeeded", "failed"] {
            if st[k] == json!(0) {
                if let Some(m) = st.as_object_mut() {
                    m.remove(k);
                }
            }
        }
        let mut conditions = st["conditions"].as_array().cloned().unwrap_or_default();
        if complete {
            conditions.push(job_condition(
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            ));
            conditions.push(job_condition(
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            ));
            st["completionTime"] = json!(meta::now_rfc3339());
        } else if let Some((reason, message, target)) = terminal {
            conditions.push(job_condition(target, reason, message));
            conditions.push(job_condition("Failed", reason, message));
        } else if suspended {
            if !conditions
                .iter()
                .any(|c| c["type"] == "Suspended" && c["status"] == "True")
            {
                conditions.retain(|c| c["type"] != "Suspended");
                conditions.push(job_condition("Suspended", "JobSuspended", "Job suspended"));
            }
        } else {
            for c in &mut conditions {
                if c["type"] == "Suspended" && c["status"] == "True" {
                    let now = meta::now_rfc3339();
                    *c = json!({"type": "Suspended", "status": "False", "reason": "JobResumed",
                        "message": "Job resumed", "lastProbeTime": now,
                        "lastTransitionTime": now});
                }
            }
        }
        if !conditions.is_empty() {
            st["conditions"] = json!(conditions);
        }
        Ok(())
    });
}

/// Validates a CronJob and fills its defaults as the API server does.
pub(crate) fn default_cron_job(mut cron: Value, name: &str) -> Result<Value, ApiError> {
    let schedule = json_str(&cron["spec"]["schedule"]).to_owned();
    if schedule.is_empty() || CronSpec::parse(&schedule).is_none() {
        return Err(ApiError::invalid(
            Res::CronJob,
            name,
            "spec.schedule",
            "FieldValueInvalid",
            &format!("Invalid value: \"{schedule}\": unparseable cron expression"),
        ));
    }
    let template = cron["spec"]["jobTemplate"].clone();
    default_job(template, name).map_err(|_| {
        ApiError::invalid(
            Res::CronJob,
            name,
            "spec.jobTemplate.spec.template",
            "FieldValueRequired",
            "Required value",
        )
    })?;
    let spec = &mut cron["spec"];
    for (k, v) in [
        ("concurrencyPolicy", json!("Allow")),
        ("suspend", json!(false)),
        ("successfulJobsHistoryLimit", json!(3)),
        ("failedJobsHistoryLimit", json!(1)),
    ] {
        if spec[k].is_null() {
            spec[k] = v;
        }
    }
    cron["status"] = json!({});
    Ok(cron)
}

/// A five-field cron expression (minute hour day-of-month month day-of-week) or a macro, as
/// sets of allowed values. Names of months and days are not supported.
struct CronSpec([Vec<bool>; 5]);

impl CronSpec {
    fn parse(text: &str) -> Option<Self> {
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return None;
        }
        let ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
        let mut sets: [Vec<bool>; 5] = Default::default();
        for (i, (field, (lo, hi))) in fields.iter().zip(ranges).enumerate() {
            let mut set = vec![false; hi + 1];
            for part in field.split(',') {
                let (range, step) = match part.split_once('/') {
                    Some((r, s)) => (r, s.parse::<usize>().ok().filter(|s| *s > 0)?),
                    None => (part, 1),
                };
                let (from, to) = match range {
                    "*" | "?" => (lo, hi),
                    r => match r.split_once('-') {
                        Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
                        None => {
                            let v: usize = r.parse().ok()?;
                            (v, if step > 1 { hi } else { v })
                        }
                    },
                };
                if from < lo || to > hi || from > to {
                    return None;
                }
                for v in (from..=to).step_by(step) {
                    set[v] = true;
                }
            }
            sets[i] = set;
        }
        // Sunday is 0 or 7.
        if sets[4][7] {
            sets[4][0] = true;
        }
        Some(Self(sets))
    }

    /// Whether the minute starting at `secs` (Unix time, UTC) is scheduled.
    fn matches(&self, secs: i64) -> bool {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (minute, hour) = ((rem / 60 % 60) as usize, (rem / 3600) as usize);
        // 1970-01-01 was a Thursday (4).
        let weekday = (days + 4).rem_euclid(7) as usize;
        let (_, month, day) = civil(days);
        let [m, h, dom, mon, dow] = &self.0;
        m[minute] && h[hour] && mon[month] && (dom[day] && dow[weekday])
    }
}

fn civil(z: i64) -> (i64, usize, usize) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as usize;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as usize;
    (yoe + era * 400, m, d)
}

/// Starts the CronJob's Job for the minute `scheduled` (Unix seconds): named
/// `<cronjob>-<minutes since the epoch>` as the real controller names it, owned by the CronJob,
/// with the job template's labels and annotations; records `status.lastScheduleTime`.
pub(crate) fn start_cron_run(
    inner: &Arc<Inner>,
    cron: &Value,
    scheduled: i64,
) -> Result<String, ApiError> {
    let md = &cron["metadata"];
    let (ns, name, uid) = (
        json_str(&md["namespace"]).to_owned(),
        json_str(&md["name"]).to_owned(),
        json_str(&md["uid"]).to_owned(),
    );
    let job_name = format!("{name}-{}", scheduled / 60);
    let template = &cron["spec"]["jobTemplate"];
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name,
            "namespace": ns,
            "labels": template["metadata"]["labels"],
            "annotations": {"batch.kubernetes.io/cronjob-scheduled-timestamp": meta::rfc3339(scheduled)},
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "CronJob", "name": name, "uid": uid,
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": template["spec"],
    });
    let job = default_job(job, &job_name)?;
    inner.store.create_with(Res::Job, &ns, job, |obj| {
        let n = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let u = obj["metadata"]["uid"].as_str().unwrap_or("").to_owned();
        label_template(obj, &n, &u);
    })?;
    let _ = inner.store.update(Res::CronJob, &ns, &name, None, |c| {
        c["status"]["lastScheduleTime"] = json!(meta::rfc3339(scheduled));
        Ok(())
    });
    Ok(job_name)
}

/// A Job's place in its CronJob's history: its scheduled time, then its creation, then its
/// name.
fn history_key(job: &Value) -> (i64, i64, String) {
    let md = &job["metadata"];
    let scheduled = md["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        .as_str()
        .and_then(meta::parse_rfc3339)
        .unwrap_or(0);
    let created = md["creationTimestamp"]
        .as_str()
        .and_then(meta::parse_rfc3339)
        .unwrap_or(0);
    (scheduled, created, json_str(&md["name"]).to_owned())
}

/// Removes a CronJob's Job as the controller does (background propagation: the pass goes on
/// to collect its pods), without `delete_job`'s own reconcile, which would deadlock here.
fn remove_cron_run(inner: &Arc<Inner>, job: &Value) {
    let md = &job["metadata"];
    let _ = inner
        .store
        .remove(Res::Job, json_str(&md["namespace"]), json_str(&md["name"]));
}

/// Keeps the CronJob's history within its limits (`successfulJobsHistoryLimit`, default 3;
/// `failedJobsHistoryLimit`, default 1: the oldest finished Jobs beyond them are removed),
/// and its `status.active` (references to its unfinished Jobs) and `lastSuccessfulTime` true.
/// Returns its unfinished Jobs.
fn keep_cron_history<'a>(inner: &Arc<Inner>, cron: &Value, owned: &[&'a Value]) -> Vec<&'a Value> {
    let limit = |key: &str, default: i64| {
        usize::try_from(cron["spec"][key].as_i64().unwrap_or(default).max(0)).unwrap_or(0)
    };
    let mut succeeded: Vec<&Value> = owned
        .iter()
        .copied()
        .filter(|j| has_condition(j, "Complete"))
        .collect();
    let mut failed: Vec<&Value> = owned
        .iter()
        .copied()
        .filter(|j| has_condition(j, "Failed"))
        .collect();
    let active: Vec<&Value> = owned
        .iter()
        .copied()
        .filter(|j| !has_condition(j, "Complete") && !has_condition(j, "Failed"))
        .collect();
    for (list, keep) in [
        (&mut succeeded, limit("successfulJobsHistoryLimit", 3)),
        (&mut failed, limit("failedJobsHistoryLimit", 1)),
    ] {
        list.sort_by_key(|j| history_key(j));
        let extra = list.len().saturating_sub(keep);
        for job in list.drain(..extra) {
            remove_cron_run(inner, job);
        }
    }
    let refs: Vec<Value> = active
        .iter()
        .map(|j| {
            let md = &j["metadata"];
            json!({"apiVersion": "batch/v1", "kind": "Job", "name": md["name"],
                "namespace": md["namespace"], "uid": md["uid"],
                "resourceVersion": md["resourceVersion"]})
        })
        .collect();
    let last_success = succeeded
        .iter()
        .filter_map(|j| j["status"]["completionTime"].as_str())
        .max()
        .map(str::to_owned);
    let status = &cron["status"];
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|r| json_str(&r["name"]).to_owned())
            .collect()
    };
    let refs_value = json!(refs);
    let changed = names(&status["active"]) != names(&refs_value)
        || (last_success.is_some()
            && status["lastSuccessfulTime"].as_str() != last_success.as_deref());
    if changed {
        let md = &cron["metadata"];
        let _ = inner.store.update(
            Res::CronJob,
            json_str(&md["namespace"]),
            json_str(&md["name"]),
            None,
            |c| {
                if refs.is_empty() {
                    if let Some(st) = c["status"].as_object_mut() {
                        st.remove("active");
                    }
                } else {
                    c["status"]["active"] = refs_value.clone();
                }
                if let Some(t) = &last_success {
                    c["status"]["lastSuccessfulTime"] = json!(t);
                }
                Ok(())
            },
        );
    }
    active
}

/// The CronJob controller: each scheduled minute not started yet (since the last schedule, or
/// the creation) starts a Job, unless suspended, or `Forbid` while one of its Jobs is active;
/// `Replace` removes the active ones first. Jobs whose CronJob is gone are deleted (the
/// garbage collector's background propagation); finished Jobs beyond the history limits are
/// removed, and `status.active` lists the unfinished ones.
fn reconcile_cron_jobs(inner: &Arc<Inner>) {
    let now = meta::now_secs();
    let (crons, _) = inner.store.list(Res::CronJob, None);
    let (jobs, _) = inner.store.list(Res::Job, None);
    let owner_of = |job: &Value| {
        job["metadata"]["ownerReferences"]
            .as_array()
            .and_then(|o| o.iter().find(|o| o["kind"] == "CronJob"))
            .map(|o| json_str(&o["uid"]).to_owned())
    };
    for job in &jobs {
        if let Some(owner) = owner_of(job) {
            if !crons
                .iter()
                .any(|c| json_str(&c["metadata"]["uid"]) == owner)
            {
                // Removed as a background delete does, without `delete_job`'s own
                // reconcile: this runs inside one, under its lock (a nested pass would
                // deadlock every later request). The pass goes on to collect its pods.
                let md = &job["metadata"];
                let _ =
                    inner
                        .store
                        .remove(Res::Job, json_str(&md["namespace"]), json_str(&md["name"]));
            }
        }
    }
    for cron in &crons {
        if !cron["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let uid = json_str(&cron["metadata"]["uid"]);
        let owned: Vec<&Value> = jobs
            .iter()
            .filter(|j| owner_of(j).as_deref() == Some(uid))
            .collect();
        let active = keep_cron_history(inner, cron, &owned);
        if cron["spec"]["suspend"] == true {
            continue;
        }
        let Some(spec) = CronSpec::parse(json_str(&cron["spec"]["schedule"])) else {
            continue;
        };
        let since = cron["status"]["lastScheduleTime"]
            .as_str()
            .or_else(|| cron["metadata"]["creationTimestamp"].as_str())
            .and_then(meta::parse_rfc3339)
            .unwrap_or(now);
        let this_minute = now - now.rem_euclid(60);
        if this_minute <= since - since.rem_euclid(60) || !spec.matches(this_minute) {
            continue;
        }
        match json_str(&cron["spec"]["concurrencyPolicy"]) {
            "Forbid" if !active.is_empty() => continue,
            "Replace" => {
                for job in &active {
                    remove_cron_run(inner, job);
                }
            }
            _ => {}
        }
        if let Err(e) = start_cron_run(inner, cron, this_minute) {
            tracing::debug!(error = ?e, "the cron job controller could not start a job");
        }
    }
}
