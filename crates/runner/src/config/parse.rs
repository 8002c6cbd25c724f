//! Parsing and printing the value forms of the config file and the command line: durations
//! (`90s`, `30m`, `1h30m`, `2d`, plain seconds) and Kubernetes quantities of CPU (`500m`, `2`,
//! `0.5`) and memory (`512Mi`, `4Gi`, `1G`, a number of bytes).

use std::time::Duration;

/// A value that is not of the form its key or flag takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}, got {got:?}")]
#[non_exhaustive]
pub struct InvalidValue {
    /// What was expected, with examples ("a duration like 90s, 30m, 24h or 2d").
    pub expected: &'static str,
    /// The text given.
    pub got: String,
}

impl InvalidValue {
    /// `got` is not `expected`.
    #[must_use]
    pub fn new(expected: &'static str, got: impl Into<String>) -> Self {
        Self {
            expected,
            got: got.into(),
        }
    }
}

const EXPECTED_DURATION: &str = "a duration like 90s, 30m, 1h30m, 24h or 2d";
const EXPECTED_CPU: &str = "a positive CPU quantity like 500m, 2 or 0.5";
const EXPECTED_MEMORY: &str = "a positive memory quantity like 512Mi, 4Gi or 1G";

/// Duration units, largest first, with their length in seconds.
const DURATION_UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

/// Parses a duration: `90s`, `30m`, `24h`, `2d`, a bare number of seconds, or units summed
/// largest first (`1h30m`, `2d12h`). Zero is refused.
///
/// ```
/// use std::time::Duration;
/// use berth_runner::config::parse_duration;
///
/// assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
/// assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
/// assert!(parse_duration("soon").is_err());
/// ```
///
/// # Errors
/// [`InvalidValue`] saying what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidValue> {
    let invalid = || InvalidValue::new(EXPECTED_DURATION, text);
    let mut rest = text.trim();
    if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
        return match rest.parse::<u64>() {
            Ok(0) | Err(_) => Err(invalid()),
            Ok(secs) => Ok(Duration::from_secs(secs)),
        };
    }
    let mut total: u64 = 0;
    // Units may appear once each, largest first: `1h30m`, not `30m1h` or `1h1h`.
    let mut allowed = &DURATION_UNITS[..];
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(invalid)?;
        let n: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        let unit = rest[digits..].chars().next().ok_or_else(invalid)?;
        let at = allowed
            .iter()
            .position(|(u, _)| *u == unit)
            .ok_or_else(invalid)?;
        let seconds = n.checked_mul(allowed[at].1).ok_or_else(invalid)?;
        total = total.checked_add(seconds).ok_or_else(invalid)?;
        allowed = &allowed[at + 1..];
        rest = &rest[digits + unit.len_utf8()..];
    }
    if total == 0 {
        return Err(invalid());
    }
    Ok(Duration::from_secs(total))
}

