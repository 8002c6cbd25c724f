//! Stateful shells: one long-lived `sh` over one [`ContainerEngine::exec_streaming`] stream,
//! running commands one at a time at the speed of the shell itself. See [`Shell`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::exec::{ExecOutput, ExecProcess, ExecStdin, OutputChunk, OutputStream, Stdin};
use crate::{
    sweep_sparing_argv, ContainerEngine, EnvironmentId, ExecRequest, ExitStatus, SweepReport,
    DEFAULT_OUTPUT_LIMIT,
};

/// How long a timed-out command may take to end after its tree was killed before the shell
/// itself is ended (a command looping in shell builtins has no process to kill).
pub const TIMEOUT_GRACE: Duration = Duration::from_secs(5);

/// How long [`Shell::open`] waits for the shell to say it is ready.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// The driver loop; see the module docs. `$1` is the token. Its variables start with
/// `__berth_` so that commands are unlikely to clobber them. Markers go to fds 8 and 9 (copies
/// of stdout and stderr made at start), so a command that redirects its shell's stdout
/// (`exec >log`) does not lose them; commands run with 8 and 9 closed.
const DRIVER: &str = r#"__berth_t=$1
shift
exec 8>&1 9>&2
printf '%s R %s\n' "$__berth_t" "$$" >&8
while IFS=' ' read -r __berth_n __berth_i __berth_k; do
  __berth_c=
  while [ "$__berth_k" -gt 0 ] && IFS= read -r __berth_l; do
    __berth_c="$__berth_c$__berth_l
"
    __berth_k=$((__berth_k - 1))
  done
  __berth_f=/dev/null
  if [ "$__berth_i" -gt 0 ]; then
    __berth_f=/tmp/.berth-shell-$__berth_t.in
    __berth_b=$((__berth_i / 65536))
    { [ "$__berth_b" -eq 0 ] || dd bs=65536 count="$__berth_b" iflag=fullblock
      [ $((__berth_i % 65536)) -eq 0 ] || dd bs=$((__berth_i % 65536)) count=1 iflag=fullblock
    } 2>/dev/null >"$__berth_f"
  fi
  printf '%s S %s\n' "$__berth_t" "$__berth_n" >&8
  printf '%s S %s\n' "$__berth_t" "$__berth_n" >&9
  BERTH_EXEC_ID=$__berth_t-$__berth_n-c
  export BERTH_EXEC_ID
  command eval "$__berth_c" <"$__berth_f" 8>&- 9>&-
  __berth_r=$?
  [ "$__berth_f" = /dev/null ] || rm -f "$__berth_f"
  printf '%s E %s %s\n' "$__berth_t" "$__berth_n" "$__berth_r" >&8
  printf '%s E %s %s\n' "$__berth_t" "$__berth_n" "$__berth_r" >&9
done
"#;

/// Sends SIGINT to every process whose environment carries `BERTH_EXEC_ID=$1` (a command's
/// processes; the shell itself carries another value). Only builtins: `read` drops the NULs
/// between variables, and markers end in `-c`, so one command's marker is never a part of
/// another's.
const INTERRUPT: &str = r#"m="BERTH_EXEC_ID=$1"
for d in /proc/[0-9]*; do
  { while IFS= read -r e || [ -n "$e" ]; do
      case $e in *"$m"*) kill -INT "${d#/proc/}"; break ;; esac; e=
    done < "$d/environ"; } 2>/dev/null
done
exit 0
"#;

/// How a [`Shell`] is opened, or a [`DetachedCommand`](crate::DetachedCommand) run: who runs
/// it and where. Unset fields take the environment's spec (its env, workdir and user apply as
/// for any exec).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShellOptions {
    /// Extra environment variables, on top of the environment's.
    pub env: BTreeMap<String, String>,
    /// Starting directory, default the environment's.
    pub workdir: Option<String>,
    /// User (`uid`, `uid:gid`, `name`), default the environment's.
    pub user: Option<String>,
}

