//! `berth doctor` on Kubernetes: the namespace and claim, every permission berth uses (one
//! SelfSubjectAccessReview each, a missing one named with the Role rule that grants it), and
//! the image run in a pod built exactly like an environment's.

use berth_engine_core::{EnvironmentSpec, ImageRef, SessionId};
use berth_engine_k8s::KubernetesEngine;

use crate::backend;
use crate::config::BerthConfig;
use crate::rbac;

/// One line of the report: the check's name, whether it passed, and what was seen.
pub type Check = (String, bool, String);

/// The namespace and claim checks, then one check per permission of [`rbac::required`].
pub async fn kubernetes(engine: &KubernetesEngine, config: &BerthConfig) -> Vec<Check> {
    let k = &config.kubernetes;
    let mut out = engine.checks(k.pvc_name.as_deref()).await;
    for perm in rbac::required(config) {
        let name = format!("rbac: {}", perm.name());
        let answer = engine
            .can_i(perm.verb, perm.group, perm.resource, perm.subresource)
            .await;
        out.push(match answer {
            Ok(Some(true)) => (name, true, format!("allowed in {}", k.namespace)),
            Ok(Some(false)) => (
                name,
                false,
                format!(
                    "forbidden in {} (berth needs it to {}); grant it with the Role rule {} (berth render --rbac prints the whole Role)",
                    k.namespace,
                    perm.why,
                    perm.rule()
                ),
            ),
            Ok(None) => (
                name,
                true,
                "skipped: the API server does not serve SelfSubjectAccessReview".into(),
            ),
            Err(e) => (name, false, e.to_string()),
        });
    }
    out
}

/// The environment spec the image check runs: what `berth up` would make of the config
/// (resources, lifetime, user, security profile), without a workspace.
#[must_use]
pub fn check_spec(config: &BerthConfig, image: ImageRef) -> EnvironmentSpec {
    let resources = config.runner_resources();
    let mut spec = EnvironmentSpec::new(image, SessionId::generate())
        .with_resources(resources)
        .with_max_lifetime(config.max_lifetime());
    spec.user.clone_from(&config.kubernetes.run_as_user);
    spec.security = config.kubernetes.security;
    spec
}

/// The image check: `image` in a short-lived pod built like an environment (same security
/// profile, resources, service account and pull policy; never `imagePullPolicy: Never`),
/// so Pod Security admission and quotas judge it as they will judge the environment.
pub async fn kubernetes_image(config: &BerthConfig, image: &str) -> Check {
    let name = "image".to_owned();
    let spec = match ImageRef::new(image)
        .map_err(anyhow::Error::from)
        .map(|i| check_spec(config, i))
    {
        Ok(spec) => spec,
        Err(e) => return (name, false, e.to_string()),
    };
    match KubernetesEngine::connect(backend::kubernetes_config(config)).await {
        Err(e) => (name, false, e.to_string()),
        Ok(engine) => match engine.check_image_like(&spec).await {
            Ok(()) => (
                name,
                true,
                format!(
                    "{image} runs in {} as an environment would",
                    config.kubernetes.namespace
                ),
            ),
            Err(e) => (name, false, e.to_string()),
        },
    }
}
