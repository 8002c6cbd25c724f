//! `berth render --kind`: a command run to completion as the object of a cluster's own
//! scheduler — a batch/v1 `Job` or `CronJob`, or an Argo `Workflow` or `CronWorkflow`
//! (argoproj.io/v1alpha1) — built from the same pod spec as berth's environments
//! ([`berth_engine_k8s::manifest::pod_spec`]), so it carries the same image, security profile,
//! resources, env, workdir, user, service account, workspace, deadline and TTL.

use std::fmt;
use std::str::FromStr;

use berth_engine_core::{BackendKind, EnvironmentSpec, RunSource, RunSpec, Workspace};
use berth_engine_k8s::{CronSchedule, KubernetesConfig};
use serde_json::{json, Map, Value};

use crate::backend::kubernetes_config;
use crate::config::BerthConfig;
use crate::spec::EnvOptions;

/// The API version of Argo's `Workflow` and `CronWorkflow`.
pub const ARGO_API_VERSION: &str = "argoproj.io/v1alpha1";

/// The name of the one template of a rendered Argo workflow, its `entrypoint`.
pub const ARGO_ENTRYPOINT: &str = "main";

/// Which scheduler's object `berth render --kind` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// A batch/v1 Job: one run.
    Job,
    /// A batch/v1 CronJob: a Job on a schedule.
    CronJob,
    /// An Argo Workflow: one run.
    Workflow,
    /// An Argo CronWorkflow: a Workflow on a schedule.
    CronWorkflow,
}

impl Kind {
    /// Every kind, in the order `--kind` lists them.
    pub const ALL: [Kind; 4] = [Kind::Job, Kind::CronJob, Kind::Workflow, Kind::CronWorkflow];

    /// The name `--kind` takes (`job`, `cronjob`, `workflow`, `cron-workflow`).
    #[must_use]
    pub const fn flag_value(self) -> &'static str {
        match self {
            Kind::Job => "job",
            Kind::CronJob => "cronjob",
            Kind::Workflow => "workflow",
            Kind::CronWorkflow => "cron-workflow",
        }
    }

    /// Whether the kind runs on a schedule (and so needs one).
    #[must_use]
    pub const fn is_scheduled(self) -> bool {
        matches!(self, Kind::CronJob | Kind::CronWorkflow)
    }

    /// Whether the kind is Argo's (a Workflow or CronWorkflow).
    #[must_use]
    pub const fn is_argo(self) -> bool {
        matches!(self, Kind::Workflow | Kind::CronWorkflow)
    }

    /// The longest name the API accepts for the kind: 52 for the scheduled kinds (their
    /// controllers append a suffix to name each run), 63 (a DNS label) for the others.
    #[must_use]
    pub const fn max_name_len(self) -> usize {
        if self.is_scheduled() {
            52
        } else {
            63
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.flag_value())
    }
}

impl FromStr for Kind {
    type Err = ManifestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.flag_value() == s)
            .ok_or_else(|| ManifestError::UnknownKind { kind: s.to_owned() })
    }
}

