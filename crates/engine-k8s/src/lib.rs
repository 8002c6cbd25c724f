//! berth's Kubernetes backend: [`KubernetesEngine`] runs each environment as a batch/v1 Job
//! whose one container sleeps for the environment's lifetime, mounts the workspace (a PVC, a
//! hostPath on local clusters, or an emptyDir), and takes commands over the pod exec
//! websocket (`v5.channel.k8s.io`, so stdin end-of-file reaches the command).
//!
//! ```no_run
//! use berth_engine_core::{ContainerEngine, EnvironmentSpec, ExecRequest, ImageRef, SessionId};
//! use berth_engine_k8s::{KubernetesConfig, KubernetesEngine};
//!
//! #[tokio::main]
//! async fn main() -> berth_engine_core::Result<()> {
//!     let mut config = KubernetesConfig::default();
//!     config.namespace = "berth-agents".into();
//!     let engine = KubernetesEngine::connect(config).await?;
//!     let spec = EnvironmentSpec::new(ImageRef::new("busybox:1.36")?, SessionId::generate());
//!     let env = engine.start(&spec).await?;
//!     let out = engine.exec(&env, ExecRequest::shell("echo hi")).await?;
//!     print!("{}", out.stdout_lossy());
//!     engine.stop(&env).await?;
//!     Ok(())
//! }
//! ```

mod attach;
mod copy;
mod errors;
mod exec;
pub mod manifest;
mod policy;
mod retry;
mod status;
mod wait;
mod ws;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use berth_engine_core::{
    BackendKind, BuildSpec, ContainerEngine, EngineInfo, EnvironmentId, EnvironmentSpec,
    EnvironmentState, EnvironmentStatus, Error, ExecProcess, ExecRequest, ImageInfo, ImageRef,
    LabelSelector, Progress, PullPolicy, Resources, Result, StopOutcome, TarStream, VolumeStatus,
    Workspace, LABEL_MANAGED_BY, MANAGED_BY_VALUE,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::Api;

use crate::errors::BACKEND;

/// How to reach the cluster and what every environment's pod gets.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KubernetesConfig {
    /// Kubeconfig file; `None` means `KUBECONFIG`, else `~/.kube/config`, else the in-cluster
    /// service account, like kubectl.
    pub kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig; `None` means its current context.
    pub context: Option<String>,
    /// Namespace of the Jobs and claims.
    pub namespace: String,
    /// Service account of the pods (its token is never mounted).
    pub service_account: Option<String>,
    /// Resource requests of the environment container.
    pub requests: Resources,
    /// Resource limits (an environment spec's own limits win).
    pub limits: Resources,
    /// `imagePullPolicy` of the container; `None` leaves the cluster default.
    pub image_pull_policy: Option<String>,
    /// How long `start` waits for the pod to run, scale-ups, claim binding and pull retries
    /// included (the waiting policy is in the README's Kubernetes section).
    pub start_timeout: Duration,
    /// How long an unschedulable pod waits for an autoscaler to announce a scale-up
    /// (`TriggeredScaleUp`, `Nominated`) before it fails with the scheduler's message.
    pub scale_up_grace: Duration,
    /// `ttlSecondsAfterFinished` of the Jobs.
    pub ttl_seconds_after_finished: i32,
    /// Storage request of workspace claims berth creates.
    pub workspace_size: String,
    /// Create a workspace claim ([`Workspace::Volume`]) when it is missing; otherwise a
    /// missing claim is an error at start.
    pub create_missing_claims: bool,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            context: None,
            namespace: "default".into(),
            service_account: None,
            requests: Resources::default(),
            limits: Resources::default(),
            image_pull_policy: None,
            start_timeout: Duration::from_secs(300),
            // cluster-autoscaler scans every 10 s; twice that covers one missed scan.
            scale_up_grace: Duration::from_secs(20),
            ttl_seconds_after_finished: 600,
            workspace_size: "1Gi".into(),
            create_missing_claims: false,
        }
    }
}

