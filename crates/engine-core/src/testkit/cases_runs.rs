//! Conformance cases: batch runs ([`ContainerEngine::submit_run`](crate::ContainerEngine::submit_run)):
//! the true exit code from the run's status, logs followed and resumed with every line exactly
//! once, cancel, list by label, and names that are not berth's runs.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};

use super::Fixture;
use crate::{
    ErrorKind, LabelSelector, LogCursor, LogOptions, RunId, RunSpec, RunState, RunStatus, LABEL_RUN,
};

fn run_spec(fx: &Fixture, script: &str) -> RunSpec {
    RunSpec::new(fx.spec().with_name("run"), ["sh", "-c", script])
}

/// Submits `spec`, runs `body`, and removes the run whether `body` passed or panicked.
async fn with_run<F, Fut>(fx: &Fixture, spec: &RunSpec, body: F)
where
    F: FnOnce(RunId) -> Fut,
    Fut: Future<Output = ()>,
{
    let run = fx
        .engine
        .submit_run(spec)
        .await
        .unwrap_or_else(|e| panic!("submit_run failed: {e} ({e:?})"));
    let outcome = AssertUnwindSafe(body(run.clone())).catch_unwind().await;
    let removed = fx.engine.stop(&run.as_environment()).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    removed.unwrap_or_else(|e| panic!("removing run {run} failed: {e}"));
}

async fn status(fx: &Fixture, run: &RunId) -> RunStatus {
    fx.engine
        .run_status(run)
        .await
        .unwrap_or_else(|e| panic!("run_status {run} failed: {e} ({e:?})"))
}

