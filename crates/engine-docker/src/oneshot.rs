//! One-shot runs (`berth run`): the command is the container's own process, under Docker's
//! init, instead of an exec into a keepalive. The container is made exactly like an
//! environment's (labels, security profile, resources, workspace), so `list` and `gc` find it
//! after a crash; its streams come through an attach opened before the start (nothing is
//! lost), its exit code from a wait, an out-of-memory kill from an inspect, and it is removed
//! as soon as its outcome is known. Compared with start + exec + stop this saves the
//! keepalive's start, the "command not found" probe and the exec's three calls.
//!
//! What differs from an exec, and how it is kept the same:
//! - A timeout kills the whole container (SIGKILL), which ends every process the command
//!   started, escaped or not: what `berth run` did after an exec timeout anyway.
//! - The environment's maximum lifetime is enforced by this client (the container is killed
//!   then, [`Error::EnvironmentGone`]); if the client dies, the container runs on until its
//!   command ends or `berth gc` removes it (its owner process is gone).
//! - A program that is not there: Docker's init (tini) reports it on stderr and exits 127.
//!   That one line is held back and, when the exit code confirms it and the program is in
//!   no directory of the container's PATH (asked of the stopped container's filesystem, so
//!   a command cannot forge it), replaced by [`command_not_found`] for a bare program name,
//!   as the probe of the general path says.
//! - A TTY request, and a network allow list (whose rules go in after the start), take the
//!   general path ([`start_then_exec`]): a terminal's resize and
//!   foreground job are the exec's business.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_engine_core::backend::{self, ExecProcessExt, OomReport};
use berth_engine_core::{
    command_not_found, start_then_exec, EnvironmentId, EnvironmentSpec, Error, ExecProcess,
    ExecRequest, ExecStdin, ExitStatus, OomKill, OutputChunk, Result, Stdin,
};
use bollard::container::LogOutput;
use bollard::query_parameters::{
    AttachContainerOptions, ContainerArchiveInfoOptions, KillContainerOptions,
    RemoveContainerOptions, WaitContainerOptions,
};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use crate::errors::{self, BACKEND};
use crate::{body, container, DockerEngine};

/// How long after the kill of a timed-out container its output may take to end before the
/// stream is ended anyway.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// The PATH of a container whose image sets none, as Docker gives it.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why the client ended the command.
const ENDED_NOT: u8 = 0;
const ENDED_TIMEOUT: u8 = 1;
const ENDED_LIFETIME: u8 = 2;

impl DockerEngine {
    /// Records that this engine removed the one-shot container `name` itself.
    fn note_removed(&self, name: &str) {
        let mut removed = self
            .removed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Names carry a random suffix and are never reused; the bound only keeps a
        // long-lived engine whose callers never stop from growing.
        if removed.len() >= 4096 {
            removed.clear();
        }
        removed.insert(name.to_owned());
    }

    /// Whether this engine removed the one-shot container `name` itself (forgotten now).
    pub(crate) fn forget_removed(&self, name: &str) -> bool {
        self.removed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name)
    }
}

/// Runs `req` as the main process of a fresh container of `spec`; see the module docs.
pub(crate) async fn run_once(
    engine: &DockerEngine,
    spec: &EnvironmentSpec,
    req: ExecRequest,
) -> Result<(EnvironmentId, ExecProcess)> {
    spec.validate()?;
    req.validate()?;
    // An allow list's firewall goes into the container's network namespace after it
    // starts: a command that is the container's first process would run before it.
    if req.tty.is_some() || spec.network.allow_list().is_some() {
        return start_then_exec(engine, spec, req).await;
    }
    let labels = container::labels_map(spec);
    let mut body = body::container_body(
        spec,
        &labels,
        &engine.address,
        &engine.docker.client_version(),
    )?;
    let attach_stdin = req.stdin != Stdin::Null;
    body.entrypoint = Some(req.argv.clone());
    body.cmd = None;
    body.user = req.user.clone().or(body.user);
    body.working_dir = req.workdir.clone().or(body.working_dir);
    body.attach_stdin = Some(attach_stdin);
    body.attach_stdout = Some(true);
    body.attach_stderr = Some(true);
    body.open_stdin = Some(attach_stdin);
    body.stdin_once = Some(attach_stdin);
    body.tty = Some(false);
    let name = container::create(engine, spec, &labels, body, |body| {
        // The command's variables win over the environment's, as in an exec.
        let vars = body.env.get_or_insert_with(Vec::new);
        vars.retain(|kv| {
            let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            !req.env.contains_key(key)
        });
        vars.extend(req.env.iter().map(|(k, v)| format!("{k}={v}")));
    })
    .await?;
    let id = EnvironmentId::new(name.clone())?;
    match attach_and_start(engine, &id, spec.max_lifetime, req).await {
        Ok(process) => {
            tracing::debug!(env = %id, image = %spec.image, "started a one-shot command");
            Ok((id, process))
        }
        Err(e) => match engine.remove_container(&name).await {
            Ok(_) => Err(e),
            Err(cleanup) => Err(e.with_cleanup_failure(cleanup)),
        },
    }
}

