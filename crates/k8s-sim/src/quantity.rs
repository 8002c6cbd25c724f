//! Resource quantities in apimachinery's canonical form, as the API server stores them: a
//! request for `1000m` CPU reads back as `1`, `1.5Gi` as `1536Mi`, `0.5` as `500m`.
//!
//! The rules (k8s.io/apimachinery `resource.Quantity.CanonicalizeBytes`): the format comes from
//! the suffix (binary `Ki`..`Ei`, decimal SI `n`..`E` or none, decimal exponent `e3`); no
//! precision is lost, no fractional digits are written, and the suffix is as large as
//! possible. A binary quantity below 1024 or not a whole number is written in decimal SI.
//! Precision finer than `1n` is rounded up.

use serde_json::Value;

/// The message the API server gives for a string that is no quantity.
pub(crate) const QUANTITY_SYNTAX: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    BinarySi,
    DecimalSi,
    DecimalExponent,
}

/// `mantissa × 10^exponent`, exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decimal {
    mantissa: i128,
    exponent: i32,
}

impl Decimal {
    /// Strips trailing zeros of the mantissa into the exponent.
    fn reduced(mut self) -> Self {
        if self.mantissa == 0 {
            return Self {
                mantissa: 0,
                exponent: 0,
            };
        }
        while self.mantissa % 10 == 0 {
            self.mantissa /= 10;
            self.exponent += 1;
        }
        self
    }

    /// The integer value when there is one (and it fits).
    fn integer(self) -> Option<i128> {
        let d = self.reduced();
        if d.exponent < 0 {
            return None;
        }
        let scale = 10_i128.checked_pow(u32::try_from(d.exponent).ok()?)?;
        d.mantissa.checked_mul(scale)
    }
}

/// Parses `s` into its value and format, or `None` when it is no quantity.
fn parse(s: &str) -> Option<(Decimal, Format)> {
    let (negative, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let number_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return None;
    }
    let digits = format!("{whole}{fraction}");
    let mut mantissa: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let mut exponent = -i32::try_from(fraction.len()).ok()?;
    let (format, binary_power, decimal_power) = match suffix {
        "Ki" => (Format::BinarySi, 1, 0),
        "Mi" => (Format::BinarySi, 2, 0),
        "Gi" => (Format::BinarySi, 3, 0),
        "Ti" => (Format::BinarySi, 4, 0),
        "Pi" => (Format::BinarySi, 5, 0),
        "Ei" => (Format::BinarySi, 6, 0),
        "n" => (Format::DecimalSi, 0, -9),
        "u" => (Format::DecimalSi, 0, -6),
        "m" => (Format::DecimalSi, 0, -3),
        "" => (Format::DecimalSi, 0, 0),
        "k" => (Format::DecimalSi, 0, 3),
        "M" => (Format::DecimalSi, 0, 6),
        "G" => (Format::DecimalSi, 0, 9),
        "T" => (Format::DecimalSi, 0, 12),
        "P" => (Format::DecimalSi, 0, 15),
        "E" => (Format::DecimalSi, 0, 18),
        other => {
            let exp = other.strip_prefix(['e', 'E'])?;
            let exp: i32 = exp.parse().ok()?;
            (Format::DecimalExponent, 0, exp)
        }
    };
    exponent += decimal_power;
    for _ in 0..binary_power {
        mantissa = mantissa.checked_mul(1024)?;
    }
    // Finer than a nano unit is rounded up, away from zero, as the API server does.
    let mut d = Decimal { mantissa, exponent }.reduced();
    if d.exponent < -9 {
        let shift = u32::try_from(-9 - d.exponent).ok()?;
        let div = 10_i128.checked_pow(shift)?;
        let up = d.mantissa % div != 0;
        d = Decimal {
            mantissa: d.mantissa / div + i128::from(up),
            exponent: -9,
        };
    }
    if negative {
        d.mantissa = -d.mantissa;
    }
    Some((d, format))
}

