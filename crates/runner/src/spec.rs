//! Environment specs from the config: image, session, workspace, resources, lifetime, user
//! and security profile, validated before any I/O; and the limits an environment gets, said
//! plainly.

use berth_engine_core::{
    BackendKind, EnvironmentSpec, ImageRef, Resources, SecurityProfile, SessionId,
};

use crate::config::BerthConfig;
use crate::error::{Result, RunnerError};

/// What a caller says about a new environment beyond the config.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EnvOptions {
    /// The image (default: `runner.image`).
    pub image: Option<ImageRef>,
    /// The session to label it with (default: a fresh random id).
    pub session: Option<SessionId>,
    /// Its name within the session.
    pub name: String,
}

impl Default for EnvOptions {
    fn default() -> Self {
        Self {
            image: None,
            session: None,
            name: "main".into(),
        }
    }
}

impl EnvOptions {
    /// Options for the environment `name`, everything else from the config.
    #[must_use]
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// With this image.
    #[must_use]
    pub fn with_image(mut self, image: Option<ImageRef>) -> Self {
        self.image = image;
        self
    }

    /// In this session.
    #[must_use]
    pub fn with_session(mut self, session: Option<SessionId>) -> Self {
        self.session = session;
        self
    }
}

/// `runner.resources` as engine limits.
///
/// # Errors
/// [`RunnerError::Config`] naming the key of a quantity that does not parse.
pub fn resources(config: &BerthConfig) -> Resources {
    config.runner_resources()
}

/// The security profile `kubernetes.security` names (hardened unless it says restricted).
#[must_use]
pub fn security_profile(config: &BerthConfig) -> SecurityProfile {
    config.kubernetes.security
}

/// The image `image` or, without one, `runner.image`.
///
/// # Errors
/// [`RunnerError::NoImage`] when there is neither; the engine's `InvalidSpec` for a
/// malformed `runner.image`.
pub fn image_or_default(config: &BerthConfig, image: Option<ImageRef>) -> Result<ImageRef> {
    match (image, &config.runner.image) {
        (Some(image), _) => Ok(image),
        (None, Some(configured)) => Ok(ImageRef::new(configured.clone())?),
        (None, None) => Err(RunnerError::NoImage),
    }
}

/// The spec of a new environment from the config and `options`, validated.
///
/// # Errors
/// [`RunnerError::NoImage`], [`RunnerError::Config`], or the engine's `InvalidSpec` when the
/// spec would be refused.
pub fn environment_spec(config: &BerthConfig, options: &EnvOptions) -> Result<EnvironmentSpec> {
    let image = image_or_default(config, options.image.clone())?;
    let session = options.session.clone().unwrap_or_else(SessionId::generate);
    let workspace = config.workspace_for(&session);
    let mut spec = EnvironmentSpec::new(image, session)
        .with_name(options.name.clone())
        .with_workspace(workspace)
        .with_resources(resources(config))
        .with_max_lifetime(config.max_lifetime())
        .with_network(config.runner.network.clone());
    spec.mount_path.clone_from(&config.runner.mount_path);
    check_backend_options(config)?;
    spec.labels.extend(config.kubernetes.labels.clone());
    if config.runner.backend == BackendKind::Kubernetes {
        spec.user.clone_from(&config.kubernetes.run_as_user);
        spec.security = security_profile(config);
    }
    spec.validate()?;
    Ok(spec)
}

/// Refuses what has no meaning on the configured backend: on Docker the cluster's Secrets,
/// ConfigMaps, claims, security contexts and annotations (`kubernetes.env_from`, ...); on
/// Kubernetes the client's local files (`docker.env_files`, `docker.secret_files`), which
/// belong in a Secret there. `kubernetes.labels` apply on both.
///
/// # Errors
/// [`RunnerError::Config`] naming the key and what to use instead.
pub fn check_backend_options(config: &BerthConfig) -> Result<()> {
    match config.runner.backend {
        BackendKind::Docker => match config.kubernetes.pod_options().first_set() {
            Some(key) => Err(RunnerError::Config {
                key: key.to_owned(),
                reason: "names cluster objects or pod settings, which have no meaning with runner.backend: docker; use docker.env_files and docker.secret_files, or runner.backend: kubernetes".into(),
            }),
            None => Ok(()),
        },
        BackendKind::Kubernetes => {
            let docker = &config.docker;
            let key = if !docker.env_files.is_empty() {
                "docker.env_files"
            } else if !docker.secret_files.is_empty() {
                "docker.secret_files"
            } else {
                return Ok(());
            };
            Err(RunnerError::Config {
                key: key.to_owned(),
                reason: "local files are read only with runner.backend: docker; on Kubernetes put the values in a Secret and use kubernetes.env_from, kubernetes.secret_env or kubernetes.mounts".into(),
            })
        }
    }
}

