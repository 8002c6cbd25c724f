//! The library's `Pool` against the real Docker daemon: the background refiller keeps
//! `min_ready` members and tops the pool up after a claim; concurrent fills never leave more
//! than `max` members; a `Session` with a pool claims its environments.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_engine_core::testkit::ensure_test_image;
use berth_engine_core::{
    ContainerEngine, EnvironmentSpec, ExecRequest, LabelSelector, PoolSpec, SessionId, Workspace,
};
use berth_engine_docker::{DockerConfig, DockerEngine};
use berth_runner::pool::{session_spec, Pool};
use berth_runner::session::Session;

/// A fresh pool of the test image on Docker, drained and its claimed environments removed
/// when dropped.
struct Fixture {
    engine: Arc<dyn ContainerEngine>,
    pool: Pool,
}

impl Fixture {
    async fn new(min_ready: usize, max: usize) -> Self {
        let engine = DockerEngine::connect(&DockerConfig::default())
            .await
            .unwrap_or_else(|e| panic!("these tests need a running Docker daemon: {e}"));
        let image = ensure_test_image(&engine).await.expect("test image");
        let engine: Arc<dyn ContainerEngine> = Arc::new(engine);
        let name = format!("r{}", &SessionId::generate().as_str()[..10]);
        let spec = EnvironmentSpec::new(image, SessionId::generate())
            .with_workspace(Workspace::Ephemeral)
            .with_max_lifetime(Duration::from_secs(600));
        let pool = PoolSpec::new(name, spec)
            .with_min_ready(min_ready)
            .with_max(max);
        Self {
            pool: Pool::new(engine.clone(), pool, 2),
            engine,
        }
    }

    async fn ready(&self) -> usize {
        self.pool.status().await.expect("status").ready
    }

    async fn wait_ready(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ready().await != n {
            assert!(Instant::now() < deadline, "the pool never got {n} ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let engine = self.engine.clone();
        let marker = format!("pool-{}-", self.pool.spec().name);
        // Blocking cleanup on a thread of its own: Drop cannot await.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                for env in engine.list(&LabelSelector::all()).await.unwrap_or_default() {
                    if env.id.as_str().contains(&marker) {
                        let _ = engine.stop(&env.id).await;
                    }
                }
            });
        })
        .join()
        .expect("cleanup thread");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_refiller_keeps_min_ready_and_tops_up_after_a_claim() {
    let fx = Fixture::new(2, 3).await;
    let refiller = fx.pool.refill_in_background(Duration::from_millis(300));
    fx.wait_ready(2).await;
    let claimed = fx
        .pool
        .claim(SessionId::generate(), "main", Default::default())
        .await
        .expect("claim");
    assert!(claimed.warm);
    fx.wait_ready(2).await;
    drop(refiller);
    // Stopped refilling: a drained pool stays empty.
    let drained = fx.pool.drain().await.expect("drain");
    assert_eq!(drained.len(), 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fx.ready().await, 0);
    fx.engine.stop(&claimed.id).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_never_go_above_max_and_a_session_claims_from_the_pool() {
    let fx = Fixture::new(1, 2).await;
    let report = fx.pool.fill(Some(5)).await.expect("fill");
    assert_eq!(report.started.len(), 2, "{report:?}");
    let again = fx.pool.fill(Some(5)).await.expect("fill again");
    assert!(again.started.is_empty(), "{again:?}");
    assert_eq!(fx.ready().await, 2);

    let session_id = SessionId::generate();
    let template = session_spec(fx.pool.spec(), Some(session_id.clone()), "main").expect("spec");
    let session = Session::new(fx.engine.clone(), template).with_pool(fx.pool.clone());
    let env = session.start("main").await.expect("start from the pool");
    assert!(
        env.as_str()
            .contains(&format!("pool-{}-", fx.pool.spec().name)),
        "{env} is not a member"
    );
    assert_eq!(fx.ready().await, 1);
    let listed = fx
        .engine
        .list(&LabelSelector::session(&session_id))
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    // The session's owner labels went on the claimed member.
    assert!(
        listed[0]
            .labels
            .contains_key(berth_runner::owner::LABEL_OWNER_PID),
        "{:?}",
        listed[0].labels
    );
    let out = session
        .exec("main", ExecRequest::new(["echo", "hi"]))
        .await
        .expect("exec");
    assert_eq!(out.stdout_lossy(), "hi\n");
    session.shutdown().await.expect("shutdown");
    assert!(fx
        .engine
        .list(&LabelSelector::session(&session_id))
        .await
        .expect("list")
        .is_empty());
}
