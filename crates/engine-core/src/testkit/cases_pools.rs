//! Conformance cases: warm pools. A claim hands one member to one session, atomically, with
//! the session's labels only and a lifetime counted from the claim.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use super::Fixture;
use crate::{
    EnvironmentId, EnvironmentState, ErrorKind, ExecRequest, LabelSelector, PoolSpec, SessionId,
    Workspace, LABEL_CREATED, LABEL_NAME, LABEL_POOL, LABEL_POOL_SPEC, LABEL_SESSION,
};

/// A pool of the fixture's image under a fresh name, members with an ephemeral workspace.
fn pool(fx: &Fixture, lifetime: Duration) -> PoolSpec {
    let name = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let spec = fx
        .spec()
        .with_workspace(Workspace::Ephemeral)
        .with_max_lifetime(lifetime);
    PoolSpec::new(name, spec)
        .with_max(20)
        .with_idle_ttl(Duration::from_secs(600))
}

/// Starts `members` members of `pool` (false when the backend has no pools), runs `body`,
/// and removes every member and claimed member of the pool whether `body` passed or not.
async fn with_pool<F, Fut>(fx: &Fixture, pool: &PoolSpec, members: usize, body: F) -> bool
where
    F: FnOnce(Vec<EnvironmentId>) -> Fut,
    Fut: Future<Output = ()>,
{
    let started =
        futures_util::future::join_all((0..members).map(|_| fx.engine.start_pool_member(pool)))
            .await;
    let mut ids = Vec::new();
    let mut failure = None;
    for s in started {
        match s {
            Ok(id) => ids.push(id),
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                assert!(e.to_string().len() > 20, "Unsupported needs a reason: {e}");
                failure.get_or_insert(None);
            }
            Err(e) => {
                failure = Some(Some(format!("start_pool_member failed: {e} ({e:?})")));
            }
        }
    }
    let outcome = match failure {
        None => AssertUnwindSafe(body(ids)).catch_unwind().await,
        Some(_) => Ok(()),
    };
    // Members and claimed members both keep the pool's name in their object's name.
    let marker = format!("pool-{}-", pool.name);
    if let Ok(all) = fx.engine.list(&LabelSelector::all()).await {
        for env in all.iter().filter(|e| e.id.as_str().contains(&marker)) {
            let _ = fx.engine.stop(&env.id).await;
        }
    }
    match failure {
        Some(Some(message)) => panic!("{message}"),
        Some(None) => return false,
        None => {}
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    true
}

/// A claimed member carries the claiming session's labels (session, name, the caller's,
/// creation time = the claim's) and none of the pool's, is listed under that session and no
/// longer as a member, and is clean: an empty workspace and nothing running but its
/// keepalive's tree.
pub async fn a_claimed_member_has_the_sessions_labels_only(fx: &Fixture) {
    let pool = &pool(fx, Duration::from_secs(600));
    with_pool(fx, pool, 1, |members| async move {
        let listed = fx
            .engine
            .list_pool_members(&pool.name)
            .await
            .expect("list members");
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].labels[LABEL_POOL_SPEC], pool.spec_hash());
        let session = SessionId::generate();
        let before = crate::backend::now_unix();
        let claim = pool
            .claim_for(session.clone(), "main")
            .with_label("team", "infra");
        let env = fx
            .engine
            .claim_pool_member(&claim)
            .await
            .expect("claim")
            .expect("a member to claim");
        assert!(
            members.iter().any(|m| env.as_str().starts_with(m.as_str())),
            "{env} is not one of {members:?}"
        );
        let mine = fx
            .engine
            .list(&LabelSelector::session(&session))
            .await
            .expect("list the session");
        assert_eq!(
            mine.len(),
            1,
            "the session lists its claimed member: {mine:?}"
        );
        let status = &mine[0];
        assert_eq!(status.id, env);
        assert_eq!(status.state, EnvironmentState::Running);
        assert_eq!(status.session.as_ref(), Some(&session));
        assert_eq!(status.labels[LABEL_SESSION], session.as_str());
        assert_eq!(status.labels[LABEL_NAME], "main");
        assert_eq!(status.labels["team"], "infra");
        assert!(
            !status.labels.contains_key(LABEL_POOL),
            "{:?}",
            status.labels
        );
        assert!(
            !status.labels.contains_key(LABEL_POOL_SPEC),
            "{:?}",
            status.labels
        );
        let created: u64 = status.labels[LABEL_CREATED].parse().expect("created");
        assert!(
            created >= before,
            "created {created} is before the claim ({before})"
        );
        let all = fx
            .engine
            .list(&LabelSelector::all())
            .await
            .expect("list all");
        let seen = all.iter().find(|e| e.id == env).expect("list all shows it");
        assert_eq!(seen.labels[LABEL_SESSION], session.as_str());
        assert!(
            fx.engine
                .list_pool_members(&pool.name)
                .await
                .expect("list members")
                .is_empty(),
            "a claimed member is no longer a member"
        );
        let out = fx
            .engine
            .exec(&env, ExecRequest::new(["ls", "-A", "/workspace"]))
            .await
            .expect("exec in the claimed member");
        assert!(out.status.success(), "{out:?}");
        assert!(out.stdout.is_empty(), "the workspace is not empty: {out:?}");
        fx.engine.stop(&env).await.expect("stop");
        assert!(fx
            .engine
            .list(&LabelSelector::session(&session))
            .await
            .expect("list")
            .is_empty());
    })
    .await;
}

