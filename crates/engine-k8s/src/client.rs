//! Reaching the API server: the client built from the kubeconfig (or the in-cluster
//! service account), with berth's retry policy ([`retry`](crate::retry)) in its stack.

use std::collections::HashMap;
use std::sync::Mutex;

use berth_engine_core::Result;

use crate::errors::{self};
use crate::{manifest, retry, KubernetesConfig, KubernetesEngine};

impl KubernetesEngine {
    /// Builds a client from the kubeconfig (or in-cluster config) and checks nothing yet; call
    /// [`ContainerEngine::init`](berth_engine_core::ContainerEngine::init) to reach the API server.
    ///
    /// # Errors
    /// [`Error::Unavailable`](berth_engine_core::Error::Unavailable) when no usable configuration is found; [`Error::InvalidSpec`](berth_engine_core::Error::InvalidSpec)
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
        let client = client(kube_config, config.max_concurrent_writes)
            .map_err(|e| errors::unavailable(&address, "cannot build a client", e))?;
        Ok(Self {
            client,
            config,
            address,
            pods: Mutex::new(HashMap::new()),
            user_tools: Mutex::new(HashMap::new()),
            view: crate::cache::PodView::default(),
            node_sizes: Mutex::new(None),
        })
    }
}

/// A client for `config` whose requests are retried by [`retry::ApiRetry`] instead of kube's
/// default policy, under the flow control of [`crate::flow`] (`max_writes` creates and deletes
/// at once, 429 pauses shared).
fn client(mut config: kube::Config, max_writes: usize) -> kube::Result<kube::Client> {
    config.default_retry = false;
    let pause = std::sync::Arc::new(crate::flow::Pause::default());
    let retry = tower::ServiceBuilder::new()
        // Outermost: a request waits for the shared pause and a write permit once, however
        // often it is retried.
        .layer(crate::flow::FlowLayer::new(max_writes, pause.clone()))
        .layer(tower::retry::RetryLayer::new(retry::ApiRetry::sharing(
            pause,
        )))
        // Retry needs a cloneable service; the buffer makes kube's boxed stack one.
        .layer(tower::buffer::BufferLayer::new(1024));
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&retry)
        .build())
}
