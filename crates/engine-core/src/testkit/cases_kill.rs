//! Timeouts that really kill: the whole tree stops before anything dies, processes that
//! cleared the marker are found by parentage and session, a fork bomb at the pids limit
//! cannot disarm the kill, and what escaped anyway is reported.

use std::time::{Duration, Instant};

use super::cases::{process_lines, run};
use super::Fixture;
use crate::{EnvironmentId, Error, ErrorKind, ExecRequest, Resources};

/// Runs `script` with a timeout of `secs` and checks it timed out; returns the error.
async fn time_out(fx: &Fixture, env: &EnvironmentId, script: &str, secs: u64) -> Error {
    let started = Instant::now();
    let err = fx
        .engine
        .exec(
            env,
            ExecRequest::shell(script).with_timeout(Duration::from_secs(secs)),
        )
        .await
        .expect_err("the exec must time out");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(secs + 40),
        "the timeout took {:?}",
        started.elapsed()
    );
    err
}

/// Waits up to `limit` until no process line contains `needle`; the lines left otherwise.
async fn gone(fx: &Fixture, env: &EnvironmentId, needle: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<String> = process_lines(fx, env)
            .await
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A child that cleared `BERTH_EXEC_ID` is still part of the tree (by parentage and
/// session) and dies with it.
pub async fn timeout_kills_a_child_that_cleared_the_marker(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        time_out(
            fx,
            &env,
            "env -u BERTH_EXEC_ID sh -c 'sleep 1001' & sleep 30",
            2,
        )
        .await;
        let left = gone(fx, &env, "sleep 1001", Duration::from_secs(2)).await;
        assert!(left.is_empty(), "survived the timeout: {left:?}");
    })
    .await;
}

/// No statement of the command runs after the deadline: the tree is stopped before anything
/// is killed, so no shell sees its child die and goes on. The command starts subshells until
/// process ids pass a power of ten: then some subshell (pid 99) has its `sleep` at 100 or
/// above, which `/proc`'s listing order puts first, so a kill in that order reaches the child
/// before its parent.
pub async fn no_statement_runs_after_the_timeout(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let script = "late() { sleep 30; touch /tmp/after-the-deadline; }; \
             late & t=10; while [ $t -le $! ]; do t=$((t * 10)); done; \
             while [ $! -lt $t ]; do late & done; \
             late";
        time_out(fx, &env, script, 3).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let out = run(
            fx,
            &env,
            ExecRequest::shell("test -e /tmp/after-the-deadline && echo ran || echo clean"),
        )
        .await;
        assert_eq!(
            out.stdout_lossy().trim(),
            "clean",
            "a statement ran after the timeout"
        );
    })
    .await;
}

/// Counts the environment's processes with shell builtins only, so the count works however
/// few process ids are left (one, for the exec itself).
async fn process_count(fx: &Fixture, env: &EnvironmentId) -> usize {
    let out = run(
        fx,
        env,
        ExecRequest::shell("n=0; for p in /proc/[0-9]*; do n=$((n + 1)); done; echo $n"),
    )
    .await;
    out.stdout_lossy()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("the environment cannot count its processes: {out:?}"))
}

/// A command that fills the environment's pids limit cannot disarm the kill: after the
/// timeout the environment is back to the processes it had before, and a later exec works.
/// (A shell fork bomb such as `f() { f | f & }; f` collapses by itself in busybox, whose shells
/// exit when a fork fails; what disarmed a kill that forks is a full limit at the deadline,
/// which this command holds with sleeping processes.)
pub async fn timeout_kills_a_fork_bomb_at_the_pids_limit(fx: &Fixture) {
    // Kubernetes has no per-pod pids field; there the node's podPidsLimit applies.
    let spec = fx.spec().with_resources(Resources {
        pids: Some(64),
        ..Resources::default()
    });
    fx.with_env(&spec, |env| async move {
        let baseline = process_count(fx, &env).await;
        let bomb = "sleep 60 & (while :; do sleep 1000 & done) 2>/dev/null; wait";
        time_out(fx, &env, bomb, 3).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = process_count(fx, &env).await;
            if now <= baseline {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "30 s after the timeout the environment still has {now} processes, {baseline} before"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let out = run(fx, &env, ExecRequest::shell("echo alive")).await;
        assert_eq!(out.stdout_lossy(), "alive\n");
    })
    .await;
}

/// A process that cleared the marker, called `setsid` and was re-parented to PID 1 has left
/// every trace the kill follows; the timeout says so instead of claiming a clean kill.
pub async fn timeout_reports_a_process_that_escaped(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let err = time_out(
            fx,
            &env,
            "(env -u BERTH_EXEC_ID setsid sleep 1003 &); sleep 30",
            2,
        )
        .await;
        let Error::TimeoutLeftProcesses { processes, .. } = &err else {
            panic!("the escape is not reported: {err:?}");
        };
        assert!(
            processes.iter().any(|p| p.contains("(sleep)")),
            "{processes:?}"
        );
        assert!(err.to_string().contains("may have escaped"), "{err}");
        // A timeout that left nothing is a plain Timeout again.
        let clean = time_out(fx, &env, "sleep 30", 1).await;
        assert!(matches!(clean, Error::Timeout { .. }), "{clean:?}");
    })
    .await;
}

/// A timed exec run as another user is killed as that user: the watchdog and the sweep run
/// with its identity, since reading another user's `/proc/PID/environ` needs
/// `CAP_SYS_PTRACE`, which berth drops.
pub async fn timeout_as_another_user_kills_the_tree(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let req = ExecRequest::shell("env -u BERTH_EXEC_ID sh -c 'sleep 1004' & sleep 30")
            .with_user(super::TEST_UID.to_string())
            .with_timeout(Duration::from_secs(2));
        let err = match fx.engine.exec(&env, req).await {
            Err(e) if e.is_unsupported() => return,
            Err(e) => e,
            Ok(out) => panic!("the exec must time out: {out:?}"),
        };
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        let left = gone(fx, &env, "sleep 1004", Duration::from_secs(2)).await;
        assert!(left.is_empty(), "survived the timeout: {left:?}");
    })
    .await;
}
