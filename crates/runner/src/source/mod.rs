//! Source checkout: a shallow clone of a job's repository on the agent, with a Rust git library
//! (gix), so the job's image needs no git; and the Fernet decryption of the GitHub token a main
//! API sends encrypted.
//!
//! The token is used only for the clone: it is sent as HTTP basic auth (user `x-access-token`,
//! as GitHub expects), never put into the clone's URL or config, never logged, and [`Token`]'s
//! `Debug` prints `***`. Credentials embedded in `git_url` are taken out of the URL the same
//! way and never appear in an error.
//!
//! ```no_run
//! use berth_runner::source::{self, GitSource};
//!
//! # async fn run() -> Result<(), source::SourceError> {
//! let key = std::env::var("BERTH_SERVER_ENCRYPTION_KEY").unwrap_or_default();
//! let token = source::decrypt_fernet_token("gAAAAAB...", &key)?;
//! let src = GitSource::new("https://github.com/example/app.git")
//!     .branch("main")
//!     .token(token);
//! let dir = source::checkout(&src).await?;
//! println!("checked out into {}", dir.path().display());
//! # Ok(())
//! # }
//! ```
//!
//! # Caveats
//!
//! - `file://` URLs and local paths are served by the `git-upload-pack` program, which gix
//!   starts; http(s) needs no git program at all.
//! - A token is sent over `https://`, or over `http://` only to a loopback host (a git server on
//!   the same machine); anywhere else it would travel in clear text and is refused.
//! - With a token, redirects are not followed, so the token never reaches another host.
//! - `max_bytes` caps what the checkout writes (checked from the fetched objects, before any
//!   file is written) and what the clone downloads (the pack a server sends is watched as it
//!   is written, and the clone stopped once it passes the cap).
//! - [`GitSource::refuse_private_addresses`] and [`GitSource::allowed_hosts`] keep a clone
//!   from reaching the agent's own network (loopback, private, link-local such as a cloud's
//!   metadata address): checked before the clone and again on every connection the clone
//!   makes (redirects are then not followed), so a name that resolves differently the
//!   second time does not get through either. A library caller cloning its own repositories needs neither; `berth serve`
//!   uses both.
//! - The first http(s) clone installs rustls' `ring` provider as the process default if none
//!   is installed yet.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

mod clone;
mod network;

use clone::{Location, Plan};
use network::HostPolicy;

/// The default cap on the bytes a checkout may write: 1 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// The user name GitHub expects with an access token in HTTP basic auth.
const TOKEN_USER: &str = "x-access-token";

/// A secret (an access token): held for the clone, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the one place that must send it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// A repository to check out: where, which branch, and the credentials for the clone.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GitSource {
    /// `https://`, `http://`, `file://` URL, or a local path (the request's `git_url`).
    pub url: String,
    /// The branch (or tag) to check out; `None` for the remote's HEAD (`git_branch`).
    pub branch: Option<String>,
    /// The token for an http(s) clone; wins over credentials embedded in `url`.
    pub token: Option<Token>,
    /// The most bytes the checkout may write or download; more is [`SourceError::TooLarge`].
    pub max_bytes: u64,
    /// Which hosts the clone may reach.
    hosts: HostPolicy,
}

