//! The simulator's own Docker objects: reaching the daemon, the label naming the process
//! that made an object, and removing objects (an instance's, a pod's, or those of simulators
//! whose process is gone).

use std::collections::{HashMap, HashSet};

use bollard::query_parameters::{
    ListContainersOptions, ListVolumesOptions, RemoveContainerOptions, RemoveVolumeOptions,
};
use bollard::Docker;

use crate::{SimError, INSTANCE_LABEL, PID_LABEL};

/// The daemon's address: `DOCKER_HOST`, else the default socket.
fn docker_address() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned())
}

/// Connects to the daemon and negotiates the API version.
pub(crate) async fn connect_docker() -> Result<Docker, SimError> {
    let address = docker_address();
    let docker = Docker::connect_with_host(&address)
        .map_err(|e| SimError(format!("cannot reach Docker at {address}: {e}")))?;
    docker
        .negotiate_version()
        .await
        .map_err(|e| SimError(format!("cannot reach Docker at {address}: {e}")))
}

/// Whether process `pid` exists and is not a zombie.
fn process_alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest.trim_start());
        !state.starts_with('Z') && !state.starts_with('X')
    })
}

/// `<pid>@<pid namespace>`: which process ran the simulator, in which pid namespace.
pub(crate) fn pid_label() -> String {
    format!("{}@{}", std::process::id(), pid_namespace())
}

/// This process's pid namespace, as a label value.
fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "")
}

/// Removes the containers and volumes of simulators whose process is gone: only those started
/// in this pid namespace, where `/proc` can tell.
pub(crate) async fn remove_orphans(docker: &Docker) {
    let filter = HashMap::from([("label".to_owned(), vec![PID_LABEL.to_owned()])]);
    let alive = |labels: Option<&HashMap<String, String>>| {
        labels.and_then(|l| l.get(PID_LABEL)).is_none_or(|label| {
            let ns = pid_namespace();
            match label.split_once('@') {
                Some((pid, their_ns)) if !ns.is_empty() && their_ns == ns => process_alive(pid),
                // Another pid namespace (or an unknown one): not ours to judge.
                _ => true,
            }
        })
    };
    let mut dead = HashSet::new();
    if let Ok(containers) = list_all_containers(docker, &filter).await {
        for c in containers {
            if !alive(c.labels.as_ref()) {
                if let Some(id) = c.labels.as_ref().and_then(|l| l.get(INSTANCE_LABEL)) {
                    dead.insert(id.clone());
                }
            }
        }
    }
    if let Ok(volumes) = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(filter),
        }))
        .await
    {
        for v in volumes.volumes.unwrap_or_default() {
            if !alive(Some(&v.labels)) {
                if let Some(id) = v.labels.get(INSTANCE_LABEL) {
                    dead.insert(id.clone());
                }
            }
        }
    }
    for id in dead {
        tracing::info!(instance = %id, "removing the Docker objects of a simulator whose process is gone");
        remove_instance(docker, &id).await;
    }
}

/// Removes every container and volume labelled with instance `id`.
pub(crate) async fn remove_instance(docker: &Docker, id: &str) {
    remove_labelled(docker, vec![format!("{INSTANCE_LABEL}={id}")]).await;
}

/// Removes every container (with its anonymous volumes) and volume that carries all of
/// `labels` (`key=value` each).
pub(crate) async fn remove_labelled(docker: &Docker, labels: Vec<String>) {
    let filter = HashMap::from([("label".to_owned(), labels)]);
    if let Ok(containers) = list_all_containers(docker, &filter).await {
        for c in containers {
            if let Some(cid) = c.id {
                let _ = docker
                    .remove_container(
                        &cid,
                        Some(RemoveContainerOptions {
                            force: true,
                            v: true,
                            ..Default::default()
                        }),
                    )
                    .await;
            }
        }
    }
    if let Ok(volumes) = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(filter),
        }))
        .await
    {
        for v in volumes.volumes.unwrap_or_default() {
            let _ = docker
                .remove_volume(&v.name, Some(RemoveVolumeOptions { force: true }))
                .await;
        }
    }
}

/// The containers, running or not, that `filter` selects.
async fn list_all_containers(
    docker: &Docker,
    filter: &HashMap<String, Vec<String>>,
) -> Result<Vec<bollard::models::ContainerSummary>, bollard::errors::Error> {
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filter.clone()),
            ..Default::default()
        }))
        .await
}
