//! Egress allow lists on Docker, enforced by firewall rules inside the container's own
//! network namespace.
//!
//! Docker itself has no per-container egress filter, and the ways around that which change
//! the daemon (its `iptables` settings, a network plugin) or every container on a bridge
//! (rules in the host's `DOCKER-USER` chain) are not berth's to make. What is berth's is the
//! container: its network namespace has its own netfilter tables, empty by default. berth
//! enters that namespace from the host (`nsenter --net=/proc/PID/ns/net`) and loads a whole
//! `filter` table at once with `iptables-restore` (and `ip6tables-restore`): OUTPUT drops by
//! default, and accepts loopback, replies to connections already made, DNS to the resolvers of
//! the container's `/etc/resolv.conf` when asked, and each allowed address block (and port);
//! anything else is rejected at once (a TCP reset, an ICMP unreachable) rather than left to
//! time out. The container holds no `NET_ADMIN` (berth drops it with every other capability
//! it does not grant), so nothing inside can change the rules or the routes; raw sockets go
//! through the same OUTPUT chain (and `NET_RAW` is dropped too).
//!
//! This needs berth on the daemon's own host, in the daemon's PID namespace, with the
//! privilege to enter a namespace and change its firewall (root, or `CAP_SYS_ADMIN` and
//! `CAP_NET_ADMIN`), and `nsenter` and `iptables-restore` on its PATH. Where any of that is
//! missing (a remote daemon over ssh or tcp, an unprivileged user, the binaries absent)
//! starting with an allow list is [`Error::Unsupported`] saying which: never a policy left
//! silently unenforced. Host names are resolved here, when the rules are applied; a name
//! whose addresses change later keeps the addresses it had.
//!
//! The rules are in place before [`start`](berth_engine_core::ContainerEngine::start) returns,
//! while the only process in the container is berth's keepalive.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use berth_engine_core::{Cidr, Destination, EgressAllow, Error, Network, Result};
use tokio::io::AsyncWriteExt;

use crate::errors::BACKEND;
use crate::DockerEngine;

/// The Docker network an environment with a network is attached to.
pub(crate) const BRIDGE: &str = "bridge";

/// Why this process cannot enforce an allow list on the daemon at `address`, if it cannot.
pub(crate) fn enforcement_unavailable(address: &str) -> Option<String> {
    if !address.starts_with("unix://") {
        return Some(format!(
            "the daemon at {address} is not on this machine, and berth enforces an allow list from the daemon's host (firewall rules inside the container's network namespace); run berth on that host, or use network: none or full"
        ));
    }
    if !privileged() {
        return Some(
            "berth is not privileged here: entering a container's network namespace and changing its firewall needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN); run berth as root on the daemon's host, or use network: none or full".into(),
        );
    }
    for tool in ["nsenter", "iptables-restore", "iptables"] {
        if which(tool).is_none() {
            return Some(format!(
                "`{tool}` is not on the PATH, and berth enforces an allow list with nsenter and iptables on the daemon's host; install util-linux and iptables, or use network: none or full"
            ));
        }
    }
    None
}

/// Whether this process holds `CAP_SYS_ADMIN` (21) and `CAP_NET_ADMIN` (12).
fn privileged() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 21) != 0 && caps & (1 << 12) != 0)
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

fn unsupported(operation: &'static str, reason: String) -> Error {
    Error::Unsupported {
        backend: BACKEND,
        operation,
        reason,
    }
}

/// The network namespace of a running container, as this process sees it.
struct Netns {
    pid: i64,
    /// The container's own DNS servers (`--dns`), if it was given any.
    dns: Vec<IpAddr>,
}

impl Netns {
    fn proc(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}", self.pid))
    }
}

