//! Detached commands: commands that outlive the connection (and the process) that started
//! them, re-attachable from any offset by any later client. See [`DetachedCommands`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::exec::{ExecOutput, ExecProcess, ExitStatus};
use crate::kill::{sweep_argv, SweepReport};
use crate::{ContainerEngine, EnvironmentId, ExecRequest, ShellOptions};

/// Where detached commands keep their files in the environment.
pub const DETACHED_DIR: &str = "/tmp/.berth/cmd";

/// Default cap per stream of a detached command's kept output: 64 MiB (the first bytes).
pub const DETACHED_OUTPUT_CAP: u64 = 64 * 1024 * 1024;

/// `sh -c START berth-detach SUPERVISOR DIR CAP MARKER SCRIPT`: makes the directory and
/// starts the supervisor detached.
const START: &str = r#"s=$1; shift; d=$1
mkdir -p /tmp/.berth/cmd 2>/dev/null
chmod 1777 /tmp/.berth /tmp/.berth/cmd 2>/dev/null
mkdir "$d" && mkfifo "$d/o" "$d/e" && : >"$d/out" && : >"$d/err" || exit 125
printf '%s' "$4" >"$d/cmd"
date +%s >"$d/started"
unset BERTH_EXEC_ID
if command -v setsid >/dev/null 2>&1; then
  setsid sh -c "$s" berth-supervisor "$@" </dev/null >/dev/null 2>&1 &
else
  sh -c "$s" berth-supervisor "$@" </dev/null >/dev/null 2>&1 &
fi
exit 0
"#;

/// The supervisor: copies each stream through `dd` (at most CAP bytes, each read passed on
/// at once, where `head` would buffer), then drains the rest, runs the
/// command in a session of its own carrying MARKER (so the tree kill finds it and never the
/// supervisor), and writes the exit code once the output is complete.
const SUPERVISOR: &str = r#"d=$1 cap=$2 m=$3 c=$4
echo $$ >"$d/spid"
trap '' HUP
{ dd bs=65536 iflag=count_bytes count="$cap"; cat >/dev/null; } <"$d/o" >"$d/out" 2>/dev/null &
{ dd bs=65536 iflag=count_bytes count="$cap"; cat >/dev/null; } <"$d/e" >"$d/err" 2>/dev/null &
if command -v setsid >/dev/null 2>&1; then
  BERTH_EXEC_ID=$m setsid sh -c "$c" </dev/null >"$d/o" 2>"$d/e" &
else
  BERTH_EXEC_ID=$m sh -c "$c" </dev/null >"$d/o" 2>"$d/e" &
fi
p=$!
echo "$p" >"$d/pid"
wait "$p"
rc=$?
wait
echo "$rc" >"$d/code.tmp" && mv "$d/code.tmp" "$d/code"
rm -f "$d/o" "$d/e"
"#;

/// `sh -c ATTACH berth-attach DIR OUT_OFFSET ERR_OFFSET`: follows both files from the
/// offsets, then exits with the command's code. Whether the command ended is read before the
/// files, so the last round prints everything.
const ATTACH: &str = r#"d=$1 o=$2 e=$3
while :; do
  f=; [ -f "$d/code" ] && f=1
  n=$(($(wc -c <"$d/out")))
  if [ "$n" -gt "$o" ]; then tail -c +$((o + 1)) "$d/out" | head -c $((n - o)); o=$n; fi
  n=$(($(wc -c <"$d/err")))
  if [ "$n" -gt "$e" ]; then tail -c +$((e + 1)) "$d/err" | head -c $((n - e)) >&2; e=$n; fi
  if [ -n "$f" ]; then read -r rc <"$d/code"; exit "$rc"; fi
  if [ -f "$d/spid" ] && ! [ -d "/proc/$(cat "$d/spid")" ] && ! [ -f "$d/code" ]; then exit 125; fi
  sleep 0.02
done
"#;

