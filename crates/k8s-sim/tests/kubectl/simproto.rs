//! The simulator speaks the protocol as kube-apiserver 1.33 does (issue 10, section 6): field
//! validation, canonical quantities, YAML bodies, the version, what admission and the job
//! controller add to pods, exec and logs before scheduling, and the exec stream options.

use std::time::Duration;

use serde_json::{json, Value};

use super::{cluster, eventually, http, job_yaml, status_of, IMAGE};

fn warnings(head: &str) -> Vec<String> {
    head.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("warning")
                .then(|| v.trim().to_owned())
        })
        .collect()
}

const JOBS: &str = "/apis/batch/v1/namespaces/default/jobs";
const PODS: &str = "/api/v1/namespaces/default/pods";

fn typo_job(name: &str) -> String {
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"bogus": true, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "main", "image": IMAGE, "command": ["sleep", "600"],
                "cmmand": ["x"]}]}}}})
    .to_string()
}

/// `fieldValidation`: Strict refuses with the decoder's words, Warn (the default) answers
/// `Warning` headers, Ignore is silent; the unknown fields are never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simproto_field_validation() {
    let c = cluster(33).await;
    let url = c.sim.base_url().to_owned();
    let strict = format!("{JOBS}?fieldValidation=Strict");
    let (code, _, body) = http(&url, "POST", &strict, "application/json", &typo_job("s"));
    assert_eq!(code, 400, "{body}");
    let s = status_of(&body);
    assert_eq!(s["reason"], "BadRequest");
    assert_eq!(
        s["message"],
        "Job in version \"v1\" cannot be handled as a Job: strict decoding error: unknown field \"spec.bogus\", unknown field \"spec.template.spec.containers[0].cmmand\""
    );

    for (name, query, expected) in [
        ("w", "", 2),
        ("w2", "?fieldValidation=Warn", 2),
        ("i", "?fieldValidation=Ignore", 0),
    ] {
        let (code, head, body) = http(
            &url,
            "POST",
            &format!("{JOBS}{query}"),
            "application/json",
            &typo_job(name),
        );
        assert_eq!(code, 201, "{body}");
        let got = warnings(&head);
        assert_eq!(got.len(), expected, "{head}");
        if expected > 0 {
            assert_eq!(got[0], r#"299 - "unknown field \"spec.bogus\"""#);
        }
        let (_, _, stored) = http(&url, "GET", &format!("{JOBS}/{name}"), "", "");
        let stored: Value = serde_json::from_str(&stored).expect("json");
        assert!(stored["spec"].get("bogus").is_none(), "{stored}");
        assert!(
            stored["spec"]["template"]["spec"]["containers"][0]
                .get("cmmand")
                .is_none(),
            "{stored}"
        );
    }

    // A patch adding an unknown field: refused under Strict, dropped otherwise.
    let patch =
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"main","image":"x","bogus":1}]}}}}"#;
    let (code, _, body) = http(
        &url,
        "PATCH",
        &format!("{JOBS}/i?fieldValidation=Strict"),
        "application/merge-patch+json",
        patch,
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains(r#"unknown field \"spec.template.spec.containers[0].bogus\""#),
        "{body}"
    );

    // kubectl validates on the server (fieldValidation=Strict) by default, and warns with
    // --validate=warn.
    let path = c.dir.path().join("typo.yaml");
    std::fs::write(
        &path,
        job_yaml("typo", IMAGE, "sleep 600").replace("backoffLimit", "backofLimit"),
    )
    .expect("manifest");
    let file = path.to_str().expect("utf-8");
    let out = c.run(&["create", "-f", file]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r#"strict decoding error: unknown field "spec.backofLimit""#),
        "{stderr}"
    );
    let out = c.run(&["create", "-f", file, "--validate=warn"]);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r#"Warning: unknown field "spec.backofLimit""#),
        "{stderr}"
    );
    c.sim.shutdown().await;
}

