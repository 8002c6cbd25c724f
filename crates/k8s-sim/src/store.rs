//! The object store: every object as JSON, one global resourceVersion counter, and a history
//! of change events that watches replay from a resourceVersion and then follow live.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use crate::errors::ApiError;
use crate::meta;

/// The resources the simulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Res {
    Namespace,
    Pod,
    Pvc,
    Job,
    // Stored, and its controller makes Jobs on schedule (`jobs::reconcile_cron_jobs`).
    CronJob,
    Node,
    Event,
    ResourceQuota,
    LimitRange,
    // Stored only (no controller acts on them), so that what `berth render --server` prints
    // can be created and read back.
    ConfigMap,
    Service,
    ServiceAccount,
    Deployment,
    Role,
    RoleBinding,
    NetworkPolicy,
    // Stored, and read by the kubelet for env and files.
    Secret,
    // Argo's custom resources: served only once the CRDs are "installed"
    // (`Sim::install_argo_crds`), stored only (no Workflow controller runs them).
    Workflow,
    CronWorkflow,
}

/// The group of Argo's Workflows and CronWorkflows.
pub(crate) const ARGO_GROUP: &str = "argoproj.io";

/// The group of NetworkPolicies.
pub(crate) const NETWORKING_GROUP: &str = "networking.k8s.io";

/// The group of Roles and RoleBindings.
pub(crate) const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

impl Res {
    pub(crate) const ALL: [Res; 19] = [
        Res::Namespace,
        Res::Pod,
        Res::Pvc,
        Res::Job,
        Res::CronJob,
        Res::Node,
        Res::Event,
        Res::ResourceQuota,
        Res::LimitRange,
        Res::ConfigMap,
        Res::Service,
        Res::ServiceAccount,
        Res::Deployment,
        Res::Role,
        Res::RoleBinding,
        Res::Secret,
        Res::Workflow,
        Res::CronWorkflow,
        Res::NetworkPolicy,
    ];

    /// The kinds that are only stored: created, read, changed and deleted, nothing more.
    pub(crate) const STORED_ONLY: [Res; 8] = [
        Res::ConfigMap,
        Res::Service,
        Res::ServiceAccount,
        Res::Deployment,
        Res::Role,
        Res::RoleBinding,
        Res::Secret,
        Res::NetworkPolicy,
    ];