/// A member idle for longer than the pool's lifetime is still there to claim, and once
/// claimed it lives its whole lifetime from the claim, then ends by itself.
pub async fn a_claimed_members_lifetime_counts_from_the_claim(fx: &Fixture) {
    let lifetime = Duration::from_secs(8);
    let pool = &pool(fx, lifetime);
    with_pool(fx, pool, 1, |_| async move {
        tokio::time::sleep(lifetime + Duration::from_secs(2)).await;
        let session = SessionId::generate();
        let claim = pool.claim_for(session.clone(), "main");
        let claimed_at = Instant::now();
        let env = fx
            .engine
            .claim_pool_member(&claim)
            .await
            .expect("claim")
            .expect("a member idle past the lifetime is still claimable");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let out = fx
            .engine
            .exec(&env, ExecRequest::new(["true"]))
            .await
            .expect("the claimed member runs 3 s after the claim");
        assert!(out.status.success(), "{out:?}");
        let selector = LabelSelector::session(&session);
        let deadline = claimed_at + Duration::from_secs(90);
        let ended = loop {
            let found = fx.engine.list(&selector).await.expect("list");
            let running = found.iter().any(|s| s.state == EnvironmentState::Running);
            if !running || Instant::now() > deadline {
                break !running;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let lived = claimed_at.elapsed();
        assert!(
            ended,
            "still running 90 s after a claim with an 8 s lifetime"
        );
        assert!(
            lived >= lifetime - Duration::from_secs(1),
            "ended {lived:?} after the claim, before its {lifetime:?} lifetime"
        );
        fx.engine.stop(&env).await.expect("stop after the lifetime");
    })
    .await;
}

/// 20 claimers at once on a pool of 3: exactly 3 get a member, each a different one, and 17
/// get `None`.
pub async fn no_member_is_claimed_twice_by_20_concurrent_claimers(fx: &Fixture) {
    let pool = &pool(fx, Duration::from_secs(600));
    with_pool(fx, pool, 3, |members| async move {
        let engine = Arc::clone(&fx.engine);
        let claims = (0..20).map(|_| {
            let engine = Arc::clone(&engine);
            let claim = pool.claim_for(SessionId::generate(), "main");
            tokio::spawn(async move { engine.claim_pool_member(&claim).await })
        });
        let results = futures_util::future::join_all(claims).await;
        let mut won = Vec::new();
        for r in results {
            if let Some(env) = r.expect("claimer task").expect("claim") {
                won.push(env);
            }
        }
        won.sort();
        let before = won.len();
        won.dedup();
        assert_eq!(before, won.len(), "a member was claimed twice: {won:?}");
        assert_eq!(
            won.len(),
            members.len(),
            "{} of 20 claimers got one of {} members: {won:?}",
            won.len(),
            members.len()
        );
        for env in &won {
            let out = fx
                .engine
                .exec(env, ExecRequest::new(["true"]))
                .await
                .expect("exec in a claimed member");
            assert!(out.status.success(), "{out:?}");
        }
    })
    .await;
}

/// A claim for another spec hash (the same pool name, another image or env) leaves the
/// member alone; the right hash then takes it.
pub async fn a_claim_for_another_spec_leaves_the_member(fx: &Fixture) {
    let pool = &pool(fx, Duration::from_secs(600));
    with_pool(fx, pool, 1, |_| async move {
        let other = PoolSpec::new(pool.name.clone(), pool.spec.clone().with_env("OTHER", "1"));
        assert_ne!(other.spec_hash(), pool.spec_hash());
        let none = fx
            .engine
            .claim_pool_member(&other.claim_for(SessionId::generate(), "main"))
            .await
            .expect("claim with another hash");
        assert_eq!(none, None, "a member of another spec was handed out");
        let none = fx
            .engine
            .claim_pool_member(
                &PoolSpec::new("nosuchpool", pool.spec.clone())
                    .claim_for(SessionId::generate(), "main"),
            )
            .await
            .expect("claim from an empty pool");
        assert_eq!(none, None);
        assert_eq!(
            fx.engine
                .list_pool_members(&pool.name)
                .await
                .expect("list members")
                .len(),
            1
        );
        let env = fx
            .engine
            .claim_pool_member(&pool.claim_for(SessionId::generate(), "main"))
            .await
            .expect("claim");
        assert!(env.is_some(), "the right hash takes the member");
    })
    .await;
}