/// Why a run's manifest cannot be rendered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// `--kind` named no kind berth renders.
    #[error("invalid --kind {kind:?}: expected job, cronjob, workflow or cron-workflow")]
    UnknownKind {
        /// What was given.
        kind: String,
    },
    /// No command after `--`.
    #[error("--kind {kind} needs the command to run: berth render --kind {kind} -- CMD...")]
    MissingCommand {
        /// The kind asked for.
        kind: Kind,
    },
    /// A scheduled kind without `--schedule`.
    #[error(
        "--kind {kind} needs --schedule (a cron expression of five fields, e.g. \"0 4 * * *\")"
    )]
    MissingSchedule {
        /// The kind asked for.
        kind: Kind,
    },
    /// `--schedule` or `--timezone` for a kind that runs once.
    #[error("{flag} is only for --kind cronjob or cron-workflow, not {kind}")]
    NotScheduled {
        /// The flag given (`--schedule` or `--timezone`).
        flag: &'static str,
        /// The kind asked for.
        kind: Kind,
    },
    /// A cron expression that is not five fields of cron characters.
    #[error("invalid --schedule {schedule:?}: {reason}")]
    BadSchedule {
        /// What was given.
        schedule: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// A time zone that cannot be an IANA name.
    #[error("invalid --timezone {timezone:?}: expected an IANA time zone name such as Europe/Berlin or UTC")]
    BadTimezone {
        /// What was given.
        timezone: String,
    },
    /// An object name the API would refuse.
    #[error("invalid --name: the object would be named {name:?}, {reason}")]
    BadName {
        /// The object name made of the prefix and `--name`.
        name: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// The spec is invalid (or the pod cannot be made of it).
    #[error(transparent)]
    Engine(#[from] berth_engine_core::Error),
}

/// What to render besides the environment's spec: the kind, the command and its schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunManifest {
    /// The kind of object.
    pub kind: Kind,
    /// The command (argv) the run executes to completion.
    pub command: Vec<String>,
    /// A cron expression of five fields: required for the scheduled kinds, refused otherwise.
    pub schedule: Option<String>,
    /// The IANA time zone the schedule is read in (scheduled kinds only).
    pub timezone: Option<String>,
    /// A repository cloned into the workspace before the command starts (an init container
    /// of `kubernetes.git_image`); only [`RunSource::Git`] has a place in a manifest.
    pub source: Option<RunSource>,
}

impl RunManifest {
    /// `command` as a `kind`, without a schedule.
    #[must_use]
    pub fn new(kind: Kind, command: Vec<String>) -> Self {
        Self {
            kind,
            command,
            schedule: None,
            timezone: None,
            source: None,
        }
    }

    /// The same on `schedule`.
    #[must_use]
    pub fn with_schedule(mut self, schedule: impl Into<String>) -> Self {
        self.schedule = Some(schedule.into());
        self
    }

    /// The same with the schedule read in `timezone`.
    #[must_use]
    pub fn with_timezone(mut self, timezone: impl Into<String>) -> Self {
        self.timezone = Some(timezone.into());
        self
    }

    /// Checks the command, schedule and time zone against the kind.
    ///
    /// # Errors
    /// The [`ManifestError`] naming the flag at fault.
    pub fn validate(&self) -> Result<Option<CronSchedule>, ManifestError> {
        let kind = self.kind;
        if self.command.is_empty() {
            return Err(ManifestError::MissingCommand { kind });
        }
        if !kind.is_scheduled() {
            if self.schedule.is_some() {
                return Err(ManifestError::NotScheduled {
                    flag: "--schedule",
                    kind,
                });
            }
            if self.timezone.is_some() {
                return Err(ManifestError::NotScheduled {
                    flag: "--timezone",
                    kind,
                });
            }
            return Ok(None);
        }
        let schedule = self
            .schedule
            .as_deref()
            .ok_or(ManifestError::MissingSchedule { kind })?;
        validate_schedule(schedule)?;
        let mut cron = CronSchedule::new(schedule.split_whitespace().collect::<Vec<_>>().join(" "));
        if let Some(tz) = &self.timezone {
            validate_timezone(tz)?;
            cron = cron.with_time_zone(tz.clone());
        }
        Ok(Some(cron))
    }
}

/// Checks a cron expression: five whitespace-separated fields of digits, names (`MON`,
/// `JAN`) and `* , - / ?`. The time zone goes in `--timezone`, not a `CRON_TZ=` prefix.
///
/// # Errors
/// [`ManifestError::BadSchedule`] saying what is wrong.
pub fn validate_schedule(schedule: &str) -> Result<(), ManifestError> {
    let bad = |reason: String| ManifestError::BadSchedule {
        schedule: schedule.to_owned(),
        reason,
    };
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(bad(format!(
            "expected five fields (minute hour day-of-month month day-of-week, e.g. \"0 4 * * *\"), got {}",
            fields.len()
        )));
    }
    for field in fields {
        if field.contains('=') {
            return Err(bad(
                "a time zone prefix (CRON_TZ=, TZ=) is not allowed; use --timezone".into(),
            ));
        }
        if let Some(c) = field
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '*' | ',' | '-' | '/' | '?')))
        {
            return Err(bad(format!(
                "field {field:?} holds {c:?}; expected digits, names and * , - / ?"
            )));
        }
    }
    Ok(())
}

fn validate_timezone(tz: &str) -> Result<(), ManifestError> {
    let ok = !tz.is_empty()
        && !tz.starts_with('/')
        && !tz.ends_with('/')
        && !tz.contains("..")
        && tz
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'));
    if ok {
        Ok(())
    } else {
        Err(ManifestError::BadTimezone {
            timezone: tz.to_owned(),
        })
    }
}

