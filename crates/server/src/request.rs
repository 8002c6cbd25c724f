//! A job submission: the seed's body, checked field by field before anything runs.
//!
//! Fields: `job_id` (any JSON value, echoed back), `docker_image`, `env_vars`, `cpu_limit`,
//! `memory_limit`, `command` (argv) or `script` (run by `sh -c`), `timeout_seconds`, and the
//! source fields `git_url`, `git_branch`, `github_token_encrypted`, `git_token`. Any other
//! field is refused with its name.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_engine_core::{validate_env, ImageRef};
use berth_runner::config::{
    format_cpu_millis, format_duration, format_memory_bytes, parse_cpu_millis, parse_memory_bytes,
    ServerSection,
};
use serde_json::{Map, Value};

use crate::error::ServerError;
use crate::source::{JobSource, SourceToken};

/// The fields a job body may have.
pub const FIELDS: [&str; 12] = [
    "job_id",
    "docker_image",
    "env_vars",
    "cpu_limit",
    "memory_limit",
    "command",
    "script",
    "timeout_seconds",
    "git_url",
    "git_branch",
    "github_token_encrypted",
    "git_token",
];

/// A checked job submission.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobRequest {
    /// The caller's id, echoed back as given.
    pub job_id: Option<Value>,
    /// The image; `None` means `runner.image`.
    pub image: Option<ImageRef>,
    /// Variables of the command.
    pub env: BTreeMap<String, String>,
    /// CPU limit in millicores; `None` means the config's.
    pub cpu_millis: Option<u64>,
    /// Memory limit in bytes; `None` means the config's.
    pub memory_bytes: Option<u64>,
    /// What runs: an argv (`script` becomes `sh -c SCRIPT`).
    pub argv: Vec<String>,
    /// The job's timeout (the server's default when none was given).
    pub timeout: Duration,
    /// A repository to check out into the workspace first.
    pub source: Option<JobSource>,
}

impl JobRequest {
    /// Parses and checks `body` against the server's limits.
    ///
    /// # Errors
    /// [`ServerError::BadRequest`] naming the field (an unknown one included);
    /// [`ServerError::OverLimit`] naming the field and the maximum.
    pub fn parse(body: &[u8], limits: &ServerSection) -> Result<Self, ServerError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ServerError::bad("body", format!("expected a JSON object: {e}")))?;
        let Value::Object(mut map) = value else {
            return Err(ServerError::bad("body", "expected a JSON object"));
        };
        if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(ServerError::bad(
                unknown.clone(),
                format!("unknown field; expected one of {}", FIELDS.join(", ")),
            ));
        }
        let job_id = map.remove("job_id").filter(|v| !v.is_null());
        let image = take_string(&mut map, "docker_image")?
            .map(|i| ImageRef::new(i).map_err(|e| ServerError::bad("docker_image", e.to_string())))
            .transpose()?;
        let env = take_env(&mut map)?;
        let argv = take_argv(&mut map)?;
        let cpu_millis = take_cpu(&mut map, limits)?;
        let memory_bytes = take_memory(&mut map, limits)?;
        let timeout = take_timeout(&mut map, limits)?;
        let source = take_source(&mut map, limits)?;
        Ok(Self {
            job_id,
            image,
            env,
            cpu_millis,
            memory_bytes,
            argv,
            timeout,
            source,
        })
    }
}

fn take_string(map: &mut Map<String, Value>, field: &str) -> Result<Option<String>, ServerError> {
    match map.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => {
            Err(ServerError::bad(field, "expected a non-empty string"))
        }
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ServerError::bad(
            field,
            format!("expected a string, got {other}"),
        )),
    }
}

fn take_env(map: &mut Map<String, Value>) -> Result<BTreeMap<String, String>, ServerError> {
    let env = match map.remove("env_vars") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(vars)) => vars
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                Value::Number(n) => Ok((k, n.to_string())),
                Value::Bool(b) => Ok((k, b.to_string())),
                other => Err(ServerError::bad(
                    "env_vars",
                    format!("the value of {k:?} must be a string, got {other}"),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ServerError::bad(
                "env_vars",
                format!("expected an object of NAME: value, got {other}"),
            ))
        }
    };
    validate_env(&env).map_err(|e| ServerError::bad("env_vars", e.to_string()))?;
    Ok(env)
}

