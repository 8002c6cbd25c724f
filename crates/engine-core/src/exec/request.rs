//! What to run: [`ExecRequest`], its standard input and terminal size, checked before any I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::spec::{validate_env, validate_user};

/// Default per-stream cap of captured output in [`ExecRequest::output_limit`]: 16 MiB.
pub const DEFAULT_OUTPUT_LIMIT: usize = 16 * 1024 * 1024;

/// What the command reads on its standard input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stdin {
    /// Nothing: stdin is not attached (reads see EOF or block, as the engine decides).
    #[default]
    Null,
    /// These bytes, then end of file.
    Bytes(Bytes),
    /// A writer handed out by [`ExecProcess::take_stdin`](crate::ExecProcess::take_stdin); only for
    /// [`ContainerEngine::exec_streaming`](crate::ContainerEngine::exec_streaming).
    Piped,
}

/// A command to run in an environment.
///
/// The command is an argv, never a shell string; use [`ExecRequest::shell`] to ask for `sh -c`.
///
/// ```
/// use std::time::Duration;
/// use berth_engine_core::ExecRequest;
///
/// let req = ExecRequest::new(["make", "test"])
///     .with_workdir("/workspace")
///     .with_env("CI", "1")
///     .with_timeout(Duration::from_secs(600));
/// req.validate().unwrap();
/// assert!(ExecRequest::new(Vec::<String>::new()).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExecRequest {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment variables, on top of the environment's.
    pub env: BTreeMap<String, String>,
    /// Working directory, default the environment's.
    pub workdir: Option<String>,
    /// User (`uid`, `uid:gid`, `name`), default the environment's.
    pub user: Option<String>,
    /// Standard input.
    pub stdin: Stdin,
    /// Kill the command (its whole process tree) after this long; `None` waits for ever. The
    /// command then runs under a watchdog in the environment (see
    /// [`watchdog_argv`](crate::backend::watchdog_argv)), which needs `sh` and `sleep` in the image.
    pub timeout: Option<Duration>,
    /// Per-stream cap of the output [`ContainerEngine::exec`](crate::ContainerEngine::exec)
    /// keeps; the rest is read and dropped, and [`ExecOutput`](crate::ExecOutput) says it was truncated.
    pub output_limit: usize,
    /// Run under a terminal of this size: stdout and stderr then arrive merged as
    /// [`OutputChunk::Stdout`](crate::OutputChunk::Stdout), and [`ExecProcess::resize`](crate::ExecProcess::resize) changes the size.
    pub tty: Option<TtySize>,
}

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TtySize {
    /// Rows (height).
    pub rows: u16,
    /// Columns (width).
    pub cols: u16,
}

impl ExecRequest {
    /// A request to run `argv` with the defaults documented on each field.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            stdin: Stdin::Null,
            timeout: None,
            output_limit: DEFAULT_OUTPUT_LIMIT,
            tty: None,
        }
    }

    /// A request to run `script` with `sh -c`.
    pub fn shell(script: impl Into<String>) -> Self {
        Self::new(["sh".to_owned(), "-c".to_owned(), script.into()])
    }

    /// Adds one environment variable.
    #[must_use]
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets the working directory.
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

    /// Sets standard input.
    #[must_use]
    pub fn with_stdin(mut self, stdin: Stdin) -> Self {
        self.stdin = stdin;
        self
    }

    /// Sets the timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Runs the command under a terminal of `size`.
    #[must_use]
    pub fn with_tty(mut self, size: TtySize) -> Self {
        self.tty = Some(size);
        self
    }

    /// Sets the per-stream output cap.
    #[must_use]
    pub fn with_output_limit(mut self, limit: usize) -> Self {
        self.output_limit = limit;
        self
    }

    /// Checks the request before any I/O.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `argv`, `env`, `workdir`, `user`, `timeout` or
    /// `output_limit`.
    pub fn validate(&self) -> Result<()> {
        match self.argv.first() {
            None => {
                return Err(Error::invalid_spec(
                    "argv",
                    "must name a program, got nothing",
                ))
            }
            Some(p) if p.is_empty() => {
                return Err(Error::invalid_spec("argv", "the program name is empty"))
            }
            _ => {}
        }
        if let Some(i) = self.argv.iter().position(|a| a.contains('\0')) {
            return Err(Error::invalid_spec(
                "argv",
                format!("argument {i} contains a NUL byte"),
            ));
        }
        validate_env(&self.env)?;
        if let Some(dir) = &self.workdir {
            if !dir.starts_with('/') || dir.contains('\0') {
                return Err(Error::invalid_spec(
                    "workdir",
                    format!("must be an absolute path, got {dir:?}"),
                ));
            }
        }
        if let Some(user) = &self.user {
            validate_user("user", user)?;
        }
        if self.timeout == Some(Duration::ZERO) {
            return Err(Error::invalid_spec(
                "timeout",
                "must be greater than zero (leave it unset to wait for ever)",
            ));
        }
        if self.tty.is_some_and(|t| t.rows == 0 || t.cols == 0) {
            return Err(Error::invalid_spec(
                "tty",
                "rows and columns must be greater than zero",
            ));
        }
        if self.output_limit == 0 {
            return Err(Error::invalid_spec(
                "output_limit",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_validation() {
        assert!(ExecRequest::new(["true"]).validate().is_ok());
        let err = ExecRequest::new(Vec::<String>::new())
            .validate()
            .unwrap_err();
        assert!(err.to_string().starts_with("invalid argv"), "{err}");
        assert!(ExecRequest::new([""]).validate().is_err());
        assert!(ExecRequest::new(["echo", "a\0b"]).validate().is_err());
        assert!(ExecRequest::new(["x"])
            .with_workdir("rel")
            .validate()
            .is_err());
        assert!(ExecRequest::new(["x"])
            .with_timeout(Duration::ZERO)
            .validate()
            .is_err());
        assert!(ExecRequest::new(["x"])
            .with_env("A=B", "1")
            .validate()
            .is_err());
    }
}
