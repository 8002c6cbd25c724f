//! Exec over the pod exec websocket, and what Kubernetes exec lacks made up inside the pod:
//! env, workdir and user by wrapping the argv; timeouts by killing the marked process tree;
//! copies as tar streams through `tar`.

use std::time::{Duration, Instant};

use berth_engine_core::backend::{
    self, sweep_argv, watchdog_argv, ExecProcessExt, OomReport, OutputSink, SweepReport,
    EXEC_MARKER_VAR,
};
use berth_engine_core::{
    EnvironmentId, Error, ExecProcess, ExecRequest, ExecStdin, ExitStatus, OomKill, OutputChunk,
    Result, Stdin, TarStream, TtySize,
};
use bytes::Bytes;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{AttachParams, TerminalSize};
use kube::Api;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::errors::{self, BACKEND};
use crate::manifest::CONTAINER;
use crate::ws::{self, End};
use crate::KubernetesEngine;

/// How an image lets a root exec become another user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UserTool {
    /// util-linux `setpriv --reuid --regid` (Debian, Ubuntu, Fedora images).
    Setpriv,
    /// `su -p -s /bin/sh NAME` (busybox, Alpine); needs the user in /etc/passwd.
    Su,
    /// Neither.
    None,
}

/// Pipe size between kube's websocket task and our reader: large enough for throughput.
const PIPE: usize = 256 * 1024;

const READ_CHUNK: usize = 64 * 1024;

/// How long after its deadline a timed-out exec may take to end (its in-pod watchdog fires at
/// the same deadline, rounded up to a whole second) before the sweep runs anyway.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// How long the sweep after a timeout or a drop may take.
const SWEEP_LIMIT: Duration = Duration::from_secs(30);

/// Exit code our wrappers use for "the thing berth needs is missing".
const EXIT_BERTH_MISSING: i32 = 44;

fn wrap_user(tool: UserTool, user: &str, inner: Vec<String>) -> Result<Vec<String>> {
    let (uid, gid) = user.split_once(':').unwrap_or((user, ""));
    match tool {
        UserTool::Setpriv => {
            let mut argv = vec![
                "setpriv".to_owned(),
                format!("--reuid={uid}"),
                format!("--regid={}", if gid.is_empty() { uid } else { gid }),
                "--clear-groups".to_owned(),
                "--".to_owned(),
            ];
            argv.extend(inner);
            Ok(argv)
        }
        UserTool::Su => {
            // su takes a name: resolve a numeric uid through /etc/passwd first.
            let script = format!(
                "u=\"$1\"; shift; case \"$u\" in *[!0-9]*) n=\"$u\";; *) n=$(awk -F: -v u=\"$u\" '$3==u {{print $1; exit}}' /etc/passwd);; esac; \
                 if [ -z \"$n\" ]; then echo \"berth: uid $u has no /etc/passwd entry, which su needs\" >&2; exit {EXIT_BERTH_MISSING}; fi; \
                 exec su -p -s /bin/sh \"$n\" -c 'exec \"$@\"' -- sh \"$@\""
            );
            let mut argv = vec!["sh".to_owned(), "-c".to_owned(), script, "sh".to_owned(), uid.to_owned()];
            argv.extend(inner);
            Ok(argv)
        }
        UserTool::None => Err(Error::Unsupported {
            backend: BACKEND,
            operation: "exec as user",
            reason: format!(
                "Kubernetes exec has no user field, so berth switches users inside the pod, and this image has neither util-linux setpriv nor su; add one to the image, or run the environment as {user} (EnvironmentSpec::user)"
            ),
        }),
    }
}

/// The argv that runs `req` with its env, workdir and the kill marker.
fn wrap(req: &ExecRequest, marker: &str, tool: Option<UserTool>) -> Result<Vec<String>> {
    let mut inner = vec!["env".to_owned(), format!("{EXEC_MARKER_VAR}={marker}")];
    inner.extend(req.env.iter().map(|(k, v)| format!("{k}={v}")));
    inner.extend(req.argv.iter().cloned());
    if let Some(dir) = &req.workdir {
        let mut argv = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "cd \"$1\" || exit 126; shift; exec \"$@\"".to_owned(),
            "sh".to_owned(),
            dir.clone(),
        ];
        argv.extend(inner);
        inner = argv;
    }
    match (&req.user, tool) {
        (Some(user), Some(tool)) => wrap_user(tool, user, inner),
        _ => Ok(inner),
    }
}

