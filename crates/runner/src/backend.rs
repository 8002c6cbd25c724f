//! Backend selection: one factory from config to an engine ([`connect`], or [`Backend`] with
//! what only some backends can do: doctor's extra checks, the image check, rendering). Front
//! ends never name a backend crate; every backend branch is here.

use std::path::PathBuf;
use std::sync::Arc;

use berth_engine_core::{
    BackendKind, ContainerEngine, EnvironmentSpec, ImageRef, Progress, PullPolicy, Result,
};
use berth_engine_docker::{DockerConfig, DockerEngine, TlsConfig};
use berth_engine_k8s::{KubernetesConfig, KubernetesEngine};

use crate::config::BerthConfig;
use crate::doctor::Check;
use crate::rbac;
use crate::spec;

/// Expands a leading `~/` to `$HOME/`.
fn expand_home(path: &std::path::Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_owned(),
    }
}

/// The Kubernetes backend's settings from `kubernetes:` (typed and validated when the
/// config loaded, so nothing is left to fail here).
#[must_use]
pub fn kubernetes_config(config: &BerthConfig) -> KubernetesConfig {
    let k = &config.kubernetes;
    let mut out = KubernetesConfig::default();
    out.kubeconfig = k.kubeconfig.as_deref().map(expand_home);
    out.context.clone_from(&k.context);
    out.namespace.clone_from(&k.namespace);
    out.service_account.clone_from(&k.service_account);
    out.image_pull_policy = k
        .image_pull_policy
        .map(|p| crate::config::kubernetes_pull_policy::name(p).to_owned());
    out.create_missing_claims = k.create_pvc;
    out.start_timeout = k.start_timeout.get();
    out.scale_up_grace = k.scale_up_grace.get();
    out.max_concurrent_writes = usize::try_from(k.max_concurrent_writes).unwrap_or(usize::MAX);
    out.requests = k.resources.requests.resources();
    out.limits = k.resources.limits.resources();
    // Checked when the config loaded; a config built in code and never validated gets none.
    out.pod = k.pod_extras().unwrap_or_default();
    out.schedules = k.schedules.settings().unwrap_or_default();
    out.git_image.clone_from(&k.git_image);
    out.git_secret.clone_from(&k.git_secret);
    out
}

/// Connects to the engine `config.runner.backend` names.
///
/// # Errors
/// [`Error::Unavailable`](berth_engine_core::Error::Unavailable) when the engine cannot be
/// reached or configured.
pub async fn connect(config: &BerthConfig) -> Result<Arc<dyn ContainerEngine>> {
    Ok(Backend::connect(config).await?.engine)
}

/// An engine from the factory, with the capabilities only some backends have.
#[derive(Clone)]
pub struct Backend {
    engine: Arc<dyn ContainerEngine>,
    kubernetes: Option<Arc<KubernetesEngine>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("kind", &self.engine.backend())
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// Connects to the engine `config.runner.backend` names.
    ///
    /// # Errors
    /// [`Error::Unavailable`](berth_engine_core::Error::Unavailable) when the engine cannot be reached or configured.
    pub async fn connect(config: &BerthConfig) -> Result<Self> {
        match config.runner.backend {
            BackendKind::Docker => {
                let docker = docker_config(&config.docker);
                Ok(Self {
                    engine: Arc::new(DockerEngine::connect(&docker).await?),
                    kubernetes: None,
                })
            }
            BackendKind::Kubernetes => {
                let engine = Arc::new(KubernetesEngine::connect(kubernetes_config(config)).await?);
                Ok(Self {
                    engine: engine.clone(),
                    kubernetes: Some(engine),
                })
            }
        }
    }

    /// The engine.
    #[must_use]
    pub fn engine(&self) -> &Arc<dyn ContainerEngine> {
        &self.engine
    }

    /// What `berth doctor` checks beyond reachability on this backend: on Kubernetes the
    /// namespace, the claim and one check per permission of [`rbac::required`]; nothing on
    /// Docker.
    pub async fn checks(&self, config: &BerthConfig) -> Vec<Check> {
        let Some(engine) = &self.kubernetes else {
            return Vec::new();
        };
        let k = &config.kubernetes;
        let mut out: Vec<Check> = engine
            .checks(k.pvc_name.as_deref())
            .await
            .into_iter()
            .map(|(name, ok, detail)| Check {
                ok,
                ..Check::pass(name, detail)
            })
            .collect();
        for perm in rbac::required(config) {
            let name = format!("rbac: {}", perm.name());
            let answer = engine
                .can_i(perm.verb, perm.group, perm.resource, perm.subresource)
                .await;
            out.push(match answer {
                Ok(Some(true)) => Check::pass(name, format!("allowed in {}", k.namespace)),
                Ok(Some(false)) => Check::fail(
                    name,
                    format!(
                        "forbidden in {} (berth needs it to {})",
                        k.namespace, perm.why
                    ),
                )
                .with_fix(format!(
                    "grant it with the Role rule {} (berth render --rbac prints the whole Role)",
                    perm.rule()
                )),
                Ok(None) => Check::pass(
                    name,
                    "skipped: the API server does not serve SelfSubjectAccessReview",
                ),
                Err(e) => Check::fail(name, e.to_string()),
            });
        }
        out
    }

