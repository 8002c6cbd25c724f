//! Source checkout against real repositories made by the `git` binary: over `file://`, by
//! path, and over HTTP through `git http-backend` behind a small hyper server with basic auth;
//! and Fernet tokens made by Python's `cryptography`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use berth_runner::source::{self, GitSource, SourceError, Token};
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use tempfile::TempDir;

const TOKEN: &str = "ghs_testToken0123456789abcdef";

/// Runs git with no user or system config, failing the test loudly if git is missing.
fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("the git binary is needed by these tests");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A repository: `main` with two commits (`main.txt`, a link out of the tree), and `other`
/// with `other.txt`.
fn make_repo() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    git(repo, &["init", "-q"]);
    std::fs::write(repo.join("first.txt"), "first\n").unwrap();
    git(repo, &["add", "."]);
    git(repo, &["commit", "-qm", "first"]);
    std::fs::write(repo.join("main.txt"), "on main\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", repo.join("escape")).unwrap();
    std::os::unix::fs::symlink("../../outside", repo.join("up")).unwrap();
    git(repo, &["add", "."]);
    git(repo, &["commit", "-qm", "main"]);
    git(repo, &["checkout", "-qb", "other"]);
    std::fs::write(repo.join("other.txt"), "on other\n").unwrap();
    git(repo, &["add", "."]);
    git(repo, &["commit", "-qm", "other"]);
    git(repo, &["checkout", "-q", "main"]);
    dir
}

fn git_config(checkout: &Path) -> String {
    std::fs::read_to_string(checkout.join(".git/config")).unwrap()
}

#[tokio::test]
async fn clones_the_default_branch_shallowly_over_file_url_and_by_path() {
    let repo = make_repo();
    for url in [
        format!("file://{}", repo.path().display()),
        repo.path().display().to_string(),
    ] {
        let dir = source::checkout(&GitSource::new(url.clone()))
            .await
            .unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).ok();
        assert_eq!(read("main.txt").as_deref(), Some("on main\n"), "{url}");
        assert_eq!(read("other.txt"), None, "{url}");
        // depth 1: one commit, marked shallow.
        assert!(
            dir.path().join(".git/shallow").is_file(),
            "{url}: not shallow"
        );
    }
}

#[tokio::test]
async fn clones_a_named_branch() {
    let repo = make_repo();
    let src = GitSource::new(format!("file://{}", repo.path().display())).branch("other");
    let dir = source::checkout(&src).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("other.txt")).unwrap(),
        "on other\n"
    );
}

#[tokio::test]
async fn a_missing_branch_is_branch_not_found() {
    let repo = make_repo();
    let src = GitSource::new(repo.path().display().to_string()).branch("nope");
    let err = source::checkout(&src).await.unwrap_err();
    assert!(
        matches!(&err, SourceError::BranchNotFound { branch } if branch == "nope"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_missing_repository_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let src = GitSource::new(dir.path().join("absent").display().to_string());
    let err = source::checkout(&src).await.unwrap_err();
    assert!(matches!(err, SourceError::Unreachable { .. }), "{err:?}");
    // A branch asked of a missing repository is still the repository's absence.
    let err = source::checkout(&src.branch("main")).await.unwrap_err();
    assert!(matches!(err, SourceError::Unreachable { .. }), "{err:?}");
}

#[tokio::test]
async fn a_checkout_over_the_cap_is_too_large() {
    // 8 MiB of zeros: a pack of a few KiB (under the download cap) that would write 8 MiB.
    let repo = make_repo();
    std::fs::write(repo.path().join("zeros"), vec![0u8; 8 << 20]).unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-qm", "zeros"]);
    let cap = 1 << 20;
    let src = GitSource::new(repo.path().display().to_string()).max_bytes(cap);
    let err = source::checkout(&src).await.unwrap_err();
    assert!(
        matches!(err, SourceError::TooLarge { size, max_bytes } if size > cap && max_bytes == cap),
        "{err:?}"
    );
}

#[tokio::test]
async fn links_out_of_the_tree_stay_links_in_the_checkout_and_its_archive() {
    let repo = make_repo();
    let dir = source::checkout(&GitSource::new(repo.path().display().to_string()))
        .await
        .unwrap();
    for (name, target) in [("escape", "/etc/passwd"), ("up", "../../outside")] {
        let meta = std::fs::symlink_metadata(dir.path().join(name)).unwrap();
        assert!(meta.file_type().is_symlink(), "{name} is not a link");
        assert_eq!(
            std::fs::read_link(dir.path().join(name)).unwrap(),
            PathBuf::from(target)
        );
    }
    // What the server will send into the job: the links as links, never their targets.
    let mut stream = berth_runner::archive::pack_dir_contents(dir.path()).unwrap();
    let mut tar = Vec::new();
    while let Some(piece) = stream.next().await {
        tar.extend_from_slice(&piece.unwrap());
    }
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut links = 0;
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        if path.ends_with("escape") || path.ends_with("up") {
            assert_eq!(
                entry.header().entry_type(),
                tar::EntryType::Symlink,
                "{path:?}"
            );
            links += 1;
        }
    }
    assert_eq!(links, 2);
}

/// A git server over smart HTTP: `git http-backend` as CGI behind hyper, requiring basic auth
/// with user `x-access-token` and [`TOKEN`].
struct GitServer {
    addr: SocketAddr,
    _root: TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GitServer {
    async fn start(repo: &Path) -> Self {
        let root = tempfile::tempdir().unwrap();
        let bare = root.path().join("repo.git");
        git(
            root.path(),
            &[
                "clone",
                "-q",
                "--bare",
                &repo.display().to_string(),
                &bare.display().to_string(),
            ],
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let project_root = Arc::new(root.path().to_owned());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let project_root = project_root.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let project_root = project_root.clone();
                        async move { Ok::<_, Infallible>(serve(&project_root, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            _root: root,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/repo.git", self.addr)
    }
}

fn expected_authorization() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}"))
    )
}

async fn serve(project_root: &Path, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == expected_authorization().as_bytes());
    if !authorized {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("WWW-Authenticate", "Basic realm=\"git\"")
            .body(Full::new(Bytes::from_static(b"auth required\n")))
            .unwrap();
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", project_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", req.method().as_str())
        .env("PATH_INFO", req.uri().path())
        .env("QUERY_STRING", req.uri().query().unwrap_or_default())
        .env("CONTENT_TYPE", header("content-type"))
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut child = cmd.spawn().expect("git http-backend");
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, &body)
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    cgi_response(&out.stdout)
}

/// Turns a CGI program's output (headers, a blank line, the body) into a response.
fn cgi_response(out: &[u8]) -> Response<Full<Bytes>> {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
        .expect("CGI output has a header block");
    let (head, body) = (&out[..split.0], &out[split.0 + split.1..]);
    let mut response = Response::builder();
    for line in String::from_utf8_lossy(head).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code: u16 = value.split(' ').next().unwrap().parse().unwrap();
            response = response.status(code);
        } else {
            response = response.header(name.trim(), value);
        }
    }
    response
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap()
}

