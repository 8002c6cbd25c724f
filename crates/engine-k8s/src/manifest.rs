//! The objects an environment is made of: a batch/v1 Job (and, when asked, its workspace PVC),
//! built from an [`EnvironmentSpec`] without any I/O so they can be rendered and unit-tested.

use std::collections::BTreeMap;

use berth_engine_core::{EnvironmentSpec, Error, Result, SecurityProfile, Workspace};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapEnvSource, ConfigMapKeySelector, ConfigMapVolumeSource, Container,
    EmptyDirVolumeSource, EnvFromSource as EnvFromSource_, EnvVar, EnvVarSource,
    HostPathVolumeSource, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, SecretEnvSource, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::KubernetesConfig;

/// The name of the environment's container inside its pod.
pub const CONTAINER: &str = "env";

pub use berth_engine_core::HARDENED_CAPABILITIES;

/// `<prefix>-<session>-<name>` cut to fit, plus a random suffix: unique, at most 63 characters,
/// a DNS label.
#[must_use]
pub fn job_name(spec: &EnvironmentSpec) -> String {
    berth_engine_core::backend::object_name(spec, 63)
}

fn quantity_cpu(millis: u64) -> Quantity {
    Quantity(format!("{millis}m"))
}

fn quantity_memory(bytes: u64) -> Quantity {
    Quantity(bytes.to_string())
}

fn resources(spec: &EnvironmentSpec, config: &KubernetesConfig) -> Option<ResourceRequirements> {
    let mut limits = BTreeMap::new();
    let mut requests = BTreeMap::new();
    let cpu_limit = spec.resources.cpu_millis.or(config.limits.cpu_millis);
    let memory_limit = spec.resources.memory_bytes.or(config.limits.memory_bytes);
    if let Some(c) = cpu_limit {
        limits.insert("cpu".to_owned(), quantity_cpu(c));
    }
    if let Some(m) = memory_limit {
        limits.insert("memory".to_owned(), quantity_memory(m));
    }
    if let Some(c) = config.requests.cpu_millis {
        requests.insert("cpu".to_owned(), quantity_cpu(c));
    }
    if let Some(m) = config.requests.memory_bytes {
        requests.insert("memory".to_owned(), quantity_memory(m));
    }
    if limits.is_empty() && requests.is_empty() {
        return None;
    }
    Some(ResourceRequirements {
        limits: (!limits.is_empty()).then_some(limits),
        requests: (!requests.is_empty()).then_some(requests),
        ..Default::default()
    })
}

fn numeric_user(user: Option<&str>) -> (Option<i64>, Option<i64>) {
    let Some(user) = user else {
        return (None, None);
    };
    let mut parts = user.split(':');
    let uid = parts.next().and_then(|u| u.parse().ok());
    let gid = parts.next().and_then(|g| g.parse().ok());
    (uid, gid)
}

/// The workspace volume and its mount, if the spec has one.
fn workspace(spec: &EnvironmentSpec) -> Option<(Volume, VolumeMount)> {
    let name = "workspace".to_owned();
    let mount = |sub_path: Option<String>| VolumeMount {
        name: name.clone(),
        mount_path: spec.mount_path.clone(),
        sub_path,
        ..Default::default()
    };
    match &spec.workspace {
        Workspace::HostPath { path } => Some((
            Volume {
                name: name.clone(),
                host_path: Some(HostPathVolumeSource {
                    path: path.to_string_lossy().into_owned(),
                    type_: Some("DirectoryOrCreate".into()),
                }),
                ..Default::default()
            },
            mount(None),
        )),
        Workspace::Volume {
            name: claim,
            sub_path,
        } => Some((
            Volume {
                name: name.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    read_only: None,
                }),
                ..Default::default()
            },
            mount(sub_path.clone()),
        )),
        Workspace::Ephemeral => Some((
            Volume {
                name: name.clone(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            },
            mount(None),
        )),
        _ => None,
    }
}

/// What the pod's one container runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PodCommand<'a> {
    /// An environment: `sleep` for the lifetime, commands come by exec.
    Keepalive,
    /// A run to completion: this command (argv), its exit code the pod's outcome.
    Run(&'a [String]),
}

