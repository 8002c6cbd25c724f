//! Batch runs on Kubernetes: a batch/v1 Job from [`run_job`](crate::run_job) (or a CronJob
//! from [`run_cron_job`](crate::run_cron_job) for a schedule) whose container runs the
//! command, labelled like an environment (`managed-by: berth`, session, name, creation time)
//! plus [`LABEL_RUN`] and `berth.dev/detached: true`, so `berth gc` keeps it while it runs and
//! removes it once finished.
//!
//! The outcome comes from the pod's container status (`terminated.exitCode`) and the Job's
//! conditions (`DeadlineExceeded`); logs from the pod log API with `timestamps` and
//! `sinceTime`. A cancel labels the Job `berth.dev/cancelled: true` and deletes its pods
//! (with `backoffLimit: 0` the Job then fails), so the Job stays for its status.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_engine_core::{
    backend, logs_connection_lost, resume_from, split_timestamp, Error, LabelSelector, LogLine,
    LogOptions, LogSource, LogStream, Result, RunId, RunSource, RunSpec, RunState, RunStatus,
    StopOutcome, Workspace, LABEL_MANAGED_BY, LABEL_RUN, MANAGED_BY_VALUE,
};
use futures_util::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, PropagationPolicy,
};
use kube::core::DynamicObject;
use kube::Api;

use crate::argo::{self, ArgoKind};
use crate::errors::{self, BACKEND};
use crate::job::label_selector;
use crate::{manifest, run_cron_job, run_job, CronSchedule, KubernetesEngine};

/// Label a cancelled run's Job carries (value `true`).
pub const LABEL_CANCELLED: &str = "berth.dev/cancelled";

impl KubernetesEngine {
    fn cron_jobs(&self) -> Api<CronJob> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }
}

fn set_labels(meta: &mut ObjectMeta, labels: &BTreeMap<String, String>) {
    meta.labels = Some(labels.clone());
}

/// The clone of the run's source, added to its pod.
fn add_source(
    pod: Option<&mut k8s_openapi::api::core::v1::PodSpec>,
    spec: &RunSpec,
    config: &crate::KubernetesConfig,
) -> Result<()> {
    match (&spec.source, pod) {
        (None, _) => Ok(()),
        (Some(RunSource::Git { url, branch }), Some(pod)) => {
            manifest::add_git_clone(pod, &spec.env, config, url, branch.as_deref())
        }
        (Some(RunSource::Git { .. }), None) => Err(Error::invalid_spec("git", "the run has no pod")),
        (Some(RunSource::Directory(dir)), _) => Err(Error::Unsupported {
            backend: BACKEND,
            operation: "local source",
            reason: format!(
                "a Job's pod cannot read {} on this machine; push it and give its URL (berth submit --git URL), which the pod clones",
                dir.display()
            ),
        }),
        (Some(other), _) => Err(Error::Unsupported {
            backend: BACKEND,
            operation: "run source",
            reason: format!("this version of the Kubernetes backend does not know {other:?}"),
        }),
    }
}

pub(crate) async fn submit(engine: &KubernetesEngine, spec: &RunSpec) -> Result<RunId> {
    spec.validate()?;
    let mut prepared = spec.clone();
    prepared.env = spec.prepared_env().into_owned();
    let spec = &prepared;
    let labels = spec.object_labels(backend::now_unix());
    if let Workspace::Volume { name, .. } = &spec.env.workspace {
        if engine.config.create_missing_claims {
            engine.ensure_claim(name, &spec.env).await?;
        }
    }
    // As an environment's start does: a cache with `create` is made before its first user.
    engine.ensure_cache_claims(&spec.env).await?;
    let mut attempts = 0;
    loop {
        let created = if let Some(schedule) = &spec.schedule {
            // A CronJob's Jobs are named <name>-<minutes>: its own name leaves room (52).
            let name = backend::object_name(&spec.env, 52);
            let mut cron = run_cron_job(
                &spec.env,
                &engine.config,
                &name,
                &spec.command,
                &CronSchedule::new(schedule.clone()),
            )?;
            set_labels(&mut cron.metadata, &labels);
            if let Some(cs) = cron.spec.as_mut() {
                if let Some(m) = cs.job_template.metadata.as_mut() {
                    set_labels(m, &labels);
                }
                if let Some(js) = cs.job_template.spec.as_mut() {
                    if let Some(m) = js.template.metadata.as_mut() {
                        set_labels(m, &labels);
                    }
                }
                let pod = cs
                    .job_template
                    .spec
                    .as_mut()
                    .and_then(|js| js.template.spec.as_mut());
                add_source(pod, spec, &engine.config)?;
            }
            engine
                .cron_jobs()
                .create(&PostParams::default(), &cron)
                .await
                .map(|_| name)
        } else {
            let name = manifest::job_name(&spec.env);
            let mut job = run_job(&spec.env, &engine.config, &name, &spec.command)?;
            set_labels(&mut job.metadata, &labels);
            if let Some(js) = job.spec.as_mut() {
                if let Some(m) = js.template.metadata.as_mut() {
                    set_labels(m, &labels);
                }
            }
            let pod = job.spec.as_mut().and_then(|js| js.template.spec.as_mut());
            add_source(pod, spec, &engine.config)?;
            engine
                .jobs()
                .create(&PostParams::default(), &job)
                .await
                .map(|_| name)
        };
        match created {
            Ok(name) => {
                tracing::debug!(run = %name, "submitted run");
                return RunId::new(name);
            }
            // A name collision (5 random hex digits): pick another.
            Err(e) if errors::is_conflict(&e) && attempts < 3 => attempts += 1,
            Err(e) => return Err(errors::api(&engine.address, "create the run", e)),
        }
    }
}

