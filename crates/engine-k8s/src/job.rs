//! Jobs: start (create and wait until running), stop, list, the detached record, and
//! whether a name is one of berth's Jobs.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_engine_core::{
    EnvironmentId, EnvironmentSpec, EnvironmentState, EnvironmentStatus, Error, LabelSelector,
    Result, StopOutcome, Workspace, LABEL_MANAGED_BY, MANAGED_BY_VALUE,
};
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::Api;

use crate::errors::{self, BACKEND};
use crate::manifest::PodCommand;
use crate::{manifest, netpol, now_unix, wait, KubernetesConfig, KubernetesEngine};

pub(crate) async fn start(
    engine: &KubernetesEngine,
    spec: &EnvironmentSpec,
) -> Result<EnvironmentId> {
    spec.validate()?;
    let mut job_name = manifest::job_name(spec);
    let mut job = manifest::job(spec, &engine.config, &job_name, now_unix())?;
    // Checked before anything is created: a host name in the allow list is refused here.
    let with_policy =
        netpol::network_policy(spec, &engine.config, &job_name, now_unix())?.is_some();
    if let Workspace::Volume { name, .. } = &spec.workspace {
        if engine.config.create_missing_claims {
            engine.ensure_claim(name, spec).await?;
        }
    }
    engine.ensure_cache_claims(spec).await?;
    let mut attempts = 0;
    let created = loop {
        // The policy first, so the pod never runs without it.
        if let Some(policy) = netpol::network_policy(spec, &engine.config, &job_name, now_unix())? {
            if let Err(e) = engine
                .network_policies()
                .create(&PostParams::default(), &policy)
                .await
            {
                if errors::is_conflict(&e) && attempts < 3 {
                    attempts += 1;
                    job_name = manifest::job_name(spec);
                    job.metadata.name = Some(job_name.clone());
                    continue;
                }
                return Err(errors::api(&engine.address, "create networkpolicy", e));
            }
        }
        let err = match engine.jobs().create(&PostParams::default(), &job).await {
            Ok(created) => break created,
            Err(e) => e,
        };
        if with_policy {
            if let Err(cleanup) = engine.delete_network_policy(&job_name).await {
                return Err(
                    errors::api(&engine.address, "create job", err).with_cleanup_failure(cleanup)
                );
            }
        }
        // A name collision (5 random hex digits): pick another.
        if errors::is_conflict(&err) && attempts < 3 {
            attempts += 1;
            job_name = manifest::job_name(spec);
            job.metadata.name = Some(job_name.clone());
            continue;
        }
        return Err(errors::api(&engine.address, "create job", err));
    };
    if with_policy {
        engine.own_network_policy(&job_name, &created).await;
    }
    let id = EnvironmentId::new(job_name.clone())?;
    match wait::until_running(engine, &job_name, spec).await {
        Ok(pod) => {
            engine
                .pods
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(id.clone(), pod);
            tracing::debug!(env = %id, "environment running");
            Ok(id)
        }
        Err(err) => {
            // After a lost connection the delete may hang the same way: bound it, and
            // leave the Job to gc (the error says so) rather than hang the caller.
            let patience = if err.is_connection_lost() {
                Duration::from_millis(1500)
            } else {
                Duration::from_secs(30)
            };
            let delete = async {
                let outcome = engine.delete_job(&job_name).await?;
                if with_policy {
                    engine.delete_network_policy(&job_name).await?;
                }
                Ok(outcome)
            };
            match tokio::time::timeout(patience, delete).await {
                Ok(Ok(_)) => Err(err),
                Ok(Err(cleanup)) => Err(err.with_cleanup_failure(cleanup)),
                Err(_) => Err(err.with_cleanup_failure(Error::Timeout {
                    operation: format!("deleting Job {job_name} after a failed start"),
                    after: patience,
                })),
            }
        }
    }
}

pub(crate) async fn stop(engine: &KubernetesEngine, env: &EnvironmentId) -> Result<StopOutcome> {
    // Refuses a Job or pod berth did not create; a missing one is AlreadyGone below. One
    // learned from berth's own Job is known to be berth's.
    engine.check_berths(env).await?;
    engine.forget_pod(env);
    let outcome = engine.delete_job(env.as_str()).await?;
    // Named like the Job; a missing one is no error (most environments have none).
    engine.delete_network_policy(env.as_str()).await?;
    tracing::debug!(env = %env, ?outcome, "stopped environment");
    Ok(outcome)
}