impl GitSource {
    /// A source at `url`: the remote's HEAD, no token, [`DEFAULT_MAX_BYTES`].
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            branch: None,
            token: None,
            max_bytes: DEFAULT_MAX_BYTES,
            hosts: HostPolicy::default(),
        }
    }

    /// Refuses to connect to loopback, private, link-local and other non-public addresses:
    /// for a server cloning URLs its callers give, so they cannot reach the server's own
    /// network through it. A literal address or a name resolving to one is
    /// [`SourceError::HostRefused`].
    ///
    /// ```
    /// use berth_runner::source::{GitSource, SourceError};
    ///
    /// let metadata = GitSource::new("http://169.254.169.254/latest/meta-data.git")
    ///     .refuse_private_addresses();
    /// assert!(matches!(metadata.validate(), Err(SourceError::HostRefused { .. })));
    /// ```
    #[must_use]
    pub fn refuse_private_addresses(mut self) -> Self {
        self.hosts.allow_private = false;
        self
    }

    /// Clones only from these hosts (names or literal addresses, without regard to case);
    /// an empty list allows every host.
    #[must_use]
    pub fn allowed_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hosts.allowed_hosts = hosts.into_iter().map(Into::into).collect();
        self
    }

    /// Checks out `branch` instead of the remote's HEAD.
    #[must_use]
    pub fn branch(mut self, branch: impl Into<String>) -> Self {
        self.branch = Some(branch.into());
        self
    }

    /// Clones with `token` (HTTP basic auth, user `x-access-token`).
    #[must_use]
    pub fn token(mut self, token: Token) -> Self {
        self.token = Some(token);
        self
    }

    /// Caps the bytes the checkout may write.
    #[must_use]
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Checks the URL, branch and token without any I/O.
    ///
    /// # Errors
    ///
    /// [`SourceError::BadUrl`], [`SourceError::BadBranch`] or [`SourceError::BadToken`] naming
    /// what is wrong.
    pub fn validate(&self) -> Result<(), SourceError> {
        self.plan().map(drop)
    }

    fn plan(&self) -> Result<Plan, SourceError> {
        let target = parse_url(&self.url)?;
        if let Some(branch) = &self.branch {
            validate_branch(branch)?;
        }
        if let Some(token) = &self.token {
            if token.0.is_empty() || token.0.chars().any(char::is_control) {
                return Err(SourceError::BadToken {
                    reason: "the token is empty or holds control characters",
                });
            }
        }
        let (url, credentials) = match target {
            // Not a network address: whoever allows local paths (berth serve's
            // server.allow_local_git) decides about those.
            Target::Path(path) => (Location::Path(path), None),
            Target::Http {
                url,
                loopback,
                embedded,
            } => {
                self.hosts.check_name(url.host().unwrap_or_default())?;
                let credentials = match &self.token {
                    Some(token) => Some((TOKEN_USER.to_owned(), token.0.clone())),
                    None => embedded,
                };
                if credentials.is_some() && url.scheme == gix::url::Scheme::Http && !loopback {
                    return Err(SourceError::BadUrl {
                        reason: "credentials are sent only over https:// (or http:// to this \
                                 machine); http:// would send them in clear text"
                            .into(),
                    });
                }
                (Location::Http(url), credentials)
            }
        };
        Ok(Plan {
            url,
            credentials,
            branch: self.branch.clone(),
            max_bytes: self.max_bytes,
            hosts: self.hosts.clone(),
        })
    }
}

