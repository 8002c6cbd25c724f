//! Exec: create_exec + start_exec (attached, demultiplexed) + inspect_exec, and the timeout
//! kill of the whole process tree.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use berth_engine_core::backend::{self, ExecProcessExt, OomReport, SweepReport, EXEC_MARKER_VAR};
use berth_engine_core::{
    EnvironmentId, Error, ExecProcess, ExecRequest, ExecStdin, ExitStatus, OomKill, OutputChunk,
    Result, Stdin, TtySize,
};
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::errors::{self, BACKEND};
use crate::podman::Podman;

/// How much the demultiplexer reads at once from the daemon.
const READ_CAPACITY: usize = 64 * 1024;

/// How long after its deadline a timed-out exec may take to end (its in-container watchdog
/// fires at the same deadline, rounded up to a whole second) before the sweep runs anyway.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// How long the sweep after a timeout or a drop may take.
const SWEEP_LIMIT: Duration = Duration::from_secs(30);

/// Boxed with an explicit `Send` bound: an exec's own I/O future can start a second exec (the
/// timeout kill), so the future type is recursive.
pub(crate) fn exec_streaming<'a>(
    docker: &'a Docker,
    address: &'a str,
    env: &'a EnvironmentId,
    req: ExecRequest,
    podman: Option<Arc<Podman>>,
) -> futures_util::future::BoxFuture<'a, Result<ExecProcess>> {
    Box::pin(exec_streaming_inner(docker, address, env, req, podman))
}

