//! The official Python `kubernetes` client (PyPI) against the simulator: a second client,
//! independent of kubectl's Go and kube-rs, running `tests/python/client_check.py`.
//!
//! It fails, never skips, when no Python with the module is found: `.ci/run` installs it
//! (`python3 -m pip install kubernetes==37.0.2`); `$BERTH_PYTHON` names another interpreter.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_engine_core::testkit::TEST_IMAGE;

mod support;

/// The first of `$BERTH_PYTHON`, `python3` on `PATH` and `/usr/bin/python3` that imports
/// `kubernetes`.
fn python_with_client() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("BERTH_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.push(PathBuf::from("python3"));
    candidates.push(PathBuf::from("/usr/bin/python3"));
    for python in &candidates {
        let found = Command::new(python)
            .args(["-c", "import kubernetes"])
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return python.clone();
        }
    }
    panic!(
        "no Python with the official kubernetes client: tried {candidates:?}; install it with \
         `python3 -m pip install kubernetes==37.0.2` (.ci/run does) or set BERTH_PYTHON"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simproto_official_python_client() {
    let python = python_with_client();
    let started = support::start_sim().await;
    let kubeconfig = started.kubeconfig();
    let support::Started { sim, dir } = started;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client_check.py");
    let mut child = tokio::process::Command::new(&python);
    child
        .arg(&script)
        .arg(&kubeconfig)
        .arg(TEST_IMAGE)
        .env("HOME", dir.path())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(300), child.output())
        .await
        .expect("the script ends within 5 minutes")
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        python.display(),
        script.display(),
        out.status
    );
    assert!(
        stdout.contains("ok: deleted with foreground propagation"),
        "{stdout}"
    );
    sim.shutdown().await;
}