/// What went wrong with a checkout or a token, in kinds a caller can act on. No variant's text
/// holds a token or the credentials of a URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// `git_url` is not a URL berth clones from.
    #[error(
        "invalid git_url: {reason}; expected an https://, http:// or file:// URL or a local path"
    )]
    BadUrl {
        /// What is wrong with it.
        reason: String,
    },
    /// `git_branch` is not a valid branch name.
    #[error("invalid git_branch {branch:?}: {reason}")]
    BadBranch {
        /// The branch asked for.
        branch: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The repository has no such branch (or tag).
    #[error("the repository has no branch {branch:?}")]
    BranchNotFound {
        /// The branch asked for.
        branch: String,
    },
    /// The server wants credentials and none were given, or refused the ones given.
    #[error("{}", if *.had_credentials {
        "the git server refused the credentials given (wrong token, or no access to the repository)"
    } else {
        "the git server requires credentials and no token was given"
    })]
    AuthenticationFailed {
        /// Whether a token (or URL credentials) was sent.
        had_credentials: bool,
    },
    /// The repository could not be reached or read.
    #[error("the repository could not be fetched: {detail}")]
    Unreachable {
        /// The git library's account of it, with any secret blanked out.
        detail: String,
    },
    /// The key for encrypted tokens is not a Fernet key.
    #[error("invalid encryption key (BERTH_SERVER_ENCRYPTION_KEY): expected 32 bytes in URL-safe base64, as Fernet.generate_key() makes")]
    BadKey,
    /// A token could not be used: decryption failed (wrong key, or tampered), or it is malformed.
    #[error("unusable token: {reason}")]
    BadToken {
        /// Why.
        reason: &'static str,
    },
    /// The URL names a host the clone may not reach: not on the allowed list, or a loopback,
    /// private or link-local address where those are refused.
    #[error("git_url's host {host} is refused: {reason}")]
    HostRefused {
        /// The host as the URL names it.
        host: String,
        /// Why.
        reason: String,
    },
    /// The download passed the cap while the server was still sending, and was stopped.
    #[error(
        "the clone downloaded {size} bytes, more than the cap of {max_bytes}, and was stopped"
    )]
    DownloadTooLarge {
        /// The bytes on disk when it was stopped.
        size: u64,
        /// The cap.
        max_bytes: u64,
    },
    /// The checkout would write more than the cap.
    #[error("the checkout holds at least {size} bytes, more than the cap of {max_bytes}")]
    TooLarge {
        /// The bytes counted before stopping.
        size: u64,
        /// The cap.
        max_bytes: u64,
    },
    /// Local I/O failed.
    #[error("{context}")]
    Io {
        /// The step that failed.
        context: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Clones `source` shallowly (depth 1) into a fresh temporary directory, checked out at its
/// branch (or the remote's HEAD). The directory is the worktree, with its `.git` inside; it is
/// removed when the returned [`tempfile::TempDir`] drops.
///
/// The clone runs on a blocking thread; wrap the call in `tokio::time::timeout` to bound it:
/// dropping the future asks the clone to stop (gix checks between steps and while receiving
/// the pack), and the directory is removed.
/// No git config of the machine or user is read (no helpers, no prompts, no filters).
///
/// # Errors
///
/// Each [`SourceError`] kind: the input's (`BadUrl`, `BadBranch`, `BadToken`) before any I/O,
/// then `HostRefused`, `AuthenticationFailed`, `BranchNotFound`, `Unreachable`,
/// `DownloadTooLarge`, `TooLarge` and `Io`.
pub async fn checkout(source: &GitSource) -> Result<tempfile::TempDir, SourceError> {
    let plan = source.plan()?;
    if let Location::Http(url) = &plan.url {
        let port = url.port_or_default().unwrap_or(443);
        plan.hosts
            .check_resolved(url.host().unwrap_or_default(), port)
            .await?;
    }
    let interrupt = Arc::new(AtomicBool::new(false));
    let _stop_when_dropped = InterruptOnDrop(interrupt.clone());
    tokio::task::spawn_blocking(move || plan.run(interrupt))
        .await
        .map_err(|err| SourceError::Io {
            context: "the clone's thread failed",
            source: std::io::Error::other(err.to_string()),
        })?
}

/// Decrypts a token encrypted with Python's `cryptography.fernet.Fernet(key).encrypt(...)`,
/// as the seed's main API sends `github_token_encrypted` (`key` is
/// `BERTH_SERVER_ENCRYPTION_KEY`). Surrounding whitespace of either is ignored; the token's
/// age is not checked.
///
/// # Errors
///
/// [`SourceError::BadKey`] when `key` is not a Fernet key, [`SourceError::BadToken`] when the
/// token does not decrypt with it (wrong key, tampered, truncated) or is not UTF-8 text.
pub fn decrypt_fernet_token(encrypted: &str, key: &str) -> Result<Token, SourceError> {
    let fernet = fernet::Fernet::new(key.trim()).ok_or(SourceError::BadKey)?;
    let plain = fernet
        .decrypt(encrypted.trim())
        .map_err(|_| SourceError::BadToken {
            reason: "it does not decrypt with the configured key (wrong key, or tampered)",
        })?;
    let text = String::from_utf8(plain).map_err(|_| SourceError::BadToken {
        reason: "the decrypted token is not UTF-8 text",
    })?;
    Ok(Token(text))
}

/// Asks a blocking clone to stop when the future awaiting it is dropped.
struct InterruptOnDrop(Arc<AtomicBool>);

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

enum Target {
    Path(PathBuf),
    Http {
        url: gix::Url,
        loopback: bool,
        embedded: Option<(String, String)>,
    },
}

fn bad_url(reason: impl Into<String>) -> SourceError {
    SourceError::BadUrl {
        reason: reason.into(),
    }
}

/// Accepts http(s) and file URLs and local paths; refuses every other transport (`ssh://`,
/// `git://`, `ext::`, `fd::`, scp-like `host:path`) and anything that could read as an option.
fn parse_url(raw: &str) -> Result<Target, SourceError> {
    if raw.is_empty() {
        return Err(bad_url("it is empty"));
    }
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad_url("it holds whitespace or control characters"));
    }
    if raw.starts_with('-') {
        return Err(bad_url("it starts with '-'"));
    }
    if let Some((scheme, rest)) = raw.split_once("://") {
        match scheme.to_ascii_lowercase().as_str() {
            "http" | "https" => parse_http(raw),
            "file" => {
                if !rest.starts_with('/') {
                    return Err(bad_url(
                        "a file:// URL names a local absolute path (file:///srv/repo.git), not a host",
                    ));
                }
                local_path(rest)
            }
            other => Err(bad_url(format!(
                "the {other}:// transport is not supported"
            ))),
        }
    } else if raw.contains("::") {
        Err(bad_url("remote helpers (ext::, fd::) are not supported"))
    } else if raw.contains(':') {
        Err(bad_url(
            "host:path (ssh) addresses are not supported; a local path has no ':'",
        ))
    } else {
        local_path(raw)
    }
}