/// The spec `berth doctor` checks an image with on Kubernetes: what an environment would be
/// made of the config (resources, lifetime, user, security profile), without a workspace.
#[must_use]
pub fn check_spec(config: &BerthConfig, image: ImageRef) -> EnvironmentSpec {
    let mut spec = EnvironmentSpec::new(image, SessionId::generate())
        .with_resources(resources(config))
        .with_max_lifetime(config.max_lifetime());
    spec.user.clone_from(&config.kubernetes.run_as_user);
    spec.security = security_profile(config);
    spec
}

/// What an environment may use under `config`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// CPU and memory, said plainly, with advice when unlimited.
    pub note: String,
    /// Whether the CPU or the memory is unlimited.
    pub unlimited: bool,
}

/// The limits an environment gets: `runner.resources`, and on Kubernetes the cluster's
/// `kubernetes.resources.limits` where runner sets none.
#[must_use]
pub fn limits(config: &BerthConfig) -> Limits {
    let mut resources = resources(config);
    if config.runner.backend == BackendKind::Kubernetes {
        let limits = config.kubernetes.resources.limits.resources();
        resources.cpu_millis = resources.cpu_millis.or(limits.cpu_millis);
        resources.memory_bytes = resources.memory_bytes.or(limits.memory_bytes);
    }
    let cpu = resources.cpu_millis.map_or_else(
        || "no CPU limit".to_owned(),
        |m| format!("{} CPUs", m as f64 / 1000.0),
    );
    let memory = resources.memory_bytes.map_or_else(
        || "no memory limit".to_owned(),
        |b| format!("{} MiB of memory", b >> 20),
    );
    let unlimited = resources.cpu_millis.is_none() || resources.memory_bytes.is_none();
    let advice = if unlimited {
        " (an unlimited environment can use the whole machine; set runner.resources or kubernetes.resources.limits)"
    } else {
        ""
    };
    Limits {
        note: format!("{cpu}, {memory}{advice}"),
        unlimited,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> BerthConfig {
        BerthConfig::from_yaml_str(yaml).expect("config")
    }

    #[test]
    fn the_spec_takes_image_resources_and_kubernetes_security_from_the_config() {
        let k8s = config(
            "runner: {backend: kubernetes, image: 'busybox:1', resources: {cpu: '2', memory: 1Gi}}\nkubernetes: {security: restricted, run_as_user: '1000'}\n",
        );
        let spec = environment_spec(&k8s, &EnvOptions::named("agent")).expect("spec");
        assert_eq!(spec.image.as_str(), "busybox:1");
        assert_eq!(spec.name, "agent");
        assert_eq!(spec.security, SecurityProfile::Restricted);
        assert_eq!(spec.user.as_deref(), Some("1000"));
        assert_eq!(spec.resources.cpu_millis, Some(2000));
        // On Docker the Kubernetes section does not apply.
        let docker = config("runner: {image: 'busybox:1'}\nkubernetes: {security: restricted}\n");
        let spec = environment_spec(&docker, &EnvOptions::default()).expect("spec");
        assert_eq!(spec.security, SecurityProfile::Hardened);
    }

    #[test]
    fn no_image_anywhere_is_its_own_error() {
        let err = environment_spec(&config("{}"), &EnvOptions::default()).expect_err("no image");
        assert!(matches!(err, RunnerError::NoImage), "{err}");
    }

    #[test]
    fn limits_say_when_unlimited() {
        let limited = limits(&config("runner: {resources: {cpu: '2', memory: 4Gi}}\n"));
        assert_eq!(limited.note, "2 CPUs, 4096 MiB of memory");
        assert!(!limited.unlimited);
        let open = limits(&config("runner: {resources: {memory: unlimited}}\n"));
        assert!(
            open.unlimited && open.note.contains("no memory limit"),
            "{open:?}"
        );
    }
}