async fn user_tool(engine: &KubernetesEngine, env: &EnvironmentId, pod: &str) -> Result<UserTool> {
    if let Some(t) = engine
        .user_tools
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(pod)
    {
        return Ok(*t);
    }
    let probe = ExecRequest::shell(
        "if setpriv --help 2>&1 | grep -q -- --reuid; then echo setpriv; \
         elif command -v su >/dev/null 2>&1; then echo su; else echo none; fi",
    );
    let out = run_raw(
        engine,
        env,
        pod,
        vec!["sh".into(), "-c".into(), probe.argv[2].clone()],
    )
    .await?;
    let tool = match String::from_utf8_lossy(&out.1).trim() {
        "setpriv" => UserTool::Setpriv,
        "su" => UserTool::Su,
        _ => UserTool::None,
    };
    engine
        .user_tools
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(pod.to_owned(), tool);
    Ok(tool)
}

fn attach_error(engine: &KubernetesEngine, env: &EnvironmentId, e: kube::Error) -> Error {
    let text = e.to_string();
    if errors::is_not_found(&e)
        || text.contains("not found")
        || text.contains("not running")
        || text.contains("container not found")
    {
        engine.forget_pod(env);
        return Error::NotFound {
            what: "running environment",
            name: env.to_string(),
        };
    }
    errors::api(&engine.address, "exec in pod", e)
}

async fn attach(
    engine: &KubernetesEngine,
    env: &EnvironmentId,
    pod: &str,
    argv: Vec<String>,
    stdin: bool,
    tty: bool,
) -> Result<ws::Exec> {
    let mut params = AttachParams::default()
        .container(CONTAINER)
        .stdin(stdin)
        .stdout(true)
        .stderr(!tty)
        .tty(tty);
    params.max_stdin_buf_size = Some(PIPE);
    params.max_stdout_buf_size = Some(PIPE);
    params.max_stderr_buf_size = Some(PIPE);
    ws::exec(
        &engine.client,
        &engine.config.namespace,
        pod,
        argv,
        &params,
        PIPE,
    )
    .await
    .map_err(|e| attach_error(engine, env, e))
}

/// What a stream was carrying, for the error when its connection is lost.
#[derive(Debug, Clone, Copy)]
enum Carrying<'a> {
    /// A command.
    Command,
    /// An archive into (`true`) or out of the path.
    Copy(bool, &'a str),
}

/// The exit status from the status channel; a stream that ended without one (the connection
/// broke, or went silent) is [`Error::ConnectionLost`]: the command may still be running.
fn exit_status(
    end: End,
    address: &str,
    env: &EnvironmentId,
    carrying: Carrying<'_>,
) -> Result<ExitStatus> {
    let status = match end {
        End::Status(status) => *status,
        End::Lost(why) => {
            return Err(match carrying {
                Carrying::Command => {
                    Error::connection_lost_in_exec(BACKEND, address, env.as_str(), Some(why.into()))
                }
                Carrying::Copy(inward, path) => Error::connection_lost_in_copy(
                    BACKEND,
                    address,
                    env.as_str(),
                    if inward {
                        format!("copy into {env}:{path}")
                    } else {
                        format!("copy out of {env}:{path}")
                    },
                    Some(why.into()),
                ),
            })
        }
    };
    if status.status.as_deref() == Some("Success") {
        return Ok(ExitStatus(0));
    }
    if status.reason.as_deref() == Some("NonZeroExitCode") {
        let code = status
            .details
            .as_ref()
            .and_then(|d| d.causes.as_ref())
            .and_then(|causes| {
                causes
                    .iter()
                    .find(|c| c.reason.as_deref() == Some("ExitCode"))
            })
            .and_then(|c| c.message.as_deref())
            .and_then(|m| m.parse().ok());
        if let Some(code) = code {
            return Ok(ExitStatus(code));
        }
    }
    let message = status.message.unwrap_or_default();
    if message.contains("executable file not found") || message.contains("no such file") {
        return Ok(ExitStatus(127));
    }
    Err(Error::backend(
        BACKEND,
        "exec in pod",
        format!("the exec in {env} failed: {message}"),
    ))
}

