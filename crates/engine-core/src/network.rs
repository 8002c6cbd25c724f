//! What an environment may reach on the network: [`Network`], the egress policy of an
//! [`EnvironmentSpec`](crate::EnvironmentSpec).
//!
//! Three forms: [`Network::None`] (no network at all, only loopback), [`Network::Full`] (the
//! backend's ordinary network) and [`Network::Allow`] (the ordinary network with egress
//! limited to a list of destinations, DNS optional). Entries of an allow list are written
//! `host:port`, `CIDR`, `CIDR:port`, `IP` or `IP:port` (IPv6 in brackets when a port follows:
//! `[fd00::/8]:443`); [`AllowEntry::parse`] reads them and says which entry is wrong.
//!
//! In serialized form (config files, JSON) a policy is `none`, `full` (or `false` / `true`,
//! the boolean it replaced), or `{allow: [..], dns: true|false}` with `dns` defaulting to true.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The field [`Network`] errors name.
pub const NETWORK_FIELD: &str = "network";

/// An environment's egress policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Network {
    /// No network: the environment has loopback only.
    None,
    /// The backend's ordinary network, unrestricted.
    #[default]
    Full,
    /// The ordinary network with egress limited to these destinations.
    Allow(EgressAllow),
}

/// The destinations of [`Network::Allow`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct EgressAllow {
    /// Where connections may go; everything else is refused.
    pub allow: Vec<AllowEntry>,
    /// Whether DNS queries (UDP and TCP port 53) to the environment's resolver are allowed.
    pub dns: bool,
}

impl EgressAllow {
    /// An allow list from `entries` (each parsed with [`AllowEntry::parse`]).
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `network.allow` and the first bad entry.
    pub fn parse<S: AsRef<str>>(entries: &[S], dns: bool) -> Result<Self> {
        let allow = entries
            .iter()
            .map(|e| AllowEntry::parse(e.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { allow, dns })
    }
}

impl Network {
    /// Whether the environment gets a network interface beyond loopback.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        !matches!(self, Network::None)
    }

    /// The allow list, when egress is limited.
    #[must_use]
    pub fn allow_list(&self) -> Option<&EgressAllow> {
        match self {
            Network::Allow(allow) => Some(allow),
            _ => None,
        }
    }

    /// `none`, `full` or `allow (N entries, dns on|off)`: for messages.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Network::None => "none".into(),
            Network::Full => "full".into(),
            Network::Allow(a) => format!(
                "allow [{}], dns {}",
                a.allow
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                if a.dns { "on" } else { "off" }
            ),
        }
    }
}

impl From<bool> for Network {
    fn from(on: bool) -> Self {
        if on {
            Network::Full
        } else {
            Network::None
        }
    }
}

/// One destination of an allow list: an address block or a host name, and optionally one
/// port (any port when `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AllowEntry {
    /// Where.
    pub dest: Destination,
    /// TCP or UDP port; `None` allows every port.
    pub port: Option<u16>,
}

/// The address part of an [`AllowEntry`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Destination {
    /// An address block; a single address is a `/32` (or `/128`).
    Cidr(Cidr),
    /// A host name, resolved where the backend applies the policy.
    Host(String),
}

/// An address block: an address with its host bits cleared, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address.
    pub addr: IpAddr,
    /// The prefix length (0..=32 for IPv4, 0..=128 for IPv6).
    pub prefix: u8,
}

impl Cidr {
    /// The block of exactly one address.
    #[must_use]
    pub fn host(addr: IpAddr) -> Self {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Self { addr, prefix }
    }