/// The name of the rendered object: `<name_prefix>-<name>` (`berth-main`, `berth-nightly`),
/// the same every time so applying it again updates it.
///
/// # Errors
/// [`ManifestError::BadName`] when it is not a DNS label short enough for `kind`.
pub fn object_name(spec: &EnvironmentSpec, kind: Kind) -> Result<String, ManifestError> {
    let name = if spec.name_prefix.is_empty() {
        spec.name.clone()
    } else {
        format!("{}-{}", spec.name_prefix, spec.name)
    };
    let bad = |reason: String| ManifestError::BadName {
        name: name.clone(),
        reason,
    };
    if name.len() > kind.max_name_len() {
        return Err(bad(format!(
            "{} characters; a {kind} name has at most {}",
            name.len(),
            kind.max_name_len()
        )));
    }
    let dns_label = !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !dns_label {
        return Err(bad(
            "expected lowercase letters, digits and '-', starting and ending with a letter or digit"
                .into(),
        ));
    }
    Ok(name)
}

/// The spec a rendered run is made of: [`crate::spec::environment_spec`] read with the
/// Kubernetes backend whatever `runner.backend` says (the manifest is for a cluster: its
/// user, security profile and workspace claim come from `kubernetes:`), plus the command's
/// `env` and `workdir`.
///
/// # Errors
/// As [`crate::spec::environment_spec`]; [`berth_engine_core::Error::InvalidSpec`] naming
/// `env` for a bad variable.
pub fn run_spec(
    config: &BerthConfig,
    options: &EnvOptions,
    env: impl IntoIterator<Item = (String, String)>,
    workdir: Option<String>,
) -> crate::error::Result<EnvironmentSpec> {
    let mut on_kubernetes = config.clone();
    on_kubernetes.runner.backend = BackendKind::Kubernetes;
    // A manifest is for a cluster: the client's local files (docker.env_files,
    // docker.secret_files) have no place in it.
    on_kubernetes.docker.env_files.clear();
    on_kubernetes.docker.secret_files.clear();
    let mut spec = crate::spec::environment_spec(&on_kubernetes, options)?;
    spec.env.extend(env);
    spec.workdir = workdir;
    spec.validate()?;
    Ok(spec)
}

/// The objects of `run` for the environment `spec` under `config`: the workspace claim when
/// berth would create it (`kubernetes.create_pvc`), then the Job, CronJob, Workflow or
/// CronWorkflow. Nothing connects to a cluster.
///
/// # Errors
/// [`ManifestError`] naming the flag (or the spec's field) at fault.
pub fn objects(
    config: &BerthConfig,
    spec: &EnvironmentSpec,
    run: &RunManifest,
) -> Result<Vec<Value>, ManifestError> {
    let schedule = run.validate()?;
    // With a source, the files need a workspace and the command starts in them.
    let prepared = run.source.as_ref().map(|source| {
        RunSpec::new(spec.clone(), run.command.clone())
            .with_source(source.clone())
            .prepared_env()
            .into_owned()
    });
    let spec = prepared.as_ref().unwrap_or(spec);
    let name = object_name(spec, run.kind)?;
    let k8s = kubernetes_config(config);
    let mut out = Vec::new();
    if let (Workspace::Volume { name: claim, .. }, true) =
        (&spec.workspace, k8s.create_missing_claims)
    {
        let pvc = berth_engine_k8s::manifest::workspace_claim(
            claim,
            &k8s,
            berth_engine_k8s::run_labels(spec),
        );
        let mut pvc = serde_json::to_value(pvc).map_err(|e| {
            berth_engine_core::Error::backend(
                berth_engine_core::BackendKind::Kubernetes,
                "render the workspace claim",
                e,
            )
        })?;
        pvc["apiVersion"] = "v1".into();
        pvc["kind"] = "PersistentVolumeClaim".into();
        out.push(pvc);
    }
    if !run.kind.is_argo() {
        // Argo creates a per-workflow claim from its volumeClaimTemplates instead.
        for cache in &k8s.pod.caches {
            if let Some(pvc) = berth_engine_k8s::manifest::cache_claim(
                cache,
                &k8s,
                berth_engine_k8s::run_labels(spec),
            ) {
                let mut pvc = serde_json::to_value(pvc).map_err(|e| {
                    berth_engine_core::Error::backend(
                        berth_engine_core::BackendKind::Kubernetes,
                        "render a cache claim",
                        e,
                    )
                })?;
                pvc["apiVersion"] = "v1".into();
                pvc["kind"] = "PersistentVolumeClaim".into();
                out.push(pvc);
            }
        }
    }
    let command = &run.command;
    let mut object = match (run.kind, schedule) {
        (Kind::Job, _) => berth_engine_k8s::render_run_job(spec, &k8s, &name, command)?,
        (Kind::CronJob, Some(schedule)) => {
            berth_engine_k8s::render_run_cron_job(spec, &k8s, &name, command, &schedule)?
        }
        (Kind::Workflow, _) => workflow(spec, &k8s, &name, command, None)?,
        (Kind::CronWorkflow, Some(schedule)) => {
            workflow(spec, &k8s, &name, command, Some(&schedule))?
        }
        (kind, None) => return Err(ManifestError::MissingSchedule { kind }),
    };
    if let Some(source) = &run.source {
        add_clone(&mut object, spec, &k8s, command, source)?;
    }
    annotate(&mut object, &k8s.pod.annotations);
    out.push(object);
    Ok(out)
}