/// `q` in canonical form, or `None` when it is no quantity. JSON numbers (YAML's `cpu: 2`)
/// count, as they do for the API server.
pub(crate) fn canonical(q: &Value) -> Option<String> {
    let text = match q {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let (value, format) = parse(&text)?;
    if value.mantissa == 0 {
        return Some("0".to_owned());
    }
    if format == Format::BinarySi {
        if let Some(n) = value.integer().filter(|n| n.abs() >= 1024) {
            let mut n = n;
            let mut power = 0;
            while power < 6 && n % 1024 == 0 {
                n /= 1024;
                power += 1;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][power];
            return Some(format!("{n}{suffix}"));
        }
    }
    // Decimal: the exponent a multiple of three, as large as possible without fractions.
    let Decimal {
        mut mantissa,
        mut exponent,
    } = value.reduced();
    while exponent.rem_euclid(3) != 0 {
        mantissa *= 10;
        exponent -= 1;
    }
    let suffix = if format == Format::DecimalExponent {
        if exponent == 0 {
            String::new()
        } else {
            format!("e{exponent}")
        }
    } else {
        match exponent {
            -9 => "n".to_owned(),
            -6 => "u".to_owned(),
            -3 => "m".to_owned(),
            0 => String::new(),
            3 => "k".to_owned(),
            6 => "M".to_owned(),
            9 => "G".to_owned(),
            12 => "T".to_owned(),
            15 => "P".to_owned(),
            18 => "E".to_owned(),
            e if e > 18 => {
                // Past exa: the mantissa grows instead.
                let scale = 10_i128.checked_pow(u32::try_from(e - 18).ok()?)?;
                mantissa = mantissa.checked_mul(scale)?;
                "E".to_owned()
            }
            _ => return None,
        }
    };
    Some(format!("{mantissa}{suffix}"))
}

/// The member at `path` under `v`, when every step exists (indexing a `Value` mutably would
/// create the missing ones as `null`).
fn at<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, k| v.get_mut(*k))
}

/// Rewrites every value of the quantity map at `path` (a `requests`, `limits`, `capacity` or
/// `overhead` object) in canonical form; the first value that is no quantity is an error.
fn canonical_map(v: &mut Value, path: &[&str]) -> Result<(), String> {
    if let Some(m) = at(v, path).and_then(Value::as_object_mut) {
        for q in m.values_mut() {
            *q = Value::String(canonical(q).ok_or_else(|| QUANTITY_SYNTAX.to_owned())?);
        }
    }
    Ok(())
}

/// Canonicalizes the quantities of a pod spec: container resources, pod `resources` and
/// `overhead`, emptyDir size limits.
pub(crate) fn canonicalize_pod_spec(spec: &mut Value) -> Result<(), String> {
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        if let Some(cs) = at(spec, &[list]).and_then(Value::as_array_mut) {
            for c in cs {
                canonical_map(c, &["resources", "requests"])?;
                canonical_map(c, &["resources", "limits"])?;
            }
        }
    }
    canonical_map(spec, &["overhead"])?;
    canonical_map(spec, &["resources", "requests"])?;
    canonical_map(spec, &["resources", "limits"])?;
    if let Some(volumes) = at(spec, &["volumes"]).and_then(Value::as_array_mut) {
        for v in volumes {
            if let Some(q) = at(v, &["emptyDir", "sizeLimit"]).filter(|q| !q.is_null()) {
                *q = Value::String(canonical(q).ok_or_else(|| QUANTITY_SYNTAX.to_owned())?);
            }
        }
    }
    Ok(())
}

