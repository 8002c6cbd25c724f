//! Batch runs: a command run to completion in an environment's image, detached from the
//! client that submitted it ([`ContainerEngine::submit_run`](crate::ContainerEngine::submit_run)).
//!
//! A run is a container (Docker) or a batch/v1 Job (Kubernetes) whose main process is the
//! command, labelled like an environment plus [`LABEL_RUN`], and recorded as detached from
//! creation, so no `gc` takes its gone submitter for a crash. Its outcome is read from the
//! engine's status of the run ([`RunStatus`]), never from the end of its log stream. Its logs
//! come with timestamps, and a [`LogCursor`] resumes a dropped stream without losing or
//! repeating a line.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::str::FromStr;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::spec::EnvironmentSpec;
use crate::SessionId;

/// Label marking an object as a batch run (value [`RUN_ONCE`] or [`RUN_SCHEDULED`]), so
/// environments and runs are told apart by label alone.
pub const LABEL_RUN: &str = "berth.dev/run";
/// [`LABEL_RUN`] of a run that happens once.
pub const RUN_ONCE: &str = "once";
/// [`LABEL_RUN`] of a schedule (a CronJob) and of the runs it starts.
pub const RUN_SCHEDULED: &str = "scheduled";

/// What to run: the environment's spec (image, resources, security, lifetime, labels), the
/// command, and optionally a cron schedule.
///
/// ```
/// use berth_engine_core::{EnvironmentSpec, ImageRef, RunSpec, SessionId};
///
/// let env = EnvironmentSpec::new(ImageRef::new("busybox:1.36").unwrap(), SessionId::generate());
/// let run = RunSpec::new(env, ["sh", "-c", "make test"]).with_schedule("0 4 * * *");
/// run.validate().unwrap();
/// assert!(RunSpec::new(run.env.clone(), Vec::<String>::new()).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunSpec {
    /// Everything an environment is made from; the run's container or pod is made the same
    /// way, running [`RunSpec::command`] instead of the keepalive. Its `max_lifetime` is the
    /// run's deadline.
    pub env: EnvironmentSpec,
    /// The command (argv), run as the main process.
    pub command: Vec<String>,
    /// A cron schedule of five fields; `None` runs once, now.
    pub schedule: Option<String>,
    /// What is put into the workspace (at the environment's `mount_path`) before the
    /// command's first instruction; `None`: nothing.
    pub source: Option<RunSource>,
}

/// What a run finds in its workspace when its command starts ([`RunSpec::source`]).
///
/// Either form puts the files at the environment's `mount_path`, which needs a workspace
/// there: without one, an engine gives the run an ephemeral one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunSource {
    /// A git repository cloned by the cluster before the command starts (Kubernetes: an init
    /// container). Docker has no such step: the client checks the repository out and passes
    /// [`RunSource::Directory`] instead.
    Git {
        /// The repository (`https://`, `http://`, `ssh://`, `git://`).
        url: String,
        /// The branch or tag (default: the remote's HEAD).
        branch: Option<String>,
    },
    /// A directory on the submitting machine, whose contents are copied into the workspace
    /// before the command starts (Docker).
    Directory(std::path::PathBuf),
}

impl RunSource {
    /// Checks the source's shape before any I/O: a URL or branch a `git clone` cannot take as
    /// an option, a directory that is absolute.
    ///
    /// ```
    /// use berth_engine_core::RunSource;
    ///
    /// let git = |url: &str, branch: Option<&str>| RunSource::Git { url: url.into(), branch: branch.map(Into::into) };
    /// assert!(git("https://example.com/r.git", Some("main")).validate().is_ok());
    /// assert!(git("--upload-pack=touch /tmp/x", None).validate().is_err());
    /// assert!(git("https://example.com/r.git", Some("-b")).validate().is_err());
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `git`, `branch` or `source`.
    pub fn validate(&self) -> Result<()> {
        match self {
            RunSource::Git { url, branch } => {
                let bad = |s: &str| {
                    s.is_empty()
                        || s.starts_with('-')
                        || s.chars().any(|c| c.is_control() || c.is_whitespace())
                };
                if bad(url) {
                    return Err(Error::invalid_spec(
                        "git",
                        format!("expected a repository URL (no spaces, not starting with '-'), got {url:?}"),
                    ));
                }
                if let Some(b) = branch {
                    if bad(b) || b.contains("..") || b.ends_with('/') || b.starts_with('/') {
                        return Err(Error::invalid_spec(
                            "branch",
                            format!("{b:?} is not a branch or tag name git takes"),
                        ));
                    }
                }
                Ok(())
            }
            RunSource::Directory(dir) => {
                if dir.is_absolute() {
                    Ok(())
                } else {
                    Err(Error::invalid_spec(
                        "source",
                        format!("expected an absolute directory, got {}", dir.display()),
                    ))
                }
            }
        }
    }
}

