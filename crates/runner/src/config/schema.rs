//! The schema of `config.example.yaml` as typed serde structs: a configuration that
//! deserializes holds valid durations, quantities and choices, and what is left to
//! [`BerthConfig::validate`] is what depends on more than one value's form (an image
//! reference, absolute paths).
//!
//! Over 500 lines: one documented struct per section of the file, each declared through the
//! `section!` macro that also makes its list of keys; split across files, the schema would
//! no longer read in the order of `config.example.yaml`.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::time::Duration;

use berth_engine_core::{
    BackendKind, ImageRef, Network, PullPolicy, Resources, SecurityProfile, SessionId, Workspace,
};
use serde::{Deserialize, Serialize};

use super::builders::BuilderConfig;
use super::keys::{section, Key, Schema, ValueKind};
use super::pod::{
    CacheEntry, EnvFromEntry, KeyEntry, MountEntry, PodOptions, SecurityContextSection,
};
use super::pools::PoolConfig;
use super::runs::SchedulesSection;
use super::types::{
    backend_kind, kubernetes_pull_policy, process_count, pull_policy, security_profile,
    CpuQuantity, HumanDuration, Limit, MemoryQuantity,
};
use super::ConfigError;

section! {
    /// The whole configuration.
    ///
    /// ```
    /// use berth_runner::config::BerthConfig;
    /// use berth_engine_core::BackendKind;
    ///
    /// let config = BerthConfig::from_yaml_str("runner:\n  backend: docker\n  image: busybox:1.36\n").unwrap();
    /// assert_eq!(config.runner.backend, BackendKind::Docker);
    /// ```
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    #[non_exhaustive]
    pub struct BerthConfig {
        /// Backend choice and what every environment gets.
        pub runner: RunnerConfig,
        /// The Docker backend.
        pub docker: DockerSection,
        /// The Kubernetes backend.
        pub kubernetes: KubernetesSection,
        /// Limits of `berth cp` out of an environment.
        pub copy: CopySection,
        /// `berth serve`: the job agent over HTTP.
        pub server: ServerSection,
        /// Named Docker daemons that build images (`berth image build --builder NAME`).
        pub builders: BTreeMap<String, BuilderConfig>,
        /// Warm pools: `{NAME: {image, resources, env, min_ready, max, idle_ttl, ...}}`.
        pub pools: BTreeMap<String, PoolConfig>,
    }
}

section! {
    /// `runner:`: backend choice and environment defaults.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    #[non_exhaustive]
    pub struct RunnerConfig {
        /// `docker` or `kubernetes`.
        #[serde(deserialize_with = "backend_kind::deserialize")]
        pub backend: BackendKind,
        /// The default image of environments.
        pub image: Option<String>,
        /// `always`, `if_not_present` or `never`.
        #[serde(deserialize_with = "pull_policy::deserialize")]
        pub pull_policy: PullPolicy,
        /// How long an environment may live, e.g. `30m`, `24h`.
        pub max_lifetime: HumanDuration,
        /// The workspace: `none`, `ephemeral`, `{host_path: /abs}` or `{volume: name}`.
        pub workspace: WorkspaceConfig,
        /// Where the workspace is mounted.
        pub mount_path: String,
        /// Resource limits (Docker; Kubernetes uses `kubernetes.resources`).
        pub resources: ResourceLimits,
        /// What environments may reach: `none`, `full` (or `false` / `true`), or
        /// `{allow: [host:port | CIDR | CIDR:port, ..], dns: true|false}`.
        pub network: Network,
    }
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Docker,
            image: None,
            pull_policy: PullPolicy::IfNotPresent,
            max_lifetime: HumanDuration(Duration::from_secs(24 * 3600)),
            workspace: WorkspaceConfig::default(),
            mount_path: "/workspace".into(),
            resources: ResourceLimits::default(),
            network: Network::Full,
        }
    }
}