pub(crate) async fn mark_detached(engine: &KubernetesEngine, env: &EnvironmentId) -> Result<()> {
    if !engine.is_berths(env).await? {
        return Err(Error::NotFound {
            what: "environment",
            name: env.to_string(),
        });
    }
    let patch = serde_json::json!({
        "metadata": {"labels": {berth_engine_core::LABEL_DETACHED: berth_engine_core::DETACHED_YES}}
    });
    engine
        .jobs()
        .patch(
            env.as_str(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .map(|_| ())
        .map_err(|e| {
            if errors::is_not_found(&e) {
                Error::NotFound {
                    what: "environment",
                    name: env.to_string(),
                }
            } else {
                errors::api(&engine.address, "label the job detached", e)
            }
        })
}

pub(crate) async fn list(
    engine: &KubernetesEngine,
    selector: &LabelSelector,
) -> Result<Vec<EnvironmentStatus>> {
    let jobs = engine
        .jobs()
        .list(&ListParams::default().labels(&label_selector(selector)))
        .await
        .map_err(|e| errors::api(&engine.address, "list jobs", e))?;
    let mut out = Vec::new();
    for job in jobs.items {
        let Some(name) = job.metadata.name.clone() else {
            continue;
        };
        if job.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let labels: BTreeMap<String, String> = job.metadata.labels.clone().unwrap_or_default();
        let status = job.status.clone().unwrap_or_default();
        let finished = status.conditions.unwrap_or_default().iter().any(|c| {
            matches!(c.type_.as_str(), "Complete" | "Failed" | "FailureTarget")
                && c.status == "True"
        }) || status.failed.unwrap_or(0) > 0
            || status.succeeded.unwrap_or(0) > 0;
        let state = if finished {
            EnvironmentState::Exited
        } else if status.ready.unwrap_or(0) > 0 || status.active.unwrap_or(0) > 0 {
            EnvironmentState::Running
        } else {
            EnvironmentState::Pending
        };
        let image = job_image(&job);
        out.push(EnvironmentStatus::new(
            EnvironmentId::new(name)?,
            image,
            state,
            labels,
        ));
    }
    let jobs: std::collections::BTreeSet<String> = out.iter().map(|e| e.id.to_string()).collect();
    out.extend(netpol::orphans(engine, selector, &jobs).await?);
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// The image of a Job's (first) container.
pub(crate) fn job_image(job: &Job) -> String {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

impl KubernetesEngine {
    pub(crate) fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    /// Whether `env` names one of berth's Jobs: `Ok(true)` when it does, `Ok(false)` when no
    /// Job (and no pod) has that name, and the refusal when a Job or pod of that name exists
    /// without berth's label. Every call taking an environment goes through this, so berth
    /// never execs into, copies with, or deletes an object it did not create.
    pub(crate) async fn is_berths(&self, env: &EnvironmentId) -> Result<bool> {
        let berths = |labels: Option<&BTreeMap<String, String>>| {
            labels
                .and_then(|l| l.get(LABEL_MANAGED_BY))
                .map(String::as_str)
                == Some(MANAGED_BY_VALUE)
        };
        match self.jobs().get_opt(env.as_str()).await {
            Ok(Some(job)) if berths(job.metadata.labels.as_ref()) => return Ok(true),
            Ok(Some(_)) => return Err(Error::not_a_berth_environment(env)),
            Ok(None) => {}
            Err(e) => return Err(errors::api(&self.address, "get job", e)),
        }
        // A bare pod given by name is refused the same way, rather than reported missing.
        match self.pod_api().get_opt(env.as_str()).await {
            Ok(Some(pod)) if !berths(pod.metadata.labels.as_ref()) => {
                Err(Error::not_a_berth_environment(env))
            }
            Ok(_) => Ok(false),
            Err(e) => Err(errors::api(&self.address, "get pod", e)),
        }
    }

    /// [`KubernetesEngine::is_berths`] for calls that then look up the pod: a pod learned
    /// from one of berth's Jobs is known to be berth's, so only a first use asks.
    pub(crate) async fn check_berths(&self, env: &EnvironmentId) -> Result<()> {
        let known = self
            .pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(env);
        if !known {
            self.is_berths(env).await?;
        }
        Ok(())
    }

    pub(crate) async fn delete_job(&self, name: &str) -> Result<StopOutcome> {
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        let outcome = match self.jobs().delete(name, &params).await {
            Ok(_) => StopOutcome::Stopped,
            Err(e) if errors::is_not_found(&e) => StopOutcome::AlreadyGone,
            Err(e) => return Err(errors::api(&self.address, "delete job", e)),
        };
        // Background propagation leaves the pods to the garbage collector; remove them now so
        // the environment's processes end at once.
        let pods = self
            .pod_api()
            .delete_collection(
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                },
                &ListParams::default().labels(&format!(
                    "job-name={name},{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"
                )),
            )
            .await;
        if let Err(e) = pods {
            if !errors::is_not_found(&e) {
                tracing::debug!(job = name, error = %e, "deleting the job's pods failed; the garbage collector will");
            }
        }
        Ok(outcome)
    }
}

/// A Kubernetes label selector (`k=v,k=v`) for `selector`, always requiring berth's
/// managed-by label.
pub(crate) fn label_selector(selector: &LabelSelector) -> String {
    let mut requirements = selector.requirements().clone();
    requirements.insert(LABEL_MANAGED_BY.into(), MANAGED_BY_VALUE.into());
    requirements
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The Job (and claim) `start` would create for `spec` under `config`, as JSON objects.
///
/// # Errors
/// [`Error::InvalidSpec`] when the spec is invalid.
pub fn render(spec: &EnvironmentSpec, config: &KubernetesConfig) -> Result<Vec<serde_json::Value>> {
    let name = manifest::job_name(spec);
    let mut out = Vec::new();
    if let (Workspace::Volume { name: claim, .. }, true) =
        (&spec.workspace, config.create_missing_claims)
    {
        let pvc = manifest::workspace_claim(claim, config, spec.object_labels(now_unix()));
        out.push(to_json("v1", "PersistentVolumeClaim", &pvc)?);
    }
    let job = manifest::job(spec, config, &name, now_unix())?;
    if let Some(policy) = netpol::network_policy(spec, config, &name, now_unix())? {
        out.push(to_json("networking.k8s.io/v1", "NetworkPolicy", &policy)?);
    }
    out.push(to_json("batch/v1", "Job", &job)?);
    Ok(out)
}

/// The value of [`LABEL_CREATED_BY`] on what berth renders for a cluster's scheduler.
pub const CREATED_BY_VALUE: &str = "berth";

/// The label naming berth as the author of a rendered run (Job, CronJob, Argo Workflow).
pub const LABEL_CREATED_BY: &str = "app.kubernetes.io/created-by";

/// The labels of a rendered run: the spec's own labels, [`LABEL_CREATED_BY`]` = berth` and the
/// environment name (`berth.dev/name`). Not berth's `managed-by`, session or creation time:
/// the cluster's scheduler owns these objects, and `berth gc` removes the `managed-by=berth`
/// Jobs whose session has ended, which would cut a scheduled run short.
#[must_use]
pub fn run_labels(spec: &EnvironmentSpec) -> BTreeMap<String, String> {
    let mut labels = spec.labels.clone();
    labels.remove(LABEL_MANAGED_BY);
    labels.insert(LABEL_CREATED_BY.into(), CREATED_BY_VALUE.into());
    labels.insert(berth_engine_core::LABEL_NAME.into(), spec.name.clone());
    labels
}

/// When a CronJob starts its runs: the schedule and its time zone. How (suspended,
/// concurrency, history, a starting deadline) is the config's [`ScheduleSettings`]
/// ([`KubernetesConfig::schedules`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CronSchedule {
    /// A cron expression of five fields (`0 4 * * *`).
    pub schedule: String,
    /// An IANA time zone (`Europe/Berlin`) the schedule is read in; `None` is the
    /// controller's own (UTC on most clusters).
    pub time_zone: Option<String>,
}

impl CronSchedule {
    /// `schedule` in the controller's time zone.
    #[must_use]
    pub fn new(schedule: impl Into<String>) -> Self {
        Self {
            schedule: schedule.into(),
            time_zone: None,
        }
    }

    /// The same, read in `time_zone`.
    #[must_use]
    pub fn with_time_zone(mut self, time_zone: impl Into<String>) -> Self {
        self.time_zone = Some(time_zone.into());
        self
    }
}

/// What a schedule does when its next run is due while the last one still runs
/// (`concurrencyPolicy` of a CronJob and of an Argo CronWorkflow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ConcurrencyPolicy {
    /// Start it anyway: runs overlap.
    Allow,
    /// Skip it (berth's default: a slow nightly run is not piled on).
    #[default]
    Forbid,
    /// Cancel the running one and start the new one.
    Replace,
}

impl ConcurrencyPolicy {
    /// Every policy, in the API's order.
    pub const ALL: [ConcurrencyPolicy; 3] = [
        ConcurrencyPolicy::Allow,
        ConcurrencyPolicy::Forbid,
        ConcurrencyPolicy::Replace,
    ];

    /// The API's spelling: `Allow`, `Forbid` or `Replace`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ConcurrencyPolicy::Allow => "Allow",
            ConcurrencyPolicy::Forbid => "Forbid",
            ConcurrencyPolicy::Replace => "Replace",
        }
    }
}