impl RunSpec {
    /// A run of `command` made like `env`.
    #[must_use]
    pub fn new<I, S>(env: EnvironmentSpec, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            env,
            command: command.into_iter().map(Into::into).collect(),
            schedule: None,
            source: None,
        }
    }

    /// Runs on `schedule` (five cron fields) instead of once.
    #[must_use]
    pub fn with_schedule(mut self, schedule: impl Into<String>) -> Self {
        self.schedule = Some(schedule.into());
        self
    }

    /// Puts `source` into the workspace before the command starts.
    #[must_use]
    pub fn with_source(mut self, source: RunSource) -> Self {
        self.source = Some(source);
        self
    }

    /// Checks the spec before any I/O.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `command`, `schedule` or the environment's field.
    pub fn validate(&self) -> Result<()> {
        self.env.validate()?;
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err(Error::invalid_spec(
                "command",
                "a run needs a command (berth submit -- CMD ...)",
            ));
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err(Error::invalid_spec(
                "command",
                "an argument contains a NUL byte",
            ));
        }
        if let Some(schedule) = &self.schedule {
            validate_schedule(schedule)?;
        }
        if let Some(source) = &self.source {
            source.validate()?;
        }
        Ok(())
    }

    /// The environment the run is made as: [`RunSpec::env`], and with a [`RunSource`] an
    /// ephemeral workspace when it has none (the files need a place at `mount_path`) and
    /// `mount_path` as the working directory when it has none (the command starts in its
    /// files).
    ///
    /// ```
    /// use berth_engine_core::{EnvironmentSpec, ImageRef, RunSource, RunSpec, SessionId, Workspace};
    ///
    /// let env = EnvironmentSpec::new(ImageRef::new("busybox:1.36").unwrap(), SessionId::generate());
    /// let run = RunSpec::new(env, ["ls"]).with_source(RunSource::Directory("/tmp/x".into()));
    /// let prepared = run.prepared_env();
    /// assert_eq!(prepared.workspace, Workspace::Ephemeral);
    /// assert_eq!(prepared.workdir.as_deref(), Some("/workspace"));
    /// ```
    #[must_use]
    pub fn prepared_env(&self) -> std::borrow::Cow<'_, EnvironmentSpec> {
        if self.source.is_none() {
            return std::borrow::Cow::Borrowed(&self.env);
        }
        let mut env = self.env.clone();
        if env.workspace == crate::Workspace::None {
            env.workspace = crate::Workspace::Ephemeral;
        }
        if env.workdir.is_none() {
            env.workdir = Some(env.mount_path.clone());
        }
        std::borrow::Cow::Owned(env)
    }

    /// The labels of the run's object: the environment's ([`EnvironmentSpec::object_labels`])
    /// plus [`LABEL_RUN`] and [`LABEL_DETACHED`](crate::LABEL_DETACHED)` = true`.
    #[must_use]
    pub fn object_labels(&self, created_unix_secs: u64) -> BTreeMap<String, String> {
        let mut labels = self.env.object_labels(created_unix_secs);
        let kind = if self.schedule.is_some() {
            RUN_SCHEDULED
        } else {
            RUN_ONCE
        };
        labels.insert(LABEL_RUN.into(), kind.into());
        labels.insert(crate::LABEL_DETACHED.into(), crate::DETACHED_YES.into());
        labels
    }
}

