//! Batch runs as Argo Workflows: a `Workflow` (or, on a schedule, a `CronWorkflow`) of
//! `argoproj.io/v1alpha1`, created through the API as a [`DynamicObject`] from the object the
//! runner renders (`berth render --kind workflow`), labelled as berth's Job runs are.
//!
//! Its outcome comes from the Workflow's `status.phase` (`Pending`, `Running`, `Succeeded`,
//! `Failed`, `Error`) and, when its pod (label [`LABEL_WORKFLOW`]) still exists, the exit code
//! of the pod's `main` container, else the one Argo records in the pod node's
//! `outputs.exitCode`. Logs come from that pod, as a Job run's do. A cancel labels the
//! Workflow [`LABEL_CANCELLED`](crate::LABEL_CANCELLED) and sets `spec.shutdown: Terminate`
//! (Argo then stops its pods), so the Workflow stays for its status; a CronWorkflow is
//! deleted. On a cluster without Argo's CRDs the API's 404 for the resource becomes
//! [`Error::Unsupported`] saying so.

use berth_engine_core::{
    backend, Error, Result, RunId, RunSpec, RunState, RunStatus, Workspace, LABEL_MANAGED_BY,
    LABEL_RUN, MANAGED_BY_VALUE,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::ApiResource;
use kube::Api;
use serde_json::{json, Value};

use crate::errors::{self, BACKEND};
use crate::KubernetesEngine;

/// The API group and version of Argo's Workflows.
pub const ARGO_API_VERSION: &str = "argoproj.io/v1alpha1";
/// The label Argo puts on a Workflow's pods: the Workflow's name.
pub const LABEL_WORKFLOW: &str = "workflows.argoproj.io/workflow";
/// The label Argo puts on the Workflows a CronWorkflow starts: its name.
pub const LABEL_CRON_WORKFLOW: &str = "workflows.argoproj.io/cron-workflow";
/// The container of an Argo pod that runs the template's command.
pub const MAIN_CONTAINER: &str = "main";

/// The sentence of the error for a cluster without Argo's CRDs.
pub const NO_ARGO_CRDS: &str = "the cluster has no Argo Workflows CRDs (argoproj.io/v1alpha1 workflows): install Argo Workflows or use --engine job";

/// Which of Argo's kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArgoKind {
    Workflow,
    CronWorkflow,
}

impl ArgoKind {
    fn resource(self) -> ApiResource {
        let (kind, plural) = match self {
            ArgoKind::Workflow => ("Workflow", "workflows"),
            ArgoKind::CronWorkflow => ("CronWorkflow", "cronworkflows"),
        };
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("argoproj.io", "v1alpha1", kind),
            plural,
        )
    }
}

