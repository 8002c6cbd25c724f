//! Quiet by default (issue 10, section 7): when the cluster cannot be reached, `berth` says so
//! once, in its own words; a dependency (kube's client) logs nothing unless `-v` or `RUST_LOG`
//! asks.

use std::process::{Command, Output};

mod common;

/// A kubeconfig for an API server on a port where nothing listens.
fn unreachable_kubeconfig(dir: &std::path::Path) -> std::path::PathBuf {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "gone", "cluster": {"server": format!("http://127.0.0.1:{port}")}}],
        "users": [{"name": "gone", "user": {}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "gone", "namespace": "default"}}],
        "current-context": "gone",
    });
    let path = dir.join("kubeconfig");
    std::fs::write(&path, config.to_string()).expect("kubeconfig");
    path
}

fn berth(dir: &std::path::Path, kubeconfig: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = common::berth_in(dir, &dir.join("state"), args);
    common::on_kubernetes(&mut cmd, kubeconfig);
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_connection_failure_is_reported_once_without_dependency_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = unreachable_kubeconfig(dir.path());
    for args in [&["ls"][..], &["run", "--", "true"][..], &["doctor"][..]] {
        let out = berth(dir.path(), &kubeconfig, args)
            .output()
            .expect("berth runs");
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            !err.contains("kube_client") && !err.contains("ERROR") && !err.contains("WARN"),
            "{args:?}: a dependency logged without -v:\n{err}"
        );
        if args != ["doctor"] {
            assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
            let lines: Vec<&str> = err.lines().collect();
            assert_eq!(lines.len(), 1, "{args:?}: one line, berth's own:\n{err}");
            assert!(lines[0].starts_with("berth: "), "{args:?}: {err}");
        }
    }
}

#[test]
fn verbose_and_rust_log_still_show_dependency_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = unreachable_kubeconfig(dir.path());
    let out = berth(dir.path(), &kubeconfig, &["-v", "ls"])
        .output()
        .expect("berth runs");
    let verbose = stderr(&out);
    assert!(verbose.lines().count() > 1, "-v shows logs:\n{verbose}");
    let out = berth(dir.path(), &kubeconfig, &["ls"])
        .env("RUST_LOG", "kube_client=trace")
        .output()
        .expect("berth runs");
    let asked = stderr(&out);
    assert!(
        asked.contains("kube_client"),
        "RUST_LOG is honoured:\n{asked}"
    );
}