fn local_path(path: &str) -> Result<Target, SourceError> {
    let path =
        std::path::absolute(path).map_err(|_| bad_url("the local path cannot be resolved"))?;
    Ok(Target::Path(path))
}

fn parse_http(raw: &str) -> Result<Target, SourceError> {
    // gix's own message may quote the URL, credentials and all: say only what was expected.
    let mut url = gix::url::parse(gix::bstr::BStr::new(raw))
        .map_err(|_| bad_url("it is not a well-formed http(s) URL"))?;
    let host = url
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad_url("it names no host"))?;
    if host.starts_with('-') {
        return Err(bad_url("its host starts with '-'"));
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    let embedded = match (url.user(), url.password()) {
        (Some(user), password) if !user.is_empty() || password.is_some() => Some((
            percent_decode(user),
            password.map(percent_decode).unwrap_or_default(),
        )),
        _ => None,
    };
    url.set_user(None);
    url.set_password(None);
    Ok(Target::Http {
        url,
        loopback,
        embedded,
    })
}

/// Decodes `%XX` escapes, as URL user info carries them; anything malformed stays as is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn validate_branch(branch: &str) -> Result<(), SourceError> {
    let bad = |reason| SourceError::BadBranch {
        branch: branch.to_owned(),
        reason,
    };
    if branch.starts_with('-') {
        return Err(bad("it starts with '-'"));
    }
    let name: Result<&gix::refs::PartialNameRef, _> = branch.try_into();
    name.map_err(|_| bad("it is not a valid git reference name"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn reason(url: &str) -> String {
        match parse_url(url) {
            Err(SourceError::BadUrl { reason }) => reason,
            Err(other) => panic!("{url}: expected BadUrl, got {other:?}"),
            Ok(_) => panic!("{url}: expected BadUrl, got a target"),
        }
    }

    #[test]
    fn other_transports_and_option_lookalikes_are_refused() {
        for url in [
            "ext::sh -c touch% /tmp/pwned",
            "ext::sh",
            "fd::3",
            "ssh://example.com/repo.git",
            "git://example.com/repo.git",
            "example.com:repo.git",
            "--upload-pack=touch /tmp/pwned",
            "-uevil",
            "https://-oProxyCommand=evil/repo",
            "file://host/srv/repo.git",
            "",
            "https://example.com/a b",
        ] {
            let reason = reason(url);
            assert!(!reason.is_empty(), "{url}");
        }
    }

    #[test]
    fn accepted_forms() {
        assert!(matches!(parse_url("/srv/repo.git"), Ok(Target::Path(_))));
        assert!(matches!(parse_url("repo"), Ok(Target::Path(p)) if p.is_absolute()));
        assert!(
            matches!(parse_url("file:///srv/repo.git"), Ok(Target::Path(p)) if p == std::path::Path::new("/srv/repo.git"))
        );
        match parse_url("HTTPS://u:p%40ss@example.com/r.git") {
            Ok(Target::Http {
                url,
                loopback,
                embedded,
            }) => {
                assert!(!loopback);
                assert_eq!(embedded, Some(("u".into(), "p@ss".into())));
                let shown = url.to_bstring().to_string();
                assert!(
                    !shown.contains("p%40ss") && !shown.contains("u@"),
                    "{shown}"
                );
            }
            _ => panic!("expected an http target"),
        }
        assert!(matches!(
            parse_url("http://127.0.0.1:8080/r.git"),
            Ok(Target::Http { loopback: true, .. })
        ));
        assert!(matches!(
            parse_url("http://[::1]:8080/r.git"),
            Ok(Target::Http { loopback: true, .. })
        ));
    }

    #[test]
    fn credentials_over_clear_text_http_to_another_host_are_refused() {
        let src = GitSource::new("http://example.com/r.git").token(Token::new("s3cret"));
        let err = src.validate().unwrap_err();
        assert!(matches!(err, SourceError::BadUrl { .. }), "{err:?}");
        assert!(!err.to_string().contains("s3cret"));
        let src = GitSource::new("http://user:s3cret@example.com/r.git");
        let err = src.validate().unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        GitSource::new("http://localhost:1/r.git")
            .token(Token::new("s3cret"))
            .validate()
            .unwrap();
        GitSource::new("https://example.com/r.git")
            .token(Token::new("s3cret"))
            .validate()
            .unwrap();
    }

    #[test]
    fn bad_branches_and_tokens_are_named() {
        for branch in ["-b", "a..b", "x y", ""] {
            let err = GitSource::new("/srv/r")
                .branch(branch)
                .validate()
                .unwrap_err();
            assert!(
                matches!(err, SourceError::BadBranch { .. }),
                "{branch}: {err:?}"
            );
            assert!(err.to_string().contains("git_branch"));
        }
        let err = GitSource::new("/srv/r")
            .token(Token::new("a\r\nX-Evil: 1"))
            .validate()
            .unwrap_err();
        assert!(matches!(err, SourceError::BadToken { .. }), "{err:?}");
        assert!(!err.to_string().contains("X-Evil"));
    }

    #[test]
    fn token_debug_hides_the_secret() {
        let src = GitSource::new("https://example.com/r.git").token(Token::new("s3cret"));
        let shown = format!("{src:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("***"),
            "{shown}"
        );
    }

    #[test]
    fn redaction_blanks_every_form_of_the_secret() {
        let plan = GitSource::new("https://example.com/r.git")
            .token(Token::new("s3cret"))
            .plan()
            .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode("x-access-token:s3cret");
        let text = plan.redact(&format!("a s3cret b Basic {b64} c {b64}"));
        assert!(!text.contains("s3cret") && !text.contains(&b64), "{text}");
    }
}
