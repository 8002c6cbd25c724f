//! Warm pools on Docker: members are labelled containers; a claim is a rename.
//!
//! Docker's labels are immutable, so a claim cannot relabel a member. It renames it instead,
//! from its member name `M` to `M-claimed`, a name fixed by `M`: the daemon serialises renames
//! of one container under its lock, and a second claimer that raced the first either finds no
//! `M` (404) or finds the container already called `M-claimed` (400, "same name as its
//! current name"), so exactly one claimer succeeds. (A claimed name chosen by the claimer
//! would not do: the daemon reads the current name after taking the lock, so a second rename
//! to another name would succeed and take the member from the first claimer.)
//!
//! The winner then writes the claim record, `/.berth-claim` (the session's labels as JSON),
//! into the container through the archive API (no process runs), and `list` reports a
//! claimed member with those labels instead of its own: that is how `ls`, `gc` and `down`
//! see it as the session's. Finally a detached watchdog (`sleep`, then SIGTERM to the
//! container's init) makes its lifetime count from the claim; the member's own keepalive
//! only bounds it (`idle_ttl + max_lifetime`).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use berth_engine_core::backend;
use berth_engine_core::{
    EnvironmentId, Error, PoolClaim, PoolSpec, Result, LABEL_MANAGED_BY, LABEL_POOL,
    LABEL_POOL_MEMBER, LABEL_POOL_SPEC, MANAGED_BY_VALUE,
};
use bollard::exec::{CreateExecOptions, StartExecOptions};
use bollard::query_parameters::{
    DownloadFromContainerOptions, ListContainersOptions, RenameContainerOptions,
    UploadToContainerOptions,
};
use futures_util::StreamExt;

use crate::errors::{self, BACKEND};
use crate::DockerEngine;

/// The file in a claimed member holding the claiming session's labels.
pub(crate) const CLAIM_RECORD: &str = ".berth-claim";
/// What a member's name becomes once claimed.
const CLAIMED_SUFFIX: &str = "-claimed";

/// Claim records already read, by container id: a record is written once, so `list` reads
/// each claimed member's record once per engine.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClaimCache(
    std::sync::Arc<std::sync::Mutex<HashMap<String, BTreeMap<String, String>>>>,
);

impl ClaimCache {
    fn get(&self, id: &str) -> Option<BTreeMap<String, String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    fn put(&self, id: &str, labels: &BTreeMap<String, String>) {
        let mut cache = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded: a long-lived process sees many claims come and go.
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(id.to_owned(), labels.clone());
    }
}

/// The name a claim renames member `member` to.
pub(crate) fn claimed_name(member: &str) -> String {
    format!("{member}{CLAIMED_SUFFIX}")
}

/// Whether a container called `name`, carrying `labels`, is a claimed pool member: it was
/// created as a member and no longer has its member name.
pub(crate) fn is_claimed(name: &str, labels: &BTreeMap<String, String>) -> bool {
    labels
        .get(LABEL_POOL_MEMBER)
        .is_some_and(|member| member != name)
}

/// Why a pool on Podman is refused: the claim is a rename that only Docker serialises.
fn podman_unsupported(operation: &'static str) -> Error {
    Error::Unsupported {
        backend: crate::errors::BACKEND,
        operation,
        reason: "a claim is a rename of the member that Docker serialises, so exactly one of two \
                 claimers wins; Podman's rename does not (two concurrent claimers both \
                 succeeded in the conformance suite), so a pool there could hand one member \
                 to two sessions"
            .to_owned(),
    }
}

