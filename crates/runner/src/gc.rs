//! Garbage collection: find what berth left behind (a crashed process's environments, expired
//! ones, old ones) by label, and remove it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_engine_core::{
    ContainerEngine, EnvironmentId, EnvironmentState, EnvironmentStatus, LabelSelector, Result,
    SessionId, DETACHED_REQUESTED, DETACHED_YES, LABEL_DETACHED,
};
use serde::Serialize;

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

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Finds and (unless `dry_run`) removes berth's leftovers: environments that have exited,
/// whose owning process on this host is gone without detaching them, or that are older than
/// `older_than`. Anonymous workspace volumes go with their environment; named ones (Docker
/// volumes, Kubernetes claims berth created) only with [`GcOptions::volumes`], and only once
/// no environment uses them.
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
    let mut report = GcReport::default();
    for env in &found {
        let age = env.created_unix_secs.map(|c| now().saturating_sub(c));
        let owner = Owner::from_labels(&env.labels);
        let reason = if env.state == EnvironmentState::Exited {
            Some("its keepalive has exited (lifetime over or killed)".to_owned())
        } else if let (Some(limit), Some(age)) = (options.older_than, age) {
            (age > limit.as_secs()).then(|| format!("older than {}s ({age}s)", limit.as_secs()))
        } else {
            None
        };
        let reason = reason.or_else(|| owner_gone(env, owner.as_ref()?, state));
        match reason {
            Some(reason) => {
                let removed = if options.dry_run {
                    false
                } else {
                    match engine.stop(&env.id).await {
                        Ok(_) => {
                            state.forget(&env.id);
                            true
                        }
                        Err(e) => {
                            tracing::warn!(env = %env.id, error = %e, "gc could not remove");
                            false
                        }
                    }
                };
                report.garbage.push(GcItem {
                    id: env.id.clone(),
                    session: env.session.clone(),
                    reason,
                    removed,
                });
            }
            None => report.kept += 1,
        }
    }
    collect_volumes(engine, &selector, options, &mut report).await?;
    if !options.dry_run && options.session.is_none() {
        for marker in state.detached() {
            if !found.iter().any(|e| e.id == marker) {
                state.forget(&marker);
            }
        }
    }
    Ok(report)
}

/// Why `env` is garbage because of its owner, if it is: the owner ran on this host (another
/// host's processes are unknowable here, so never judged dead), is gone, and did not detach
/// it. Detachment is read from the environment itself ([`LABEL_DETACHED`]), so every host and
/// state directory agrees; markers in `state` from older berth versions still count.
fn owner_gone(env: &EnvironmentStatus, owner: &Owner, state: &StateDir) -> Option<String> {
    owner_gone_reason(
        env.labels.get(LABEL_DETACHED).map(String::as_str),
        owner,
        owner.is_alive(),
        state.is_detached(&env.id),
    )
}

/// The pure decision of [`owner_gone`]: `detached` is the label's value, `alive` the owner's
/// liveness as [`Owner::is_alive`] reports it, `legacy_marker` an old state-directory record.
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

/// The volume half of [`collect_garbage`], run after the environments are gone so that a
/// volume they held is free.
async fn collect_volumes(
    engine: &dyn ContainerEngine,
    selector: &LabelSelector,
    options: &GcOptions,
    report: &mut GcReport,
) -> Result<()> {
    let volumes = engine.list_volumes(selector).await?;
    for volume in volumes {
        let age = volume.created_unix_secs.map(|c| now().saturating_sub(c));
        let reason = match (options.volumes, volume.in_use, options.older_than, age) {
            (false, ..) | (true, true, ..) => None,
            (true, false, None, _) => Some("no environment uses it".to_owned()),
            (true, false, Some(limit), Some(age)) if age > limit.as_secs() => Some(format!(
                "no environment uses it, and it is older than {}s ({age}s)",
                limit.as_secs()
            )),
            (true, false, Some(_), _) => None,
        };
        let Some(reason) = reason else {
            report.volumes_kept += 1;
            continue;
        };
        let removed = if options.dry_run {
            false
        } else {
            match engine.remove_volume(&volume.name).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(volume = %volume.name, error = %e, "gc could not remove");
                    false
                }
            }
        };
        report.volumes.push(GcVolumeItem {
            name: volume.name,
            session: volume.session,
            reason,
            removed,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