impl KubernetesEngine {
    pub(crate) fn argo_api(&self, kind: ArgoKind) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.config.namespace,
            &kind.resource(),
        )
    }

    /// Submits `object`, a rendered Argo `Workflow` (or `CronWorkflow` when `spec` has a
    /// schedule), as the run of `spec`: named like a Job run (a random suffix), in the
    /// engine's namespace, with the run's labels on it, its pods and (for a schedule) its
    /// Workflows. Follow it with the [`ContainerEngine`](berth_engine_core::ContainerEngine)
    /// run calls, as any run.
    ///
    /// ```no_run
    /// # async fn demo(engine: &berth_engine_k8s::KubernetesEngine, spec: &berth_engine_core::RunSpec) -> berth_engine_core::Result<()> {
    /// let object = serde_json::json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
    ///     "metadata": {"name": "x"}, "spec": {"entrypoint": "main", "templates": []}});
    /// let run = engine.submit_workflow(spec, object).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the cluster has no Argo CRDs; [`Error::InvalidSpec`] when
    /// `object`'s kind does not match the spec (a Workflow for a run once, a CronWorkflow for
    /// a schedule); the API's refusal otherwise.
    pub async fn submit_workflow(&self, spec: &RunSpec, object: Value) -> Result<RunId> {
        spec.validate()?;
        let kind = match (object["kind"].as_str(), spec.schedule.is_some()) {
            (Some("Workflow"), false) => ArgoKind::Workflow,
            (Some("CronWorkflow"), true) => ArgoKind::CronWorkflow,
            (other, scheduled) => {
                return Err(Error::invalid_spec(
                    "kind",
                    format!(
                        "expected a {} for a run {}, got {other:?}",
                        if scheduled {
                            "CronWorkflow"
                        } else {
                            "Workflow"
                        },
                        if scheduled { "on a schedule" } else { "once" }
                    ),
                ))
            }
        };
        if let Workspace::Volume { name, .. } = &spec.env.workspace {
            if self.config.create_missing_claims {
                self.ensure_claim(name, &spec.env).await?;
            }
        }
        let labels = json!(spec.object_labels(backend::now_unix()));
        let mut object = object;
        object["metadata"]["namespace"] = self.config.namespace.clone().into();
        object["metadata"]["labels"] = labels.clone();
        match kind {
            ArgoKind::Workflow => object["spec"]["podMetadata"]["labels"] = labels,
            ArgoKind::CronWorkflow => {
                object["spec"]["workflowMetadata"]["labels"] = labels.clone();
                object["spec"]["workflowSpec"]["podMetadata"]["labels"] = labels;
            }
        }
        let api = self.argo_api(kind);
        let mut attempts = 0;
        loop {
            // A CronWorkflow's Workflows are named <name>-<unix time>: its own leaves room.
            let name = match kind {
                ArgoKind::Workflow => crate::manifest::job_name(&spec.env),
                ArgoKind::CronWorkflow => backend::object_name(&spec.env, 52),
            };
            object["metadata"]["name"] = name.clone().into();
            let dynamic: DynamicObject = serde_json::from_value(object.clone())
                .map_err(|e| Error::backend(BACKEND, "encode the workflow", e))?;
            match api.create(&PostParams::default(), &dynamic).await {
                Ok(_) => {
                    tracing::debug!(run = %name, "submitted Argo run");
                    return RunId::new(name);
                }
                Err(e) if is_missing_crd(&e) => return Err(no_argo_crds()),
                // A name collision (5 random hex digits): pick another.
                Err(e) if errors::is_conflict(&e) && attempts < 3 => attempts += 1,
                Err(e) => return Err(errors::api(&self.address, "create the workflow", e)),
            }
        }
    }
}

/// The error of a cluster without Argo's CRDs.
fn no_argo_crds() -> Error {
    Error::Unsupported {
        backend: BACKEND,
        operation: "submitting an Argo Workflow",
        reason: NO_ARGO_CRDS.to_owned(),
    }
}

/// Whether `err` is the API's 404 for the resource itself (its group or kind is not served:
/// a plain `404 page not found`, or a `Status` naming no object), not for a missing
/// namespace or object.
pub(crate) fn is_missing_crd(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(s) if s.code == 404 => s
            .details
            .as_ref()
            .is_none_or(|d| d.name.is_empty() && d.kind.is_empty()),
        _ => false,
    }
}

/// Whether `err` means the run cannot be an Argo one here: no CRDs, or no permission to
/// read them (a role made for Job runs).
pub(crate) fn is_absent(err: &kube::Error) -> bool {
    is_missing_crd(err)
        || errors::is_not_found(err)
        || matches!(err, kube::Error::Api(s) if s.code == 403)
}

pub(crate) fn is_berths(obj: &DynamicObject) -> bool {
    let labels = obj.metadata.labels.as_ref();
    labels
        .and_then(|l| l.get(LABEL_MANAGED_BY))
        .map(String::as_str)
        == Some(MANAGED_BY_VALUE)
        && labels.is_some_and(|l| l.contains_key(LABEL_RUN))
}

/// The Workflow `name` or the CronWorkflow `name` of berth's, if there is one.
pub(crate) async fn get(
    engine: &KubernetesEngine,
    name: &str,
) -> Result<Option<(ArgoKind, DynamicObject)>> {
    for kind in [ArgoKind::Workflow, ArgoKind::CronWorkflow] {
        match engine.argo_api(kind).get_opt(name).await {
            Ok(Some(obj)) if is_berths(&obj) => return Ok(Some((kind, obj))),
            Ok(Some(_)) => return Ok(None),
            Ok(None) => {}
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(errors::api(&engine.address, "get the run's workflow", e)),
        }
    }
    Ok(None)
}

