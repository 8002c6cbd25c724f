//! A real cluster for the opt-in end-to-end run (`BERTH_E2E_K3S=1`): k3s in a container,
//! started with testcontainers, with berth's test image loaded into its containerd, and a
//! kubeconfig for it on the host. [`K3sCluster::remove`] (or dropping it) removes the
//! container.
//!
//! The test image reaches the node without a registry: `docker save` of it is copied into
//! k3s' air-gap image directory (`/var/lib/rancher/k3s/agent/images/`), which k3s imports into
//! its containerd (`k8s.io` namespace) when it starts. A host directory is bind-mounted into
//! the container at the same path, so a `hostPath` volume under it is the same directory on
//! the host and on the node (the host-path workspace case runs with `TMPDIR` there).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_engine_core::ImageRef;
use futures_util::TryStreamExt;
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::ListParams;
use kube::Api;
use testcontainers::bollard::Docker;
use testcontainers::core::{ExecCommand, IntoContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// The k3s image run unless `BERTH_E2E_K3S_IMAGE` names another (Kubernetes 1.33, the version
/// the simulator speaks).
pub const DEFAULT_IMAGE: &str = "rancher/k3s:v1.33.1-k3s1";

/// The label on the k3s container, valued with one run's id.
const RUN_LABEL: &str = "berth.test.k3s";

/// Where k3s imports image archives from when it starts.
const AIRGAP_DIR: &str = "/var/lib/rancher/k3s/agent/images";

/// How long k3s gets to come up (its API, a ready node, the `default` service account, the
/// test image imported): a minute is usual on two cores, the rest is slack.
const READY_WITHIN: Duration = Duration::from_secs(240);

/// Writes `line` to stderr past the test harness' capture, so that a passing test still shows
/// why it did nothing.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The k3s image to run, or why the k3s run does not happen here: it is opt-in
/// (`BERTH_E2E_K3S=1`), and needs the image present locally (nothing is pulled: CI has no
/// registry).
pub async fn image_to_run() -> Result<String, String> {
    match std::env::var("BERTH_E2E_K3S") {
        Ok(v) if !v.is_empty() && v != "0" => {}
        _ => {
            return Err(format!(
                "the k3s run is opt-in: set BERTH_E2E_K3S=1 (with {DEFAULT_IMAGE}, or \
                 BERTH_E2E_K3S_IMAGE, pulled) to run this suite on k3s in a container"
            ))
        }
    }
    let image = std::env::var("BERTH_E2E_K3S_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.into());
    let docker = Docker::connect_with_defaults()
        .map_err(|e| format!("cannot reach Docker to look for {image}: {e}"))?;
    match docker.inspect_image(&image).await {
        Ok(_) => Ok(image),
        Err(testcontainers::bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }) => Err(format!(
            "{image} is not present locally and this run pulls nothing; `docker pull {image}` \
             where a registry is reachable, then run again"
        )),
        Err(e) => Err(format!("cannot look for {image} in Docker: {e}")),
    }
}

/// A running k3s container and what the tests need of it.
pub struct K3sCluster {
    container: ContainerAsync<GenericImage>,
    /// A kubeconfig for the cluster, as seen from this host.
    pub kubeconfig: PathBuf,
    /// A directory that is the same path on the host and on the node.
    pub shared_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl K3sCluster {
    /// Starts `image` (`rancher/k3s:TAG`) with `test_image` loaded, and waits until pods can
    /// run on it.
    ///
    /// # Panics
    /// When any step fails, naming it.
    pub async fn start(image: &str, test_image: &ImageRef) -> Self {
        let (name, tag) = image
            .rsplit_once(':')
            .filter(|(_, tag)| !tag.contains('/'))
            .unwrap_or((image, "latest"));
        let docker = Docker::connect_with_defaults().expect("connect to Docker");
        let archive: Vec<u8> = docker
            .export_image(test_image.as_str())
            .map_ok(|chunk| chunk.to_vec())
            .try_concat()
            .await
            .unwrap_or_else(|e| panic!("docker save {test_image}: {e}"));
        let dir = tempfile::tempdir().expect("tempdir");
        let shared_dir = dir.path().join("shared");
        std::fs::create_dir(&shared_dir).expect("shared dir");
        let shared = shared_dir.to_str().expect("a UTF-8 temporary path");
        let started = Instant::now();
        let run = uuid::Uuid::new_v4().simple().to_string();
        let container = GenericImage::new(name, tag)
            .with_wait_for(WaitFor::message_on_stderr(
                "Node controller sync successful",
            ))
            .with_exposed_port(6443.tcp())
            .with_cmd([
                "server",
                // Overlay on overlay fails in many Docker setups; testcontainers-modules' K3s
                // uses `native` for the same reason.
                "--snapshotter=native",
                "--disable=traefik",
                "--disable=metrics-server",
                "--disable=servicelb",
            ])
            .with_privileged(true)
            .with_userns_mode("host")
            .with_mount(Mount::bind_mount(shared, shared))
            .with_copy_to(format!("{AIRGAP_DIR}/berth-test.tar"), archive)
            .with_label(RUN_LABEL, &run)
            .with_startup_timeout(READY_WITHIN)
            .start()
            .await;
        let container = match container {
            Ok(container) => container,
            Err(e) => {
                // testcontainers leaves a container it created but could not start.
                remove_labelled(&docker, &run).await;
                panic!("start {image}: {e}");
            }
        };
        let port = container
            .get_host_port_ipv4(6443.tcp())
            .await
            .expect("the API server's port");
        let config = exec(&container, &["cat", "/etc/rancher/k3s/k3s.yaml"]).await;
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            config.replace(
                "https://127.0.0.1:6443",
                &format!("https://127.0.0.1:{port}"),
            ),
        )
        .expect("write the kubeconfig");
        let cluster = Self {
            container,
            kubeconfig,
            shared_dir,
            _dir: dir,
        };
        cluster.until_ready(test_image, started).await;
        say(&format!(
            "k3s ({image}) ready in {:?}; kubeconfig {}",
            started.elapsed(),
            cluster.kubeconfig.display()
        ));
        cluster
    }

    /// Waits until a node is Ready, the `default` namespace's service account exists (pods
    /// are refused before), and containerd holds the test image.
    async fn until_ready(&self, test_image: &ImageRef, started: Instant) {
        let file = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .expect("kubeconfig");
        let client = kube::Client::try_from(config).expect("client");
        let nodes: Api<Node> = Api::all(client.clone());
        let accounts: Api<ServiceAccount> = Api::namespaced(client, "default");
        let mut last = String::from("nothing asked yet");
        while started.elapsed() < READY_WITHIN {
            let ready = nodes.list(&ListParams::default()).await.map(|list| {
                list.items.iter().any(|n| {
                    n.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
            });
            let account = accounts.get_opt("default").await;
            let images = exec(
                &self.container,
                &["k3s", "ctr", "-n", "k8s.io", "images", "ls", "-q"],
            )
            .await;
            match (ready, account) {
                (Ok(true), Ok(Some(_))) if images.contains(test_image.as_str()) => return,
                (ready, account) => {
                    last = format!(
                        "node ready: {ready:?}; default service account: {}; test image imported: {}",
                        account.map_or_else(|e| e.to_string(), |a| a.is_some().to_string()),
                        images.contains(test_image.as_str())
                    );
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        panic!("k3s was not ready within {READY_WITHIN:?}: {last}");
    }

    /// Removes the container (dropping the cluster does too, in the background).
    pub async fn remove(self) {
        let id = self.container.id().to_owned();
        if let Err(e) = self.container.rm().await {
            say(&format!("could not remove the k3s container {id}: {e}"));
        }
    }
}

/// Removes the containers of one run (label [`RUN_LABEL`] = `run`), whatever their state.
async fn remove_labelled(docker: &Docker, run: &str) {
    use testcontainers::bollard::query_parameters::{
        ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    };
    let filters = std::collections::HashMap::from([("label", vec![format!("{RUN_LABEL}={run}")])]);
    let listed = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap_or_default();
    for id in listed.into_iter().filter_map(|c| c.id) {
        if let Err(e) = docker
            .remove_container(
                &id,
                Some(RemoveContainerOptionsBuilder::new().force(true).build()),
            )
            .await
        {
            say(&format!("could not remove the k3s container {id}: {e}"));
        }
    }
}

/// Runs `cmd` in `container` and returns its stdout.
async fn exec(container: &ContainerAsync<GenericImage>, cmd: &[&str]) -> String {
    let mut result = container
        .exec(ExecCommand::new(cmd.iter().copied()))
        .await
        .unwrap_or_else(|e| panic!("exec {cmd:?} in k3s: {e}"));
    let out = result
        .stdout_to_vec()
        .await
        .unwrap_or_else(|e| panic!("read the output of {cmd:?}: {e}"));
    String::from_utf8_lossy(&out).into_owned()
}
