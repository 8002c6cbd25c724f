//! Batch runs as every front end does them: a [`RunSpec`] from the config, the image made
//! present first where the backend needs it, then `submit`; logs followed across dropped
//! connections (resumed from the last line's cursor, each line exactly once); and the true
//! outcome waited for from the run's status, never from the end of its logs.
//!
//! ```no_run
//! use berth_runner::config::{BerthConfig, LoadOptions};
//! use berth_runner::spec::EnvOptions;
//! use berth_runner::{backend, runs};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = BerthConfig::load(&LoadOptions::default())?.config;
//! let engine = backend::connect(&config).await?;
//! let spec = runs::run_spec(&config, &EnvOptions::named("nightly"), vec!["make".into(), "test".into()], None)?;
//! let run = runs::submit(engine.as_ref(), &spec, config.runner.pull_policy).await?;
//! let status = runs::watch(engine.as_ref(), &run, |line| print!("{}", String::from_utf8_lossy(&line.data))).await?;
//! println!("{run}: {} (exit code {:?})", status.state, status.exit_code);
//! # Ok(()) }
//! ```

use std::time::Duration;

use berth_engine_core::{
    BackendKind, ContainerEngine, ErrorKind, LogCursor, LogLine, LogOptions, PullPolicy, RunId,
    RunSource, RunSpec, RunStatus,
};
use futures_util::StreamExt;

use crate::config::BerthConfig;
use crate::error::{Result, RunnerError};
use crate::image;
use crate::render::kinds::{self, Kind, ManifestError, RunManifest};
use crate::spec::{environment_spec, EnvOptions};
use berth_engine_k8s::KubernetesEngine;

/// How often a waiter asks for a run's status.
const POLL: Duration = Duration::from_millis(500);
/// How many times in a row a follower reopens a stream that failed without delivering a line.
const MAX_RECONNECTS: u32 = 30;

/// The spec of a run of `command` made as `options` and the config say an environment is,
/// on `schedule` when given.
///
/// # Errors
/// As [`environment_spec`], and the engine's `InvalidSpec` naming `command` or `schedule`.
pub fn run_spec(
    config: &BerthConfig,
    options: &EnvOptions,
    command: Vec<String>,
    schedule: Option<String>,
) -> Result<RunSpec> {
    let env = environment_spec(config, options)?;
    let mut spec = RunSpec::new(env, command);
    spec.schedule = schedule;
    spec.validate()?;
    Ok(spec)
}

/// `berth submit --git URL [--branch B]`: the repository cloned into the run's workspace
/// before its command starts, which then starts in it.
#[must_use]
pub fn git(url: impl Into<String>, branch: Option<String>) -> RunSource {
    RunSource::Git {
        url: url.into(),
        branch,
    }
}

/// Makes the image present (as `policy` says, where the backend needs it first) and submits
/// the run; returns its name at once.
///
/// # Errors
/// [`RunnerError::ImageMissing`], or the engine's error.
///
/// A [`RunSource::Git`] on Docker is checked out here, on the client (a shallow clone with
/// [`crate::source::checkout`], with the token in `BERTH_GIT_TOKEN` when set), and the
/// checkout copied into the run's workspace before its command starts; Kubernetes clones in
/// the run's pod (an init container).
///
/// # Errors
/// [`RunnerError::Checkout`] when the repository cannot be
/// checked out.
pub async fn submit(
    engine: &dyn ContainerEngine,
    spec: &RunSpec,
    policy: PullPolicy,
) -> Result<RunId> {
    spec.validate()?;
    let git = match &spec.source {
        // A schedule is refused by Docker before anything is checked out.
        Some(RunSource::Git { url, branch })
            if engine.backend() == BackendKind::Docker && spec.schedule.is_none() =>
        {
            Some(git_source(url, branch.as_deref())?)
        }
        _ => None,
    };
    prepare_image(engine, spec, policy).await?;
    let Some(git) = git else {
        return Ok(engine.submit_run(spec).await?);
    };
    let checkout = crate::source::checkout(&git)
        .await
        .map_err(|source| RunnerError::Checkout {
            url: git.url.clone(),
            source,
        })?;
    let local = spec
        .clone()
        .with_source(RunSource::Directory(checkout.path().to_owned()));
    // The checkout is removed when `checkout` drops, once the engine has copied it in.
    Ok(engine.submit_run(&local).await?)
}

