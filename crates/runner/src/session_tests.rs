//! [`Session`] against an engine in memory: name reservation, starts racing a shutdown, and
//! every stop failure reported; no daemon.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex as StdMutex;

use async_trait::async_trait;
use berth_engine_core::{
    BackendKind, BuildSpec, EngineInfo, EnvironmentStatus, Error, ExecProcess, ImageInfo, ImageRef,
    LabelSelector, Progress, PullPolicy, RemoveOutcome, Result as EngineResult, TarStream,
    VolumeStatus,
};
use tokio::sync::Notify;

use super::*;

/// Starts when `gate` is opened (if set); stops fail for ids in `failing`; remembers what
/// runs.
#[derive(Default)]
struct Memory {
    gate: Option<Notify>,
    started: AtomicUsize,
    running: StdMutex<Vec<EnvironmentId>>,
    failing: Vec<&'static str>,
}

fn unsupported(operation: &'static str) -> Error {
    Error::Unsupported {
        backend: BackendKind::Docker,
        operation,
        reason: "not in the in-memory test engine".into(),
    }
}

#[async_trait]
impl ContainerEngine for Memory {
    fn backend(&self) -> BackendKind {
        BackendKind::Docker
    }
    async fn init(&self) -> EngineResult<EngineInfo> {
        Err(unsupported("init"))
    }
    async fn ensure_image(
        &self,
        _: &ImageRef,
        _: PullPolicy,
        _: &Progress,
    ) -> EngineResult<ImageInfo> {
        Err(unsupported("ensure_image"))
    }
    async fn build_image(&self, _: BuildSpec, _: &Progress) -> EngineResult<ImageInfo> {
        Err(unsupported("build_image"))
    }
    async fn start(&self, spec: &EnvironmentSpec) -> EngineResult<EnvironmentId> {
        if let Some(gate) = &self.gate {
            gate.notified().await;
        }
        let n = self.started.fetch_add(1, Ordering::SeqCst);
        let id = EnvironmentId::new(format!("{}-{n}", spec.name))?;
        self.running.lock().expect("lock").push(id.clone());
        Ok(id)
    }
    /// Every command exits 0 at once, except `fail`, which cannot be started.
    async fn exec_streaming(
        &self,
        _: &EnvironmentId,
        req: ExecRequest,
    ) -> EngineResult<ExecProcess> {
        if req.argv[0] == "fail" {
            return Err(unsupported("exec_streaming"));
        }
        Ok(berth_engine_core::backend::spawn(None, |_| async {
            Ok(berth_engine_core::ExitStatus(0))
        }))
    }
    async fn copy_in(&self, _: &EnvironmentId, _: &str, _: TarStream) -> EngineResult<()> {
        Err(unsupported("copy_in"))
    }
    async fn copy_out(&self, _: &EnvironmentId, _: &str) -> EngineResult<TarStream> {
        Err(unsupported("copy_out"))
    }
    async fn stop(&self, env: &EnvironmentId) -> EngineResult<StopOutcome> {
        if self.failing.iter().any(|f| env.as_str().starts_with(f)) {
            return Err(Error::invalid_spec("env", format!("{env} refuses to stop")));
        }
        self.running.lock().expect("lock").retain(|e| e != env);
        Ok(StopOutcome::Stopped)
    }
    async fn list(&self, _: &LabelSelector) -> EngineResult<Vec<EnvironmentStatus>> {
        Err(unsupported("list"))
    }
    async fn list_volumes(&self, _: &LabelSelector) -> EngineResult<Vec<VolumeStatus>> {
        Err(unsupported("list_volumes"))
    }
    async fn remove_volume(&self, _: &str) -> EngineResult<RemoveOutcome> {
        Err(unsupported("remove_volume"))
    }
}

fn session(engine: Memory) -> (Arc<Memory>, Session) {
    let engine = Arc::new(engine);
    let template = EnvironmentSpec::new(
        ImageRef::new("busybox:1").expect("image"),
        SessionId::new("s1").expect("session"),
    );
    (engine.clone(), Session::new(engine, template))
}