fn not_a_run(run: &RunId) -> Error {
    Error::NotFound {
        what: "run",
        name: run.to_string(),
    }
}

fn is_berths_run(meta: &ObjectMeta) -> bool {
    let labels = meta.labels.as_ref();
    labels
        .and_then(|l| l.get(LABEL_MANAGED_BY))
        .map(String::as_str)
        == Some(MANAGED_BY_VALUE)
        && labels.is_some_and(|l| l.contains_key(LABEL_RUN))
}

enum RunObject {
    Job(Box<Job>),
    Cron(Box<CronJob>),
    Workflow(Box<DynamicObject>),
    CronWorkflow(Box<DynamicObject>),
}

impl RunObject {
    /// The container of the run's pod that runs the command.
    fn container(&self) -> &'static str {
        match self {
            RunObject::Workflow(_) | RunObject::CronWorkflow(_) => argo::MAIN_CONTAINER,
            RunObject::Job(_) | RunObject::Cron(_) => manifest::CONTAINER,
        }
    }
}

async fn get_run(engine: &KubernetesEngine, run: &RunId) -> Result<RunObject> {
    match engine.jobs().get_opt(run.as_str()).await {
        Ok(Some(job)) if is_berths_run(&job.metadata) => return Ok(RunObject::Job(Box::new(job))),
        Ok(Some(_)) => return Err(not_a_run(run)),
        Ok(None) => {}
        Err(e) => return Err(errors::api(&engine.address, "get the run's job", e)),
    }
    match engine.cron_jobs().get_opt(run.as_str()).await {
        Ok(Some(cron)) if is_berths_run(&cron.metadata) => {
            return Ok(RunObject::Cron(Box::new(cron)))
        }
        Ok(Some(_)) => return Err(not_a_run(run)),
        Ok(None) => {}
        // A cluster (or a role) without CronJobs has no schedules to find.
        Err(e) if errors::is_not_found(&e) => {}
        Err(e) => return Err(errors::api(&engine.address, "get the run's cron job", e)),
    }
    // Argo runs, on a cluster with its CRDs.
    match argo::get(engine, run.as_str()).await? {
        Some((ArgoKind::Workflow, wf)) => Ok(RunObject::Workflow(Box::new(wf))),
        Some((ArgoKind::CronWorkflow, cron)) => Ok(RunObject::CronWorkflow(Box::new(cron))),
        None => Err(not_a_run(run)),
    }
}

/// The Job's pods, newest first.
async fn pods_of(engine: &KubernetesEngine, job: &str) -> Result<Vec<Pod>> {
    pods_labelled(engine, &format!("job-name={job}")).await
}

/// The pods matching `selector`, newest first.
pub(crate) async fn pods_labelled(engine: &KubernetesEngine, selector: &str) -> Result<Vec<Pod>> {
    let mut pods = engine
        .pod_api()
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| errors::api(&engine.address, "list the run's pods", e))?
        .items;
    pods.sort_by(|a, b| {
        b.metadata
            .creation_timestamp
            .cmp(&a.metadata.creation_timestamp)
    });
    Ok(pods)
}