    pub(crate) fn kind(self) -> &'static str {
        match self {
            Res::Namespace => "Namespace",
            Res::Pod => "Pod",
            Res::Pvc => "PersistentVolumeClaim",
            Res::Job => "Job",
            Res::CronJob => "CronJob",
            Res::Node => "Node",
            Res::Event => "Event",
            Res::ResourceQuota => "ResourceQuota",
            Res::LimitRange => "LimitRange",
            Res::ConfigMap => "ConfigMap",
            Res::Service => "Service",
            Res::ServiceAccount => "ServiceAccount",
            Res::Deployment => "Deployment",
            Res::Role => "Role",
            Res::RoleBinding => "RoleBinding",
            Res::NetworkPolicy => "NetworkPolicy",
            Res::Secret => "Secret",
            Res::Workflow => "Workflow",
            Res::CronWorkflow => "CronWorkflow",
        }
    }

    pub(crate) fn plural(self) -> &'static str {
        match self {
            Res::Namespace => "namespaces",
            Res::Pod => "pods",
            Res::Pvc => "persistentvolumeclaims",
            Res::Job => "jobs",
            Res::CronJob => "cronjobs",
            Res::Node => "nodes",
            Res::Event => "events",
            Res::ResourceQuota => "resourcequotas",
            Res::LimitRange => "limitranges",
            Res::ConfigMap => "configmaps",
            Res::Service => "services",
            Res::ServiceAccount => "serviceaccounts",
            Res::Deployment => "deployments",
            Res::Role => "roles",
            Res::RoleBinding => "rolebindings",
            Res::NetworkPolicy => "networkpolicies",
            Res::Secret => "secrets",
            Res::Workflow => "workflows",
            Res::CronWorkflow => "cronworkflows",
        }
    }

    pub(crate) fn group(self) -> &'static str {
        match self {
            Res::Job | Res::CronJob => "batch",
            Res::Deployment => "apps",
            Res::Role | Res::RoleBinding => RBAC_GROUP,
            Res::NetworkPolicy => NETWORKING_GROUP,
            Res::Workflow | Res::CronWorkflow => ARGO_GROUP,
            _ => "",
        }
    }

    pub(crate) fn api_version(self) -> &'static str {
        match self {
            Res::Job | Res::CronJob => "batch/v1",
            Res::Deployment => "apps/v1",
            Res::Role | Res::RoleBinding => "rbac.authorization.k8s.io/v1",
            Res::NetworkPolicy => "networking.k8s.io/v1",
            Res::Workflow | Res::CronWorkflow => "argoproj.io/v1alpha1",
            _ => "v1",
        }
    }

    pub(crate) fn namespaced(self) -> bool {
        !matches!(self, Res::Namespace | Res::Node)
    }

    /// `pods` or `jobs.batch`: how error messages name the resource.
    pub(crate) fn qualified(self) -> String {
        if self.group().is_empty() {
            self.plural().to_owned()
        } else {
            format!("{}.{}", self.plural(), self.group())
        }
    }

    pub(crate) fn from_plural(group: &str, plural: &str) -> Option<Res> {
        Res::ALL
            .into_iter()
            .find(|r| r.group() == group && r.plural() == plural)
    }
}

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change of one object.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) res: Res,
    pub(crate) typ: EventType,
    pub(crate) rv: u64,
    pub(crate) object: Arc<Value>,
    /// For MODIFIED: the object before the change (watches with selectors need it).
    pub(crate) old: Option<Arc<Value>>,
}

impl Event {
    pub(crate) fn namespace(&self) -> &str {
        self.object["metadata"]["namespace"].as_str().unwrap_or("")
    }
}

type Key = (Res, String, String);

const HISTORY: usize = 20_000;

struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Event>,
}

/// The store. Its lock is never held across an `.await`.
pub(crate) struct Store {
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
    changed: watch::Sender<u64>,
}

/// What a watch starts with: the events to send first, and the live feed after them.
pub(crate) struct WatchStart {
    /// The resourceVersion the backlog brings the watcher up to.
    pub(crate) rv: u64,
    pub(crate) backlog: Vec<Event>,
    pub(crate) live: broadcast::Receiver<Event>,
}

fn name_of(obj: &Value) -> String {
    obj["metadata"]["name"].as_str().unwrap_or("").to_owned()
}

