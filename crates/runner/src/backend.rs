//! Backend selection: one factory from config to `Arc<dyn ContainerEngine>`.

use std::path::PathBuf;
use std::sync::Arc;

use berth_engine_core::{BackendKind, ContainerEngine, Error, Result};
use berth_engine_docker::{DockerConfig, DockerEngine};
use berth_engine_k8s::{KubernetesConfig, KubernetesEngine};

use crate::config::{parse_cpu_millis, parse_duration, parse_memory_bytes, BerthConfig};

/// Expands a leading `~/` to `$HOME/`.
fn expand_home(path: &std::path::Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_owned(),
    }
}

/// The Kubernetes backend's settings from `kubernetes:`.
///
/// # Errors
/// [`Error::InvalidSpec`] naming the key of a quantity or duration that does not parse (they
/// are validated when the config loads, so this is for hand-built configs).
pub fn kubernetes_config(config: &BerthConfig) -> Result<KubernetesConfig> {
    let k = &config.kubernetes;
    let mut out = KubernetesConfig::default();
    out.kubeconfig = k.kubeconfig.as_deref().map(expand_home);
    out.context.clone_from(&k.context);
    out.namespace.clone_from(&k.namespace);
    out.service_account.clone_from(&k.service_account);
    out.image_pull_policy.clone_from(&k.image_pull_policy);
    out.create_missing_claims = k.create_pvc;
    out.start_timeout = parse_duration(&k.start_timeout)
        .map_err(|r| Error::invalid_spec("kubernetes.start_timeout", r))?;
    out.scale_up_grace = parse_duration(&k.scale_up_grace)
        .map_err(|r| Error::invalid_spec("kubernetes.scale_up_grace", r))?;
    let cpu = |key: &str, v: &Option<String>| {
        v.as_deref()
            .map(parse_cpu_millis)
            .transpose()
            .map_err(|r| Error::invalid_spec(key, r))
    };
    let mem = |key: &str, v: &Option<String>| {
        v.as_deref()
            .map(parse_memory_bytes)
            .transpose()
            .map_err(|r| Error::invalid_spec(key, r))
    };
    out.requests.cpu_millis = cpu(
        "kubernetes.resources.requests.cpu",
        &k.resources.requests.cpu,
    )?;
    out.requests.memory_bytes = mem(
        "kubernetes.resources.requests.memory",
        &k.resources.requests.memory,
    )?;
    out.limits.cpu_millis = cpu("kubernetes.resources.limits.cpu", &k.resources.limits.cpu)?;
    out.limits.memory_bytes = mem(
        "kubernetes.resources.limits.memory",
        &k.resources.limits.memory,
    )?;
    Ok(out)
}

/// Connects to the engine `config.runner.backend` names.
///
/// # Errors
/// [`Error::Unavailable`] when the engine cannot be reached or configured.
pub async fn connect(config: &BerthConfig) -> Result<Arc<dyn ContainerEngine>> {
    match config.runner.backend {
        BackendKind::Docker => {
            let mut docker = DockerConfig::default();
            docker.host.clone_from(&config.docker.host);
            Ok(Arc::new(DockerEngine::connect(&docker).await?))
        }
        BackendKind::Kubernetes => Ok(Arc::new(
            KubernetesEngine::connect(kubernetes_config(config)?).await?,
        )),
    }
}