/// The variable holding the token for a client-side `--git` checkout (Docker).
pub const GIT_TOKEN_ENV: &str = "BERTH_GIT_TOKEN";

/// `url` at `branch` as this machine checks it out: any host, local paths and `file://`
/// included (the user's own machine and network), with the token in [`GIT_TOKEN_ENV`].
fn git_source(url: &str, branch: Option<&str>) -> Result<crate::source::GitSource> {
    let mut git = crate::source::GitSource::new(url);
    if let Some(b) = branch {
        git = git.branch(b);
    }
    if let Some(token) = std::env::var(GIT_TOKEN_ENV).ok().filter(|t| !t.is_empty()) {
        git = git.token(crate::source::Token::new(token));
    }
    git.validate().map_err(|source| RunnerError::Checkout {
        url: url.to_owned(),
        source,
    })?;
    Ok(git)
}

/// Makes the run's image present as `policy` says, where the backend needs it first.
async fn prepare_image(
    engine: &dyn ContainerEngine,
    spec: &RunSpec,
    policy: PullPolicy,
) -> Result<()> {
    image::prepare(
        engine,
        &spec.env.image,
        policy,
        &berth_engine_core::Progress::none(),
    )
    .await
    .map(|_| ())
}

/// Which scheduler a run is submitted to: `berth submit --engine`.
///
/// ```
/// use berth_runner::runs::RunEngine;
///
/// assert_eq!("argo".parse::<RunEngine>().unwrap(), RunEngine::Argo);
/// assert!("airflow".parse::<RunEngine>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RunEngine {
    /// The backend's own: a container (Docker), a batch/v1 Job or CronJob (Kubernetes).
    #[default]
    Job,
    /// An Argo Workflow or CronWorkflow (Kubernetes with Argo Workflows installed).
    Argo,
}

impl RunEngine {
    /// The name `--engine` takes.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            RunEngine::Job => "job",
            RunEngine::Argo => "argo",
        }
    }
}

impl std::fmt::Display for RunEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RunEngine {
    type Err = berth_engine_core::Error;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "job" => Ok(RunEngine::Job),
            "argo" => Ok(RunEngine::Argo),
            _ => Err(berth_engine_core::Error::invalid_spec(
                "engine",
                format!("expected job or argo, got {s:?}"),
            )),
        }
    }
}

/// Submits the run to `run_engine`: [`submit`] for [`RunEngine::Job`]; for
/// [`RunEngine::Argo`], the image made present as for a Job, then the Workflow (or, with a
/// schedule, the CronWorkflow) `berth render --kind workflow` prints, created through the
/// API with the run's name and labels. Follow either with [`watch`] and the other calls
/// here, on `engine`.
///
/// # Errors
/// [`berth_engine_core::Error::InvalidSpec`] naming `engine` when Argo is asked for off
/// Kubernetes; [`berth_engine_core::Error::Unsupported`] when the cluster has no Argo CRDs;
/// else as [`submit`].
pub async fn submit_to(
    run_engine: RunEngine,
    config: &BerthConfig,
    engine: &dyn ContainerEngine,
    spec: &RunSpec,
) -> Result<RunId> {
    let policy = config.runner.pull_policy;
    if run_engine == RunEngine::Job {
        return submit(engine, spec, policy).await;
    }
    if config.runner.backend != BackendKind::Kubernetes {
        return Err(berth_engine_core::Error::invalid_spec(
            "engine",
            format!(
                "--engine argo runs on Kubernetes, not the {} backend (set runner.backend: kubernetes or pass --backend kubernetes)",
                config.runner.backend
            ),
        )
        .into());
    }
    spec.validate()?;
    let kind = if spec.schedule.is_some() {
        Kind::CronWorkflow
    } else {
        Kind::Workflow
    };
    let mut manifest = RunManifest::new(kind, spec.command.clone());
    manifest.schedule.clone_from(&spec.schedule);
    manifest.source.clone_from(&spec.source);
    let object = kinds::objects(config, &spec.env, &manifest)
        .map_err(|e| match e {
            ManifestError::Engine(e) => e,
            other => berth_engine_core::Error::invalid_spec(
                "engine",
                format!("cannot make the Argo {kind}: {other}"),
            ),
        })?
        .pop()
        .expect("the rendered objects end with the run's");
    prepare_image(engine, spec, policy).await?;
    let argo = KubernetesEngine::connect(crate::backend::kubernetes_config(config)).await?;
    Ok(argo.submit_workflow(spec, object).await?)
}