#[tokio::test]
async fn a_name_is_reserved_before_the_start_awaits() {
    let (engine, session) = session(Memory {
        gate: Some(Notify::new()),
        ..Memory::default()
    });
    let first = session.start("twin");
    let second = async {
        // The first start is parked at the engine: its name is already taken.
        tokio::task::yield_now().await;
        // Without the reservation it would park at the engine too: bounded, not a hang.
        let refused =
            tokio::time::timeout(std::time::Duration::from_secs(2), session.start("twin")).await;
        engine.gate.as_ref().expect("gate").notify_one();
        refused
    };
    let (first, second) = tokio::join!(first, second);
    first.expect("the first start");
    let refused = second
        .expect("refused at once")
        .expect_err("the second start of the name");
    assert!(
        matches!(refused, RunnerError::NameInUse { .. }),
        "{refused}"
    );
    assert_eq!(engine.started.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_start_that_ends_after_shutdown_stops_its_environment() {
    let (engine, session) = session(Memory {
        gate: Some(Notify::new()),
        ..Memory::default()
    });
    let start = session.start("late");
    let shutdown = async {
        tokio::task::yield_now().await;
        let stopped = session.shutdown().await;
        engine.gate.as_ref().expect("gate").notify_one();
        stopped
    };
    let (started, stopped) = tokio::join!(start, shutdown);
    stopped.expect("nothing was running at shutdown");
    let err = started.expect_err("the session is gone");
    assert!(
        matches!(err, RunnerError::ShutDownWhileStarting { .. }),
        "{err}"
    );
    assert!(engine.running.lock().expect("lock").is_empty());
    // A failed start frees its name.
    assert!(session.get("late").is_none());
}

#[tokio::test]
async fn shutdown_reports_every_failure_and_attempts_every_stop() {
    let (engine, session) = session(Memory {
        failing: vec!["a-", "c-"],
        ..Memory::default()
    });
    session.start_many(&["a", "b", "c"]).await.expect("start");
    let err = session.shutdown().await.expect_err("two stops fail");
    let RunnerError::Shutdown { failures, .. } = &err else {
        panic!("{err}");
    };
    let failed: Vec<&str> = failures.iter().map(|(env, _)| env.as_str()).collect();
    assert_eq!(failed.len(), 2, "{err}");
    assert!(
        failed
            .iter()
            .all(|f| f.starts_with("a-") || f.starts_with("c-")),
        "{err}"
    );
    let left = engine.running.lock().expect("lock").clone();
    assert_eq!(left.len(), 2, "b was stopped: {left:?}");
}

/// The general one-shot path (start + probe + exec) binds its environment to the session
/// like a start, so shutdown stops it.
#[tokio::test]
async fn run_once_binds_its_environment_so_shutdown_stops_it() {
    let (engine, session) = session(Memory::default());
    let (id, process) = session
        .run_once("main", ExecRequest::new(["true"]))
        .await
        .expect("run_once");
    assert_eq!(process.wait().await.expect("wait").code(), 0);
    assert_eq!(session.get("main"), Some(id.clone()));
    assert_eq!(*engine.running.lock().expect("lock"), vec![id]);
    session.shutdown().await.expect("shutdown");
    assert!(engine.running.lock().expect("lock").is_empty());
}

/// A one-shot run whose command cannot start stops what it started and frees its name.
#[tokio::test]
async fn a_run_once_that_fails_after_its_start_leaves_nothing() {
    let (engine, session) = session(Memory::default());
    let err = session
        .run_once("main", ExecRequest::new(["fail"]))
        .await
        .expect_err("the command cannot start");
    assert!(err.to_string().contains("exec_streaming"), "{err}");
    assert!(engine.running.lock().expect("lock").is_empty());
    assert_eq!(session.get("main"), None);
    let (_, process) = session
        .run_once("main", ExecRequest::new(["true"]))
        .await
        .expect("the name is free again");
    assert!(process.wait().await.expect("wait").success());
    session.shutdown().await.expect("shutdown");
}
