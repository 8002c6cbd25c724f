//! `Session` hands out stateful shells, one per agent, and they end with their environment.

use std::sync::Arc;

use berth_engine_core::testkit::ensure_test_image;
use berth_engine_core::{
    ContainerEngine, DetachedCommand, EnvironmentSpec, ErrorKind, SessionId, ShellCommand,
    ShellOptions,
};
use berth_engine_docker::{DockerConfig, DockerEngine};
use berth_runner::session::Session;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_agent_gets_its_own_shell_and_shells_end_with_their_environment() {
    let engine = DockerEngine::connect(&DockerConfig::default())
        .await
        .unwrap_or_else(|e| panic!("these tests need a running Docker daemon: {e}"));
    let image = ensure_test_image(&engine).await.expect("test image");
    let engine: Arc<dyn ContainerEngine> = Arc::new(engine);
    let session = Session::new(engine, EnvironmentSpec::new(image, SessionId::generate()));
    let check = async {
        session
            .start_many(&["coder", "tester"])
            .await
            .expect("start");
        let mut coder = session
            .shell("coder", ShellOptions::default())
            .await
            .expect("shell");
        let mut tester = session
            .shell("tester", ShellOptions::default())
            .await
            .expect("shell");
        coder
            .run(ShellCommand::new("cd /tmp; touch mine"))
            .await
            .expect("run");
        let out = tester
            .run(ShellCommand::new("pwd; ls /tmp"))
            .await
            .expect("run");
        assert_eq!(
            out.stdout_lossy(),
            "/\n",
            "the tester's shell and environment are its own"
        );
        let out = coder.run(ShellCommand::new("pwd; ls")).await.expect("run");
        assert_eq!(out.stdout_lossy(), "/tmp\nmine\n");
        let id = session
            .detached("coder")
            .expect("detached")
            .start(DetachedCommand::new("echo detached"))
            .await
            .expect("start detached");
        assert_eq!(id.as_str().len(), 12);
        let unknown = session
            .shell("nobody", ShellOptions::default())
            .await
            .expect_err("unknown");
        assert!(
            matches!(unknown, berth_runner::RunnerError::UnknownName { ref name, .. } if name == "nobody"),
            "{unknown:?}"
        );

        session.stop("coder").await.expect("stop");
        let err = coder
            .run(ShellCommand::new("true"))
            .await
            .expect_err("environment stopped");
        assert!(
            matches!(
                err.kind(),
                ErrorKind::ShellClosed | ErrorKind::EnvironmentGone
            ),
            "{err}"
        );
    };
    let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(check)).await;
    session.shutdown().await.expect("shutdown");
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
}