/// The `container`'s `terminated` state (exit code, reason) in `pod`, if it ended.
pub(crate) fn terminated(pod: &Pod, container: &str) -> Option<(i32, Option<String>)> {
    let status = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)?;
    let t = status.state.as_ref()?.terminated.as_ref()?;
    // "Error" and "Completed" only restate the exit code; "OOMKilled" and the like say more.
    let reason = t
        .reason
        .clone()
        .filter(|r| !matches!(r.as_str(), "Error" | "Completed"));
    Some((t.exit_code, reason))
}

/// Why the run's git clone (its init container) failed, if it did.
fn clone_failure(pod: &Pod) -> Option<String> {
    let status = pod
        .status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == manifest::GIT_CONTAINER)?;
    let t = status.state.as_ref()?.terminated.as_ref()?;
    (t.exit_code != 0).then(|| {
        format!(
            "the clone of its git source failed (init container {} exited {}{}; kubectl logs {} -c {})",
            manifest::GIT_CONTAINER,
            t.exit_code,
            t.message.as_ref().map(|m| format!(": {m}")).unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default(),
            manifest::GIT_CONTAINER,
        )
    })
}

fn started(pod: &Pod, container: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == container))
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
}

pub(crate) fn waiting_reason(pod: &Pod, container: &str) -> Option<String> {
    let w = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?;
    Some(format!(
        "{}{}",
        w.reason.clone().unwrap_or_default(),
        w.message
            .as_ref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    ))
}

/// The status of a run's Job from the Job and its pods: the pod's exit code first (it is the
/// command's), the Job's conditions for what has none (a deadline, a lost pod).
pub(crate) fn job_status(job: &Job, pods: &[Pod]) -> Result<RunStatus> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let labels = job.metadata.labels.clone().unwrap_or_default();
    let image = crate::job::job_image(job);
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let condition = |typ: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == typ && c.status == "True")
    };
    let exit = pods.iter().find_map(|p| terminated(p, manifest::CONTAINER));
    let code = exit.as_ref().map(|(c, _)| *c);
    let cancelled = labels.get(LABEL_CANCELLED).map(String::as_str) == Some("true");
    let clone_failed = pods.iter().find_map(clone_failure);
    let (state, message) = if cancelled {
        (RunState::Cancelled, None)
    } else if let (Some(why), None) = (&clone_failed, code) {
        (RunState::Failed, Some(why.clone()))
    } else if let Some(c) = condition("Failed").or_else(|| condition("FailureTarget")) {
        match (c.reason.as_deref(), code) {
            (Some("DeadlineExceeded"), _) => (
                RunState::DeadlineExceeded,
                Some(c.message.clone().unwrap_or_default()),
            ),
            (_, Some(0)) => (RunState::Succeeded, None),
            (_, Some(_)) => (RunState::Failed, exit.and_then(|(_, r)| r)),
            (_, None) => (
                RunState::Lost,
                Some(format!(
                    "the run's pod ended without an exit code ({})",
                    c.message.clone().unwrap_or_default()
                )),
            ),
        }
    } else if condition("Complete").is_some() || code == Some(0) {
        (RunState::Succeeded, None)
    } else if let Some((_, reason)) = &exit {
        (RunState::Failed, reason.clone())
    } else if pods.iter().any(|p| started(p, manifest::CONTAINER)) {
        (RunState::Running, None)
    } else {
        (
            RunState::Pending,
            pods.iter()
                .find_map(|p| waiting_reason(p, manifest::CONTAINER)),
        )
    };
    Ok(RunStatus::new(RunId::new(name)?, image, state, labels)
        .with_exit_code(code)
        .with_message(message))
}

fn cron_status(cron: &CronJob, jobs: &[Job]) -> Result<RunStatus> {
    let name = cron.metadata.name.clone().unwrap_or_default();
    let uid = cron.metadata.uid.clone().unwrap_or_default();
    let image = cron
        .spec
        .as_ref()
        .and_then(|s| s.job_template.spec.as_ref())
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let mut owned: Vec<&Job> = jobs
        .iter()
        .filter(|j| {
            j.metadata
                .owner_references
                .as_ref()
                .is_some_and(|o| o.iter().any(|o| o.uid == uid))
        })
        .collect();
    owned.sort_by(|a, b| {
        b.metadata
            .creation_timestamp
            .cmp(&a.metadata.creation_timestamp)
    });
    let mut status = RunStatus::new(
        RunId::new(name)?,
        image,
        RunState::Scheduled,
        cron.metadata.labels.clone().unwrap_or_default(),
    );
    status.schedule = cron.spec.as_ref().map(|s| s.schedule.clone());
    status.runs = owned
        .iter()
        .filter_map(|j| j.metadata.name.clone())
        .filter_map(|n| RunId::new(n).ok())
        .collect();
    Ok(status)
}