impl ShellOptions {
    /// Adds one environment variable.
    #[must_use]
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets the starting directory.
    #[must_use]
    pub fn with_workdir(mut self, dir: impl Into<String>) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    /// Sets the user.
    #[must_use]
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }
}

/// One command for [`Shell::run`]: a shell script run in the shell's own process.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShellCommand {
    /// The script (any `sh` text, several lines included).
    pub script: String,
    /// What the command reads on stdin, then end of file; `None` is end of file at once.
    pub stdin: Option<Bytes>,
    /// Kill the command's process tree after this long; the shell lives on.
    pub timeout: Option<Duration>,
    /// Per-stream cap of the output [`Shell::run`] keeps; the rest is read and dropped.
    pub output_limit: usize,
}

impl ShellCommand {
    /// A command running `script`, with no stdin, no timeout and the default output cap.
    pub fn new(script: impl Into<String>) -> Self {
        Self {
            script: script.into(),
            stdin: None,
            timeout: None,
            output_limit: DEFAULT_OUTPUT_LIMIT,
        }
    }

    /// Gives the command these stdin bytes.
    #[must_use]
    pub fn with_stdin(mut self, stdin: impl Into<Bytes>) -> Self {
        self.stdin = Some(stdin.into());
        self
    }

    /// Sets the timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the per-stream output cap.
    #[must_use]
    pub fn with_output_limit(mut self, limit: usize) -> Self {
        self.output_limit = limit;
        self
    }

    /// Checks the command before any I/O.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `script`, `timeout` or `output_limit`.
    pub fn validate(&self) -> Result<()> {
        if self.script.contains('\0') {
            return Err(Error::invalid_spec("script", "contains a NUL byte"));
        }
        // The same rules as an exec's for the fields they share.
        let mut req = ExecRequest::new(["sh"]).with_output_limit(self.output_limit);
        req.timeout = self.timeout;
        req.validate()
    }
}

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
/// trailing newline and very long lines come through exactly. Bytes outside the current
/// command's frame (see the caveat on background jobs) are dropped.
///
/// # Timeouts and interrupts
/// Each command's processes carry their own value of
/// [`EXEC_MARKER_VAR`](crate::EXEC_MARKER_VAR). At the timeout the same sweep as plain exec
/// timeouts ([`sweep_sparing_argv`](crate::sweep_sparing_argv)) kills the command's process
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
    token: String,
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

/// What was seen on one stream of the shell.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// Output of the command being waited for.
    Data(Bytes),
    /// The shell is ready; its pid.
    Ready(u32),
    /// The command with this sequence number ended with this code.
    End(u64, i32),
}

/// Splits one output stream of the shell into the current command's bytes and markers.
struct Framer {
    /// `TOKEN ` as bytes.
    prefix: memmem::Finder<'static>,
    prefix_len: usize,
    buf: BytesMut,
    /// The sequence number whose output is wanted.
    want: u64,
    inside: bool,
}

impl Framer {
    fn new(token: &str) -> Self {
        let prefix = format!("{token} ").into_bytes();
        Self {
            prefix_len: prefix.len(),
            prefix: memmem::Finder::new(&prefix).into_owned(),
            buf: BytesMut::new(),
            want: 0,
            inside: false,
        }
    }

    fn emit(&mut self, upto: usize, events: &mut Vec<Event>) {
        let bytes = self.buf.split_to(upto).freeze();
        if self.inside && !bytes.is_empty() {
            events.push(Event::Data(bytes));
        }
    }