/// The lifetime in seconds, as `activeDeadlineSeconds` takes it.
pub(crate) fn lifetime_secs(spec: &EnvironmentSpec) -> i64 {
    i64::try_from(spec.max_lifetime.as_secs()).unwrap_or(i64::MAX)
}

/// The pod of an environment or of a run: one container (`command` decides what it runs)
/// with the spec's image, env, workdir, user, resources and workspace, the security profile
/// on pod and container, `restartPolicy: Never`, no service account token, the configured
/// service account. One function for both, so a run carries everything an environment does.
///
/// # Errors
/// [`Error::InvalidSpec`] when the spec is invalid, or the command of a run is empty.
pub fn pod_spec(
    spec: &EnvironmentSpec,
    config: &KubernetesConfig,
    command: PodCommand<'_>,
) -> Result<PodSpec> {
    spec.validate()?;
    if matches!(command, PodCommand::Run(_)) && spec.network != berth_engine_core::Network::Full {
        // Never a policy silently dropped: runs get no NetworkPolicy of their own (yet).
        return Err(Error::Unsupported {
            backend: crate::errors::BACKEND,
            operation: "network",
            reason: format!(
                "a run's pod gets no NetworkPolicy, so network {} would not be enforced; use network: full for runs, or start an environment (berth up), whose pod gets one",
                spec.network.describe()
            ),
        });
    }
    let lifetime = lifetime_secs(spec);
    let (uid, gid) = numeric_user(spec.user.as_deref());
    let restricted = spec.security == SecurityProfile::Restricted;
    let container_security = SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: (!restricted).then(|| {
                HARDENED_CAPABILITIES
                    .iter()
                    .map(|c| (*c).to_owned())
                    .collect()
            }),
        }),
        run_as_non_root: restricted.then_some(true),
        run_as_user: uid,
        run_as_group: gid,
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    };
    let (volumes, mounts) = match workspace(spec) {
        Some((v, m)) => (Some(vec![v]), Some(vec![m])),
        None => (None, None),
    };
    let env: Vec<EnvVar> = spec
        .env
        .iter()
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(v.clone()),
            value_from: None,
        })
        .collect();
    let mut container = Container {
        name: CONTAINER.into(),
        image: Some(spec.image.to_string()),
        image_pull_policy: config.image_pull_policy.clone(),
        command: Some(match command {
            PodCommand::Keepalive => vec!["sleep".into(), lifetime.to_string()],
            PodCommand::Run([]) => {
                return Err(Error::invalid_spec(
                    "command",
                    "a run needs a command to run",
                ))
            }
            PodCommand::Run(argv) => argv.to_vec(),
        }),
        env: (!env.is_empty()).then_some(env),
        working_dir: spec.workdir.clone(),
        resources: resources(spec, config),
        security_context: Some(container_security),
        volume_mounts: mounts,
        ..Default::default()
    };
    let mut pod = PodSpec {
        containers: Vec::new(),
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        service_account_name: config.service_account.clone(),
        // `sleep` dies at once on SIGTERM; a stop needs no grace period. A command keeps
        // Kubernetes' default to clean up.
        termination_grace_period_seconds: (command == PodCommand::Keepalive).then_some(1),
        // Without it the keepalive `sleep` is PID 1 and never reaps, so every background
        // child a command leaves behind stays a zombie until the pod ends. With it the
        // sandbox's pause process is PID 1 and reaps them, as Docker's init does for the
        // Docker backend, whatever the image holds (a reaping keepalive would need a shell or
        // an init in the image). It passes the restricted Pod Security Standard.
        share_process_namespace: Some(true),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: restricted.then_some(true),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        volumes,
        ..Default::default()
    };
    apply_extras(&config.pod, &mut container, &mut pod)?;
    pod.containers.push(container);
    Ok(pod)
}

/// The name of the init container that clones a run's git source into the workspace.
pub const GIT_CONTAINER: &str = "git-clone";

/// The variable the clone's init container reads the token from (the key `token` of
/// [`KubernetesConfig::git_secret`]); the Job spec names the Secret, never the value.
pub const GIT_TOKEN_ENV: &str = "BERTH_GIT_TOKEN";

/// A credential helper the clone's git runs (with `sh`) when the server asks for
/// credentials: it answers with the token from the environment, so the token is never in a
/// URL, an argument or a file.
const GIT_CREDENTIAL_HELPER: &str =
    "!f() { test \"$1\" = get || return 0; echo username=x-access-token; echo \"password=${BERTH_GIT_TOKEN}\"; }; f";

