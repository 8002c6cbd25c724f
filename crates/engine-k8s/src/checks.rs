//! What `berth doctor` asks of a cluster: the namespace, the workspace claim, an image
//! check built like an environment, and permissions by SelfSubjectAccessReview.

use berth_engine_core::{EnvironmentSpec, PullPolicy, Result};
use kube::api::PostParams;
use kube::Api;

use crate::errors::{self};
use crate::{wait, KubernetesEngine};

impl KubernetesEngine {
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
                        "{claim} does not exist in {}; create it, or let berth create missing claims",
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
    /// As [`ContainerEngine::start`](berth_engine_core::ContainerEngine::start) would fail for the same spec: [`Error::ImageNotFound`](berth_engine_core::Error::ImageNotFound),
    /// [`Error::Forbidden`](berth_engine_core::Error::Forbidden) (RBAC or admission), [`Error::Unschedulable`](berth_engine_core::Error::Unschedulable),
    /// [`Error::Timeout`](berth_engine_core::Error::Timeout) naming what was awaited, ...
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
}