/// Runs `argv` to completion without wrapping; returns (status, stdout, stderr), capped.
async fn run_raw(
    engine: &KubernetesEngine,
    env: &EnvironmentId,
    pod: &str,
    argv: Vec<String>,
) -> Result<(ExitStatus, Vec<u8>, Vec<u8>)> {
    let mut attached = attach(engine, env, pod, argv, false, false).await?;
    let end = attached.take_end().expect("the end is taken once");
    let out = read_capped(attached.stdout(), 1 << 20);
    let err = read_capped(attached.stderr(), 1 << 20);
    let (out, err, end) = tokio::join!(out, err, end);
    Ok((
        exit_status(end, &engine.address, env, Carrying::Command)?,
        out,
        err,
    ))
}

async fn read_capped(reader: Option<impl AsyncRead + Unpin>, cap: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut r) = reader {
        let mut chunk = vec![0u8; READ_CHUNK];
        while let Ok(n) = r.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            if buf.len() < cap {
                buf.extend_from_slice(&chunk[..n.min(cap - buf.len())]);
            }
        }
    }
    buf
}

async fn pump(reader: Option<impl AsyncRead + Unpin>, sink: &OutputSink, stderr: bool) {
    let Some(mut r) = reader else {
        return;
    };
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let bytes = Bytes::copy_from_slice(&chunk[..n]);
                sink.send(if stderr {
                    OutputChunk::Stderr(bytes)
                } else {
                    OutputChunk::Stdout(bytes)
                })
                .await;
            }
        }
    }
}

pub(crate) async fn exec_streaming(
    engine: &KubernetesEngine,
    env: &EnvironmentId,
    req: ExecRequest,
) -> Result<ExecProcess> {
    req.validate()?;
    let pod = engine.pod_of(env).await?;
    let tool = match &req.user {
        Some(_) => Some(user_tool(engine, env, &pod).await?),
        None => None,
    };
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let started_at = Instant::now();
    let argv = match (req.timeout, req.tty) {
        // A timed exec runs under the watchdog, which kills its tree from inside at the
        // deadline without forking (a fork bomb cannot disarm it). A terminal's foreground
        // job must stay the command itself, so tty execs rely on the sweep.
        (Some(limit), None) => {
            let mut watched = req.clone();
            watched.argv = watchdog_argv(limit, &req.argv);
            wrap(&watched, &marker, tool)?
        }
        _ => wrap(&req, &marker, tool)?,
    };
    let tty = req.tty;
    let mut attached = attach(
        engine,
        env,
        &pod,
        argv,
        req.stdin != Stdin::Null,
        tty.is_some(),
    )
    .await?;
    let resize_tx = attached.terminal_size();
    if let (Some(size), Some(tx)) = (tty, resize_tx.as_ref()) {
        let _ = tx.try_send(TerminalSize {
            width: size.cols,
            height: size.rows,
        });
    }
    let stdin_writer = attached.stdin();
    let (stdin_handle, stdin_bytes) = match (req.stdin.clone(), stdin_writer) {
        (Stdin::Piped, Some(w)) => (Some(ExecStdin::new(Box::pin(w))), None),
        (Stdin::Bytes(b), Some(w)) => (None, Some((b, w))),
        _ => (None, None),
    };
    let end = attached.take_end().expect("the end is taken once");
    let stdout = attached.stdout();
    let stderr = attached.stderr();
    let kill = Killer {
        engine_pods: engine.pod_api(),
        pod: pod.clone(),
        marker,
        user: req.user.clone(),
        tool,
        started_at,
    };
    // Checked now, so that a sweep that cannot be built fails the exec, not the kill.
    kill.argv()?;
    let env_id = env.clone();
    let timeout = req.timeout;
    let kill_on_drop = kill.clone();
    let oom = OomReport::default();
    let verdict = Verdict {
        pods: engine.pod_api(),
        pod: pod.clone(),
        address: engine.address.clone(),
        oom: oom.clone(),
    };
    let process = backend::spawn(stdin_handle, move |sink| async move {
        // Keep the attached process (its websocket task) alive for the whole exec.
        let attached = attached;
        let write = async move {
            if let Some((bytes, mut w)) = stdin_bytes {
                let _ = w.write_all(&bytes).await;
                let _ = w.shutdown().await;
            }
        };
        let read = async {
            tokio::join!(pump(stdout, &sink, false), pump(stderr, &sink, true));
        };
        let work = async {
            let ((), ()) = tokio::join!(write, read);
            end.await
        };
        let status = match timeout {
            None => work.await,
            Some(limit) => {
                tokio::pin!(work);
                let deadline = tokio::time::sleep_until((started_at + limit).into());
                let ended = tokio::select! {
                    s = &mut work => Some(s),
                    () = deadline => None,
                };
                match ended {
                    // Past the limit, the watchdog ended it an instant before our own timer.
                    Some(s) if started_at.elapsed() < limit => s,
                    ended => {
                        if ended.is_none() {
                            // The watchdog kills the tree at this same deadline.
                            let _ = tokio::time::timeout(KILL_GRACE, &mut work).await;
                        }
                        let report = kill.sweep().await.unwrap_or_default();
                        drop(attached);
                        return Err(report.timeout_error(format!("exec in {env_id}"), limit));
                    }
                }
            }
        };
        drop(attached);
        let status = exit_status(status, &verdict.address, &env_id, Carrying::Command);
        verdict.judge(&env_id, status).await
    });
    let process = process
        .with_oom_report(oom)
        .with_kill_on_drop(async move { kill_on_drop.run().await });
    Ok(match resize_tx {
        Some(tx) => process.with_resizer(Box::new(move |size: TtySize| {
            let tx = tx.clone();
            Box::pin(async move {
                tx.send(TerminalSize {
                    width: size.cols,
                    height: size.rows,
                })
                .await
                .map_err(|e| Error::backend(BACKEND, "resize the exec terminal", e))
            })
        })),
        None => process,
    })
}

