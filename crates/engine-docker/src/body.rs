//! The body a container is created from, built from an environment's spec alone: a pure
//! function, tested without a daemon.

use std::collections::HashMap;

use berth_engine_core::{
    EnvironmentSpec, Error, Resources, Result, SecurityProfile, Workspace, HARDENED_CAPABILITIES,
};
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, MountVolumeOptions};
use bollard::ClientVersion;

use crate::errors::BACKEND;
use crate::DEFAULT_PIDS_LIMIT;

/// The container of `spec`, labelled `labels`, for a daemon at `address` speaking `api`
/// (volume sub-paths need API 1.45).
///
/// # Errors
/// [`Error::Unsupported`] for a volume sub-path on an older daemon.
pub(crate) fn container_body(
    spec: &EnvironmentSpec,
    labels: &HashMap<String, String>,
    address: &str,
    api: &ClientVersion,
) -> Result<ContainerCreateBody> {
    let mount = match &spec.workspace {
        Workspace::HostPath { path } => Some(Mount {
            target: Some(spec.mount_path.clone()),
            source: Some(path.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            ..Default::default()
        }),
        Workspace::Volume { name, sub_path } => {
            if sub_path.is_some() && (api.major_version, api.minor_version) < (1, 45) {
                return Err(Error::Unsupported {
                    backend: BACKEND,
                    operation: "workspace.sub_path",
                    reason: format!(
                        "volume sub-paths need Docker Engine 26 (API 1.45) or newer, and the daemon at {} speaks API {}; mount the whole volume or upgrade the daemon",
                        address, api
                    ),
                });
            }
            Some(Mount {
                target: Some(spec.mount_path.clone()),
                source: Some(name.clone()),
                typ: Some(MountType::VOLUME),
                volume_options: Some(MountVolumeOptions {
                    subpath: sub_path.clone(),
                    labels: Some(labels.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            })
        }
        Workspace::Ephemeral => Some(Mount {
            target: Some(spec.mount_path.clone()),
            typ: Some(MountType::VOLUME),
            volume_options: Some(MountVolumeOptions {
                labels: Some(labels.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        _ => None,
    };
    let Resources {
        cpu_millis,
        memory_bytes,
        pids,
        ..
    } = spec.resources.clone();
    let (cap_drop, cap_add) = match spec.security {
        SecurityProfile::Restricted => (vec!["ALL".to_owned()], vec![]),
        _ => (
            vec!["ALL".to_owned()],
            HARDENED_CAPABILITIES
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
        ),
    };
    let host_config = HostConfig {
        init: Some(true),
        privileged: Some(false),
        security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
        cap_drop: Some(cap_drop),
        cap_add: Some(cap_add),
        pids_limit: Some(i64::try_from(pids.unwrap_or(DEFAULT_PIDS_LIMIT)).unwrap_or(i64::MAX)),
        memory: memory_bytes.map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
        // No swap on top, as on Kubernetes: the limit is where the out-of-memory killer
        // acts, not where the environment starts swapping.
        memory_swap: memory_bytes.map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
        nano_cpus: cpu_millis
            .map(|c| i64::try_from(c.saturating_mul(1_000_000)).unwrap_or(i64::MAX)),
        network_mode: Some(
            if spec.network.is_connected() {
                crate::egress::BRIDGE
            } else {
                "none"
            }
            .to_owned(),
        ),
        mounts: mount.map(|m| vec![m]),
        ..Default::default()
    };
    let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok(ContainerCreateBody {
        image: Some(spec.image.to_string()),
        entrypoint: Some(vec!["sleep".to_owned()]),
        cmd: Some(vec![spec.max_lifetime.as_secs().to_string()]),
        env: Some(env),
        labels: Some(labels.clone()),
        user: spec.user.clone(),
        working_dir: spec.workdir.clone(),
        // SIGTERM ends `sleep` at once under Docker's init; no grace period is needed.
        stop_timeout: Some(1),
        host_config: Some(host_config),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use berth_engine_core::{ErrorKind, ImageRef, SessionId};

    use super::*;

    const NEW: ClientVersion = ClientVersion {
        major_version: 1,
        minor_version: 45,
    };
    const OLD: ClientVersion = ClientVersion {
        major_version: 1,
        minor_version: 41,
    };

    fn spec() -> EnvironmentSpec {
        EnvironmentSpec::new(
            ImageRef::new("busybox:1.36").unwrap(),
            SessionId::new("s1").unwrap(),
        )
    }

    fn body(spec: &EnvironmentSpec, api: &ClientVersion) -> Result<ContainerCreateBody> {
        let labels = HashMap::from([("berth.dev/session".to_owned(), "s1".to_owned())]);
        container_body(spec, &labels, "unix:///var/run/docker.sock", api)
    }

    #[test]
    fn the_hardened_default_keeps_a_small_capability_set_under_init() {
        let mut spec = spec()
            .with_env("A", "1")
            .with_max_lifetime(Duration::from_secs(600))
            .with_network(false);
        spec.user = Some("1000".into());
        spec.workdir = Some("/workspace".into());
        let b = body(&spec, &NEW).unwrap();
        assert_eq!(b.image.as_deref(), Some("busybox:1.36"));
        assert_eq!(b.entrypoint, Some(vec!["sleep".to_owned()]));
        assert_eq!(b.cmd, Some(vec!["600".to_owned()]));
        assert_eq!(b.env, Some(vec!["A=1".to_owned()]));
        assert_eq!(b.user.as_deref(), Some("1000"));
        assert_eq!(b.working_dir.as_deref(), Some("/workspace"));
        assert_eq!(
            b.labels
                .as_ref()
                .and_then(|l| l.get("berth.dev/session"))
                .map(String::as_str),
            Some("s1")
        );
        let host = b.host_config.unwrap();
        assert_eq!(host.init, Some(true), "Docker's init reaps zombies");
        assert_eq!(host.privileged, Some(false));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges:true".to_owned()])
        );
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        let added: Vec<&str> = host
            .cap_add
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(added, HARDENED_CAPABILITIES);
        assert_eq!(host.pids_limit, Some(DEFAULT_PIDS_LIMIT as i64));
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.memory, None, "no limit unless asked");
        assert_eq!(host.mounts, None, "no workspace, no mount");
    }

    #[test]
    fn restricted_drops_every_capability_and_limits_apply_without_swap() {
        let mut resources = Resources::default();
        resources.cpu_millis = Some(1500);
        resources.memory_bytes = Some(64 << 20);
        resources.pids = Some(100);
        let mut spec = spec().with_resources(resources);
        spec.security = SecurityProfile::Restricted;
        let host = body(&spec, &NEW).unwrap().host_config.unwrap();
        assert_eq!(host.cap_add, Some(vec![]));
        assert_eq!(host.nano_cpus, Some(1_500_000_000));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.memory_swap, Some(64 << 20), "no swap on top");
        assert_eq!(host.pids_limit, Some(100));
        assert_eq!(host.network_mode.as_deref(), Some("bridge"));
    }

    #[test]
    fn workspaces_become_mounts_and_sub_paths_need_api_1_45() {
        let host_path = spec().with_workspace(Workspace::HostPath {
            path: "/srv/ws".into(),
        });
        let mount = &body(&host_path, &OLD)
            .unwrap()
            .host_config
            .unwrap()
            .mounts
            .unwrap()[0];
        assert_eq!(mount.typ, Some(MountType::BIND));
        assert_eq!(mount.source.as_deref(), Some("/srv/ws"));
        assert_eq!(mount.target.as_deref(), Some("/workspace"));

        let sub = spec().with_workspace(Workspace::Volume {
            name: "ws".into(),
            sub_path: Some("agent-1".into()),
        });
        let mount = &body(&sub, &NEW)
            .unwrap()
            .host_config
            .unwrap()
            .mounts
            .unwrap()[0];
        assert_eq!(mount.typ, Some(MountType::VOLUME));
        assert_eq!(mount.source.as_deref(), Some("ws"));
        assert_eq!(
            mount
                .volume_options
                .as_ref()
                .and_then(|o| o.subpath.as_deref()),
            Some("agent-1")
        );
        let err = body(&sub, &OLD).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        let text = err.to_string();
        assert!(
            text.contains("API 1.41") && text.contains("unix:///var/run/docker.sock"),
            "{text}"
        );
    }
}