/// What the I/O of a one-shot command shares.
struct Once {
    engine: DockerEngine,
    env: EnvironmentId,
    /// `ENDED_*`: whether the client killed the command, and why.
    ended: AtomicU8,
    /// The output stream held back init's "exec failed: no such file" line and the exit code
    /// confirmed it.
    not_found: AtomicBool,
    oom: OomReport,
}

impl Once {
    fn name(&self) -> &str {
        self.env.as_str()
    }

    /// The container's exit code once it is not running (at once when it already ended).
    async fn exit_code(&self) -> Result<i64> {
        let mut waits = self.engine.docker.wait_container(
            self.name(),
            Some(WaitContainerOptions {
                condition: "not-running".to_owned(),
            }),
        );
        match waits.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) if matches!(errors::status(&e), Some((404, _))) => {
                Err(Error::EnvironmentGone {
                    env: self.env.to_string(),
                    operation: "the command".to_owned(),
                    reason: "its container was removed".to_owned(),
                })
            }
            Some(Err(e)) if errors::is_transport(&e) => Err(Error::connection_lost_in_exec(
                BACKEND,
                self.engine.address.clone(),
                self.name(),
                Some(Box::new(e)),
            )),
            Some(Err(e)) => Err(errors::env_call(
                &self.engine.address,
                self.name(),
                "wait for the container",
                e,
            )),
            None => Err(Error::backend(
                BACKEND,
                "wait for the container",
                "the daemon ended the wait without an exit code",
            )),
        }
    }

    /// A 137 told apart: the out-of-memory killer (recorded with the limit) or not.
    async fn record_oom(&self) {
        let Ok(inspect) = self
            .engine
            .docker
            .inspect_container(self.name(), None)
            .await
        else {
            return;
        };
        if inspect.state.and_then(|s| s.oom_killed) == Some(true) {
            let limit = inspect
                .host_config
                .and_then(|h| h.memory)
                .and_then(|m| u64::try_from(m).ok())
                .filter(|m| *m > 0);
            self.oom.set(OomKill::new(limit));
        }
    }

    /// Whether `program` (a bare name) is a file in a directory of the container's PATH,
    /// asked of the stopped container's filesystem: a command cannot forge init's "not
    /// found" line for a program that is there.
    async fn program_present(&self, program: &str) -> bool {
        // Both calls are reads, retried on a dropped connection (a remote daemon's reused
        // connection can be closed under it): a transient failure would keep the runtime's
        // words for a program that is missing.
        let Ok(inspect) = crate::retry::idempotent("inspect the one-shot container", || {
            self.engine.docker.inspect_container(self.name(), None)
        })
        .await
        else {
            return true;
        };
        let path = inspect
            .config
            .and_then(|c| c.env)
            .unwrap_or_default()
            .into_iter()
            .find_map(|kv| kv.strip_prefix("PATH=").map(str::to_owned))
            .unwrap_or_else(|| DEFAULT_PATH.to_owned());
        for dir in path.split(':').filter(|d| d.starts_with('/')) {
            let path = format!("{}/{program}", dir.trim_end_matches('/'));
            let stat = crate::retry::idempotent("stat a PATH entry", || {
                self.engine.docker.get_container_archive_info(
                    self.name(),
                    Some(ContainerArchiveInfoOptions { path: path.clone() }),
                )
            })
            .await;
            match stat {
                Ok(_) => return true,
                Err(e) if matches!(errors::status(&e), Some((404, _))) => {}
                // Cannot tell: keep the runtime's own words.
                Err(_) => return true,
            }
        }
        false
    }

    /// SIGKILL to the container: its init and every process in it end.
    async fn kill(&self) {
        let killed = self
            .engine
            .docker
            .kill_container(
                self.name(),
                Some(KillContainerOptions {
                    signal: "SIGKILL".to_owned(),
                }),
            )
            .await;
        if let Err(e) = killed {
            // 404 and 409: removed, or not running any more.
            if !matches!(errors::status(&e), Some((404 | 409, _))) {
                tracing::warn!(env = %self.env, error = %e, "could not kill a one-shot container");
            }
        }
    }

    /// The command's outcome once its output ended; the container is removed then.
    async fn finish(
        &self,
        argv0: String,
        timeout: Option<Duration>,
        lifetime: Duration,
    ) -> Result<ExitStatus> {
        let code = self.exit_code().await;
        let ended = self.ended.load(Ordering::SeqCst);
        if matches!(code, Ok(137)) && ended == ENDED_NOT {
            self.record_oom().await;
        }
        let removed = self
            .engine
            .docker
            .remove_container(
                self.name(),
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await;
        let removed_by_another = match removed {
            Ok(()) => {
                self.engine.note_removed(self.name());
                false
            }
            Err(e) => match errors::status(&e) {
                Some((404, _)) => true,
                Some((409, msg)) if msg.contains("already in progress") => true,
                // The caller's stop (and gc) will try again.
                _ => {
                    tracing::debug!(env = %self.env, error = %e, "could not remove a one-shot container yet");
                    false
                }
            },
        };
        if removed_by_another && ended == ENDED_NOT {
            // A stop under the command: its exit code (a kill's 137) is not its own.
            return Err(Error::EnvironmentGone {
                env: self.env.to_string(),
                operation: "the command".to_owned(),
                reason: "its container was removed".to_owned(),
            });
        }
        match ended {
            ENDED_TIMEOUT => {
                return Err(Error::Timeout {
                    operation: format!("the command in {}", self.env),
                    after: timeout.unwrap_or(lifetime),
                })
            }
            ENDED_LIFETIME => {
                return Err(Error::EnvironmentGone {
                    env: self.env.to_string(),
                    operation: "the command".to_owned(),
                    reason: format!(
                        "it reached its maximum lifetime of {lifetime:?} (runner.max_lifetime)"
                    ),
                })
            }
            _ => {}
        }
        let code = i32::try_from(code?).unwrap_or(i32::MAX);
        if self.not_found.load(Ordering::SeqCst) {
            return Err(command_not_found(argv0));
        }
        Ok(ExitStatus(code))
    }
}