/// The container `name`'s process, checked to be the container's as seen from here (its
/// cgroup names the container's id, or, where cgroups hide it, its `/etc/hostname` is the
/// container's), so a daemon in another PID namespace never has berth change the firewall of
/// an unrelated process.
async fn netns(engine: &DockerEngine, name: &str) -> Result<Netns> {
    let c = engine
        .docker
        .inspect_container(name, None)
        .await
        .map_err(|e| {
            crate::errors::env_call(&engine.address, name, "inspect for the network policy", e)
        })?;
    let pid = c
        .state
        .as_ref()
        .and_then(|s| s.pid)
        .filter(|p| *p > 0)
        .ok_or_else(|| Error::Conflict {
            what: "environment",
            name: name.to_owned(),
            reason: "it is not running, so its network policy cannot be applied".into(),
        })?;
    let dns = c
        .host_config
        .as_ref()
        .and_then(|h| h.dns.clone())
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    let netns = Netns { pid, dns };
    let hostname = c
        .config
        .as_ref()
        .and_then(|c| c.hostname.clone())
        .unwrap_or_default();
    let id = c.id.clone().unwrap_or_default();
    let cgroup = tokio::fs::read_to_string(netns.proc().join("cgroup"))
        .await
        .unwrap_or_default();
    let seen = tokio::fs::read_to_string(netns.proc().join("root/etc/hostname"))
        .await
        .unwrap_or_default();
    let by_cgroup = id.len() >= 32 && cgroup.contains(&id);
    let by_hostname = !hostname.is_empty() && seen.trim() == hostname;
    if !by_cgroup && !by_hostname {
        return Err(unsupported(
            "network",
            format!(
                "process {pid} of environment {name} is not visible from here as the container's (the daemon runs in another PID namespace, a VM or another machine); run berth on the daemon's host, or use network: none or full"
            ),
        ));
    }
    Ok(netns)
}

/// The `nameserver` addresses of a resolv.conf.
fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().split('%').next()?.parse().ok())
        .collect()
}