/// The init container that clones `source`, in the rendered object's pod (or Argo template).
fn add_clone(
    object: &mut Value,
    spec: &EnvironmentSpec,
    k8s: &KubernetesConfig,
    command: &[String],
    source: &RunSource,
) -> Result<(), ManifestError> {
    source.validate()?;
    let RunSource::Git { url, branch } = source else {
        return Err(berth_engine_core::Error::invalid_spec(
            "git",
            "a manifest runs on a cluster, which clones a repository URL; a local directory has no place in it",
        )
        .into());
    };
    let mut pod = berth_engine_k8s::manifest::pod_spec(
        spec,
        k8s,
        berth_engine_k8s::manifest::PodCommand::Run(command),
    )?;
    berth_engine_k8s::manifest::add_git_clone(&mut pod, spec, k8s, url, branch.as_deref())?;
    let init = serde_json::to_value(pod.init_containers.unwrap_or_default()).map_err(|e| {
        berth_engine_core::Error::backend(
            berth_engine_core::BackendKind::Kubernetes,
            "render the clone's init container",
            e,
        )
    })?;
    for pointer in [
        "/spec/template/spec",
        "/spec/jobTemplate/spec/template/spec",
        "/spec/templates/0",
        "/spec/workflowSpec/templates/0",
    ] {
        if let Some(target) = object.pointer_mut(pointer).and_then(Value::as_object_mut) {
            target.insert("initContainers".into(), init);
            return Ok(());
        }
    }
    unreachable!("every rendered kind has a pod spec or a template")
}

/// `annotations` on the object and on every pod (or job, or workflow) template inside it.
fn annotate(object: &mut Value, annotations: &std::collections::BTreeMap<String, String>) {
    if annotations.is_empty() {
        return;
    }
    for pointer in [
        "/metadata",
        "/spec/template/metadata",
        "/spec/jobTemplate/metadata",
        "/spec/jobTemplate/spec/template/metadata",
        "/spec/podMetadata",
        "/spec/workflowMetadata",
        "/spec/workflowSpec/podMetadata",
    ] {
        if let Some(meta) = object.pointer_mut(pointer).and_then(Value::as_object_mut) {
            let entry = meta
                .entry("annotations")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(map) = entry.as_object_mut() {
                for (k, v) in annotations {
                    map.insert(k.clone(), v.clone().into());
                }
            }
        }
    }
}

