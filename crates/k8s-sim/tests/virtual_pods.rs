//! Virtual pods (`Sim::virtual_pods`): Jobs' pods reach Running without containers of their
//! own, exec reaches the one shared container, deletion removes them; and the request counter
//! (`Sim::requests`) counts a known sequence of requests exactly.

use std::time::{Duration, Instant};

use berth_k8s_sim::Sim;
use futures_util::future::join_all;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, DeleteParams, ListParams, PostParams};
use tokio::io::AsyncReadExt;

mod support;

async fn client(sim: &Sim) -> (kube::Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&path).expect("kubeconfig");
    (support::kube_client(&path).await, dir)
}

fn job(name: &str) -> Job {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": {"vp": "yes"}},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"labels": {"vp": "yes"}},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "main", "image": berth_engine_core::testkit::TEST_IMAGE,
                // Requests no node could hold 200 times: virtual pods are bound anyway.
                "resources": {"requests": {"cpu": "2", "memory": "1Gi"}},
                "command": ["sleep", "3600"]}]}}},
    }))
    .expect("job")
}

async fn exec_out(pods: &Api<Pod>, name: &str, argv: &[&str]) -> String {
    let mut proc = pods
        .exec(name, argv.to_vec(), &AttachParams::default().stderr(false))
        .await
        .expect("exec");
    let mut out = String::new();
    proc.stdout()
        .expect("stdout")
        .read_to_string(&mut out)
        .await
        .expect("read");
    proc.join().await.expect("exec ends");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_virtual_pods_run_share_one_container_and_go_away() {
    support::ensure_image().await;
    let sim = Sim::start().await.expect("the simulator starts");
    sim.virtual_pods(berth_engine_core::testkit::TEST_IMAGE)
        .await
        .expect("virtual pods");
    let shared = sim
        .virtual_container()
        .expect("shared container")
        .to_owned();
    let docker = support::docker().await;
    let label = support::instance_label(sim.instance_id());
    let (client, _dir) = client(&sim).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    let n = 200;
    let t = Instant::now();
    let created = join_all((0..n).map(|i| {
        let jobs = jobs.clone();
        async move {
            jobs.create(&PostParams::default(), &job(&format!("vp-{i}")))
                .await
        }
    }))
    .await;
    for c in created {
        c.expect("create job");
    }
    eprintln!("{n} Jobs created after {:?}", t.elapsed());
    let running = loop {
        let list = pods
            .list(&ListParams::default().labels("vp=yes"))
            .await
            .expect("list");
        let running: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        if running.len() == n {
            break running;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "only {} of {n} virtual pods Running after 60 s",
            running.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("{n} virtual pods Running after {:?}", t.elapsed());
    // As a kubelet reports them: ready, started, the shared container's id.
    let status = running[0].status.clone().expect("status");
    let cs = &status.container_statuses.expect("containerStatuses")[0];
    assert!(cs.ready && cs.started == Some(true), "{cs:?}");
    assert!(cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some());
    assert_eq!(
        cs.container_id.as_deref(),
        Some(format!("docker://{shared}").as_str())
    );
    let ready = status
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    assert!(ready, "Ready condition");
    assert!(status.pod_ip.is_some(), "pod IP");
    // The Jobs count their pods as active and ready.
    let j = jobs.get("vp-7").await.expect("job");
    let js = j.status.expect("job status");
    assert_eq!((js.active, js.ready), (Some(1), Some(1)), "{js:?}");
    // One container for the instance: the shared one, no container per pod.
    let containers = support::containers_labelled(&docker, std::slice::from_ref(&label)).await;
    assert_eq!(containers.len(), 1, "{containers:?}");

    // Exec into any virtual pod runs in the shared container: a file one exec writes,
    // another pod's exec reads.
    let a = running[3].metadata.name.clone().expect("name");
    let b = running[150].metadata.name.clone().expect("name");
    assert_eq!(
        exec_out(&pods, &a, &["sh", "-c", "echo shared > /tmp/vp; echo ok"]).await,
        "ok\n"
    );
    assert_eq!(exec_out(&pods, &b, &["cat", "/tmp/vp"]).await, "shared\n");

    // Deleting a virtual pod completes: it is gone soon after; its Job's status says so.
    pods.delete(&a, &DeleteParams::default())
        .await
        .expect("delete");
    let t = Instant::now();
    while pods.get_opt(&a).await.expect("get").is_some() {
        assert!(t.elapsed() < Duration::from_secs(10), "pod {a} still there");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = pods
        .exec(&a, vec!["true"], &AttachParams::default())
        .await
        .err()
        .expect("exec into a deleted pod fails");
    assert!(err.to_string().contains("not found"), "{err}");

    drop(sim);
    let left = support::containers_labelled(&docker, &[label]).await;
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counter_counts_a_known_sequence_exactly() {
    support::ensure_image().await;
    let sim = Sim::start().await.expect("the simulator starts");
    sim.virtual_pods(berth_engine_core::testkit::TEST_IMAGE)
        .await
        .expect("virtual pods");
    let (client, _dir) = client(&sim).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    sim.reset_requests();
    assert_eq!(sim.requests().total(), 0);

    jobs.create(&PostParams::default(), &job("counted"))
        .await
        .expect("create");
    let t = Instant::now();
    let pod = loop {
        let list = pods
            .list(&ListParams::default().labels("job-name=counted"))
            .await
            .expect("list");
        if let Some(p) = list
            .items
            .into_iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        {
            break p;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no Running pod");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lists = sim.requests().get("list", "pods");
    assert!(lists >= 1);
    let name = pod.metadata.name.clone().expect("name");
    pods.get(&name).await.expect("get");
    jobs.get("counted").await.expect("get job");
    assert_eq!(exec_out(&pods, &name, &["echo", "hi"]).await, "hi\n");
    // A watch counts once, when opened, whatever it then delivers.
    let mut watch = Box::pin(
        pods.watch(&kube::api::WatchParams::default().timeout(1), "0")
            .await
            .expect("watch"),
    );
    while futures_util::StreamExt::next(&mut watch).await.is_some() {}

    let got = sim.requests();
    let expected = [
        ("create", "jobs", 1),
        ("list", "pods", lists),
        ("get", "pods", 1),
        ("get", "jobs", 1),
        ("exec", "pods", 1),
        ("watch", "pods", 1),
    ];
    for (verb, res, n) in expected {
        assert_eq!(got.get(verb, res), n, "{verb} {res} in {got}");
    }
    assert_eq!(
        got.total(),
        expected.iter().map(|(_, _, n)| n).sum::<u64>(),
        "nothing else counted: {got}"
    );
    // kubectl's one `get pod` is one get (plus its discovery, counted apart).
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let before = sim.requests();
    let out = std::process::Command::new("kubectl")
        .args(["get", "pod", &name, "-o", "name"])
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", dir.path())
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let delta = sim.requests().since(&before);
    assert_eq!(delta.get("get", "pods"), 1, "{delta}");
    assert_eq!(
        delta.total() - delta.get("get", "discovery"),
        1,
        "only discovery besides the get: {delta}"
    );
    let before = sim.requests();
    jobs.delete("counted", &DeleteParams::background())
        .await
        .expect("delete");
    let delta = sim.requests().since(&before);
    assert_eq!(
        (delta.get("delete", "jobs"), delta.total()),
        (1, 1),
        "{delta}"
    );
    sim.shutdown().await;
}