/// Sweeps what is left of an exec's tree from a new exec in the pod (see
/// [`berth_engine_core::sweep_argv`]), as the exec's own user.
#[derive(Clone)]
struct Killer {
    engine_pods: Api<Pod>,
    pod: String,
    marker: String,
    user: Option<String>,
    tool: Option<UserTool>,
    started_at: Instant,
}

impl Killer {
    fn argv(&self) -> Result<Vec<String>> {
        let mut req = ExecRequest::new(sweep_argv(&self.marker, self.started_at.elapsed()));
        req.user.clone_from(&self.user);
        let mut argv = wrap(&req, &self.marker, self.tool)?;
        // The sweep must not carry the marker itself: drop `env MARKER=..` from its argv.
        if let Some(i) = argv.iter().position(|a| a.starts_with(EXEC_MARKER_VAR)) {
            argv.remove(i);
            if i > 0 && argv[i - 1] == "env" {
                argv.remove(i - 1);
            }
        }
        Ok(argv)
    }

    /// Kills what is left and reports what outlived the kill; `None` when the sweep could not
    /// run, which is worth a warning only while the pod still runs.
    async fn sweep(&self) -> Option<SweepReport> {
        let params = AttachParams::default().container(CONTAINER).stderr(true);
        let result = async {
            let argv = self.argv().map_err(|e| e.to_string())?;
            let mut attached = self
                .engine_pods
                .exec(&self.pod, argv, &params)
                .await
                .map_err(|e| e.to_string())?;
            let status = attached.take_status().expect("status");
            let out = read_capped(attached.stdout(), 64 * 1024);
            let err = read_capped(attached.stderr(), 4096);
            let (out, err, status) = tokio::join!(out, err, status);
            match status {
                Some(s) if s.status.as_deref() == Some("Success") => {
                    Ok(SweepReport::parse(&String::from_utf8_lossy(&out)))
                }
                s => Err(format!(
                    "{}: {}",
                    s.and_then(|s| s.message).unwrap_or_default(),
                    String::from_utf8_lossy(&err).trim()
                )),
            }
        };
        let failure = match tokio::time::timeout(SWEEP_LIMIT, result).await {
            Ok(Ok(report)) => return Some(report),
            Ok(Err(e)) => e,
            Err(_) => format!("the sweep did not finish in {SWEEP_LIMIT:?}"),
        };
        let running = self.engine_pods.get_opt(&self.pod).await.is_ok_and(|p| {
            p.and_then(|p| p.status)
                .and_then(|s| s.phase)
                .is_some_and(|phase| phase == "Running")
        });
        if running {
            tracing::warn!(pod = %self.pod, error = %failure, "killing an exec's processes failed; the image needs sh");
        } else {
            tracing::debug!(pod = %self.pod, error = %failure, "the pod ended before the sweep");
        }
        None
    }