/// A [`ContainerEngine`] on a Kubernetes cluster.
pub struct KubernetesEngine {
    client: kube::Client,
    config: KubernetesConfig,
    address: String,
    /// Environment (Job) → its pod, learned at start or on first use.
    pods: Mutex<HashMap<EnvironmentId, String>>,
    /// Pod → how this image switches users (probed once).
    user_tools: Mutex<HashMap<String, exec::UserTool>>,
}

impl std::fmt::Debug for KubernetesEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesEngine")
            .field("address", &self.address)
            .field("namespace", &self.config.namespace)
            .finish_non_exhaustive()
    }
}

pub(crate) use berth_engine_core::backend::now_unix;

impl KubernetesEngine {
    /// Builds a client from the kubeconfig (or in-cluster config) and checks nothing yet; call
    /// [`ContainerEngine::init`] to reach the API server.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when no usable configuration is found; [`Error::InvalidSpec`]
    /// for a bad namespace.
    pub async fn connect(config: KubernetesConfig) -> Result<Self> {
        manifest::validate_config(&config)?;
        let options = kube::config::KubeConfigOptions {
            context: config.context.clone(),
            ..Default::default()
        };
        let where_ = config.kubeconfig.as_ref().map_or_else(
            || "KUBECONFIG / ~/.kube/config / in-cluster".to_owned(),
            |p| p.display().to_string(),
        );
        let kube_config = match &config.kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path).map_err(|e| match e {
                    // kube's own message quotes the path's Debug form ('"/x"'); the address
                    // already names it, so keep only the I/O cause.
                    kube::config::KubeconfigError::ReadConfig(io, _) => {
                        errors::unavailable(&where_, "cannot read the kubeconfig", io)
                    }
                    other => errors::unavailable(&where_, "cannot read the kubeconfig", other),
                })?;
                kube::Config::from_custom_kubeconfig(file, &options).await
            }
            None if config.context.is_some() => kube::Config::from_kubeconfig(&options).await,
            None => kube::Config::infer()
                .await
                .map_err(|e| kube::config::KubeconfigError::LoadContext(e.to_string())),
        }
        .map_err(|e| errors::unavailable(&where_, "no usable cluster configuration", e))?;
        let address = format!(
            "{} (context {})",
            kube_config.cluster_url,
            config.context.as_deref().unwrap_or("current")
        );
        let client = client(kube_config)
            .map_err(|e| errors::unavailable(&address, "cannot build a client", e))?;
        Ok(Self {
            client,
            config,
            address,
            pods: Mutex::new(HashMap::new()),
            user_tools: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &KubernetesConfig {
        &self.config
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    fn pod_api(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    /// The objects `start` would create for `spec`, without creating them (`berth render`).
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] when the spec is invalid.
    pub fn render(&self, spec: &EnvironmentSpec) -> Result<Vec<serde_json::Value>> {
        render(spec, &self.config)
    }

    /// What `berth doctor` checks on a cluster beyond reachability and permissions
    /// ([`KubernetesEngine::can_i`]): the namespace and the workspace claim. Each entry is
    /// (check, ok, detail).
    pub async fn checks(&self, claim: Option<&str>) -> Vec<(String, bool, String)> {
        let mut out = Vec::new();
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        out.push(match namespaces.get_opt(&self.config.namespace).await {
            Ok(Some(_)) => (
                "namespace".into(),
                true,
                format!("{} exists", self.config.namespace),
            ),
            Ok(None) => (
                "namespace".into(),
                false,
                format!(
                    "{} does not exist (kubectl create namespace {})",
                    self.config.namespace, self.config.namespace
                ),
            ),
            Err(e) => ("namespace".into(), false, e.to_string()),
        });
        if let Some(claim) = claim {
            out.push(match self.claims().get_opt(claim).await {
                Ok(Some(c)) => {
                    let phase = c
                        .status
                        .and_then(|s| s.phase)
                        .unwrap_or_else(|| "unknown".into());
                    (
                        "pvc".into(),
                        phase == "Bound",
                        format!("{claim} is {phase}"),
                    )
                }
                Ok(None) if self.config.create_missing_claims => (
                    "pvc".into(),
                    true,
                    format!("{claim} is missing; berth will create it"),
                ),
                Ok(None) => (
                    "pvc".into(),
                    false,
                    format!(
                        "{claim} does not exist in {}; create it or set kubernetes.create_pvc",
                        self.config.namespace
                    ),
                ),
                Err(e) => ("pvc".into(), false, e.to_string()),
            });
        }
        out
    }

    /// Runs the image of `spec` in a short-lived pod built exactly like the environment's
    /// (security profile, resources, service account, pull policy), then removes it:
    /// `berth doctor`'s image check, judged by admission and quotas as the environment will be.
    ///
    /// # Errors
    /// As [`ContainerEngine::start`] would fail for the same spec: [`Error::ImageNotFound`],
    /// [`Error::Forbidden`] (RBAC or admission), [`Error::Unschedulable`],
    /// [`Error::Timeout`] naming what was awaited, ...
    pub async fn check_image_like(&self, spec: &EnvironmentSpec) -> Result<()> {
        wait::check_image(self, spec, PullPolicy::IfNotPresent).await
    }

    /// Whether this identity may `verb` `resource[/subresource]` of API `group` in the
    /// namespace, by SelfSubjectAccessReview; `None` when the server does not serve it.
    ///
    /// # Errors
    /// When the review itself fails (unreachable, refused).
    pub async fn can_i(
        &self,
        verb: &str,
        group: &str,
        resource: &str,
        subresource: Option<&str>,
    ) -> Result<Option<bool>> {
        use k8s_openapi::api::authorization::v1::{
            ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
        };
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(self.config.namespace.clone()),
                    verb: Some(verb.into()),
                    resource: Some(resource.into()),
                    subresource: subresource.map(Into::into),
                    group: Some(group.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SelfSubjectAccessReview> = Api::all(self.client.clone());
        match api.create(&PostParams::default(), &review).await {
            Ok(r) => Ok(Some(r.status.is_some_and(|s| s.allowed))),
            Err(e) if errors::is_not_found(&e) => Ok(None),
            Err(e) => Err(errors::api(&self.address, "review access", e)),
        }
    }

    fn forget_pod(&self, env: &EnvironmentId) {
        self.pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(env);
    }

    /// The running pod of `env`, checked afresh on every call: a pod being deleted (stopped,
    /// or past its deadline) must not take commands.
    async fn pod_of(&self, env: &EnvironmentId) -> Result<String> {
        let cached = self
            .pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(env)
            .cloned();
        let live = |p: &Pod| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && p.metadata.deletion_timestamp.is_none()
        };
        let not_found = || Error::NotFound {
            what: "running environment",
            name: env.to_string(),
        };
        if let Some(name) = cached {
            return match self.pod_api().get_opt(&name).await {
                Ok(Some(pod)) if live(&pod) => Ok(name),
                Ok(_) => {
                    self.forget_pod(env);
                    Err(not_found())
                }
                Err(e) => Err(errors::api(&self.address, "get pod", e)),
            };
        }
        let pods = self
            .pod_api()
            .list(&ListParams::default().labels(&format!(
                "job-name={env},{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"
            )))
            .await
            .map_err(|e| errors::api(&self.address, "list pods", e))?;
        match pods
            .items
            .into_iter()
            .find(live)
            .and_then(|p| p.metadata.name)
        {
            Some(name) => {
                self.pods
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(env.clone(), name.clone());
                Ok(name)
            }
            None => Err(not_found()),
        }
    }

    /// Whether `env` names one of berth's Jobs: `Ok(true)` when it does, `Ok(false)` when no
    /// Job (and no pod) has that name, and the refusal when a Job or pod of that name exists
    /// without berth's label. Every call taking an environment goes through this, so berth
    /// never execs into, copies with, or deletes an object it did not create.
    async fn is_berths(&self, env: &EnvironmentId) -> Result<bool> {
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
    async fn check_berths(&self, env: &EnvironmentId) -> Result<()> {
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

    async fn delete_job(&self, name: &str) -> Result<StopOutcome> {
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

    async fn ensure_claim(&self, name: &str, spec: &EnvironmentSpec) -> Result<()> {
        match self.claims().get_opt(name).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                let claim =
                    manifest::workspace_claim(name, &self.config, spec.object_labels(now_unix()));
                match self.claims().create(&PostParams::default(), &claim).await {
                    Ok(_) => Ok(()),
                    Err(e) if errors::is_conflict(&e) => Ok(()),
                    Err(e) => Err(errors::api(
                        &self.address,
                        "create persistent volume claim",
                        e,
                    )),
                }
            }
            Err(e) => Err(errors::api(&self.address, "get persistent volume claim", e)),
        }
    }
}

/// A client for `config` whose requests are retried by [`retry::ApiRetry`] instead of kube's
/// default policy.
fn client(mut config: kube::Config) -> kube::Result<kube::Client> {
    config.default_retry = false;
    let retry = tower::ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(retry::ApiRetry::default()))
        // Retry needs a cloneable service; the buffer makes kube's boxed stack one.
        .layer(tower::buffer::BufferLayer::new(1024));
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&retry)
        .build())
}

