//! The library's `Session` against the real Docker daemon: many named environments, started
//! concurrently, all stopped together.

use std::sync::Arc;
use std::time::Duration;

use berth_engine_core::testkit::ensure_test_image;
use berth_engine_core::{ContainerEngine, EnvironmentSpec, ExecRequest, LabelSelector, SessionId};
use berth_engine_docker::{DockerConfig, DockerEngine};
use berth_runner::owner::Owner;
use berth_runner::session::Session;
use berth_runner::RunnerError;

async fn engine() -> (Arc<dyn ContainerEngine>, EnvironmentSpec) {
    let engine = DockerEngine::connect(&DockerConfig::default())
        .await
        .unwrap_or_else(|e| panic!("these tests need a running Docker daemon: {e}"));
    let image = ensure_test_image(&engine).await.expect("test image");
    (
        Arc::new(engine),
        EnvironmentSpec::new(image, SessionId::generate()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_named_environments_start_together_and_stop_together() {
    let (engine, template) = engine().await;
    let selector = LabelSelector::session(&template.session);
    let session = Session::new(engine.clone(), template);
    let names = ["planner", "coder", "tester", "reviewer"];
    let started = session.start_many(&names).await;
    let check = async {
        let ids = started.expect("start_many");
        assert_eq!(ids.len(), names.len());
        for name in names {
            let out = session
                .exec(name, ExecRequest::shell("echo $HOSTNAME"))
                .await
                .expect("exec");
            assert!(out.status.success());
        }
        let dup = session.start("coder").await.expect_err("duplicate name");
        assert!(matches!(dup, RunnerError::NameInUse { .. }), "{dup}");
        let unknown = session
            .exec("nobody", ExecRequest::new(["true"]))
            .await
            .expect_err("unknown name");
        assert!(
            matches!(unknown, RunnerError::UnknownName { .. }),
            "{unknown}"
        );
        let listed = engine.list(&selector).await.expect("list");
        assert_eq!(listed.len(), names.len());
        for env in &listed {
            assert_eq!(Owner::from_labels(&env.labels), Some(Owner::current()));
        }
    };
    let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(check)).await;
    session.shutdown().await.expect("shutdown");
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
    assert!(engine.list(&selector).await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_session_stops_its_environments_before_the_drop_returns() {
    let (engine, template) = engine().await;
    let selector = LabelSelector::session(&template.session);
    {
        let session = Session::new(engine.clone(), template);
        session.start_many(&["a", "b"]).await.expect("start");
        assert_eq!(engine.list(&selector).await.expect("list").len(), 2);
    }
    let left = engine.list(&selector).await.expect("list");
    assert!(left.is_empty(), "still there after the drop: {left:?}");
}

/// The runtime ends right after the session is dropped (a `main` returning): nothing is left
/// behind, because the drop itself waited for the stops.
#[test]
fn a_session_dropped_as_its_runtime_ends_leaves_nothing() {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    };
    let selector = runtime().block_on(async {
        let (engine, template) = engine().await;
        let selector = LabelSelector::session(&template.session);
        let session = Session::new(engine, template);
        session.start("short-lived").await.expect("start");
        selector
        // The session drops here, and the runtime is dropped right after.
    });
    runtime().block_on(async {
        let (engine, _) = engine().await;
        let left = engine.list(&selector).await.expect("list");
        for env in &left {
            let _ = engine.stop(&env.id).await;
        }
        assert!(left.is_empty(), "left running: {left:?}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_environments_outlive_the_session() {
    let (engine, template) = engine().await;
    let session = Session::new(engine.clone(), template);
    let id = session.start("kept").await.expect("start");
    let detached = session.detach();
    drop(session);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = engine.exec(&id, ExecRequest::new(["true"])).await;
    engine.stop(&id).await.expect("stop");
    assert_eq!(detached.get("kept"), Some(&id));
    assert!(out.expect("still running").status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_starts_of_one_name_start_one_environment() {
    let (engine, template) = engine().await;
    let selector = LabelSelector::session(&template.session);
    let session = Session::new(engine.clone(), template);
    let (first, second) = tokio::join!(session.start("twin"), session.start("twin"));
    // The second is refused before it creates anything, whichever was polled first.
    let refused = match (&first, &second) {
        (Ok(_), Err(e)) | (Err(e), Ok(_)) => e,
        other => panic!("expected one start and one refusal: {other:?}"),
    };
    assert!(
        matches!(refused, RunnerError::NameInUse { .. }),
        "{refused}"
    );
    assert_eq!(engine.list(&selector).await.expect("list").len(), 1);
    session.shutdown().await.expect("shutdown");
    let left = engine.list(&selector).await.expect("list");
    assert!(left.is_empty(), "escaped shutdown: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_in_flight_at_shutdown_stops_what_it_started() {
    let (engine, template) = engine().await;
    let selector = LabelSelector::session(&template.session);
    let session = Session::new(engine.clone(), template);
    let start = session.start("late");
    let shutdown = async {
        // Let the start reserve its name and reach the engine, then shut down under it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        session.shutdown().await
    };
    let (started, stopped) = tokio::join!(start, shutdown);
    stopped.expect("shutdown");
    let err = started.expect_err("a start that outlived its session's shutdown");
    assert!(
        matches!(
            err,
            RunnerError::ShutDownWhileStarting {
                stop_failed: None,
                ..
            }
        ),
        "{err}"
    );
    let left = engine.list(&selector).await.expect("list");
    assert!(left.is_empty(), "escaped shutdown: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_reports_its_phases_in_order() {
    use berth_runner::lifecycle::{self, StartPhase, StartProgress};
    let (engine, template) = engine().await;
    let session = Session::new(engine, template);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let progress = StartProgress::new(move |phase: &StartPhase| {
        record.lock().expect("lock").push(phase.clone());
    });
    let id = lifecycle::start(
        &session,
        "watched",
        berth_engine_core::PullPolicy::IfNotPresent,
        &progress,
    )
    .await
    .expect("start");
    session.shutdown().await.expect("shutdown");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.last(), Some(&StartPhase::Ready { id }), "{seen:?}");
    let starting = seen
        .iter()
        .position(|p| matches!(p, StartPhase::Starting { .. }))
        .unwrap_or_else(|| panic!("no Starting: {seen:?}"));
    assert_eq!(starting, seen.len() - 2, "{seen:?}");
}
