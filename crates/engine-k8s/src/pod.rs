//! Pods: the running pod of an environment, learned once and checked on every use.

use berth_engine_core::{EnvironmentId, Error, Result, LABEL_MANAGED_BY, MANAGED_BY_VALUE};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;

use crate::errors::{self};
use crate::KubernetesEngine;

impl KubernetesEngine {
    pub(crate) fn pod_api(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    pub(crate) fn forget_pod(&self, env: &EnvironmentId) {
        self.pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(env);
    }

    /// The running pod of `env`, checked afresh on every call: a pod being deleted (stopped,
    /// or past its deadline) must not take commands. The engine's shared view of its pods
    /// answers when it is current and says the pod runs ([`crate::cache`]); otherwise the
    /// API server does.
    pub(crate) async fn pod_of(&self, env: &EnvironmentId) -> Result<String> {
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
        // A view that says the pod runs is trusted (an exec in a pod deleted since is refused
        // by the API server with 404, the same error); one that says otherwise may only be
        // behind (its watch stalled), so the API server is asked before refusing.
        if let Some(view) = self.pod_view_for_lookup().await {
            let pod = match &cached {
                Some(name) => view.pod(name, &self.config.namespace),
                None => view
                    .pods_matching(&format!(
                        "job-name={env},{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"
                    ))
                    .into_iter()
                    .find(|p| live(p)),
            };
            if let Some(name) = pod
                .filter(|p| live(p))
                .and_then(|p| p.metadata.name.clone())
            {
                if cached.is_none() {
                    self.pods
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(env.clone(), name.clone());
                }
                return Ok(name);
            }
        }
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
}