/// Polls the run's status until `done` holds, for at most 90 s (a pull or a pod start).
async fn wait_for(
    fx: &Fixture,
    run: &RunId,
    what: &str,
    done: impl Fn(&RunStatus) -> bool,
) -> RunStatus {
    let start = Instant::now();
    loop {
        let s = status(fx, run).await;
        if done(&s) {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "run {run} not {what} after 90 s: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads the run's logs with `options` to their end (or `max` lines), returning the lines as
/// text and the cursor after the last one.
async fn read_logs(
    fx: &Fixture,
    run: &RunId,
    options: LogOptions,
    max: usize,
) -> (Vec<String>, LogCursor) {
    let mut stream = fx
        .engine
        .run_logs(run, options)
        .await
        .unwrap_or_else(|e| panic!("run_logs {run} failed: {e} ({e:?})"));
    let mut cursor = options.since.unwrap_or_default();
    let mut lines = Vec::new();
    let deadline = Duration::from_secs(120);
    while lines.len() < max {
        let next = tokio::time::timeout(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no log line of {run} within {deadline:?}"));
        let Some(item) = next else { break };
        let line = item.unwrap_or_else(|e| panic!("reading the logs of {run} failed: {e}"));
        cursor.advance(&line);
        lines.push(String::from_utf8_lossy(&line.data).into_owned());
    }
    (lines, cursor)
}

fn numbered(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("line {i}\n")).collect()
}

/// A run's outcome is its status: exit code 0 is `succeeded`, 3 is `failed` with the code 3,
/// read after its log stream ended (which says nothing about the code).
pub async fn run_exit_codes_come_from_the_status(fx: &Fixture) {
    for (code, state) in [(0, RunState::Succeeded), (3, RunState::Failed)] {
        let spec = run_spec(fx, &format!("echo out; echo err >&2; exit {code}"));
        with_run(fx, &spec, |run| async move {
            let (lines, _) = read_logs(fx, &run, LogOptions::follow(), usize::MAX).await;
            assert!(lines.contains(&"out\n".to_owned()), "{lines:?}");
            let s = wait_for(fx, &run, "finished", |s| s.state.is_finished()).await;
            assert_eq!(
                (s.state, s.exit_code),
                (state, Some(code)),
                "status of a run that exited {code}: {s:?}"
            );
        })
        .await;
    }
}

/// Logs followed while the run prints, by a reader that was not the submitter, give every
/// line exactly once, in order; reading them again after the end gives the same lines.
pub async fn run_logs_followed_give_every_line_once(fx: &Fixture) {
    let spec = run_spec(
        fx,
        "i=1; while [ $i -le 40 ]; do echo line $i; i=$((i+1)); sleep 0.05; done",
    );
    with_run(fx, &spec, |run| async move {
        let (followed, _) = read_logs(fx, &run, LogOptions::follow(), usize::MAX).await;
        assert_eq!(followed, numbered(40), "followed logs");
        wait_for(fx, &run, "finished", |s| s.state.is_finished()).await;
        let (again, _) = read_logs(fx, &run, LogOptions::default(), usize::MAX).await;
        assert_eq!(again, numbered(40), "the logs read again after the end");
    })
    .await;
}

/// A run's output comes back whatever it holds: bytes that are not UTF-8 (exact, or U+FFFD
/// where the engine's log store keeps text) do not break the stream, and a last line without
/// a newline comes as printed.
pub async fn run_logs_carry_any_bytes(fx: &Fixture) {
    let spec = run_spec(
        fx,
        "printf 'one\\n\\377\\376 binary\\nlast without newline'",
    );
    with_run(fx, &spec, |run| async move {
        wait_for(fx, &run, "finished", |s| s.state.is_finished()).await;
        let mut stream = fx
            .engine
            .run_logs(&run, LogOptions::default())
            .await
            .unwrap_or_else(|e| panic!("run_logs failed: {e}"));
        let mut bytes = Vec::new();
        while let Some(line) = stream.next().await {
            bytes.extend_from_slice(&line.unwrap_or_else(|e| panic!("reading logs: {e}")).data);
        }
        // Docker's default log driver (json-file) keeps lines as JSON strings, so bytes that
        // are not UTF-8 come back as U+FFFD there; everything else is exact, and the stream
        // does not fail on them.
        let exact = b"one\n\xff\xfe binary\nlast without newline".to_vec();
        let replaced = "one\n\u{fffd}\u{fffd} binary\nlast without newline"
            .as_bytes()
            .to_vec();
        assert!(
            bytes == exact || bytes == replaced,
            "{:?}",
            String::from_utf8_lossy(&bytes)
        );
    })
    .await;
}

/// A follower dropped after a few lines resumes from its cursor (while the run still prints,
/// with several lines in each second) and gets each remaining line exactly once.
pub async fn run_log_stream_resumed_after_a_drop_gives_each_line_once(fx: &Fixture) {
    let spec = run_spec(
        fx,
        "i=1; while [ $i -le 60 ]; do echo line $i; i=$((i+1)); sleep 0.04; done",
    );
    with_run(fx, &spec, |run| async move {
        let (first, cursor) = read_logs(fx, &run, LogOptions::follow(), 7).await;
        assert_eq!(first, numbered(7), "before the drop");
        // The dropped stream is gone; the run prints on meanwhile.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (rest, cursor) = read_logs(
            fx,
            &run,
            LogOptions::follow().with_since(cursor),
            usize::MAX,
        )
        .await;
        let mut all = first;
        all.extend(rest);
        assert_eq!(all, numbered(60), "lines before and after the drop");
        // Resuming from the end gives nothing more.
        let (nothing, _) = read_logs(
            fx,
            &run,
            LogOptions::default().with_since(cursor),
            usize::MAX,
        )
        .await;
        assert!(nothing.is_empty(), "after the last line: {nothing:?}");
    })
    .await;
}

/// Cancelling a running run ends it, and its status says `cancelled`.
pub async fn cancel_ends_a_running_run(fx: &Fixture) {
    let spec = run_spec(fx, "echo started; sleep 600");
    with_run(fx, &spec, |run| async move {
        wait_for(fx, &run, "running", |s| s.state == RunState::Running).await;
        let started = Instant::now();
        fx.engine
            .cancel_run(&run)
            .await
            .unwrap_or_else(|e| panic!("cancel_run failed: {e} ({e:?})"));
        let s = wait_for(fx, &run, "cancelled", |s| s.state.is_finished()).await;
        assert_eq!(s.state, RunState::Cancelled, "{s:?}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "cancel took {:?}",
            started.elapsed()
        );
        fx.engine
            .cancel_run(&run)
            .await
            .unwrap_or_else(|e| panic!("cancelling a finished run failed: {e}"));
        assert_eq!(status(fx, &run).await.state, RunState::Cancelled);
    })
    .await;
}

/// A run still going at its deadline (the spec's `max_lifetime`) ends, and its status says
/// `deadline_exceeded`, not failed or succeeded.
pub async fn a_run_past_its_deadline_is_deadline_exceeded(fx: &Fixture) {
    let mut spec = run_spec(fx, "echo started; sleep 600");
    spec.env.max_lifetime = Duration::from_secs(2);
    with_run(fx, &spec, |run| async move {
        let s = wait_for(fx, &run, "ended by its deadline", |s| s.state.is_finished()).await;
        assert_eq!(s.state, RunState::DeadlineExceeded, "{s:?}");
    })
    .await;
}

/// `list_runs` finds a run by its labels (and its session), with [`LABEL_RUN`]; environments
/// are not runs.
pub async fn list_runs_finds_runs_by_label(fx: &Fixture) {
    let mut spec = run_spec(fx, "sleep 600");
    let mark = uuid::Uuid::new_v4().simple().to_string();
    spec.env
        .labels
        .insert("berth.dev/test-case".into(), mark.clone());
    let session = spec.env.session.clone();
    with_run(fx, &spec, |run| async move {
        let selector = LabelSelector::all().with("berth.dev/test-case", mark.clone());
        let listed = fx
            .engine
            .list_runs(&selector)
            .await
            .unwrap_or_else(|e| panic!("list_runs failed: {e}"));
        let ids: Vec<_> = listed.iter().map(|s| s.id.clone()).collect();
        assert_eq!(ids, vec![run.clone()], "runs with the test's label");
        assert!(listed[0].labels.contains_key(LABEL_RUN));
        assert_eq!(listed[0].session.as_ref(), Some(&session));
        let other = LabelSelector::all().with("berth.dev/test-case", "no-such-mark");
        assert!(fx.engine.list_runs(&other).await.expect("list").is_empty());
    })
    .await;
    let env_spec = fx.spec();
    let env_session = env_spec.session.clone();
    fx.with_env(&env_spec, |env| async move {
        let runs = fx
            .engine
            .list_runs(&LabelSelector::session(&env_session))
            .await
            .expect("list_runs");
        assert!(runs.is_empty(), "an environment listed as a run: {runs:?}");
        let as_run = RunId::new(env.as_str()).expect("id");
        let err = fx
            .engine
            .run_status(&as_run)
            .await
            .expect_err("an environment is no run");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    })
    .await;
}

/// A name that is no run of berth's (missing, or an object berth did not create) is
/// NotFound for status, logs and cancel, and a foreign object is left running.
pub async fn a_name_that_is_not_a_berth_run_is_not_found(fx: &Fixture) {
    let missing = RunId::new("berth-no-such-run-0").expect("id");
    let err = fx.engine.run_status(&missing).await.expect_err("status");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let Some(foreign) = fx.foreign.clone() else {
        panic!("this case needs the fixture's ForeignObjects");
    };
    let names = foreign.create(&fx.image).await;
    let name = names[0].clone();
    let outcome = AssertUnwindSafe(async {
        let run = RunId::new(name.clone()).expect("id");
        let err = fx
            .engine
            .run_status(&run)
            .await
            .expect_err("status of a foreign object");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        let err = fx
            .engine
            .cancel_run(&run)
            .await
            .expect_err("cancel of a foreign object");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        let err = fx
            .engine
            .run_logs(&run, LogOptions::default())
            .await
            .err()
            .expect("logs of a foreign object");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(
            foreign.is_alive(&name).await,
            "the foreign object was touched"
        );
    })
    .catch_unwind()
    .await;
    foreign.remove(&name).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
