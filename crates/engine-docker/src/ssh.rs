//! The Docker API over SSH, the way the docker CLI does it: the system `ssh` binary runs
//! `docker system dial-stdio` on the remote host and the API's bytes flow through its stdio.
//!
//! bollard's own `ssh` feature goes through the `openssh` crate's control-master session and
//! offers no way to pass an ssh config file, `BatchMode`, or to read ssh's stderr, so failures
//! could not be told apart. Instead the engine owns a private unix socket (in a `0700` temp
//! directory); bollard connects to it with `connect_with_socket`, and each accepted connection
//! spawns one `ssh … docker system dial-stdio` whose stdio is piped both ways. The user's ssh
//! config, agent and known_hosts are honoured because it is their `ssh`. The accept task and
//! every child die with the engine (the task is aborted, children are `kill_on_drop`).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use berth_engine_core::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Command;
use tokio::task::{JoinHandle, JoinSet};

use crate::errors::BACKEND;

/// An `ssh://[user@]host[:port]` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SshTarget {
    pub(crate) user: Option<String>,
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
}

impl SshTarget {
    /// Parses `address`; errors name `field`.
    pub(crate) fn parse(field: &str, address: &str) -> Result<Self, Error> {
        let expected = "expected ssh://[user@]host[:port]";
        let rest = address
            .strip_prefix("ssh://")
            .ok_or_else(|| Error::invalid_spec(field, format!("{address:?}: {expected}")))?;
        if rest.contains('/') && !rest.ends_with('/') {
            return Err(Error::invalid_spec(
                field,
                format!("{address:?} has a path; {expected} (no path)"),
            ));
        }
        let rest = rest.trim_end_matches('/');
        let (user, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) if !u.is_empty() => (Some(u.to_owned()), h),
            Some(_) => {
                return Err(Error::invalid_spec(
                    field,
                    format!("{address:?} has an empty user; {expected}"),
                ))
            }
            None => (None, rest),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p.parse::<u16>().map_err(|_| {
                    Error::invalid_spec(
                        field,
                        format!(
                            "{address:?} has port {p:?}, expected a number 1-65535; {expected}"
                        ),
                    )
                })?;
                (h, Some(port))
            }
            _ => (hostport, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.starts_with('-') {
            return Err(Error::invalid_spec(
                field,
                format!("{address:?} names no host; {expected}"),
            ));
        }
        Ok(Self {
            user,
            host: host.to_owned(),
            port,
        })
    }

    /// `user@host` or `host`, for messages.
    pub(crate) fn display(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }
}

/// The `ssh` options common to the master connection and the tunnels.
fn base_args(target: &SshTarget, config_file: Option<&Path>) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(f) = config_file {
        args.push("-F".to_owned());
        args.push(f.display().to_string());
    }
    // Never prompt (for a password, a passphrase or an unknown host key): fail instead.
    args.extend(["-o", "BatchMode=yes", "-o", "ConnectTimeout=15"].map(str::to_owned));
    if let Some(user) = &target.user {
        args.push("-l".to_owned());
        args.push(user.clone());
    }
    if let Some(port) = target.port {
        args.push("-p".to_owned());
        args.push(port.to_string());
    }
    args
}

/// The master connection: authenticates once and holds the connection that the tunnels
/// multiplex over (`-M -N`, in the foreground so the engine owns it).
pub(crate) fn master_args(
    target: &SshTarget,
    config_file: Option<&Path>,
    control: &Path,
) -> Vec<String> {
    let mut args = base_args(target, config_file);
    args.extend(["-M", "-N", "-o", "ControlPersist=no", "-o"].map(str::to_owned));
    args.push(format!("ControlPath={}", control.display()));
    args.push("--".to_owned());
    args.push(target.host.clone());
    args
}

/// One tunnel: `docker system dial-stdio` on `target`, over the master connection when it is
/// up (ssh connects directly when the control socket is gone).
pub(crate) fn tunnel_args(
    target: &SshTarget,
    config_file: Option<&Path>,
    control: &Path,
) -> Vec<String> {
    let mut args = base_args(target, config_file);
    args.extend(["-o", "ControlMaster=no", "-o"].map(str::to_owned));
    args.push(format!("ControlPath={}", control.display()));
    args.push("--".to_owned());
    args.push(target.host.clone());
    args.extend(["docker", "system", "dial-stdio"].map(str::to_owned));
    args
}

