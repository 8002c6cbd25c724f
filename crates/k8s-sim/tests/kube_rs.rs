//! The simulator through kube-rs: typed create, watcher, await_condition, list, exec over
//! websocket (v5, stdin close), logs, Status errors and foreground deletion; the deny list's
//! 403s and SelfSubjectAccessReview.

use std::time::Duration;

use berth_k8s_sim::Sim;
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, DeleteParams, ListParams, LogParams, PostParams};
use kube::runtime::{conditions, wait::await_condition, watcher, WatchStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;

async fn client(sim: &Sim) -> kube::Client {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&path).expect("kubeconfig");
    support::kube_client(&path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_round_trip() {
    support::ensure_image().await;
    let sim = Sim::start().await.expect("the simulator starts");
    let client = client(&sim).await;
    let version = client.apiserver_version().await.expect("version");
    assert_eq!(version.major, "1");

    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let job: Job = serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "kr", "labels": {"app.kubernetes.io/managed-by": "berth"}},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"labels": {"app.kubernetes.io/managed-by": "berth"}},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "main", "image": berth_engine_core::testkit::TEST_IMAGE,
                "command": ["sh", "-c", "echo hello; sleep 600"]}]}}},
    }))
    .expect("job");
    let created = jobs
        .create(&PostParams::default(), &job)
        .await
        .expect("create job");
    assert!(created.metadata.uid.is_some());

    // A watcher sees the pod go Running.
    let mut stream = watcher(
        pods.clone(),
        watcher::Config::default().labels("job-name=kr"),
    )
    .applied_objects()
    .boxed();
    let pod = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let p = stream
                .try_next()
                .await
                .expect("watch")
                .expect("watch ended");
            if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                return p;
            }
        }
    })
    .await
    .expect("the pod runs");
    let name = pod.metadata.name.clone().expect("name");
    tokio::time::timeout(
        Duration::from_secs(10),
        await_condition(pods.clone(), &name, conditions::is_pod_running()),
    )
    .await
    .expect("in time")
    .expect("condition");
    // A streaming-list watcher (sendInitialEvents) sees it too.
    let mut streaming = watcher(
        pods.clone(),
        watcher::Config::default()
            .labels("job-name=kr")
            .streaming_lists(),
    )
    .applied_objects()
    .boxed();
    let first = tokio::time::timeout(Duration::from_secs(20), streaming.try_next())
        .await
        .expect("in time")
        .expect("watch")
        .expect("an object");
    assert_eq!(first.metadata.name.as_deref(), Some(name.as_str()));
    drop(streaming);
    let list = pods
        .list(&ListParams::default().labels("job-name=kr"))
        .await
        .expect("list");
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());

    // exec with stdin: closing the writer ends cat's input (v5 close signal).
    let mut attached = pods
        .exec(
            &name,
            vec!["cat"],
            &AttachParams::default().stdin(true).stderr(false),
        )
        .await
        .expect("exec");
    let mut stdin = attached.stdin().expect("stdin");
    let mut stdout = attached.stdout().expect("stdout");
    stdin.write_all(b"through kube-rs\n").await.expect("write");
    stdin.shutdown().await.expect("close stdin");
    drop(stdin);
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(20), stdout.read_to_string(&mut out))
        .await
        .expect("cat ends")
        .expect("read");
    assert_eq!(out, "through kube-rs\n");
    let status = attached
        .take_status()
        .expect("status")
        .await
        .expect("status");
    assert_eq!(status.status.as_deref(), Some("Success"));
    attached.join().await.expect("join");

    let mut attached = pods
        .exec(
            &name,
            vec!["sh", "-c", "exit 4"],
            &AttachParams::default().stderr(false),
        )
        .await
        .expect("exec");
    let status = attached
        .take_status()
        .expect("status")
        .await
        .expect("status");
    assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
    let causes = status.details.and_then(|d| d.causes).unwrap_or_default();
    assert_eq!(causes[0].reason.as_deref(), Some("ExitCode"));
    assert_eq!(causes[0].message.as_deref(), Some("4"));

    let logs = pods.logs(&name, &LogParams::default()).await.expect("logs");
    assert_eq!(logs, "hello\n");

    match pods.get("nope").await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 404);
            assert_eq!(status.reason, "NotFound");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }

    let uid = created.metadata.uid.clone().expect("uid");
    jobs.delete("kr", &DeleteParams::foreground())
        .await
        .expect("delete");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(jobs.clone(), "kr", conditions::is_deleted(&uid)),
    )
    .await
    .expect("deleted in time")
    .expect("condition");
    assert!(pods
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .is_empty());
    sim.shutdown().await;
}

