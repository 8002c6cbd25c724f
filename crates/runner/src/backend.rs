//! Backend selection: one factory from config to `Arc<dyn ContainerEngine>`.

use std::path::PathBuf;
use std::sync::Arc;

use berth_engine_core::{BackendKind, ContainerEngine, Result};
use berth_engine_docker::{DockerConfig, DockerEngine};
use berth_engine_k8s::{KubernetesConfig, KubernetesEngine};

use crate::config::{kubernetes_pull_policy, BerthConfig};

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
        .map(|p| kubernetes_pull_policy::name(p).to_owned());
    out.create_missing_claims = k.create_pvc;
    out.start_timeout = k.start_timeout.get();
    out.scale_up_grace = k.scale_up_grace.get();
    out.requests = k.resources.requests.resources();
    out.limits = k.resources.limits.resources();
    out
}

/// Connects to the engine `config.runner.backend` names.
///
/// # Errors
/// [`Error::Unavailable`](berth_engine_core::Error::Unavailable) when the engine cannot be
/// reached or configured.
pub async fn connect(config: &BerthConfig) -> Result<Arc<dyn ContainerEngine>> {
    match config.runner.backend {
        BackendKind::Docker => {
            let mut docker = DockerConfig::default();
            docker.host.clone_from(&config.docker.host);
            Ok(Arc::new(DockerEngine::connect(&docker).await?))
        }
        BackendKind::Kubernetes => Ok(Arc::new(
            KubernetesEngine::connect(kubernetes_config(config)).await?,
        )),
    }
}