#[tokio::test]
async fn over_http_the_right_token_clones_and_is_not_kept() {
    let repo = make_repo();
    let server = GitServer::start(repo.path()).await;
    let src = GitSource::new(server.url())
        .branch("other")
        .token(Token::new(TOKEN));
    let dir = source::checkout(&src).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("other.txt")).unwrap(),
        "on other\n"
    );
    let config = git_config(dir.path());
    assert!(config.contains(&server.url()), "{config}");
    assert!(!config.contains(TOKEN), "token in .git/config:\n{config}");
    assert!(!config.contains(&expected_authorization()[6..]), "{config}");

    let missing = GitSource::new(server.url())
        .branch("nope")
        .token(Token::new(TOKEN));
    let err = source::checkout(&missing).await.unwrap_err();
    assert!(matches!(err, SourceError::BranchNotFound { .. }), "{err:?}");

    // Credentials in the URL work too, and leave the URL before it is stored.
    let with_credentials = server
        .url()
        .replace("http://", &format!("http://x-access-token:{TOKEN}@"));
    let dir = source::checkout(&GitSource::new(with_credentials))
        .await
        .unwrap();
    assert!(dir.path().join("main.txt").is_file());
    let config = git_config(dir.path());
    assert!(!config.contains(TOKEN), "token in .git/config:\n{config}");
    assert!(config.contains(&server.url()), "{config}");
}

#[tokio::test]
async fn over_http_a_wrong_or_missing_token_is_authentication_failed() {
    let repo = make_repo();
    let server = GitServer::start(repo.path()).await;
    let wrong = "ghs_wrongToken_should_never_show";
    let err = source::checkout(&GitSource::new(server.url()).token(Token::new(wrong)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SourceError::AuthenticationFailed {
                had_credentials: true
            }
        ),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains(wrong), "{err}");

    let err = source::checkout(&GitSource::new(server.url()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SourceError::AuthenticationFailed {
                had_credentials: false
            }
        ),
        "{err:?}"
    );

    let in_url = server
        .url()
        .replace("http://", &format!("http://x-access-token:{wrong}@"));
    let err = source::checkout(&GitSource::new(in_url)).await.unwrap_err();
    assert!(
        matches!(
            err,
            SourceError::AuthenticationFailed {
                had_credentials: true
            }
        ),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains(wrong), "{err}");
}

