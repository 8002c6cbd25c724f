//! Test harness of the remote-daemon tests: an sshd on 127.0.0.1 with generated keys, and
//! containers made with the plain Docker API for the foreign-object cases.
#![allow(dead_code)]

mod sshd;
pub mod tls;

#[allow(unused_imports)] // each test file uses its own subset
pub use sshd::{Sshd, TempDir};

use berth_engine_core::testkit::ForeignObjects;
use berth_engine_core::ImageRef;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
use bollard::Docker;

/// Stops the environment when the test ends, on a panic too, so a failing test leaves
/// nothing behind. A fresh engine on its own runtime does it (the test's runtime may be
/// unwinding); stopping an environment already stopped is fine.
pub struct StopOnDrop(pub berth_engine_core::EnvironmentId);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let env = self.0.clone();
        let stopped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                use berth_engine_core::ContainerEngine;
                let engine = berth_engine_docker::DockerEngine::connect(
                    &berth_engine_docker::DockerConfig::default(),
                )
                .await
                .map_err(|e| e.to_string())?;
                engine.stop(&env).await.map_err(|e| e.to_string())
            })
        })
        .join();
        if !matches!(stopped, Ok(Ok(_))) {
            eprintln!("cleanup: stopping {} failed: {stopped:?}", self.0);
        }
    }
}

/// Containers started with the plain Docker API, as `docker run` would: no berth labels.
pub struct PlainContainers(pub Docker);

#[async_trait::async_trait]
impl ForeignObjects for PlainContainers {
    async fn create(&self, image: &ImageRef) -> Vec<String> {
        let name = format!(
            "foreign-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let created = self
            .0
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                ContainerCreateBody {
                    image: Some(image.to_string()),
                    cmd: Some(vec!["sleep".into(), "600".into()]),
                    ..Default::default()
                },
            )
            .await
            .expect("create a foreign container");
        if let Err(e) = self.0.start_container(&name, None).await {
            self.remove(&name).await;
            panic!("start the foreign container: {e}");
        }
        let prefix = created.id[..12].to_owned();
        vec![name, created.id, prefix]
    }

    async fn is_alive(&self, name: &str) -> bool {
        self.0
            .inspect_container(name, None)
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.running)
            .unwrap_or(false)
    }

    async fn remove(&self, name: &str) {
        let _ = self
            .0
            .remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }

    async fn create_volume(&self) -> String {
        let name = format!(
            "foreign-vol-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        self.0
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some(name.clone()),
                ..Default::default()
            })
            .await
            .expect("create a foreign volume");
        name
    }

    async fn volume_exists(&self, name: &str) -> bool {
        self.0.inspect_volume(name).await.is_ok()
    }

    async fn remove_volume(&self, name: &str) {
        let _ = self
            .0
            .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
            .await;
    }
}