pub(crate) async fn start_member(engine: &DockerEngine, pool: &PoolSpec) -> Result<EnvironmentId> {
    if engine.podman.is_some() {
        return Err(podman_unsupported("start pool member"));
    }
    pool.validate()?;
    let spec = pool.member_spec();
    let name = backend::object_name(&spec, usize::MAX);
    let mut labels: HashMap<String, String> = spec
        .object_labels(backend::now_unix())
        .into_iter()
        .collect();
    labels.insert(LABEL_POOL_MEMBER.to_owned(), name.clone());
    let body = crate::body::container_body(
        &spec,
        &labels,
        &engine.address,
        &engine.docker.client_version(),
    )?;
    let started =
        crate::container::create_and_start_named(engine, &spec, &labels, body, name, None, |msg| {
            crate::container::keepalive_missing(&spec, msg)
        })
        .await?;
    // A member is handed out by a claim, with no start in between: its rules go in now.
    crate::container::enforce_network(engine, &spec, &started).await?;
    tracing::debug!(pool = %pool.name, member = %started, "started pool member");
    EnvironmentId::new(started)
}

pub(crate) async fn claim(
    engine: &DockerEngine,
    claim: &PoolClaim,
) -> Result<Option<EnvironmentId>> {
    if engine.podman.is_some() {
        return Err(podman_unsupported("claim pool member"));
    }
    claim.validate()?;
    let filters = HashMap::from([
        (
            "label".to_owned(),
            vec![
                format!("{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"),
                format!("{LABEL_POOL}={}", claim.pool),
                format!("{LABEL_POOL_SPEC}={}", claim.spec_hash),
            ],
        ),
        ("status".to_owned(), vec!["running".to_owned()]),
    ]);
    let listed = crate::retry::idempotent("list pool members", || {
        crate::lenient::list_containers(
            &engine.docker,
            ListContainersOptions {
                all: false,
                filters: Some(filters.clone()),
                ..Default::default()
            },
        )
    })
    .await
    .map_err(engine.other("list pool members"))?;
    let mut members: Vec<(i64, String)> = listed
        .into_iter()
        .filter_map(|c| {
            let name = c.names?.first()?.trim_start_matches('/').to_owned();
            let labels: BTreeMap<String, String> = c.labels?.into_iter().collect();
            (!is_claimed(&name, &labels)).then_some((c.created.unwrap_or(0), name))
        })
        .collect();
    if members.is_empty() {
        return Ok(None);
    }
    // Oldest first, from a random place: concurrent claimers spread over the members
    // instead of all renaming the same one.
    members.sort();
    let start = usize::from(uuid::Uuid::new_v4().as_bytes()[0]) % members.len();
    members.rotate_left(start);
    for (_, member) in members {
        let claimed = claimed_name(&member);
        let renamed = engine
            .docker
            .rename_container(
                &member,
                RenameContainerOptions {
                    name: claimed.clone(),
                },
            )
            .await;
        match renamed {
            Ok(()) => {}
            // Taken by another claimer (gone by its member name, or already renamed).
            Err(e) if matches!(errors::status(&e), Some((404 | 400 | 409, _))) => continue,
            Err(e) => return Err(errors::other(&engine.address, "rename pool member", e)),
        }
        let env = EnvironmentId::new(claimed.clone())?;
        if let Err(err) = hand_over(engine, &claimed, claim).await {
            // Half claimed: nobody else can take it, so it is removed rather than leaked.
            return match engine.remove_container(&claimed).await {
                Ok(_) => Err(err),
                Err(cleanup) => Err(err.with_cleanup_failure(cleanup)),
            };
        }
        tracing::debug!(pool = %claim.pool, %env, session = %claim.session, "claimed pool member");
        return Ok(Some(env));
    }
    Ok(None)
}

/// Makes the renamed member `name` the session's: the claim record, then the lifetime
/// watchdog.
async fn hand_over(engine: &DockerEngine, name: &str, claim: &PoolClaim) -> Result<()> {
    let labels = claim.object_labels(backend::now_unix());
    let record = serde_json::to_vec(&labels)
        .map_err(|e| Error::backend(BACKEND, "write the claim record", e))?;
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o444);
    header.set_size(record.len() as u64);
    tar.append_data(&mut header, CLAIM_RECORD, record.as_slice())
        .and_then(|()| tar.finish())
        .map_err(|e| Error::backend(BACKEND, "write the claim record", e))?;
    let archive = tar
        .into_inner()
        .map_err(|e| Error::backend(BACKEND, "write the claim record", e))?;
    let record = async {
        engine
            .docker
            .upload_to_container(
                name,
                Some(UploadToContainerOptions {
                    path: "/".to_owned(),
                    ..Default::default()
                }),
                bollard::body_full(archive.into()),
            )
            .await
            .map_err(|e| errors::env_call(&engine.address, name, "write the claim record", e))
    };
    // Both at once: they touch different things, and the claim's latency is their sum
    // otherwise.
    tokio::try_join!(record, watchdog(engine, name, claim))?;
    Ok(())
}