/// The local end of the SSH transport: a private socket whose connections are tunnelled.
#[derive(Debug)]
pub(crate) struct SshProxy {
    dir: PathBuf,
    socket: PathBuf,
    task: JoinHandle<()>,
    master: tokio::process::Child,
    last_stderr: Arc<Mutex<String>>,
    target: SshTarget,
}

impl Drop for SshProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.master.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl SshProxy {
    /// Opens the master connection to `target` (its failure is classified from ssh's
    /// stderr), then listens on a fresh private socket and tunnels each connection to it.
    pub(crate) async fn start(
        address: &str,
        target: SshTarget,
        config_file: Option<&Path>,
    ) -> Result<Self, Error> {
        let dir = std::env::temp_dir().join(format!(
            "berth-ssh-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::from_io(format!("create {}", dir.display()), e))?;
        let socket = dir.join("docker.sock");
        let listener = UnixListener::bind(&socket).map_err(|e| {
            let _ = std::fs::remove_dir(&dir);
            Error::from_io(format!("listen on {}", socket.display()), e)
        })?;
        let control = dir.join("cm");
        let mut master = Command::new("ssh")
            .args(master_args(&target, config_file, &control))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                classify_stderr(address, &target, &format!("berth: cannot run ssh: {e}"))
                    .unwrap_or_else(|| Error::from_io("run ssh", e))
            })?;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while !control.exists() {
            if let Ok(Some(status)) = master.try_wait() {
                let mut text = String::new();
                if let Some(mut stderr) = master.stderr.take() {
                    let _ = stderr.read_to_string(&mut text).await;
                }
                let _ = std::fs::remove_dir_all(&dir);
                return Err(classify_stderr(address, &target, &text).unwrap_or_else(|| {
                    Error::Unavailable {
                        backend: BACKEND,
                        address: address.to_owned(),
                        hint: format!(
                            "ssh to {} exited ({status}): {}; check that `ssh {} docker version` works without a prompt",
                            target.display(),
                            last_line(&text),
                            target.display()
                        ),
                        source: None,
                    }
                }));
            }
            if tokio::time::Instant::now() > deadline {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(Error::Unavailable {
                    backend: BACKEND,
                    address: address.to_owned(),
                    hint: format!("ssh to {} did not connect within 30 s", target.display()),
                    source: None,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // The master's later complaints (the connection dropping) are not needed: drain them.
        if let Some(mut stderr) = master.stderr.take() {
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = stderr.read_to_end(&mut sink).await;
            });
        }
        let args = tunnel_args(&target, config_file, &control);
        let last_stderr = Arc::new(Mutex::new(String::new()));
        let stderr_slot = last_stderr.clone();
        tracing::debug!(address, ?args, "ssh transport listening");
        let task = tokio::spawn(async move {
            // Dropping the set (when the task is aborted) aborts every tunnel, and with it
            // kills its ssh child.
            let mut tunnels = JoinSet::new();
            // One tunnel is kept started ahead of need: bollard opens a connection per request
            // (no pooling on sockets), and starting ssh and the remote docker CLI is most of
            // a request's latency.
            let mut spare = spawn_ssh(&args).ok();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((conn, _)) => {
                            let warm = spare
                                .take()
                                .and_then(|mut c| matches!(c.try_wait(), Ok(None)).then_some(c));
                            let child = match warm {
                                Some(c) => Ok(c),
                                None => spawn_ssh(&args),
                            };
                            tunnels.spawn(tunnel(conn, child, stderr_slot.clone()));
                            spare = spawn_ssh(&args).ok();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "ssh transport: accept failed");
                            return;
                        }
                    },
                    Some(_) = tunnels.join_next(), if !tunnels.is_empty() => {}
                }
            }
        });
        Ok(Self {
            dir,
            socket,
            task,
            master,
            last_stderr,
            target,
        })
    }

    /// The socket bollard connects to.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// The typed error for a connection that failed, from what ssh said last.
    pub(crate) fn classify(&self, address: &str, fallback: bollard::errors::Error) -> Error {
        let stderr = self
            .last_stderr
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        classify_stderr(address, &self.target, &stderr)
            .unwrap_or_else(|| crate::errors::unavailable(address, fallback))
    }
}

