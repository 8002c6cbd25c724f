//! The clone itself, on a blocking thread: gix over http(s) (reqwest, with the token as basic
//! auth and, where private addresses are refused, a resolver that refuses them) or a local
//! path, shallow, capped while it downloads and again before it writes.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use gix::bstr::ByteSlice as _;
use gix::protocol::transport::client::blocking_io::http;

use super::network::{DownloadCap, HostPolicy, PublicOnlyResolver};
use super::{bad_url, SourceError};

/// Where to clone from, as gix will see it: never with credentials.
pub(super) enum Location {
    Path(PathBuf),
    Http(gix::Url),
}

/// A validated checkout, ready for a blocking thread.
pub(super) struct Plan {
    pub(super) url: Location,
    /// User and password for HTTP basic auth.
    pub(super) credentials: Option<(String, String)>,
    pub(super) branch: Option<String>,
    pub(super) max_bytes: u64,
    pub(super) hosts: HostPolicy,
}

impl Plan {
    /// Secrets as they could appear in text: the password itself and the basic-auth value.
    fn secrets(&self) -> Vec<String> {
        match &self.credentials {
            Some((user, password)) => vec![
                password.clone(),
                basic_auth_value(user, password),
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")),
            ]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect(),
            None => Vec::new(),
        }
    }