/// `sh -c STATUS berth-status DIR...`: one line per command directory:
/// `ID STATE CODE OUT_BYTES ERR_BYTES STARTED PID` (STATE `running`, `exited` or `lost`;
/// CODE `-` unless exited).
const STATUS: &str = r#"for d in "$@"; do
  [ -d "$d" ] || continue
  id=${d%/}; id=${id##*/}
  st=running; rc=-
  if [ -f "$d/code" ]; then st=exited; read -r rc <"$d/code"
  elif [ -f "$d/spid" ] && ! [ -d "/proc/$(cat "$d/spid")" ]; then st=lost
  fi
  p=-; [ -f "$d/pid" ] && read -r p <"$d/pid"
  t=0; [ -f "$d/started" ] && read -r t <"$d/started"
  echo "$id $st $rc $(($(wc -c <"$d/out"))) $(($(wc -c <"$d/err"))) $t $p"
done
exit 0
"#;

/// The id of a detached command: 12 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandId(String);

impl CommandId {
    /// A fresh random id.
    #[must_use]
    pub fn generate() -> Self {
        Self(crate::SessionId::generate().as_str().to_owned())
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn dir(&self) -> String {
        format!("{DETACHED_DIR}/{}", self.0)
    }

    fn marker(&self) -> String {
        format!("berth-cmd-{}-c", self.0)
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for CommandId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.len() == 12
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s.to_owned()))
        } else {
            Err(Error::invalid_spec(
                "command id",
                format!("expected 12 lowercase hex digits, got {s:?}"),
            ))
        }
    }
}

/// A command to start detached: a shell script run with `sh -c`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DetachedCommand {
    /// The script.
    pub script: String,
    /// Who runs it and where (env, workdir, user); unset fields take the environment's.
    pub options: ShellOptions,
    /// Bytes kept per stream (the first ones); default [`DETACHED_OUTPUT_CAP`].
    pub output_cap: u64,
}

impl DetachedCommand {
    /// A detached `sh -c script` with the defaults documented on each field.
    pub fn new(script: impl Into<String>) -> Self {
        Self {
            script: script.into(),
            options: ShellOptions::default(),
            output_cap: DETACHED_OUTPUT_CAP,
        }
    }

    /// Sets who runs it and where.
    #[must_use]
    pub fn with_options(mut self, options: ShellOptions) -> Self {
        self.options = options;
        self
    }

    /// Sets the per-stream cap of kept output.
    #[must_use]
    pub fn with_output_cap(mut self, cap: u64) -> Self {
        self.output_cap = cap;
        self
    }
}

/// Where [`DetachedCommands::attach`] starts reading each stream, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachFrom {
    /// Offset in stdout.
    pub stdout: u64,
    /// Offset in stderr.
    pub stderr: u64,
}

/// Where a detached command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandState {
    /// Still running (or its output still open).
    Running,
    /// Ended with this status.
    Exited(ExitStatus),
    /// Its supervisor is gone without recording an end (killed from outside).
    Lost,
}

/// What [`DetachedCommands::status`] and [`DetachedCommands::list`] report.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DetachedStatus {
    /// The command.
    pub id: CommandId,
    /// Where it is.
    pub state: CommandState,
    /// Bytes of stdout kept so far.
    pub stdout_bytes: u64,
    /// Bytes of stderr kept so far.
    pub stderr_bytes: u64,
    /// When it started, Unix seconds.
    pub started_unix: u64,
    /// Its pid in the environment, once known.
    pub pid: Option<u32>,
}

impl DetachedStatus {
    fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.split(' ').collect();
        let [id, state, code, out, err, started, pid] = f[..] else {
            return None;
        };
        let state = match state {
            "running" => CommandState::Running,
            "exited" => CommandState::Exited(ExitStatus(code.parse().ok()?)),
            "lost" => CommandState::Lost,
            _ => return None,
        };
        Some(Self {
            id: id.parse().ok()?,
            state,
            stdout_bytes: out.parse().ok()?,
            stderr_bytes: err.parse().ok()?,
            started_unix: started.parse().unwrap_or(0),
            pid: pid.parse().ok(),
        })
    }
}