/// Checks a five-field cron expression's shape: five fields of digits, `*`, `/`, `,`, `-`
/// (or month and day names), or one `@hourly`-style macro.
///
/// # Errors
/// [`Error::InvalidSpec`] naming `schedule`.
pub fn validate_schedule(schedule: &str) -> Result<()> {
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    let macro_ok = fields.len() == 1
        && [
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
        ]
        .contains(&fields[0]);
    let fields_ok = fields.len() == 5
        && fields.iter().all(|f| {
            f.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'*' | b'/' | b',' | b'-' | b'?'))
        });
    if macro_ok || fields_ok {
        Ok(())
    } else {
        Err(Error::invalid_spec(
            "schedule",
            format!("expected five cron fields like \"0 4 * * *\", got {schedule:?}"),
        ))
    }
}

/// The name of a run: its container (Docker) or Job/CronJob (Kubernetes). Letters, digits,
/// `_`, `.` and `-`, starting with a letter or digit.
///
/// ```
/// use berth_engine_core::RunId;
///
/// let id: RunId = "berth-s1-nightly-3f2a1".parse().unwrap();
/// assert_eq!(id.as_str(), "berth-s1-nightly-3f2a1");
/// assert!("../etc".parse::<RunId>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(String);

impl RunId {
    /// Validates `id`.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `run`.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        crate::EnvironmentId::new(id.clone()).map_err(|_| {
            Error::invalid_spec(
                "run",
                format!("expected 1 to 128 letters, digits, '_', '.' or '-' starting with a letter or digit, got {id:?}"),
            )
        })?;
        Ok(Self(id))
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The same name as an environment id, for the calls every berth object answers
    /// ([`ContainerEngine::stop`](crate::ContainerEngine::stop) removes a run).
    #[must_use]
    pub fn as_environment(&self) -> crate::EnvironmentId {
        crate::EnvironmentId::new(self.0.clone()).expect("a run id is a valid environment id")
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RunId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl TryFrom<String> for RunId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}

impl From<RunId> for String {
    fn from(id: RunId) -> Self {
        id.0
    }
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunState {
    /// Created, not running yet (pulling, scheduling).
    Pending,
    /// The command runs.
    Running,
    /// The command exited 0.
    Succeeded,
    /// The command exited non-zero ([`RunStatus::exit_code`]), or could not start.
    Failed,
    /// Cancelled by `cancel_run`.
    Cancelled,
    /// Ended by its deadline (the spec's `max_lifetime`).
    DeadlineExceeded,
    /// Its process or pod went away without an exit code (a node lost, a pod deleted).
    Lost,
    /// A schedule: it starts runs by itself and never ends.
    Scheduled,
}

impl RunState {
    /// Whether the run is over (nothing will change any more).
    #[must_use]
    pub fn is_finished(self) -> bool {
        !matches!(
            self,
            RunState::Pending | RunState::Running | RunState::Scheduled
        )
    }