/// Attaches to the created container `env`, starts it and hands out its I/O.
async fn attach_and_start(
    engine: &DockerEngine,
    env: &EnvironmentId,
    lifetime: Duration,
    req: ExecRequest,
) -> Result<ExecProcess> {
    let started_at = Instant::now();
    let attach_stdin = req.stdin != Stdin::Null;
    let attached = engine
        .docker
        .attach_container(
            env.as_str(),
            Some(AttachContainerOptions {
                stream: true,
                stdin: attach_stdin,
                stdout: true,
                stderr: true,
                logs: false,
                detach_keys: None,
            }),
        )
        .await
        .map_err(|e| errors::env_call(&engine.address, env.as_str(), "attach to container", e))?;
    if let Err(e) = engine.docker.start_container(env.as_str(), None).await {
        return Err(match errors::status(&e) {
            Some((_, msg)) if container::not_runnable_message(msg) => {
                command_not_found(req.argv[0].clone())
            }
            _ => errors::env_call(&engine.address, env.as_str(), "start container", e),
        });
    }
    let once = Arc::new(Once {
        engine: engine.clone(),
        env: env.clone(),
        ended: AtomicU8::new(ENDED_NOT),
        not_found: AtomicBool::new(false),
        oom: OomReport::default(),
    });
    let input = attached.input;
    let (stdin_handle, stdin_bytes, input) = match req.stdin {
        Stdin::Piped => (Some(ExecStdin::new(input)), None, None),
        Stdin::Bytes(bytes) => (None, Some(bytes), Some(input)),
        _ => (None, None, None),
    };
    // The client's deadline: the request's timeout, or the environment's lifetime.
    let (limit, why) = match req.timeout {
        Some(t) if t <= lifetime => (t, ENDED_TIMEOUT),
        _ => (lifetime, ENDED_LIFETIME),
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let helper = {
        let once = once.clone();
        tokio::spawn(async move {
            let write = async move {
                if let (Some(mut input), Some(bytes)) = (input, stdin_bytes) {
                    // A command that exits without reading its input breaks the pipe.
                    let _ = input.write_all(&bytes).await;
                    let _ = input.shutdown().await;
                }
            };
            let watchdog = async move {
                // A lifetime past what the clock can hold never comes.
                match started_at.checked_add(limit) {
                    Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                    None => std::future::pending::<()>().await,
                }
                once.ended.store(why, Ordering::SeqCst);
                once.kill().await;
                tokio::time::sleep(KILL_GRACE).await;
                let _ = stop_tx.send(());
            };
            tokio::join!(write, watchdog);
        })
    };
    let stopped = async move {
        if stop_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let address = engine.address.clone();
    let name = env.to_string();
    let chunks = attached.output.filter_map(move |item| {
        std::future::ready(match item {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                Some(Ok(OutputChunk::Stdout(message)))
            }
            Ok(LogOutput::StdErr { message }) => Some(Ok(OutputChunk::Stderr(message))),
            Ok(LogOutput::StdIn { .. }) => None,
            Err(e) if errors::is_transport(&e) => Some(Err(Error::connection_lost_in_exec(
                BACKEND,
                address.clone(),
                &name,
                Some(Box::new(e)),
            ))),
            Err(e) => Some(Err(errors::other(&address, "read the command's output", e))),
        })
    });
    let argv0 = req.argv[0].clone();
    let chunks =
        hold_back_init_failure(Box::pin(chunks), once.clone(), argv0.clone()).take_until(stopped);
    let timeout = req.timeout;
    let finisher = once.clone();
    let finish = async move { finisher.finish(argv0, timeout, lifetime).await };
    let killer = once.clone();
    Ok(
        backend::direct(stdin_handle, Box::pin(chunks), finish, Some(helper))
            .with_oom_report(once.oom.clone())
            .with_kill_on_drop(async move {
                killer.kill().await;
                let _ = killer.engine.remove_container(killer.name()).await;
            }),
    )
}

/// State of [`hold_back_init_failure`]'s stream.
struct Holding {
    inner: backend::OutputChunks,
    once: Arc<Once>,
    argv0: String,
    /// A first stderr chunk that looks like init's exec failure, not yet let through.
    held: Option<Bytes>,
    /// An item read while a chunk was held, given out right after it.
    next: Option<Result<OutputChunk>>,
    /// Anything came out already.
    seen: bool,
    done: bool,
}

/// Passes `inner` through, except that init's own "exec <program> failed: No such file or
/// directory" line (the container's first and only output when the program is missing) is
/// held back until the end, and dropped when the program is a bare name and the exit code is
/// 127: [`Once::finish`] then reports [`command_not_found`] instead.
fn hold_back_init_failure(
    inner: backend::OutputChunks,
    once: Arc<Once>,
    argv0: String,
) -> impl futures_util::Stream<Item = Result<OutputChunk>> + Send {
    let state = Holding {
        inner,
        once,
        argv0,
        held: None,
        next: None,
        seen: false,
        done: false,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        if let Some(item) = s.next.take() {
            return Some((item, s));
        }
        if s.done {
            return None;
        }
        loop {
            match s.inner.next().await {
                // Init's line may come in more than one chunk (a remote transport under load
                // splits what the daemon relays): what follows it on stderr is held with it,
                // up to a line's worth, and judged whole at the end.
                Some(Ok(OutputChunk::Stderr(b)))
                    if !s.seen && holds_init_line(s.held.as_ref(), &b) =>
                {
                    s.held = Some(match s.held.take() {
                        None => b,
                        Some(held) => {
                            let mut joined = held.to_vec();
                            joined.extend_from_slice(&b);
                            Bytes::from(joined)
                        }
                    });
                }
                Some(item) => {
                    s.seen = true;
                    if let Some(held) = s.held.take() {
                        s.next = Some(item);
                        return Some((Ok(OutputChunk::Stderr(held)), s));
                    }
                    return Some((item, s));
                }
                None => {
                    s.done = true;
                    let held = s.held.take()?;
                    let expected = init_enoent_exit_code(&held, &s.argv0);
                    let missing = expected.is_some()
                        && !s.argv0.contains('/')
                        && s.once.exit_code().await.ok() == expected
                        && !s.once.program_present(&s.argv0).await;
                    if missing {
                        s.once.not_found.store(true, Ordering::SeqCst);
                        return None;
                    }
                    return Some((Ok(OutputChunk::Stderr(held)), s));
                }
            }
        }
    })
}

