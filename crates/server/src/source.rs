//! A job's source: a git repository checked out on the agent (so the job image needs no git)
//! and copied into the job's workspace before the command starts.
//!
//! The clone is [`berth_runner::source::checkout`] (gix, shallow, capped); a token is used for
//! the clone only. `github_token_encrypted` (Fernet, as the seed's main API sends it) is
//! decrypted with the key in `BERTH_SERVER_ENCRYPTION_KEY` just before the clone.
//!
//! A `file://` URL or a local path would let whoever submits a job read repositories on the
//! agent's own disk into the job, so they are refused unless `server.allow_local_git` is set.

use berth_runner::config::ServerSection;
use berth_runner::source::{decrypt_fernet_token, GitSource, SourceError, Token};

use crate::error::ServerError;

/// The environment variable holding the Fernet key for `github_token_encrypted`.
pub const ENCRYPTION_KEY_ENV: &str = "BERTH_SERVER_ENCRYPTION_KEY";

/// The token a job gives for its clone.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceToken {
    /// `git_token`: used as is.
    Plain(String),
    /// `github_token_encrypted`: Fernet, decrypted with `BERTH_SERVER_ENCRYPTION_KEY`.
    Encrypted(String),
}

impl std::fmt::Debug for SourceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A token is used for the clone only: never logged, never echoed.
        f.write_str(match self {
            Self::Plain(_) => "Plain(<redacted>)",
            Self::Encrypted(_) => "Encrypted(<redacted>)",
        })
    }
}

/// Where a job's code comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobSource {
    /// `https://` or `http://` URL of the repository (`file://` and local paths only with
    /// `server.allow_local_git`).
    pub url: String,
    /// The branch (default: the remote's HEAD).
    pub branch: Option<String>,
    /// The token for the clone.
    pub token: Option<SourceToken>,
    /// `server.git_hosts`.
    allowed_hosts: Vec<String>,
    /// `server.allow_private_git_hosts`.
    allow_private: bool,
}

impl JobSource {
    /// A checked source: the URL and branch as the git client will take them, local
    /// repositories only with `server.allow_local_git`, hosts only from `server.git_hosts`
    /// (when set) and no private address unless `server.allow_private_git_hosts`.
    ///
    /// # Errors
    /// [`ServerError::BadRequest`] naming `git_url`, `git_branch` or `github_token_encrypted`.
    pub fn new(
        url: String,
        branch: Option<String>,
        token: Option<SourceToken>,
        limits: &ServerSection,
    ) -> Result<Self, ServerError> {
        let allow_local = limits.allow_local_git;
        let mut source = Self {
            url: url.clone(),
            branch: branch.clone(),
            token: None,
            allowed_hosts: limits.git_hosts.clone(),
            allow_private: limits.allow_private_git_hosts,
        };
        source.git().validate().map_err(|e| match e {
            SourceError::BadBranch { .. } => ServerError::bad("git_branch", e.to_string()),
            SourceError::HostRefused { .. } => ServerError::bad(
                "git_url",
                format!("{e} (server.git_hosts, server.allow_private_git_hosts)"),
            ),
            other => ServerError::bad("git_url", other.to_string()),
        })?;
        let remote = ["https://", "http://"]
            .iter()
            .any(|s| url.to_ascii_lowercase().starts_with(s));
        if !remote && !allow_local {
            return Err(ServerError::bad(
                "git_url",
                "expected an https:// or http:// URL: file:// URLs and local paths read the \
                 agent's own disk, refused unless server.allow_local_git is true",
            ));
        }
        if matches!(token, Some(SourceToken::Encrypted(_)))
            && std::env::var_os(ENCRYPTION_KEY_ENV).is_none()
        {
            return Err(ServerError::bad(
                "github_token_encrypted",
                format!("this server has no key to decrypt it: set {ENCRYPTION_KEY_ENV}"),
            ));
        }
        source.token = token;
        Ok(source)
    }

    /// The clone as the server's policy allows it, without the token.
    fn git(&self) -> GitSource {
        let mut git = GitSource::new(self.url.clone()).allowed_hosts(self.allowed_hosts.clone());
        if !self.allow_private {
            git = git.refuse_private_addresses();
        }
        if let Some(b) = &self.branch {
            git = git.branch(b.clone());
        }
        git
    }
}

/// Clones `source` into a fresh temporary directory, removed when the returned value drops.
///
/// # Errors
/// [`SourceError`]: a missing branch, refused credentials, an unreachable repository, a
/// checkout over the size cap, or an encrypted token that does not decrypt.
pub async fn checkout(source: &JobSource) -> Result<tempfile::TempDir, SourceError> {
    let mut git = source.git();
    match &source.token {
        Some(SourceToken::Plain(t)) => git = git.token(Token::new(t.clone())),
        Some(SourceToken::Encrypted(t)) => {
            let key = std::env::var(ENCRYPTION_KEY_ENV).map_err(|_| SourceError::BadKey)?;
            git = git.token(decrypt_fernet_token(t, &key)?);
        }
        None => {}
    }
    berth_runner::source::checkout(&git).await
}
