//! Volumes: the workspace volumes berth creates, lists and removes.

use std::collections::HashMap;

use berth_engine_core::{
    Error, LabelSelector, RemoveOutcome, Result, VolumeStatus, LABEL_MANAGED_BY, MANAGED_BY_VALUE,
};
use bollard::models::VolumeCreateRequest;
use bollard::query_parameters::{ListVolumesOptions, RemoveVolumeOptions};

use crate::container::label_filters;
use crate::errors::{self};
use crate::DockerEngine;

pub(crate) async fn list(
    engine: &DockerEngine,
    selector: &LabelSelector,
) -> Result<Vec<VolumeStatus>> {
    let list = |dangling: bool| {
        let mut filters = label_filters(selector);
        if dangling {
            // Dangling: referenced by no container, running or not.
            filters.insert("dangling".into(), vec!["true".into()]);
        }
        crate::retry::idempotent("list volumes", move || {
            engine.docker.list_volumes(Some(ListVolumesOptions {
                filters: Some(filters.clone()),
            }))
        })
    };
    let listed = list(false).await.map_err(engine.other("list volumes"))?;
    let in_use: Box<dyn Fn(&str) -> bool> = if engine.podman.is_some() {
        // Podman's `dangling` filter does not mean "mounted by no container": read the
        // containers' mounts instead.
        let mounted = mounted_volumes(engine).await?;
        Box::new(move |name| mounted.contains(name))
    } else {
        let unused: std::collections::HashSet<String> = list(true)
            .await
            .map_err(engine.other("list unused volumes"))?
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect();
        Box::new(move |name| !unused.contains(name))
    };
    let mut out: Vec<VolumeStatus> = listed
        .volumes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| {
            let labels: std::collections::BTreeMap<String, String> = v.labels.into_iter().collect();
            let in_use = in_use(&v.name);
            selector
                .matches(&labels)
                .then(|| VolumeStatus::new(v.name, labels, in_use))
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The volumes that some container, running or not, mounts.
async fn mounted_volumes(engine: &DockerEngine) -> Result<std::collections::HashSet<String>> {
    let containers = crate::retry::idempotent("list containers", || {
        crate::lenient::list_containers(
            &engine.docker,
            bollard::query_parameters::ListContainersOptions {
                all: true,
                ..Default::default()
            },
        )
    })
    .await
    .map_err(engine.other("list containers"))?;
    Ok(containers
        .into_iter()
        .flat_map(|c| c.mounts.unwrap_or_default())
        .filter_map(|m| m.name)
        .collect())
}

pub(crate) async fn remove(engine: &DockerEngine, name: &str) -> Result<RemoveOutcome> {
    // Only berth's own volumes: a volume without berth's label is refused and left alone.
    match crate::retry::idempotent("inspect volume", || engine.docker.inspect_volume(name)).await {
        Ok(volume) => {
            if volume.labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY_VALUE) {
                return Err(Error::not_a_berth_volume(name));
            }
        }
        Err(e) => match errors::status(&e) {
            Some((404, _)) => return Ok(RemoveOutcome::AlreadyGone),
            _ => return Err(errors::other(&engine.address, "inspect volume", e)),
        },
    }
    match engine
        .docker
        .remove_volume(name, None::<RemoveVolumeOptions>)
        .await
    {
        Ok(()) => Ok(RemoveOutcome::Removed),
        Err(e) => match errors::status(&e) {
            Some((404, _)) => Ok(RemoveOutcome::AlreadyGone),
            Some((409, msg)) => Err(Error::Conflict {
                what: "volume",
                name: name.to_owned(),
                reason: msg.to_owned(),
            }),
            _ => Err(errors::other(&engine.address, "remove volume", e)),
        },
    }
}

impl DockerEngine {
    pub(crate) async fn ensure_volume(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<()> {
        // Creating an existing volume returns it unchanged, so this is one call either way.
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.to_owned()),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(self.other("create volume"))
    }
}