impl std::fmt::Display for ConcurrencyPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ConcurrencyPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                Error::invalid_spec(
                    "concurrency_policy",
                    format!("expected Allow, Forbid or Replace, got {s:?}"),
                )
            })
    }
}

/// How every schedule berth makes (a CronJob, an Argo CronWorkflow) starts and keeps its runs.
///
/// ```
/// use berth_engine_k8s::{ConcurrencyPolicy, ScheduleSettings};
///
/// let mut settings = ScheduleSettings::default();
/// assert_eq!(settings.concurrency_policy, ConcurrencyPolicy::Forbid);
/// settings.concurrency_policy = "Replace".parse().unwrap();
/// settings.successful_jobs_history_limit = Some(5);
/// assert!("replace".parse::<ConcurrencyPolicy>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ScheduleSettings {
    /// Created suspended: no run starts until `suspend` is set false on the cluster.
    pub suspend: bool,
    /// What a due run does while the last one runs.
    pub concurrency_policy: ConcurrencyPolicy,
    /// How many succeeded runs to keep; `None` is the cluster's default (3).
    pub successful_jobs_history_limit: Option<i32>,
    /// How many failed runs to keep; `None` is the cluster's default (1).
    pub failed_jobs_history_limit: Option<i32>,
    /// A run that could not start within this many seconds of its time is skipped; `None`
    /// has no deadline.
    pub starting_deadline_seconds: Option<i64>,
}

