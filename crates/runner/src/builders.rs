//! Named remote builders (`builders:` in the config): Docker daemons that build images,
//! reached over ssh, TLS, a docker context or a socket. [`list`] says whether each is up and
//! what it runs on; [`build`] streams a context to one and returns the image; [`checks`]
//! are `berth doctor`'s findings about them.
//!
//! ```no_run
//! use berth_engine_core::{BuildSpec, ImageRef, Progress};
//! use berth_runner::builders;
//! use berth_runner::config::BerthConfig;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = BerthConfig::from_yaml_str("builders:\n  arm:\n    host: ssh://build@arm-1\n")?;
//! for status in builders::list(&config).await {
//!     println!("{}: reachable {}", status.name, status.reachable);
//! }
//! let context = berth_runner::build_context::pack(std::path::Path::new("."), "Dockerfile")?;
//! let build = BuildSpec::new(ImageRef::new("team/app:1")?, context);
//! let image = builders::build(&config, "arm", build, false, &Progress::none()).await?;
//! println!("{}", image.id.unwrap_or_default());
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;

use berth_engine_core::{BuildSpec, ErrorKind, ImageInfo, ImageRef, Progress};
use berth_engine_docker::{DaemonInfo, DockerConfig, DockerEngine};
use serde::Serialize;

use crate::config::{BerthConfig, BuilderConfig};
use crate::doctor::Check;

/// A builder's failures; each names the builder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuilderError {
    /// `--builder NAME` names no entry of `builders:`.
    #[error("unknown builder {name:?}: {}", known_list(.known))]
    Unknown {
        /// The name given.
        name: String,
        /// The configured names.
        known: Vec<String>,
    },
    /// The builder's daemon cannot be reached (or refuses the credentials).
    #[error("builder {name} ({address}) is unreachable")]
    Unreachable {
        /// The builder.
        name: String,
        /// Its host or context.
        address: String,
        /// The engine's error.
        #[source]
        source: Box<berth_engine_core::Error>,
    },
    /// The connection to the builder was lost during the build. The daemon cancels a build
    /// whose client is gone, so the tag was not applied.
    #[error("builder {name} ({address}) went away during the build of {tag}; the build was not completed and {tag} was not tagged there")]
    Lost {
        /// The builder.
        name: String,
        /// Its host or context.
        address: String,
        /// The tag that was being built.
        tag: String,
        /// The engine's error.
        #[source]
        source: Box<berth_engine_core::Error>,
    },
    /// A build step failed, or the push did.
    #[error("on builder {name}")]
    Failed {
        /// The builder.
        name: String,
        /// The engine's error.
        #[source]
        source: Box<berth_engine_core::Error>,
    },
    /// `--push` without `builders.NAME.registry`, or a tag outside that registry.
    #[error("--push: {reason}")]
    Push {
        /// What is missing or wrong.
        reason: String,
    },
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "no builders are configured (add them under builders: in the config)".to_owned()
    } else {
        format!("expected one of {}", known.join(", "))
    }
}

/// What `berth builder ls` shows of one builder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BuilderStatus {
    /// Its name in `builders:`.
    pub name: String,
    /// Its host, or `context NAME`.
    pub address: String,
    /// The configured platform, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The configured labels.
    pub labels: BTreeMap<String, String>,
    /// Whether its daemon answered.
    pub reachable: bool,
    /// Why it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the daemon said about its machine, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonInfo>,
}

/// The Docker settings of `builder`.
fn docker_config(builder: &BuilderConfig) -> DockerConfig {
    crate::backend::docker_endpoint(
        builder.host.as_ref(),
        builder.context.as_ref(),
        builder.ssh_config.as_ref(),
        &builder.tls,
    )
}

fn address(builder: &BuilderConfig) -> String {
    match (&builder.host, &builder.context) {
        (Some(host), _) => host.clone(),
        (None, Some(context)) => format!("context {context}"),
        (None, None) => "nowhere".to_owned(),
    }
}

fn lookup<'a>(config: &'a BerthConfig, name: &str) -> Result<&'a BuilderConfig, BuilderError> {
    config
        .builders
        .get(name)
        .ok_or_else(|| BuilderError::Unknown {
            name: name.to_owned(),
            known: config.builders.keys().cloned().collect(),
        })
}

/// Connects to builder `name`.
///
/// # Errors
/// [`BuilderError::Unknown`] or [`BuilderError::Unreachable`].
pub async fn connect(config: &BerthConfig, name: &str) -> Result<DockerEngine, BuilderError> {
    let builder = lookup(config, name)?;
    DockerEngine::connect(&docker_config(builder))
        .await
        .map_err(|source| BuilderError::Unreachable {
            name: name.to_owned(),
            address: address(builder),
            source: Box::new(source),
        })
}

async fn status(name: &str, builder: &BuilderConfig) -> BuilderStatus {
    let mut status = BuilderStatus {
        name: name.to_owned(),
        address: address(builder),
        platform: builder.platform.clone(),
        labels: builder.labels.clone(),
        reachable: false,
        error: None,
        daemon: None,
    };
    let info = match DockerEngine::connect(&docker_config(builder)).await {
        Ok(engine) => engine.daemon_info().await,
        Err(e) => Err(e),
    };
    match info {
        Ok(info) => {
            status.reachable = true;
            status.daemon = Some(info);
        }
        Err(e) => status.error = Some(e.to_string()),
    }
    status
}

