//! Persistent volume claims: the workspace claims berth creates, lists and removes.

use berth_engine_core::{
    EnvironmentSpec, Error, LabelSelector, RemoveOutcome, Result, VolumeStatus, LABEL_MANAGED_BY,
    MANAGED_BY_VALUE,
};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::Api;

use crate::errors::{self};
use crate::job::label_selector;
use crate::{manifest, now_unix, KubernetesEngine};

pub(crate) async fn list(
    engine: &KubernetesEngine,
    selector: &LabelSelector,
) -> Result<Vec<VolumeStatus>> {
    let claims = engine
        .claims()
        .list(&ListParams::default().labels(&label_selector(selector)))
        .await
        .map_err(|e| errors::api(&engine.address, "list persistent volume claims", e))?;
    // In use, as the pvc-protection controller judges it: named by a pod that has not
    // terminated (a pod being deleted still mounts it).
    let pods = engine
        .pod_api()
        .list(&ListParams::default())
        .await
        .map_err(|e| errors::api(&engine.address, "list pods", e))?;
    let mounted: std::collections::HashSet<String> = pods
        .items
        .into_iter()
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .flat_map(|p| p.spec.and_then(|s| s.volumes).unwrap_or_default())
        .filter_map(|v| v.persistent_volume_claim.map(|c| c.claim_name))
        .collect();
    let mut out: Vec<VolumeStatus> = claims
        .items
        .into_iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .filter_map(|c| {
            let name = c.metadata.name?;
            let labels = c.metadata.labels.unwrap_or_default();
            let in_use = mounted.contains(&name);
            let mut status = VolumeStatus::new(name, labels, in_use);
            if status.created_unix_secs.is_none() {
                status.created_unix_secs = c
                    .metadata
                    .creation_timestamp
                    .and_then(|t| u64::try_from(t.0.as_second()).ok());
            }
            Some(status)
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub(crate) async fn remove(engine: &KubernetesEngine, name: &str) -> Result<RemoveOutcome> {
    // Only berth's own claims: a claim without berth's label is refused and left alone; the
    // delete is conditional on the uid that was checked, so a claim replaced in between is
    // not deleted either.
    let claim = match engine.claims().get_opt(name).await {
        Ok(Some(claim)) => claim,
        Ok(None) => return Ok(RemoveOutcome::AlreadyGone),
        Err(e) => {
            return Err(errors::api(
                &engine.address,
                "read persistent volume claim",
                e,
            ))
        }
    };
    let labels = claim.metadata.labels.unwrap_or_default();
    if labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY_VALUE) {
        return Err(Error::not_a_berth_volume(name));
    }
    let params = DeleteParams {
        preconditions: claim.metadata.uid.map(|uid| kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match engine.claims().delete(name, &params).await {
        Ok(_) => Ok(RemoveOutcome::Removed),
        Err(e) if errors::is_not_found(&e) => Ok(RemoveOutcome::AlreadyGone),
        Err(e) => Err(errors::api(
            &engine.address,
            "delete persistent volume claim",
            e,
        )),
    }
}

impl KubernetesEngine {
    pub(crate) fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    pub(crate) async fn ensure_claim(&self, name: &str, spec: &EnvironmentSpec) -> Result<()> {
        let claim = manifest::workspace_claim(name, &self.config, spec.object_labels(now_unix()));
        self.create_missing_claim(claim).await
    }

    /// Creates the cache claims of `kubernetes.caches` that have `create` set and are
    /// missing, labelled like a workspace claim berth creates (kept after the environment,
    /// found by `berth gc`).
    pub(crate) async fn ensure_cache_claims(&self, spec: &EnvironmentSpec) -> Result<()> {
        for cache in &self.config.pod.caches {
            if let Some(claim) =
                manifest::cache_claim(cache, &self.config, spec.object_labels(now_unix()))
            {
                self.create_missing_claim(claim).await?;
            }
        }
        Ok(())
    }

    async fn create_missing_claim(&self, claim: PersistentVolumeClaim) -> Result<()> {
        let name = claim.metadata.name.clone().unwrap_or_default();
        match self.claims().get_opt(&name).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => match self.claims().create(&PostParams::default(), &claim).await {
                Ok(_) => Ok(()),
                Err(e) if errors::is_conflict(&e) => Ok(()),
                Err(e) => Err(errors::api(
                    &self.address,
                    "create persistent volume claim",
                    e,
                )),
            },
            Err(e) => Err(errors::api(&self.address, "get persistent volume claim", e)),
        }
    }
}