/// Canonicalizes the quantities of a claim's spec and status.
pub(crate) fn canonicalize_claim(pvc: &mut Value) -> Result<(), String> {
    canonical_map(pvc, &["spec", "resources", "requests"])?;
    canonical_map(pvc, &["spec", "resources", "limits"])?;
    canonical_map(pvc, &["status", "capacity"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn c(s: &str) -> String {
        canonical(&json!(s)).unwrap_or_else(|| panic!("{s} is a quantity"))
    }

    #[test]
    fn decimal_si() {
        assert_eq!(c("1000m"), "1");
        assert_eq!(c("1500m"), "1500m");
        assert_eq!(c("0.5"), "500m");
        assert_eq!(c("0.1"), "100m");
        assert_eq!(c("100m"), "100m");
        assert_eq!(c("2"), "2");
        assert_eq!(c("1000"), "1k");
        assert_eq!(c("1500"), "1500");
        assert_eq!(c("64M"), "64M");
        assert_eq!(c("1000k"), "1M");
        assert_eq!(c("0"), "0");
        assert_eq!(c("0Gi"), "0");
        assert_eq!(c("-1000m"), "-1");
        assert_eq!(c("+2"), "2");
        assert_eq!(c("1.5"), "1500m");
        assert_eq!(c("0.0000000001"), "1n");
        assert_eq!(c("12n"), "12n");
        assert_eq!(c("1000u"), "1m");
    }

    #[test]
    fn binary_si() {
        assert_eq!(c("1Gi"), "1Gi");
        assert_eq!(c("1024Mi"), "1Gi");
        assert_eq!(c("1536Mi"), "1536Mi");
        assert_eq!(c("1.5Gi"), "1536Mi");
        assert_eq!(c("0.5Gi"), "512Mi");
        assert_eq!(c("1000Mi"), "1000Mi");
        assert_eq!(c("1024Ki"), "1Mi");
        // Below 1024 or fractional: decimal SI.
        assert_eq!(c("0.5Ki"), "512");
        assert_eq!(c("1.5Ki"), "1536");
        assert_eq!(c("0.001Ki"), "1024m");
    }

    #[test]
    fn decimal_exponent() {
        assert_eq!(c("1e3"), "1e3");
        assert_eq!(c("1E3"), "1e3");
        assert_eq!(c("1.5e3"), "1500");
        assert_eq!(c("10e3"), "10e3");
        assert_eq!(c("1e6"), "1e6");
    }

    #[test]
    fn numbers_and_garbage() {
        assert_eq!(canonical(&json!(2)).as_deref(), Some("2"));
        assert_eq!(canonical(&json!(0.5)).as_deref(), Some("500m"));
        for bad in ["", "abc", "1..2", "1Zi", "Gi", "1 Gi", "--1"] {
            assert_eq!(canonical(&json!(bad)), None, "{bad:?}");
        }
        assert_eq!(canonical(&json!(true)), None);
    }

    #[test]
    fn pod_specs_and_claims() {
        let mut spec = json!({"containers": [{"name": "a", "resources": {
            "requests": {"cpu": "1000m", "memory": "1024Mi"}, "limits": {"cpu": 2}}}],
            "volumes": [{"name": "v", "emptyDir": {"sizeLimit": "0.5Gi"}}, {"name": "w", "emptyDir": {}}]});
        canonicalize_pod_spec(&mut spec).expect("valid");
        assert_eq!(
            spec,
            json!({"containers": [{"name": "a", "resources": {
                "requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2"}}}],
                "volumes": [{"name": "v", "emptyDir": {"sizeLimit": "512Mi"}}, {"name": "w", "emptyDir": {}}]})
        );
        let mut bad = json!({"containers": [{"resources": {"limits": {"cpu": "lots"}}}]});
        assert_eq!(
            canonicalize_pod_spec(&mut bad),
            Err(QUANTITY_SYNTAX.to_owned())
        );
        let mut pvc = json!({"spec": {"resources": {"requests": {"storage": "1024Mi"}}}});
        canonicalize_claim(&mut pvc).expect("valid");
        assert_eq!(
            pvc,
            json!({"spec": {"resources": {"requests": {"storage": "1Gi"}}}})
        );
    }
}