/// The pod template of a run of `command`: [`manifest::pod_spec`] (the pod an environment
/// gets, running `command` instead of the keepalive) with [`run_labels`].
///
/// # Errors
/// [`Error::InvalidSpec`] when the spec is invalid or `command` is empty.
pub fn run_pod_template(
    spec: &EnvironmentSpec,
    config: &KubernetesConfig,
    command: &[String],
) -> Result<PodTemplateSpec> {
    let mut metadata = ObjectMeta {
        labels: Some(run_labels(spec)),
        ..Default::default()
    };
    manifest::annotate(&mut metadata, &config.pod);
    Ok(PodTemplateSpec {
        metadata: Some(metadata),
        spec: Some(manifest::pod_spec(spec, config, PodCommand::Run(command))?),
    })
}

fn run_job_spec(
    spec: &EnvironmentSpec,
    config: &KubernetesConfig,
    command: &[String],
) -> Result<JobSpec> {
    Ok(JobSpec {
        backoff_limit: Some(0),
        active_deadline_seconds: Some(manifest::lifetime_secs(spec)),
        ttl_seconds_after_finished: Some(config.ttl_seconds_after_finished),
        template: run_pod_template(spec, config, command)?,
        ..Default::default()
    })
}

fn run_metadata(spec: &EnvironmentSpec, config: &KubernetesConfig, name: &str) -> ObjectMeta {
    let mut metadata = ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(config.namespace.clone()),
        labels: Some(run_labels(spec)),
        ..Default::default()
    };
    manifest::annotate(&mut metadata, &config.pod);
    metadata
}

