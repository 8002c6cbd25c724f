//! What a shell runs and how it is opened.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use crate::error::Result;
use crate::{Error, ExecRequest, DEFAULT_OUTPUT_LIMIT};

/// How a [`Shell`](super::Shell) is opened, or a [`DetachedCommand`](crate::DetachedCommand)
/// run: who runs it and where. Unset fields take the environment's spec (its env, workdir and
/// user apply as for any exec).
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

/// One command for [`Shell::run`](super::Shell::run): a shell script run in the shell's own
/// process.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShellCommand {
    /// The script (any `sh` text, several lines included).
    pub script: String,
    /// What the command reads on stdin, then end of file; `None` is end of file at once.
    pub stdin: Option<Bytes>,
    /// Kill the command's process tree after this long; the shell lives on.
    pub timeout: Option<Duration>,
    /// Per-stream cap of the output [`Shell::run`](super::Shell::run) keeps; the rest is read
    /// and dropped.
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

#[cfg(test)]
mod tests {
    use super::*;

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