/// The detached commands of one environment.
///
/// [`DetachedCommands::start`] runs a small `sh` supervisor inside the environment, in a
/// session of its own, without the starting exec's
/// [`EXEC_MARKER_VAR`](crate::backend::EXEC_MARKER_VAR) and re-parented to PID 1, so neither the end of
/// the starting exec nor its kill-on-drop reaches it. The supervisor writes under
/// [`DETACHED_DIR`]`/<id>/`: `out` and `err` (the command's output), `code` (its exit code,
/// written once both streams are complete), `pid`, `spid` (the supervisor's), `started` (Unix
/// seconds) and `cmd` (the script). The files live in the environment's `/tmp`, so they go
/// with the environment.
///
/// Output is bounded: each stream keeps its first `output_cap` bytes (the oldest data), the
/// rest is read and dropped (the command is never blocked or signalled for printing too much).
///
/// [`DetachedCommands::attach`] is an exec that follows the files from the given offsets and
/// exits with the command's exit code: the same bytes every time, from any process.
///
/// # Caveats
/// The command's exit code is written once its output streams close: a background process
/// the command left holding its stdout delays it, as it delays the end of a plain exec. The
/// image needs `sh`, `mkfifo`, `setsid`, `dd` (with `iflag=count_bytes`: busybox, GNU),
/// `head`, `tail`, `wc` and `sleep` (busybox has them
/// all); without `setsid` the supervisor stays in the starting exec's session.
///
/// ```no_run
/// use std::sync::Arc;
/// use berth_engine_core::{AttachFrom, ContainerEngine, DetachedCommand, DetachedCommands, EnvironmentId};
///
/// async fn build(engine: Arc<dyn ContainerEngine>, env: EnvironmentId) -> berth_engine_core::Result<()> {
///     let commands = DetachedCommands::new(engine, env);
///     let id = commands.start(DetachedCommand::new("make -j8 2>&1")).await?;
///     // ... the client may die here; any later process re-attaches with the id:
///     let out = commands.attach(&id, AttachFrom::default()).await?.collect(1 << 20).await?;
///     println!("{} ({})", out.stdout_lossy(), out.status);
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct DetachedCommands {
    engine: Arc<dyn ContainerEngine>,
    env: EnvironmentId,
}

impl fmt::Debug for DetachedCommands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DetachedCommands")
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

impl DetachedCommands {
    /// The detached commands of `env`.
    #[must_use]
    pub fn new(engine: Arc<dyn ContainerEngine>, env: EnvironmentId) -> Self {
        Self { engine, env }
    }

    async fn script(&self, argv: Vec<String>) -> Result<ExecOutput> {
        self.engine.exec(&self.env, ExecRequest::new(argv)).await
    }

    /// Starts `command` detached and returns its id once the supervisor is launched.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] before any I/O; the engine's error when the exec fails;
    /// [`Error::Backend`] with the shell's message when the files cannot be made.
    pub async fn start(&self, command: DetachedCommand) -> Result<CommandId> {
        if command.script.contains('\0') {
            return Err(Error::invalid_spec("script", "contains a NUL byte"));
        }
        if command.output_cap == 0 {
            return Err(Error::invalid_spec(
                "output_cap",
                "must be greater than zero",
            ));
        }
        let id = CommandId::generate();
        let mut req = ExecRequest::new([
            "sh".to_owned(),
            "-c".to_owned(),
            START.to_owned(),
            "berth-detach".to_owned(),
            SUPERVISOR.to_owned(),
            id.dir(),
            command.output_cap.to_string(),
            id.marker(),
            command.script,
        ]);
        req.env = command.options.env;
        req.workdir = command.options.workdir;
        req.user = command.options.user;
        let out = self.engine.exec(&self.env, req).await?;
        if !out.status.success() {
            return Err(Error::backend(
                self.engine.backend(),
                "start a detached command",
                format!(
                    "making {} failed ({}): {}",
                    id.dir(),
                    out.status,
                    out.stderr_lossy().trim()
                ),
            ));
        }
        Ok(id)
    }

    /// Follows the command's output from `from`, then ends with the command's exit code
    /// ([`ExecProcess::wait`] returns it; [`ExecProcess::collect`] gathers everything). Call it
    /// again, from any process, as often as needed: the bytes are the same each time.
    ///
    /// # Caveats
    /// Output arrives in rounds of at most 20 ms. A command whose supervisor was killed
    /// ([`CommandState::Lost`]) ends the attach with code 125.
    ///
    /// # Errors
    /// [`Error::NotFound`] naming the command when the environment has no such command; the
    /// engine's error otherwise.
    pub async fn attach(&self, id: &CommandId, from: AttachFrom) -> Result<ExecProcess> {
        self.status(id).await?;
        let req = ExecRequest::new([
            "sh".to_owned(),
            "-c".to_owned(),
            ATTACH.to_owned(),
            "berth-attach".to_owned(),
            id.dir(),
            from.stdout.to_string(),
            from.stderr.to_string(),
        ]);
        self.engine.exec_streaming(&self.env, req).await
    }

