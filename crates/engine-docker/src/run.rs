//! Batch runs on Docker: a container made exactly like an environment's (labels, security
//! profile, resources, workspace) whose main process is the command instead of the keepalive.
//!
//! Docker has no deadline or cancellation record of its own, and labels are immutable, so
//! berth writes marker files into the container (as it does for detachment) before it kills
//! it: `/.berth-cancelled` for a cancel, `/.berth-deadline` when a status or list finds the
//! run past its deadline (label [`LABEL_DEADLINE`]). A cancelled run is killed and kept, so
//! its status says so; `berth gc` removes finished runs.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;

use berth_engine_core::backend;
use berth_engine_core::{
    logs_connection_lost, resume_from, split_timestamp, Error, LabelSelector, LogLine, LogOptions,
    LogSource, LogStream, Result, RunId, RunSource, RunSpec, RunState, RunStatus, TarStream,
    LABEL_MANAGED_BY, LABEL_RUN, MANAGED_BY_VALUE,
};
use bollard::container::LogOutput;
use bollard::models::ContainerStateStatusEnum;
use bollard::query_parameters::{KillContainerOptions, ListContainersOptions, LogsOptions};
use futures_util::StreamExt;

use crate::errors::{self, BACKEND};
use crate::{body, container, DockerEngine};

/// Label on a Docker run: the Unix time after which it is past its deadline.
pub const LABEL_DEADLINE: &str = "berth.dev/deadline";
const CANCELLED_MARKER: &str = ".berth-cancelled";
const DEADLINE_MARKER: &str = ".berth-deadline";

pub(crate) async fn submit(engine: &DockerEngine, spec: &RunSpec) -> Result<RunId> {
    spec.validate()?;
    if let Some(schedule) = &spec.schedule {
        return Err(Error::Unsupported {
            backend: BACKEND,
            operation: "schedule",
            reason: format!(
                "Docker has no scheduler to run {schedule:?}; use the kubernetes backend (a CronJob), or your host's cron calling `berth submit`"
            ),
        });
    }
    if spec.env.network.allow_list().is_some() {
        return Err(Error::Unsupported {
            backend: BACKEND,
            operation: "network",
            reason: "a Docker run's command is the container's first process, so it would start before berth can load the allow list's firewall rules; use network: none or full for runs, or start an environment (berth up) and exec in it".into(),
        });
    }
    let upload = match &spec.source {
        None => None,
        Some(RunSource::Git { .. }) => {
            return Err(Error::Unsupported {
                backend: BACKEND,
                operation: "git source",
                reason: "a Docker container has no step before its command to clone in; check the repository out on the client and pass its directory (berth_runner::runs::submit does)".to_owned(),
            })
        }
        Some(RunSource::Directory(dir)) => Some(container::Upload {
            dest: spec.env.mount_path.clone(),
            tar: pack_dir(dir.clone())?,
        }),
        Some(other) => {
            return Err(Error::Unsupported {
                backend: BACKEND,
                operation: "run source",
                reason: format!("this version of the Docker backend does not know {other:?}"),
            })
        }
    };
    let mut prepared = spec.clone();
    prepared.env = spec.prepared_env().into_owned();
    let spec = &prepared;
    let now = backend::now_unix();
    let mut labels: HashMap<String, String> = spec.object_labels(now).into_iter().collect();
    labels.insert(
        LABEL_DEADLINE.into(),
        (now + spec.env.max_lifetime.as_secs()).to_string(),
    );
    let mut body = body::container_body(
        &spec.env,
        &labels,
        &engine.address,
        &engine.docker.client_version(),
    )?;
    // The command is the main process: no keepalive, and not the image's CMD either.
    body.entrypoint = Some(spec.command.clone());
    body.cmd = None;
    let name = container::create_and_start(engine, &spec.env, &labels, body, upload, |msg| {
        Error::invalid_spec(
            "command",
            format!(
                "{:?} cannot run in {}: {msg}",
                spec.command[0], spec.env.image
            ),
        )
    })
    .await?;
    tracing::debug!(run = %name, image = %spec.env.image, "submitted run");
    RunId::new(name)
}

