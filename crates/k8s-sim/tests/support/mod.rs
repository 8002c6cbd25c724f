//! Setup shared by the simulator's test binaries: the test image, a started simulator with a
//! kubeconfig written for it, and the Docker objects a simulator made.
//!
//! Each test binary uses a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use berth_engine_core::testkit::ensure_test_image;
use berth_engine_docker::{DockerConfig, DockerEngine};
use berth_k8s_sim::Sim;
use bollard::models::ContainerSummary;
use bollard::query_parameters::{ListContainersOptions, ListVolumesOptions};

/// Builds the test image unless Docker has it; these tests need a running daemon.
pub async fn ensure_image() {
    let engine = DockerEngine::connect(&DockerConfig::default())
        .await
        .unwrap_or_else(|e| panic!("these tests need a running Docker daemon: {e}"));
    ensure_test_image(&engine)
        .await
        .unwrap_or_else(|e| panic!("building the test image failed: {e}"));
}

/// A started simulator and a directory holding its kubeconfig (also a `HOME` for clients).
pub struct Started {
    /// The simulator.
    pub sim: Sim,
    /// Holds `kubeconfig`.
    pub dir: tempfile::TempDir,
}

impl Started {
    /// The path of the simulator's kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }
}

/// A kube-rs client through the kubeconfig at `path`.
pub async fn kube_client(path: &std::path::Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("parse kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(config).expect("client")
}

/// Ensures the test image, starts a simulator and writes its kubeconfig.
pub async fn start_sim() -> Started {
    ensure_image().await;
    let sim = Sim::start().await.expect("the simulator starts");
    let dir = tempfile::tempdir().expect("tempdir");
    sim.write_kubeconfig(&dir.path().join("kubeconfig"))
        .expect("kubeconfig");
    Started { sim, dir }
}

/// A Docker client of its own (the simulator's runs on the simulator's runtime).
pub async fn docker() -> bollard::Docker {
    bollard::Docker::connect_with_local_defaults()
        .expect("docker")
        .negotiate_version()
        .await
        .expect("docker version")
}

/// A Docker `label` filter: objects carrying every one of `labels` (`key=value`).
fn label_filter(labels: &[String]) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), labels.to_vec())])
}

/// The containers, running or not, that carry every one of `labels`.
pub async fn containers_labelled(
    docker: &bollard::Docker,
    labels: &[String],
) -> Vec<ContainerSummary> {
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(label_filter(labels)),
            ..Default::default()
        }))
        .await
        .expect("list containers")
}

/// The names of the volumes that carry every one of `labels`.
pub async fn volumes_labelled(docker: &bollard::Docker, labels: &[String]) -> Vec<String> {
    docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(label_filter(labels)),
        }))
        .await
        .expect("list volumes")
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .collect()
}

/// The label selecting the Docker objects of simulator instance `id`.
pub fn instance_label(id: &str) -> String {
    format!("{}={id}", berth_k8s_sim::INSTANCE_LABEL)
}