/// Quantities read back in canonical form; a YAML body is accepted; the server and node say
/// 1.33; pods get a service account, the default tolerations and, from a Job, the tracking
/// finalizer, which comes off once the pod has finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simproto_decoding_version_and_defaults() {
    let c = cluster(33).await;
    let url = c.sim.base_url().to_owned();

    let (code, _, body) = http(&url, "GET", "/version", "", "");
    assert_eq!(code, 200);
    let version: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (version["major"].as_str(), version["minor"].as_str()),
        (Some("1"), Some("33"))
    );
    assert_eq!(version["gitVersion"], "v1.33.0");
    let node = c.ok(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={.items[0].status.nodeInfo.kubeletVersion}",
    ]);
    assert_eq!(node, "v1.33.0");
    let kubectl_version = c.ok(&["version", "-o", "json"]);
    let kubectl_version: Value = serde_json::from_str(&kubectl_version).expect("json");
    assert_eq!(kubectl_version["serverVersion"]["gitVersion"], "v1.33.0");

    let yaml = format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: q\nspec:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: main\n        image: {IMAGE}\n        command: [sh, -c, 'exit 0']\n        resources:\n          requests: {{cpu: 1000m, memory: 1024Mi}}\n          limits: {{cpu: 1.5, memory: 1.5Gi}}\n"
    );
    let (code, _, body) = http(&url, "POST", JOBS, "application/yaml", &yaml);
    assert_eq!(code, 201, "a YAML body: {body}");
    let job: Value = serde_json::from_str(&body).expect("json");
    let resources = &job["spec"]["template"]["spec"]["containers"][0]["resources"];
    assert_eq!(
        *resources,
        json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1500m", "memory": "1536Mi"}})
    );
    // The template is not admitted: no service account there, as on a real cluster.
    assert!(
        job["spec"]["template"]["spec"]
            .get("serviceAccountName")
            .is_none(),
        "{job}"
    );

    let pod = eventually(Duration::from_secs(30), || {
        let (_, _, body) = http(
            &url,
            "GET",
            &format!("{PODS}?labelSelector=job-name%3Dq"),
            "",
            "",
        );
        let list: Value = serde_json::from_str(&body).ok()?;
        list["items"].get(0).cloned()
    });
    assert_eq!(pod["spec"]["serviceAccountName"], "default", "{pod}");
    assert_eq!(pod["spec"]["serviceAccount"], "default", "{pod}");
    assert_eq!(
        pod["spec"]["tolerations"],
        json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        ])
    );
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["requests"]["cpu"],
        "1"
    );
    let name = pod["metadata"]["name"].as_str().expect("name").to_owned();
    // The finalizer is there while the pod runs or waits, and comes off once it is counted.
    let finalizers = pod["metadata"]["finalizers"].clone();
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    if phase != "Succeeded" {
        assert_eq!(
            finalizers,
            json!(["batch.kubernetes.io/job-tracking"]),
            "{pod}"
        );
    }
    eventually(Duration::from_secs(60), || {
        let (_, _, body) = http(&url, "GET", &format!("{PODS}/{name}"), "", "");
        let p: Value = serde_json::from_str(&body).ok()?;
        (p["status"]["phase"] == "Succeeded" && p["metadata"].get("finalizers").is_none())
            .then_some(())
    });

    // A pod of its own names its service account and keeps its own tolerations.
    let own = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "own"},
        "spec": {"serviceAccountName": "agent", "restartPolicy": "Never",
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "c", "image": IMAGE, "command": ["true"]}]}});
    let (code, _, body) = http(&url, "POST", PODS, "application/json", &own.to_string());
    assert_eq!(code, 201, "{body}");
    let own: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(own["spec"]["serviceAccountName"], "agent");
    assert_eq!(own["spec"]["tolerations"], json!([{"operator": "Exists"}]));
    assert!(own["metadata"].get("finalizers").is_none());
    c.sim.shutdown().await;
}

/// Exec on a pod with no node answers the API server's "does not have a host assigned"; logs
/// answer 204 with nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simproto_exec_and_logs_before_scheduling() {
    let c = cluster(33).await;
    let url = c.sim.base_url().to_owned();
    // A pod no node can hold stays unscheduled.
    let far = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "far"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": IMAGE,
            "command": ["sleep", "600"], "resources": {"requests": {"cpu": "100000"}}}]}});
    let (code, _, body) = http(&url, "POST", PODS, "application/json", &far.to_string());
    assert_eq!(code, 201, "{body}");
    let (code, body) = super::http_get(&url, &format!("{PODS}/far/exec?command=true&stdout=true"));
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        status_of(&body)["message"],
        "pod far does not have a host assigned"
    );
    let out = c.run(&["exec", "far", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pod far does not have a host assigned"),
        "{out:?}"
    );
    let (code, _, body) = http(&url, "GET", &format!("{PODS}/far/log"), "", "");
    assert_eq!((code, body.as_str()), (204, ""));
    let (code, body) = super::http_get(&url, &format!("{PODS}/far/log?container=nope"));
    assert_eq!(code, 400);
    assert_eq!(
        status_of(&body)["message"],
        "container nope is not valid for pod far"
    );
    let out = c.run(&["logs", "far"]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty());
    c.sim.shutdown().await;
}

