//! A job's source: a git repository checked out on the agent (so the job image needs no git)
//! and copied into the job's workspace before the command starts.
//!
//! The clone itself belongs to `berth_runner::source` (a git library, Fernet decryption of
//! `github_token_encrypted` with `BERTH_SERVER_ENCRYPTION_KEY`), built on another branch; the
//! one call to it is [`checkout`]. Until it lands, a job with `git_url` fails with a clear
//! message and nothing is cloned.

use crate::error::ServerError;

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
    /// `https://`, `http://` or `file://` URL of the repository.
    pub url: String,
    /// The branch (default: the remote's HEAD).
    pub branch: Option<String>,
    /// The token for the clone.
    pub token: Option<SourceToken>,
}

impl JobSource {
    /// A checked source.
    ///
    /// # Errors
    /// [`ServerError::BadRequest`] naming `git_url` or `git_branch`.
    pub fn new(
        url: String,
        branch: Option<String>,
        token: Option<SourceToken>,
    ) -> Result<Self, ServerError> {
        let scheme_ok = ["https://", "http://", "file://"]
            .iter()
            .any(|s| url.starts_with(s) && url.len() > s.len());
        if !scheme_ok || url.chars().any(char::is_whitespace) {
            return Err(ServerError::bad(
                "git_url",
                "expected an https://, http:// or file:// URL without spaces",
            ));
        }
        if let Some(b) = &branch {
            let bad = b.starts_with('-')
                || b.contains("..")
                || b.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
            if bad {
                return Err(ServerError::bad(
                    "git_branch",
                    format!("{b:?} is not a valid branch name"),
                ));
            }
        }
        Ok(Self { url, branch, token })
    }
}

/// Why a checkout failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The git client is not in this build yet.
    #[error("git checkout is not built yet: this server cannot clone {url}")]
    NotBuilt {
        /// The repository asked for.
        url: String,
    },
}

/// Clones `source` into a fresh temporary directory, removed when the returned value drops.
///
/// # Errors
/// [`SourceError::NotBuilt`] for now: the clone is `berth_runner::source::checkout(url,
/// branch, token)`, which replaces this body at merge.
pub async fn checkout(source: &JobSource) -> Result<tempfile::TempDir, SourceError> {
    Err(SourceError::NotBuilt {
        url: source.url.clone(),
    })
}
