//! Garbage collection: find what berth left behind (a crashed process's environments, expired
//! ones, old ones) by label, and remove it.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_engine_core::backend::now_unix as now;
use berth_engine_core::{
    ContainerEngine, EnvironmentId, EnvironmentState, EnvironmentStatus, LabelSelector, RunState,
    SessionId, VolumeStatus, DETACHED_REQUESTED, DETACHED_YES, LABEL_CLAIM_PENDING, LABEL_DETACHED,
    LABEL_POOL, LABEL_POOL_SPEC, LABEL_RUN,
};
use serde::Serialize;

use crate::error::{Result, RunnerError};
use crate::owner::Owner;
use crate::state::StateDir;

/// What `gc` looks at and whether it removes anything.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct GcOptions {
    /// Also remove anything older than this, whoever owns it.
    pub older_than: Option<Duration>,
    /// Report only.
    pub dry_run: bool,
    /// Only this session's environments (and volumes).
    pub session: Option<SessionId>,
    /// Also remove the workspace volumes berth created that no environment uses (only those
    /// older than `older_than`, when it is set). Off by default: workspaces outlive sessions
    /// on purpose.
    pub volumes: bool,
    /// The configured pools by name; with it, gc removes pool members whose pool is not
    /// configured, whose spec changed, or that sat idle past the pool's `idle_ttl`, and
    /// keeps the others. Without it (`None`), unclaimed members are kept (unless older than
    /// `older_than`).
    pub pools: Option<BTreeMap<String, PoolRule>>,
}

/// What gc knows of a configured pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRule {
    /// The spec hash of its members (`None`: unknown, e.g. its image comes from the
    /// command line; members of any spec are kept).
    pub spec_hash: Option<String>,
    /// How long a member may sit unclaimed.
    pub idle_ttl: Duration,
}

/// Why the unclaimed pool member `env` is garbage under `pools`, if it is.
fn pool_member_reason(
    env: &EnvironmentStatus,
    pools: &BTreeMap<String, PoolRule>,
    age: Option<u64>,
) -> Option<String> {
    let pool = env.labels.get(LABEL_POOL)?;
    let Some(rule) = pools.get(pool) else {
        return Some(format!("a member of pool {pool}, which is not configured"));
    };
    if rule
        .spec_hash
        .as_ref()
        .is_some_and(|hash| env.labels.get(LABEL_POOL_SPEC) != Some(hash))
    {
        return Some(format!(
            "a member of pool {pool} started from an older spec"
        ));
    }
    match age {
        Some(age) if age > rule.idle_ttl.as_secs() => Some(format!(
            "a member of pool {pool} idle past its idle_ttl ({}s, idle {age}s)",
            rule.idle_ttl.as_secs()
        )),
        _ => None,
    }
}

/// One environment gc decided about.
#[derive(Debug, Clone, Serialize)]
pub struct GcItem {
    /// The environment.
    pub id: EnvironmentId,
    /// Its session.
    pub session: Option<SessionId>,
    /// Why it is garbage.
    pub reason: String,
    /// Whether it was removed (false on a dry run).
    pub removed: bool,
}

/// One workspace volume gc decided about.
#[derive(Debug, Clone, Serialize)]
pub struct GcVolumeItem {
    /// The volume (or claim).
    pub name: String,
    /// The session that created it.
    pub session: Option<SessionId>,
    /// Why it is garbage.
    pub reason: String,
    /// Whether it was removed (false on a dry run).
    pub removed: bool,
}

/// What gc did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// The garbage found.
    pub garbage: Vec<GcItem>,
    /// How many environments were kept.
    pub kept: usize,
    /// The workspace volumes removed (with [`GcOptions::volumes`]).
    pub volumes: Vec<GcVolumeItem>,
    /// How many workspace volumes were kept: in use, young, or not asked for.
    pub volumes_kept: usize,
}

/// What is known on this host about an environment's owner: whether the process still runs
/// (`None` when unknowable, e.g. it ran on another host) and whether an old state-directory
/// marker says it was detached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnerView {
    /// The owner's liveness as [`Owner::is_alive`] reports it.
    pub alive: Option<bool>,
    /// An old berth recorded the environment as detached in the state directory.
    pub legacy_marker: bool,
}

/// One removal gc decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Stop and remove an environment.
    RemoveEnvironment {
        /// The environment.
        id: EnvironmentId,
        /// Its session.
        session: Option<SessionId>,
        /// Why it is garbage.
        reason: String,
    },
    /// Remove a workspace volume.
    RemoveVolume {
        /// The volume (or claim).
        name: String,
        /// The session that created it.
        session: Option<SessionId>,
        /// Why it is garbage.
        reason: String,
    },
}