/// An exec asking for no stream is refused with the kubelet's 400; stream options are
/// booleans as the API server reads them (`True`, `0`); stdin sent in websocket text frames
/// reaches the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simproto_exec_stream_options_and_text_frames() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let c = cluster(33).await;
    let url = c.sim.base_url().to_owned();
    c.apply_yaml("job", &job_yaml("ws", IMAGE, "sleep 600"));
    let pod = c.wait_job_ready("ws");
    let addr = url.trim_start_matches("http://").to_owned();
    let connect = |query: &str| {
        let mut request = format!("ws://{addr}{PODS}/{pod}/exec?{query}")
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "v5.channel.k8s.io".parse().expect("header"),
        );
        let addr = addr.clone();
        async move {
            let stream = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            tokio_tungstenite::client_async(request, stream).await
        }
    };

    // No stream at all: 400 before any upgrade, in the kubelet's plain words.
    let refused = connect("command=true")
        .await
        .expect_err("no streams is refused");
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 400);
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
            assert_eq!(body, "you must specify at least 1 of stdin, stdout, stderr");
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    let refused = connect("command=true&stdout=false&stderr=0")
        .await
        .expect_err("refused");
    assert!(
        matches!(refused, tokio_tungstenite::tungstenite::Error::Http(ref r) if r.status() == 400)
    );

    // Stdin in text frames, as the Python client's write_stdin("...") sends it.
    let (mut ws, _) = connect("command=cat&stdin=True&stdout=True&stderr=True")
        .await
        .expect("handshake");
    ws.send(Message::Text("\u{0}abc".into()))
        .await
        .expect("send");
    ws.send(Message::Binary(b"\x00def".to_vec().into()))
        .await
        .expect("send");
    ws.send(Message::Binary(vec![255, 0].into()))
        .await
        .expect("close stdin");
    let mut stdout = Vec::new();
    let mut status = Vec::new();
    let read = async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Binary(b)) if b.first() == Some(&1) => {
                    stdout.extend_from_slice(&b[1..])
                }
                Ok(Message::Binary(b)) if b.first() == Some(&3) => {
                    status.extend_from_slice(&b[1..])
                }
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the exec ends");
    assert_eq!(String::from_utf8_lossy(&stdout), "abcdef");
    let status: Value = serde_json::from_slice(&status).expect("status");
    assert_eq!(status["status"], "Success");
    c.sim.shutdown().await;
}

/// Like a node: a container's command is its PID 1 and reaps nothing, so an orphan stays a
/// zombie; a pod sharing its process namespace has a reaping PID 1 (the pause process there,
/// Docker's init here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simproto_pid_one_is_the_command_unless_the_pod_shares_pids() {
    let c = cluster(33).await;
    let pod = |name: &str, shared: bool| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  shareProcessNamespace: {shared}\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: {IMAGE}\n    command: [sleep, \"600\"]\n---\n"
        )
    };
    c.apply_yaml(
        "pods",
        &format!("{}{}", pod("plain", false), pod("shared", true)),
    );
    c.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/plain",
        "pod/shared",
        "--timeout=60s",
    ]);
    let zombies_after_orphan = |name: &str| {
        c.ok(&["exec", name, "--", "sh", "-c", "sleep 0.1 &"]);
        std::thread::sleep(Duration::from_millis(1500));
        c.ok(&[
            "exec",
            name,
            "--",
            "sh",
            "-c",
            "cat /proc/[0-9]*/stat 2>/dev/null | grep -c ') Z ' || true",
        ])
        .trim()
        .to_owned()
    };
    let pid1 = c.ok(&["exec", "plain", "--", "cat", "/proc/1/cmdline"]);
    assert_eq!(pid1, "sleep\u{0}600\u{0}", "the command is PID 1");
    assert_eq!(
        zombies_after_orphan("plain"),
        "1",
        "nothing reaps on a node"
    );
    let pid1 = c.ok(&["exec", "shared", "--", "cat", "/proc/1/cmdline"]);
    assert!(
        !pid1.starts_with("sleep"),
        "a reaping PID 1, not the command: {pid1:?}"
    );
    assert_eq!(
        zombies_after_orphan("shared"),
        "0",
        "the shared PID 1 reaps"
    );
    c.sim.shutdown().await;
}