fn take_argv(map: &mut Map<String, Value>) -> Result<Vec<String>, ServerError> {
    let command = map.remove("command").filter(|v| !v.is_null());
    let script = take_string(map, "script")?;
    match (command, script) {
        (Some(_), Some(_)) => Err(ServerError::bad(
            "command",
            "give command (an argv) or script (run by sh -c), not both",
        )),
        (None, None) => Err(ServerError::bad(
            "command",
            "missing: give command (an argv array) or script (run by sh -c)",
        )),
        (None, Some(script)) => Ok(vec!["sh".into(), "-c".into(), script]),
        (Some(Value::Array(items)), None) => {
            let argv: Vec<String> = items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) if !s.contains('\0') => Ok(s),
                    other => Err(ServerError::bad(
                        "command",
                        format!("expected an array of strings without NUL, got element {other}"),
                    )),
                })
                .collect::<Result<_, _>>()?;
            if argv.first().is_none_or(String::is_empty) {
                return Err(ServerError::bad(
                    "command",
                    "expected a non-empty argv whose first element names a program",
                ));
            }
            Ok(argv)
        }
        (Some(other), None) => Err(ServerError::bad(
            "command",
            format!("expected an array of strings (argv), got {other}"),
        )),
    }
}

/// A number or a string, as text.
fn quantity_text(field: &str, value: Value) -> Result<String, ServerError> {
    match value {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(ServerError::bad(
            field,
            format!("expected a number or a string, got {other}"),
        )),
    }
}

fn take_cpu(
    map: &mut Map<String, Value>,
    limits: &ServerSection,
) -> Result<Option<u64>, ServerError> {
    let Some(value) = map.remove("cpu_limit").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let text = quantity_text("cpu_limit", value)?;
    let millis =
        parse_cpu_millis(&text).map_err(|e| ServerError::bad("cpu_limit", e.to_string()))?;
    let max = limits.max_cpu.millis();
    if millis > max {
        return Err(ServerError::OverLimit {
            field: "cpu_limit",
            asked: format_cpu_millis(millis),
            maximum: format_cpu_millis(max),
            setting: "server.max_cpu",
        });
    }
    Ok(Some(millis))
}

/// Memory as the seed sends it (Docker's `512m`, `1g`: lowercase `b`, `k`, `m`, `g` are
/// binary units as in `docker run --memory`) or as a Kubernetes quantity (`512Mi`, `1G`).
pub fn parse_memory(text: &str) -> Option<u64> {
    let t = text.trim();
    let docker = [('b', 1u64), ('k', 1 << 10), ('m', 1 << 20), ('g', 1 << 30)];
    for (suffix, unit) in docker {
        if let Some(number) = t.strip_suffix(suffix) {
            if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                let n: f64 = number.parse().ok()?;
                let bytes = n * unit as f64;
                return (bytes >= 1.0 && bytes.is_finite()).then_some(bytes as u64);
            }
        }
    }
    parse_memory_bytes(t).ok()
}

fn take_memory(
    map: &mut Map<String, Value>,
    limits: &ServerSection,
) -> Result<Option<u64>, ServerError> {
    let Some(value) = map.remove("memory_limit").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let text = quantity_text("memory_limit", value)?;
    let bytes = parse_memory(&text).ok_or_else(|| {
        ServerError::bad(
            "memory_limit",
            format!("expected a memory quantity like 512m, 1g, 512Mi or 1Gi, got {text:?}"),
        )
    })?;
    let max = limits.max_memory.bytes();
    if bytes > max {
        return Err(ServerError::OverLimit {
            field: "memory_limit",
            asked: format_memory_bytes(bytes),
            maximum: format_memory_bytes(max),
            setting: "server.max_memory",
        });
    }
    Ok(Some(bytes))
}

fn take_timeout(
    map: &mut Map<String, Value>,
    limits: &ServerSection,
) -> Result<Duration, ServerError> {
    let timeout = match map.remove("timeout_seconds").filter(|v| !v.is_null()) {
        None => return Ok(limits.default_job_timeout.get()),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(s) if s > 0.0 && s.is_finite() && s < 1e12 => Duration::from_secs_f64(s),
            _ => {
                return Err(ServerError::bad(
                    "timeout_seconds",
                    format!("expected a positive number of seconds, got {n}"),
                ))
            }
        },
        Some(other) => {
            return Err(ServerError::bad(
                "timeout_seconds",
                format!("expected a positive number of seconds, got {other}"),
            ))
        }
    };
    let max = limits.max_job_timeout.get();
    if timeout > max {
        return Err(ServerError::OverLimit {
            field: "timeout_seconds",
            asked: format!("{}s", timeout.as_secs_f64()),
            maximum: format_duration(max),
            setting: "server.max_job_timeout",
        });
    }
    Ok(timeout)
}