/// A whole number of seconds as [`parse_duration`] reads it back, largest units first
/// (`5400` → `1h30m`, `86400` → `1d`).
#[must_use]
pub fn format_duration(duration: Duration) -> String {
    let mut secs = duration.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in DURATION_UNITS {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    out
}

/// Parses a Kubernetes CPU quantity (`500m`, `2`, `0.5`) into millicores.
///
/// # Errors
/// [`InvalidValue`] when `text` is not a positive quantity.
pub fn parse_cpu_millis(text: &str) -> Result<u64, InvalidValue> {
    let invalid = || InvalidValue::new(EXPECTED_CPU, text);
    let t = text.trim();
    let millis = if let Some(m) = t.strip_suffix('m') {
        m.parse::<u64>().map_err(|_| invalid())?
    } else {
        let cores: f64 = t.parse().map_err(|_| invalid())?;
        let millis = (cores * 1000.0).round();
        if !millis.is_finite() || millis < 0.0 || millis > u64::MAX as f64 {
            return Err(invalid());
        }
        millis as u64
    };
    if millis == 0 {
        return Err(invalid());
    }
    Ok(millis)
}

/// Millicores as Kubernetes prints them: whole cores plainly (`2`), else `500m`.
#[must_use]
pub fn format_cpu_millis(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// Binary then decimal suffixes, largest first, with their multipliers.
const MEMORY_SUFFIXES: [(&str, u64); 8] = [
    ("Ti", 1 << 40),
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
    ("Ki", 1 << 10),
    ("T", 1_000_000_000_000),
    ("G", 1_000_000_000),
    ("M", 1_000_000),
    ("k", 1_000),
];

/// Parses a Kubernetes memory quantity (`512Mi`, `4Gi`, `1G`, `1.5Gi`, `1048576`) into bytes.
///
/// # Errors
/// [`InvalidValue`] when `text` is not a positive quantity.
pub fn parse_memory_bytes(text: &str) -> Result<u64, InvalidValue> {
    let invalid = || InvalidValue::new(EXPECTED_MEMORY, text);
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let multiplier = match suffix {
        "" => 1,
        _ => {
            MEMORY_SUFFIXES
                .iter()
                .find(|(s, _)| *s == suffix)
                .ok_or_else(invalid)?
                .1
        }
    };
    let bytes = number * multiplier as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes as u64)
}

/// Bytes as the shortest exact quantity: the largest suffix that divides them (`4Gi`, `1G`,
/// `1536Mi`), else the plain number.
#[must_use]
pub fn format_memory_bytes(bytes: u64) -> String {
    MEMORY_SUFFIXES
        .iter()
        .filter(|(_, m)| bytes >= *m && bytes.is_multiple_of(*m))
        .min_by_key(|(_, m)| (bytes / m).to_string().len())
        .map_or_else(|| bytes.to_string(), |(s, m)| format!("{}{s}", bytes / m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_every_form_they_took_and_compounds() {
        for (text, secs) in [
            ("90", 90),
            ("90s", 90),
            ("30m", 1800),
            ("24h", 86_400),
            ("2d", 172_800),
            ("1h30m", 5400),
            ("2d12h", 216_000),
            ("1m30s", 90),
            (" 5m ", 300),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        for bad in [
            "",
            "soon",
            "0",
            "0s",
            "1x",
            "1h1h",
            "30m1h",
            "1.5h",
            "-1s",
            "h",
            "1 h",
            "1hm",
            // u64 overflow after multiplying, not a panic.
            "999999999999999999d",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(
                err.to_string().contains("expected a duration like"),
                "{err}"
            );
            assert_eq!(err.got, bad);
        }
    }

    #[test]
    fn durations_print_as_they_parse() {
        for (secs, text) in [(90, "1m30s"), (5400, "1h30m"), (86_400, "1d"), (7, "7s")] {
            assert_eq!(format_duration(Duration::from_secs(secs)), text);
            assert_eq!(parse_duration(text), Ok(Duration::from_secs(secs)));
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_memory_bytes("512Mi"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_memory_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory_bytes("1.5Gi"), Ok(1_610_612_736));
        assert_eq!(parse_memory_bytes("1048576"), Ok(1 << 20));
        for bad in ["4 gigs", "0", "-1Gi", "1Gb", ""] {
            let err = parse_memory_bytes(bad).expect_err(bad);
            assert!(err.to_string().contains("memory quantity"), "{err}");
        }
        assert_eq!(parse_cpu_millis("500m"), Ok(500));
        assert_eq!(parse_cpu_millis("2"), Ok(2000));
        assert_eq!(parse_cpu_millis("0.25"), Ok(250));
        for bad in ["0", "lots", "-1", "0m", "NaN", "1e300"] {
            let err = parse_cpu_millis(bad).expect_err(bad);
            assert!(err.to_string().contains("CPU quantity"), "{err}");
        }
    }

    #[test]
    fn quantities_print_canonically_and_read_back() {
        for (bytes, text) in [
            (4u64 << 30, "4Gi"),
            (1_000_000_000, "1G"),
            (1_610_612_736, "1536Mi"),
            (1000, "1k"),
            (1024, "1Ki"),
            (1023, "1023"),
        ] {
            assert_eq!(format_memory_bytes(bytes), text);
            assert_eq!(parse_memory_bytes(text), Ok(bytes));
        }
        for (millis, text) in [(2000, "2"), (500, "500m"), (2500, "2500m")] {
            assert_eq!(format_cpu_millis(millis), text);
            assert_eq!(parse_cpu_millis(text), Ok(millis));
        }
    }
}