/// A denied create is a 403 Forbidden `kube::Error::Api`; a SelfSubjectAccessReview says
/// whether the deny list allows a verb.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_authorization() {
    let sim = Sim::start().await.expect("the simulator starts");
    let client = client(&sim).await;
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let can_create_jobs = || async {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some("default".to_owned()),
                    verb: Some("create".to_owned()),
                    group: Some("batch".to_owned()),
                    resource: Some("jobs".to_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answered = reviews
            .create(&PostParams::default(), &review)
            .await
            .expect("create SelfSubjectAccessReview");
        let status = answered.status.expect("status");
        (status.allowed, status.denied, status.reason)
    };
    assert_eq!(can_create_jobs().await, (true, None, None));

    sim.deny("create", "jobs");
    let (allowed, denied, reason) = can_create_jobs().await;
    assert!(!allowed);
    assert_eq!(denied, Some(true));
    assert!(reason.is_some());

    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job: Job = serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "refused"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": berth_engine_core::testkit::TEST_IMAGE,
            "command": ["true"]}]}}},
    }))
    .expect("job");
    match jobs.create(&PostParams::default(), &job).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert_eq!(status.reason, "Forbidden", "{status:?}");
            assert_eq!(
                status.message,
                r#"jobs.batch is forbidden: User "system:anonymous" cannot create resource "jobs" in API group "batch" in the namespace "default""#
            );
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    // Reading is still allowed, and nothing was created.
    assert!(jobs
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .is_empty());

    sim.allow("create", "jobs");
    assert_eq!(can_create_jobs().await, (true, None, None));
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    jobs.create(&dry_run, &job)
        .await
        .expect("create allowed again");
    sim.shutdown().await;
}

/// Through kube-rs: quantities come back canonical, and `fieldValidation` on merge patches and
/// server-side apply (whose `application/apply-patch+yaml` body is JSON) refuses or drops
/// unknown fields as kube-apiserver does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simproto_kube_rs_field_validation_and_quantities() {
    use kube::api::{Patch, PatchParams};
    use kube::core::DynamicObject;
    use kube::discovery::ApiResource;

    let sim = Sim::start().await.expect("the simulator starts");
    let client = client(&sim).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job: Job = serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "fv"},
        "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": berth_engine_core::testkit::TEST_IMAGE,
            "command": ["sleep", "600"],
            "resources": {"requests": {"cpu": "1000m", "memory": "1024Mi"}}}]}}}}))
    .expect("job");
    let created = jobs
        .create(&PostParams::default(), &job)
        .await
        .expect("create");
    let requests = created
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec")
        .containers[0]
        .resources
        .clone()
        .and_then(|r| r.requests)
        .expect("requests");
    assert_eq!(requests["cpu"].0, "1");
    assert_eq!(requests["memory"].0, "1Gi");

    let bogus = serde_json::json!({"spec": {"bogus": 1}});
    let strict = jobs
        .patch(
            "fv",
            &PatchParams::default().validation_strict(),
            &Patch::Merge(&bogus),
        )
        .await;
    match strict {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 400, "{status:?}");
            assert!(
                status
                    .message
                    .contains(r#"strict decoding error: unknown field "spec.bogus""#),
                "{status:?}"
            );
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    let applied = serde_json::json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "fv"}, "spec": {"bogus": 2}});
    let strict_apply = jobs
        .patch(
            "fv",
            &PatchParams::apply("berth").validation_strict(),
            &Patch::Apply(&applied),
        )
        .await;
    assert!(
        matches!(strict_apply, Err(kube::Error::Api(ref s)) if s.code == 400),
        "{strict_apply:?}"
    );
    jobs.patch(
        "fv",
        &PatchParams::default().validation_ignore(),
        &Patch::Merge(&bogus),
    )
    .await
    .expect("Ignore drops the field");
    let resource = ApiResource::erase::<Job>(&());
    let dynamic: Api<DynamicObject> = Api::namespaced_with(client, "default", &resource);
    let stored = dynamic.get("fv").await.expect("get");
    assert!(
        stored.data["spec"].get("bogus").is_none(),
        "{:?}",
        stored.data
    );
    sim.shutdown().await;
}