async fn all_jobs(engine: &KubernetesEngine, selector: &str) -> Result<Vec<Job>> {
    engine
        .jobs()
        .list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items)
        .map_err(|e| errors::api(&engine.address, "list runs", e))
}

pub(crate) async fn status(engine: &KubernetesEngine, run: &RunId) -> Result<RunStatus> {
    let object = get_run(engine, run).await?;
    status_of(engine, run, object).await
}

async fn status_of(engine: &KubernetesEngine, run: &RunId, object: RunObject) -> Result<RunStatus> {
    match object {
        RunObject::Job(job) => job_status(&job, &pods_of(engine, run.as_str()).await?),
        RunObject::Workflow(wf) => {
            argo::workflow_status(&wf, &argo::pods_of(engine, run.as_str()).await?)
        }
        RunObject::CronWorkflow(cron) => {
            let workflows = argo::list(
                engine,
                ArgoKind::Workflow,
                &format!("{LABEL_MANAGED_BY}={MANAGED_BY_VALUE},{LABEL_RUN}"),
            )
            .await?;
            argo::cron_workflow_status(&cron, &workflows)
        }
        RunObject::Cron(cron) => {
            let jobs = all_jobs(
                engine,
                &format!("{LABEL_MANAGED_BY}={MANAGED_BY_VALUE},{LABEL_RUN}"),
            )
            .await?;
            cron_status(&cron, &jobs)
        }
    }
}