    /// Whether `image` can run here: on Docker, present locally; on Kubernetes, run in a
    /// short-lived pod built like an environment (same security profile, resources, service
    /// account and pull policy), so admission and quotas judge it as they will the
    /// environment.
    pub async fn check_image(&self, config: &BerthConfig, image: &ImageRef) -> Check {
        let Some(engine) = &self.kubernetes else {
            return match self
                .engine
                .ensure_image(image, PullPolicy::Never, &Progress::none())
                .await
            {
                Ok(info) => Check::pass(
                    "image",
                    format!(
                        "{image} present{}",
                        info.id.map(|i| format!(" ({i})")).unwrap_or_default()
                    ),
                ),
                Err(e) => Check::fail("image", e.to_string()),
            };
        };
        let checked = engine
            .check_image_like(&spec::check_spec(config, image.clone()))
            .await
            .map_err(|e| e.to_string());
        match checked {
            Ok(()) => Check::pass(
                "image",
                format!(
                    "{image} runs in {} as an environment would",
                    config.kubernetes.namespace
                ),
            ),
            Err(e) => Check::fail("image", e),
        }
    }
}

/// What doctor reports about where the backend points before connecting: on Kubernetes the
/// kubeconfig, context and namespace.
#[must_use]
pub fn target_checks(config: &BerthConfig) -> Vec<Check> {
    if config.runner.backend != BackendKind::Kubernetes {
        return Vec::new();
    }
    let k = &config.kubernetes;
    vec![Check::pass(
        "kubeconfig",
        format!(
            "{}, context {}, namespace {}",
            k.kubeconfig.as_ref().map_or_else(
                || "KUBECONFIG / ~/.kube/config / in-cluster".to_owned(),
                |p| p.display().to_string()
            ),
            k.context.as_deref().unwrap_or("(current)"),
            k.namespace
        ),
    )]
}

/// The Kubernetes objects (the Job, and a claim berth would create) a start of `spec` would
/// make under `config`, as JSON, without connecting: `berth render`.
///
/// # Errors
/// [`Error::InvalidSpec`](berth_engine_core::Error::InvalidSpec) when the spec or the Kubernetes settings are invalid.
pub fn render(config: &BerthConfig, spec: &EnvironmentSpec) -> Result<Vec<serde_json::Value>> {
    berth_engine_k8s::render(spec, &kubernetes_config(config))
}

/// The Docker engine's settings from `docker:`.
pub(crate) fn docker_config(section: &crate::config::DockerSection) -> DockerConfig {
    let mut docker = docker_endpoint(
        section.host.as_ref(),
        section.context.as_ref(),
        section.ssh_config.as_ref(),
        &section.tls,
    );
    docker.files = berth_engine_docker::ContainerFiles::new(
        section.env_files.iter().map(|p| expand_home(p)).collect(),
        section
            .secret_files
            .iter()
            .map(|(inside, local)| (inside.clone(), expand_home(local)))
            .collect(),
    );
    docker
}

/// Docker settings from a host, a context, an ssh config and TLS files (`docker:` or a
/// `builders:` entry).
pub(crate) fn docker_endpoint(
    host: Option<&String>,
    context: Option<&String>,
    ssh_config: Option<&PathBuf>,
    tls: &crate::config::DockerTls,
) -> DockerConfig {
    let mut docker = DockerConfig::default();
    docker.host = host.cloned();
    docker.context = context.cloned();
    docker.ssh_config = ssh_config.cloned();
    docker.tls = Some(tls).filter(|t| t.is_set()).map(|t| {
        let mut tls = TlsConfig::default();
        tls.ca.clone_from(&t.ca);
        tls.cert.clone_from(&t.cert);
        tls.key.clone_from(&t.key);
        tls.verify = t.verify;
        tls
    });
    docker
}

#[cfg(test)]
mod docker_config_tests {
    use super::*;

    #[test]
    fn the_docker_section_reaches_the_engine_config() {
        let config = BerthConfig::from_yaml_str(
            "docker:\n  context: far\n  ssh_config: /etc/berth/ssh_config\n  tls: {ca: /c/ca.pem, cert: /c/cert.pem, key: /c/key.pem}\n",
        )
        .unwrap();
        let docker = docker_config(&config.docker);
        assert_eq!(docker.context.as_deref(), Some("far"));
        assert_eq!(docker.host, None);
        assert_eq!(
            docker.ssh_config.as_deref(),
            Some(std::path::Path::new("/etc/berth/ssh_config"))
        );
        let tls = docker.tls.expect("tls files given");
        assert!(tls.verify);
        assert_eq!(tls.key.as_deref(), Some(std::path::Path::new("/c/key.pem")));
        // No files: the docker CLI's environment decides.
        let plain = BerthConfig::from_yaml_str("docker:\n  host: tcp://h:2376\n").unwrap();
        assert_eq!(docker_config(&plain.docker).tls, None);
    }
}
