//! The waiting policy end to end on the simulator: what `start` waits for (a scale-up, a
//! claim that binds late, a pull retried after a registry hiccup), what it fails on at once
//! (`ErrImageNeverPull`), and what a wait that never ends names (the pull `Always` attempted).

mod common;

use std::time::{Duration, Instant};

use berth_engine_core::{ContainerEngine, EnvironmentSpec, ErrorKind, SessionId, Workspace};
use berth_k8s_sim::{NodeSize, SCALED_NODE_NAME};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::ListParams;

const GI: f64 = 1024.0 * 1024.0 * 1024.0;

/// A client of the simulator, to look at what berth cannot show (nodes, events).
async fn client(guard: &common::SimGuard) -> kube::Client {
    let config = kube::Config::new(guard.sim.base_url().parse().expect("url"));
    kube::Client::try_from(config).expect("client")
}

async fn node_of(client: &kube::Client, env: &str) -> String {
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), "default");
    let list = pods
        .list(&ListParams::default().labels(&format!("job-name={env}")))
        .await
        .expect("pods");
    list.items[0]
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .expect("bound")
}

/// A node of 2 CPUs and 2 GiB, and environments limited to 1.5 GiB: one fits, two do not.
fn small() -> Option<NodeSize> {
    Some(NodeSize {
        cpu: 2.0,
        memory: 2.0 * GI,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simwait_a_full_node_waits_for_the_scale_up_and_runs_on_the_new_node() {
    let (engine, image, guard) = common::sim_engine_with(small(), |c| {
        c.limits.memory_bytes = Some(1536 * 1024 * 1024);
    })
    .await;
    guard
        .sim
        .autoscale(guard.sim.node_size(), Duration::from_secs(5));
    let first = engine
        .start(&EnvironmentSpec::new(image.clone(), SessionId::generate()))
        .await
        .expect("the first fits");
    let started = Instant::now();
    let second = engine
        .start(&EnvironmentSpec::new(image.clone(), SessionId::generate()))
        .await
        .expect("the second runs once the autoscaler's node joins");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "it waited for the node: {:?}",
        started.elapsed()
    );
    let kube = client(&guard).await;
    assert_eq!(node_of(&kube, second.as_str()).await, SCALED_NODE_NAME);
    let events: kube::Api<Event> = kube::Api::namespaced(kube.clone(), "default");
    let scale_ups = events
        .list(&ListParams::default().fields("reason=TriggeredScaleUp"))
        .await
        .expect("events");
    assert_eq!(scale_ups.items.len(), 1, "{:?}", scale_ups.items);
    for env in [&first, &second] {
        engine.stop(env).await.expect("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simwait_a_full_node_without_an_autoscaler_fails_after_the_grace() {
    let (engine, image, _guard) = common::sim_engine_with(small(), |c| {
        c.limits.memory_bytes = Some(1536 * 1024 * 1024);
        c.scale_up_grace = Duration::from_secs(4);
    })
    .await;
    let first = engine
        .start(&EnvironmentSpec::new(image.clone(), SessionId::generate()))
        .await
        .expect("the first fits");
    let started = Instant::now();
    let err = engine
        .start(&EnvironmentSpec::new(image.clone(), SessionId::generate()))
        .await
        .expect_err("no room and no autoscaler");
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Unschedulable, "{err}");
    assert!(err.to_string().contains("1 Insufficient memory"), "{err}");
    assert!(
        err.to_string()
            .contains("no autoscaler announced a scale-up"),
        "{err}"
    );
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(30),
        "{took:?}"
    );
    engine.stop(&first).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simwait_a_claim_that_binds_late_is_awaited() {
    let (engine, image, guard) = common::sim_engine(|c| c.create_missing_claims = true).await;
    guard.sim.bind_claims_after(Duration::from_secs(4));
    let spec =
        EnvironmentSpec::new(image, SessionId::generate()).with_workspace(Workspace::Volume {
            name: "late-claim".into(),
            sub_path: None,
        });
    let started = Instant::now();
    let env = engine
        .start(&spec)
        .await
        .expect("runs once the claim binds");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    engine.stop(&env).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simwait_never_pull_of_a_missing_image_fails_at_once_with_the_kubelets_message() {
    let (engine, _image, _guard) =
        common::sim_engine(|c| c.image_pull_policy = Some("Never".into())).await;
    let missing = berth_engine_core::ImageRef::new("berth-test/not-on-the-node:1").expect("ref");
    let started = Instant::now();
    let err = engine
        .start(&EnvironmentSpec::new(missing, SessionId::generate()))
        .await
        .expect_err("not on the node");
    assert_eq!(err.kind(), ErrorKind::ImageNotFound, "{err}");
    assert!(
        err.to_string().contains(
            "ErrImageNeverPull: Container image \"berth-test/not-on-the-node:1\" is not present with pull policy of Never"
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simwait_always_pulls_and_a_pull_that_never_succeeds_times_out_naming_it() {
    let (engine, image, _guard) = common::sim_engine(|c| {
        c.image_pull_policy = Some("Always".into());
        c.start_timeout = Duration::from_secs(10);
    })
    .await;
    let err = engine
        .start(&EnvironmentSpec::new(image.clone(), SessionId::generate()))
        .await
        .expect_err("no registry to pull from");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "the kubelet to retry the image pull (ErrImagePull: Failed to pull image \"{image}\": Error response from daemon:"
        )) || text.contains(&format!(
            "the kubelet to retry the image pull (ImagePullBackOff: Failed to pull image \"{image}\": Error response from daemon:"
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simwait_a_pull_that_fails_then_succeeds_is_awaited() {
    let (engine, image, guard) = common::sim_engine(|_| {}).await;
    guard.sim.fail_pulls(image.as_str(), 2);
    let started = Instant::now();
    let env = engine
        .start(&EnvironmentSpec::new(image.clone(), SessionId::generate()))
        .await
        .expect("runs after the registry recovers");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let kube = client(&guard).await;
    let events: kube::Api<Event> = kube::Api::namespaced(kube.clone(), "default");
    let said: Vec<String> = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter_map(|e| e.message)
        .collect();
    assert!(
        said.iter().any(|m| m.contains("toomanyrequests")),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|m| m.starts_with("Successfully pulled image")),
        "{said:?}"
    );
    engine.stop(&env).await.expect("stop");
}