    /// Ends a dropped exec's tree, warning when something outlived the kill.
    async fn run(&self) {
        if let Some(report) = self.sweep().await {
            if !report.is_clean() {
                tracing::warn!(pod = %self.pod, processes = ?report.processes(), "processes of a cancelled exec outlived the kill");
            }
        }
    }
}

/// How long to watch the pod after a command died of SIGKILL (137) for the reason: the
/// kubelet reports an out-of-memory kill or a deletion a moment after the exec stream ends.
const VERDICT_WINDOW: Duration = Duration::from_secs(2);

/// What the pod says about an exec that died of SIGKILL or lost its connection.
struct Verdict {
    pods: Api<Pod>,
    pod: String,
    address: String,
    oom: OomReport,
}

/// What a pod's state means for a command that was running in it.
#[derive(Debug, PartialEq, Eq)]
enum PodFate {
    /// Running as before: the exit code is the command's own.
    Running,
    /// Its container was killed by the out-of-memory killer (limit in bytes, if set).
    OomKilled(Option<u64>),
    /// Deleted, being deleted, or its container ended: the reason.
    Gone(String),
}

/// Reads a pod (`None`: it no longer exists) the way [`Verdict`] needs.
fn pod_fate(pod: Option<&Pod>) -> PodFate {
    let Some(pod) = pod else {
        return PodFate::Gone("its pod was deleted".to_owned());
    };
    let limit = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == CONTAINER))
        .and_then(|c| c.resources.as_ref())
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .and_then(|q| parse_memory(&q.0));
    let status = pod.status.as_ref();
    let terminated = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == CONTAINER))
        .and_then(|c| c.state.as_ref())
        .and_then(|st| st.terminated.as_ref());
    if let Some(t) = terminated {
        if t.reason.as_deref() == Some("OOMKilled") {
            return PodFate::OomKilled(limit);
        }
        return PodFate::Gone(format!(
            "its container ended with exit code {} ({})",
            t.exit_code,
            t.reason.as_deref().unwrap_or("no reason given")
        ));
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return PodFate::Gone("its pod was deleted".to_owned());
    }
    match status.and_then(|s| s.phase.as_deref()) {
        Some(phase @ ("Failed" | "Succeeded")) => PodFate::Gone(format!("its pod is {phase}")),
        _ => PodFate::Running,
    }
}