/// An Argo Workflow (or, with `schedule`, a CronWorkflow) whose one template runs `command`
/// in the container of the environment's pod spec; the pod-level settings (security context,
/// service account, volumes) go to the workflow's spec.
fn workflow(
    spec: &EnvironmentSpec,
    config: &KubernetesConfig,
    name: &str,
    command: &[String],
    schedule: Option<&CronSchedule>,
) -> Result<Value, ManifestError> {
    let pod = berth_engine_k8s::render_run_pod_spec(spec, config, command)?;
    let Value::Object(mut pod) = pod else {
        unreachable!("a PodSpec serializes to an object")
    };
    let mut container = pod
        .remove("containers")
        .and_then(|c| c.as_array().and_then(|c| c.first().cloned()))
        .unwrap_or_else(|| json!({}));
    // Argo names a template's container `main` itself.
    if let Some(c) = container.as_object_mut() {
        c.remove("name");
    }
    let labels = json!(berth_engine_k8s::run_labels(spec));
    let mut wf = Map::new();
    wf.insert("entrypoint".into(), ARGO_ENTRYPOINT.into());
    wf.insert(
        "templates".into(),
        json!([{"name": ARGO_ENTRYPOINT, "container": container}]),
    );
    for key in ["serviceAccountName", "securityContext", "volumes"] {
        if let Some(v) = pod.remove(key) {
            wf.insert(key.into(), v);
        }
    }
    // A cache berth would create is a claim per workflow: a volumeClaimTemplate named as the
    // volume the container mounts, in place of that volume.
    let mut templates = Vec::new();
    for (i, cache) in config.pod.caches.iter().enumerate() {
        let Some(new) = &cache.create else { continue };
        let volume = berth_engine_k8s::manifest::cache_volume(i);
        if let Some(Value::Array(volumes)) = wf.get_mut("volumes") {
            volumes.retain(|v| v["name"] != volume.as_str());
        }
        let claim_spec = serde_json::to_value(berth_engine_k8s::manifest::claim_spec(new))
            .map_err(|e| {
                berth_engine_core::Error::backend(
                    berth_engine_core::BackendKind::Kubernetes,
                    "render a cache claim",
                    e,
                )
            })?;
        templates.push(json!({"metadata": {"name": volume}, "spec": claim_spec}));
    }
    if wf
        .get("volumes")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        wf.remove("volumes");
    }
    if !templates.is_empty() {
        wf.insert("volumeClaimTemplates".into(), Value::Array(templates));
    }
    // The command's container gets no token; Argo's own executor (the wait container) runs
    // with the service account, which Argo requires once the token is off.
    wf.insert("automountServiceAccountToken".into(), false.into());
    wf.insert(
        "executor".into(),
        json!({"serviceAccountName": config.service_account.as_deref().unwrap_or("default")}),
    );
    wf.insert(
        "activeDeadlineSeconds".into(),
        i64::try_from(spec.max_lifetime.as_secs())
            .unwrap_or(i64::MAX)
            .into(),
    );
    wf.insert(
        "ttlStrategy".into(),
        json!({"secondsAfterCompletion": config.ttl_seconds_after_finished}),
    );
    // A failed run's pod stays for its logs until the workflow's TTL removes it.
    wf.insert("podGC".into(), json!({"strategy": "OnPodSuccess"}));
    wf.insert("podMetadata".into(), json!({"labels": labels}));
    let metadata = json!({"name": name, "namespace": config.namespace, "labels": labels});
    Ok(match schedule {
        None => json!({
            "apiVersion": ARGO_API_VERSION,
            "kind": "Workflow",
            "metadata": metadata,
            "spec": wf,
        }),
        Some(schedule) => {
            let mut cron = Map::new();
            cron.insert("schedule".into(), schedule.schedule.clone().into());
            if let Some(tz) = &schedule.time_zone {
                cron.insert("timezone".into(), tz.clone().into());
            }
            // Argo's CronWorkflow takes the CronJob's names for these.
            let settings = &config.schedules;
            cron.insert(
                "concurrencyPolicy".into(),
                settings.concurrency_policy.as_str().into(),
            );
            cron.insert("suspend".into(), settings.suspend.into());
            for (key, value) in [
                (
                    "successfulJobsHistoryLimit",
                    settings.successful_jobs_history_limit.map(i64::from),
                ),
                (
                    "failedJobsHistoryLimit",
                    settings.failed_jobs_history_limit.map(i64::from),
                ),
                (
                    "startingDeadlineSeconds",
                    settings.starting_deadline_seconds,
                ),
            ] {
                if let Some(value) = value {
                    cron.insert(key.into(), value.into());
                }
            }
            cron.insert("workflowMetadata".into(), json!({"labels": labels}));
            cron.insert("workflowSpec".into(), Value::Object(wf));
            json!({
                "apiVersion": ARGO_API_VERSION,
                "kind": "CronWorkflow",
                "metadata": metadata,
                "spec": cron,
            })
        }
    })
}

#[cfg(test)]
mod tests;
