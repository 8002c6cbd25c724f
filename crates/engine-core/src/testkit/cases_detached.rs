//! Conformance cases: detachment is recorded on the environment itself, not in one
//! machine's state, so any host's `gc` sees it.

use super::Fixture;
use crate::{
    EnvironmentId, ErrorKind, LabelSelector, DETACHED_REQUESTED, DETACHED_YES, LABEL_DETACHED,
};

async fn detached_label(fx: &Fixture, env: &EnvironmentId) -> Option<String> {
    let listed = fx
        .engine
        .list(&LabelSelector::all())
        .await
        .unwrap_or_else(|e| panic!("list failed: {e}"));
    let status = listed
        .into_iter()
        .find(|e| &e.id == env)
        .unwrap_or_else(|| panic!("list does not show {env}"));
    status.labels.get(LABEL_DETACHED).cloned()
}

/// An environment started with `berth.dev/detached=requested` lists with that value until
/// `mark_detached`, then with `true` (so a `berth up` that died before marking stays
/// collectable); marking a missing environment is NotFound.
pub async fn mark_detached_is_recorded_on_the_environment(fx: &Fixture) {
    let mut spec = fx.spec();
    spec.labels
        .insert(LABEL_DETACHED.into(), DETACHED_REQUESTED.into());
    fx.with_env(&spec, |env| async move {
        assert_eq!(
            detached_label(fx, &env).await.as_deref(),
            Some(DETACHED_REQUESTED),
            "before mark_detached"
        );
        fx.engine
            .mark_detached(&env)
            .await
            .unwrap_or_else(|e| panic!("mark_detached failed: {e} ({e:?})"));
        assert_eq!(
            detached_label(fx, &env).await.as_deref(),
            Some(DETACHED_YES),
            "after mark_detached"
        );
    })
    .await;
    let missing = EnvironmentId::new("berth-no-such-environment-0").expect("id");
    let err = fx
        .engine
        .mark_detached(&missing)
        .await
        .expect_err("marking a missing environment");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}
