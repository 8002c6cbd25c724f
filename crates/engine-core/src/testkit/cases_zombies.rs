//! Zombies and PID 1: what a command leaves running in the background is reaped when it ends,
//! on every backend (Docker's init; on Kubernetes the pod's shared process namespace, whose
//! pause process is PID 1).

use std::time::Duration;

use super::Fixture;
use crate::ExecRequest;

/// Lists the zombies of the environment, one `pid comm` per line, reading `/proc` (no `ps`
/// needed in the image).
const LIST_ZOMBIES: &str = r#"for f in /proc/[0-9]*/stat; do read -r l < "$f" 2>/dev/null || continue; case "${l##*) }" in Z*) echo "${l%% (*} $(cat "${f%stat}comm" 2>/dev/null)";; esac; done"#;

/// After `sh -c 'sleep 0.1 &'` returns, the orphaned `sleep` is reaped: a second later no
/// zombie is left in the environment.
pub async fn no_zombie_is_left_behind(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        for _ in 0..3 {
            let out = fx
                .engine
                .exec(&env, ExecRequest::shell("sleep 0.1 &"))
                .await
                .unwrap_or_else(|e| panic!("exec failed: {e} ({e:?})"));
            assert!(out.status.success(), "{out:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let out = fx
            .engine
            .exec(&env, ExecRequest::shell(LIST_ZOMBIES))
            .await
            .unwrap_or_else(|e| panic!("listing zombies failed: {e} ({e:?})"));
        assert!(out.status.success(), "{out:?}");
        let zombies = out.stdout_lossy();
        assert!(
            zombies.trim().is_empty(),
            "orphans were not reaped; zombies (pid comm):\n{zombies}"
        );
    })
    .await;
}