/// Pipes `conn` through one `ssh … docker system dial-stdio`.
fn spawn_ssh(args: &[String]) -> std::io::Result<tokio::process::Child> {
    Command::new("ssh")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}

/// Pipes `conn` through `child`, one `ssh … docker system dial-stdio`.
async fn tunnel(
    mut conn: UnixStream,
    child: std::io::Result<tokio::process::Child>,
    stderr_slot: Arc<Mutex<String>>,
) {
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            if let Ok(mut s) = stderr_slot.lock() {
                *s = format!("berth: cannot run ssh: {e}");
            }
            return;
        }
    };
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return;
    };
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let (mut conn_read, mut conn_write) = conn.split();
    let upstream = async {
        let _ = tokio::io::copy(&mut conn_read, &mut stdin).await;
        let _ = stdin.shutdown().await;
        drop(stdin);
    };
    let downstream = async {
        let _ = tokio::io::copy(&mut stdout, &mut conn_write).await;
    };
    // The daemon's side ending (ssh exited, sshd died) ends the connection for the client:
    // do not wait for the client to finish writing.
    tokio::select! {
        () = downstream => {}
        () = async { upstream.await; std::future::pending::<()>().await } => {}
    }
    // Record what ssh said before the client sees the connection close, so the error it
    // gets can be classified from it.
    if tokio::time::timeout(std::time::Duration::from_secs(2), child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    if let Ok(Ok(text)) = tokio::time::timeout(std::time::Duration::from_secs(2), stderr_task).await
    {
        let text = text.trim();
        if !text.is_empty() {
            tracing::debug!(stderr = text, "ssh transport");
            if let Ok(mut s) = stderr_slot.lock() {
                text.clone_into(&mut s);
            }
        }
    }
    let _ = conn_write.shutdown().await;
}