pub(crate) async fn list(
    engine: &KubernetesEngine,
    selector: &LabelSelector,
) -> Result<Vec<RunStatus>> {
    let selector = format!("{},{LABEL_RUN}", label_selector(selector));
    let jobs = all_jobs(engine, &selector).await?;
    let mut out = Vec::new();
    for job in &jobs {
        if job.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = job.metadata.name.clone().unwrap_or_default();
        out.push(job_status(job, &pods_of(engine, &name).await?)?);
    }
    match engine
        .cron_jobs()
        .list(&ListParams::default().labels(&selector))
        .await
    {
        Ok(crons) => {
            for cron in &crons.items {
                out.push(cron_status(cron, &jobs)?);
            }
        }
        Err(e) if errors::is_not_found(&e) => {}
        Err(e) => return Err(errors::api(&engine.address, "list cron jobs", e)),
    }
    // Argo runs, on a cluster with its CRDs.
    let workflows = argo::list(engine, ArgoKind::Workflow, &selector).await?;
    for wf in &workflows {
        let name = wf.metadata.name.clone().unwrap_or_default();
        out.push(argo::workflow_status(
            wf,
            &argo::pods_of(engine, &name).await?,
        )?);
    }
    for cron in argo::list(engine, ArgoKind::CronWorkflow, &selector).await? {
        out.push(argo::cron_workflow_status(&cron, &workflows)?);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Removes the run altogether: a Job as an environment's is stopped, a schedule deleted, an
/// Argo Workflow or CronWorkflow deleted (its pods go with it).
pub(crate) async fn remove(engine: &KubernetesEngine, run: &RunId) -> Result<StopOutcome> {
    let object = match get_run(engine, run).await {
        Ok(object) => object,
        Err(e) if e.is_not_found() => return Ok(StopOutcome::AlreadyGone),
        Err(e) => return Err(e),
    };
    match object {
        RunObject::Job(_) => crate::job::stop(engine, &run.as_environment()).await,
        RunObject::Cron(_) => cancel(engine, run).await.map(|()| StopOutcome::Stopped),
        RunObject::Workflow(_) => argo::delete(engine, ArgoKind::Workflow, run.as_str()).await,
        RunObject::CronWorkflow(_) => {
            argo::delete(engine, ArgoKind::CronWorkflow, run.as_str()).await
        }
    }
}

pub(crate) async fn cancel(engine: &KubernetesEngine, run: &RunId) -> Result<()> {
    match get_run(engine, run).await? {
        RunObject::CronWorkflow(_) => argo::delete_cron(engine, run.as_str()).await,
        RunObject::Workflow(wf) => {
            let pods = argo::pods_of(engine, run.as_str()).await?;
            if argo::workflow_status(&wf, &pods)?.state.is_finished() {
                return Ok(());
            }
            argo::terminate(engine, run.as_str()).await?;
            tracing::debug!(run = %run, "terminated Argo run");
            Ok(())
        }
        RunObject::Cron(_) => {
            let params = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..DeleteParams::default()
            };
            match engine.cron_jobs().delete(run.as_str(), &params).await {
                Ok(_) => Ok(()),
                Err(e) if errors::is_not_found(&e) => Ok(()),
                Err(e) => Err(errors::api(&engine.address, "delete the schedule", e)),
            }
        }
        RunObject::Job(job) => {
            let pods = pods_of(engine, run.as_str()).await?;
            if job_status(&job, &pods)?.state.is_finished() {
                return Ok(());
            }
            let patch = serde_json::json!({"metadata": {"labels": {LABEL_CANCELLED: "true"}}});
            engine
                .jobs()
                .patch(run.as_str(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| errors::api(&engine.address, "label the run cancelled", e))?;
            // With backoffLimit 0, a deleted pod that had not succeeded fails the Job.
            for pod in pods {
                let name = pod.metadata.name.unwrap_or_default();
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                };
                match engine.pod_api().delete(&name, &params).await {
                    Ok(_) => {}
                    Err(e) if errors::is_not_found(&e) => {}
                    Err(e) => return Err(errors::api(&engine.address, "delete the run's pod", e)),
                }
            }
            tracing::debug!(run = %run, "cancelled run");
            Ok(())
        }
    }
}

/// The run's pod once its `container` started, or `None` when the run ended without one.
async fn started_pod(
    engine: &KubernetesEngine,
    run: &RunId,
    container: &str,
) -> Result<Option<String>> {
    let begin = Instant::now();
    loop {
        let object = get_run(engine, run).await?;
        let pods = match &object {
            RunObject::Workflow(_) => argo::pods_of(engine, run.as_str()).await?,
            _ => pods_of(engine, run.as_str()).await?,
        };
        if let Some(pod) = pods.iter().find(|p| started(p, container)) {
            return Ok(pod.metadata.name.clone());
        }
        if status_of(engine, run, object).await?.state.is_finished() {
            return Ok(None);
        }
        if begin.elapsed() > engine.config.start_timeout {
            return Err(Error::Timeout {
                operation: format!(
                    "waiting for run {run} to start ({})",
                    pods.iter()
                        .find_map(|p| waiting_reason(p, container))
                        .unwrap_or_else(|| "no pod yet".to_owned())
                ),
                after: engine.config.start_timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub(crate) async fn logs(
    engine: &KubernetesEngine,
    run: &RunId,
    options: LogOptions,
) -> Result<LogStream> {
    let object = get_run(engine, run).await?;
    let container = object.container();
    if matches!(object, RunObject::Cron(_) | RunObject::CronWorkflow(_)) {
        return Err(Error::invalid_spec(
            "run",
            format!("{run} is a schedule; read the logs of one of its runs (berth ls --runs)"),
        ));
    }
    let Some(pod) = started_pod(engine, run, container).await? else {
        return Ok(Box::pin(futures_util::stream::empty()));
    };
    let since_time = options
        .since
        .and_then(|c| c.since_secs())
        .and_then(|s| jiff::Timestamp::from_second(s).ok());
    let params = LogParams {
        container: Some(container.to_owned()),
        follow: options.follow,
        timestamps: true,
        since_time,
        ..LogParams::default()
    };
    let reader = engine
        .pod_api()
        .log_stream(&pod, &params)
        .await
        .map_err(|e| errors::api(&engine.address, "read the run's logs", e))?;
    let address = engine.address.clone();
    let name = run.to_string();
    // Records split at newlines as bytes: a run may print anything, valid UTF-8 or not.
    let records = futures_util::stream::unfold(Box::pin(reader), |mut reader| async move {
        let mut record = Vec::new();
        match reader.read_until(b'\n', &mut record).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(record), reader)),
            Err(e) => Some((Err(e), reader)),
        }
    });
    let mut failed = false;
    let lines = records
        // Nothing follows a failed read.
        .take_while(move |r| {
            let go = !failed;
            failed |= r.is_err();
            std::future::ready(go)
        })
        .map(move |r| {
            let record =
                r.map_err(|e| logs_connection_lost(BACKEND, &address, &name, Box::new(e)))?;
            let (time, data) = split_timestamp(&record).ok_or_else(|| {
                Error::backend(
                    BACKEND,
                    "read the run's logs",
                    std::io::Error::other("a log line without a timestamp"),
                )
            })?;
            Ok(LogLine::new(time, LogSource::Merged, data))
        });
    Ok(resume_from(Box::pin(lines), options.since))
}