    /// The name used in output (`succeeded`, `deadline_exceeded`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
            RunState::DeadlineExceeded => "deadline_exceeded",
            RunState::Lost => "lost",
            RunState::Scheduled => "scheduled",
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an engine reports about one run (or schedule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunStatus {
    /// The run's name.
    pub id: RunId,
    /// Its session, from its labels.
    pub session: Option<SessionId>,
    /// Its image.
    pub image: String,
    /// Where it is.
    pub state: RunState,
    /// The command's true exit code, when it exited (read from the container or pod status).
    pub exit_code: Option<i32>,
    /// What the engine said about an end without an exit code, or about a failure to start.
    pub message: Option<String>,
    /// The cron schedule, for a schedule.
    pub schedule: Option<String>,
    /// For a schedule: the runs it started, newest first.
    pub runs: Vec<RunId>,
    /// All of its labels.
    pub labels: BTreeMap<String, String>,
    /// Creation time, seconds since the Unix epoch, when known.
    pub created_unix_secs: Option<u64>,
}

impl RunStatus {
    /// A status; the session and creation time are read from berth's labels.
    #[must_use]
    pub fn new(
        id: RunId,
        image: impl Into<String>,
        state: RunState,
        labels: BTreeMap<String, String>,
    ) -> Self {
        let (session, created_unix_secs) = crate::status::session_and_created(&labels);
        Self {
            id,
            session,
            image: image.into(),
            state,
            exit_code: None,
            message: None,
            schedule: None,
            runs: Vec::new(),
            labels,
            created_unix_secs,
        }
    }

    /// Sets the exit code.
    #[must_use]
    pub fn with_exit_code(mut self, code: Option<i32>) -> Self {
        self.exit_code = code;
        self
    }

    /// Sets the message.
    #[must_use]
    pub fn with_message(mut self, message: Option<String>) -> Self {
        self.message = message;
        self
    }
}

/// A point in time of a log line: seconds since the Unix epoch and nanoseconds, as the
/// engines stamp them (RFC 3339 with nanoseconds, UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogTime {
    /// Whole seconds since the Unix epoch.
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

impl LogTime {
    /// Parses `2026-11-30T01:02:03.123456789Z` (any number of fraction digits, `Z` or a
    /// `+hh:mm` offset).
    ///
    /// ```
    /// use berth_engine_core::LogTime;
    ///
    /// let t = LogTime::parse("1970-01-02T00:00:01.5Z").unwrap();
    /// assert_eq!((t.secs, t.nanos), (86_401, 500_000_000));
    /// assert_eq!(t.to_rfc3339(), "1970-01-02T00:00:01.500000000Z");
    /// assert!(LogTime::parse("yesterday").is_none());
    /// ```
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let b = text.as_bytes();
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<i64> { text.get(r)?.parse().ok() };
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 {
            return None;
        }
        let mut rest = &text[19..];
        let mut nanos = 0_u32;
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            let mut padded = frac[..digits.min(9)].to_owned();
            while padded.len() < 9 {
                padded.push('0');
            }
            nanos = padded.parse().ok()?;
            rest = &frac[digits..];
        }
        let offset = match rest {
            "Z" | "z" => 0,
            _ => {
                let sign = match rest.as_bytes().first()? {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return None,
                };
                let h: i64 = rest.get(1..3)?.parse().ok()?;
                let m: i64 = rest.get(4..6)?.parse().ok()?;
                sign * (h * 3600 + m * 60)
            }
        };
        let secs =
            days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec - offset;
        Some(Self { secs, nanos })
    }

    /// RFC 3339 in UTC with nanoseconds: `2026-11-30T01:02:03.123456789Z`.
    #[must_use]
    pub fn to_rfc3339(self) -> String {
        let days = self.secs.div_euclid(86_400);
        let rem = self.secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            self.nanos
        )
    }
}

// Howard Hinnant's days-from-civil and its inverse (proleptic Gregorian, days since 1970).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Which stream a log line came from, where the engine keeps them apart (Docker does;
/// Kubernetes merges them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogSource {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Both, merged (Kubernetes pod logs).
    Merged,
}

/// One line (or one piece of a very long line) of a run's output, with the time the engine
/// stamped on it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogLine {
    /// When the engine received it.
    pub time: LogTime,
    /// Which stream.
    pub source: LogSource,
    /// The bytes, newline included when the line had one.
    pub data: Bytes,
}

impl LogLine {
    /// A line.
    #[must_use]
    pub fn new(time: LogTime, source: LogSource, data: Bytes) -> Self {
        Self { time, source, data }
    }
}

/// Where a reader of a run's logs is: the time of the last line it got and how many lines it
/// got with exactly that time. Reading again from a cursor skips what was delivered, even
/// when several lines share a timestamp, so a dropped stream resumes with every line exactly
/// once.
///
/// ```
/// use berth_engine_core::{LogCursor, LogLine, LogSource, LogTime};
///
/// let t = LogTime { secs: 10, nanos: 5 };
/// let mut cursor = LogCursor::default();
/// cursor.advance(&LogLine::new(t, LogSource::Stdout, "a\n".into()));
/// cursor.advance(&LogLine::new(t, LogSource::Stdout, "b\n".into()));
/// assert_eq!(cursor.to_string(), "1970-01-01T00:00:10.000000005Z/2");
/// assert_eq!(cursor.to_string().parse::<LogCursor>().unwrap(), cursor);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LogCursor {
    /// The time of the last line delivered; `None` before the first.
    pub time: Option<LogTime>,
    /// How many lines stamped exactly `time` were delivered.
    pub at_time: u32,
}