/// The clone's script, run by `sh -c` with the URL, the directory and the branch (empty for
/// the remote's HEAD) as `$1`, `$2`, `$3`: a shallow clone into the directory; where it
/// already holds a checkout (a persistent workspace used before), the commit fetched and
/// checked out over it instead (tracked files reset, untracked ones kept).
pub const GIT_CLONE_SCRIPT: &str = r#"set -eu
url=$1 dest=$2 branch=$3
if [ -d "$dest/.git" ]; then
  cd "$dest"
  if [ -n "$branch" ]; then git fetch -q --depth 1 -- "$url" "$branch"; else git fetch -q --depth 1 -- "$url"; fi
  git checkout -q -f --detach FETCH_HEAD
elif [ -n "$branch" ]; then
  git clone -q --depth 1 --single-branch --branch "$branch" -- "$url" "$dest"
else
  git clone -q --depth 1 --single-branch -- "$url" "$dest"
fi
"#;

/// Adds to `pod` (a run's, made by [`pod_spec`] from `spec`) the init container that clones
/// `url` (at `branch`, or the remote's HEAD) into the workspace at `spec.mount_path` before
/// the command starts: image [`KubernetesConfig::git_image`], [`GIT_CLONE_SCRIPT`], the
/// command container's security context and resources (so the restricted profile holds for
/// it too), only the workspace mounted, and with [`KubernetesConfig::git_secret`] the token
/// from that Secret's key `token` through a credential helper.
///
/// # Errors
/// [`Error::InvalidSpec`] naming `git` when the spec has no workspace to clone into, or the
/// pod has no command container.
pub fn add_git_clone(
    pod: &mut PodSpec,
    spec: &EnvironmentSpec,
    config: &KubernetesConfig,
    url: &str,
    branch: Option<&str>,
) -> Result<()> {
    let main = pod
        .containers
        .iter()
        .find(|c| c.name == CONTAINER)
        .ok_or_else(|| Error::invalid_spec("git", "the pod has no command container"))?;
    let mount = main
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "workspace" && m.mount_path == spec.mount_path)
        .cloned()
        .ok_or_else(|| {
            Error::invalid_spec(
                "git",
                format!("a clone needs a workspace at {}", spec.mount_path),
            )
        })?;
    // The URL, directory and branch are arguments of the script, never part of its text.
    let command = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        GIT_CLONE_SCRIPT.to_owned(),
        GIT_CONTAINER.to_owned(),
        url.to_owned(),
        spec.mount_path.clone(),
        branch.unwrap_or_default().to_owned(),
    ];
    let var = |name: &str, value: &str| EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    };
    // No prompt would ever be answered: fail at once instead of waiting for a terminal. A
    // persistent workspace may hold a checkout another user made: git may use it.
    let mut env = vec![
        var("GIT_TERMINAL_PROMPT", "0"),
        var("GIT_CONFIG_KEY_0", "safe.directory"),
        var("GIT_CONFIG_VALUE_0", "*"),
    ];
    if let Some(secret) = &config.git_secret {
        env.push(EnvVar {
            name: GIT_TOKEN_ENV.to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.clone(),
                    key: "token".to_owned(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
        });
        env.extend([
            var("GIT_CONFIG_KEY_1", "credential.helper"),
            var("GIT_CONFIG_VALUE_1", GIT_CREDENTIAL_HELPER),
            var("GIT_CONFIG_COUNT", "2"),
        ]);
    } else {
        env.push(var("GIT_CONFIG_COUNT", "1"));
    }
    let init = Container {
        name: GIT_CONTAINER.to_owned(),
        image: Some(config.git_image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        command: Some(command),
        env: Some(env),
        resources: main.resources.clone(),
        security_context: main.security_context.clone(),
        volume_mounts: Some(vec![mount]),
        ..Default::default()
    };
    pod.init_containers.get_or_insert_with(Vec::new).push(init);
    Ok(())
}

/// The Job of an environment: one container sleeping for the lifetime, `restartPolicy: Never`,
/// `backoffLimit: 0`, `activeDeadlineSeconds` = lifetime, `ttlSecondsAfterFinished`, no service
/// account token, berth's labels on the Job and the pod template.
///
/// # Errors
/// [`Error::InvalidSpec`] when the spec is invalid.
pub fn job(
    spec: &EnvironmentSpec,
    config: &KubernetesConfig,
    name: &str,
    created_unix_secs: u64,
) -> Result<Job> {
    let pod = pod_spec(spec, config, PodCommand::Keepalive)?;
    let labels = spec.object_labels(created_unix_secs);
    let lifetime = lifetime_secs(spec);
    let mut metadata = ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(config.namespace.clone()),
        labels: Some(labels.clone()),
        ..Default::default()
    };
    annotate(&mut metadata, &config.pod);
    let mut template_metadata = ObjectMeta {
        labels: Some(labels),
        ..Default::default()
    };
    annotate(&mut template_metadata, &config.pod);
    Ok(Job {
        metadata,
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(lifetime),
            ttl_seconds_after_finished: Some(config.ttl_seconds_after_finished),
            template: PodTemplateSpec {
                metadata: Some(template_metadata),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// A claim for a workspace volume berth creates when it is missing.
#[must_use]
pub fn workspace_claim(
    name: &str,
    config: &KubernetesConfig,
    labels: BTreeMap<String, String>,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(config.workspace_size.clone()),
                )])),
                limits: None,
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// A Secret or a ConfigMap: where env and files come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SourceKind {
    /// A core/v1 Secret.
    Secret,
    /// A core/v1 ConfigMap.
    ConfigMap,
}

