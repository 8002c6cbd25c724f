//! A real server on 127.0.0.1:0 running jobs on the real engine, and a real HTTP client.
#![allow(dead_code)] // each test file uses its own subset

use std::sync::Arc;
use std::time::Duration;

use berth_engine_core::testkit::{ensure_test_image, TEST_IMAGE};
use berth_engine_core::{ContainerEngine, LabelSelector};
use berth_runner::config::BerthConfig;
use berth_server::{ApiKeys, Server, ServerError, ShutdownHandle, LABEL_SERVER};
use serde_json::Value;

/// A client builder, with ring as the process's TLS provider (reqwest is built without one,
/// as the rest of berth uses ring).
pub fn client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// A plain client.
pub fn client() -> reqwest::Client {
    client_builder().build().expect("reqwest client")
}

/// The key every test server accepts.
pub const KEY: &str = "test-key-0123456789";

/// A running server.
pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub engine: Arc<dyn ContainerEngine>,
    pub instance: String,
    pub handle: ShutdownHandle,
    pub task: Option<tokio::task::JoinHandle<Result<(), ServerError>>>,
    pub dir: tempfile::TempDir,
}

/// The config: the test image, then `extra` YAML (sections other than `runner:` unless
/// `runner` is given).
pub fn config(yaml: &str) -> BerthConfig {
    BerthConfig::from_yaml_str(yaml).unwrap_or_else(|e| panic!("config {yaml}: {e}"))
}

/// `runner: {image: TEST_IMAGE}` plus a `server:` section of `server`.
pub fn docker_config(server: &str) -> BerthConfig {
    config(&format!(
        "runner: {{image: '{TEST_IMAGE}'}}\nserver: {{{server}}}\n"
    ))
}

impl TestServer {
    /// Starts a server of `config` on the engine it names, with the key [`KEY`].
    pub async fn start(config: BerthConfig) -> Self {
        Self::start_with(config, client(), "http").await
    }

    /// As `start`, with this client and scheme.
    pub async fn start_with(config: BerthConfig, client: reqwest::Client, scheme: &str) -> Self {
        let engine = berth_runner::backend::connect(&config)
            .await
            .unwrap_or_else(|e| panic!("these tests need a running engine: {e}"));
        ensure_test_image(engine.as_ref())
            .await
            .expect("test image");
        Self::start_on(config, engine, client, scheme).await
    }

    /// As `start`, on `engine`.
    pub async fn start_on(
        config: BerthConfig,
        engine: Arc<dyn ContainerEngine>,
        client: reqwest::Client,
        scheme: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys_file = dir.path().join("keys");
        std::fs::write(&keys_file, format!("{KEY}\n")).expect("keys");
        let keys = ApiKeys::load(Some(keys_file), None).expect("keys");
        let server = Server::with_keys(config, engine.clone(), keys);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let handle = server.shutdown_handle();
        let instance = server.instance().to_string();
        let task = tokio::spawn(server.serve(listener, std::future::pending()));
        Self {
            base: format!("{scheme}://localhost:{port}"),
            client,
            engine,
            instance,
            handle,
            task: Some(task),
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POST `body` as JSON with the key.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("X-API-Key", KEY)
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    /// GET with the key.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header("X-API-Key", KEY)
            .send()
            .await
            .expect("GET")
    }

    /// The JSON of a GET with the key.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.expect("JSON")
    }

    /// Polls the job until `done` says so (at most 60 s).
    pub async fn wait_job(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..600 {
            let job = self.get_json(&format!("/v1/jobs/{id}")).await;
            if done(&job) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("job {id} never got there");
    }

    /// The environments this server started that still exist.
    pub async fn leftovers(&self) -> usize {
        let selector = LabelSelector::all().with(LABEL_SERVER, self.instance.clone());
        self.engine.list(&selector).await.expect("list").len()
    }

    /// Drains, waits for `serve` to return, and checks nothing is left.
    pub async fn stop(mut self) {
        self.handle.begin_drain();
        let task = self.task.take().expect("task");
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("serve returned")
            .expect("joined")
            .expect("served");
        assert_eq!(self.leftovers().await, 0, "environments left behind");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A failed test still cancels its jobs (and so removes their environments).
        self.handle.cancel_now();
        if let Some(task) = self.task.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let _ = tokio::task::block_in_place(|| {
                    rt.block_on(tokio::time::timeout(Duration::from_secs(60), task))
                });
            }
        }
    }
}