/// `runner.workspace`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkspaceConfig {
    /// No workspace.
    #[default]
    None,
    /// A scratch volume that lives and dies with the environment.
    Ephemeral,
    /// A host directory.
    HostPath(PathBuf),
    /// A named volume (Docker) or claim (Kubernetes).
    Volume(String),
}

impl Schema for WorkspaceConfig {
    fn kind() -> ValueKind {
        ValueKind::Workspace
    }
    /// The forms written as a mapping; a unit test checks each against serde.
    fn keys() -> Vec<Key> {
        ["host_path", "volume"]
            .map(|name| Key {
                name,
                kind: ValueKind::Text,
                children: Vec::new(),
            })
            .into()
    }
}

/// Reads the forms [`WorkspaceConfig`] serialises to, with a message that lists them
/// rather than naming the Rust enum.
impl<'de> Deserialize<'de> for WorkspaceConfig {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Word(String),
            Mapping(BTreeMap<String, String>),
        }
        let wrong = |got: String| {
            serde::de::Error::custom(format!(
                "expected {}, got {got}",
                ValueKind::Workspace.expected()
            ))
        };
        let form = Form::deserialize(de).map_err(|_| wrong("a value of another kind".into()))?;
        match form {
            Form::Word(word) => match word.as_str() {
                "none" => Ok(WorkspaceConfig::None),
                "ephemeral" => Ok(WorkspaceConfig::Ephemeral),
                _ => Err(wrong(format!("{word:?}"))),
            },
            Form::Mapping(map) => {
                let mut entries = map.into_iter();
                match (entries.next(), entries.next()) {
                    (Some((key, value)), None) if key == "host_path" => {
                        Ok(WorkspaceConfig::HostPath(value.into()))
                    }
                    (Some((key, value)), None) if key == "volume" => {
                        Ok(WorkspaceConfig::Volume(value))
                    }
                    (Some((key, _)), None) => Err(wrong(format!("{{{key}: ..}}"))),
                    _ => Err(wrong("a mapping of other than one key".into())),
                }
            }
        }
    }
}

/// The CPU limit of a Docker environment when `runner.resources.cpu` is unset (2 cores).
pub const DEFAULT_CPU: CpuQuantity = CpuQuantity(2000);
/// The memory limit of a Docker environment when `runner.resources.memory` is unset (4Gi).
pub const DEFAULT_MEMORY: MemoryQuantity = MemoryQuantity(4 << 30);

section! {
    /// `cpu`, `memory`, `pids` limits; unset CPU and memory take [`DEFAULT_CPU`] and
    /// [`DEFAULT_MEMORY`] on Docker, and `unlimited` lifts them.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    #[non_exhaustive]
    pub struct ResourceLimits {
        /// CPU, e.g. `500m`, `2` or `unlimited`.
        pub cpu: Option<Limit<CpuQuantity>>,
        /// Memory, e.g. `512Mi`, `4Gi` or `unlimited`.
        pub memory: Option<Limit<MemoryQuantity>>,
        /// Process count.
        #[serde(deserialize_with = "process_count::deserialize")]
        pub pids: Option<NonZeroU64>,
    }
}

section! {
    /// `docker:`.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    #[non_exhaustive]
    pub struct DockerSection {
        /// Daemon address (`unix://`, `tcp://`, `ssh://[user@]host[:port]`); unset means
        /// `context`, else `DOCKER_HOST`, else `DOCKER_CONTEXT` or the docker CLI's current
        /// context, else the local socket.
        pub host: Option<String>,
        /// A docker CLI context (`docker context ls`) to connect through; `host` (and
        /// `--docker-host`) wins over it.
        pub context: Option<String>,
        /// TLS client material for a `tcp://` host; no files set means `DOCKER_TLS_VERIFY`
        /// and `DOCKER_CERT_PATH` as the docker CLI reads them.
        pub tls: DockerTls,
        /// An ssh client config file (`ssh -F`) for `ssh://` hosts; unset means the user's.
        pub ssh_config: Option<PathBuf>,
        // Files read on the client (the `secrets` block).
        /// `KEY=VALUE` files read on the client at start, their variables set in the
        /// environment (values are never printed).
        pub env_files: Vec<PathBuf>,
        /// Local files mounted read-only in the environment: `{/path/in/env: /local/file}`.
        pub secret_files: BTreeMap<String, PathBuf>,
    }
}