/// A Kubernetes label selector (`k=v,k=v`) for `selector`, always requiring berth's
/// managed-by label.
fn label_selector(selector: &LabelSelector) -> String {
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

#[async_trait]
impl ContainerEngine for KubernetesEngine {
    fn backend(&self) -> BackendKind {
        BackendKind::Kubernetes
    }

    async fn init(&self) -> Result<EngineInfo> {
        let version =
            self.client.apiserver_version().await.map_err(|e| {
                errors::unavailable(&self.address, "the API server did not answer", e)
            })?;
        Ok(EngineInfo::new(
            BackendKind::Kubernetes,
            self.address.clone(),
            version.git_version,
            Some(format!("{}.{}", version.major, version.minor)),
        ))
    }

    async fn ensure_image(
        &self,
        image: &ImageRef,
        policy: PullPolicy,
        _progress: &Progress,
    ) -> Result<ImageInfo> {
        let spec = EnvironmentSpec::new(image.clone(), berth_engine_core::SessionId::generate());
        wait::check_image(self, &spec, policy).await?;
        Ok(ImageInfo::new(image.clone(), None, None))
    }

    async fn build_image(&self, build: BuildSpec, _progress: &Progress) -> Result<ImageInfo> {
        Err(Error::Unsupported {
            backend: BACKEND,
            operation: "build_image",
            reason: format!(
                "a cluster has no image builder berth can drive; build {} with the Docker backend (or a remote builder such as BuildKit or kaniko) and push it to a registry the cluster pulls from",
                build.tag
            ),
        })
    }

    async fn start(&self, spec: &EnvironmentSpec) -> Result<EnvironmentId> {
        spec.validate()?;
        let mut job_name = manifest::job_name(spec);
        let mut job = manifest::job(spec, &self.config, &job_name, now_unix())?;
        if let Workspace::Volume { name, .. } = &spec.workspace {
            if self.config.create_missing_claims {
                self.ensure_claim(name, spec).await?;
            }
        }
        let mut attempts = 0;
        loop {
            match self.jobs().create(&PostParams::default(), &job).await {
                Ok(_) => break,
                // A name collision (5 random hex digits): pick another.
                Err(e) if errors::is_conflict(&e) && attempts < 3 => {
                    attempts += 1;
                    job_name = manifest::job_name(spec);
                    job.metadata.name = Some(job_name.clone());
                }
                Err(e) => return Err(errors::api(&self.address, "create job", e)),
            }
        }
        let id = EnvironmentId::new(job_name.clone())?;
        match wait::until_running(self, &job_name, spec).await {
            Ok(pod) => {
                self.pods
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
                match tokio::time::timeout(patience, self.delete_job(&job_name)).await {
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

    async fn exec_streaming(&self, env: &EnvironmentId, req: ExecRequest) -> Result<ExecProcess> {
        self.check_berths(env).await?;
        exec::exec_streaming(self, env, req).await
    }

    async fn copy_in(&self, env: &EnvironmentId, dest: &str, tar: TarStream) -> Result<()> {
        self.check_berths(env).await?;
        copy::copy_in(self, env, dest, tar).await
    }

    async fn copy_out(&self, env: &EnvironmentId, path: &str) -> Result<TarStream> {
        self.check_berths(env).await?;
        copy::copy_out(self, env, path).await
    }

    async fn stop(&self, env: &EnvironmentId) -> Result<StopOutcome> {
        self.forget_pod(env);
        // Refuses a Job or pod berth did not create; a missing one is AlreadyGone below.
        self.is_berths(env).await?;
        let outcome = self.delete_job(env.as_str()).await?;
        tracing::debug!(env = %env, ?outcome, "stopped environment");
        Ok(outcome)
    }

    async fn mark_detached(&self, env: &EnvironmentId) -> Result<()> {
        if !self.is_berths(env).await? {
            return Err(Error::NotFound {
                what: "environment",
                name: env.to_string(),
            });
        }
        let patch = serde_json::json!({
            "metadata": {"labels": {berth_engine_core::LABEL_DETACHED: berth_engine_core::DETACHED_YES}}
        });
        self.jobs()
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
                    errors::api(&self.address, "label the job detached", e)
                }
            })
    }

    async fn list(&self, selector: &LabelSelector) -> Result<Vec<EnvironmentStatus>> {
        let jobs = self
            .jobs()
            .list(&ListParams::default().labels(&label_selector(selector)))
            .await
            .map_err(|e| errors::api(&self.address, "list jobs", e))?;
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

    async fn list_volumes(&self, selector: &LabelSelector) -> Result<Vec<VolumeStatus>> {
        let claims = self
            .claims()
            .list(&ListParams::default().labels(&label_selector(selector)))
            .await
            .map_err(|e| errors::api(&self.address, "list persistent volume claims", e))?;
        // In use, as the pvc-protection controller judges it: named by a pod that has not
        // terminated (a pod being deleted still mounts it).
        let pods = self
            .pod_api()
            .list(&ListParams::default())
            .await
            .map_err(|e| errors::api(&self.address, "list pods", e))?;
        let mounted: std::collections::HashSet<String> = pods
            .items
            .into_iter()
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Succeeded" | "Failed"))
            })
            .flat_map(|p| p.spec.and_then(|s| s.volumes).unwrap_or_default())
            .filter_map(|v| v.persistent_volume_claim.map(|c| c.claim_name))
            .collect();
        let mut out: Vec<VolumeStatus> = claims
            .items
            .into_iter()
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .filter_map(|c| {
                let name = c.metadata.name?;
                let labels = c.metadata.labels.unwrap_or_default();
                let in_use = mounted.contains(&name);
                let mut status = VolumeStatus::new(name, labels, in_use);
                if status.created_unix_secs.is_none() {
                    status.created_unix_secs = c
                        .metadata
                        .creation_timestamp
                        .and_then(|t| u64::try_from(t.0.as_second()).ok());
                }
                Some(status)
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn remove_volume(&self, name: &str) -> Result<StopOutcome> {
        match self.claims().delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(StopOutcome::Stopped),
            Err(e) if errors::is_not_found(&e) => Ok(StopOutcome::AlreadyGone),
            Err(e) => Err(errors::api(
                &self.address,
                "delete persistent volume claim",
                e,
            )),
        }
    }
}