/// A batch/v1 Job named `name` that runs `command` to completion in the spec's image: the
/// environment's pod ([`run_pod_template`]), `backoffLimit: 0`, `activeDeadlineSeconds` = the
/// lifetime, `ttlSecondsAfterFinished` from the config.
///
/// # Errors
/// [`Error::InvalidSpec`] when the spec is invalid or `command` is empty.
pub fn run_job(
    spec: &EnvironmentSpec,
    config: &KubernetesConfig,
    name: &str,
    command: &[String],
) -> Result<Job> {
    Ok(Job {
        metadata: run_metadata(spec, config, name),
        spec: Some(run_job_spec(spec, config, command)?),
        status: None,
    })
}

/// A batch/v1 CronJob named `name` that starts [`run_job`]'s Job on `schedule`, as the
/// config's [`ScheduleSettings`] say (suspend, concurrency policy, history limits, starting
/// deadline).
///
/// # Errors
/// [`Error::InvalidSpec`] when the spec is invalid or `command` is empty.
pub fn run_cron_job(
    spec: &EnvironmentSpec,
    config: &KubernetesConfig,
    name: &str,
    command: &[String],
    schedule: &CronSchedule,
) -> Result<CronJob> {
    let settings = &config.schedules;
    Ok(CronJob {
        metadata: run_metadata(spec, config, name),
        spec: Some(CronJobSpec {
            schedule: schedule.schedule.clone(),
            time_zone: schedule.time_zone.clone(),
            concurrency_policy: Some(settings.concurrency_policy.as_str().to_owned()),
            suspend: Some(settings.suspend),
            successful_jobs_history_limit: settings.successful_jobs_history_limit,
            failed_jobs_history_limit: settings.failed_jobs_history_limit,
            starting_deadline_seconds: settings.starting_deadline_seconds,
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(run_labels(spec)),
                    ..Default::default()
                }),
                spec: Some(run_job_spec(spec, config, command)?),
            },
        }),
        status: None,
    })
}

/// [`run_job`] as a JSON object with its `apiVersion` and `kind`.
///
/// # Errors
/// As [`run_job`].
pub fn render_run_job(
    spec: &EnvironmentSpec,
    config: &KubernetesConfig,
    name: &str,
    command: &[String],
) -> Result<serde_json::Value> {
    to_json("batch/v1", "Job", &run_job(spec, config, name, command)?)
}

/// [`run_cron_job`] as a JSON object with its `apiVersion` and `kind`.
///
/// # Errors
/// As [`run_cron_job`].
pub fn render_run_cron_job(
    spec: &EnvironmentSpec,
    config: &KubernetesConfig,
    name: &str,
    command: &[String],
    schedule: &CronSchedule,
) -> Result<serde_json::Value> {
    let cron = run_cron_job(spec, config, name, command, schedule)?;
    to_json("batch/v1", "CronJob", &cron)
}

/// [`run_pod_template`]'s pod spec as JSON, for schedulers with objects of their own (Argo).
///
/// # Errors
/// As [`run_pod_template`].
pub fn render_run_pod_spec(
    spec: &EnvironmentSpec,
    config: &KubernetesConfig,
    command: &[String],
) -> Result<serde_json::Value> {
    let pod = manifest::pod_spec(spec, config, PodCommand::Run(command))?;
    serde_json::to_value(pod).map_err(|e| Error::backend(BACKEND, "render", e))
}

