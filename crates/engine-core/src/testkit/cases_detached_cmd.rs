//! Conformance cases: detached commands ([`DetachedCommands`]) outlive their client.

use std::time::Duration;

use super::Fixture;
use crate::{
    AttachFrom, CommandState, DetachedCommand, DetachedCommands, ErrorKind, ExitStatus, OutputChunk,
};

/// A detached command keeps running when the client attached to it is dropped mid-command;
/// a new attach gets every byte of both streams and the true exit code, the same bytes from
/// an offset, and `status`, `list`, `kill` and `remove` work.
pub async fn detached_command_survives_a_dropped_client(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let commands = DetachedCommands::new(fx.engine.clone(), env.clone());
        let script = "i=0; while [ $i -lt 30 ]; do echo out $i; echo err $i >&2; i=$((i+1)); sleep 0.05; done; printf tail; exit 7";
        let id = commands
            .start(DetachedCommand::new(script))
            .await
            .unwrap_or_else(|e| panic!("start failed: {e} ({e:?})"));
        let mut first = commands.attach(&id, AttachFrom::default()).await.expect("attach");
        let mut output = first.take_output().expect("output");
        match tokio::time::timeout(Duration::from_secs(30), output.next_chunk()).await {
            Ok(Some(OutputChunk::Stdout(b) | OutputChunk::Stderr(b))) => assert!(!b.is_empty()),
            other => panic!("no output from the first attach: {other:?}"),
        }
        // The client goes away mid-command: its exec is dropped (and killed by the backend).
        drop(output);
        drop(first);
        let running = commands.status(&id).await.expect("status");
        assert_eq!(running.state, CommandState::Running, "the command died with its client");

        let again = commands.attach(&id, AttachFrom::default()).await.expect("re-attach");
        let out = tokio::time::timeout(Duration::from_secs(60), again.collect(1 << 20))
            .await
            .expect("attach ended")
            .expect("collect");
        let want_out: String = (0..30).map(|i| format!("out {i}\n")).collect::<String>() + "tail";
        let want_err: String = (0..30).map(|i| format!("err {i}\n")).collect();
        assert_eq!(out.stdout_lossy(), want_out);
        assert_eq!(out.stderr_lossy(), want_err);
        assert_eq!(out.status.code(), 7);

        let from = AttachFrom { stdout: 6, stderr: 12 };
        let part = commands.attach(&id, from).await.expect("attach from offsets");
        let part = part.collect(1 << 20).await.expect("collect");
        assert_eq!(part.stdout_lossy(), want_out[6..]);
        assert_eq!(part.stderr_lossy(), want_err[12..]);
        assert_eq!(part.status.code(), 7);

        let status = commands.status(&id).await.expect("status");
        assert_eq!(status.state, CommandState::Exited(ExitStatus(7)));
        assert_eq!(status.stdout_bytes, want_out.len() as u64);

        let sleeper = commands
            .start(DetachedCommand::new("sleep 987031 & sleep 987032"))
            .await
            .expect("start sleeper");
        let err = commands.remove(&sleeper).await.expect_err("remove a running command");
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
        let listed = commands.list().await.expect("list");
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert!(listed.iter().any(|s| s.id == sleeper && s.state == CommandState::Running));
        commands.kill(&sleeper).await.expect("kill");
        let killed = commands.status(&sleeper).await.expect("status");
        assert_eq!(killed.state, CommandState::Exited(ExitStatus(137)));
        let left = super::cases::run(fx, &env, crate::ExecRequest::shell("ps -o args | grep '[9]8703' || true")).await;
        assert_eq!(left.stdout_lossy(), "", "the killed command's tree survived");

        commands.remove(&id).await.expect("remove");
        let err = commands.status(&id).await.expect_err("removed");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    })
    .await;
}

/// Output beyond the cap is dropped, the first bytes are kept, and the command is not
/// disturbed by it.
pub async fn detached_output_is_capped_keeping_the_first_bytes(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let commands = DetachedCommands::new(fx.engine.clone(), env);
        let id = commands
            .start(
                DetachedCommand::new(
                    "i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done; echo done >&2",
                )
                .with_output_cap(100),
            )
            .await
            .expect("start");
        let out = commands
            .attach(&id, AttachFrom::default())
            .await
            .expect("attach")
            .collect(1 << 20)
            .await
            .expect("collect");
        let full: String = (0..2000).map(|i| format!("line-{i}\n")).collect();
        assert_eq!(out.stdout_lossy(), full[..100]);
        assert_eq!(out.stderr_lossy(), "done\n");
        assert!(out.status.success());

        // The starting exec's kill marker does not reach the command (dropping or timing out
        // that exec must not kill it): the command carries its own only.
        let id = commands
            .start(DetachedCommand::new(
                "echo \"$BERTH_EXEC_ID\"; tr '\\0' '\\n' </proc/$PPID/environ | grep BERTH_EXEC_ID; echo end",
            ))
            .await
            .expect("start");
        let out = commands.attach(&id, AttachFrom::default()).await.expect("attach");
        let out = out.collect(1024).await.expect("collect");
        assert_eq!(out.stdout_lossy(), format!("berth-cmd-{id}-c\nend\n"));
    })
    .await;
}
