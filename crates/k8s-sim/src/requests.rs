//! The request counter: every API request the simulator serves, by verb and resource
//! ([`crate::Sim::requests`]).

use std::collections::BTreeMap;
use std::sync::Mutex;

use hyper::Method;

use crate::api::Params;
use crate::authz;

/// A snapshot of the requests a simulator served, by `(verb, resource)`.
///
/// The verb is the authorization verb (`get`, `list`, `watch`, `create`, `update`, `patch`,
/// `delete`, `deletecollection`), except for the connecting subresources, which count under
/// their own name: `exec`, `attach` and `portforward` (resource `pods`). Other subresources
/// count under `resource/subresource` (`get` of `pods/log`, `patch` of `jobs/status`). A
/// watch counts once, when it is opened, however long it lasts. Discovery and `/version`
/// count as `get` of `discovery`; a path naming nothing served as its method of `unknown`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requests(BTreeMap<(String, String), u64>);

impl Requests {
    /// How many `verb` requests on `resource` were served.
    #[must_use]
    pub fn get(&self, verb: &str, resource: &str) -> u64 {
        self.0
            .get(&(verb.to_owned(), resource.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Every request counted.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// The requests with `verb`, on any resource.
    #[must_use]
    pub fn verb(&self, verb: &str) -> u64 {
        self.0
            .iter()
            .filter(|((v, _), _)| v == verb)
            .map(|(_, n)| n)
            .sum()
    }

    /// Every `(verb, resource)` and its count, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.0
            .iter()
            .map(|((v, r), n)| (v.as_str(), r.as_str(), *n))
    }

    /// The counts of `self` and `other` added.
    #[must_use]
    pub fn plus(&self, other: &Requests) -> Requests {
        let mut sum = self.0.clone();
        for (k, n) in &other.0 {
            *sum.entry(k.clone()).or_insert(0) += n;
        }
        Requests(sum)
    }

    /// What was served after `earlier` (a snapshot of the same simulator taken before this
    /// one): the difference of each count, zeros left out.
    #[must_use]
    pub fn since(&self, earlier: &Requests) -> Requests {
        Requests(
            self.0
                .iter()
                .filter_map(|(k, n)| {
                    let d = n.saturating_sub(earlier.0.get(k).copied().unwrap_or(0));
                    (d > 0).then(|| (k.clone(), d))
                })
                .collect(),
        )
    }
}

impl std::fmt::Display for Requests {
    /// `verb resource=count` pairs, comma-separated (`get pods=2, watch pods=1`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (v, r, n) in self.iter() {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{v} {r}={n}")?;
        }
        Ok(())
    }
}

/// The live counter, in the simulator's shared state.
#[derive(Debug, Default)]
pub(crate) struct Counter(Mutex<BTreeMap<(String, String), u64>>);

impl Counter {
    /// Counts one `verb` request on `resource`.
    pub(crate) fn add(&self, verb: impl Into<String>, resource: impl Into<String>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((verb.into(), resource.into()))
            .or_insert(0) += 1;
    }

    pub(crate) fn snapshot(&self) -> Requests {
        Requests(
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }

    pub(crate) fn reset(&self) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// Counts a request under a group version (`rest`: the path after it) of `group`.
    pub(crate) fn resource(&self, group: &str, rest: &[&str], method: &Method, params: &Params) {
        let Some(a) = authz::Attributes::of_request(group, rest, method, params) else {
            self.add(method.as_str().to_ascii_lowercase(), "unknown".to_owned());
            return;
        };
        match a.subresource.as_str() {
            "" => self.add(a.verb, a.resource),
            sub @ ("exec" | "attach" | "portforward") => self.add(sub.to_owned(), a.resource),
            sub => self.add(a.verb, format!("{}/{sub}", a.resource)),
        }
    }

    /// Counts a discovery request (`/api`, `/apis/...`, `/version`, `/openapi/...`).
    pub(crate) fn discovery(&self) {
        self.add("get".to_owned(), "discovery".to_owned());
    }

    /// Counts a request whose path names nothing served.
    pub(crate) fn unknown(&self, method: &Method) {
        self.add(method_verb(method), "unknown");
    }
}

/// The verb of a request that is not on a stored resource: `create` for a POST (a
/// `SelfSubjectAccessReview`), else the method in lower case.
pub(crate) fn method_verb(method: &Method) -> String {
    if *method == Method::POST {
        "create".to_owned()
    } else {
        method.as_str().to_ascii_lowercase()
    }
}