/// berth's Workflows or CronWorkflows matching `selector` (none on a cluster without them).
pub(crate) async fn list(
    engine: &KubernetesEngine,
    kind: ArgoKind,
    selector: &str,
) -> Result<Vec<DynamicObject>> {
    match engine
        .argo_api(kind)
        .list(&ListParams::default().labels(selector))
        .await
    {
        Ok(l) => Ok(l
            .items
            .into_iter()
            .filter(|o| o.metadata.deletion_timestamp.is_none())
            .collect()),
        Err(e) if is_absent(&e) => Ok(Vec::new()),
        Err(e) => Err(errors::api(&engine.address, "list workflows", e)),
    }
}

/// The Workflow's pods, newest first.
pub(crate) async fn pods_of(engine: &KubernetesEngine, workflow: &str) -> Result<Vec<Pod>> {
    crate::run::pods_labelled(engine, &format!("{LABEL_WORKFLOW}={workflow}")).await
}

/// The image of the Workflow's (first) template container.
fn image(spec: &Value) -> String {
    spec["templates"][0]["container"]["image"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The exit code Argo recorded for the workflow's pod node (`status.nodes.*.outputs.exitCode`,
/// a string), for when the pod is gone.
fn recorded_exit_code(status: &Value) -> Option<i32> {
    status["nodes"]
        .as_object()?
        .values()
        .filter(|n| n["type"] == "Pod")
        .find_map(|n| n["outputs"]["exitCode"].as_str()?.parse().ok())
}

/// The status of a Workflow from its phase and its pods: the phase says where it is, the
/// main container's exit code (or Argo's record of it) what the command returned.
pub(crate) fn workflow_status(wf: &DynamicObject, pods: &[Pod]) -> Result<RunStatus> {
    let name = wf.metadata.name.clone().unwrap_or_default();
    let labels = wf.metadata.labels.clone().unwrap_or_default();
    let status = &wf.data["status"];
    let phase = status["phase"].as_str().unwrap_or("");
    let message = status["message"].as_str().map(str::to_owned);
    let exit = pods
        .iter()
        .find_map(|p| crate::run::terminated(p, MAIN_CONTAINER));
    let code = exit
        .as_ref()
        .map(|(c, _)| *c)
        .or_else(|| recorded_exit_code(status));
    let cancelled = labels.get(crate::LABEL_CANCELLED).map(String::as_str) == Some("true");
    let (state, message) = match phase {
        _ if cancelled => (RunState::Cancelled, None),
        "Succeeded" => (RunState::Succeeded, None),
        "Failed" | "Error" => match code {
            _ if message.as_deref().is_some_and(|m| m.contains("deadline")) => {
                (RunState::DeadlineExceeded, message)
            }
            Some(0) | None => (
                RunState::Lost,
                Some(format!(
                    "the workflow ended {phase} without the command failing{}",
                    message.map(|m| format!(" ({m})")).unwrap_or_default()
                )),
            ),
            Some(_) => (RunState::Failed, exit.and_then(|(_, r)| r).or(message)),
        },
        "Running" => (RunState::Running, None),
        _ => (
            RunState::Pending,
            pods.iter()
                .find_map(|p| crate::run::waiting_reason(p, MAIN_CONTAINER))
                .or(message),
        ),
    };
    Ok(
        RunStatus::new(RunId::new(name)?, image(&wf.data["spec"]), state, labels)
            .with_exit_code(code)
            .with_message(message),
    )
}

/// The status of a CronWorkflow: scheduled, with the Workflows it started.
pub(crate) fn cron_workflow_status(
    cron: &DynamicObject,
    workflows: &[DynamicObject],
) -> Result<RunStatus> {
    let name = cron.metadata.name.clone().unwrap_or_default();
    let mut status = RunStatus::new(
        RunId::new(name.clone())?,
        image(&cron.data["spec"]["workflowSpec"]),
        RunState::Scheduled,
        cron.metadata.labels.clone().unwrap_or_default(),
    );
    status.schedule = cron.data["spec"]["schedule"].as_str().map(str::to_owned);
    let mut owned: Vec<&DynamicObject> = workflows
        .iter()
        .filter(|w| {
            w.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_CRON_WORKFLOW))
                == Some(&name)
        })
        .collect();
    owned.sort_by(|a, b| {
        b.metadata
            .creation_timestamp
            .cmp(&a.metadata.creation_timestamp)
    });
    status.runs = owned
        .iter()
        .filter_map(|w| w.metadata.name.clone())
        .filter_map(|n| RunId::new(n).ok())
        .collect();
    Ok(status)
}

