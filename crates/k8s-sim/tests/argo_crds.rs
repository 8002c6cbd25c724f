//! The simulator's Argo Workflows switch through kube-rs and the real kubectl: before
//! `Sim::install_argo_crds`, `argoproj.io/v1alpha1` paths are kube-apiserver's plain-text 404
//! for a group it does not serve; after it, Workflows and CronWorkflows are stored (create,
//! get, list, watch, `status` patch, delete) and discovery lists them, and nothing runs them.

use std::time::Duration;

use berth_k8s_sim::Sim;
use futures_util::StreamExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::ApiResource;
use serde_json::json;

mod support;

fn workflows(client: &kube::Client) -> Api<DynamicObject> {
    let res = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Workflow"),
        "workflows",
    );
    Api::namespaced_with(client.clone(), "default", &res)
}

fn kubectl(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .args(args)
        .output()
        .expect("kubectl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_workflows_are_served_only_once_their_crds_are_installed() {
    let support::Started { sim, dir } = support::start_sim().await;
    let client = support::kube_client(&dir.path().join("kubeconfig")).await;
    let api = workflows(&client);
    let wf: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "hello", "labels": {"app": "x"}},
        "spec": {"entrypoint": "main", "templates": [{"name": "main",
            "container": {"image": "busybox", "command": ["true"]}}]},
    }))
    .expect("workflow");

    // Not installed: kube-apiserver's answer for an unknown group, a plain-text 404.
    let err = api
        .create(&PostParams::default(), &wf)
        .await
        .expect_err("no CRDs yet");
    match &err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 404, "{s:?}");
            assert_eq!(s.message, "404 page not found", "{s:?}");
            assert!(s.details.is_none(), "{s:?}");
        }
        other => panic!("expected the API's 404, got {other:?}"),
    }
    let resp = raw_get(
        &sim,
        "/apis/argoproj.io/v1alpha1/namespaces/default/workflows",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    assert!(resp.contains("text/plain"), "{resp}");
    assert!(resp.ends_with("404 page not found\n"), "{resp}");
    let out = kubectl(dir.path(), &["api-resources", "--api-group=argoproj.io"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("workflows"));

    sim.install_argo_crds();
    // Discovery lists them; kubectl resolves the short name.
    let out = kubectl(dir.path(), &["api-resources", "--api-group=argoproj.io"]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listed.contains("workflows") && listed.contains("cronworkflows") && listed.contains("wf"),
        "{listed}"
    );

    let mut watch = api
        .watch(&kube::api::WatchParams::default(), "0")
        .await
        .expect("watch")
        .boxed();
    let created = api
        .create(&PostParams::default(), &wf)
        .await
        .expect("create");
    // Stored as sent, every field kept; nothing runs it.
    assert_eq!(created.data["spec"]["entrypoint"], "main");
    assert_eq!(
        created.data["spec"]["templates"][0]["container"]["command"],
        json!(["true"])
    );
    assert!(created.data["status"].is_null(), "{:?}", created.data);
    match watch.next().await {
        Some(Ok(WatchEvent::Added(o))) => assert_eq!(o.metadata.name.as_deref(), Some("hello")),
        other => panic!("expected ADDED, got {other:?}"),
    }
    let listed = api
        .list(&ListParams::default().labels("app=x"))
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 1);
    let conflict = api
        .create(&PostParams::default(), &wf)
        .await
        .expect_err("409");
    assert!(
        matches!(&conflict, kube::Error::Api(s) if s.code == 409),
        "{conflict:?}"
    );

    // The controller's part: the status subresource.
    api.patch_status(
        "hello",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .expect("status patch");
    match watch.next().await {
        Some(Ok(WatchEvent::Modified(o))) => assert_eq!(o.data["status"]["phase"], "Running"),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    let out = kubectl(dir.path(), &["get", "wf"]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        table.contains("hello") && table.contains("Running"),
        "{table}"
    );

    api.delete("hello", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(api.get_opt("hello").await.expect("get").is_none());
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match watch.next().await {
                Some(Ok(WatchEvent::Deleted(_))) => break,
                Some(_) => {}
                None => panic!("watch ended"),
            }
        }
    })
    .await
    .expect("DELETED");
    sim.shutdown().await;
}

/// The raw HTTP answer to `GET path`, headers and body.
async fn raw_get(sim: &Sim, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = sim.base_url().trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.expect("read");
    String::from_utf8_lossy(&out).into_owned()
}