/// Follows the run's logs from `from` (the start when `None`) until the run ends, handing
/// each line to `on_line` exactly once: a stream that breaks, or ends while the run still
/// runs, is reopened after the last line delivered. Returns the cursor after the last line.
///
/// # Errors
/// The engine's error when the run is not there, or when the connection stays lost
/// (30 reopenings in a row without a line).
pub async fn follow_logs(
    engine: &dyn ContainerEngine,
    run: &RunId,
    from: Option<LogCursor>,
    mut on_line: impl FnMut(&LogLine),
) -> Result<LogCursor> {
    let mut cursor = from.unwrap_or_default();
    let mut failures = 0;
    loop {
        let opened = engine
            .run_logs(run, LogOptions::follow().with_since(cursor))
            .await;
        let mut broke = None;
        match opened {
            Ok(mut stream) => {
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(line) => {
                            failures = 0;
                            cursor.advance(&line);
                            on_line(&line);
                        }
                        Err(e) => {
                            broke = Some(e);
                            break;
                        }
                    }
                }
            }
            Err(e) => broke = Some(e),
        }
        match broke {
            Some(e) if !matches!(e.kind(), ErrorKind::ConnectionLost | ErrorKind::Unavailable) => {
                return Err(e.into())
            }
            Some(e) => {
                failures += 1;
                if failures > MAX_RECONNECTS {
                    return Err(e.into());
                }
                tracing::info!(run = %run, error = %e, "log stream broke; resuming after the last line");
                tokio::time::sleep(POLL).await;
            }
            // The stream ended: the run ended, or the server closed a long follow.
            None => {
                if engine.run_status(run).await?.state.is_finished() {
                    return Ok(cursor);
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

/// Reads the run's logs as they are now, handing each line to `on_line`; returns the cursor
/// after the last one.
///
/// # Errors
/// The engine's error when the run is not there or the stream breaks.
pub async fn read_logs(
    engine: &dyn ContainerEngine,
    run: &RunId,
    mut on_line: impl FnMut(&LogLine),
) -> Result<LogCursor> {
    let mut cursor = LogCursor::default();
    let mut stream = engine.run_logs(run, LogOptions::default()).await?;
    while let Some(line) = stream.next().await {
        let line = line?;
        cursor.advance(&line);
        on_line(&line);
    }
    Ok(cursor)
}

/// Waits until the run is finished and returns its status (with the true exit code). Wrap
/// it in `tokio::time::timeout` to bound the wait.
///
/// # Errors
/// The engine's error when the status cannot be read.
pub async fn wait(engine: &dyn ContainerEngine, run: &RunId) -> Result<RunStatus> {
    loop {
        let status = engine.run_status(run).await?;
        if status.state.is_finished() {
            return Ok(status);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`follow_logs`] from the start, then [`wait`]: what `berth submit --watch` does.
///
/// # Errors
/// As [`follow_logs`] and [`wait`].
pub async fn watch(
    engine: &dyn ContainerEngine,
    run: &RunId,
    on_line: impl FnMut(&LogLine),
) -> Result<RunStatus> {
    follow_logs(engine, run, None, on_line).await?;
    wait(engine, run).await
}