/// The resolvers DNS may go to. Before any command ran (`fresh`, at start) the container's
/// own `/etc/resolv.conf`, which the daemon wrote. Later that file is the environment's to
/// edit (it could name any server as its "resolver" and tunnel through port 53), so the
/// resolvers are worked out as the daemon does for the default bridge: the container's
/// `--dns` servers, else the host's non-loopback nameservers (systemd-resolved's upstream
/// list when the host's file names only its stub), else Docker's fallback (8.8.8.8, 8.8.4.4).
async fn resolvers(netns: &Netns, fresh: bool) -> Vec<IpAddr> {
    if fresh {
        let text = tokio::fs::read_to_string(netns.proc().join("root/etc/resolv.conf"))
            .await
            .unwrap_or_default();
        return nameservers(&text);
    }
    if !netns.dns.is_empty() {
        return netns.dns.clone();
    }
    for file in ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"] {
        let text = tokio::fs::read_to_string(file).await.unwrap_or_default();
        let found: Vec<IpAddr> = nameservers(&text)
            .into_iter()
            .filter(|a| !a.is_loopback())
            .collect();
        if !found.is_empty() {
            return found;
        }
    }
    ["8.8.8.8", "8.8.4.4"]
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// The allow list with every host name replaced by the address blocks it resolves to now.
///
/// # Errors
/// [`Error::InvalidSpec`] naming `network.allow` for a name that does not resolve.
pub(crate) async fn resolve(allow: &EgressAllow) -> Result<Vec<(Cidr, Option<u16>)>> {
    let mut out = Vec::new();
    for entry in &allow.allow {
        match &entry.dest {
            Destination::Cidr(c) => out.push((*c, entry.port)),
            Destination::Host(host) => {
                let addrs = tokio::net::lookup_host((host.as_str(), entry.port.unwrap_or(0)))
                    .await
                    .map_err(|e| {
                        Error::invalid_spec(
                            "network.allow",
                            format!("entry {entry}: {host} does not resolve from here ({e}); berth resolves host names when it applies the policy"),
                        )
                    })?;
                let set: BTreeSet<IpAddr> = addrs.map(|a| a.ip()).collect();
                out.extend(set.into_iter().map(|ip| (Cidr::host(ip), entry.port)));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The `filter` table for one address family (`v6` or not): OUTPUT dropped by default with
/// the exceptions of `network`. `None` for a family means drop everything but loopback.
fn table(v6: bool, rules: &[(Cidr, Option<u16>)], dns: &[IpAddr]) -> String {
    let reject = if v6 {
        "icmp6-adm-prohibited"
    } else {
        "icmp-admin-prohibited"
    };
    let mut t =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT DROP [0:0]\n");
    t.push_str("-A OUTPUT -o lo -j ACCEPT\n");
    t.push_str("-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
    for ip in dns.iter().filter(|ip| ip.is_ipv6() == v6) {
        for proto in ["udp", "tcp"] {
            let _ = writeln!(
                t,
                "-A OUTPUT -d {} -p {proto} --dport 53 -j ACCEPT",
                Cidr::host(*ip)
            );
        }
    }
    for (cidr, port) in rules.iter().filter(|(c, _)| c.addr.is_ipv6() == v6) {
        match port {
            None => {
                let _ = writeln!(t, "-A OUTPUT -d {cidr} -j ACCEPT");
            }
            Some(p) => {
                for proto in ["tcp", "udp"] {
                    let _ = writeln!(t, "-A OUTPUT -d {cidr} -p {proto} --dport {p} -j ACCEPT");
                }
            }
        }
    }
    t.push_str("-A OUTPUT -p tcp -j REJECT --reject-with tcp-reset\n");
    let _ = writeln!(t, "-A OUTPUT -j REJECT --reject-with {reject}");
    t.push_str("COMMIT\n");
    t
}

/// The `filter` table that accepts everything: what `full` restores.
const OPEN_TABLE: &str =
    "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";

/// Runs `tool` (`iptables-restore`, `ip6tables-restore`, `iptables`) in `netns` with `input`
/// on its stdin; its stdout.
async fn run_in(netns: &Netns, tool: &str, args: &[&str], input: &str) -> Result<String> {
    let nsenter = which("nsenter").unwrap_or_else(|| "nsenter".into());
    let tool_path = which(tool).unwrap_or_else(|| tool.into());
    let net = format!("--net={}", netns.proc().join("ns/net").display());
    let mut child = tokio::process::Command::new(nsenter)
        .arg(net)
        .arg("--")
        .arg(&tool_path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| unsupported("network", format!("nsenter could not run: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .await
            .map_err(|e| Error::backend(BACKEND, format!("feed {tool}"), e))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| Error::backend(BACKEND, format!("run {tool}"), e))?;
    if !out.status.success() {
        return Err(Error::backend(
            BACKEND,
            format!(
                "apply the network policy with {tool} in process {}'s network namespace",
                netns.pid
            ),
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the namespace has IPv6 at all (its `/proc/net/if_inet6` exists).
fn has_ipv6(netns: &Netns) -> bool {
    Path::new(&netns.proc().join("net/if_inet6")).exists()
}

/// Loads the rules of `network` (an allow list, or `None` for "deny everything but
/// loopback", or `Full` for "accept everything") into the container `name`'s namespace, and
/// reads them back. `fresh`: no command has run in the container yet (at start).
pub(crate) async fn apply(
    engine: &DockerEngine,
    name: &str,
    network: &Network,
    fresh: bool,
) -> Result<()> {
    if let Some(reason) = enforcement_unavailable(&engine.address) {
        return Err(unsupported("network", reason));
    }
    let ns = netns(engine, name).await?;
    let (v4, v6) = match network {
        Network::Full => (OPEN_TABLE.to_owned(), OPEN_TABLE.to_owned()),
        Network::Allow(allow) => {
            let rules = resolve(allow).await?;
            let dns = if allow.dns {
                resolvers(&ns, fresh).await
            } else {
                Vec::new()
            };
            (table(false, &rules, &dns), table(true, &rules, &dns))
        }
        _ => (table(false, &[], &[]), table(true, &[], &[])),
    };
    run_in(&ns, "iptables-restore", &[], &v4).await?;
    if has_ipv6(&ns) {
        if which("ip6tables-restore").is_none() {
            return Err(unsupported(
                "network",
                "`ip6tables-restore` is not on the PATH, and the container has IPv6 whose egress berth must close too; install iptables with IPv6 support, or use network: none or full".into(),
            ));
        }
        run_in(&ns, "ip6tables-restore", &[], &v6).await?;
    }
    // Read back: the policy of OUTPUT is what was asked for.
    let listed = run_in(&ns, "iptables", &["-S", "OUTPUT"], "").await?;
    let want = if matches!(network, Network::Full) {
        "-P OUTPUT ACCEPT"
    } else {
        "-P OUTPUT DROP"
    };
    if !listed.lines().any(|l| l.trim() == want) {
        return Err(Error::backend(
            BACKEND,
            format!("check the network policy of {name}"),
            std::io::Error::other(format!(
                "expected {want:?} after loading the rules, found:\n{listed}"
            )),
        ));
    }
    tracing::debug!(env = name, policy = %network.describe(), "applied egress rules");
    Ok(())
}

/// The networks the container `name` is attached to (`none` for a network-less one).
async fn attached(engine: &DockerEngine, name: &str) -> Result<Vec<String>> {
    let c = engine
        .docker
        .inspect_container(name, None)
        .await
        .map_err(|e| crate::errors::env_call(&engine.address, name, "inspect networks", e))?;
    Ok(c.network_settings
        .and_then(|n| n.networks)
        .map(|n| n.into_keys().collect())
        .unwrap_or_default())
}

/// Changes the policy of the running container `name` to `network`. Moving to `none`
/// disconnects it from every network (after closing egress, so nothing slips out in
/// between); moving from `none` to an allow list loads the rules before connecting it to the
/// bridge, so the new interface is never unfiltered.
pub(crate) async fn set_network(
    engine: &DockerEngine,
    name: &str,
    network: &Network,
) -> Result<()> {
    let attached = attached(engine, name).await?;
    let networks: Vec<&String> = attached.iter().filter(|n| *n != "none").collect();
    let private = attached.iter().any(|n| n == "none");
    let local = enforcement_unavailable(&engine.address);
    match network {
        Network::None => {
            if local.is_none() {
                apply(engine, name, network, false).await?;
            }
            for net in &networks {
                disconnect(engine, name, net).await?;
            }
        }
        Network::Full | Network::Allow(_) => {
            if let Some(reason) = local {
                return Err(unsupported(
                    "network",
                    format!(
                        "cannot change the policy of {name} to {}: {reason}",
                        network.describe()
                    ),
                ));
            }
            apply(engine, name, network, false).await?;
            if networks.is_empty() {
                // Docker connects no network to a container in `none` mode: leave it first
                // (the container keeps its namespace, rules and loopback).
                if private {
                    disconnect(engine, name, "none").await?;
                }
                connect(engine, name).await?;
                // The bridge's resolver may only now be known: load the rules once more.
                apply(engine, name, network, false).await?;
            }
        }
        _ => {
            return Err(unsupported(
                "network",
                format!(
                    "the policy {} is unknown to the Docker backend",
                    network.describe()
                ),
            ));
        }
    }
    Ok(())
}

async fn disconnect(engine: &DockerEngine, name: &str, net: &str) -> Result<()> {
    engine
        .docker
        .disconnect_network(
            net,
            bollard::models::NetworkDisconnectRequest {
                container: name.to_owned(),
                force: Some(true),
            },
        )
        .await
        .map_err(|e| {
            crate::errors::env_call(
                &engine.address,
                name,
                &format!("disconnect from network {net}"),
                e,
            )
        })
}

async fn connect(engine: &DockerEngine, name: &str) -> Result<()> {
    engine
        .docker
        .connect_network(
            BRIDGE,
            bollard::models::NetworkConnectRequest {
                container: name.to_owned(),
                endpoint_config: None,
            },
        )
        .await
        .map_err(|e| {
            crate::errors::env_call(&engine.address, name, "connect to the bridge network", e)
        })
}

#[cfg(test)]
mod tests {
    use berth_engine_core::EgressAllow;

    use super::*;

    #[test]
    fn the_table_drops_by_default_and_lists_each_exception() {
        let allow =
            EgressAllow::parse(&["10.0.0.0/8:443", "192.168.1.1", "[fd00::1]:22"], true).unwrap();
        let rules: Vec<_> = allow
            .allow
            .iter()
            .map(|e| match &e.dest {
                Destination::Cidr(c) => (*c, e.port),
                _ => unreachable!(),
            })
            .collect();
        let dns = ["10.255.255.53".parse().unwrap()];
        let v4 = table(false, &rules, &dns);
        assert!(v4.contains(":OUTPUT DROP"), "{v4}");
        assert!(v4.contains("-A OUTPUT -o lo -j ACCEPT"), "{v4}");
        assert!(
            v4.contains("-d 10.255.255.53/32 -p udp --dport 53 -j ACCEPT"),
            "{v4}"
        );
        assert!(
            v4.contains("-d 10.0.0.0/8 -p tcp --dport 443 -j ACCEPT"),
            "{v4}"
        );
        assert!(v4.contains("-d 192.168.1.1/32 -j ACCEPT"), "{v4}");
        assert!(!v4.contains("fd00"), "{v4}");
        assert!(
            v4.ends_with("--reject-with icmp-admin-prohibited\nCOMMIT\n"),
            "{v4}"
        );
        let v6 = table(true, &rules, &dns);
        assert!(
            v6.contains("-d fd00::1/128 -p tcp --dport 22 -j ACCEPT"),
            "{v6}"
        );
        assert!(!v6.contains("10.0.0.0"), "{v6}");
        assert!(!v6.contains("--dport 53"), "{v6}");
    }

    #[test]
    fn a_remote_daemon_cannot_enforce_an_allow_list() {
        for address in ["tcp://10.0.0.1:2376", "ssh://me@host"] {
            let why = enforcement_unavailable(address).unwrap();
            assert!(
                why.contains(address) && why.contains("not on this machine"),
                "{why}"
            );
        }
    }
}