/// Every variable of a Secret or ConfigMap as env (`envFrom`), each name with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EnvFromSource {
    /// Secret or ConfigMap.
    pub kind: SourceKind,
    /// Its name.
    pub name: String,
    /// Put before every variable's name.
    pub prefix: Option<String>,
    /// Start without it when it is missing.
    pub optional: bool,
}

impl EnvFromSource {
    /// Every key of the `kind` object `name`, no prefix, required.
    #[must_use]
    pub fn new(kind: SourceKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            prefix: None,
            optional: false,
        }
    }
}

/// One key of a Secret or ConfigMap as one variable (`valueFrom`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyRef {
    /// Secret or ConfigMap.
    pub kind: SourceKind,
    /// Its name.
    pub name: String,
    /// The key.
    pub key: String,
    /// Leave the variable unset when the object or key is missing.
    pub optional: bool,
}

impl KeyRef {
    /// Key `key` of the `kind` object `name`, required.
    #[must_use]
    pub fn new(kind: SourceKind, name: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            key: key.into(),
            optional: false,
        }
    }
}

/// A Secret or ConfigMap mounted as files at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileMount {
    /// Secret or ConfigMap.
    pub kind: SourceKind,
    /// Its name.
    pub name: String,
    /// The directory in the container.
    pub path: String,
    /// Only these keys, each as the file (a relative path) it maps to; empty = every key
    /// under its own name.
    pub items: BTreeMap<String, String>,
    /// Mount read-only (the default).
    pub read_only: bool,
    /// Mount an empty directory when it is missing.
    pub optional: bool,
    /// The files' mode (`defaultMode`), e.g. `0o440`; unset = the cluster's 0644.
    pub mode: Option<i32>,
}

impl FileMount {
    /// Every key of the `kind` object `name` as files under `path`, read-only, required.
    #[must_use]
    pub fn new(kind: SourceKind, name: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            path: path.into(),
            items: BTreeMap::new(),
            read_only: true,
            optional: false,
            mode: None,
        }
    }
}

/// A claim berth (or Argo, per workflow) creates for a cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClaim {
    /// Its storage request, e.g. `10Gi`.
    pub size: String,
    /// Its storage class; unset = the cluster's default.
    pub storage_class: Option<String>,
    /// Its access modes; empty = `ReadWriteOnce`.
    pub access_modes: Vec<String>,
}

/// A cache volume: a persistent claim mounted at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    /// The claim's name.
    pub claim: String,
    /// Create the claim (per Argo workflow: a `volumeClaimTemplate`); `None` = it exists.
    pub create: Option<NewClaim>,
    /// The directory in the container.
    pub path: String,
    /// Mount read-only.
    pub read_only: bool,
}