    pub(super) fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in self.secrets() {
            text = text.replace(&secret, "***");
        }
        text
    }

    pub(super) fn run(self, interrupt: Arc<AtomicBool>) -> Result<tempfile::TempDir, SourceError> {
        let dir = self.tempdir()?;
        let cap = DownloadCap::watch(dir.path(), self.max_bytes, interrupt.clone());
        let result = self.clone_into(&dir, &interrupt);
        match (result, cap.exceeded()) {
            (_, Some(size)) => Err(SourceError::DownloadTooLarge {
                size,
                max_bytes: self.max_bytes,
            }),
            (Err(e), None) => Err(e),
            (Ok(()), None) => Ok(dir),
        }
    }

    fn tempdir(&self) -> Result<tempfile::TempDir, SourceError> {
        tempfile::Builder::new()
            .prefix("berth-src-")
            .tempdir()
            .map_err(|source| SourceError::Io {
                context: "creating the checkout's temporary directory failed",
                source,
            })
    }

    fn clone_into(
        &self,
        dir: &tempfile::TempDir,
        interrupt: &AtomicBool,
    ) -> Result<(), SourceError> {
        let url: gix::Url = match &self.url {
            Location::Path(path) => {
                let path = gix::path::into_bstr(path.as_path())
                    .map_err(|_| bad_url("the local path is not valid UTF-8"))?
                    .into_owned();
                gix::url::Url::from_parts(
                    gix::url::Scheme::File,
                    None,
                    None,
                    None,
                    None,
                    path,
                    false,
                )
                .map_err(|_| bad_url("the local path cannot be used"))?
            }
            Location::Http(url) => {
                // reqwest is built without a provider of its own: use ring, as kube does.
                let _ = rustls::crypto::ring::default_provider().install_default();
                url.clone()
            }
        };
        let auth_header = match &self.credentials {
            Some((user, password)) => {
                let mut value =
                    reqwest::header::HeaderValue::from_str(&basic_auth_value(user, password))
                        .map_err(|_| SourceError::BadToken {
                            reason: "it cannot be sent in an HTTP header",
                        })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let is_http = matches!(self.url, Location::Http(_));
        let public_only = !self.hosts.allow_private;
        let mut prepare = gix::clone::PrepareFetch::new(
            url,
            dir.path(),
            gix::create::Kind::WithWorktree,
            gix::create::Options::default(),
            gix::open::Options::isolated(),
        )
        .map_err(|err| self.fetch_error(&err))?
        .with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(
            NonZeroU32::new(1).expect("1 is not zero"),
        ))
        .configure_connection(move |conn| {
            // Never a credential helper or a prompt: a 401 is an answer.
            conn.set_credentials(|_action| Ok(None));
            if is_http && (auth_header.is_some() || public_only) {
                let url = conn
                    .remote()
                    .url(gix::remote::Direction::Fetch)
                    .map(|u| u.to_bstring());
                let mut options = match url {
                    Some(url) => conn
                        .remote()
                        .repo()
                        .transport_options(url.as_bstr(), None)?
                        .and_then(|o| o.downcast::<http::Options>().ok())
                        .map(|o| *o)
                        .unwrap_or_default(),
                    None => http::Options::default(),
                };
                let mut backend = http::reqwest::Options::default();
                if let Some(header) = auth_header.clone() {
                    backend.configure_request = Some(Box::new(move |request| {
                        request
                            .headers_mut()
                            .insert(reqwest::header::AUTHORIZATION, header.clone());
                        Ok(())
                    }));
                }
                if public_only {
                    // No redirects: one to a literal address would not pass the resolver.
                    options.follow_redirects = http::options::FollowRedirects::None;
                    // Asked on every connection: a name that resolves to a private address
                    // the second time is refused then too.
                    backend.configure_client = Some(Box::new(|builder| {
                        Ok(builder.dns_resolver(Arc::new(PublicOnlyResolver)))
                    }));
                }
                options.backend = Some(Arc::new(Mutex::new(backend)));
                conn.set_transport_options(Box::new(options));
            }
            Ok(())
        });
        if let Some(branch) = &self.branch {
            prepare = prepare.with_ref_name(Some(branch.as_str())).map_err(|_| {
                SourceError::BadBranch {
                    branch: branch.clone(),
                    reason: "it is not a valid git reference name",
                }
            })?;
        }
        let (mut checkout, _) = prepare
            .fetch_then_checkout(gix::progress::Discard, interrupt)
            .map_err(|err| self.fetch_error(&err))?;
        let size =
            worktree_size(checkout.repo(), self.max_bytes).map_err(|err| SourceError::Io {
                context: "reading the fetched tree failed",
                source: std::io::Error::other(self.redact(&error_text(&err))),
            })?;
        if size > self.max_bytes {
            return Err(SourceError::TooLarge {
                size,
                max_bytes: self.max_bytes,
            });
        }
        let (_repo, outcome) = checkout
            .main_worktree(gix::progress::Discard, interrupt)
            .map_err(|err| SourceError::Io {
                context: "writing the checkout failed",
                source: std::io::Error::other(self.redact(&error_text(&err))),
            })?;
        if interrupt.load(Ordering::Relaxed) {
            return Err(SourceError::Io {
                context: "the checkout was interrupted",
                source: std::io::ErrorKind::Interrupted.into(),
            });
        }
        if let Some(failed) = outcome.errors.first() {
            return Err(SourceError::Io {
                context: "writing a file of the checkout failed",
                source: std::io::Error::other(format!(
                    "{}: {}",
                    failed.path,
                    self.redact(&failed.error.to_string())
                )),
            });
        }
        if let Some(collision) = outcome.collisions.first() {
            return Err(SourceError::Io {
                context: "two paths of the checkout collide on this file system",
                source: std::io::Error::other(collision.path.to_string()),
            });
        }
        Ok(())
    }

    fn fetch_error(&self, err: &gix::Error) -> SourceError {
        if err.classify().is_unauthenticated() || err.classify().is_permission_denied() {
            return SourceError::AuthenticationFailed {
                had_credentials: self.credentials.is_some(),
            };
        }
        if let Some(branch) = &self.branch {
            // A missing ref is "not found" without any I/O below it; a missing repository's
            // "not found" is a file system error.
            let io_below = err
                .iter_errors()
                .any(|cause| cause.downcast_ref::<std::io::Error>().is_some());
            if err.classify().is_not_found() && !io_below {
                return SourceError::BranchNotFound {
                    branch: branch.clone(),
                };
            }
        }
        SourceError::Unreachable {
            detail: self.redact(&error_text(err)),
        }
    }
}

fn basic_auth_value(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// The error and its causes, one line.
fn error_text(err: &gix::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.iter_errors() {
        let text = cause.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// The bytes the checkout of HEAD would write (file contents and link targets), counting
/// only up to just past `max` so a hostile tree costs little to measure.
fn worktree_size(repo: &gix::Repository, max: u64) -> Result<u64, gix::Error> {
    let tree = repo.head_commit()?.tree()?;
    let mut recorder = gix::traverse::tree::Recorder::default();
    tree.traverse().breadthfirst(&mut recorder)?;
    let mut total: u64 = 0;
    for entry in recorder.records {
        if entry.mode.is_blob() || entry.mode.is_link() {
            total = total.saturating_add(repo.find_header(entry.oid)?.size());
            if total > max {
                break;
            }
        }
    }
    Ok(total)
}
