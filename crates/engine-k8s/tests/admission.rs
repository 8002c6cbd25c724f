//! Admission on the simulator, as berth meets it in real namespaces: Pod Security levels,
//! ResourceQuota and LimitRange, each reported with the server's own message; and the image
//! check `berth doctor` runs, judged as the environment would be.

mod common;

use std::time::{Duration, Instant};

use berth_engine_core::{
    ContainerEngine, EnvironmentSpec, ErrorKind, ImageRef, SecurityProfile, SessionId,
};
use berth_engine_k8s::KubernetesEngine;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, Pod, ResourceQuota};
use kube::api::{ListParams, PostParams};

/// A simulator with namespace `ns` (labelled `labels`) holding `objects` (quotas, limit
/// ranges), and an engine working in it.
async fn namespace(
    ns: &str,
    labels: &[(&str, &str)],
    objects: Vec<serde_json::Value>,
    adjust: impl FnOnce(&mut berth_engine_k8s::KubernetesConfig),
) -> (KubernetesEngine, ImageRef, common::SimGuard, kube::Client) {
    let ns_owned = ns.to_owned();
    let (engine, image, guard) = common::sim_engine(|c| {
        c.namespace = ns_owned;
        adjust(c);
    })
    .await;
    let client = kube::Client::try_from(kube::Config::new(
        guard.sim.base_url().parse().expect("url"),
    ))
    .expect("client");
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": ns, "labels": labels.iter().copied().collect::<std::collections::BTreeMap<_, _>>()}
    }))
    .expect("namespace");
    kube::Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("create namespace");
    for object in objects {
        match object["kind"].as_str() {
            Some("ResourceQuota") => {
                let q: ResourceQuota = serde_json::from_value(object).expect("quota");
                kube::Api::<ResourceQuota>::namespaced(client.clone(), ns)
                    .create(&PostParams::default(), &q)
                    .await
                    .expect("create quota");
            }
            _ => {
                let l: LimitRange = serde_json::from_value(object).expect("limit range");
                kube::Api::<LimitRange>::namespaced(client.clone(), ns)
                    .create(&PostParams::default(), &l)
                    .await
                    .expect("create limit range");
            }
        }
    }
    (engine, image, guard, client)
}

fn restricted(image: &ImageRef) -> EnvironmentSpec {
    let mut spec = EnvironmentSpec::new(image.clone(), SessionId::generate());
    spec.security = SecurityProfile::Restricted;
    spec.user = Some("1000".into());
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simwait_a_restricted_namespace_refuses_a_hardened_pod_and_runs_a_restricted_one() {
    let (engine, image, _guard, _client) = namespace(
        "locked",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
        vec![],
        |_| {},
    )
    .await;
    let started = Instant::now();
    let err = engine
        .start(&EnvironmentSpec::new(image.clone(), SessionId::generate()))
        .await
        .expect_err("hardened adds capabilities and may run as root");
    assert_eq!(err.kind(), ErrorKind::Forbidden, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("is forbidden: violates PodSecurity \"restricted:latest\": "),
        "{text}"
    );
    assert!(
        text.contains("unrestricted capabilities (container \"env\" must not include"),
        "{text}"
    );
    assert!(text.contains("restricted security profile"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(20), "fails fast");
    let env = engine
        .start(&restricted(&image))
        .await
        .expect("a restricted environment passes a restricted namespace");
    engine.stop(&env).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simwait_a_quota_refusal_is_forbidden_with_the_servers_message() {
    let quota = serde_json::json!({"apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "team"}, "spec": {"hard": {"limits.memory": "1Gi"}}});
    let (engine, image, _guard, _client) = namespace("quota", &[], vec![quota], |c| {
        c.limits.memory_bytes = Some(2 * 1024 * 1024 * 1024);
    })
    .await;
    let err = engine
        .start(&EnvironmentSpec::new(image.clone(), SessionId::generate()))
        .await
        .expect_err("over quota");
    assert_eq!(err.kind(), ErrorKind::Forbidden, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("exceeded quota: team, requested: limits.memory=2Gi, used: limits.memory=0, limited: limits.memory=1Gi"),
        "{text}"
    );
    assert!(text.contains("ResourceQuota"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simwait_limit_range_defaults_fill_the_environments_pod() {
    let range = serde_json::json!({"apiVersion": "v1", "kind": "LimitRange",
        "metadata": {"name": "defaults"}, "spec": {"limits": [{"type": "Container",
            "default": {"memory": "256Mi"}, "defaultRequest": {"memory": "128Mi"}}]}});
    let (engine, image, _guard, client) = namespace("ranged", &[], vec![range], |_| {}).await;
    let env = engine
        .start(&EnvironmentSpec::new(image.clone(), SessionId::generate()))
        .await
        .expect("runs");
    let pods = kube::Api::<Pod>::namespaced(client, "ranged")
        .list(&ListParams::default().labels(&format!("job-name={env}")))
        .await
        .expect("pods");
    let resources = pods.items[0].spec.as_ref().expect("spec").containers[0]
        .resources
        .clone()
        .expect("resources");
    assert_eq!(resources.limits.expect("limits")["memory"].0, "256Mi");
    assert_eq!(resources.requests.expect("requests")["memory"].0, "128Mi");
    engine.stop(&env).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simwait_the_image_check_is_built_like_the_environment() {
    let (engine, image, guard, _client) = namespace(
        "checked",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
        vec![],
        |_| {},
    )
    .await;
    // A node without the image cached: a check that may not pull would fail falsely.
    guard.sim.fail_pulls(image.as_str(), 1);
    engine
        .check_image_like(&restricted(&image))
        .await
        .expect("pulled (after one failure) and admitted like the environment");
}
