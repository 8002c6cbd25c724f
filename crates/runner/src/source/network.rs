//! Where a clone may connect, and how much it may download: what keeps a `git_url` given by a
//! caller from turning the agent into a proxy into its own network (the cloud metadata address,
//! a database on the private network, the agent's own loopback services), or from filling its
//! disk with a pack that never ends.
//!
//! The address check is made twice: once before the clone (so the error is clear and typed),
//! and again by the HTTP client's resolver on every connection, so a name that resolves to a
//! public address first and to a private one next (DNS rebinding), or a redirect to another
//! host, is refused too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::SourceError;

/// Which hosts a clone may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HostPolicy {
    /// Whether loopback, private, link-local and other non-public addresses may be reached.
    pub allow_private: bool,
    /// When not empty, the only host names (or literal addresses) a URL may name,
    /// compared without regard to case.
    pub allowed_hosts: Vec<String>,
}

impl Default for HostPolicy {
    fn default() -> Self {
        Self {
            allow_private: true,
            allowed_hosts: Vec::new(),
        }
    }
}

impl HostPolicy {
    /// The checks that need no I/O: the allow-list, and a literal address.
    pub fn check_name(&self, host: &str) -> Result<(), SourceError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if !self.allowed_hosts.is_empty()
            && !self.allowed_hosts.iter().any(|h| {
                h.trim_start_matches('[')
                    .trim_end_matches(']')
                    .eq_ignore_ascii_case(bare)
            })
        {
            return Err(SourceError::HostRefused {
                host: bare.to_owned(),
                reason: format!(
                    "it is not one of the allowed git hosts ({})",
                    self.allowed_hosts.join(", ")
                ),
            });
        }
        if let Ok(ip) = bare.parse::<IpAddr>() {
            self.check_address(bare, ip)?;
        }
        Ok(())
    }

    /// Refuses a non-public address unless private addresses are allowed.
    pub fn check_address(&self, host: &str, ip: IpAddr) -> Result<(), SourceError> {
        match non_public(ip) {
            Some(kind) if !self.allow_private => Err(SourceError::HostRefused {
                host: host.to_owned(),
                reason: format!(
                    "it is (or resolves to) {ip}, a {kind} address; private addresses are \
                     refused unless allowed"
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Resolves `host` and checks every address it resolves to.
    pub async fn check_resolved(&self, host: &str, port: u16) -> Result<(), SourceError> {
        if self.allow_private {
            return Ok(());
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<IpAddr>().is_ok() {
            return Ok(()); // checked by check_name
        }
        let addrs =
            tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| SourceError::Unreachable {
                    detail: format!("{bare} does not resolve: {e}"),
                })?;
        for addr in addrs {
            self.check_address(bare, addr.ip())?;
        }
        Ok(())
    }
}

/// What kind of non-public address `ip` is, or `None` for a public one.
pub(super) fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return non_public_v4(v4);
            }
            let seg = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                return non_public_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            non_public_v6(v6)
        }
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata)")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT)")
    } else if a == 0
        || ip.is_broadcast()
        || ip.is_multicast()
        || a >= 240
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
    {
        Some("reserved")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("benchmarking")
    } else {
        None
    }
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("reserved")
    } else if first & 0xfe00 == 0xfc00 {
        Some("private (unique local)")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("reserved")
    } else {
        None
    }
}

/// A resolver for the clone's HTTP client that never hands out a non-public address when
/// private addresses are refused: it is asked on every connection, redirects included.
pub(super) struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| non_public(a.ip()).is_none())
                .collect();
            if public.is_empty() {
                let shown = addrs
                    .first()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                return Err(format!(
                    "{host} resolves only to non-public addresses ({shown}); refused"
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Watches the bytes a clone has written under its directory while it downloads, and asks
/// it to stop (through `interrupt`) once they pass `max_bytes`: the pack a server sends is
/// otherwise unbounded. Stops watching when dropped.
pub(super) struct DownloadCap {
    done: Arc<AtomicBool>,
    over: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DownloadCap {
    /// Starts watching `dir`.
    pub fn watch(dir: &Path, max_bytes: u64, interrupt: Arc<AtomicBool>) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let over = Arc::new(AtomicU64::new(0));
        let thread = {
            let (dir, done, over) = (dir.to_owned(), done.clone(), over.clone());
            std::thread::Builder::new()
                .name("berth-clone-cap".into())
                .spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        let size = dir_size(&dir);
                        if size > max_bytes {
                            over.store(size, Ordering::Relaxed);
                            interrupt.store(true, Ordering::Relaxed);
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })
                .ok()
        };
        Self { done, over, thread }
    }

    /// The bytes seen when the cap was passed, if it was.
    pub fn exceeded(&self) -> Option<u64> {
        match self.over.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }
}

impl Drop for DownloadCap {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The bytes of the regular files under `dir` (symbolic links not followed).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses_are_named() {
        for (ip, kind) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local (cloud metadata)"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("0.0.0.0", "reserved"),
            ("::1", "loopback"),
            ("::", "reserved"),
            ("fd00::1", "private (unique local)"),
            ("fe80::1", "link-local"),
            ("::ffff:169.254.169.254", "link-local (cloud metadata)"),
            ("64:ff9b::a9fe:a9fe", "link-local (cloud metadata)"),
        ] {
            assert_eq!(non_public(ip.parse().unwrap()), Some(kind), "{ip}");
        }
        for ip in ["140.82.112.3", "8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            assert_eq!(non_public(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn the_allow_list_and_literal_addresses_are_checked_without_io() {
        let closed = HostPolicy {
            allow_private: false,
            allowed_hosts: vec!["github.com".into()],
        };
        assert!(closed.check_name("GitHub.com").is_ok());
        let err = closed.check_name("gitlab.com").unwrap_err().to_string();
        assert!(
            err.contains("gitlab.com") && err.contains("github.com"),
            "{err}"
        );
        let private = HostPolicy {
            allow_private: false,
            allowed_hosts: Vec::new(),
        };
        let err = private
            .check_name("169.254.169.254")
            .unwrap_err()
            .to_string();
        assert!(err.contains("link-local"), "{err}");
        assert!(private.check_name("[::1]").is_err());
        assert!(HostPolicy::default().check_name("127.0.0.1").is_ok());
    }

    #[test]
    fn the_cap_stops_a_growing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let interrupt = Arc::new(AtomicBool::new(false));
        let cap = DownloadCap::watch(dir.path(), 1000, interrupt.clone());
        std::fs::write(dir.path().join("small"), [0u8; 10]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(cap.exceeded().is_none());
        std::fs::create_dir(dir.path().join("pack")).unwrap();
        std::fs::write(dir.path().join("pack/tmp"), [0u8; 2000]).unwrap();
        for _ in 0..100 {
            if interrupt.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(interrupt.load(Ordering::Relaxed));
        assert_eq!(cap.exceeded(), Some(2010));
    }
}
