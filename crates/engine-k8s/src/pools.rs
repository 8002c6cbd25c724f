//! Warm pools on Kubernetes: members are labelled Jobs; a claim is a label patch with the
//! Job's resourceVersion as precondition.
//!
//! The patch replaces the pool's labels by the session's and sets `activeDeadlineSeconds`
//! to the Job's age plus the claim's lifetime, so the lifetime counts from the claim (the
//! member's keepalive sleeps `idle_ttl + max_lifetime`, which only bounds it). Two claimers
//! that read the same resourceVersion race one patch: the API server applies the first and
//! answers 409 Conflict to the second, which tries the next member. The pod's labels follow
//! (they carry the session too) once the claim is won.

use berth_engine_core::{
    backend::now_unix, EnvironmentId, PoolClaim, PoolSpec, Result, LABEL_MANAGED_BY, LABEL_POOL,
    LABEL_POOL_SPEC, MANAGED_BY_VALUE,
};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{ListParams, Patch, PatchParams};

use crate::errors;
use crate::KubernetesEngine;

pub(crate) async fn start_member(
    engine: &KubernetesEngine,
    pool: &PoolSpec,
) -> Result<EnvironmentId> {
    pool.validate()?;
    let env = crate::job::start(engine, &pool.member_spec()).await?;
    tracing::debug!(pool = %pool.name, member = %env, "started pool member");
    Ok(env)
}

/// Whether `job` is running (a pod active or ready) and not finished or going.
fn claimable(job: &Job) -> bool {
    if job.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let status = job.status.clone().unwrap_or_default();
    let finished = status.succeeded.unwrap_or(0) > 0
        || status.failed.unwrap_or(0) > 0
        || status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.status == "True");
    !finished && (status.ready.unwrap_or(0) > 0 || status.active.unwrap_or(0) > 0)
}

pub(crate) async fn claim(
    engine: &KubernetesEngine,
    claim: &PoolClaim,
) -> Result<Option<EnvironmentId>> {
    claim.validate()?;
    let selector = format!(
        "{LABEL_MANAGED_BY}={MANAGED_BY_VALUE},{LABEL_POOL}={},{LABEL_POOL_SPEC}={}",
        claim.pool, claim.spec_hash
    );
    let jobs = engine
        .jobs()
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| errors::api(&engine.address, "list pool members", e))?;
    let mut members: Vec<Job> = jobs.items.into_iter().filter(claimable).collect();
    if members.is_empty() {
        return Ok(None);
    }
    members.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
    // From a random place: concurrent claimers spread over the members.
    let start = usize::from(uuid::Uuid::new_v4().as_bytes()[0]) % members.len();
    members.rotate_left(start);
    for job in members {
        let (Some(name), Some(rv)) = (
            job.metadata.name.clone(),
            job.metadata.resource_version.clone(),
        ) else {
            continue;
        };
        let now = now_unix();
        let started = job
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .or(job.metadata.creation_timestamp.as_ref())
            .and_then(|t| u64::try_from(t.0.as_second()).ok())
            .unwrap_or(now);
        let deadline = now.saturating_sub(started) + claim.lifetime.as_secs().max(1);
        let labels = claim_labels(claim, now);
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": rv, "labels": labels},
            "spec": {"activeDeadlineSeconds": deadline},
        });
        match engine
            .jobs()
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if errors::is_conflict(&e) || errors::is_not_found(&e) => continue,
            Err(e) => return Err(errors::api(&engine.address, "claim pool member", e)),
        }
        let pod_patch = serde_json::json!({"metadata": {"labels": labels}});
        let pods = engine
            .pod_api()
            .list(&ListParams::default().labels(&format!(
                "job-name={name},{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"
            )))
            .await
            .map_err(|e| errors::api(&engine.address, "list the claimed member's pod", e))?;
        for pod in pods.items {
            if let Some(pod_name) = pod.metadata.name {
                engine
                    .pod_api()
                    .patch(
                        &pod_name,
                        &PatchParams::default(),
                        &Patch::Merge(&pod_patch),
                    )
                    .await
                    .map_err(|e| errors::api(&engine.address, "label the claimed pod", e))?;
            }
        }
        let env = EnvironmentId::new(name)?;
        tracing::debug!(pool = %claim.pool, %env, session = %claim.session, "claimed pool member");
        return Ok(Some(env));
    }
    Ok(None)
}

/// The merge patch of a claimed member's labels: the claim's, and the pool's removed.
fn claim_labels(claim: &PoolClaim, now: u64) -> serde_json::Map<String, serde_json::Value> {
    let mut labels: serde_json::Map<String, serde_json::Value> = claim
        .object_labels(now)
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    labels.insert(LABEL_POOL.to_owned(), serde_json::Value::Null);
    labels.insert(LABEL_POOL_SPEC.to_owned(), serde_json::Value::Null);
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_engine_core::SessionId;

    #[test]
    fn a_claim_patch_drops_the_pool_labels_and_sets_the_session() {
        let claim =
            PoolClaim::new("p", "h", SessionId::new("s1").unwrap(), "main").with_label("team", "x");
        let labels = claim_labels(&claim, 5);
        assert_eq!(labels[LABEL_POOL], serde_json::Value::Null);
        assert_eq!(labels[berth_engine_core::LABEL_SESSION], "s1");
        assert_eq!(labels["team"], "x");
        assert_eq!(labels[berth_engine_core::LABEL_CREATED], "5");
    }
}
