//! The typed values of the config: a value that loads is valid, and serialises back to the
//! canonical text of its form (`1h30m`, `500m`, `4Gi`).

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;
use std::time::Duration;

use berth_engine_core::{BackendKind, PullPolicy, SecurityProfile};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::parse::{
    format_cpu_millis, format_duration, format_memory_bytes, parse_cpu_millis, parse_duration,
    parse_memory_bytes, InvalidValue,
};

/// Visits a scalar as text: a config file may write `cpu: 2`, `cpu: 0.5` or `max_lifetime:
/// 90` where the text `"2"`, `"0.5"` or `"90"` is meant.
struct ScalarText(&'static str);

impl Visitor<'_> for ScalarText {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

/// Deserializes a scalar's text through `FromStr`, whose error says what was expected.
fn from_text<'de, D, T>(de: D, expecting: &'static str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    de.deserialize_any(ScalarText(expecting))?
        .parse()
        .map_err(de::Error::custom)
}

/// Implements `Display` as the canonical text, `FromStr` through `parse`, and serde through
/// both, for a newtype over a parsed value.
macro_rules! text_value {
    ($name:ident, $parse:expr, $format:expr, $expecting:literal) => {
        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(text: &str) -> Result<Self, InvalidValue> {
                $parse(text).map(Self)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&$format(self.0))
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
                from_text(de, $expecting)
            }
        }
    };
}

/// A positive whole number of seconds, written `90s`, `30m`, `1h30m`, `24h`, `2d` or `90`.
///
/// ```
/// use std::time::Duration;
/// use berth_runner::config::HumanDuration;
///
/// let d: HumanDuration = "1h30m".parse().unwrap();
/// assert_eq!(d.get(), Duration::from_secs(5400));
/// assert_eq!("5400s".parse::<HumanDuration>().unwrap().to_string(), "1h30m");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub(super) Duration);

impl HumanDuration {
    /// `secs` seconds; `None` for zero.
    #[must_use]
    pub fn from_secs(secs: u64) -> Option<Self> {
        (secs > 0).then(|| Self(Duration::from_secs(secs)))
    }

    /// The duration.
    #[must_use]
    pub fn get(self) -> Duration {
        self.0
    }
}

text_value!(
    HumanDuration,
    parse_duration,
    format_duration,
    "a duration like 90s, 30m, 1h30m, 24h or 2d"
);

/// A newtype over a positive count of `$unit`, with a checked constructor and a getter.
macro_rules! positive_count {
    ($(#[$meta:meta])* $name:ident, $new:ident, $get:ident, $unit:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub(super) u64);

        impl $name {
            #[doc = concat!("`n` ", $unit, "; `None` for zero.")]
            #[must_use]
            pub fn $new(n: u64) -> Option<Self> {
                (n > 0).then_some(Self(n))
            }

            #[doc = concat!("The quantity in ", $unit, ".")]
            #[must_use]
            pub fn $get(self) -> u64 {
                self.0
            }
        }
    };
}

positive_count!(
    /// A positive CPU quantity in millicores, written `500m`, `2` or `0.5`.
    CpuQuantity,
    from_millis,
    millis,
    "millicores (1000 per core)"
);

text_value!(
    CpuQuantity,
    parse_cpu_millis,
    format_cpu_millis,
    "a CPU quantity like 500m, 2 or 0.5"
);

positive_count!(
    /// A positive memory quantity in bytes, written `512Mi`, `4Gi`, `1G` or a number of bytes.
    MemoryQuantity,
    from_bytes,
    bytes,
    "bytes"
);

text_value!(
    MemoryQuantity,
    parse_memory_bytes,
    format_memory_bytes,
    "a memory quantity like 512Mi, 4Gi or 1G"
);

/// The text that lifts a limit (`runner.resources.cpu: unlimited`).
pub const UNLIMITED: &str = "unlimited";

/// A limit that may be lifted: a quantity, or `unlimited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit<T> {
    /// At most this much.
    Limited(T),
    /// No limit.
    Unlimited,
}