/// Security context settings beyond the profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityOverrides {
    /// The container's root filesystem is read-only.
    pub read_only_root_filesystem: Option<bool>,
    /// The pod's `fsGroup`: volumes belong to this group.
    pub fs_group: Option<i64>,
    /// The pod's `supplementalGroups`.
    pub supplemental_groups: Vec<i64>,
    /// The group the container runs as (a `uid:gid` user's gid wins).
    pub run_as_group: Option<i64>,
}

/// What every pod berth makes gets besides the spec: env and files from Secrets and
/// ConfigMaps, caches, security context overrides and annotations. Values never appear in it,
/// only references.
///
/// ```
/// use berth_engine_k8s::manifest::{EnvFromSource, PodExtras, SourceKind};
///
/// let mut extras = PodExtras::default();
/// let mut from = EnvFromSource::new(SourceKind::Secret, "api-keys");
/// from.prefix = Some("API_".into());
/// extras.env_from.push(from);
/// assert!(!extras.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PodExtras {
    /// `envFrom` sources.
    pub env_from: Vec<EnvFromSource>,
    /// Variables from one key each.
    pub key_env: BTreeMap<String, KeyRef>,
    /// Secrets and ConfigMaps as files.
    pub mounts: Vec<FileMount>,
    /// Cache claims.
    pub caches: Vec<Cache>,
    /// Security context overrides.
    pub security: SecurityOverrides,
    /// Annotations of the objects and their pods.
    pub annotations: BTreeMap<String, String>,
}