async fn exec_streaming_inner(
    docker: &Docker,
    address: &str,
    env: &EnvironmentId,
    req: ExecRequest,
    podman: Option<Arc<Podman>>,
) -> Result<ExecProcess> {
    req.validate()?;
    let started_at = Instant::now();
    let created_at = std::time::SystemTime::now();
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let mut vars: Vec<String> = req.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    vars.push(format!("{EXEC_MARKER_VAR}={marker}"));
    let attach_stdin = req.stdin != Stdin::Null;
    let created = docker
        .create_exec(
            env.as_str(),
            CreateExecOptions {
                attach_stdin: Some(attach_stdin),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(req.tty.is_some()),
                env: Some(vars),
                // A timed exec runs under the watchdog, which kills its tree from inside at the
                // deadline without forking (a fork bomb cannot disarm it). A terminal's
                // foreground job must stay the command itself, so tty execs rely on the sweep.
                cmd: Some(match (req.timeout, req.tty) {
                    (Some(limit), None) => backend::watchdog_argv(limit, &req.argv),
                    _ => req.argv.clone(),
                }),
                user: req.user.clone(),
                working_dir: req.workdir.clone(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| errors::env_call(address, env.as_str(), "create exec", e))?;
    let started = docker
        .start_exec(
            &created.id,
            Some(StartExecOptions {
                detach: false,
                tty: req.tty.is_some(),
                output_capacity: Some(READ_CAPACITY),
            }),
        )
        .await
        .map_err(|e| errors::env_call(address, env.as_str(), "start exec", e))?;
    let StartExecResults::Attached { output, input } = started else {
        return Err(Error::backend(
            BACKEND,
            "start exec",
            "the daemon detached an exec that was started attached",
        ));
    };
    let resizer = match req.tty {
        Some(size) => {
            // API 1.41 has no console size at create time: set it before the caller can
            // write anything the command might answer with its size.
            resize(docker, address, env, &created.id, size).await?;
            let (docker, address, env, id) = (
                docker.clone(),
                address.to_owned(),
                env.clone(),
                created.id.clone(),
            );
            let resizer: backend::Resizer = Box::new(move |size| {
                let (docker, address, env, id) =
                    (docker.clone(), address.clone(), env.clone(), id.clone());
                Box::pin(async move { resize(&docker, &address, &env, &id, size).await })
            });
            Some(resizer)
        }
        None => None,
    };
    let (stdin_handle, stdin_bytes, input) = match req.stdin {
        Stdin::Piped => (Some(ExecStdin::new(input)), None, None),
        Stdin::Bytes(bytes) => (None, Some(bytes), Some(input)),
        _ => (None, None, None),
    };
    let io = Arc::new(ExecIo {
        docker: docker.clone(),
        address: address.to_owned(),
        env: env.clone(),
        exec_id: created.id,
        marker,
        user: req.user,
        timed_out: AtomicBool::new(false),
        started_at,
        report: watch::channel(None).0,
        started: created_at,
        oom: OomReport::default(),
        podman,
    });
    // The output is read by the consumer's own task (no task or channel in between: that hop
    // cost 12% of streaming throughput). A helper task feeds stdin bytes and watches the
    // timeout; after a timeout's kill it ends the output stream, whatever the kill achieved.
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let helper = (stdin_bytes.is_some() || req.timeout.is_some()).then(|| {
        let io = io.clone();
        let timeout = req.timeout;
        tokio::spawn(async move {
            let write = async move {
                if let (Some(mut input), Some(bytes)) = (input, stdin_bytes) {
                    // A command that exits without reading its input breaks the pipe.
                    let _ = input.write_all(&bytes).await;
                    let _ = input.shutdown().await;
                }
            };
            let watchdog = async move {
                if let Some(limit) = timeout {
                    tokio::time::sleep_until((io.started_at + limit).into()).await;
                    io.timed_out.store(true, Ordering::SeqCst);
                    io.wait_until_ended(KILL_GRACE).await;
                    let report = io.sweep().await.unwrap_or_default();
                    io.report.send_replace(Some(report));
                    let _ = stop_tx.send(());
                }
            };
            tokio::join!(write, watchdog);
        })
    });
    let stopped = async move {
        // A dropped sender (no timeout) must not end the stream.
        if stop_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let read_address = address.to_owned();
    let read_env = env.clone();
    let chunks = output
        .filter_map(move |item| {
            let chunk = match item {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                    Some(Ok(OutputChunk::Stdout(message)))
                }
                Ok(LogOutput::StdErr { message }) => Some(Ok(OutputChunk::Stderr(message))),
                Ok(LogOutput::StdIn { .. }) => None,
                // The daemon's connection broke under the exec (the daemon itself may be fine).
                Err(e) if errors::is_transport(&e) => Some(Err(Error::connection_lost_in_exec(
                    BACKEND,
                    read_address.clone(),
                    read_env.as_str(),
                    Some(Box::new(e)),
                ))),
                Err(e) => Some(Err(errors::other(&read_address, "read exec output", e))),
            };
            std::future::ready(chunk)
        })
        .take_until(stopped);
    let timeout = req.timeout;
    let killer = io.clone();
    let oom = io.oom.clone();
    let finish = async move {
        let Some(limit) = timeout else {
            let status = io.exit_status().await;
            return io.judge(status).await;
        };
        if !io.timed_out.load(Ordering::SeqCst) {
            let status = io.exit_status().await;
            // Past the limit, the watchdog ended it an instant before our own timer fired.
            if io.started_at.elapsed() < limit {
                return io.judge(status).await;
            }
        }
        let report = io.timeout_report().await;
        Err(report.timeout_error(format!("exec in {}", io.env), limit))
    };
    let process = backend::direct(stdin_handle, Box::pin(chunks), finish, helper)
        .with_oom_report(oom)
        .with_kill_on_drop(async move { killer.kill_tree().await });
    Ok(match resizer {
        Some(r) => process.with_resizer(r),
        None => process,
    })
}

async fn resize(
    docker: &Docker,
    address: &str,
    env: &EnvironmentId,
    exec_id: &str,
    size: TtySize,
) -> Result<()> {
    docker
        .resize_exec(
            exec_id,
            ResizeExecOptions {
                height: size.rows,
                width: size.cols,
            },
        )
        .await
        .map_err(|e| errors::env_call(address, env.as_str(), "resize exec tty", e))
}

/// How long after an exec ended its container's events may still arrive.
const EVENT_GRACE: Duration = Duration::from_millis(700);

/// What the daemon reported about a container while an exec ran.
#[derive(Debug, Default)]
struct ContainerEvents {
    /// The out-of-memory killer acted in the container.
    oom: bool,
    /// The container died or was removed.
    died: bool,
}

struct ExecIo {
    docker: Docker,
    address: String,
    env: EnvironmentId,
    exec_id: String,
    marker: String,
    user: Option<String>,
    timed_out: AtomicBool,
    /// Taken before the exec was created: the deadline counts from here.
    started_at: Instant,
    /// The sweep's findings after a timeout, once the helper has them.
    report: watch::Sender<Option<SweepReport>>,
    /// When the exec was created: container events from then on happened during it.
    started: std::time::SystemTime,
    oom: OomReport,
    /// Set on Podman, which reports no `oom` event for an exec's process.
    podman: Option<Arc<Podman>>,
}

/// How long an exec whose output ended may still be reported running before berth concludes
/// that the connection, not the command, ended: the daemon records an exit code within
/// milliseconds of the end of the output.
const STILL_RUNNING_LIMIT: Duration = Duration::from_secs(3);

impl ExecIo {
    /// The attach stream can end a moment before the daemon records the exit code, so ask
    /// until it has one. An exec still running well after its output ended lost its
    /// connection (a proxy or the daemon's socket closed it): [`Error::ConnectionLost`].
    async fn exit_status(&self) -> Result<ExitStatus> {
        let mut delay = Duration::from_millis(1);
        let since = std::time::Instant::now();
        while since.elapsed() < STILL_RUNNING_LIMIT {
            let inspect = self.docker.inspect_exec(&self.exec_id).await.map_err(|e| {
                if errors::is_transport(&e) {
                    return Error::connection_lost_in_exec(
                        BACKEND,
                        self.address.clone(),
                        self.env.as_str(),
                        Some(Box::new(e)),
                    );
                }
                errors::env_call(&self.address, self.env.as_str(), "inspect exec", e)
            })?;
            if inspect.running != Some(true) {
                if let Some(code) = inspect.exit_code {
                    let code = i32::try_from(code).unwrap_or(i32::MAX);
                    return Ok(ExitStatus(code));
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
        Err(Error::connection_lost_in_exec(
            BACKEND,
            self.address.clone(),
            self.env.as_str(),
            Some(
                format!(
                    "the output of exec {} ended, yet the daemon still reports it running after {STILL_RUNNING_LIMIT:?}",
                    self.exec_id
                )
                .into(),
            ),
        ))
    }

    /// Turns a 137, a vanished exec or a lost connection into what happened to the
    /// environment: an out-of-memory kill (recorded, the 137 kept), or
    /// [`Error::EnvironmentGone`] when the container was removed or stopped under the command.
    async fn judge(&self, result: Result<ExitStatus>) -> Result<ExitStatus> {
        let suspicious = match &result {
            Ok(status) => status.code() == 137,
            // Whatever broke, the container's state may explain it (a removed container
            // takes its execs with it: "No such exec instance").
            Err(e) => !e.is_timeout(),
        };
        if !suspicious {
            return result;
        }
        let gone = |reason: String| Error::EnvironmentGone {
            env: self.env.to_string(),
            operation: "the command".to_owned(),
            reason,
        };
        let inspect = match crate::lenient::inspect_container(&self.docker, self.env.as_str()).await
        {
            Ok(inspect) => inspect,
            Err(e) if errors::status(&e).is_some_and(|(code, _)| code == 404) => {
                return Err(gone("its container was removed".to_owned()))
            }
            // The daemon cannot say: keep what was learned.
            Err(_) => return result,
        };
        let limit = inspect
            .host_config
            .as_ref()
            .and_then(|h| h.memory)
            .and_then(|m| u64::try_from(m).ok())
            .filter(|m| *m > 0);
        let state = inspect.state.unwrap_or_default();
        if state.oom_killed == Some(true) {
            self.oom.set(OomKill::new(limit));
            return Ok(ExitStatus(137));
        }
        if state.running != Some(true) || state.restarting == Some(true) {
            let status = state
                .status
                .map_or_else(|| "not running".to_owned(), |s| s.to_string());
            return Err(gone(format!(
                "its container is {status} (exit code {})",
                state.exit_code.unwrap_or_default()
            )));
        }
        if result.as_ref().is_err_and(Error::is_connection_lost) {
            return result;
        }
        // The daemon records a container's death a moment after the execs it took with it,
        // so a running container may be on its way out: its events say.
        match self.container_events_since_start().await {
            ContainerEvents { oom: true, .. } => {
                self.oom.set(OomKill::new(limit));
                Ok(ExitStatus(137))
            }
            ContainerEvents { died: true, .. } => Err(gone("its container stopped".to_owned())),
            _ => match &self.podman {
                Some(podman)
                    if result.as_ref().is_ok_and(|s| s.code() == 137)
                        && podman
                            .oom_killed_since_last(&self.docker, &self.address, &self.env)
                            .await =>
                {
                    self.oom.set(OomKill::new(limit));
                    Ok(ExitStatus(137))
                }
                _ => result,
            },
        }
    }

    /// What the daemon reported about the container since this exec was created, waiting
    /// up to [`EVENT_GRACE`] for late events. An out-of-memory kill of an exec's process
    /// leaves the container running and its `OOMKilled` state false, so the `oom` event is
    /// the only record of it.
    async fn container_events_since_start(&self) -> ContainerEvents {
        let secs = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        let filters = std::collections::HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            (
                "event".to_owned(),
                ["oom", "die", "destroy"].map(str::to_owned).to_vec(),
            ),
            ("container".to_owned(), vec![self.env.to_string()]),
        ]);
        let options = bollard::query_parameters::EventsOptions {
            since: Some(format!("{:.3}", secs(self.started))),
            until: Some(format!(
                "{:.3}",
                secs(std::time::SystemTime::now() + EVENT_GRACE)
            )),
            filters: Some(filters),
        };
        let mut seen = ContainerEvents::default();
        let mut events = Box::pin(self.docker.events(Some(options)));
        let read = async {
            while let Some(Ok(event)) = events.next().await {
                match event.action.as_deref() {
                    Some("oom") => seen.oom = true,
                    Some("die" | "destroy") => {
                        seen.died = true;
                        return;
                    }
                    _ => {}
                }
            }
        };
        let _ = tokio::time::timeout(EVENT_GRACE * 3, read).await;
        seen
    }

    /// Waits (at most `limit`) until the daemon reports the exec no longer running.
    async fn wait_until_ended(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match self.docker.inspect_exec(&self.exec_id).await {
                Ok(inspect) if inspect.running == Some(true) => {}
                _ => return,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the sweep after this exec's timeout found (the helper runs it at the deadline).
    async fn timeout_report(&self) -> SweepReport {
        let mut rx = self.report.subscribe();
        let limit = KILL_GRACE + SWEEP_LIMIT + Duration::from_secs(5);
        let found = tokio::time::timeout(limit, async {
            rx.wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|r| r.clone())
        })
        .await;
        found.ok().flatten().unwrap_or_default()
    }

    /// Kills what is left of this exec's tree from a new exec, as the exec's own user (so it
    /// may read their environ and signal them even with every capability dropped), and
    /// reports what outlived it. `None` when the sweep could not run; that is worth a warning
    /// only while the environment still runs (a removed environment has nothing left).
    async fn sweep(&self) -> Option<SweepReport> {
        let req = ExecRequest::new(backend::sweep_argv(&self.marker, self.started_at.elapsed()))
            .with_output_limit(64 * 1024);
        let req = match &self.user {
            Some(user) => req.with_user(user.clone()),
            None => req,
        };
        let limit = req.output_limit;
        let result = match exec_streaming(&self.docker, &self.address, &self.env, req, None).await {
            Ok(process) => tokio::time::timeout(SWEEP_LIMIT, process.collect(limit))
                .await
                .map_err(|_| format!("the sweep did not finish in {SWEEP_LIMIT:?}"))
                .and_then(|r| r.map_err(|e| e.to_string())),
            Err(e) => Err(e.to_string()),
        };
        let failure = match result {
            Ok(out) if out.status.success() => {
                return Some(SweepReport::parse(&out.stdout_lossy()));
            }
            Ok(out) => format!("{}: {}", out.status, out.stderr_lossy().trim()),
            Err(e) => e,
        };
        if self.environment_running().await {
            tracing::warn!(env = %self.env, error = %failure, "killing an exec's processes failed; the image needs sh");
        } else {
            tracing::debug!(env = %self.env, error = %failure, "the environment ended before the sweep");
        }
        None
    }

    async fn environment_running(&self) -> bool {
        crate::lenient::inspect_container(&self.docker, self.env.as_str())
            .await
            .is_ok_and(|c| c.state.and_then(|s| s.running) == Some(true))
    }

    /// Ends a dropped exec's tree, warning when something outlived the kill.
    async fn kill_tree(&self) {
        if let Some(report) = self.sweep().await {
            if !report.is_clean() {
                tracing::warn!(env = %self.env, processes = ?report.processes(), "processes of a cancelled exec outlived the kill");
            }
        }
    }
}