impl<T: Copy> Limit<T> {
    /// The limit, or `None` when lifted.
    #[must_use]
    pub fn get(self) -> Option<T> {
        match self {
            Limit::Limited(v) => Some(v),
            Limit::Unlimited => None,
        }
    }
}

impl<T: FromStr<Err = InvalidValue>> FromStr for Limit<T> {
    type Err = InvalidValue;
    fn from_str(text: &str) -> Result<Self, InvalidValue> {
        if text.trim() == UNLIMITED {
            return Ok(Limit::Unlimited);
        }
        text.parse().map(Limit::Limited)
    }
}

impl<T: fmt::Display> fmt::Display for Limit<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Limited(v) => v.fmt(f),
            Limit::Unlimited => f.write_str(UNLIMITED),
        }
    }
}

impl<T: fmt::Display> Serialize for Limit<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de, T: FromStr<Err = InvalidValue>> Deserialize<'de> for Limit<T> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        from_text(de, "a quantity or unlimited")
    }
}

/// `runner.backend`: `docker` or `kubernetes` (engine-core's own names; `k8s` also reads).
pub(crate) mod backend_kind {
    use super::{de, BackendKind, Deserialize, Deserializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<BackendKind, D::Error> {
        let text = String::deserialize(de)?;
        text.parse()
            .map_err(|_| de::Error::custom(format!("expected docker or kubernetes, got {text:?}")))
    }
}

/// `runner.pull_policy`: `always`, `if_not_present` or `never` (Kubernetes' spellings read too).
pub(crate) mod pull_policy {
    use super::{de, Deserialize, Deserializer, PullPolicy};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<PullPolicy, D::Error> {
        let text = String::deserialize(de)?;
        text.parse().map_err(|_| {
            de::Error::custom(format!(
                "expected always, if_not_present or never, got {text:?}"
            ))
        })
    }
}

/// `kubernetes.image_pull_policy`: a pull policy in Kubernetes' spelling (`Always`,
/// `IfNotPresent`, `Never`), as the pod's `imagePullPolicy` takes it.
pub mod kubernetes_pull_policy {
    use super::{de, Deserialize, Deserializer, PullPolicy, Serializer};

    /// `policy` as Kubernetes spells it.
    #[must_use]
    pub fn name(policy: PullPolicy) -> &'static str {
        match policy {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }

    pub(crate) fn serialize<S: Serializer>(
        policy: &Option<PullPolicy>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match policy {
            Some(p) => s.serialize_some(name(*p)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        de: D,
    ) -> Result<Option<PullPolicy>, D::Error> {
        let Some(text) = Option::<String>::deserialize(de)? else {
            return Ok(None);
        };
        [
            PullPolicy::Always,
            PullPolicy::IfNotPresent,
            PullPolicy::Never,
        ]
        .into_iter()
        .find(|p| name(*p) == text)
        .map(Some)
        .ok_or_else(|| {
            de::Error::custom(format!(
                "expected Always, IfNotPresent or Never, got {text:?}"
            ))
        })
    }
}

/// `kubernetes.security`: `hardened` or `restricted`.
pub(crate) mod security_profile {
    use super::{de, Deserialize, Deserializer, SecurityProfile};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        de: D,
    ) -> Result<SecurityProfile, D::Error> {
        let text = String::deserialize(de)?;
        match text.as_str() {
            "hardened" => Ok(SecurityProfile::Hardened),
            "restricted" => Ok(SecurityProfile::Restricted),
            _ => Err(de::Error::custom(format!(
                "expected hardened or restricted, got {text:?}"
            ))),
        }
    }
}

/// `runner.resources.pids`: a positive process count.
pub(crate) mod process_count {
    use super::{de, Deserialize, Deserializer, NonZeroU64};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        de: D,
    ) -> Result<Option<NonZeroU64>, D::Error> {
        match Option::<u64>::deserialize(de)? {
            None => Ok(None),
            Some(n) => NonZeroU64::new(n).map(Some).ok_or_else(|| {
                de::Error::custom("expected a positive process count, got 0".to_owned())
            }),
        }
    }
}