fn to_json<T: serde::Serialize>(
    api_version: &str,
    kind: &str,
    obj: &T,
) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(obj).map_err(|e| Error::backend(BACKEND, "render", e))?;
    if let Some(map) = v.as_object_mut() {
        map.insert("apiVersion".into(), api_version.into());
        map.insert("kind".into(), kind.into());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_engine_core::{ImageRef, SecurityProfile, SessionId};

    fn spec() -> EnvironmentSpec {
        let mut s = EnvironmentSpec::new(
            ImageRef::new("busybox:1.36").unwrap(),
            SessionId::new("s1").unwrap(),
        );
        s.env.insert("A".into(), "1".into());
        s.workdir = Some("/workspace".into());
        s
    }

    fn argv() -> Vec<String> {
        vec!["sh".into(), "-c".into(), "exit 3".into()]
    }

    #[test]
    fn a_run_job_runs_the_command_in_the_environments_pod() {
        let config = KubernetesConfig::default();
        let s = spec();
        let job = run_job(&s, &config, "nightly", &argv()).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("nightly"));
        let labels = job.metadata.labels.clone().unwrap();
        assert_eq!(labels[LABEL_CREATED_BY], "berth");
        assert_eq!(labels["berth.dev/name"], "main");
        assert!(!labels.contains_key(LABEL_MANAGED_BY), "{labels:?}");
        let job_spec = job.spec.unwrap();
        assert_eq!(job_spec.backoff_limit, Some(0));
        assert_eq!(job_spec.active_deadline_seconds, Some(86400));
        assert_eq!(job_spec.ttl_seconds_after_finished, Some(600));
        let pod = job_spec.template.spec.unwrap();
        // The same pod as an environment's, the command instead of the keepalive.
        let mut env_pod = manifest::job(&s, &config, "x", 0)
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        assert_eq!(pod.containers[0].command.as_ref().unwrap(), &argv());
        assert_eq!(pod.termination_grace_period_seconds, None);
        env_pod.containers[0].command = Some(argv());
        env_pod.termination_grace_period_seconds = None;
        assert_eq!(pod, env_pod);
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.containers[0].working_dir.as_deref(), Some("/workspace"));
    }

    #[test]
    fn a_run_needs_a_command() {
        let err = run_job(&spec(), &KubernetesConfig::default(), "x", &[]).unwrap_err();
        assert!(err.to_string().contains("command"), "{err}");
    }

    #[test]
    fn a_cron_job_follows_the_schedule_settings() {
        let config = KubernetesConfig {
            schedules: ScheduleSettings {
                suspend: true,
                concurrency_policy: ConcurrencyPolicy::Replace,
                successful_jobs_history_limit: Some(5),
                failed_jobs_history_limit: Some(0),
                starting_deadline_seconds: Some(120),
            },
            ..KubernetesConfig::default()
        };
        let cron = run_cron_job(
            &spec(),
            &config,
            "n",
            &argv(),
            &CronSchedule::new("* * * * *"),
        )
        .unwrap()
        .spec
        .unwrap();
        assert_eq!(cron.suspend, Some(true));
        assert_eq!(cron.concurrency_policy.as_deref(), Some("Replace"));
        assert_eq!(cron.successful_jobs_history_limit, Some(5));
        assert_eq!(cron.failed_jobs_history_limit, Some(0));
        assert_eq!(cron.starting_deadline_seconds, Some(120));
    }

    #[test]
    fn a_cron_job_carries_the_schedule_and_the_run_job() {
        let mut s = spec();
        s.security = SecurityProfile::Restricted;
        s.user = Some("1000".into());
        let config = KubernetesConfig::default();
        let schedule = CronSchedule::new("0 4 * * *").with_time_zone("Europe/Berlin");
        let cron = run_cron_job(&s, &config, "nightly", &argv(), &schedule).unwrap();
        let cron_spec = cron.spec.unwrap();
        assert_eq!(cron_spec.schedule, "0 4 * * *");
        assert_eq!(cron_spec.time_zone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(cron_spec.concurrency_policy.as_deref(), Some("Forbid"));
        assert_eq!(cron_spec.suspend, Some(false));
        assert_eq!(cron_spec.successful_jobs_history_limit, None);
        assert_eq!(cron_spec.starting_deadline_seconds, None);
        let job_spec = cron_spec.job_template.spec.unwrap();
        assert_eq!(
            job_spec,
            run_job(&s, &config, "nightly", &argv())
                .unwrap()
                .spec
                .unwrap()
        );
        let pod = job_spec.template.spec.unwrap();
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
        let json = render_run_cron_job(&s, &config, "nightly", &argv(), &schedule).unwrap();
        assert_eq!(json["apiVersion"], "batch/v1");
        assert_eq!(json["kind"], "CronJob");
    }
}