    fn push(&mut self, chunk: &[u8], events: &mut Vec<Event>) {
        self.buf.extend_from_slice(chunk);
        loop {
            let Some(at) = self.prefix.find(&self.buf) else {
                // Keep what could be the start of a marker split across chunks.
                let keep = (self.prefix_len - 1).min(self.buf.len());
                self.emit(self.buf.len() - keep, events);
                return;
            };
            self.emit(at, events);
            let Some(nl) = memchr::memchr(b'\n', &self.buf[self.prefix_len..]) else {
                return;
            };
            let line = self.buf.split_to(self.prefix_len + nl + 1);
            let text = String::from_utf8_lossy(&line[self.prefix_len..line.len() - 1]);
            let mut words = text.split(' ');
            match (words.next(), words.next(), words.next()) {
                (Some("R"), Some(pid), None) => {
                    if let Ok(pid) = pid.parse() {
                        events.push(Event::Ready(pid));
                    }
                }
                (Some("S"), Some(n), None) => {
                    self.inside = n.parse() == Ok(self.want);
                }
                (Some("E"), Some(n), Some(rc)) => {
                    self.inside = false;
                    if let (Ok(n), Ok(rc)) = (n.parse(), rc.parse()) {
                        events.push(Event::End(n, rc));
                    }
                }
                // Not a marker of ours (only a command that read the token can print this).
                _ => {
                    if self.inside {
                        events.push(Event::Data(line.freeze()));
                    }
                }
            }
        }
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
        let mut req = ExecRequest::new(["sh", "-c", DRIVER, "berth-shell", token.as_str()])
            .with_stdin(Stdin::Piped);
        req.env = options.env;
        req.workdir = options.workdir;
        req.user.clone_from(&options.user);
        req.validate()?;
        let mut process = engine.exec_streaming(env, req).await?;
        let (Some(stdin), Some(output)) = (process.take_stdin(), process.take_output()) else {
            return Err(Error::backend(
                "core",
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
            token,
            pid: 0,
            process: Some(process),
            stdin,
            output,
            seq: 0,
            closed: None,
            running: Arc::default(),
        };
        let ready = tokio::time::timeout(OPEN_TIMEOUT, shell.wait_ready()).await;
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
        let (mut stdout, mut stderr) = (Capped::new(limit), Capped::new(limit));
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
        let marker = format!("{}-{seq}-c", self.token);
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

struct Capped {
    buf: BytesMut,
    limit: usize,
    truncated: bool,
}

impl Capped {
    fn new(limit: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            limit,
            truncated: false,
        }
    }

    fn push(&mut self, data: &[u8]) {
        let room = self.limit.saturating_sub(self.buf.len());
        if data.len() > room {
            self.truncated = true;
        }
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(framer: &mut Framer, pieces: &[&[u8]]) -> (Vec<u8>, Vec<Event>) {
        let mut events = Vec::new();
        for p in pieces {
            framer.push(p, &mut events);
        }
        let mut data = Vec::new();
        let mut rest = Vec::new();
        for e in events {
            match e {
                Event::Data(d) => data.extend_from_slice(&d),
                other => rest.push(other),
            }
        }
        (data, rest)
    }

    /// Markers split anywhere across chunks are found; stray bytes outside the wanted frame
    /// are dropped; marker-like text with another token, and no trailing newline, pass.
    #[test]
    fn framer_splits_output_and_markers_at_any_chunk_boundary() {
        let token = "berthT0K";
        let stream: Vec<u8> =
            b"stray berthT0K R 42\nberthT0K S 1\nold\nberthT0K E 1 0\nbg\nberthT0K S 2\nberthX E 2 5\n\x00\xffno newlineberthT0K E 2 7\nlate"
                .to_vec();
        for cut in 0..stream.len() {
            let mut framer = Framer::new(token);
            framer.want = 2;
            let (data, events) = feed(&mut framer, &[&stream[..cut], &stream[cut..]]);
            assert_eq!(
                data,
                b"berthX E 2 5\n\x00\xffno newline".to_vec(),
                "cut at {cut}"
            );
            assert_eq!(
                events,
                [Event::Ready(42), Event::End(1, 0), Event::End(2, 7)],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn command_validation_names_the_field() {
        assert!(ShellCommand::new("true").validate().is_ok());
        let err = ShellCommand::new("a\0b").validate().unwrap_err();
        assert!(err.to_string().contains("script"), "{err}");
        assert!(ShellCommand::new("x")
            .with_timeout(Duration::ZERO)
            .validate()
            .is_err());
        assert!(ShellCommand::new("x")
            .with_output_limit(0)
            .validate()
            .is_err());
    }
}
