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

mod argo;
mod attach;
mod cache;
mod checks;
mod claim;
mod client;
mod copy;
mod errors;
mod exec;
mod flow;
mod job;
pub mod manifest;
pub mod netpol;
mod pod;
mod policy;
mod pools;
mod port;
pub mod progress;
mod retry;
mod run;
mod status;
mod wait;
mod ws;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use berth_engine_core::{
    BackendKind, BuildSpec, ContainerEngine, EngineInfo, EnvironmentId, EnvironmentSpec,
    EnvironmentStatus, Error, ExecProcess, ExecRequest, ImageInfo, ImageRef, LabelSelector,
    LogOptions, LogStream, Network, PoolClaim, PoolSpec, Progress, PullPolicy, RemoveOutcome,
    Resources, Result, RunId, RunSpec, RunStatus, StopOutcome, TarStream, VolumeStatus,
};

pub use crate::argo::{
    ARGO_API_VERSION, LABEL_CRON_WORKFLOW, LABEL_WORKFLOW, MAIN_CONTAINER, NO_ARGO_CRDS,
};
use crate::errors::BACKEND;
pub use crate::job::{
    render, render_run_cron_job, render_run_job, render_run_pod_spec, run_cron_job, run_job,
    run_labels, run_pod_template, ConcurrencyPolicy, CronSchedule, ScheduleSettings,
    CREATED_BY_VALUE, LABEL_CREATED_BY,
};
pub use crate::run::LABEL_CANCELLED;

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
    /// Create a workspace claim ([`Workspace::Volume`](berth_engine_core::Workspace::Volume)) when it is missing; otherwise a
    /// missing claim is an error at start.
    pub create_missing_claims: bool,
    /// Env and files from Secrets and ConfigMaps, caches, security overrides and annotations
    /// of every pod.
    pub pod: manifest::PodExtras,
    /// How schedules (CronJobs) start and keep their runs.
    pub schedules: ScheduleSettings,
    /// The image of the init container that clones a run's git source
    /// ([`RunSource::Git`](berth_engine_core::RunSource::Git)) into the workspace; it needs
    /// `git` and `sh`.
    pub git_image: String,
    /// A Secret whose key `token` authenticates that clone; `None`: no credentials.
    pub git_secret: Option<String>,
    /// At most this many creates and deletes (POST and DELETE requests) of one engine are in
    /// flight at once; the others queue. Bounds the write burst hundreds of environments
    /// starting or stopping together send the API server.
    pub max_concurrent_writes: usize,
}

/// The default [`KubernetesConfig::git_image`].
pub const DEFAULT_GIT_IMAGE: &str = "alpine/git:2.47.2";

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
            pod: manifest::PodExtras::default(),
            schedules: ScheduleSettings::default(),
            git_image: DEFAULT_GIT_IMAGE.into(),
            git_secret: None,
            max_concurrent_writes: 16,
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
    /// The shared watch of berth's pods, read by exec and start.
    view: cache::PodView,
    /// The nodes' allocatable sizes and when they were listed (`None` inside: unreadable).
    #[allow(clippy::type_complexity)]
    node_sizes: Mutex<Option<(std::time::Instant, Option<Vec<(f64, f64)>>)>>,
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
    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &KubernetesConfig {
        &self.config
    }
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
        job::start(self, spec).await
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
        job::stop(self, env).await
    }

    async fn set_network(&self, env: &EnvironmentId, network: &Network) -> Result<()> {
        netpol::set_network(self, env, network).await
    }

    async fn mark_detached(&self, env: &EnvironmentId) -> Result<()> {
        job::mark_detached(self, env).await
    }

    async fn start_pool_member(&self, pool: &PoolSpec) -> Result<EnvironmentId> {
        pools::start_member(self, pool).await
    }

    async fn claim_pool_member(&self, claim: &PoolClaim) -> Result<Option<EnvironmentId>> {
        pools::claim(self, claim).await
    }

    async fn list(&self, selector: &LabelSelector) -> Result<Vec<EnvironmentStatus>> {
        job::list(self, selector).await
    }

    async fn list_volumes(&self, selector: &LabelSelector) -> Result<Vec<VolumeStatus>> {
        claim::list(self, selector).await
    }

    async fn remove_volume(&self, name: &str) -> Result<RemoveOutcome> {
        claim::remove(self, name).await
    }

    async fn submit_run(&self, spec: &RunSpec) -> Result<RunId> {
        run::submit(self, spec).await
    }

    async fn run_status(&self, run: &RunId) -> Result<RunStatus> {
        run::status(self, run).await
    }

    async fn run_logs(&self, run: &RunId, options: LogOptions) -> Result<LogStream> {
        run::logs(self, run, options).await
    }

    async fn list_runs(&self, selector: &LabelSelector) -> Result<Vec<RunStatus>> {
        run::list(self, selector).await
    }

    async fn cancel_run(&self, run: &RunId) -> Result<()> {
        run::cancel(self, run).await
    }

    async fn remove_run(&self, run: &RunId) -> Result<StopOutcome> {
        run::remove(self, run).await
    }

    async fn connect_port(
        &self,
        env: &EnvironmentId,
        port: u16,
    ) -> Result<berth_engine_core::PortStream> {
        port::connect(self, env, port).await
    }
}