section! {
    /// `docker.tls`: the CA that signed the daemon's certificate and the client's certificate
    /// and key, PEM (the docker CLI's `--tlscacert`, `--tlscert`, `--tlskey`).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    #[non_exhaustive]
    pub struct DockerTls {
        /// The CA certificate.
        pub ca: Option<PathBuf>,
        /// The client certificate.
        pub cert: Option<PathBuf>,
        /// The client key.
        pub key: Option<PathBuf>,
        /// Verify the daemon's certificate; only `true` is supported.
        pub verify: bool,
    }
}

impl DockerTls {
    /// Whether any file is set (else the docker CLI's environment applies).
    #[must_use]
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// What is wrong with these settings, as (field, reason): verification off, or some
    /// files set and others not.
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        if !self.verify {
            return Some(("verify", "expected true: berth always verifies the daemon's certificate (set tls.ca to the CA that signed it)".into()));
        }
        if !self.is_set() {
            return None;
        }
        [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)]
            .into_iter()
            .find(|(_, file)| file.is_none())
            .map(|(field, _)| (field, "expected the path of a PEM file".into()))
    }
}

impl Default for DockerTls {
    fn default() -> Self {
        Self {
            ca: None,
            cert: None,
            key: None,
            verify: true,
        }
    }
}

section! {
    /// `kubernetes:` (seed spec section 4).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    #[non_exhaustive]
    pub struct KubernetesSection {
        /// Kubeconfig path; unset means `KUBECONFIG`, else `~/.kube/config`, else in-cluster.
        pub kubeconfig: Option<PathBuf>,
        /// Context name; unset means the current context.
        pub context: Option<String>,
        /// Namespace of the Jobs.
        pub namespace: String,
        /// The workspace claim.
        pub pvc_name: Option<String>,
        /// Requests and limits of the environment container.
        pub resources: KubernetesResources,
        /// Service account of the pods.
        pub service_account: Option<String>,
        /// Mount each session's own sub-directory of the claim (`subPath: <session id>`).
        pub per_session_sub_path: bool,
        /// Create the claim when it is missing.
        pub create_pvc: bool,
        /// `imagePullPolicy` of the environment container: `Always`, `IfNotPresent` or
        /// `Never` (Kubernetes' spelling; see [`kubernetes_pull_policy::name`]).
        #[serde(with = "kubernetes_pull_policy")]
        pub image_pull_policy: Option<PullPolicy>,
        /// How long `start` waits for the pod to run, e.g. `5m`.
        pub start_timeout: HumanDuration,
        /// How long an unschedulable pod waits for an autoscaler's scale-up event, e.g. `20s`.
        pub scale_up_grace: HumanDuration,
        /// Creates and deletes one berth process sends the API server at once; the others
        /// queue.
        pub max_concurrent_writes: u64,
        /// `hardened` or `restricted` (the Pod Security Standard; needs a non-root user).
        #[serde(deserialize_with = "security_profile::deserialize")]
        pub security: SecurityProfile,
        /// The user environments run as (`uid` or `uid:gid`); required by `restricted`.
        pub run_as_user: Option<String> => ValueKind::TextOrNumber,
        /// Every key of Secrets and ConfigMaps as env:
        /// `[{secret|config_map: NAME, prefix: P_, optional: false}]`.
        pub env_from: Vec<EnvFromEntry>,
        /// Variables from one key each: `{VAR: {secret|config_map: NAME, key: K, optional}}`.
        pub secret_env: BTreeMap<String, KeyEntry>,
        /// Secrets and ConfigMaps as files: `[{secret|config_map: NAME, path: /abs,
        /// items: {key: file}, read_only: true, optional: false, mode: "0440"}]`.
        pub mounts: Vec<MountEntry>,
        /// Cache claims: `[{claim: NAME, create: {size, storage_class, access_modes}, path,
        /// read_only}]`.
        pub caches: Vec<CacheEntry>,
        /// Security context settings beyond the profile.
        pub security_context: SecurityContextSection,
        /// Annotations of the Jobs (and rendered objects) and their pods.
        pub annotations: BTreeMap<String, String>,
        /// Extra labels of every object and pod (berth's own keys are reserved).
        pub labels: BTreeMap<String, String>,
        /// How schedules (`submit --schedule`, rendered CronJobs and CronWorkflows) start
        /// and keep their runs.
        pub schedules: SchedulesSection,
        /// The image of the init container that clones `submit --git URL` into the
        /// workspace (it needs `git` and `sh`).
        pub git_image: String,
        /// A Secret whose key `token` authenticates the clone of `submit --git` (HTTP basic
        /// auth, user `x-access-token`); unset clones without credentials.
        pub git_secret: Option<String>,
    }
}

