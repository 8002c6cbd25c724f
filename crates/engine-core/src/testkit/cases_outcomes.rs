//! How commands end when the environment, not the command, ends them: the out-of-memory
//! killer, and the environment stopped under a running command. Both must be told apart from
//! a command that ends with 137 by itself.

use std::time::{Duration, Instant};

use super::Fixture;
use crate::{ErrorKind, ExecRequest, OomKill, Resources};

/// A command that allocates past a 64Mi limit ends with 137 flagged as an out-of-memory kill
/// naming the limit; a command that SIGKILLs itself also ends with 137, unflagged.
pub async fn out_of_memory_is_reported_as_such(fx: &Fixture) {
    let spec = fx.spec().with_resources(Resources {
        memory_bytes: Some(64 << 20),
        ..Resources::default()
    });
    fx.with_env(&spec, |env| async move {
        let own = fx
            .engine
            .exec(&env, ExecRequest::shell("kill -9 $$"))
            .await
            .expect("a command that kills itself");
        assert_eq!(own.status.code(), 137);
        assert!(
            !own.oom_killed(),
            "SIGKILL by the command is not an OOM kill"
        );
        // `tail` keeps the whole newline-free input in memory: 200 MiB under a 64 MiB limit.
        let out = fx
            .engine
            .exec(&env, ExecRequest::shell("head -c 200m /dev/zero | tail"))
            .await
            .unwrap_or_else(|e| panic!("an OOM-killed command is an exit status, got {e:?}"));
        assert_eq!(out.status.code(), 137, "{out:?}");
        assert_eq!(
            out.oom,
            Some(OomKill::new(Some(64 << 20))),
            "the kill is reported as out of memory with the limit"
        );
        assert_eq!(
            out.oom.map(|o| o.message()).as_deref(),
            Some("killed: out of memory (limit 64Mi)")
        );
    })
    .await;
}

/// Stopping the environment while a command runs in it ends the command with
/// [`ErrorKind::EnvironmentGone`], promptly: not an exit code (137 would look like an
/// out-of-memory kill), not a hang.
pub async fn stop_under_a_running_exec_is_environment_gone(fx: &Fixture) {
    let spec = fx.spec();
    let env = fx
        .engine
        .start(&spec)
        .await
        .unwrap_or_else(|e| panic!("start failed: {e} ({e:?})"));
    let process = fx
        .engine
        .exec_streaming(&env, ExecRequest::new(["sleep", "300"]))
        .await
        .expect("exec sleep");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = Instant::now();
    fx.engine.stop(&env).await.expect("stop");
    let outcome = tokio::time::timeout(Duration::from_secs(60), process.wait())
        .await
        .expect("the exec ends once its environment is stopped");
    let err = outcome.expect_err("a stopped environment is not an exit status");
    assert_eq!(err.kind(), ErrorKind::EnvironmentGone, "{err} ({err:?})");
    assert!(
        err.to_string().contains("stopped while the command ran"),
        "{err}"
    );
    assert!(
        stopping.elapsed() < Duration::from_secs(45),
        "took {:?}",
        stopping.elapsed()
    );
}