impl PodExtras {
    /// Whether nothing is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The name of the pod volume of mount `i`.
fn mount_volume(i: usize) -> String {
    format!("berth-files-{i}")
}

/// The name of the pod volume of cache `i` (and of its Argo `volumeClaimTemplate`).
#[must_use]
pub fn cache_volume(i: usize) -> String {
    format!("berth-cache-{i}")
}

fn key_to_paths(items: &BTreeMap<String, String>) -> Option<Vec<KeyToPath>> {
    (!items.is_empty()).then(|| {
        items
            .iter()
            .map(|(key, path)| KeyToPath {
                key: key.clone(),
                path: path.clone(),
                mode: None,
            })
            .collect()
    })
}

/// The env, volumes and mounts of `extras`, added to the container and pod.
fn apply_extras(extras: &PodExtras, container: &mut Container, pod: &mut PodSpec) -> Result<()> {
    let env_from: Vec<EnvFromSource_> = extras
        .env_from
        .iter()
        .map(|f| {
            let optional = f.optional.then_some(true);
            EnvFromSource_ {
                prefix: f.prefix.clone(),
                secret_ref: (f.kind == SourceKind::Secret).then(|| SecretEnvSource {
                    name: f.name.clone(),
                    optional,
                }),
                config_map_ref: (f.kind == SourceKind::ConfigMap).then(|| ConfigMapEnvSource {
                    name: f.name.clone(),
                    optional,
                }),
            }
        })
        .collect();
    if !env_from.is_empty() {
        container.env_from = Some(env_from);
    }
    for (var, r) in &extras.key_env {
        let optional = r.optional.then_some(true);
        let value_from = EnvVarSource {
            secret_key_ref: (r.kind == SourceKind::Secret).then(|| SecretKeySelector {
                name: r.name.clone(),
                key: r.key.clone(),
                optional,
            }),
            config_map_key_ref: (r.kind == SourceKind::ConfigMap).then(|| ConfigMapKeySelector {
                name: r.name.clone(),
                key: r.key.clone(),
                optional,
            }),
            ..Default::default()
        };
        container.env.get_or_insert_with(Vec::new).push(EnvVar {
            name: var.clone(),
            value: None,
            value_from: Some(value_from),
        });
    }
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for (i, m) in extras.mounts.iter().enumerate() {
        if !m.path.starts_with('/') {
            return Err(Error::invalid_spec(
                "mounts.path",
                format!("expected an absolute path, got {:?}", m.path),
            ));
        }
        let optional = m.optional.then_some(true);
        let name = mount_volume(i);
        volumes.push(Volume {
            name: name.clone(),
            secret: (m.kind == SourceKind::Secret).then(|| SecretVolumeSource {
                secret_name: Some(m.name.clone()),
                items: key_to_paths(&m.items),
                default_mode: m.mode,
                optional,
            }),
            config_map: (m.kind == SourceKind::ConfigMap).then(|| ConfigMapVolumeSource {
                name: m.name.clone(),
                items: key_to_paths(&m.items),
                default_mode: m.mode,
                optional,
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name,
            mount_path: m.path.clone(),
            read_only: Some(m.read_only),
            ..Default::default()
        });
    }
    for (i, c) in extras.caches.iter().enumerate() {
        if !c.path.starts_with('/') {
            return Err(Error::invalid_spec(
                "caches.path",
                format!("expected an absolute path, got {:?}", c.path),
            ));
        }
        let name = cache_volume(i);
        volumes.push(Volume {
            name: name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: c.claim.clone(),
                read_only: c.read_only.then_some(true),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name,
            mount_path: c.path.clone(),
            read_only: c.read_only.then_some(true),
            ..Default::default()
        });
    }
    if !volumes.is_empty() {
        pod.volumes.get_or_insert_with(Vec::new).extend(volumes);
        container
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .extend(mounts);
    }
    let s = &extras.security;
    if let Some(sc) = container.security_context.as_mut() {
        if s.read_only_root_filesystem.is_some() {
            sc.read_only_root_filesystem = s.read_only_root_filesystem;
        }
        if sc.run_as_group.is_none() {
            sc.run_as_group = s.run_as_group;
        }
    }
    if let Some(psc) = pod.security_context.as_mut() {
        psc.fs_group = s.fs_group;
        if !s.supplemental_groups.is_empty() {
            psc.supplemental_groups = Some(s.supplemental_groups.clone());
        }
        psc.run_as_group = s.run_as_group;
    }
    Ok(())
}

/// A claim for cache `cache` when berth creates it (`create` set), labelled `labels`.
#[must_use]
pub fn cache_claim(
    cache: &Cache,
    config: &KubernetesConfig,
    labels: BTreeMap<String, String>,
) -> Option<PersistentVolumeClaim> {
    let new = cache.create.as_ref()?;
    Some(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(cache.claim.clone()),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(claim_spec(new)),
        status: None,
    })
}

/// The spec of a new claim (also an Argo `volumeClaimTemplate`'s).
#[must_use]
pub fn claim_spec(new: &NewClaim) -> PersistentVolumeClaimSpec {
    let modes = if new.access_modes.is_empty() {
        vec!["ReadWriteOnce".to_owned()]
    } else {
        new.access_modes.clone()
    };
    PersistentVolumeClaimSpec {
        access_modes: Some(modes),
        storage_class_name: new.storage_class.clone(),
        resources: Some(VolumeResourceRequirements {
            requests: Some(BTreeMap::from([(
                "storage".to_owned(),
                Quantity(new.size.clone()),
            )])),
            limits: None,
        }),
        ..Default::default()
    }
}

/// `extras.annotations` onto `meta` (kept with any it has).
pub fn annotate(meta: &mut ObjectMeta, extras: &PodExtras) {
    if !extras.annotations.is_empty() {
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .extend(extras.annotations.clone());
    }
}

/// Checks the config's quantities before any I/O.
pub(crate) fn validate_config(config: &KubernetesConfig) -> Result<()> {
    if config.namespace.is_empty() {
        return Err(Error::invalid_spec("namespace", "must not be empty"));
    }
    if config.max_concurrent_writes == 0 {
        return Err(Error::invalid_spec(
            "max_concurrent_writes",
            "must be at least 1 (0 would let no create or delete through)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_engine_core::{ImageRef, SessionId};

    fn spec() -> EnvironmentSpec {
        EnvironmentSpec::new(
            ImageRef::new("busybox:1.36").unwrap(),
            SessionId::new("s1").unwrap(),
        )
    }

    /// A run's pod with the clone of `url` at `branch`, under `profile`.
    fn cloning_pod(
        profile: SecurityProfile,
        config: &KubernetesConfig,
        branch: Option<&str>,
    ) -> PodSpec {
        let mut spec = spec();
        spec.workspace = Workspace::Ephemeral;
        spec.security = profile;
        spec.user = Some("1000:1000".into());
        let command = ["make".to_owned()];
        let mut pod = pod_spec(&spec, config, PodCommand::Run(&command)).unwrap();
        add_git_clone(&mut pod, &spec, config, "https://example.com/r.git", branch).unwrap();
        pod
    }

    #[test]
    fn the_clone_runs_as_the_command_does_and_sees_only_the_workspace() {
        let mut config = KubernetesConfig::default();
        config.limits.memory_bytes = Some(1 << 30);
        config.pod.key_env.insert(
            "API_KEY".into(),
            KeyRef::new(SourceKind::Secret, "api", "k"),
        );
        for profile in [SecurityProfile::Hardened, SecurityProfile::Restricted] {
            let pod = cloning_pod(profile, &config, Some("main"));
            let init = &pod.init_containers.as_ref().unwrap()[0];
            let main = &pod.containers[0];
            assert_eq!(init.name, GIT_CONTAINER);
            assert_eq!(init.image.as_deref(), Some(crate::DEFAULT_GIT_IMAGE));
            assert_eq!(init.security_context, main.security_context);
            assert_eq!(init.resources, main.resources);
            let command = init.command.as_deref().unwrap();
            assert_eq!(command[..3], ["sh", "-c", GIT_CLONE_SCRIPT]);
            assert_eq!(
                command[3..],
                [
                    GIT_CONTAINER,
                    "https://example.com/r.git",
                    "/workspace",
                    "main"
                ]
            );
            let mounts = init.volume_mounts.as_ref().unwrap();
            assert_eq!(mounts.len(), 1);
            assert_eq!(mounts[0].mount_path, "/workspace");
            // The command's own secrets are not the clone's.
            let env = init.env.as_ref().unwrap();
            assert!(env.iter().all(|e| e.name != "API_KEY"), "{env:?}");
            assert!(env.iter().all(|e| e.value_from.is_none()), "{env:?}");
        }
        // Without a workspace there is nowhere to clone to.
        let mut bare = pod_spec(&spec(), &config, PodCommand::Run(&["ls".to_owned()])).unwrap();
        let err = add_git_clone(
            &mut bare,
            &spec(),
            &config,
            "https://example.com/r.git",
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("workspace"), "{err}");
    }

    #[test]
    fn the_token_comes_from_the_secret_and_only_a_credential_helper_sends_it() {
        let config = KubernetesConfig {
            git_secret: Some("git-token".into()),
            ..KubernetesConfig::default()
        };
        let pod = cloning_pod(SecurityProfile::Restricted, &config, None);
        let init = &pod.init_containers.as_ref().unwrap()[0];
        let env = init.env.as_ref().unwrap();
        let token = env.iter().find(|e| e.name == GIT_TOKEN_ENV).unwrap();
        assert!(token.value.is_none());
        let key = token
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (key.name.as_str(), key.key.as_str()),
            ("git-token", "token")
        );
        let value = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
                .unwrap()
        };
        assert_eq!(value("GIT_CONFIG_COUNT"), "2");
        assert_eq!(value("GIT_CONFIG_KEY_1"), "credential.helper");
        // The helper, run by a real git (the host's), answers with the token from the
        // environment, and nothing for other requests.
        let fill = std::process::Command::new("git")
            .args([
                "-c",
                &format!("credential.helper={}", value("GIT_CONFIG_VALUE_1")),
            ])
            .args(["credential", "fill"])
            .env(GIT_TOKEN_ENV, "s3cr3t")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", "/nonexistent")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("git (the host's, to run the helper)");
        use std::io::Write;
        fill.stdin
            .as_ref()
            .unwrap()
            .write_all(b"protocol=https\nhost=example.com\n\n")
            .unwrap();
        let out = fill.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(out.contains("username=x-access-token\n"), "{out}");
        assert!(out.contains("password=s3cr3t\n"), "{out}");
        // Nowhere in the spec is the token's value.
        assert!(!serde_json::to_string(&pod).unwrap().contains("s3cr3t"));
    }

    #[test]
    fn job_names_are_unique_dns_labels() {
        let mut s = spec();
        s.name = "a".repeat(20);
        s.session = SessionId::new("b".repeat(24)).unwrap();
        let a = job_name(&s);
        let b = job_name(&s);
        assert_ne!(a, b);
        assert!(a.len() <= 63, "{a}");
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'));
    }

    #[test]
    fn job_has_the_keepalive_and_the_lifecycle_bounds() {
        let config = KubernetesConfig::default();
        let job = job(&spec(), &config, "berth-s1-main-abcde", 42).unwrap();
        let job_spec = job.spec.unwrap();
        assert_eq!(job_spec.backoff_limit, Some(0));
        assert_eq!(job_spec.active_deadline_seconds, Some(86400));
        assert!(job_spec.ttl_seconds_after_finished.is_some());
        let pod = job_spec.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        // The pause process is PID 1 and reaps what commands leave behind.
        assert_eq!(pod.share_process_namespace, Some(true));
        let c = &pod.containers[0];
        assert_eq!(c.command.as_ref().unwrap(), &["sleep", "86400"]);
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
            &["ALL"]
        );
        let labels = job.metadata.labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "berth");
        assert_eq!(labels["berth.dev/session"], "s1");
        assert_eq!(labels["berth.dev/created"], "42");
    }

    #[test]
    fn restricted_profile_passes_the_restricted_pod_security_standard() {
        let mut s = spec();
        s.security = SecurityProfile::Restricted;
        s.user = Some("1000".into());
        let job = job(&s, &KubernetesConfig::default(), "x", 0).unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let sc = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.run_as_user, Some(1000));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let caps = sc.capabilities.unwrap();
        assert_eq!(caps.drop.unwrap(), vec!["ALL".to_owned()]);
        assert!(caps.add.is_none());
    }

    #[test]
    fn extras_reach_the_pod_and_a_users_own_group_wins() {
        let mut config = KubernetesConfig::default();
        let mut from = EnvFromSource::new(SourceKind::ConfigMap, "settings");
        from.prefix = Some("APP_".into());
        config.pod.env_from.push(from);
        config.pod.key_env.insert(
            "TOKEN".into(),
            KeyRef::new(SourceKind::Secret, "api", "token"),
        );
        let mut mount = FileMount::new(SourceKind::Secret, "tls", "/etc/tls");
        mount.items.insert("tls.key".into(), "key.pem".into());
        mount.mode = Some(0o400);
        config.pod.mounts.push(mount);
        config.pod.security.run_as_group = Some(5);
        config.pod.security.fs_group = Some(7);
        config.pod.annotations.insert("a/b".into(), "c".into());
        let mut s = spec();
        s.user = Some("1000:1000".into());
        s.env.insert("PLAIN".into(), "1".into());
        let job = job(&s, &config, "x", 0).unwrap();
        assert_eq!(job.metadata.annotations.as_ref().unwrap()["a/b"], "c");
        let template = job.spec.unwrap().template;
        assert_eq!(template.metadata.unwrap().annotations.unwrap()["a/b"], "c");
        let pod = template.spec.unwrap();
        let c = &pod.containers[0];
        let from = &c.env_from.as_ref().unwrap()[0];
        assert_eq!(from.prefix.as_deref(), Some("APP_"));
        assert_eq!(from.config_map_ref.as_ref().unwrap().name, "settings");
        assert!(from.secret_ref.is_none());
        let env = c.env.as_ref().unwrap();
        let token = env.iter().find(|e| e.name == "TOKEN").unwrap();
        assert!(token.value.is_none(), "a reference, never a value");
        let key = token
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((key.name.as_str(), key.key.as_str()), ("api", "token"));
        let volume = &pod.volumes.as_ref().unwrap()[0];
        let secret = volume.secret.as_ref().unwrap();
        assert_eq!(secret.default_mode, Some(0o400));
        assert_eq!(secret.items.as_ref().unwrap()[0].path, "key.pem");
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            ("/etc/tls", Some(true))
        );
        // The spec's uid:gid keeps its gid on the container; the pod gets the override.
        assert_eq!(
            c.security_context.as_ref().unwrap().run_as_group,
            Some(1000)
        );
        let psc = pod.security_context.unwrap();
        assert_eq!((psc.run_as_group, psc.fs_group), (Some(5), Some(7)));
    }

    #[test]
    fn workspace_kinds_map_to_volumes() {
        let mut s = spec();
        s.workspace = Workspace::Volume {
            name: "ws".into(),
            sub_path: Some("agent-a".into()),
        };
        let job = job(&s, &KubernetesConfig::default(), "x", 0).unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            pod.volumes.unwrap()[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "ws"
        );
        let mount = &pod.containers[0].volume_mounts.as_ref().unwrap()[0];
        assert_eq!(mount.sub_path.as_deref(), Some("agent-a"));
        assert_eq!(mount.mount_path, "/workspace");
    }
}