impl Default for KubernetesSection {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            context: None,
            namespace: "default".into(),
            pvc_name: None,
            resources: KubernetesResources::default(),
            service_account: None,
            per_session_sub_path: false,
            create_pvc: false,
            image_pull_policy: None,
            start_timeout: HumanDuration(Duration::from_secs(300)),
            scale_up_grace: HumanDuration(Duration::from_secs(20)),
            max_concurrent_writes: 16,
            security: SecurityProfile::Hardened,
            run_as_user: None,
            env_from: Vec::new(),
            secret_env: BTreeMap::new(),
            mounts: Vec::new(),
            caches: Vec::new(),
            security_context: SecurityContextSection::default(),
            annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
            schedules: SchedulesSection::default(),
            git_image: DEFAULT_GIT_IMAGE.into(),
            git_secret: None,
        }
    }
}

/// The default `kubernetes.git_image`.
pub const DEFAULT_GIT_IMAGE: &str = berth_engine_k8s::DEFAULT_GIT_IMAGE;

impl KubernetesSection {
    /// The Kubernetes-only pod settings.
    pub(crate) fn pod_options(&self) -> PodOptions<'_> {
        PodOptions {
            env_from: &self.env_from,
            secret_env: &self.secret_env,
            mounts: &self.mounts,
            caches: &self.caches,
            security: &self.security_context,
            annotations: &self.annotations,
        }
    }

    /// Env and files from Secrets and ConfigMaps, caches, security overrides and annotations
    /// as the engine takes them (checked when the config loaded).
    ///
    /// # Errors
    /// `(key, reason)` for an entry [`BerthConfig::validate`] would refuse.
    pub fn pod_extras(&self) -> Result<berth_engine_k8s::manifest::PodExtras, (String, String)> {
        self.pod_options().extras()
    }
}

section! {
    /// `kubernetes.resources`.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    #[non_exhaustive]
    pub struct KubernetesResources {
        /// What the scheduler reserves.
        pub requests: QuantityPair,
        /// The caps.
        pub limits: QuantityPair,
    }
}

section! {
    /// A `cpu` and `memory` pair of quantities.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    #[non_exhaustive]
    pub struct QuantityPair {
        /// CPU, e.g. `500m`.
        pub cpu: Option<CpuQuantity>,
        /// Memory, e.g. `1Gi`.
        pub memory: Option<MemoryQuantity>,
    }
}

impl QuantityPair {
    /// The pair as engine resources (no pids).
    #[must_use]
    pub fn resources(&self) -> Resources {
        let mut out = Resources::default();
        out.cpu_millis = self.cpu.map(CpuQuantity::millis);
        out.memory_bytes = self.memory.map(MemoryQuantity::bytes);
        out
    }
}