/// Whether the stderr chunk `next` is (the start of, or more of) init's own line: the first
/// chunk must begin like tini's or catatonit's report (or be a start of one), later ones are
/// taken while the whole stays within a line's length.
fn holds_init_line(held: Option<&Bytes>, next: &[u8]) -> bool {
    const PREFIXES: [&[u8]; 2] = [b"[FATAL tini (", b"ERROR (catatonit:"];
    const MAX_LINE: usize = 512;
    match held {
        None => PREFIXES.iter().any(|p| {
            let n = p.len().min(next.len());
            !next.is_empty() && next[..n] == p[..n]
        }),
        Some(held) => held.len() + next.len() <= MAX_LINE,
    }
}

/// The exit code init gives when `line` is its report that it could not find `argv0`, or
/// `None` when `line` is not that report: Docker's tini (`[FATAL tini (7)] exec nosuch
/// failed: No such file or directory`, exit 127) or Podman's catatonit (`ERROR
/// (catatonit:6): failed to exec pid1: No such file or directory`, which names no program,
/// exit 1).
fn init_enoent_exit_code(line: &[u8], argv0: &str) -> Option<i64> {
    let text = std::str::from_utf8(line).ok()?.trim_end();
    if let Some(rest) = text.strip_prefix("ERROR (catatonit:") {
        let (pid, rest) = rest.split_once("): ")?;
        return (pid.bytes().all(|c| c.is_ascii_digit())
            && rest == "failed to exec pid1: No such file or directory")
            .then_some(1);
    }
    is_init_enoent(line, argv0).then_some(127)
}