fn take_source(
    map: &mut Map<String, Value>,
    limits: &ServerSection,
) -> Result<Option<JobSource>, ServerError> {
    let url = take_string(map, "git_url")?;
    let branch = take_string(map, "git_branch")?;
    let encrypted = take_string(map, "github_token_encrypted")?;
    let plain = take_string(map, "git_token")?;
    let Some(url) = url else {
        for (field, given) in [
            ("git_branch", branch.is_some()),
            ("github_token_encrypted", encrypted.is_some()),
            ("git_token", plain.is_some()),
        ] {
            if given {
                return Err(ServerError::bad(field, "given without git_url"));
            }
        }
        return Ok(None);
    };
    let token = match (encrypted, plain) {
        (Some(_), Some(_)) => {
            return Err(ServerError::bad(
                "git_token",
                "give git_token or github_token_encrypted, not both",
            ))
        }
        (Some(t), None) => Some(SourceToken::Encrypted(t)),
        (None, Some(t)) => Some(SourceToken::Plain(t)),
        (None, None) => None,
    };
    Ok(Some(JobSource::new(url, branch, token, limits)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<JobRequest, ServerError> {
        JobRequest::parse(body.as_bytes(), &ServerSection::default())
    }

    fn field_of(body: &str) -> String {
        parse(body)
            .expect_err(body)
            .field()
            .unwrap_or("")
            .to_owned()
    }

    #[test]
    fn the_seed_body_parses() {
        let req = parse(
            r#"{"job_id": 123, "docker_image": "busybox:1", "env_vars": {"FOO": "bar", "N": 1},
                "cpu_limit": "1.0", "memory_limit": "512m", "script": "echo hi",
                "timeout_seconds": 5}"#,
        )
        .unwrap();
        assert_eq!(req.job_id, Some(Value::from(123)));
        assert_eq!(req.argv, ["sh", "-c", "echo hi"]);
        assert_eq!(req.cpu_millis, Some(1000));
        assert_eq!(req.memory_bytes, Some(512 << 20));
        assert_eq!(req.env["N"], "1");
        assert_eq!(req.timeout, Duration::from_secs(5));
        let req = parse(r#"{"command": ["echo", "a b"]}"#).unwrap();
        assert_eq!(req.argv, ["echo", "a b"]);
        assert_eq!(
            req.timeout,
            ServerSection::default().default_job_timeout.get()
        );
    }

    #[test]
    fn bad_fields_are_named() {
        assert_eq!(field_of(r#"{"script": "x", "pipeline": 1}"#), "pipeline");
        assert_eq!(field_of(r#"{"script": "x", "command": ["y"]}"#), "command");
        assert_eq!(field_of(r#"{}"#), "command");
        assert_eq!(field_of(r#"{"command": []}"#), "command");
        assert_eq!(field_of(r#"{"command": "echo"}"#), "command");
        assert_eq!(
            field_of(r#"{"script": "x", "env_vars": {"A=B": "1"}}"#),
            "env_vars"
        );
        assert_eq!(
            field_of(r#"{"script": "x", "docker_image": "UPPER CASE"}"#),
            "docker_image"
        );
        assert_eq!(
            field_of(r#"{"script": "x", "timeout_seconds": 0}"#),
            "timeout_seconds"
        );
        assert_eq!(
            field_of(r#"{"script": "x", "cpu_limit": "lots"}"#),
            "cpu_limit"
        );
        assert_eq!(
            field_of(r#"{"script": "x", "git_branch": "main"}"#),
            "git_branch"
        );
        assert_eq!(field_of("[1]"), "body");
        assert_eq!(field_of("{"), "body");
    }

    #[test]
    fn limits_above_the_maxima_are_422_with_the_maximum() {
        for (body, field, max) in [
            (r#"{"script": "x", "cpu_limit": 16}"#, "cpu_limit", "4"),
            (
                r#"{"script": "x", "memory_limit": "64Gi"}"#,
                "memory_limit",
                "8Gi",
            ),
            (
                r#"{"script": "x", "timeout_seconds": 86400}"#,
                "timeout_seconds",
                "6h",
            ),
        ] {
            let err = parse(body).expect_err(body);
            assert_eq!(err.status(), 422, "{err}");
            assert_eq!(err.field(), Some(field));
            assert!(err.to_string().contains(max), "{err}");
        }
    }

    #[test]
    fn docker_and_kubernetes_memory_quantities() {
        assert_eq!(parse_memory("512m"), Some(512 << 20));
        assert_eq!(parse_memory("1g"), Some(1 << 30));
        assert_eq!(parse_memory("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_memory("1G"), Some(1_000_000_000));
        assert_eq!(parse_memory("lots"), None);
    }
}