impl Store {
    pub(crate) fn new() -> Self {
        let (events, _) = broadcast::channel(4096);
        let (changed, _) = watch::channel(0);
        Self {
            state: Mutex::new(State {
                rv: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
            }),
            events,
            changed,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A receiver that wakes on every change.
    pub(crate) fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn emit(&self, st: &mut State, res: Res, typ: EventType, object: Value, old: Option<Value>) {
        let event = Event {
            res,
            typ,
            rv: st.rv,
            object: Arc::new(object),
            old: old.map(Arc::new),
        };
        st.history.push_back(event.clone());
        while st.history.len() > HISTORY {
            st.history.pop_front();
        }
        let _ = self.events.send(event);
        self.changed.send_replace(st.rv);
    }

    /// Stores a new object: fills uid, resourceVersion, creationTimestamp, generation, kind and
    /// apiVersion; a `generateName` gets a random suffix.
    pub(crate) fn create(&self, res: Res, ns: &str, obj: Value) -> Result<Value, ApiError> {
        self.create_with(res, ns, obj, |_| {})
    }

    /// Like [`Store::create`], with `fill` run on the object once its name and uid are set,
    /// before anyone can see it.
    pub(crate) fn create_with(
        &self,
        res: Res,
        ns: &str,
        mut obj: Value,
        fill: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        if res.namespaced()
            && !st
                .objects
                .contains_key(&(Res::Namespace, String::new(), ns.into()))
        {
            return Err(ApiError::not_found(Res::Namespace, ns));
        }
        if res.namespaced() {
            let terminating = st
                .objects
                .get(&(Res::Namespace, String::new(), ns.into()))
                .is_some_and(|n| !n["metadata"]["deletionTimestamp"].is_null());
            if terminating {
                return Err(ApiError::forbidden(
                    res,
                    &name_of(&obj),
                    &format!("unable to create new content in namespace {ns} because it is being terminated"),
                ));
            }
        }
        let mut name = name_of(&obj);
        if name.is_empty() {
            if let Some(prefix) = obj["metadata"]["generateName"].as_str() {
                loop {
                    name = format!("{prefix}{}", meta::random_suffix(5));
                    if !st.objects.contains_key(&(res, ns.into(), name.clone())) {
                        break;
                    }
                }
            }
        }
        if name.is_empty() {
            return Err(ApiError::invalid(
                res,
                "",
                "metadata.name",
                "FieldValueRequired",
                "Required value: name or generateName is required",
            ));
        }
        if !meta::is_dns_subdomain(&name) {
            return Err(ApiError::invalid(
                res,
                &name,
                "metadata.name",
                "FieldValueInvalid",
                &format!(
                    "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                ),
            ));
        }
        let key = (
            res,
            if res.namespaced() {
                ns.into()
            } else {
                String::new()
            },
            name.clone(),
        );
        if st.objects.contains_key(&key) {
            return Err(ApiError::already_exists(res, &name));
        }
        st.rv += 1;
        let rv = st.rv;
        obj["kind"] = json!(res.kind());
        obj["apiVersion"] = json!(res.api_version());
        let md = &mut obj["metadata"];
        if !md.is_object() {
            *md = json!({});
        }
        md["name"] = json!(name);
        if res.namespaced() {
            md["namespace"] = json!(ns);
        } else if let Some(m) = md.as_object_mut() {
            m.remove("namespace");
        }
        md["uid"] = json!(meta::new_uid());
        md["resourceVersion"] = json!(rv.to_string());
        md["creationTimestamp"] = json!(meta::now_rfc3339());
        md["generation"] = json!(1);
        if let Some(m) = md.as_object_mut() {
            m.remove("deletionTimestamp");
            m.remove("selfLink");
        }
        fill(&mut obj);
        st.objects.insert(key, obj.clone());
        self.emit(&mut st, res, EventType::Added, obj.clone(), None);
        Ok(obj)
    }

    /// One object.
    pub(crate) fn get(&self, res: Res, ns: &str, name: &str) -> Option<Value> {
        let ns = if res.namespaced() { ns } else { "" };
        self.lock()
            .objects
            .get(&(res, ns.to_owned(), name.to_owned()))
            .cloned()
    }

    /// `f` of one object, without copying it: `None` when there is no such object.
    pub(crate) fn peek<R>(
        &self,
        res: Res,
        ns: &str,
        name: &str,
        f: impl FnOnce(&Value) -> R,
    ) -> Option<R> {
        let ns = if res.namespaced() { ns } else { "" };
        self.lock()
            .objects
            .get(&(res, ns.to_owned(), name.to_owned()))
            .map(f)
    }

    /// Runs `f` on every object of `res` in `ns` (or in all namespaces), without copying
    /// them. The store is locked meanwhile: `f` must not call the store.
    pub(crate) fn scan(&self, res: Res, ns: Option<&str>, mut f: impl FnMut(&Value)) {
        let st = self.lock();
        let from = (res, String::new(), String::new());
        for ((_, n, _), v) in st
            .objects
            .range(from..)
            .take_while(|((r, _, _), _)| *r == res)
        {
            if ns.is_none_or(|ns| !res.namespaced() || n == ns) {
                f(v);
            }
        }
    }

    /// Every object of `res`, in `ns` or in all namespaces, and the resourceVersion of the list.
    pub(crate) fn list(&self, res: Res, ns: Option<&str>) -> (Vec<Value>, u64) {
        let st = self.lock();
        let items = st
            .objects
            .iter()
            .filter(|((r, n, _), _)| *r == res && ns.is_none_or(|ns| !res.namespaced() || n == ns))
            .map(|(_, v)| v.clone())
            .collect();
        (items, st.rv)
    }

    /// Changes one object with `f`; a real change bumps its resourceVersion and emits MODIFIED.
    /// `expected_rv`, when given, must match the stored one (else Conflict).
    pub(crate) fn update(
        &self,
        res: Res,
        ns: &str,
        name: &str,
        expected_rv: Option<&str>,
        f: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let ns = if res.namespaced() { ns } else { "" };
        let key = (res, ns.to_owned(), name.to_owned());
        let mut st = self.lock();
        let Some(current) = st.objects.get(&key) else {
            return Err(ApiError::not_found(res, name));
        };
        if let Some(expected) = expected_rv.filter(|e| !e.is_empty()) {
            if current["metadata"]["resourceVersion"].as_str() != Some(expected) {
                return Err(ApiError::conflict(res, name));
            }
        }
        let mut next = current.clone();
        f(&mut next)?;
        // Identity fields cannot change.
        for field in ["uid", "creationTimestamp", "name", "namespace"] {
            next["metadata"][field] = current["metadata"][field].clone();
            if next["metadata"][field].is_null() {
                if let Some(m) = next["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
        next["kind"] = json!(res.kind());
        next["apiVersion"] = json!(res.api_version());
        next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        if next == *current {
            return Ok(next);
        }
        // Pods keep generation 1 (the kubelet's binding and status writes are not spec edits).
        if res != Res::Pod && next["spec"] != current["spec"] {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
            next["metadata"]["generation"] = json!(generation + 1);
        }
        st.rv += 1;
        next["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let old = st.objects.insert(key, next.clone());
        self.emit(&mut st, res, EventType::Modified, next.clone(), old);
        Ok(next)
    }

    /// Removes one object, emitting DELETED; `None` when it was not there.
    pub(crate) fn remove(&self, res: Res, ns: &str, name: &str) -> Option<Value> {
        let ns = if res.namespaced() { ns } else { "" };
        let mut st = self.lock();
        let mut obj = st.objects.remove(&(res, ns.to_owned(), name.to_owned()))?;
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        self.emit(&mut st, res, EventType::Deleted, obj.clone(), None);
        Some(obj)
    }

    /// Starts a watch on `res` in `ns` (all namespaces when `None`). With `since` = `None` the
    /// backlog is an ADDED event per existing object; with `Some(rv)` it is every recorded
    /// change after `rv`, or `Err(oldest)` when `rv` is older than the history kept.
    pub(crate) fn watch(
        &self,
        res: Res,
        ns: Option<&str>,
        since: Option<u64>,
    ) -> Result<WatchStart, u64> {
        let st = self.lock();
        let live = self.events.subscribe();
        let in_scope = |e: &Event| {
            e.res == res && ns.is_none_or(|ns| !res.namespaced() || e.namespace() == ns)
        };
        let backlog = match since {
            None => st
                .objects
                .iter()
                .filter(|((r, n, _), _)| {
                    *r == res && ns.is_none_or(|ns| !res.namespaced() || n == ns)
                })
                .map(|(_, v)| Event {
                    res,
                    typ: EventType::Added,
                    rv: v["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                    object: Arc::new(v.clone()),
                    old: None,
                })
                .collect(),
            Some(rv) => {
                let oldest = st.history.front().map_or(st.rv, |e| e.rv);
                if rv + 1 < oldest && rv < st.rv {
                    return Err(oldest);
                }
                st.history
                    .iter()
                    .filter(|e| e.rv > rv && in_scope(e))
                    .cloned()
                    .collect()
            }
        };
        Ok(WatchStart {
            rv: st.rv,
            backlog,
            live,
        })
    }
}