impl LogCursor {
    /// Records that `line` was delivered.
    pub fn advance(&mut self, line: &LogLine) {
        if self.time == Some(line.time) {
            self.at_time += 1;
        } else {
            self.time = Some(line.time);
            self.at_time = 1;
        }
    }

    /// Whole seconds to ask the engine for lines from (engines filter by the second, at
    /// or after it); lines before the cursor are then dropped by [`resume_from`].
    #[must_use]
    pub fn since_secs(&self) -> Option<i64> {
        self.time.map(|t| t.secs)
    }
}

impl fmt::Display for LogCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.time {
            Some(t) => write!(f, "{}/{}", t.to_rfc3339(), self.at_time),
            None => f.write_str("start"),
        }
    }
}

impl FromStr for LogCursor {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "start" {
            return Ok(Self::default());
        }
        let bad = || {
            Error::invalid_spec(
                "since",
                format!("expected a log cursor like 2026-11-30T01:02:03.000000000Z/1, got {s:?}"),
            )
        };
        let (time, count) = s.split_once('/').unwrap_or((s, "0"));
        Ok(Self {
            time: Some(LogTime::parse(time).ok_or_else(bad)?),
            at_time: count.parse().map_err(|_| bad())?,
        })
    }
}

/// How to read a run's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LogOptions {
    /// Keep the stream open until the run ends.
    pub follow: bool,
    /// Skip what a previous reader got (see [`LogCursor`]).
    pub since: Option<LogCursor>,
}

impl LogOptions {
    /// Follow the logs until the run ends.
    #[must_use]
    pub fn follow() -> Self {
        Self {
            follow: true,
            since: None,
        }
    }

    /// Resume after `cursor`.
    #[must_use]
    pub fn with_since(mut self, cursor: LogCursor) -> Self {
        self.since = Some(cursor);
        self
    }
}

/// A stream of a run's log lines; an `Err` item ends it (a dropped connection is
/// [`Error::ConnectionLost`]: resume with the last line's cursor).
pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogLine>> + Send>>;

/// Drops the lines of `lines` that a reader at `cursor` already got: those stamped before
/// the cursor's time, and the first `at_time` stamped exactly at it. Backends ask their engine
/// for lines since [`LogCursor::since_secs`] and pass them through this.
#[must_use]
pub fn resume_from(lines: LogStream, cursor: Option<LogCursor>) -> LogStream {
    let Some(LogCursor {
        time: Some(time),
        at_time,
    }) = cursor
    else {
        return lines;
    };
    let mut skip_at_time = at_time;
    Box::pin(lines.filter(move |item| {
        let keep = match item {
            Ok(line) if line.time < time => false,
            Ok(line) if line.time == time && skip_at_time > 0 => {
                skip_at_time -= 1;
                false
            }
            _ => true,
        };
        std::future::ready(keep)
    }))
}

/// The [`Error::ConnectionLost`] of a log stream of `run` that broke: the run goes on, and
/// reading again from the last line's cursor resumes it.
#[must_use]
pub fn logs_connection_lost(
    backend: crate::BackendKind,
    address: &str,
    run: &str,
    source: crate::BoxError,
) -> Error {
    Error::ConnectionLost {
        backend,
        address: address.to_owned(),
        operation: format!("reading the logs of {run}"),
        hint: format!(
            "the run goes on; resume with `berth logs -f {run}`, which continues after the last line received"
        ),
        source: Some(source),
    }
}