    /// Reads `a.b.c.d/n`, `v6/n` or a bare address; host bits are cleared.
    fn parse(text: &str) -> std::result::Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(format!(
                        "prefix length {p:?} is not a number from 0 to {max}"
                    ))
                }
            },
        };
        let addr = match addr {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mask = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - prefix)
                };
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - prefix)
                };
                IpAddr::V6((bits & mask).into())
            }
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl AllowEntry {
    /// Reads one entry: `host:port`, `host`, `CIDR`, `CIDR:port`, `IP`, `IP:port`, and for
    /// IPv6 with a port `[v6]:port` or `[v6/n]:port`.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `network.allow` and the entry, with why.
    pub fn parse(entry: &str) -> Result<Self> {
        Self::parse_inner(entry.trim()).map_err(|reason| {
            Error::invalid_spec(
                "network.allow",
                format!("entry {entry:?}: {reason}; write host:port, CIDR or CIDR:port"),
            )
        })
    }

    fn parse_inner(entry: &str) -> std::result::Result<Self, String> {
        if entry.is_empty() {
            return Err("it is empty".into());
        }
        let (addr, port) = if let Some(rest) = entry.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| "an opening [ without its ]".to_owned())?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| format!("{after:?} after ] is not :port"))?,
                ),
            };
            (inside, port)
        } else if entry.matches(':').count() > 1 {
            // A bare IPv6 address or block: no port (brackets are needed for one).
            (entry, None)
        } else {
            match entry.rsplit_once(':') {
                Some((a, p)) => (a, Some(p)),
                None => (entry, None),
            }
        };
        let port = port
            .map(|p| match p.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("port {p:?} is not a number from 1 to 65535")),
            })
            .transpose()?;
        let looks_like_address =
            addr.contains('/') || addr.contains(':') || addr.parse::<IpAddr>().is_ok();
        let dest = if looks_like_address {
            Destination::Cidr(Cidr::parse(addr)?)
        } else if addr.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(format!("{addr:?} is not an IP address"));
        } else {
            validate_host(addr)?;
            Destination::Host(addr.to_ascii_lowercase())
        };
        Ok(Self { dest, port })
    }
}

fn validate_host(host: &str) -> std::result::Result<(), String> {
    let bad = || format!("{host:?} is neither an IP address, a CIDR nor a host name");
    if host.len() > 253 {
        return Err(bad());
    }
    for label in host.trim_end_matches('.').split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.dest, self.port) {
            (Destination::Host(h), None) => write!(f, "{h}"),
            (Destination::Host(h), Some(p)) => write!(f, "{h}:{p}"),
            (Destination::Cidr(c), None) => write!(f, "{c}"),
            (Destination::Cidr(c), Some(p)) if c.addr.is_ipv6() => write!(f, "[{c}]:{p}"),
            (Destination::Cidr(c), Some(p)) => write!(f, "{c}:{p}"),
        }
    }
}

impl Serialize for AllowEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AllowEntry {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        AllowEntry::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What [`Network`] looks like in serialized form, as serde reads it.
#[derive(Deserialize)]
#[serde(untagged)]
enum NetworkForm {
    Bool(bool),
    Word(String),
    Allow(AllowForm),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowForm {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    dns: Option<DnsForm>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DnsForm {
    Bool(bool),
    Word(String),
}

/// The forms a policy is written in, for messages.
pub const NETWORK_FORMS: &str =
    "none, full (or false/true) or {allow: [host:port | CIDR | CIDR:port, ..], dns: true|false}";

impl Network {
    /// Reads the word forms: `none`, `full`, `false`, `true`.
    fn from_word(word: &str) -> std::result::Result<Self, String> {
        match word.trim() {
            "none" | "false" => Ok(Network::None),
            "full" | "true" => Ok(Network::Full),
            other => Err(format!("expected {NETWORK_FORMS}, got {other:?}")),
        }
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let form = NetworkForm::deserialize(de).map_err(|_| {
            D::Error::custom(format!(
                "expected {NETWORK_FORMS}, got a value of another kind (or a mapping with keys other than allow and dns)"
            ))
        })?;
        match form {
            NetworkForm::Bool(b) => Ok(b.into()),
            NetworkForm::Word(w) => Network::from_word(&w).map_err(D::Error::custom),
            NetworkForm::Allow(a) => {
                let dns = match a.dns {
                    None => true,
                    Some(DnsForm::Bool(b)) => b,
                    Some(DnsForm::Word(w)) => match w.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(D::Error::custom(format!(
                                "network.dns: expected true or false, got {w:?}"
                            )))
                        }
                    },
                };
                EgressAllow::parse(&a.allow, dns)
                    .map(Network::Allow)
                    .map_err(D::Error::custom)
            }
        }
    }
}

impl Serialize for Network {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        match self {
            Network::None => s.serialize_str("none"),
            Network::Full => s.serialize_str("full"),
            Network::Allow(a) => {
                let mut st = s.serialize_struct("Network", 2)?;
                st.serialize_field("allow", &a.allow)?;
                st.serialize_field("dns", &a.dns)?;
                st.end()
            }
        }
    }
}

