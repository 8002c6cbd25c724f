//! `berth doctor` as data: the config in use, the limits, the engine, what only the backend
//! can check (on Kubernetes: the namespace and claim, every permission berth uses, one
//! SelfSubjectAccessReview each), and the image. Each finding is a typed [`Check`].

use serde::Serialize;

use crate::backend::Backend;
use berth_engine_core::{BackendKind, ErrorKind};

use crate::config::{BerthConfig, ConfigSource, Loaded};
use crate::spec;

/// One finding of `berth doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Check {
    /// What was checked (`engine`, `image`, `rbac: create jobs`).
    #[serde(rename = "check")]
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was seen.
    pub detail: String,
    /// What to do about a failure, when berth knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    /// A passed check.
    #[must_use]
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A failed check.
    #[must_use]
    pub fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            ..Self::pass(name, detail)
        }
    }

    /// With advice on how to fix it.
    #[must_use]
    pub fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// Every check `berth doctor` makes for `loaded`, in order; `image` overrides `runner.image`.
/// The configured builders are checked whatever the engine's state. Nothing is printed.
pub async fn run(loaded: &Loaded, image: Option<&str>) -> Vec<Check> {
    let (mut checks, builders) = tokio::join!(
        engine_checks(loaded, image),
        crate::builders::list(&loaded.config)
    );
    checks.extend(crate::builders::checks(&builders));
    checks
}

/// Where the Docker backend will connect and through what, before connecting.
fn docker_endpoint(config: &BerthConfig) -> Check {
    let docker = crate::backend::docker_config(&config.docker);
    let address = match docker.resolve_address() {
        Ok(address) => address,
        Err(e) => {
            return Check::fail("docker endpoint", e.to_string()).with_fix(
                "fix docker.context (or --docker-context, DOCKER_CONTEXT): `docker context ls` lists the contexts",
            )
        }
    };
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let from = if config.docker.host.is_some() {
        "docker.host or --docker-host".to_owned()
    } else if let Some(context) = &config.docker.context {
        format!("docker context {context} (docker.context or --docker-context)")
    } else if env("DOCKER_HOST").is_some() {
        "DOCKER_HOST".to_owned()
    } else if let Some(context) = env("DOCKER_CONTEXT") {
        format!("docker context {context} (DOCKER_CONTEXT)")
    } else {
        "the docker CLI's current context, else the default socket".to_owned()
    };
    let tls = config.docker.tls.is_set() || env("DOCKER_TLS_VERIFY").is_some();
    let how = match address.split_once("://").map(|(scheme, _)| scheme) {
        Some("ssh") => "over ssh: the system ssh runs `docker system dial-stdio` there",
        Some("tcp" | "https") if tls => "over TCP with TLS, verifying the daemon's certificate",
        Some("tcp" | "http") => "over plain TCP, unencrypted",
        Some("unix") => "a local socket",
        _ => "an address berth does not know",
    };
    Check::pass("docker endpoint", format!("{address}, {how}; from {from}"))
}

/// What to do about a Docker engine that failed to connect.
fn docker_fix(config: &BerthConfig, err: &berth_engine_core::Error) -> Option<String> {
    let address = crate::backend::docker_config(&config.docker).address();
    match err.kind() {
        ErrorKind::Forbidden => Some(format!(
            "ssh refused {address}: check the key and known_hosts of your ssh config (docker.ssh_config), and that the remote user may run docker"
        )),
        ErrorKind::InvalidSpec => Some(
            "fix the setting the error names (docker.host, docker.context or docker.tls.*)".to_owned(),
        ),
        ErrorKind::Unavailable if address.starts_with("ssh://") => Some(format!(
            "check that `ssh {}` logs in without a prompt and `docker version` works there",
            address.trim_start_matches("ssh://")
        )),
        ErrorKind::Unavailable if address.starts_with("tcp://") => Some(
            "check the daemon listens there (dockerd -H tcp://0.0.0.0:2376 --tlsverify ...) and a firewall lets you in".to_owned(),
        ),
        _ => None,
    }
}

async fn engine_checks(loaded: &Loaded, image: Option<&str>) -> Vec<Check> {
    let config = &loaded.config;
    let source = match &loaded.source {
        ConfigSource::Defaults => "built-in defaults".to_owned(),
        ConfigSource::File(p) => p.display().to_string(),
    };
    let mut checks = vec![
        Check::pass("config", source),
        Check::pass("backend", config.runner.backend.to_string()),
        Check::pass("limits", spec::limits(config).note),
    ];
    checks.extend(crate::backend::target_checks(config));
    let docker = config.runner.backend == BackendKind::Docker;
    if docker {
        checks.push(docker_endpoint(config));
    }
    let backend = match Backend::connect(config).await {
        Ok(backend) => backend,
        Err(e) => {
            let fix = docker.then(|| docker_fix(config, &e)).flatten();
            let check = Check::fail("engine", e.to_string());
            checks.push(match fix {
                Some(fix) => check.with_fix(fix),
                None => check,
            });
            return checks;
        }
    };
    let info = match backend.engine().init().await {
        Ok(info) => info,
        Err(e) => {
            checks.push(Check::fail("engine", e.to_string()));
            return checks;
        }
    };
    checks.extend(backend.checks(config).await);
    checks.push(Check::pass(
        "engine",
        format!(
            "{} at {}, server {}{}",
            info.backend,
            info.endpoint,
            info.server_version,
            info.api_version
                .map(|a| format!(", API {a}"))
                .unwrap_or_default()
        ),
    ));
    let image = image
        .map(str::to_owned)
        .or_else(|| config.runner.image.clone());
    checks.push(match image {
        None => Check::fail(
            "image",
            "no image configured (runner.image) or given (--image)",
        ),
        Some(image) => match berth_engine_core::ImageRef::new(image) {
            Ok(image) => backend.check_image(config, &image).await,
            Err(e) => Check::fail("image", e.to_string()),
        },
    });
    checks
}

/// Whether every check passed.
#[must_use]
pub fn all_ok(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.ok)
}