/// Reads ssh's (or the remote shell's) complaint into an actionable error.
pub(crate) fn classify_stderr(address: &str, target: &SshTarget, stderr: &str) -> Option<Error> {
    let host = target.display();
    let unavailable = |hint: String| Error::Unavailable {
        backend: BACKEND,
        address: address.to_owned(),
        hint,
        source: Some(stderr.trim().to_owned().into()),
    };
    let forbidden = |reason: String| Error::Forbidden {
        backend: BACKEND,
        address: address.to_owned(),
        action: format!("ssh to {host}"),
        reason,
    };
    if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        return Some(forbidden(format!(
            "the host key of {} does not match the one in known_hosts (a reinstalled host, or someone in the middle); check the new key out of band, then `ssh-keygen -R {}` and connect once with `ssh {host}`",
            target.host, target.host
        )));
    }
    if stderr.contains("Host key verification failed")
        || stderr.contains("host key is known for")
        || stderr.contains("No ED25519 host key")
        || stderr.contains("No RSA host key")
        || stderr.contains("No ECDSA host key")
    {
        return Some(forbidden(format!(
            "the host key of {} is not in known_hosts and ssh runs with BatchMode=yes (it never asks); run `ssh {host}` once to check and accept the key, or add it with ssh-keyscan",
            target.host
        )));
    }
    if stderr.contains("Permission denied") {
        return Some(forbidden(format!(
            "authentication failed ({}); load the right key into ssh-agent (`ssh-add`) or set IdentityFile for {} in ~/.ssh/config, and check that `ssh {host} docker version` works without a prompt",
            last_line(stderr),
            target.host
        )));
    }
    if stderr.contains("Connection refused") {
        return Some(unavailable(format!(
            "ssh to {host} was refused: is sshd running there, and on that port?"
        )));
    }
    if stderr.contains("Could not resolve hostname") {
        return Some(unavailable(format!(
            "cannot resolve {}: check the host name (or its Host entry in ~/.ssh/config)",
            target.host
        )));
    }
    if stderr.contains("timed out") || stderr.contains("No route to host") {
        return Some(unavailable(format!(
            "ssh to {host} did not connect ({}); check the address and the network",
            last_line(stderr)
        )));
    }
    if stderr.contains("docker: command not found")
        || stderr.contains("docker: not found")
        || stderr.contains("\"docker\": executable file not found")
        || stderr.contains("unknown command \"dial-stdio\"")
        || stderr.contains("unknown command: docker system dial-stdio")
    {
        return Some(unavailable(format!(
            "{host} has no usable docker CLI (`docker system dial-stdio` failed: {}); install Docker there (the CLI 18.09 or later) and check that the ssh user may use it",
            last_line(stderr)
        )));
    }
    if stderr.contains("permission denied while trying to connect to the Docker daemon")
        || stderr.contains("Cannot connect to the Docker daemon")
    {
        return Some(unavailable(format!(
            "the docker CLI on {host} cannot reach its daemon ({}); start dockerd there, or add the ssh user to the docker group",
            last_line(stderr)
        )));
    }
    if stderr.starts_with("berth: cannot run ssh") {
        return Some(unavailable(format!(
            "{}; install the OpenSSH client (`ssh`) and make sure it is on PATH",
            stderr.trim()
        )));
    }
    None
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_user_host_and_port() {
        let t = SshTarget::parse("host", "ssh://alice@example.com:2222").unwrap();
        assert_eq!(t.user.as_deref(), Some("alice"));
        assert_eq!(t.host, "example.com");
        assert_eq!(t.port, Some(2222));
        let t = SshTarget::parse("host", "ssh://example.com").unwrap();
        assert_eq!((t.user, t.port), (None, None));
    }

    #[test]
    fn rejects_bad_addresses_naming_the_field() {
        for bad in [
            "ssh://",
            "ssh://@h",
            "ssh://h:port",
            "ssh://h/path",
            "ssh://-oProxyCommand=x",
        ] {
            let err = SshTarget::parse("host", bad).unwrap_err();
            assert!(err.to_string().contains("host"), "{bad}: {err}");
        }
    }

    #[test]
    fn args_never_prompt_and_end_with_dial_stdio() {
        let t = SshTarget::parse("host", "ssh://bob@h:22").unwrap();
        let args = tunnel_args(&t, Some(Path::new("/tmp/cfg")), Path::new("/tmp/x/cm"));
        assert_eq!(&args[..2], ["-F", "/tmp/cfg"]);
        assert!(args.contains(&"ControlPath=/tmp/x/cm".to_owned()));
        let master = master_args(&t, None, Path::new("/tmp/x/cm"));
        assert!(master.contains(&"BatchMode=yes".to_owned()) && master.contains(&"-N".to_owned()));
        assert_eq!(master.last().map(String::as_str), Some("h"));
        assert!(args.contains(&"BatchMode=yes".to_owned()));
        assert_eq!(
            &args[args.len() - 5..],
            ["--", "h", "docker", "system", "dial-stdio"]
        );
    }

    #[test]
    fn classifies_ssh_failures() {
        let t = SshTarget::parse("host", "ssh://bob@h").unwrap();
        let auth =
            classify_stderr("ssh://bob@h", &t, "bob@h: Permission denied (publickey).\n").unwrap();
        assert!(auth.to_string().contains("authentication failed"), "{auth}");
        let key = classify_stderr("ssh://bob@h", &t, "No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.\nHost key verification failed.\n").unwrap();
        assert!(key.to_string().contains("not in known_hosts"), "{key}");
        let refused = classify_stderr(
            "ssh://bob@h",
            &t,
            "ssh: connect to host h port 22: Connection refused\n",
        )
        .unwrap();
        assert!(refused.to_string().contains("refused"), "{refused}");
        let nodocker = classify_stderr(
            "ssh://bob@h",
            &t,
            "bash: line 1: docker: command not found\n",
        )
        .unwrap();
        assert!(
            nodocker.to_string().contains("no usable docker"),
            "{nodocker}"
        );
        assert!(classify_stderr("ssh://bob@h", &t, "").is_none());
    }
}