section! {
    /// `copy:`: limits on what one `berth cp` out of an environment may write on the host
    /// (the archive an environment sends is untrusted). Defaults: 8Gi, 1000000 entries,
    /// 4096-byte paths.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    #[non_exhaustive]
    pub struct CopySection {
        /// Total bytes of file content, as a quantity (`8Gi`) or a number of bytes.
        pub max_bytes: MemoryQuantity,
        /// Number of archive members.
        pub max_entries: u64,
        /// Length in bytes of one path or link target.
        pub max_path_bytes: u64,
    }
}

impl Default for CopySection {
    fn default() -> Self {
        let d = crate::copy::CopyLimits::default();
        Self {
            max_bytes: MemoryQuantity(d.max_bytes),
            max_entries: d.max_entries,
            max_path_bytes: d.max_path_bytes,
        }
    }
}

impl CopySection {
    /// The limits these values set.
    #[must_use]
    pub fn limits(&self) -> crate::copy::CopyLimits {
        crate::copy::CopyLimits {
            max_bytes: self.max_bytes.bytes(),
            max_entries: self.max_entries,
            max_path_bytes: self.max_path_bytes,
        }
    }
}

section! {
    /// `server:`: `berth serve`, the job agent over HTTP. Flags of `berth serve` override.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    #[non_exhaustive]
    pub struct ServerSection {
        /// The address to listen on, `host:port`. A non-loopback address needs API keys.
        pub listen: String,
        /// A file of API keys, one per line (blank lines and `#` comments ignored), read
        /// again on SIGHUP. `BERTH_SERVER_API_KEYS` (comma-separated) adds keys.
        pub api_keys_file: Option<PathBuf>,
        /// Serve HTTPS with this certificate and key (PEM files); unset = plain HTTP.
        pub tls: ServerTls,
        /// Jobs that run at once.
        pub max_concurrent_jobs: u64,
        /// Jobs that wait, first in first out, for a free slot; beyond them a submission is
        /// answered 429 with `Retry-After`.
        pub max_queued_jobs: u64,
        /// The largest request body, as a quantity (`1Mi`) or a number of bytes.
        pub max_request_bytes: MemoryQuantity,
        /// The output of a job the server keeps, per stream (stdout, stderr); followers of
        /// a job's logs still get all of it as it comes.
        pub max_output_bytes: MemoryQuantity,
        /// The timeout of a job that gives none.
        pub default_job_timeout: HumanDuration,
        /// The longest timeout a job may ask for.
        pub max_job_timeout: HumanDuration,
        /// The most CPU a job may ask for.
        pub max_cpu: CpuQuantity,
        /// The most memory a job may ask for.
        pub max_memory: MemoryQuantity,
        /// How long running jobs may go on after SIGTERM or SIGINT before they are cancelled.
        pub drain_timeout: HumanDuration,
        /// How long a finished job's record and output are kept for `GET /v1/jobs/{id}`.
        pub job_retention: HumanDuration,
        /// The image of the Deployment `berth render --server` prints (one that holds the
        /// `berth` binary).
        pub image: String,
        /// Whether a job's `git_url` may be a `file://` URL or a local path: those read
        /// repositories on the agent's own disk, so they are refused by default.
        pub allow_local_git: bool,
        /// The only hosts a job's `git_url` may name (for example `[github.com]`); empty
        /// allows every host.
        pub git_hosts: Vec<String>,
        /// Whether a job's `git_url` may reach loopback, private or link-local addresses (the
        /// agent's own network, a cloud's metadata address). Refused by default: the URL is
        /// the caller's, the connection the agent's.
        pub allow_private_git_hosts: bool,
    }
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            api_keys_file: None,
            tls: ServerTls::default(),
            max_concurrent_jobs: 4,
            max_queued_jobs: 64,
            max_request_bytes: MemoryQuantity(1 << 20),
            max_output_bytes: MemoryQuantity(4 << 20),
            default_job_timeout: HumanDuration(Duration::from_secs(30 * 60)),
            max_job_timeout: HumanDuration(Duration::from_secs(6 * 3600)),
            max_cpu: CpuQuantity(4000),
            max_memory: MemoryQuantity(8 << 30),
            drain_timeout: HumanDuration(Duration::from_secs(60)),
            job_retention: HumanDuration(Duration::from_secs(3600)),
            image: "berth:latest".into(),
            allow_local_git: false,
            git_hosts: Vec::new(),
            allow_private_git_hosts: false,
        }
    }
}