/// Cancels the Workflow `name`: labels it cancelled and sets `spec.shutdown: Terminate`, on
/// which Argo stops its pods and ends it (the Workflow stays for its status).
pub(crate) async fn terminate(engine: &KubernetesEngine, name: &str) -> Result<()> {
    let patch = json!({
        "metadata": {"labels": {crate::LABEL_CANCELLED: "true"}},
        "spec": {"shutdown": "Terminate"},
    });
    engine
        .argo_api(ArgoKind::Workflow)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
        .map_err(|e| errors::api(&engine.address, "terminate the workflow", e))
}

/// Deletes berth's Workflow or CronWorkflow `name` (in the background: Argo's pods go with a
/// Workflow through their owner references).
pub(crate) async fn delete(
    engine: &KubernetesEngine,
    kind: ArgoKind,
    name: &str,
) -> Result<berth_engine_core::StopOutcome> {
    let params = kube::api::DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Background),
        ..Default::default()
    };
    match engine.argo_api(kind).delete(name, &params).await {
        Ok(_) => Ok(berth_engine_core::StopOutcome::Stopped),
        Err(e) if errors::is_not_found(&e) || is_absent(&e) => {
            Ok(berth_engine_core::StopOutcome::AlreadyGone)
        }
        Err(e) => Err(errors::api(&engine.address, "delete the workflow", e)),
    }
}

/// Deletes the CronWorkflow `name` (its Workflows stay, as Argo leaves them).
pub(crate) async fn delete_cron(engine: &KubernetesEngine, name: &str) -> Result<()> {
    match engine
        .argo_api(ArgoKind::CronWorkflow)
        .delete(name, &kube::api::DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if errors::is_not_found(&e) => Ok(()),
        Err(e) => Err(errors::api(&engine.address, "delete the cron workflow", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wf(phase: &str, extra: Value) -> DynamicObject {
        let mut v = json!({
            "apiVersion": ARGO_API_VERSION, "kind": "Workflow",
            "metadata": {"name": "berth-s-run-1", "labels": {LABEL_MANAGED_BY: MANAGED_BY_VALUE, LABEL_RUN: "once"}},
            "spec": {"templates": [{"name": "main", "container": {"image": "busybox"}}]},
            "status": {"phase": phase},
        });
        if let Some(m) = extra.as_object() {
            for (k, x) in m {
                v["status"][k] = x.clone();
            }
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn phases_map_to_states_and_the_recorded_exit_code_counts() {
        let s = workflow_status(&wf("Running", json!({})), &[]).unwrap();
        assert_eq!((s.state, s.exit_code), (RunState::Running, None));
        assert_eq!(s.image, "busybox");
        let s = workflow_status(&wf("", json!({})), &[]).unwrap();
        assert_eq!(s.state, RunState::Pending);
        let failed = json!({"nodes": {"n": {"type": "Pod", "outputs": {"exitCode": "3"}}}});
        let s = workflow_status(&wf("Failed", failed), &[]).unwrap();
        assert_eq!((s.state, s.exit_code), (RunState::Failed, Some(3)));
        let s = workflow_status(&wf("Error", json!({"message": "pod deleted"})), &[]).unwrap();
        assert_eq!((s.state, s.exit_code), (RunState::Lost, None));
        assert!(s.message.unwrap().contains("pod deleted"));
        let s = workflow_status(
            &wf("Failed", json!({"message": "Step exceeded its deadline"})),
            &[],
        )
        .unwrap();
        assert_eq!(s.state, RunState::DeadlineExceeded);
        let s = workflow_status(&wf("Succeeded", json!({})), &[]).unwrap();
        assert_eq!((s.state, s.exit_code), (RunState::Succeeded, None));
    }

    #[test]
    fn only_a_resource_level_404_is_a_missing_crd() {
        let plain = kube::core::Status::failure("404 page not found", "Failed to parse error data")
            .with_code(404);
        assert!(is_missing_crd(&kube::Error::Api(plain.boxed())));
        let mut ns: kube::core::Status =
            kube::core::Status::failure("namespaces \"x\" not found", "NotFound").with_code(404);
        ns.details = serde_json::from_value(json!({"name": "x", "kind": "namespaces"})).unwrap();
        assert!(!is_missing_crd(&kube::Error::Api(ns.boxed())));
    }
}
