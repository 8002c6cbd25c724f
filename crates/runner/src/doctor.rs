//! `berth doctor` as data: the config in use, the limits, the engine, what only the backend
//! can check (on Kubernetes: the namespace and claim, every permission berth uses, one
//! SelfSubjectAccessReview each), and the image. Each finding is a typed [`Check`].

use serde::Serialize;

use crate::backend::Backend;
use crate::config::{ConfigSource, Loaded};
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
/// Nothing is printed.
pub async fn run(loaded: &Loaded, image: Option<&str>) -> Vec<Check> {
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
    let backend = match Backend::connect(config).await {
        Ok(backend) => backend,
        Err(e) => {
            checks.push(Check::fail("engine", e.to_string()));
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