/// Splits one engine log record `2026-...Z <data>` into its time and data, as both Docker
/// (`timestamps=true`) and the Kubernetes pod log API (`timestamps=true`) write them.
#[must_use]
pub fn split_timestamp(record: &[u8]) -> Option<(LogTime, Bytes)> {
    let space = record.iter().position(|&b| b == b' ')?;
    let time = LogTime::parse(std::str::from_utf8(&record[..space]).ok()?)?;
    Some((time, Bytes::copy_from_slice(&record[space + 1..])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ImageRef, SessionId};

    fn line(secs: i64, nanos: u32, text: &'static str) -> LogLine {
        LogLine::new(
            LogTime { secs, nanos },
            LogSource::Stdout,
            Bytes::from_static(text.as_bytes()),
        )
    }

    #[tokio::test]
    async fn resuming_skips_exactly_what_was_delivered_even_with_equal_times() {
        let all = [
            line(1, 0, "a"),
            line(2, 0, "b"),
            line(2, 0, "c"),
            line(2, 0, "d"),
            line(3, 0, "e"),
        ];
        for delivered in 0..=all.len() {
            let mut cursor = LogCursor::default();
            for l in &all[..delivered] {
                cursor.advance(l);
            }
            // The engine answers from the cursor's second on, as engines do.
            let since = cursor.since_secs().unwrap_or(i64::MIN);
            let from_engine: Vec<_> = all
                .iter()
                .filter(|l| l.time.secs >= since)
                .cloned()
                .map(Ok)
                .collect();
            let rest: Vec<_> = resume_from(
                Box::pin(futures_util::stream::iter(from_engine)),
                Some(cursor),
            )
            .map(|l| l.unwrap().data)
            .collect()
            .await;
            let expected: Vec<_> = all[delivered..].iter().map(|l| l.data.clone()).collect();
            assert_eq!(rest, expected, "after {delivered} lines");
        }
    }

    #[test]
    fn times_round_trip_and_order() {
        for text in [
            "2026-11-30T01:02:03.123456789Z",
            "2000-02-29T23:59:59.000000001Z",
            "1969-12-31T23:59:59.999999999Z",
        ] {
            assert_eq!(LogTime::parse(text).unwrap().to_rfc3339(), text);
        }
        let short = LogTime::parse("2026-11-30T01:02:03.1Z").unwrap();
        let long = LogTime::parse("2026-11-30T01:02:03.12Z").unwrap();
        assert!(short < long, "compared as times, not as text");
        let offset = LogTime::parse("2026-11-30T02:02:03+01:00").unwrap();
        assert_eq!(
            offset,
            LogTime::parse("2026-11-30T01:02:03Z").unwrap(),
            "an offset is applied"
        );
        assert!(LogTime::parse("2026-13-30T01:02:03Z").is_none());
        assert!(LogTime::parse("2026-11-30T01:02:03.Z").is_none());
    }

    #[test]
    fn a_record_splits_into_time_and_data() {
        let (t, data) = split_timestamp(b"2026-11-30T01:02:03.5Z hello world\n").unwrap();
        assert_eq!(t.nanos, 500_000_000);
        assert_eq!(&data[..], b"hello world\n");
        assert!(split_timestamp(b"no time here").is_none());
    }

    #[test]
    fn a_run_spec_needs_a_command_and_a_cron_schedule() {
        let env = EnvironmentSpec::new(ImageRef::new("busybox").unwrap(), SessionId::generate());
        let err = RunSpec::new(env.clone(), [""]).validate().unwrap_err();
        assert!(err.to_string().contains("invalid command"), "{err}");
        for bad in ["* * * *", "every day", "0 4 * * * *", "0 4 * * ;rm"] {
            let err = RunSpec::new(env.clone(), ["true"])
                .with_schedule(bad)
                .validate()
                .unwrap_err();
            assert!(err.to_string().contains("invalid schedule"), "{bad}: {err}");
        }
        RunSpec::new(env.clone(), ["true"])
            .with_schedule("*/5 * * * 1-5")
            .validate()
            .unwrap();
        let labels = RunSpec::new(env, ["true"]).object_labels(1);
        assert_eq!(labels[LABEL_RUN], RUN_ONCE);
        assert_eq!(labels[crate::LABEL_DETACHED], crate::DETACHED_YES);
    }

    #[test]
    fn finished_states() {
        assert!(!RunState::Running.is_finished());
        assert!(!RunState::Scheduled.is_finished());
        assert!(RunState::Cancelled.is_finished());
        assert_eq!(RunState::DeadlineExceeded.to_string(), "deadline_exceeded");
    }
}
