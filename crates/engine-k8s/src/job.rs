//! Jobs: start (create and wait until running), stop, list, the detached record, and
//! whether a name is one of berth's Jobs.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_engine_core::{
    EnvironmentId, EnvironmentSpec, EnvironmentState, EnvironmentStatus, Error, LabelSelector,
    Result, StopOutcome, Workspace, LABEL_MANAGED_BY, MANAGED_BY_VALUE,
};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::Api;

use crate::errors::{self, BACKEND};
use crate::{manifest, now_unix, wait, KubernetesConfig, KubernetesEngine};

pub(crate) async fn start(
    engine: &KubernetesEngine,
    spec: &EnvironmentSpec,
) -> Result<EnvironmentId> {
    spec.validate()?;
    let mut job_name = manifest::job_name(spec);
    let mut job = manifest::job(spec, &engine.config, &job_name, now_unix())?;
    if let Workspace::Volume { name, .. } = &spec.workspace {
        if engine.config.create_missing_claims {
            engine.ensure_claim(name, spec).await?;
        }
    }
    let mut attempts = 0;
    loop {
        match engine.jobs().create(&PostParams::default(), &job).await {
            Ok(_) => break,
            // A name collision (5 random hex digits): pick another.
            Err(e) if errors::is_conflict(&e) && attempts < 3 => {
                attempts += 1;
                job_name = manifest::job_name(spec);
                job.metadata.name = Some(job_name.clone());
            }
            Err(e) => return Err(errors::api(&engine.address, "create job", e)),
        }
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
            match tokio::time::timeout(patience, engine.delete_job(&job_name)).await {
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
    engine.forget_pod(env);
    // Refuses a Job or pod berth did not create; a missing one is AlreadyGone below.
    engine.is_berths(env).await?;
    let outcome = engine.delete_job(env.as_str()).await?;
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
        let image = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.first())
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        out.push(EnvironmentStatus::new(
            EnvironmentId::new(name)?,
            image,
            state,
            labels,
        ));
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
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
    out.push(to_json("batch/v1", "Job", &job)?);
    Ok(out)
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
