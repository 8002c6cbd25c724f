//! The test sshd: an sshd on 127.0.0.1 with generated keys and its own config, std only, so
//! the CLI's end-to-end tests include it too (`#[path]`).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A private temp dir removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create a temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "berth-test", "-f"])
        .arg(path)
        .status()
        .expect("run ssh-keygen (install openssh-client)");
    assert!(status.success(), "ssh-keygen failed for {}", path.display());
}

/// An sshd on 127.0.0.1 (run as root: the remote side's `docker system dial-stdio` reaches
/// the local daemon), with its own config, host key and authorized client key, all in a temp
/// dir. Never touches ~/.ssh or /etc/ssh. Killed (with its sessions) on drop.
///
/// `SetEnv SHLVL=1` keeps the remote bash from sourcing root's `~/.bashrc` (bash does for
/// commands run by sshd at shell level 1): this machine's runs `pyenv init`, which can take a
/// minute per session.
pub struct Sshd {
    pub port: u16,
    pub dir: TempDir,
    child: Option<Child>,
}

impl Sshd {
    pub fn start() -> Self {
        let dir = TempDir::new("berth-sshd");
        let d = &dir.0;
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        keygen(&d.join("other_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        // sshd's privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nMaxStartups 100\n\
             MaxSessions 100\nLogLevel ERROR\n\
             SetEnv SHLVL=1\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        let host_pub: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {}\n", host_pub.join(" ")),
        )
        .unwrap();
        std::fs::write(d.join("empty_known_hosts"), "").unwrap();
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("these tests need sshd: apt-get install -y openssh-server");
        let child = Command::new(sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start sshd");
        let this = Self {
            port,
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        this
    }

    /// An ssh client config for this server with `key` and `known_hosts` in the temp dir.
    pub fn client_config(&self, key: &str, known_hosts: &str) -> PathBuf {
        let d = &self.dir.0;
        let path = d.join(format!("ssh_config-{key}-{known_hosts}"));
        let text = format!(
            "Host *\n  IdentityFile {d}/{key}\n  IdentitiesOnly yes\n  IdentityAgent none\n  \
             UserKnownHostsFile {d}/{known_hosts}\n  GlobalKnownHostsFile /dev/null\n  \
             StrictHostKeyChecking yes\n  ServerAliveInterval 2\n  ServerAliveCountMax 2\n",
            d = d.display()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The good client config.
    pub fn good_config(&self) -> PathBuf {
        self.client_config("client_key", "known_hosts")
    }

    pub fn address(&self) -> String {
        format!("ssh://root@127.0.0.1:{}", self.port)
    }

    /// Kills the listener and every session process under it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let mut pids = vec![child.id()];
            let mut i = 0;
            while i < pids.len() {
                pids.extend(children(pids[i]));
                i += 1;
            }
            let _ = Command::new("kill")
                .arg("-9")
                .args(pids.iter().map(u32::to_string))
                .stderr(Stdio::null())
                .status();
            let _ = child.wait();
        }
    }
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}