#[tokio::test]
async fn over_http_an_absent_server_is_unreachable_without_the_token() {
    // A port nothing listens on: bind, note it, close.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let src = GitSource::new(format!("http://{addr}/repo.git")).token(Token::new(TOKEN));
    let err = source::checkout(&src).await.unwrap_err();
    assert!(matches!(err, SourceError::Unreachable { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains(TOKEN), "{err}");
}

/// Made once by Python: `Fernet(KEY).encrypt(b"ghp_fixtureToken0123456789")`.
const FERNET_KEY: &str = "DKd-qnFyBgwmAbu37T2TNcgi7R_Bxk6BOYsb2xl8z0k=";
const FERNET_FIXTURE: &str = "gAAAAABrDKgtuccpNkPRat8_UbdQw3rwH_nSIxjTTtUJsurZo58MMOc0hAxuwQN0EVcERrJacatOKircB0WSvsYQJdpy5lIAxx8PUan6-CkVlAFe2tLpxZw=";

#[test]
fn fernet_decrypts_a_token_made_by_python() {
    let token = source::decrypt_fernet_token(FERNET_FIXTURE, FERNET_KEY).unwrap();
    assert_eq!(token.expose(), "ghp_fixtureToken0123456789");
    assert!(!format!("{token:?}").contains("fixture"));
}

#[test]
fn fernet_decrypts_a_token_python_makes_now() {
    let script = "import sys\n\
        from cryptography.fernet import Fernet\n\
        k = Fernet.generate_key()\n\
        print(k.decode()); print(Fernet(k).encrypt(b'ghp_fresh \\xc3\\xa9').decode())";
    let out = match Command::new("python3").args(["-c", script]).output() {
        Ok(out) if out.status.success() => out,
        _ => {
            eprintln!("python3 with cryptography is not available; the fixed fixture covers this");
            return;
        }
    };
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let (key, token) = (lines.next().unwrap(), lines.next().unwrap());
    let token = source::decrypt_fernet_token(token, key).unwrap();
    assert_eq!(token.expose(), "ghp_fresh é");
}

#[test]
fn fernet_refuses_a_wrong_key_a_tampered_token_and_a_malformed_key() {
    let other_key = "r8MC28sPM7THDK5UM0fLOBkxz3ExVvRDeGl6TNhPvUU=";
    let err = source::decrypt_fernet_token(FERNET_FIXTURE, other_key).unwrap_err();
    assert!(matches!(err, SourceError::BadToken { .. }), "{err:?}");

    // Flip one character in the ciphertext: the HMAC no longer matches.
    let mut tampered = FERNET_FIXTURE.as_bytes().to_vec();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let err = source::decrypt_fernet_token(&tampered, FERNET_KEY).unwrap_err();
    assert!(matches!(err, SourceError::BadToken { .. }), "{err:?}");

    let err = source::decrypt_fernet_token(FERNET_FIXTURE, "not a key").unwrap_err();
    assert!(matches!(err, SourceError::BadKey), "{err:?}");
    assert!(err.to_string().contains("BERTH_SERVER_ENCRYPTION_KEY"));
}

/// With private addresses refused, a literal loopback address is refused before any I/O, a
/// name resolving to one before the clone, and an allowed list admits only its hosts. Without
/// the refusal the same server clones (the library's default: a caller's own repositories).
#[tokio::test]
async fn private_addresses_and_hosts_off_the_list_are_refused_when_asked() {
    let repo = make_repo();
    let server = GitServer::start(repo.path()).await;
    let literal = GitSource::new(server.url()).refuse_private_addresses();
    let err = literal.validate().unwrap_err();
    assert!(
        matches!(&err, SourceError::HostRefused { host, .. } if host == "127.0.0.1"),
        "{err:?}"
    );
    assert!(err.to_string().contains("loopback"), "{err}");
    let by_name =
        GitSource::new(server.url().replace("127.0.0.1", "localhost")).refuse_private_addresses();
    by_name.validate().unwrap(); // a name needs resolving: that is I/O, done by checkout
    let err = source::checkout(&by_name).await.unwrap_err();
    assert!(
        matches!(&err, SourceError::HostRefused { host, .. } if host == "localhost"),
        "{err:?}"
    );
    let off_list = GitSource::new(server.url()).allowed_hosts(["github.com"]);
    assert!(matches!(
        off_list.validate(),
        Err(SourceError::HostRefused { .. })
    ));
    let on_list = GitSource::new(server.url())
        .token(Token::new(TOKEN))
        .allowed_hosts(["127.0.0.1"]);
    let dir = source::checkout(&on_list).await.unwrap();
    assert!(dir.path().join("main.txt").is_file());
}

/// The download itself is capped, not only what the checkout would write: a repository whose
/// pack is larger than the cap is stopped while it arrives (`DownloadTooLarge`, not the
/// `TooLarge` of the check made after the fetch).
#[tokio::test]
async fn a_download_over_the_cap_is_too_large() {
    let repo = make_repo();
    // 4 MiB that do not compress, so the pack itself is over the cap.
    let mut noise = vec![0u8; 4 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(repo.path().join("noise.bin"), &noise).unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-qm", "noise"]);
    let server = GitServer::start(repo.path()).await;
    let src = GitSource::new(server.url())
        .token(Token::new(TOKEN))
        .max_bytes(1 << 20);
    let err = source::checkout(&src).await.unwrap_err();
    assert!(
        matches!(err, SourceError::DownloadTooLarge { size, max_bytes } if size > max_bytes && max_bytes == 1 << 20),
        "{err:?}"
    );
}