/// The contents of `dir` as a tar archive streamed as it is written (a checkout may be large:
/// it is never held whole in memory), made on a blocking thread: symlinks kept as links,
/// nothing followed out of the directory, sparse files written whole (Docker refuses GNU
/// sparse entries).
fn pack_dir(dir: std::path::PathBuf) -> Result<TarStream> {
    if !dir.is_dir() {
        return Err(Error::invalid_spec(
            "source",
            format!("{} is not a directory", dir.display()),
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(PIECE),
        };
        let result = (|| {
            let mut builder = tar::Builder::new(&mut writer);
            builder.follow_symlinks(false);
            builder.sparse(false);
            builder.append_dir_all(".", &dir)?;
            builder.finish()
        })()
        .and_then(|()| writer.flush());
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e));
        }
    });
    Ok(Box::pin(futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
    )))
}

/// How much of the archive goes to the daemon at a time.
const PIECE: usize = 256 * 1024;

/// A writer handing what it is given to a channel in pieces; a receiver gone (the upload
/// failed) ends the writing with an error.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE)));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::other("the upload of the run's files stopped"))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

fn not_a_run(run: &RunId) -> Error {
    Error::NotFound {
        what: "run",
        name: run.to_string(),
    }
}

/// The run's container inspected, refusing anything that is not one of berth's runs.
async fn inspect_run(
    engine: &DockerEngine,
    run: &RunId,
) -> Result<bollard::models::ContainerInspectResponse> {
    let c = crate::lenient::inspect_container(&engine.docker, run.as_str())
        .await
        .map_err(|e| match errors::status(&e) {
            Some((404 | 400, _)) => not_a_run(run),
            _ => errors::env_call(&engine.address, run.as_str(), "inspect the run", e),
        })?;
    let labels = c
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let named = c.name.as_deref().map(|n| n.trim_start_matches('/')) == Some(run.as_str());
    if !named
        || labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY_VALUE)
        || !labels.contains_key(LABEL_RUN)
    {
        return Err(not_a_run(run));
    }
    Ok(c)
}

pub(crate) async fn status(engine: &DockerEngine, run: &RunId) -> Result<RunStatus> {
    let c = inspect_run(engine, run).await?;
    let labels: BTreeMap<String, String> = c
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let image = c
        .config
        .as_ref()
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let state = c.state.unwrap_or_default();
    let exit_code = state.exit_code.and_then(|c| i32::try_from(c).ok());
    let (run_state, code, message) = match state.status {
        Some(ContainerStateStatusEnum::CREATED) => (RunState::Pending, None, None),
        Some(
            ContainerStateStatusEnum::RUNNING
            | ContainerStateStatusEnum::PAUSED
            | ContainerStateStatusEnum::RESTARTING,
        ) => {
            let deadline = labels
                .get(LABEL_DEADLINE)
                .and_then(|d| d.parse::<u64>().ok());
            if deadline.is_some_and(|d| backend::now_unix() >= d) {
                kill_with_marker(engine, run, DEADLINE_MARKER).await?;
                return Box::pin(status(engine, run)).await;
            }
            (RunState::Running, None, None)
        }
        Some(ContainerStateStatusEnum::EXITED) => {
            if engine.has_marker(run.as_str(), CANCELLED_MARKER).await? {
                (RunState::Cancelled, exit_code, None)
            } else if engine.has_marker(run.as_str(), DEADLINE_MARKER).await? {
                (
                    RunState::DeadlineExceeded,
                    exit_code,
                    Some("killed at its deadline (runner.max_lifetime)".to_owned()),
                )
            } else if state.oom_killed == Some(true) {
                (
                    RunState::Failed,
                    exit_code,
                    Some("killed: out of memory".to_owned()),
                )
            } else if exit_code == Some(0) {
                (RunState::Succeeded, exit_code, None)
            } else {
                (
                    RunState::Failed,
                    exit_code,
                    state.error.filter(|e| !e.is_empty()),
                )
            }
        }
        _ => (
            RunState::Lost,
            None,
            Some(format!(
                "the container is {}",
                state
                    .status
                    .map_or("in an unknown state".to_owned(), |s| s.to_string())
            )),
        ),
    };
    Ok(RunStatus::new(run.clone(), image, run_state, labels)
        .with_exit_code(code)
        .with_message(message))
}