/// What gc decided about a set of objects: the removals, and how many it keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The removals, in order.
    pub actions: Vec<Action>,
    /// How many objects are kept.
    pub kept: usize,
}

impl Plan {
    /// Removes (as `action` says) when there is a reason, else keeps.
    fn decide(&mut self, reason: Option<String>, action: impl FnOnce(String) -> Action) {
        match reason {
            Some(reason) => self.actions.push(action(reason)),
            None => self.kept += 1,
        }
    }
}

/// The environments that are garbage, without I/O: exited ones, ones older than
/// `options.older_than`, and ones whose owner (as `owners` reports it, by id) is gone without
/// detaching them. `now` is the current time in seconds since the Unix epoch.
#[must_use]
pub fn plan_environments(
    envs: &[EnvironmentStatus],
    owners: &BTreeMap<EnvironmentId, OwnerView>,
    options: &GcOptions,
    now: u64,
) -> Plan {
    let mut plan = Plan::default();
    for env in envs {
        let age = env.created_unix_secs.map(|c| now.saturating_sub(c));
        let reason = if env.state == EnvironmentState::Exited && env.labels.contains_key(LABEL_RUN)
        {
            // A batch run is berth's to remove once it finished (its status read or not);
            // while it runs it is detached and kept.
            Some("a batch run that has finished".to_owned())
        } else if env.state == EnvironmentState::Exited {
            Some("its keepalive has exited (lifetime over or killed)".to_owned())
        } else if env.labels.contains_key(LABEL_CLAIM_PENDING) {
            Some("a pool member whose claim never finished (its claimer died)".to_owned())
        } else if let Some(reason) = options
            .pools
            .as_ref()
            .and_then(|pools| pool_member_reason(env, pools, age))
        {
            Some(reason)
        } else if let (Some(limit), Some(age)) = (options.older_than, age) {
            (age > limit.as_secs()).then(|| format!("older than {}s ({age}s)", limit.as_secs()))
        } else {
            None
        };
        let reason = reason.or_else(|| {
            let owner = Owner::from_labels(&env.labels)?;
            let view = owners.get(&env.id).copied().unwrap_or_default();
            owner_gone_reason(
                env.labels.get(LABEL_DETACHED).map(String::as_str),
                &owner,
                view.alive,
                view.legacy_marker,
            )
        });
        plan.decide(reason, |reason| Action::RemoveEnvironment {
            id: env.id.clone(),
            session: env.session.clone(),
            reason,
        });
    }
    plan
}

/// The workspace volumes that are garbage, without I/O: with `options.volumes`, those no
/// environment uses (and older than `options.older_than` when set).
#[must_use]
pub fn plan_volumes(volumes: &[VolumeStatus], options: &GcOptions, now: u64) -> Plan {
    let mut plan = Plan::default();
    for volume in volumes {
        let age = volume.created_unix_secs.map(|c| now.saturating_sub(c));
        let reason = match (options.volumes, volume.in_use, options.older_than, age) {
            (false, ..) | (true, true, ..) => None,
            (true, false, None, _) => Some("no environment uses it".to_owned()),
            (true, false, Some(limit), Some(age)) if age > limit.as_secs() => Some(format!(
                "no environment uses it, and it is older than {}s ({age}s)",
                limit.as_secs()
            )),
            (true, false, Some(_), _) => None,
        };
        plan.decide(reason, |reason| Action::RemoveVolume {
            name: volume.name.clone(),
            session: volume.session.clone(),
            reason,
        });
    }
    plan
}

/// Runs blocking file-system work (the state directory, `/proc`) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RunnerError::Io {
            what: "a state-directory task failed".into(),
            source: std::io::Error::other(e),
        })
}

/// What this host knows about the owners of `envs`.
async fn observe_owners(
    envs: &[EnvironmentStatus],
    state: &StateDir,
) -> Result<BTreeMap<EnvironmentId, OwnerView>> {
    let owners: Vec<(EnvironmentId, Option<Owner>)> = envs
        .iter()
        .map(|e| (e.id.clone(), Owner::from_labels(&e.labels)))
        .collect();
    let state = state.clone();
    blocking(move || {
        owners
            .into_iter()
            .map(|(id, owner)| {
                let view = OwnerView {
                    alive: owner.as_ref().and_then(Owner::is_alive),
                    legacy_marker: state.is_detached(&id),
                };
                (id, view)
            })
            .collect()
    })
    .await
}

