//! HTTPS with a certificate made in the test, and the same API with `runner.backend:
//! kubernetes` on the simulator.

use berth_engine_core::testkit::{ensure_test_image, TEST_IMAGE};
use berth_engine_docker::{DockerConfig, DockerEngine};
use berth_k8s_sim::Sim;
use serde_json::{json, Value};

mod support;

use support::{config, TestServer, KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_rustls() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let cfg = config(&format!(
        "runner: {{image: '{TEST_IMAGE}'}}\nserver: {{tls: {{cert: '{}', key: '{}'}}}}\n",
        cert.display(),
        key.display()
    ));
    let client = support::client_builder()
        .add_root_certificate(reqwest::Certificate::from_pem(made.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let s = TestServer::start_with(cfg, client, "https").await;
    let health = s.client.get(s.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let answer: Value = s
        .post("/jobs/execute", &json!({"script": "echo over tls"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["stdout"], "over tls\n", "{answer}");

    // Plain HTTP to the HTTPS port gets no answer, and a client not trusting the
    // certificate is refused.
    let plain = support::client()
        .get(s.url("/health").replace("https://", "http://"))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    let untrusting = support::client_builder()
        .tls_certs_only(Vec::<reqwest::Certificate>::new())
        .build()
        .unwrap();
    assert!(untrusting.get(s.url("/health")).send().await.is_err());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_on_kubernetes_through_the_same_api() {
    let docker = DockerEngine::connect(&DockerConfig::default())
        .await
        .unwrap_or_else(|e| panic!("these tests need a running Docker daemon: {e}"));
    ensure_test_image(&docker).await.expect("test image");
    let sim = Sim::start().await.expect("simulator");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let cfg = config(&format!(
        "runner: {{backend: kubernetes, image: '{TEST_IMAGE}'}}\nkubernetes: {{kubeconfig: '{}'}}\n",
        kubeconfig.display()
    ));
    let engine = berth_runner::backend::connect(&cfg).await.expect("engine");
    let s = TestServer::start_on(cfg, engine, support::client(), "http").await;
    let health: Value = s
        .client
        .get(s.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["backend"], "kubernetes", "{health}");
    assert_eq!(health["engine_reachable"], true);
    let answer = s
        .client
        .post(s.url("/jobs/execute"))
        .bearer_auth(KEY)
        .json(&json!({"script": "echo out; echo err >&2; exit 3", "job_id": "k8s-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["exit_code"], 3, "{answer}");
    assert_eq!(answer["stdout"], "out\n");
    assert_eq!(answer["stderr"], "err\n");
    assert_eq!(answer["job_id"], "k8s-1");
    s.stop().await;
    sim.shutdown().await;
}