    /// Where the command is.
    ///
    /// # Errors
    /// [`Error::NotFound`] naming the command when the environment has no such command.
    pub async fn status(&self, id: &CommandId) -> Result<DetachedStatus> {
        self.statuses(vec![id.dir()])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::NotFound {
                what: "detached command",
                name: format!("{id} in {}", self.env),
            })
    }

    /// Every detached command of the environment, oldest first.
    ///
    /// # Errors
    /// The engine's error when the listing exec fails.
    pub async fn list(&self) -> Result<Vec<DetachedStatus>> {
        let mut all = self.statuses(vec![format!("{DETACHED_DIR}/*/")]).await?;
        all.sort_by(|a, b| (a.started_unix, &a.id).cmp(&(b.started_unix, &b.id)));
        Ok(all)
    }

    async fn statuses(&self, dirs: Vec<String>) -> Result<Vec<DetachedStatus>> {
        // A glob is expanded by the listing shell itself.
        let script = if dirs.iter().any(|d| d.contains('*')) {
            format!("set -- {}\n{STATUS}", dirs.join(" "))
        } else {
            STATUS.to_owned()
        };
        let mut argv = vec!["sh".into(), "-c".into(), script, "berth-status".into()];
        argv.extend(dirs);
        let out = self.script(argv).await?;
        Ok(out
            .stdout_lossy()
            .lines()
            .filter_map(DetachedStatus::parse)
            .collect())
    }

    /// Kills the command's process tree (the same kill as exec timeouts) and waits up to five
    /// seconds for the supervisor to record its end. A command that already ended is left as
    /// it is; a lost one (its supervisor killed from outside) may still have processes
    /// running, and they are killed too.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no such command; the engine's error when the kill
    /// could not run.
    pub async fn kill(&self, id: &CommandId) -> Result<SweepReport> {
        let status = self.status(id).await?;
        if let CommandState::Exited(_) = status.state {
            return Ok(SweepReport::default());
        }
        let out = self
            .script(sweep_argv(&id.marker(), Duration::from_secs(1)))
            .await?;
        let report = SweepReport::parse(&out.stdout_lossy());
        for _ in 0..50 {
            if self.status(id).await?.state != CommandState::Running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(report)
    }

    /// Removes a finished command's files.
    ///
    /// # Errors
    /// [`Error::Conflict`] while it runs; [`Error::NotFound`] when there is no such command.
    pub async fn remove(&self, id: &CommandId) -> Result<()> {
        if self.status(id).await?.state == CommandState::Running {
            return Err(Error::Conflict {
                what: "detached command",
                name: id.to_string(),
                reason: "it is still running; kill it first".into(),
            });
        }
        let out = self
            .script(vec!["rm".into(), "-rf".into(), id.dir()])
            .await?;
        if !out.status.success() {
            return Err(Error::backend(
                self.engine.backend(),
                "remove a detached command",
                format!("rm -rf {} failed: {}", id.dir(), out.stderr_lossy().trim()),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_status_lines_parse() {
        let id = CommandId::generate();
        assert_eq!(id.as_str().parse::<CommandId>().unwrap(), id);
        assert!("ABC".parse::<CommandId>().is_err());
        assert!("../../etc/xx".parse::<CommandId>().is_err());
        let s = DetachedStatus::parse("0123456789ab exited 7 10 2 1700000000 55").unwrap();
        assert_eq!(s.state, CommandState::Exited(ExitStatus(7)));
        assert_eq!((s.stdout_bytes, s.stderr_bytes, s.pid), (10, 2, Some(55)));
        let s = DetachedStatus::parse("0123456789ab running - 0 0 0 -").unwrap();
        assert_eq!((s.state, s.pid), (CommandState::Running, None));
        assert!(DetachedStatus::parse("junk").is_none());
    }
}