/// Finds and (unless `dry_run`) removes berth's leftovers: environments that have exited,
/// whose owning process on this host is gone without detaching them, or that are older than
/// `older_than`. Anonymous workspace volumes go with their environment; named ones (Docker
/// volumes, Kubernetes claims berth created) only with [`GcOptions::volumes`], and only once
/// no environment uses them. The decisions are [`plan_environments`] and [`plan_volumes`].
///
/// # Errors
/// The engine's error when listing fails; removal failures are reported per item.
pub async fn collect_garbage(
    engine: &dyn ContainerEngine,
    state: &StateDir,
    options: &GcOptions,
) -> Result<GcReport> {
    let selector = match &options.session {
        Some(s) => LabelSelector::session(s),
        None => LabelSelector::all(),
    };
    let found = engine.list(&selector).await?;
    let owners = observe_owners(&found, state).await?;
    let plan = plan_environments(&found, &owners, options, now());
    let mut report = GcReport {
        kept: plan.kept,
        ..GcReport::default()
    };
    let mut forget = Vec::new();
    for action in plan.actions {
        let Action::RemoveEnvironment {
            id,
            session,
            reason,
        } = action
        else {
            continue;
        };
        let removed = !options.dry_run && remove(engine, &id, &mut forget).await;
        report.garbage.push(GcItem {
            id,
            session,
            reason,
            removed,
        });
    }
    collect_runs(engine, &selector, &found, options, &mut report).await?;
    // Volumes are listed after the environments are gone, so that a volume they held is free.
    let volumes = engine.list_volumes(&selector).await?;
    let plan = plan_volumes(&volumes, options, now());
    report.volumes_kept = plan.kept;
    for action in plan.actions {
        let Action::RemoveVolume {
            name,
            session,
            reason,
        } = action
        else {
            continue;
        };
        let removed = !options.dry_run && remove_volume(engine, &name).await;
        report.volumes.push(GcVolumeItem {
            name,
            session,
            reason,
            removed,
        });
    }
    if !options.dry_run {
        let sweep = options.session.is_none();
        let state = state.clone();
        blocking(move || {
            for env in &forget {
                state.forget(env);
            }
            if sweep {
                for marker in state.detached() {
                    if !found.iter().any(|e| e.id == marker) {
                        state.forget(&marker);
                    }
                }
            }
        })
        .await?;
    }
    Ok(report)
}

/// The runs that are no environment's kind of object (Argo Workflows; none where the engine
/// has no runs or the cluster no Argo CRDs): a finished one is removed as a finished Job run
/// is, one older than `older_than` too. Schedules (CronJobs, CronWorkflows) are kept: they
/// are meant to outlive everything, and `berth down NAME` removes them.
async fn collect_runs(
    engine: &dyn ContainerEngine,
    selector: &LabelSelector,
    environments: &[EnvironmentStatus],
    options: &GcOptions,
    report: &mut GcReport,
) -> Result<()> {
    let runs = match engine.list_runs(selector).await {
        Ok(runs) => runs,
        Err(e) if e.is_unsupported() => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let now = now();
    for run in runs {
        if run.state == RunState::Scheduled
            || environments
                .iter()
                .any(|e| e.id.as_str() == run.id.as_str())
        {
            continue;
        }
        let age = run.created_unix_secs.map(|c| now.saturating_sub(c));
        let reason = if run.state.is_finished() {
            Some("a batch run that has finished".to_owned())
        } else {
            options
                .older_than
                .zip(age)
                .filter(|(limit, age)| *age >= limit.as_secs())
                .map(|(limit, _)| format!("older than {}s", limit.as_secs()))
        };
        let Some(reason) = reason else {
            report.kept += 1;
            continue;
        };
        let removed = !options.dry_run
            && match engine.remove_run(&run.id).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(run = %run.id, error = %e, "gc could not remove");
                    false
                }
            };
        report.garbage.push(GcItem {
            id: run.id.as_environment(),
            session: run.session.clone(),
            reason,
            removed,
        });
    }
    Ok(())
}

async fn remove(
    engine: &dyn ContainerEngine,
    env: &EnvironmentId,
    forget: &mut Vec<EnvironmentId>,
) -> bool {
    match engine.stop(env).await {
        Ok(_) => {
            forget.push(env.clone());
            true
        }
        Err(e) => {
            tracing::warn!(env = %env, error = %e, "gc could not remove");
            false
        }
    }
}