/// A memory quantity (`64Mi`, `1G`, `67108864`) in bytes; `None` for forms berth never
/// writes (milli-bytes, exponents).
fn parse_memory(q: &str) -> Option<u64> {
    let digits = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (number, unit) = q.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

impl Verdict {
    /// Turns a command's 137, or a lost connection, into what happened to the environment:
    /// an out-of-memory kill (recorded in the report, the 137 kept), or
    /// [`Error::EnvironmentGone`] when the pod was deleted or its container ended.
    async fn judge(&self, env: &EnvironmentId, result: Result<ExitStatus>) -> Result<ExitStatus> {
        let lost = matches!(&result, Err(e) if e.is_connection_lost());
        let suspicious = match &result {
            Ok(status) => status.code() == 137,
            // A pod deleted under the exec can end its stream with a failure status.
            Err(e) => !e.is_timeout(),
        };
        if !suspicious {
            return result;
        }
        let started = tokio::time::Instant::now();
        loop {
            let fate =
                match tokio::time::timeout(VERDICT_WINDOW, self.pods.get_opt(&self.pod)).await {
                    Ok(Ok(pod)) => pod_fate(pod.as_ref()),
                    // The API server is not answering either: the lost connection stands.
                    _ => return result,
                };
            match fate {
                PodFate::OomKilled(limit) => {
                    self.oom.set(OomKill::new(limit));
                    return Ok(ExitStatus(137));
                }
                PodFate::Gone(reason) => {
                    return Err(Error::EnvironmentGone {
                        env: env.to_string(),
                        operation: "the command".to_owned(),
                        reason,
                    })
                }
                PodFate::Running
                    if lost || result.is_err() || started.elapsed() >= VERDICT_WINDOW =>
                {
                    tracing::debug!(address = %self.address, pod = %self.pod, "pod still running after the exec ended");
                    return result;
                }
                PodFate::Running => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// Extracts `tar` into `dest` with `tar -x` in the pod. Completeness is checked twice: tar
/// fails on an archive cut short, and the exit status must arrive on the status channel (a
/// stream that ends without one is an error, never a success: the `kubectl cp` truncation).
pub(crate) async fn copy_in(
    engine: &KubernetesEngine,
    env: &EnvironmentId,
    dest: &str,
    mut tar: TarStream,
) -> Result<()> {
    backend::require_absolute("dest", dest)?;
    let pod = engine.pod_of(env).await?;
    let script = format!(
        "test -d \"$1\" || {{ echo \"berth: no directory $1\" >&2; exit {EXIT_BERTH_MISSING}; }}; \
         exec tar -xf - -C \"$1\""
    );
    let argv = vec![
        "sh".into(),
        "-c".into(),
        script,
        "sh".into(),
        dest.to_owned(),
    ];
    let mut attached = attach(engine, env, &pod, argv, true, false).await?;
    let mut stdin = attached.stdin().expect("stdin requested");
    let status = attached.take_end().expect("the end is taken once");
    let out = read_capped(attached.stdout(), 4096);
    let err = read_capped(attached.stderr(), 64 * 1024);
    let write = async move {
        while let Some(chunk) = tar.next().await {
            let chunk =
                chunk.map_err(|e| Error::backend(BACKEND, "read the archive to copy in", e))?;
            stdin
                .write_all(&chunk)
                .await
                .map_err(|e| Error::backend(BACKEND, "send the archive into the pod", e))?;
        }
        stdin
            .shutdown()
            .await
            .map_err(|e| Error::backend(BACKEND, "close the archive stream", e))?;
        Ok::<(), Error>(())
    };
    let (written, _, err, status) = tokio::join!(write, out, err, status);
    let status = exit_status(status, &engine.address, env, Carrying::Copy(true, dest))?;
    let err = String::from_utf8_lossy(&err).into_owned();
    if status.code() == EXIT_BERTH_MISSING {
        return Err(Error::path_not_found(dest, env));
    }
    if !status.success() {
        return Err(Error::backend(
            BACKEND,
            "extract an archive in the pod",
            format!("tar exited with {status}: {}", err.trim()),
        ));
    }
    written
}

/// Streams `path` out of the pod as a tar archive made by `tar -c`.
pub(crate) async fn copy_out(
    engine: &KubernetesEngine,
    env: &EnvironmentId,
    path: &str,
) -> Result<TarStream> {
    backend::require_absolute("path", path)?;
    let pod = engine.pod_of(env).await?;
    let script = format!(
        "test -e \"$1\" || test -L \"$1\" || {{ echo \"berth: no such path $1\" >&2; exit {EXIT_BERTH_MISSING}; }}; \
         cd \"$(dirname \"$1\")\" && exec tar -cf - \"$(basename \"$1\")\""
    );
    let argv = vec![
        "sh".into(),
        "-c".into(),
        script,
        "sh".into(),
        path.to_owned(),
    ];
    let mut attached = attach(engine, env, &pod, argv, false, false).await?;
    let status = attached.take_end().expect("the end is taken once");
    let mut stdout = attached.stdout().expect("stdout");
    let stderr = read_capped(attached.stderr(), 64 * 1024);
    // Read the first piece before returning, so a missing path is an error here, not half-way
    // through the caller's read.
    let mut first = vec![0u8; READ_CHUNK];
    let n = stdout
        .read(&mut first)
        .await
        .map_err(|e| Error::backend(BACKEND, "read the archive from the pod", e))?;
    first.truncate(n);
    let env = env.clone();
    let path = path.to_owned();
    let address = engine.address.clone();
    if n == 0 {
        let (err, status) = tokio::join!(stderr, status);
        let status = exit_status(status, &address, &env, Carrying::Copy(false, &path))?;
        if status.code() == EXIT_BERTH_MISSING {
            return Err(Error::path_not_found(&path, &env));
        }
        return Err(Error::backend(
            BACKEND,
            "archive a path in the pod",
            format!(
                "tar exited with {status}: {}",
                String::from_utf8_lossy(&err).trim()
            ),
        ));
    }
    let state = (Some(attached), stdout, Some((status, stderr)), env);
    let rest = futures_util::stream::unfold(state, move |(attached, mut stdout, finish, env)| {
        let (address, path) = (address.clone(), path.clone());
        async move {
            let mut buf = vec![0u8; READ_CHUNK];
            match stdout.read(&mut buf).await {
                Ok(0) => {
                    let (status, stderr) = finish?;
                    let (err, status) = tokio::join!(stderr, status);
                    drop(attached);
                    match exit_status(status, &address, &env, Carrying::Copy(false, &path)) {
                        Ok(s) if s.success() => None,
                        Ok(s) => Some((
                            Err(std::io::Error::other(format!(
                                "tar in {env} exited with {s}: {}",
                                String::from_utf8_lossy(&err).trim()
                            ))),
                            (None, stdout, None, env),
                        )),
                        Err(e) => Some((Err(std::io::Error::other(e)), (None, stdout, None, env))),
                    }
                }
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), (attached, stdout, finish, env)))
                }
                Err(e) => Some((Err(e), (None, stdout, None, env))),
            }
        }
    });
    Ok(Box::pin(
        futures_util::stream::iter([Ok(Bytes::from(first))]).chain(rest),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_puts_the_marker_env_and_workdir_inside_the_user_switch() {
        let req = ExecRequest::new(["id", "-u"])
            .with_env("A", "1")
            .with_workdir("/tmp")
            .with_user("1000:1001");
        let argv = wrap(&req, "m1", Some(UserTool::Setpriv)).unwrap();
        assert_eq!(
            &argv[..5],
            [
                "setpriv",
                "--reuid=1000",
                "--regid=1001",
                "--clear-groups",
                "--"
            ]
        );
        assert_eq!(&argv[5..7], ["sh", "-c"]);
        let tail = &argv[argv.len() - 5..];
        assert_eq!(tail, ["env", "BERTH_EXEC_ID=m1", "A=1", "id", "-u"]);
        let argv = wrap(&req, "m1", Some(UserTool::Su)).unwrap();
        assert_eq!(&argv[..2], ["sh", "-c"]);
        assert_eq!(argv[4], "1000");
        let plain = wrap(&ExecRequest::new(["true"]), "m2", None).unwrap();
        assert_eq!(plain, ["env", "BERTH_EXEC_ID=m2", "true"]);
    }

    #[test]
    fn memory_quantities() {
        assert_eq!(parse_memory("64Mi"), Some(64 << 20));
        assert_eq!(parse_memory("1G"), Some(1_000_000_000));
        assert_eq!(parse_memory("67108864"), Some(67_108_864));
        assert_eq!(parse_memory("100m"), None);
    }

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("a pod")
    }

    #[test]
    fn pod_fates() {
        assert!(matches!(pod_fate(None), PodFate::Gone(_)));
        let running = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": CONTAINER, "resources": {"limits": {"memory": "64Mi"}}}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": CONTAINER, "image": "i",
                "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]},
        }));
        assert_eq!(pod_fate(Some(&running)), PodFate::Running);
        let mut oom = running.clone();
        let st = oom
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap();
        st[0].state = Some(
            serde_json::from_value(serde_json::json!(
                {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
            ))
            .unwrap(),
        );
        assert_eq!(pod_fate(Some(&oom)), PodFate::OomKilled(Some(64 << 20)));
        let mut deleted = running;
        deleted.metadata.deletion_timestamp = oom.metadata.creation_timestamp.clone().or(Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-11-29T15:00:00Z".parse().unwrap(),
            ),
        ));
        assert!(matches!(pod_fate(Some(&deleted)), PodFate::Gone(r) if r.contains("deleted")));
    }

    #[test]
    fn no_user_tool_is_unsupported_with_a_reason() {
        let req = ExecRequest::new(["id"]).with_user("1000");
        let err = wrap(&req, "m", Some(UserTool::None)).unwrap_err();
        assert_eq!(err.kind(), berth_engine_core::ErrorKind::Unsupported);
        assert!(
            err.to_string()
                .contains("neither util-linux setpriv nor su"),
            "{err}"
        );
    }
}