/// Whether `line` is tini's report that it could not find `argv0`.
fn is_init_enoent(line: &[u8], argv0: &str) -> bool {
    let Ok(text) = std::str::from_utf8(line) else {
        return false;
    };
    let Some(rest) = text.trim_end().strip_prefix("[FATAL tini (") else {
        return false;
    };
    let Some((pid, rest)) = rest.split_once(")] ") else {
        return false;
    };
    pid.bytes().all(|c| c.is_ascii_digit())
        && rest == format!("exec {argv0} failed: No such file or directory")
}

#[cfg(test)]
mod tests {
    use super::{holds_init_line, init_enoent_exit_code, is_init_enoent};

    #[test]
    fn init_lines_split_across_chunks_are_held_whole() {
        assert!(holds_init_line(None, b"[FATAL tini (7)] exec"));
        assert!(holds_init_line(None, b"[FAT"));
        assert!(holds_init_line(None, b"ERROR (cata"));
        assert!(!holds_init_line(None, b"hello"));
        assert!(!holds_init_line(None, b""));
        let held = bytes::Bytes::from_static(b"[FATAL tini (7)] exec nosuch");
        assert!(holds_init_line(
            Some(&held),
            b" failed: No such file or directory\n"
        ));
        assert!(!holds_init_line(Some(&held), &[b'x'; 600]));
    }

    #[test]
    fn catatonits_line_is_taken_with_its_exit_code() {
        let line = b"ERROR (catatonit:6): failed to exec pid1: No such file or directory\n";
        assert_eq!(init_enoent_exit_code(line, "nosuch"), Some(1));
        assert_eq!(
            init_enoent_exit_code(
                b"ERROR (catatonit:6): failed to exec pid1: Permission denied\n",
                "x"
            ),
            None
        );
        let tini = b"[FATAL tini (7)] exec nosuch failed: No such file or directory\n";
        assert_eq!(init_enoent_exit_code(tini, "nosuch"), Some(127));
        assert_eq!(init_enoent_exit_code(tini, "other"), None);
    }

    #[test]
    fn only_inits_own_line_for_this_program_is_taken_for_a_missing_one() {
        let line = b"[FATAL tini (7)] exec nosuch failed: No such file or directory\n";
        assert!(is_init_enoent(line, "nosuch"));
        assert!(!is_init_enoent(line, "other"));
        assert!(!is_init_enoent(
            b"[FATAL tini (7)] exec nosuch failed: Permission denied\n",
            "nosuch"
        ));
        assert!(!is_init_enoent(
            b"[FATAL tini (x)] exec nosuch failed: No such file or directory\n",
            "nosuch"
        ));
        assert!(!is_init_enoent(
            b"[FATAL tini (7)] exec nosuch failed: No such file or directory\nmore\n",
            "nosuch"
        ));
    }
}