impl std::str::FromStr for Network {
    type Err = Error;
    /// `none`, `full`, `true`, `false`.
    fn from_str(s: &str) -> Result<Self> {
        Network::from_word(s).map_err(|reason| Error::invalid_spec(NETWORK_FIELD, reason))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn ok(text: &str) -> AllowEntry {
        AllowEntry::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn cidr(addr: IpAddr, prefix: u8) -> Destination {
        Destination::Cidr(Cidr { addr, prefix })
    }

    #[test]
    fn entries_parse_in_every_form() {
        let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
        assert_eq!(ok("10.0.0.0/8").dest, cidr(v4(10, 0, 0, 0), 8));
        assert_eq!(ok("10.1.2.3/8").dest, cidr(v4(10, 0, 0, 0), 8));
        assert_eq!(ok("10.0.0.0/8:443").port, Some(443));
        assert_eq!(ok("1.2.3.4").dest, cidr(v4(1, 2, 3, 4), 32));
        assert_eq!(ok("1.2.3.4:80").port, Some(80));
        let e = ok("Pypi.org:443");
        assert_eq!(e.dest, Destination::Host("pypi.org".into()));
        assert_eq!(e.port, Some(443));
        assert_eq!(ok("example.com").port, None);
        assert_eq!(
            ok("fd00::/8").dest,
            cidr(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0)), 8)
        );
        assert_eq!(ok("[::1]:22").port, Some(22));
        assert_eq!(ok("[fd00::/8]:443").to_string(), "[fd00::/8]:443");
        assert_eq!(ok(" 0.0.0.0/0 ").to_string(), "0.0.0.0/0");
        for text in ["10.0.0.0/8:443", "1.2.3.4/32", "example.com:80", "fd00::/8"] {
            assert_eq!(ok(&ok(text).to_string()), ok(text), "{text}");
        }
    }

    #[test]
    fn bad_entries_name_the_field_and_the_entry() {
        for (text, why) in [
            ("", "empty"),
            ("10.0.0.0/33", "prefix length"),
            ("10.0.0.0/8:0", "port"),
            ("example.com:http", "port"),
            ("example.com:70000", "port"),
            ("999.1.1.1", "not an IP address"),
            ("exa mple.com", "host name"),
            ("-bad.com:80", "host name"),
            ("[::1", "without its ]"),
            ("[::1]x", "not :port"),
            ("fd00::/200", "prefix length"),
        ] {
            let err = AllowEntry::parse(text).expect_err(text);
            let msg = err.to_string();
            assert!(
                matches!(&err, Error::InvalidSpec { field, .. } if field == "network.allow"),
                "{text}: {msg}"
            );
            assert!(msg.contains(&format!("{text:?}")), "{text}: {msg}");
            assert!(msg.contains(why), "{text}: {msg}");
        }
    }

    #[test]
    fn the_serialized_forms_round_trip_and_booleans_still_read() {
        let read = |json: &str| serde_json::from_str::<Network>(json);
        assert_eq!(read("true").unwrap(), Network::Full);
        assert_eq!(read("false").unwrap(), Network::None);
        assert_eq!(read("\"none\"").unwrap(), Network::None);
        assert_eq!(read("\"full\"").unwrap(), Network::Full);
        let allow = read(r#"{"allow": ["10.0.0.0/8:443", "pypi.org:443"]}"#).unwrap();
        let a = allow.allow_list().unwrap();
        assert!(a.dns, "dns defaults to on");
        assert_eq!(a.allow.len(), 2);
        let off = read(r#"{"allow": [], "dns": false}"#).unwrap();
        assert!(!off.allow_list().unwrap().dns);
        for net in [Network::None, Network::Full, allow, off] {
            let json = serde_json::to_string(&net).unwrap();
            assert_eq!(read(&json).unwrap(), net, "{json}");
        }
        let err = read(r#"{"allow": ["10.0.0.0/99"]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("network.allow") && err.contains("10.0.0.0/99"),
            "{err}"
        );
        let err = read("\"maybe\"").unwrap_err().to_string();
        assert!(err.contains("none, full"), "{err}");
        let err = read(r#"{"allowed": []}"#).unwrap_err().to_string();
        assert!(err.contains("allow and dns"), "{err}");
    }
}