section! {
    /// `server.tls`: both or neither.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    #[non_exhaustive]
    pub struct ServerTls {
        /// The certificate chain, PEM.
        pub cert: Option<PathBuf>,
        /// The private key, PEM.
        pub key: Option<PathBuf>,
    }
}

/// A configured limit, the backend's default when unset (Docker bounds untrusted commands by
/// default), or nothing when lifted.
fn limit_or_default<T: Copy>(value: Option<Limit<T>>, default: Option<T>) -> Option<T> {
    value.map_or(default, Limit::get)
}

impl BerthConfig {
    /// Checks what the types cannot: the image reference, and that paths are absolute and
    /// free of NUL bytes.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `source_name` and the key.
    pub fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            source_name: source_name.to_owned(),
            key: key.to_owned(),
            reason,
        };
        if let Some(image) = &self.runner.image {
            ImageRef::new(image.clone()).map_err(|e| invalid("runner.image", e.to_string()))?;
        }
        ImageRef::new(self.server.image.clone())
            .map_err(|e| invalid("server.image", e.to_string()))?;
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "server.listen",
                format!(
                    "expected an address and port like 127.0.0.1:8080 or [::]:8080, got {:?}",
                    self.server.listen
                ),
            ));
        }
        if self.kubernetes.max_concurrent_writes == 0 {
            return Err(invalid(
                "kubernetes.max_concurrent_writes",
                "expected at least 1".into(),
            ));
        }
        if self.server.max_concurrent_jobs == 0 {
            return Err(invalid(
                "server.max_concurrent_jobs",
                "expected at least 1".into(),
            ));
        }
        if let Some((field, reason)) = self.docker.tls.problem() {
            return Err(invalid(&format!("docker.tls.{field}"), reason));
        }
        super::builders::validate(&self.builders, source_name)?;
        if self.server.tls.cert.is_some() != self.server.tls.key.is_some() {
            return Err(invalid(
                "server.tls",
                "expected both cert and key, or neither".into(),
            ));
        }
        if let Err((key, reason)) = self.kubernetes.pod_extras() {
            return Err(invalid(&key, reason));
        }
        if let Err((key, reason)) = self.kubernetes.schedules.settings() {
            return Err(invalid(&key, reason));
        }
        if let Err(e) = ImageRef::new(self.kubernetes.git_image.clone()) {
            return Err(invalid("kubernetes.git_image", e.to_string()));
        }
        if let Some(secret) = &self.kubernetes.git_secret {
            if let Err((key, reason)) = super::pod::check_name("kubernetes.git_secret", secret) {
                return Err(invalid(&key, reason));
            }
        }
        if let Err((key, reason)) = super::pools::check(self) {
            return Err(invalid(&key, reason));
        }
        for key in self.kubernetes.labels.keys() {
            let mut labels = BTreeMap::new();
            labels.insert(key.clone(), String::new());
            let mut spec = berth_engine_core::EnvironmentSpec::new(
                ImageRef::new("busybox")
                    .map_err(|e| invalid("kubernetes.labels", e.to_string()))?,
                SessionId::new("check").map_err(|e| invalid("kubernetes.labels", e.to_string()))?,
            );
            spec.labels = labels;
            if let Err(e) = spec.validate() {
                return Err(invalid(&format!("kubernetes.labels.{key}"), e.to_string()));
            }
        }
        for (inside, local) in &self.docker.secret_files {
            let key = format!("docker.secret_files.{inside}");
            if !inside.starts_with('/') || inside.contains('\0') {
                return Err(invalid(
                    &key,
                    format!("expected an absolute path in the environment, got {inside:?}"),
                ));
            }
            if local.as_os_str().is_empty() {
                return Err(invalid(&key, "expected the path of a local file".into()));
            }
        }
        let host_path = match &self.runner.workspace {
            WorkspaceConfig::HostPath(p) => Some(p.to_string_lossy().into_owned()),
            _ => None,
        };
        let kubeconfig = self
            .kubernetes
            .kubeconfig
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        for (key, value) in [
            ("runner.mount_path", Some(self.runner.mount_path.clone())),
            ("runner.workspace.host_path", host_path.clone()),
            ("kubernetes.kubeconfig", kubeconfig),
        ] {
            if value.is_some_and(|v| v.contains('\0')) {
                return Err(invalid(key, "a path cannot contain a NUL byte".into()));
            }
        }
        for (key, value) in [
            ("runner.mount_path", Some(self.runner.mount_path.clone())),
            ("runner.workspace.host_path", host_path),
        ] {
            if let Some(path) = value.filter(|v| !v.starts_with('/')) {
                return Err(invalid(
                    key,
                    format!("expected an absolute path, got {path:?}"),
                ));
            }
        }
        Ok(())
    }

    /// `runner.resources` as engine limits. Untrusted commands get a bounded share of the
    /// machine unless the config says otherwise: on Docker unset CPU and memory take
    /// [`DEFAULT_CPU`] and [`DEFAULT_MEMORY`]; on Kubernetes, where a limit without a request
    /// also reserves it on a node, `kubernetes.resources` stay in charge.
    #[must_use]
    pub fn runner_resources(&self) -> Resources {
        let r = &self.runner.resources;
        let docker = self.runner.backend == BackendKind::Docker;
        let mut out = Resources::default();
        out.cpu_millis =
            limit_or_default(r.cpu, docker.then_some(DEFAULT_CPU)).map(CpuQuantity::millis);
        out.memory_bytes =
            limit_or_default(r.memory, docker.then_some(DEFAULT_MEMORY)).map(MemoryQuantity::bytes);
        out.pids = r.pids.map(NonZeroU64::get);
        out
    }

    /// `runner.max_lifetime`.
    #[must_use]
    pub fn max_lifetime(&self) -> Duration {
        self.runner.max_lifetime.get()
    }

    /// The workspace of a session's environments: `runner.workspace`, else on Kubernetes the
    /// claim `kubernetes.pvc_name` (at the sub-path named after the session when
    /// `kubernetes.per_session_sub_path`).
    #[must_use]
    pub fn workspace_for(&self, session: &SessionId) -> Workspace {
        match (
            &self.runner.workspace,
            self.runner.backend,
            &self.kubernetes.pvc_name,
        ) {
            (WorkspaceConfig::None, BackendKind::Kubernetes, Some(claim)) => Workspace::Volume {
                name: claim.clone(),
                sub_path: self
                    .kubernetes
                    .per_session_sub_path
                    .then(|| session.to_string()),
            },
            _ => self.workspace(),
        }
    }

    /// `runner.workspace` as an engine workspace.
    #[must_use]
    pub fn workspace(&self) -> Workspace {
        match &self.runner.workspace {
            WorkspaceConfig::None => Workspace::None,
            WorkspaceConfig::Ephemeral => Workspace::Ephemeral,
            WorkspaceConfig::HostPath(p) => Workspace::HostPath { path: p.clone() },
            WorkspaceConfig::Volume(name) => Workspace::Volume {
                name: name.clone(),
                sub_path: None,
            },
        }
    }
}
