//! What a daemon says about its machine (`docker info`): the facts `berth builder ls` shows.

use berth_engine_core::Result;
use serde::Serialize;

use crate::{errors, retry, DockerEngine};

/// A daemon's machine, from its `info` endpoint.
///
/// ```no_run
/// use berth_engine_docker::{DockerConfig, DockerEngine};
///
/// # async fn example() -> berth_engine_core::Result<()> {
/// let engine = DockerEngine::connect(&DockerConfig::with_host("ssh://builder@build-1")).await?;
/// let info = engine.daemon_info().await?;
/// println!("{} {}/{} with {} CPUs", info.server_version, info.os, info.arch, info.cpus);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DaemonInfo {
    /// The daemon's version (`20.10.24`).
    pub server_version: String,
    /// Its operating system family, as a platform names it (`linux`, `windows`).
    pub os: String,
    /// Its architecture as a platform names it (`amd64`, `arm64`), translated from the
    /// kernel's (`x86_64`, `aarch64`).
    pub arch: String,
    /// The distribution the daemon runs on (`Debian GNU/Linux 12 (bookworm)`).
    pub operating_system: String,
    /// CPUs the daemon can use.
    pub cpus: u64,
    /// Memory of the machine in bytes.
    pub memory_bytes: u64,
    /// Free space for images and containers in bytes, when the storage driver reports it
    /// (devicemapper does; overlay2 and fuse-overlayfs do not): `None` then.
    pub free_disk_bytes: Option<u64>,
    /// The storage driver (`overlay2`).
    pub storage_driver: String,
}

impl DaemonInfo {
    /// The platform it builds for by default, `os/arch` (`linux/amd64`).
    #[must_use]
    pub fn platform(&self) -> String {
        format!("{}/{}", self.os, self.arch)
    }
}

/// The platform name of a kernel architecture, as `docker buildx` spells it.
fn platform_arch(machine: &str) -> String {
    match machine {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "armv7l" => "arm",
        "i386" | "i686" => "386",
        other => other,
    }
    .to_owned()
}

/// A devicemapper-style "Data Space Available: 12.3GB" in bytes.
fn free_disk(driver_status: &[Vec<String>]) -> Option<u64> {
    let value = driver_status
        .iter()
        .find(|kv| kv.first().map(String::as_str) == Some("Data Space Available"))?
        .get(1)?;
    let value = value.trim();
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some((number * scale) as u64)
}

impl DockerEngine {
    /// The daemon's machine: version, OS and architecture, CPUs, memory and, when the
    /// storage driver reports it, free disk. Retried after a dropped connection.
    ///
    /// # Errors
    /// [`berth_engine_core::Error::Unavailable`] when the daemon cannot be reached.
    pub async fn daemon_info(&self) -> Result<DaemonInfo> {
        let info = retry::idempotent("info", || self.docker.info())
            .await
            .map_err(|e| errors::other(&self.address, "info", e))?;
        let count = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        Ok(DaemonInfo {
            server_version: info.server_version.unwrap_or_default(),
            os: info.os_type.unwrap_or_default(),
            arch: platform_arch(info.architecture.as_deref().unwrap_or_default()),
            operating_system: info.operating_system.unwrap_or_default(),
            cpus: count(info.ncpu),
            memory_bytes: count(info.mem_total),
            free_disk_bytes: free_disk(info.driver_status.as_deref().unwrap_or_default()),
            storage_driver: info.driver.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(pairs: &[(&str, &str)]) -> Vec<Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| vec![(*k).to_owned(), (*v).to_owned()])
            .collect()
    }

    #[test]
    fn free_disk_is_read_where_the_driver_reports_it() {
        let dm = status(&[
            ("Pool Name", "docker-pool"),
            ("Data Space Available", "12.5 GB"),
        ]);
        assert_eq!(free_disk(&dm), Some(12_500_000_000));
        assert_eq!(
            free_disk(&status(&[("Data Space Available", "2GiB")])),
            Some(2 * 1024 * 1024 * 1024)
        );
        let overlay = status(&[("Backing Filesystem", "extfs"), ("Supports d_type", "true")]);
        assert_eq!(free_disk(&overlay), None);
        assert_eq!(
            free_disk(&status(&[("Data Space Available", "lots")])),
            None
        );
    }

    #[test]
    fn kernel_architectures_become_platform_names() {
        assert_eq!(platform_arch("x86_64"), "amd64");
        assert_eq!(platform_arch("aarch64"), "arm64");
        assert_eq!(platform_arch("s390x"), "s390x");
    }
}