/// Records why the run is ending (the marker file), then kills its process.
async fn kill_with_marker(engine: &DockerEngine, run: &RunId, marker: &str) -> Result<()> {
    engine
        .write_marker(run.as_str(), marker, "write a run marker")
        .await?;
    match engine
        .docker
        .kill_container(
            run.as_str(),
            Some(KillContainerOptions {
                signal: "SIGKILL".to_owned(),
            }),
        )
        .await
    {
        Ok(()) => Ok(()),
        // It ended by itself meanwhile.
        Err(e) if matches!(errors::status(&e), Some((409, _))) => Ok(()),
        Err(e) => Err(errors::env_call(
            &engine.address,
            run.as_str(),
            "kill the run",
            e,
        )),
    }
}

pub(crate) async fn cancel(engine: &DockerEngine, run: &RunId) -> Result<()> {
    let c = inspect_run(engine, run).await?;
    let running = c.state.and_then(|s| s.running) == Some(true);
    if running {
        kill_with_marker(engine, run, CANCELLED_MARKER).await?;
        tracing::debug!(run = %run, "cancelled run");
    }
    Ok(())
}

pub(crate) async fn logs(
    engine: &DockerEngine,
    run: &RunId,
    options: LogOptions,
) -> Result<LogStream> {
    inspect_run(engine, run).await?;
    let since = options
        .since
        .and_then(|c| c.since_secs())
        .map_or(0, |s| i32::try_from(s).unwrap_or(i32::MAX));
    let stream = engine.docker.logs(
        run.as_str(),
        Some(LogsOptions {
            follow: options.follow,
            stdout: true,
            stderr: true,
            timestamps: true,
            since,
            ..Default::default()
        }),
    );
    let address = engine.address.clone();
    let name = run.to_string();
    let lines = stream.map(move |item| {
        let output = item.map_err(|e| {
            if errors::is_transport(&e) {
                logs_connection_lost(BACKEND, &address, &name, Box::new(e))
            } else {
                errors::env_call(&address, &name, "read the run's logs", e)
            }
        })?;
        let (source, record) = match output {
            LogOutput::StdOut { message } => (LogSource::Stdout, message),
            LogOutput::StdErr { message } => (LogSource::Stderr, message),
            LogOutput::Console { message } | LogOutput::StdIn { message } => {
                (LogSource::Merged, message)
            }
        };
        let (time, data) = split_timestamp(&record).ok_or_else(|| {
            Error::backend(
                BACKEND,
                "read the run's logs",
                std::io::Error::other("a log record without a timestamp"),
            )
        })?;
        Ok(LogLine::new(time, source, data))
    });
    Ok(resume_from(Box::pin(lines), options.since))
}

pub(crate) async fn list(
    engine: &DockerEngine,
    selector: &LabelSelector,
) -> Result<Vec<RunStatus>> {
    let mut filters = container::label_filters(selector);
    filters
        .entry("label".to_owned())
        .or_default()
        .push(LABEL_RUN.to_owned());
    let containers = crate::lenient::list_containers(
        &engine.docker,
        ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| errors::other(&engine.address, "list runs", e))?;
    let mut out = Vec::new();
    for c in containers {
        let Some(name) = c
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_owned())
        else {
            continue;
        };
        match status(engine, &RunId::new(name)?).await {
            Ok(s) => out.push(s),
            // Removed between the list and the inspect.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}
