//! Stateful shells: one long-lived `sh` over one [`ContainerEngine::exec_streaming`] stream,
//! running commands one at a time at the speed of the shell itself. See [`Shell`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

mod command;
mod framer;
mod scripts;

pub use command::{ShellCommand, ShellOptions};
use framer::{Event, Framer};
use scripts::{DRIVER, INTERRUPT};

use crate::error::{Error, Result};
use crate::exec::{
    CappedBuffer, ExecOutput, ExecProcess, ExecStdin, OutputChunk, OutputStream, Stdin,
};
use crate::kill::{sweep_sparing_argv, SweepReport};
use crate::{ContainerEngine, EnvironmentId, ExecRequest, ExitStatus};

/// How long a timed-out command may take to end after its tree was killed before the shell
/// itself is ended (a command looping in shell builtins has no process to kill).
pub const TIMEOUT_GRACE: Duration = Duration::from_secs(5);

/// How long [`Shell::open`] waits for the shell to say it is ready.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// A long-lived `sh` in an environment, running commands one at a time with its state (working
/// directory, variables, functions, aliases) kept between them.
///
/// # How it works
/// The shell runs a small driver loop (plain POSIX `sh`: busybox `ash`, `dash` and `bash` run
/// it alike). For each command the client writes one frame on the exec's stdin: a header line
/// (sequence number, stdin length, number of script lines), the script's lines, then the
/// command's stdin bytes. The driver reads the script with
/// the `read` builtin, copies the stdin bytes to a file with `dd` (only when there are any),
/// prints a start marker on both streams, runs the script with `command eval` in the shell
/// itself (so `cd`, `export`, functions and aliases persist) with stdin from that file or
/// `/dev/null`, then prints an end marker with the exit code on both streams.
///
/// Markers start with a 128-bit random token chosen when the shell opens, so no output can
/// fake one by accident: output containing marker-like text, binary output, output without a
/// trailing newline and very long lines come through exactly. Nor on purpose from a process
/// a command starts: the token reaches the shell on its stdin and stays in its memory, never
/// in a command line, the environment or a file name (`BERTH_EXEC_ID` and the stdin files are
/// named by a second random value). Code run in the shell itself (a sourced script, `eval`)
/// is the shell, and can read the token like any other of its variables. Bytes outside the current
/// command's frame (see the caveat on background jobs) are dropped.
///
/// # Timeouts and interrupts
/// Each command's processes carry their own value of
/// [`EXEC_MARKER_VAR`](crate::backend::EXEC_MARKER_VAR). At the timeout the same sweep as plain exec
/// timeouts ([`sweep_sparing_argv`](crate::backend::sweep_sparing_argv)) kills the command's process
/// tree, sparing the shell; the shell prints its end marker and the command reports
/// [`Error::Timeout`]. [`ShellInterrupter::interrupt`] sends SIGINT to the command's processes
/// (Ctrl-C: a foreground `sleep` ends with 130, the shell lives on).
///
/// # Caveats
/// - A command that runs only shell builtins (`while :; do :; done`) has no process to
///   signal. An interrupt does not stop it; at its timeout the shell itself is ended (after a
///   grace period of [`TIMEOUT_GRACE`]), the command reports [`Error::Timeout`] and later
///   commands [`Error::ShellClosed`].
/// - `exit`, `exec CMD`, `set -e` with a failing command, or a killed shell end the shell: the
///   command in flight reports [`Error::ShellClosed`], never an exit status.
/// - Dropping a [`Shell`] kills the shell and everything started from it (the exec's
///   kill-on-drop); [`Shell::close`] ends it gracefully, leaving background jobs running.
/// - Background jobs (`cmd &`) return at once. Their output
///   written between two commands is dropped; output written while a later command runs is
///   indistinguishable from that command's and arrives with it. Redirect a background job's
///   output (`cmd >log 2>&1 &`) to keep it apart.
/// - A future of [`Shell::run`] dropped before the command ended leaves the command running;
///   the next command starts after it, and its output is not mixed in.
///
/// ```no_run
/// use std::sync::Arc;
/// use berth_engine_core::{ContainerEngine, EnvironmentId, Shell, ShellCommand, ShellOptions};
///
/// async fn agent(engine: Arc<dyn ContainerEngine>, env: EnvironmentId) -> berth_engine_core::Result<()> {
///     let mut shell = Shell::open(engine, &env, ShellOptions::default()).await?;
///     shell.run(ShellCommand::new("cd /tmp && export GREETING=hi")).await?;
///     let out = shell.run(ShellCommand::new("echo $GREETING from $(pwd)")).await?;
///     assert_eq!(out.stdout_lossy(), "hi from /tmp\n");
///     shell.close().await
/// }
/// ```
pub struct Shell {
    engine: Arc<dyn ContainerEngine>,
    env: EnvironmentId,
    user: Option<String>,
    /// Names the processes of each command (`BERTH_EXEC_ID`); unlike the framing token, which
    /// lives only in the framers and the shell's memory, it may be seen by anything.
    kill_mark: String,
    pid: u32,
    process: Option<ExecProcess>,
    stdin: ExecStdin,
    output: OutputStream,
    stdout: Framer,
    stderr: Framer,
    seq: u64,
    closed: Option<String>,
    running: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Shell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shell")
            .field("env", &self.env)
            .field("pid", &self.pid)
            .field("commands", &self.seq)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// Sends SIGINT to the command a [`Shell`] is running; see [`Shell::interrupter`].
#[derive(Clone)]
pub struct ShellInterrupter {
    engine: Arc<dyn ContainerEngine>,
    env: EnvironmentId,
    user: Option<String>,
    running: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for ShellInterrupter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShellInterrupter")
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

fn lock<T>(slot: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ShellInterrupter {
    /// Sends SIGINT to the processes of the command running now (Ctrl-C): a foreground
    /// program ends (usually with code 130) and the shell lives on. Background jobs ignore
    /// it, as in any non-interactive shell. Returns whether a command was running.
    ///
    /// # Errors
    /// The engine's error when the signal could not be sent (it runs as an exec).
    pub async fn interrupt(&self) -> Result<bool> {
        let Some(marker) = lock(&self.running).clone() else {
            return Ok(false);
        };
        let mut req = ExecRequest::new(["sh", "-c", INTERRUPT, "berth-interrupt", marker.as_str()]);
        req.user.clone_from(&self.user);
        self.engine.exec(&self.env, req).await?;
        Ok(true)
    }
}

impl Shell {
    /// Opens a shell in `env`: one exec of `sh` that lives until [`Shell::close`], a drop, or
    /// the environment's end.
    ///
    /// # Errors
    /// As [`ContainerEngine::exec_streaming`]; [`Error::ShellClosed`] when the shell ended
    /// before it was ready (no `sh` in the image), [`Error::Timeout`] when it did not start
    /// within a minute.
    pub async fn open(
        engine: Arc<dyn ContainerEngine>,
        env: &EnvironmentId,
        options: ShellOptions,
    ) -> Result<Self> {
        let token = format!("berth{}", uuid::Uuid::new_v4().simple());
        let kill_mark = format!("berthk{}", uuid::Uuid::new_v4().simple());
        let mut req = ExecRequest::new(["sh", "-c", DRIVER, "berth-shell", kill_mark.as_str()])
            .with_stdin(Stdin::Piped);
        req.env = options.env;
        req.workdir = options.workdir;
        req.user.clone_from(&options.user);
        req.validate()?;
        let mut process = engine.exec_streaming(env, req).await?;
        let (Some(stdin), Some(output)) = (process.take_stdin(), process.take_output()) else {
            return Err(Error::backend(
                engine.backend(),
                "open a shell",
                "the engine's exec gave no stdin or output stream",
            ));
        };
        let mut shell = Self {
            engine,
            env: env.clone(),
            user: options.user,
            stdout: Framer::new(&token),
            stderr: Framer::new(&token),
            kill_mark,
            pid: 0,
            process: Some(process),
            stdin,
            output,
            seq: 0,
            closed: None,
            running: Arc::default(),
        };
        let ready = tokio::time::timeout(OPEN_TIMEOUT, async {
            // The token travels on stdin, where no other process can read it.
            if let Err(e) = shell.send(format!("{token}\n").as_bytes()).await {
                return Err(shell
                    .ended("opening", &format!("writing the token failed: {e}"))
                    .await);
            }
            shell.wait_ready().await
        })
        .await;
        match ready {
            Ok(Ok(pid)) => {
                shell.pid = pid;
                Ok(shell)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout {
                operation: format!("opening a shell in {env}"),
                after: OPEN_TIMEOUT,
            }),
        }
    }

    async fn wait_ready(&mut self) -> Result<u32> {
        let mut events = Vec::new();
        let mut stderr = Vec::new();
        loop {
            match self.output.next_chunk().await {
                Some(OutputChunk::Stdout(b)) => self.stdout.push(&b, &mut events),
                Some(OutputChunk::Stderr(b)) => stderr.extend_from_slice(&b),
                None => {
                    let why = String::from_utf8_lossy(&stderr).trim().to_owned();
                    return Err(self.ended("opening", &why).await);
                }
            }
            if let Some(pid) = events.iter().find_map(|e| match e {
                Event::Ready(pid) => Some(*pid),
                _ => None,
            }) {
                return Ok(pid);
            }
            events.clear();
        }
    }

    /// The environment the shell runs in.
    #[must_use]
    pub fn environment(&self) -> &EnvironmentId {
        &self.env
    }

    /// Whether the shell has ended (every later command is [`Error::ShellClosed`]).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// A handle that interrupts the command running in this shell, usable while
    /// [`Shell::run`] is waiting (from another task).
    #[must_use]
    pub fn interrupter(&self) -> ShellInterrupter {
        ShellInterrupter {
            engine: self.engine.clone(),
            env: self.env.clone(),
            user: self.user.clone(),
            running: self.running.clone(),
        }
    }

    /// Runs `command` in the shell and captures its output, at most
    /// [`ShellCommand::output_limit`] bytes of each stream. A non-zero exit code is data.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] before any I/O; [`Error::Timeout`] after killing the command's
    /// tree at its timeout (the shell lives on, unless the command ran only builtins: see the
    /// module's caveats); [`Error::ShellClosed`] when the shell ended (the command ran `exit`
    /// or `exec`, it was killed, its stream dropped) or had ended before;
    /// [`Error::ConnectionLost`] or [`Error::EnvironmentGone`] when the engine says the
    /// connection broke or the environment stopped under the command.
    pub async fn run(&mut self, command: ShellCommand) -> Result<ExecOutput> {
        let limit = command.output_limit;
        let started = Instant::now();
        let (mut stdout, mut stderr) = (CappedBuffer::new(limit), CappedBuffer::new(limit));
        let status = self
            .run_streaming(command, |chunk| match chunk {
                OutputChunk::Stdout(b) => stdout.push(&b),
                OutputChunk::Stderr(b) => stderr.push(&b),
            })
            .await?;
        Ok(ExecOutput {
            status,
            stdout: stdout.buf.freeze(),
            stderr: stderr.buf.freeze(),
            stdout_truncated: stdout.truncated,
            stderr_truncated: stderr.truncated,
            duration: started.elapsed(),
            oom: None,
        })
    }

    /// Runs `command` in the shell, handing each piece of output to `on_output` as it comes
    /// (memory stays bounded however much the command prints), and returns its exit status.
    ///
    /// # Errors
    /// As [`Shell::run`].
    pub async fn run_streaming<F>(
        &mut self,
        command: ShellCommand,
        mut on_output: F,
    ) -> Result<ExitStatus>
    where
        F: FnMut(OutputChunk) + Send,
    {
        command.validate()?;
        if let Some(reason) = &self.closed {
            return Err(self.closed_error(reason.clone()));
        }
        self.seq += 1;
        let seq = self.seq;
        self.stdout.want = seq;
        self.stderr.want = seq;
        let marker = format!("{}-{seq}-c", self.kill_mark);
        let stdin = command.stdin.unwrap_or_default();
        let lines = command.script.split('\n').count();
        let mut frame = format!("{seq} {} {lines}\n{}\n", stdin.len(), command.script).into_bytes();
        frame.extend_from_slice(&stdin);
        *lock(&self.running) = Some(marker.clone());
        let started = Instant::now();
        if let Err(e) = self.send(&frame).await {
            return Err(self
                .ended(
                    "running a command",
                    &format!("writing the command failed: {e}"),
                )
                .await);
        }
        let result = self
            .wait_end(seq, &marker, started, command.timeout, &mut on_output)
            .await;
        *lock(&self.running) = None;
        result
    }

    async fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.stdin.write_all(frame).await?;
        self.stdin.flush().await
    }

    async fn wait_end(
        &mut self,
        seq: u64,
        marker: &str,
        started: Instant,
        timeout: Option<Duration>,
        on_output: &mut (dyn FnMut(OutputChunk) + Send),
    ) -> Result<ExitStatus> {
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        let mut deadline = timeout.map_or(far, |t| tokio::time::Instant::from_std(started + t));
        let mut sweep: Option<tokio::task::JoinHandle<Result<ExecOutput>>> = None;
        let (mut out_end, mut err_end) = (None, None);
        let mut events = Vec::new();
        while out_end.is_none() || err_end.is_none() {
            tokio::select! {
                chunk = self.output.next_chunk() => {
                    let Some(chunk) = chunk else {
                        if let Some(task) = sweep {
                            task.abort();
                        }
                        return Err(self.ended("running a command", "the shell's output ended").await);
                    };
                    let (framer, bytes, is_out) = match chunk {
                        OutputChunk::Stdout(b) => (&mut self.stdout, b, true),
                        OutputChunk::Stderr(b) => (&mut self.stderr, b, false),
                    };
                    framer.push(&bytes, &mut events);
                    for event in events.drain(..) {
                        match event {
                            Event::Data(d) if sweep.is_none() => on_output(if is_out {
                                OutputChunk::Stdout(d)
                            } else {
                                OutputChunk::Stderr(d)
                            }),
                            Event::End(n, rc) if n == seq && is_out => out_end = Some(rc),
                            Event::End(n, rc) if n == seq => err_end = Some(rc),
                            _ => {}
                        }
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    if sweep.is_some() {
                        // The command ran builtins only: nothing was left to kill but the shell.
                        self.kill_shell().await;
                        return Err(Error::Timeout {
                            operation: format!("shell command in {} (the shell was ended too: the command ran only shell builtins)", self.env),
                            after: timeout.unwrap_or_default(),
                        });
                    }
                    let engine = self.engine.clone();
                    let env = self.env.clone();
                    let mut req = ExecRequest::new(sweep_sparing_argv(marker, started.elapsed(), self.pid));
                    req.user.clone_from(&self.user);
                    sweep = Some(tokio::spawn(async move { engine.exec(&env, req).await }));
                    deadline = tokio::time::Instant::now() + TIMEOUT_GRACE;
                }
            }
        }
        let Some(task) = sweep else {
            return Ok(ExitStatus(out_end.unwrap_or_default()));
        };
        let after = timeout.unwrap_or_default();
        let operation = format!("shell command in {}", self.env);
        match task.await {
            Ok(Ok(out)) => {
                Err(SweepReport::parse(&out.stdout_lossy()).timeout_error(operation, after))
            }
            _ => Err(Error::Timeout { operation, after }),
        }
    }

    /// Ends the shell process by its pid (a separate exec), so its stream ends.
    async fn kill_shell(&mut self) {
        let mut req = ExecRequest::new(["kill", "-KILL", &self.pid.to_string()]);
        req.user.clone_from(&self.user);
        let _ = self.engine.exec(&self.env, req).await;
        self.closed = Some("it was ended at a command's timeout".into());
    }

    /// Records that the shell ended, learning its exit code where possible.
    async fn ended(&mut self, operation: &str, why: &str) -> Error {
        let mut reason = why.to_owned();
        let mut engine_error = None;
        if let Some(process) = self.process.take() {
            match tokio::time::timeout(Duration::from_secs(5), process.wait()).await {
                Ok(Ok(status)) => reason = format!("{reason}; the shell exited with {status}"),
                Ok(Err(e)) => {
                    reason = format!("{reason}; {e}");
                    engine_error = Some(e);
                }
                Err(_) => {}
            }
        }
        if reason.is_empty() {
            reason = "the shell ended".into();
        }
        self.closed = Some(reason.clone());
        // A lost connection or a stopped environment says more than "closed", and is typed.
        if let Some(e) = engine_error.filter(|e| {
            matches!(
                e.kind(),
                crate::ErrorKind::ConnectionLost | crate::ErrorKind::EnvironmentGone
            )
        }) {
            return e;
        }
        Error::ShellClosed {
            env: self.env.to_string(),
            operation: operation.into(),
            reason,
        }
    }

    fn closed_error(&self, reason: String) -> Error {
        Error::ShellClosed {
            env: self.env.to_string(),
            operation: "running a command".into(),
            reason: format!("it had ended before: {reason}"),
        }
    }

    /// Ends the shell: closes its stdin (the shell exits as at the end of a script) and waits
    /// for it. Background jobs it started keep running; dropping the shell instead kills them.
    ///
    /// # Errors
    /// The engine's error when the shell's end could not be learned.
    pub async fn close(mut self) -> Result<()> {
        let _ = self.stdin.close().await;
        if let Some(process) = self.process.take() {
            process.wait().await?;
        }
        Ok(())
    }
}
