//! Podman behind the Docker API: how berth recognises it and what it does differently.
//!
//! Podman's Docker-compatible service answers most calls as Docker does. Where it does not,
//! the backend adapts so that callers see Docker's semantics:
//! - a copy into a missing directory succeeds on Podman (it creates the directory); berth
//!   checks the destination first so it is `NotFound` naming the path, as on Docker;
//! - a volume's `dangling` filter does not tell whether a container mounts it, so `in_use`
//!   comes from the containers' mounts;
//! - an out-of-memory kill of an exec's process raises no `oom` event, so it is read from the
//!   container's cgroup counter (`oom_kill`) after a command ends with 137;
//! - container states of Podman's own (`stopped`) are read leniently (see `lenient.rs`).

use std::collections::HashMap;
use std::sync::Mutex;

use berth_engine_core::{EnvironmentId, ExecRequest};
use bollard::models::SystemVersion;
use bollard::Docker;

/// Whether a daemon's `/version` answer is Podman's: its components include "Podman Engine"
/// (Docker's are "Engine", "containerd", "runc"); an older Podman may say so only in
/// `Platform.Name`.
pub(crate) fn is_podman(version: &SystemVersion) -> bool {
    let named = |name: &str| name.to_ascii_lowercase().contains("podman");
    version.components.iter().flatten().any(|c| named(&c.name))
        || version.platform.as_ref().is_some_and(|p| named(&p.name))
}

/// What the backend keeps about a Podman daemon.
#[derive(Debug, Default)]
pub(crate) struct Podman {
    /// Per environment, the cgroup's `oom_kill` count last seen, so that only a kill since
    /// then counts as this command's.
    oom_kills: Mutex<HashMap<String, u64>>,
}

/// Where a container sees its own cgroup's out-of-memory kill count: cgroup v2, then v1.
const OOM_COUNTERS: [&str; 2] = [
    "/sys/fs/cgroup/memory.events",
    "/sys/fs/cgroup/memory/memory.oom_control",
];

/// The `oom_kill N` count in a cgroup file (`memory.events` or v1's `memory.oom_control`).
fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|line| line.strip_prefix("oom_kill "))
        .find_map(|n| n.trim().parse().ok())
}

impl Podman {
    /// Whether the out-of-memory killer acted in `env` since the last time this was asked
    /// (or since it started): read inside the container, as Podman emits no event for an
    /// exec's process. `false` when the counter cannot be read (an image without `cat`).
    pub(crate) async fn oom_killed_since_last(
        &self,
        docker: &Docker,
        address: &str,
        env: &EnvironmentId,
    ) -> bool {
        let mut argv = vec!["cat".to_owned()];
        argv.extend(OOM_COUNTERS.map(str::to_owned));
        let req = ExecRequest::new(argv).with_output_limit(4096);
        let limit = req.output_limit;
        let Ok(process) = crate::exec::exec_streaming(docker, address, env, req, None).await else {
            return false;
        };
        let Ok(out) = process.collect(limit).await else {
            return false;
        };
        let Some(count) = parse_oom_kills(&out.stdout_lossy()) else {
            return false;
        };
        let previous = self
            .oom_kills
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(env.to_string(), count)
            .unwrap_or(0);
        count > previous
    }

    /// Forgets what was recorded for `env` (it was removed).
    pub(crate) fn forget(&self, env: &str) {
        self.oom_kills
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(env);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{SystemVersionComponents, SystemVersionPlatform};

    #[test]
    fn podman_is_told_from_docker_by_its_version_answer() {
        let component = |name: &str| SystemVersionComponents {
            name: name.to_owned(),
            version: "1".to_owned(),
            details: None,
        };
        let podman = SystemVersion {
            platform: Some(SystemVersionPlatform {
                name: "linux/amd64/debian-12".to_owned(),
            }),
            components: Some(vec![component("Podman Engine"), component("Conmon")]),
            ..Default::default()
        };
        assert!(is_podman(&podman));
        let docker = SystemVersion {
            platform: Some(SystemVersionPlatform {
                name: "Docker Engine - Community".to_owned(),
            }),
            components: Some(vec![component("Engine"), component("containerd")]),
            ..Default::default()
        };
        assert!(!is_podman(&docker));
        assert!(!is_podman(&SystemVersion::default()));
    }

    #[test]
    fn oom_kill_counts_are_read_from_either_cgroup_version() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(v2), Some(2));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n";
        assert_eq!(parse_oom_kills(v1), Some(1));
        assert_eq!(parse_oom_kills("cat: can't open\n"), None);
    }
}