/// Starts the detached watchdog that ends the claimed member `name` `claim.lifetime` from
/// now.
async fn watchdog(engine: &DockerEngine, name: &str, claim: &PoolClaim) -> Result<()> {
    // The keepalive runs under Docker's init (pid 1), which passes SIGTERM on to it: the
    // container ends `lifetime` after the claim.
    let secs = claim.lifetime.as_secs().max(1).to_string();
    let exec = engine
        .docker
        .create_exec(
            name,
            CreateExecOptions::<String> {
                cmd: Some(vec![
                    "sh".into(),
                    "-c".into(),
                    "sleep \"$1\"; kill -TERM 1".into(),
                    "berth-lifetime".into(),
                    secs,
                ]),
                attach_stdout: Some(false),
                attach_stderr: Some(false),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| errors::env_call(&engine.address, name, "start the lifetime watchdog", e))?;
    engine
        .docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                detach: true,
                ..Default::default()
            }),
        )
        .await
        .map_err(|e| {
            let err = errors::env_call(&engine.address, name, "start the lifetime watchdog", e);
            if err.to_string().contains("executable file not found") {
                Error::invalid_spec(
                    "image",
                    "a pool member's image needs `sh`, `sleep` and `kill` for the lifetime counted from the claim",
                )
            } else {
                err
            }
        })?;
    Ok(())
}

impl DockerEngine {
    /// The labels recorded in the claimed member `name`; `None` while the record is not
    /// written yet (the claimer is between its rename and its record, or died there).
    /// [`DockerEngine::claim_record`] through the cache, for the container `id` called `name`.
    pub(crate) async fn cached_claim_record(
        &self,
        id: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>> {
        if let Some(labels) = self.claims.get(id) {
            return Ok(Some(labels));
        }
        let record = self.claim_record(name).await?;
        if let Some(labels) = &record {
            self.claims.put(id, labels);
        }
        Ok(record)
    }

    pub(crate) async fn claim_record(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>> {
        let mut stream = self.docker.download_from_container(
            name,
            Some(DownloadFromContainerOptions {
                path: format!("/{CLAIM_RECORD}"),
            }),
        );
        let mut tar_bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => tar_bytes.extend_from_slice(&bytes),
                Err(e) if matches!(errors::status(&e), Some((404, _))) => return Ok(None),
                Err(e) => {
                    return Err(errors::env_call(
                        &self.address,
                        name,
                        "read the claim record",
                        e,
                    ))
                }
            }
        }
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let bad = |e: String| Error::backend(BACKEND, "read the claim record", e);
        let mut entries = archive.entries().map_err(|e| bad(e.to_string()))?;
        let Some(entry) = entries.next() else {
            return Ok(None);
        };
        let mut text = Vec::new();
        entry
            .and_then(|mut e| e.read_to_end(&mut text))
            .map_err(|e| bad(e.to_string()))?;
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| bad(format!("{CLAIM_RECORD} in {name} is not a label map: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_claimed_once_its_name_changed() {
        let labels = BTreeMap::from([(
            LABEL_POOL_MEMBER.to_owned(),
            "berth-pool-p-member-abcde".to_owned(),
        )]);
        assert!(!is_claimed("berth-pool-p-member-abcde", &labels));
        assert!(is_claimed(
            &claimed_name("berth-pool-p-member-abcde"),
            &labels
        ));
        assert!(!is_claimed("anything", &BTreeMap::new()));
    }
}