async fn remove_volume(engine: &dyn ContainerEngine, name: &str) -> bool {
    match engine.remove_volume(name).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(volume = %name, error = %e, "gc could not remove");
            false
        }
    }
}

/// Why an environment is garbage because of its owner, if it is: the owner ran on this host
/// (another host's processes are unknowable here, so never judged dead), is gone, and did not
/// detach it. Detachment is read from the environment itself ([`LABEL_DETACHED`]), so every
/// host and state directory agrees; markers from older berth versions still count.
/// `detached` is the label's value, `alive` the owner's liveness as [`Owner::is_alive`]
/// reports it, `legacy_marker` an old state-directory record.
fn owner_gone_reason(
    detached: Option<&str>,
    owner: &Owner,
    alive: Option<bool>,
    legacy_marker: bool,
) -> Option<String> {
    if alive != Some(false) || legacy_marker || detached == Some(DETACHED_YES) {
        return None;
    }
    Some(if detached == Some(DETACHED_REQUESTED) {
        format!(
            "its `berth up`, process {} on {}, died before the environment was ready",
            owner.pid, owner.host
        )
    } else {
        format!(
            "its owner, process {} on {}, is gone",
            owner.pid, owner.host
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, pool: &str, hash: &str, age: u64, now: u64) -> EnvironmentStatus {
        let labels: BTreeMap<String, String> = [
            (berth_engine_core::LABEL_MANAGED_BY, "berth"),
            (LABEL_POOL, pool),
            (LABEL_POOL_SPEC, hash),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let mut status = EnvironmentStatus::new(
            EnvironmentId::new(name).unwrap(),
            "img",
            EnvironmentState::Running,
            labels,
        );
        status.created_unix_secs = Some(now - age);
        status
    }

    #[test]
    fn gc_keeps_live_pools_members_and_removes_orphans() {
        let now = 10_000;
        let envs = vec![
            member("live", "py", "h1", 10, now),
            member("unknown-pool", "gone", "h1", 10, now),
            member("old-spec", "py", "h0", 10, now),
            member("idle", "py", "h1", 4000, now),
        ];
        let pools = BTreeMap::from([(
            "py".to_owned(),
            PoolRule {
                spec_hash: Some("h1".into()),
                idle_ttl: Duration::from_secs(3600),
            },
        )]);
        let options = GcOptions {
            pools: Some(pools),
            ..GcOptions::default()
        };
        let plan = plan_environments(&envs, &BTreeMap::new(), &options, now);
        let removed: Vec<(String, String)> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::RemoveEnvironment { id, reason, .. } => {
                    Some((id.to_string(), reason.clone()))
                }
                Action::RemoveVolume { .. } => None,
            })
            .collect();
        assert_eq!(plan.kept, 1, "{removed:?}");
        assert!(removed[0].0 == "unknown-pool" && removed[0].1.contains("not configured"));
        assert!(removed[1].0 == "old-spec" && removed[1].1.contains("older spec"));
        assert!(removed[2].0 == "idle" && removed[2].1.contains("idle_ttl"));
        // Without the config's pools, members are kept.
        let plan = plan_environments(&envs, &BTreeMap::new(), &GcOptions::default(), now);
        assert_eq!(plan.kept, 4);
        // A claim that never finished is garbage either way.
        let mut pending = member("pending", "py", "h1", 10, now);
        pending.labels.remove(LABEL_POOL);
        pending
            .labels
            .insert(LABEL_CLAIM_PENDING.to_owned(), "true".to_owned());
        let plan = plan_environments(&[pending], &BTreeMap::new(), &GcOptions::default(), now);
        assert_eq!(plan.actions.len(), 1);
    }

    fn owner() -> Owner {
        Owner {
            host: "h".into(),
            pid: 7,
            start: 1,
        }
    }

    #[test]
    fn a_detached_environment_is_kept_whoever_looks() {
        // Ready and detached: kept although its `berth up` is long gone, with no marker in
        // this state directory (another $HOME, another machine's state).
        assert_eq!(
            owner_gone_reason(Some(DETACHED_YES), &owner(), Some(false), false),
            None
        );
    }

    #[test]
    fn an_up_that_died_before_ready_is_collected() {
        let reason =
            owner_gone_reason(Some(DETACHED_REQUESTED), &owner(), Some(false), false).unwrap();
        assert!(
            reason.contains("died before the environment was ready"),
            "{reason}"
        );
        let reason = owner_gone_reason(None, &owner(), Some(false), false).unwrap();
        assert!(reason.contains("is gone"), "{reason}");
    }

    #[test]
    fn an_owner_on_another_host_or_alive_is_never_judged_dead() {
        for alive in [None, Some(true)] {
            assert_eq!(owner_gone_reason(None, &owner(), alive, false), None);
            assert_eq!(
                owner_gone_reason(Some(DETACHED_REQUESTED), &owner(), alive, false),
                None
            );
        }
        assert_eq!(owner_gone_reason(None, &owner(), Some(false), true), None);
    }

    fn env(
        id: &str,
        state: EnvironmentState,
        created: u64,
        labels: &[(&str, &str)],
    ) -> EnvironmentStatus {
        let mut status = EnvironmentStatus::new(
            EnvironmentId::new(id).expect("id"),
            "img".to_owned(),
            state,
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        status.created_unix_secs = Some(created);
        status
    }

    fn owner_labels() -> Vec<(&'static str, &'static str)> {
        vec![
            (crate::owner::LABEL_OWNER_HOST, "h"),
            (crate::owner::LABEL_OWNER_PID, "7"),
            (crate::owner::LABEL_OWNER_START, "1"),
        ]
    }

    #[test]
    fn the_plan_removes_exited_old_and_orphaned_environments_and_keeps_the_rest() {
        let orphan = EnvironmentId::new("orphan").expect("id");
        let owned = owner_labels();
        let envs = [
            env("exited", EnvironmentState::Exited, 990, &[]),
            env("young", EnvironmentState::Running, 990, &[]),
            env("old", EnvironmentState::Running, 100, &[]),
            env("orphan", EnvironmentState::Running, 990, &owned),
        ];
        let owners = BTreeMap::from([(
            orphan.clone(),
            OwnerView {
                alive: Some(false),
                legacy_marker: false,
            },
        )]);
        let options = GcOptions {
            older_than: Some(Duration::from_secs(60)),
            ..GcOptions::default()
        };
        let plan = plan_environments(&envs, &owners, &options, 1000);
        let removed: Vec<String> = plan
            .actions
            .iter()
            .map(|a| match a {
                Action::RemoveEnvironment { id, .. } => id.to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(removed, ["exited", "old", "orphan"]);
        assert_eq!(plan.kept, 1);
        // Without --older-than the old one stays; an owner not known to be dead keeps its own.
        let plan = plan_environments(&envs, &BTreeMap::new(), &GcOptions::default(), 1000);
        assert_eq!(plan.actions.len(), 1);
        assert_eq!(plan.kept, 3);
    }

    #[test]
    fn a_running_run_whose_submitter_is_gone_is_kept_and_a_finished_one_removed() {
        // A submitted run is detached from creation: its gone submitter is no crash.
        let mut labels: Vec<(&str, &str)> = vec![
            (LABEL_RUN, berth_engine_core::RUN_ONCE),
            (LABEL_DETACHED, DETACHED_YES),
        ];
        labels.extend(owner_labels());
        let envs = [
            env("running", EnvironmentState::Running, 990, &labels),
            env("finished", EnvironmentState::Exited, 990, &labels),
        ];
        let owners = BTreeMap::from([(
            EnvironmentId::new("running").expect("id"),
            OwnerView {
                alive: Some(false),
                legacy_marker: false,
            },
        )]);
        let plan = plan_environments(&envs, &owners, &GcOptions::default(), 1000);
        assert_eq!(plan.kept, 1);
        assert!(
            matches!(&plan.actions[..], [Action::RemoveEnvironment { id, reason, .. }]
                if id.as_str() == "finished" && reason.contains("batch run")),
            "{:?}",
            plan.actions
        );
    }

    #[test]
    fn volumes_go_only_when_asked_unused_and_old_enough() {
        let volume = |name: &str, in_use: bool| {
            let mut v = VolumeStatus::new(name, BTreeMap::new(), in_use);
            v.created_unix_secs = Some(900);
            v
        };
        let volumes = [volume("used", true), volume("free", false)];
        assert_eq!(plan_volumes(&volumes, &GcOptions::default(), 1000).kept, 2);
        let asked = GcOptions {
            volumes: true,
            ..GcOptions::default()
        };
        let plan = plan_volumes(&volumes, &asked, 1000);
        assert_eq!(plan.kept, 1);
        assert!(matches!(&plan.actions[..], [Action::RemoveVolume { name, .. }] if name == "free"));
        let young = GcOptions {
            older_than: Some(Duration::from_secs(500)),
            ..asked
        };
        assert!(plan_volumes(&volumes, &young, 1000).actions.is_empty());
    }
}
