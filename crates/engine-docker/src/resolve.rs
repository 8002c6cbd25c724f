//! Which container a name, id or id prefix given by a user means, by berth's rule: only
//! containers berth created, named exactly, or an id prefix unique among them.

use berth_engine_core::{EnvironmentId, Error, LabelSelector, Result};
use bollard::query_parameters::ListContainersOptions;

use crate::container::label_filters;
use crate::errors::{self};
use crate::{DockerEngine, DETACHED_MARKER};

/// A container as [`DockerEngine::resolve`] sees it: its name, full id and whether berth
/// made it.
struct Candidate {
    name: String,
    id: String,
    berths: bool,
}

/// Which container `given` names for berth, by the rule every command follows: an exact
/// name or full id of a berth container; else an id prefix unique among berth's containers.
/// `named` is what the daemon itself resolved `given` to (it also matches id prefixes of
/// containers berth did not create); `berths` lists berth's containers.
///
/// `Ok(None)`: nothing by that name exists; `Err`: it names a container berth did not create,
/// or a prefix ambiguous among berth's.
fn pick_container(
    given: &str,
    named: Option<&Candidate>,
    berths: &[Candidate],
) -> Result<Option<String>> {
    if let Some(c) = named {
        if c.berths {
            return Ok(Some(c.name.clone()));
        }
        if c.name == given || c.id == given {
            return Err(Error::not_a_berth_environment(given));
        }
    }
    let matches: Vec<&Candidate> = berths
        .iter()
        .filter(|c| c.berths && !given.is_empty() && c.id.starts_with(given))
        .collect();
    match (matches.as_slice(), named) {
        ([one], _) => Ok(Some(one.name.clone())),
        ([], None) => Ok(None),
        ([], Some(_)) => Err(Error::not_a_berth_environment(given)),
        (many, _) => Err(Error::invalid_spec(
            "environment",
            format!(
                "the id prefix {given:?} matches {} berth environments ({}); give more of the id or the name",
                many.len(),
                many.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

impl DockerEngine {
    /// The name of the berth container `env` names (see [`pick_container`]); `Ok(None)` when
    /// no container has that name or id. Every call taking an environment goes through this,
    /// so berth never runs a command in, copies with, or removes a container it did not create.
    pub(crate) async fn resolve(&self, env: &EnvironmentId) -> Result<Option<String>> {
        let named = match crate::retry::idempotent("inspect container", || {
            crate::lenient::inspect_container(&self.docker, env.as_str())
        })
        .await
        {
            Ok(c) => Some(Candidate {
                name: c
                    .name
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_owned(),
                id: c.id.unwrap_or_default(),
                berths: c
                    .config
                    .and_then(|c| c.labels)
                    .and_then(|l| l.get(berth_engine_core::LABEL_MANAGED_BY).cloned())
                    .as_deref()
                    == Some(berth_engine_core::MANAGED_BY_VALUE),
            }),
            // Missing, or an id prefix several containers share (the daemon refuses those).
            Err(e) if matches!(errors::status(&e), Some((400 | 404, _))) => None,
            Err(e) => {
                return Err(errors::env_call(
                    &self.address,
                    env.as_str(),
                    "inspect container",
                    e,
                ))
            }
        };
        if named.as_ref().is_some_and(|c| c.berths) {
            return pick_container(env.as_str(), named.as_ref(), &[]);
        }
        // Only a hexadecimal string can be an id prefix of one of berth's containers.
        let berths = if env.as_str().bytes().all(|b| b.is_ascii_hexdigit()) {
            self.berth_containers().await?
        } else {
            Vec::new()
        };
        pick_container(env.as_str(), named.as_ref(), &berths)
    }

    /// Like [`DockerEngine::resolve`], for calls that need the environment to exist: a name
    /// that names nothing is passed on unchanged so the call reports it missing as before.
    pub(crate) async fn resolve_existing(&self, env: &EnvironmentId) -> Result<EnvironmentId> {
        match self.resolve(env).await? {
            Some(name) if name != env.as_str() => EnvironmentId::new(name),
            _ => Ok(env.clone()),
        }
    }

    /// Whether [`ContainerEngine::mark_detached`] wrote its marker into `name`.
    pub(crate) async fn has_detached_marker(&self, name: &str) -> Result<bool> {
        self.has_marker(name, DETACHED_MARKER).await
    }

    /// Whether the file `/<marker>` exists in the container `name` (running or not).
    pub(crate) async fn has_marker(&self, name: &str, marker: &str) -> Result<bool> {
        let options = bollard::query_parameters::ContainerArchiveInfoOptions {
            path: format!("/{marker}"),
        };
        match crate::retry::idempotent("stat the detached marker", || {
            self.docker
                .get_container_archive_info(name, Some(options.clone()))
        })
        .await
        {
            Ok(_) => Ok(true),
            // No marker, or the container went away meanwhile.
            Err(e) if matches!(errors::status(&e), Some((404, _))) => Ok(false),
            Err(e) => Err(errors::env_call(
                &self.address,
                name,
                "stat a marker file",
                e,
            )),
        }
    }

    async fn berth_containers(&self) -> Result<Vec<Candidate>> {
        let listed = crate::retry::idempotent("list containers", || {
            crate::lenient::list_containers(
                &self.docker,
                ListContainersOptions {
                    all: true,
                    filters: Some(label_filters(&LabelSelector::all())),
                    ..Default::default()
                },
            )
        })
        .await
        .map_err(self.other("list containers"))?;
        Ok(listed
            .into_iter()
            .map(|c| Candidate {
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_owned(),
                id: c.id.unwrap_or_default(),
                berths: true,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, id: &str, berths: bool) -> Candidate {
        Candidate {
            name: name.into(),
            id: id.into(),
            berths,
        }
    }

    #[test]
    fn a_container_berth_did_not_create_is_refused_by_name_id_or_prefix() {
        let foreign = c("foreign", "8f4ad1aa", false);
        for given in ["foreign", "8f4ad1aa", "8f4ad1"] {
            let err = pick_container(given, Some(&foreign), &[]).unwrap_err();
            assert!(err.is_not_found(), "{err}");
            assert!(err.to_string().contains("not a berth environment"), "{err}");
        }
    }

    #[test]
    fn berths_own_resolve_by_name_id_or_unique_prefix() {
        let mine = c("berth-s-main-1", "abc123", true);
        let other = c("berth-s-main-2", "abd456", true);
        let berths = [mine, other];
        assert_eq!(
            pick_container("abc123", Some(&berths[0]), &[]).unwrap(),
            Some("berth-s-main-1".into())
        );
        // The daemon found no unique match (ambiguous with a foreign container): berth's own
        // list decides.
        assert_eq!(
            pick_container("abc", None, &berths).unwrap(),
            Some("berth-s-main-1".into())
        );
        let err = pick_container("ab", None, &berths).unwrap_err();
        assert!(
            err.to_string().contains("matches 2 berth environments"),
            "{err}"
        );
        assert_eq!(pick_container("ffff", None, &berths).unwrap(), None);
    }
}