/// Every configured builder, probed at once, in name order. Nothing fails: an unreachable
/// builder is a status with its error.
pub async fn list(config: &BerthConfig) -> Vec<BuilderStatus> {
    futures_util::future::join_all(config.builders.iter().map(|(name, b)| status(name, b))).await
}

/// `berth doctor`'s findings: each builder reachable, and building for its configured
/// platform.
#[must_use]
pub fn checks(statuses: &[BuilderStatus]) -> Vec<Check> {
    statuses
        .iter()
        .map(|s| {
            let name = format!("builder {}", s.name);
            match (&s.daemon, &s.error) {
                (Some(d), _) => match &s.platform {
                    Some(p) if !p.starts_with(&d.platform()) => Check::fail(
                        name,
                        format!("{} is {} but builders.{}.platform is {p}", s.address, d.platform(), s.name),
                    )
                    .with_fix(format!(
                        "point builders.{} at a {p} machine, or set its platform to {}",
                        s.name,
                        d.platform()
                    )),
                    _ => Check::pass(
                        name,
                        format!(
                            "{} reachable, Docker {}, {}, {} CPUs",
                            s.address,
                            d.server_version,
                            d.platform(),
                            d.cpus
                        ),
                    ),
                },
                (None, error) => Check::fail(
                    name,
                    error.clone().unwrap_or_else(|| "unreachable".to_owned()),
                )
                .with_fix(format!(
                    "check builders.{}: is the machine up with Docker running, and does `ssh`/the TLS files reach it? (`berth builder ls` shows every builder)",
                    s.name
                )),
            }
        })
        .collect()
}

/// Builds `build` on builder `name` for its platform, with progress, and with `push`
/// pushes the tag to the builder's registry.
///
/// # Errors
/// [`BuilderError::Unknown`], [`BuilderError::Push`] (before anything is sent) when
/// `push` is set without a registry or the tag is outside it, [`BuilderError::Unreachable`],
/// [`BuilderError::Lost`] when the builder goes away mid-build, [`BuilderError::Failed`]
/// when a step or the push fails.
pub async fn build(
    config: &BerthConfig,
    name: &str,
    build: BuildSpec,
    push: bool,
    progress: &Progress,
) -> Result<ImageInfo, BuilderError> {
    let builder = lookup(config, name)?;
    if push {
        check_push(name, builder, &build.tag)?;
    }
    let engine = connect(config, name).await?;
    let tag = build.tag.clone();
    let info = engine
        .build_image_for(build, builder.platform.as_deref(), progress)
        .await
        .map_err(|source| match source.kind() {
            ErrorKind::Unavailable => BuilderError::Lost {
                name: name.to_owned(),
                address: address(builder),
                tag: tag.to_string(),
                source: Box::new(source),
            },
            _ => BuilderError::Failed {
                name: name.to_owned(),
                source: Box::new(source),
            },
        })?;
    if push {
        engine
            .push_image(&tag, progress)
            .await
            .map_err(|source| BuilderError::Failed {
                name: name.to_owned(),
                source: Box::new(source),
            })?;
    }
    Ok(info)
}

fn check_push(name: &str, builder: &BuilderConfig, tag: &ImageRef) -> Result<(), BuilderError> {
    let Some(registry) = &builder.registry else {
        return Err(BuilderError::Push {
            reason: format!("no registry is configured for builder {name}; set builders.{name}.registry (host[:port][/path]) and tag the image under it"),
        });
    };
    if !tag.as_str().starts_with(&format!("{registry}/")) {
        return Err(BuilderError::Push {
            reason: format!("the tag {tag} is not under builder {name}'s registry {registry}; tag it {registry}/NAME:TAG"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_needs_a_registry_and_a_tag_under_it() {
        let config = BerthConfig::from_yaml_str(
            "builders:\n  a:\n    host: ssh://h\n  b:\n    host: ssh://h\n    registry: reg.example:5000/team\n",
        )
        .unwrap();
        let tag = ImageRef::new("reg.example:5000/team/app:1").unwrap();
        let err = check_push("a", &config.builders["a"], &tag).unwrap_err();
        assert!(err.to_string().contains("builders.a.registry"), "{err}");
        check_push("b", &config.builders["b"], &tag).unwrap();
        let other = ImageRef::new("app:1").unwrap();
        let err = check_push("b", &config.builders["b"], &other).unwrap_err();
        assert!(err.to_string().contains("not under"), "{err}");
    }

    #[tokio::test]
    async fn an_unknown_builder_names_the_known_ones() {
        let config = BerthConfig::from_yaml_str("builders:\n  arm:\n    host: ssh://h\n").unwrap();
        let err = connect(&config, "amd").await.unwrap_err();
        assert!(err.to_string().contains("expected one of arm"), "{err}");
        let empty = BerthConfig::default();
        let err = connect(&empty, "amd").await.unwrap_err();
        assert!(
            err.to_string().contains("no builders are configured"),
            "{err}"
        );
    }
}