/// Jobs created many at once get one pod each: the Job controller runs from its own loop and
/// from the handler that creates a Job, and two runs at once created a second pod for a Job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_created_at_once_get_one_pod_each() {
    support::ensure_image().await;
    let sim = Sim::start().await.expect("the simulator starts");
    let client = client(&sim).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // A pod that cannot be scheduled keeps the Job active without a container to start.
    let job = |name: String| -> Job {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never",
                "nodeSelector": {"no-such-node": "true"},
                "containers": [{"name": "main", "image": berth_engine_core::testkit::TEST_IMAGE,
                    "command": ["sleep", "600"],
                    "resources": {"requests": {"memory": "1Ei"}}}]}}},
        }))
        .expect("job")
    };
    let names: Vec<String> = (0..40).map(|i| format!("many-{i}")).collect();
    futures_util::future::join_all(names.iter().map(|n| {
        let jobs = jobs.clone();
        let job = job(n.clone());
        async move {
            jobs.create(&PostParams::default(), &job)
                .await
                .expect("create job")
        }
    }))
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let listed = pods.list(&ListParams::default()).await.expect("list pods");
    for name in &names {
        let owned = listed
            .items
            .iter()
            .filter(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("job-name"))
                    .is_some_and(|j| j == name)
            })
            .count();
        assert_eq!(owned, 1, "job {name} has {owned} pods");
    }
}

/// A merge patch carrying `metadata.resourceVersion` is a precondition, as on the API server:
/// the current version applies, a stale one is 409 Conflict and changes nothing (what a pool
/// claim relies on so that two claimers never take the same member).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_with_a_stale_resource_version_is_a_conflict() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Patch, PatchParams};

    let sim = Sim::start().await.expect("the simulator starts");
    let client = client(&sim).await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let map: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "rv", "labels": {"owner": "none"}},
        "data": {"a": "1"},
    }))
    .expect("configmap");
    let created = maps
        .create(&PostParams::default(), &map)
        .await
        .expect("create");
    let rv = created
        .metadata
        .resource_version
        .clone()
        .expect("a resourceVersion");
    let claim = |owner: &str, rv: &str| serde_json::json!({"metadata": {"resourceVersion": rv, "labels": {"owner": owner}}});
    let first = maps
        .patch(
            "rv",
            &PatchParams::default(),
            &Patch::Merge(&claim("first", &rv)),
        )
        .await
        .expect("the first patch with the current version applies");
    assert_ne!(
        first.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    let err = maps
        .patch(
            "rv",
            &PatchParams::default(),
            &Patch::Merge(&claim("second", &rv)),
        )
        .await
        .expect_err("a stale version is refused");
    match err {
        kube::Error::Api(status) => assert_eq!(status.code, 409, "{status:?}"),
        other => panic!("expected 409 Conflict, got {other:?}"),
    }
    let now = maps.get("rv").await.expect("get");
    assert_eq!(now.metadata.labels.unwrap()["owner"], "first");
    // Without a version, a patch applies whatever the current one is.
    let plain = serde_json::json!({"metadata": {"labels": {"owner": "third"}}});
    maps.patch("rv", &PatchParams::default(), &Patch::Merge(&plain))
        .await
        .expect("an unconditional patch");
}
