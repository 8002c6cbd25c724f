//! A Docker-backed Kubernetes API simulator, for tests.
//!
//! [`Sim::start`] runs a single-node API server on `127.0.0.1` (a random port, plain HTTP, no
//! authentication) that speaks enough of the real HTTP API for `kubectl` and kube-rs:
//! discovery, namespaces, core/v1 pods (with `log` and websocket `exec`), persistent volume
//! claims and batch/v1 jobs, with list, watch, label and field selectors and `Status` errors.
//! Everything is allowed unless a test denies it: [`Sim::deny`] makes a verb on a resource
//! answer the API server's 403 and `SelfSubjectAccessReview`s (`kubectl auth can-i`) say no.
//! Every pod is a real Docker container, every claim a Docker volume, and a job controller
//! creates the pods of jobs. Everything the simulator creates in Docker carries the label
//! [`INSTANCE_LABEL`] and is removed when the [`Sim`] is dropped or shut down, even when a test
//! panics. Objects left by a process that was killed outright ([`PID_LABEL`] names a process
//! of this pid namespace that is gone) are removed when the next simulator starts.
//!
//! The simulator runs on a runtime of its own (two worker threads), so a test may block on a
//! child process such as `kubectl` without stalling it.
//!
//! # The node
//!
//! One node, [`NODE_NAME`], whose allocatable CPU and memory are the host's
//! ([`NodeSize::of_host`]: available parallelism, `MemTotal`), or what
//! [`Sim::start_with_node`] says. A pod whose requests (limits where requests are missing) do
//! not fit beside the requests of the other bound, unfinished pods stays Pending with the
//! scheduler's `Unschedulable` condition; so does a pod naming a missing claim, or a claim
//! still Pending ([`Sim::bind_claims_after`]). [`Sim::autoscale`] adds a cluster-autoscaler:
//! `TriggeredScaleUp` (or `NotTriggerScaleUp`) on the pod, then a second node,
//! [`SCALED_NODE_NAME`], the pod is scheduled on (its containers still run on this host).
//!
//! # Images
//!
//! `imagePullPolicy` is honoured: `Never` runs only what Docker has (else
//! `ErrImageNeverPull`, "Container image "X" is not present with pull policy of Never");
//! `Always` pulls through Docker (without a registry that fails with Docker's message,
//! `ErrImagePull` then `ImagePullBackOff`); `IfNotPresent` runs what Docker has and answers a
//! missing image as a registry answers for one that does not exist ("pull access denied ...
//! repository does not exist"). [`Sim::fail_pulls`] makes pulls fail a given number of times
//! with a registry's rate-limit answer, then succeed.
//!
//! # Admission
//!
//! Pods (a Job's too, whose refusal becomes the Job's `FailedCreate` event) pass, in the API
//! server's order: LimitRange (`type: Container` `default`/`defaultRequest` filled in, `max`/
//! `min` enforced), Pod Security admission from the namespace label
//! `pod-security.kubernetes.io/enforce` (`baseline`, `restricted`; the checks on
//! securityContext, capabilities, host namespaces and hostPath volumes, worded as the plugin
//! words them: `pods "x" is forbidden: violates PodSecurity "restricted:latest": ...`), then
//! ResourceQuota (`pods`, `cpu`, `memory`, `requests.*`, `limits.*`: "exceeded quota: ..." or
//! "failed quota: ...: must specify ...").
//!
//! # How a pod maps to Docker
//!
//! One container per pod container, named `k8s-sim-<instance>-<pod>-<uid8>-<container>`,
//! labelled with [`INSTANCE_LABEL`], the pod's own labels, and `io.kubernetes.*` names:
//! `image` as is (pulled as above), `command` → Entrypoint, `args` → Cmd, `env` (values and
//! `fieldRef`), `workingDir`, `runAsUser`/`runAsGroup` → User, `fsGroup` and
//! `supplementalGroups` → GroupAdd, `limits.memory` → Memory (no swap), `limits.cpu` →
//! NanoCpus, `capabilities` → CapAdd/CapDrop, `allowPrivilegeEscalation: false` →
//! `no-new-privileges`, `readOnlyRootFilesystem`, `privileged`, `tty`/`stdin`; every container
//! gets a pids limit of 512, as a kubelet's `podPidsLimit` would.
//! `runAsNonRoot` with a root user is CreateContainerConfigError, as on a kubelet. As on a node,
//! the container's command is its PID 1 and reaps no orphans; a pod with
//! `shareProcessNamespace: true` gets Docker's init as a reaping PID 1 instead, standing in for
//! the sandbox's pause process.
//!
//! # Virtual pods and the request counter
//!
//! [`Sim::virtual_pods`] switches to pods without containers of their own, as kwok runs them,
//! so that a thousand environments fit on one machine: new pods are bound and Running at once,
//! and exec and logs of any of them reach one shared real container. [`Sim::requests`] counts
//! every request served by verb and resource (a watch once, when opened; see [`Requests`]);
//! [`Sim::reset_requests`] zeroes it. The benchmark's API budget (`berth-bench budget`) reads
//! both.
//!
//! # Speaking as kube-apiserver 1.33 does
//!
//! - `/version` and the node say v1.33.0; the field schema is Kubernetes 1.33's (k8s-openapi
//!   `v1_33`).
//! - Bodies are JSON or YAML (`application/yaml`). Quantities are stored in apimachinery's
//!   canonical form (`1000m` reads back as `1`, `1.5Gi` as `1536Mi`); a malformed one is 400.
//! - Unknown fields are dropped, never stored; `fieldValidation=Strict` refuses them with the
//!   decoder's 400 (`Job in version "v1" cannot be handled as a Job: strict decoding error:
//!   unknown field "spec.bogus"`), `Warn` (the default) answers one `Warning` header per field,
//!   `Ignore` is silent. This holds for create, update and patch.
//! - Every pod, also one a controller creates, gets what admission gives it: a
//!   `serviceAccountName` (`default` when unset) and the `DefaultTolerationSeconds`
//!   tolerations; a Job's pods carry the `batch.kubernetes.io/job-tracking` finalizer until
//!   the controller has counted them.
//! - Exec on a pod with no node is 400 "pod NAME does not have a host assigned"; its logs are
//!   204 with no body, as the API server answers when it has no kubelet to ask.
//! - Exec stream options are booleans as the API server converts them (absent is false); an
//!   exec asking for none of stdin, stdout, stderr is the kubelet's plain-text 400 "you must
//!   specify at least 1 of stdin, stdout, stderr". Stdin may come in text frames as well as
//!   binary ones (the Python client sends text).
//!
//! # What the simulator does not model (knowingly)
//!
//! - JSON and YAML only: no protobuf or CBOR bodies (answered with 415). kubectl 1.32+ sends
//!   protobuf for its built-in generators (`kubectl create namespace|deployment ...`);
//!   use `kubectl create -f` instead. The exceptions are Secrets and ConfigMaps (`kubectl
//!   create secret generic`, `kubectl create configmap`) and a `SelfSubjectAccessReview`
//!   (`kubectl auth can-i` 1.32+), which are also read from protobuf and answered in JSON. Server-side apply is a plain merge patch (kubectl
//!   sends it as JSON): no field managers, no conflicts, no creation of a missing object.
//!   kubectl before 1.30 execs over SPDY, which is refused.
//! - No authentication: every request is `system:anonymous`. Authorization allows
//!   everything except what [`Sim::deny`] lists (exact verb and resource, no wildcards, no
//!   roles or bindings); `SelfSubjectAccessReview` is the only authorization API (no
//!   `SelfSubjectRulesReview`, so `kubectl auth can-i --list` fails). Admission is only what
//!   the section above lists (no webhooks, no `warn`/`audit` Pod Security modes, no
//!   AppArmor, sysctl, volume-type or seccomp-on-baseline checks, quotas count no storage or
//!   object counts besides pods, and their `status.used` is not kept), no
//!   defaulting beyond the fields listed in the code, and light validation (names,
//!   containers, images, a job's restartPolicy, a claim's size and access modes). The OpenAPI v3 documents only declare
//!   the `fieldValidation` parameter (kubectl reads it to pick server-side validation), they
//!   have no schemas; `/openapi/v2` is 404.
//! - Field validation is a typed round trip through k8s-openapi: a body the typed decoder
//!   refuses outright (a value of the wrong type, a missing required field) is not checked
//!   for unknown fields but goes on to the simulator's own validation; duplicate fields are
//!   not reported; the top-level `status` a client sends is not checked (the simulator writes
//!   it).
//! - Service accounts: there are no ServiceAccount objects, so a pod naming one that does not
//!   exist is not refused, and no token volume (`kube-api-access-*`) is added, whatever
//!   `automountServiceAccountToken` says.
//! - Tolerations and taints: the node has no taints and never becomes unready, so tolerations
//!   are stored but never evaluated, and nothing is evicted.
//! - Finalizers do not hold up a deletion: a pod is removed at once, its job-tracking
//!   finalizer included.
//! - `shareProcessNamespace` gives each container its own reaping init: containers of one pod
//!   do not see each other's processes.
//! - Discovery is the unaggregated kind (`/api`, `/apis`, resource lists); kubectl and
//!   kube-rs fall back to it.
//! - Resources: namespaces, nodes (one, two after a scale-up; read-mostly), pods (`log`,
//!   `exec`, `status`; logs honour `timestamps`, `sinceTime` and `sinceSeconds` to the
//!   second, as Docker's `since`), events, persistentvolumeclaims, resourcequotas,
//!   limitranges, jobs (`status`), cronjobs, selfsubjectaccessreviews, secrets and configmaps
//!   (read by the kubelet for `envFrom`, `secretKeyRef`/`configMapKeyRef` and
//!   `secret`/`configMap` volumes, with the kubelet's messages for missing ones; a missing
//!   volume source is a FailedMount event and ContainerCreating, as on a node). Secret volumes
//!   are files in a Docker volume written once at start: later changes to the Secret do not
//!   reach a running pod. `limit`/`continue` are ignored: lists come whole.
//! - CronJobs: a controller starts `<name>-<minutes since the epoch>` Jobs, owned by the
//!   CronJob, at each scheduled minute (five fields of numbers, `*`, ranges, lists, steps, or
//!   `@daily`-style macros; no month or day names, no `timeZone`), honours `suspend` and
//!   `concurrencyPolicy` (`Forbid` skips a run while one is active, `Replace` removes the
//!   active ones first), removes finished Jobs beyond `successfulJobsHistoryLimit` (default 3)
//!   and `failedJobsHistoryLimit` (default 1), keeps `status.active`, `lastScheduleTime` and
//!   `lastSuccessfulTime`, and deletes the Jobs of a deleted CronJob. `Sim::fire_cron_job`
//!   starts this minute's Job at once, for tests.
//! - Argo Workflows: after `Sim::install_argo_crds`, `argoproj.io/v1alpha1` `workflows` and
//!   `cronworkflows` are stored (with `status`, watch and discovery) but never run, and their
//!   fields are not checked against a schema; before it their paths are a plain-text 404.
//! - Watches: history of the last 20 000 changes for resourceVersion resumes (older is 410
//!   Expired; the real server keeps about 5 minutes). As on the real server, a change that
//!   moves an object into or out of a watch's selectors arrives as ADDED or DELETED. With
//!   `allowWatchBookmarks=true` a bookmark comes every 10 s, and `sendInitialEvents=true` gets
//!   the initial-events-end bookmark; `timeoutSeconds` is honoured, otherwise a watch lasts
//!   until the client leaves. `resourceVersionMatch` is ignored.
//! - PATCH applies JSON merge patches (strategic merge patches too, so lists are replaced, not
//!   merged) and a subset of JSON patch.
//! - Pods: a restart (`restartPolicy` Always, or OnFailure after a failure) is a new Docker
//!   container after a back-off of 1, 2, 4, 8, then 16 s (the kubelet's starts at 10 s and
//!   caps at 5 min), shown as CrashLoopBackOff meanwhile; the last dead one is kept for
//!   `logs --previous`. A job with OnFailure counts container restarts as failures against
//!   its backoffLimit. A pod's own `activeDeadlineSeconds` kills it (Failed,
//!   DeadlineExceeded). Init containers run one after the other, each to its end, before the
//!   pod's containers are created (`initContainerStatuses`, the `Initialized` condition); a
//!   failed one fails the pod under `restartPolicy: Never`, else runs again after a back-off.
//!   No probes, ephemeral containers or readiness gates;
//!   deletion removes the containers at once (`docker rm -f`, no grace period) and then the object; a
//!   failed pull is ErrImagePull, then ImagePullBackOff, retried with a
//!   back-off capped at 16 s; only `persistentVolumeClaim`, `emptyDir` and `hostPath`
//!   volumes (others are CreateContainerConfigError), and env `valueFrom` only for
//!   `fieldRef` (secrets and config maps are "not found"). `subPath` binds the sub-directory
//!   of the volume's directory on the host (Docker 20.10 has no volume subpath), so the
//!   daemon must be local and the simulator must be able to create directories there (root).
//!   `fsGroup` chowns the volume's directory (not recursively) and adds the group.
//!   The pod IP is the container's bridge address; `hostIP` is 127.0.0.1.
//! - Exec: websocket only (`v5.channel.k8s.io`, `v4.channel.k8s.io`); SPDY upgrades and the
//!   base64 protocols are refused. Attach and port-forward are not served.
//! - Jobs: the first pod is created inside the create request (a real controller is a moment
//!   later), so `kubectl wait -l job-name=...` right after `kubectl create` finds it; no pod
//!   failure backoff delay (a failed pod is replaced at once); no indexed jobs,
//!   `podFailurePolicy` or `successPolicy`. Jobs default to orphaning
//!   their pods when deleted without a propagation policy, as batch/v1 does.
//! - Claims bind at once (or after [`Sim::bind_claims_after`]) to a Docker volume (no storage
//!   classes, no `WaitForFirstConsumer`, no PersistentVolume objects); deleting a claim removes it at once (no `pvc-protection` finalizer) and its
//!   volume as soon as no container uses it.
//! - Namespace deletion removes the namespace's jobs, pods, claims and events, then the
//!   namespace; `default`, `kube-system` and `kube-public` cannot be deleted (403).
//! - The network between client and server: the simulator serves loopback HTTP and never
//!   loses or stalls a connection by itself (only [`Sim::drop_exec_connections`] and a killed
//!   process do); half-open connections and watches that go silent are made by a TCP proxy in
//!   the tests (`crates/engine-k8s/tests/common/proxy.rs`). No API Priority and Fairness (no
//!   429 with `Retry-After` under load) and no request timeout (kube-apiserver ends a request
//!   other than a watch after 60 s, and a watch without `timeoutSeconds` after a random 30 to
//!   60 minutes).
//!
//! ```no_run
//! # async fn demo() -> Result<(), berth_k8s_sim::SimError> {
//! let sim = berth_k8s_sim::Sim::start().await?;
//! let kubeconfig = std::env::temp_dir().join("sim-kubeconfig");
//! sim.write_kubeconfig(&kubeconfig)?;
//! // KUBECONFIG=... kubectl get pods
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

mod admission;
mod api;
mod authz;
mod docker;
mod errors;
mod exec;
mod expire;
mod fields;
mod jobs;
mod kubelet;
mod meta;
mod node;
mod openapi;
mod quantity;
mod requests;
mod secrets;
mod store;
mod tables;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use serde_json::json;

/// The Docker label every container and volume of a simulator instance carries; its value is
/// the instance id ([`Sim::instance_id`]).
pub const INSTANCE_LABEL: &str = "berth.dev/k8s-sim";

/// The Docker label naming the process that ran the simulator: objects of processes that are
/// gone (killed before they could clean up) are removed when the next simulator starts.
pub const PID_LABEL: &str = "berth.dev/k8s-sim-pid";

/// The name of the simulator's only node.
pub const NODE_NAME: &str = "berth-sim-node";

/// An error starting the simulator or writing its kubeconfig.
#[derive(Debug)]
pub struct SimError(String);

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SimError {}

impl From<std::io::Error> for SimError {
    fn from(e: std::io::Error) -> Self {
        Self(e.to_string())
    }
}

use node::Autoscaler;
pub use node::{NodeSize, SCALED_NODE_NAME};
pub use requests::Requests;

/// State shared by the server, the controllers and the pod workers.
pub(crate) struct Inner {
    pub(crate) id: String,
    pub(crate) store: store::Store,
    pub(crate) docker: Docker,
    pub(crate) node: NodeSize,
    pub(crate) addr: SocketAddr,
    /// Uids of pods that have a worker.
    pub(crate) kubelets: Mutex<HashSet<String>>,
    /// The deny list: `(verb, resource[/subresource])` pairs ([`Sim::deny`]).
    pub(crate) denied: Mutex<HashSet<(String, String)>>,
    /// Image → (pulls left to fail, the registry's message) ([`Sim::fail_pulls`]).
    pub(crate) pull_faults: Mutex<std::collections::HashMap<String, (u32, String)>>,
    /// Nodes beyond the first: added by the autoscaler ([`Sim::autoscale`]).
    pub(crate) extra_nodes: Mutex<Vec<(String, NodeSize)>>,
    /// The autoscaler, when one was asked for ([`Sim::autoscale`]).
    pub(crate) autoscaler: Mutex<Option<Autoscaler>>,
    /// How long new claims stay Pending before they bind ([`Sim::bind_claims_after`]).
    pub(crate) claim_bind_delay: Mutex<Option<Duration>>,
    pub(crate) stopping: AtomicBool,
    /// Notified to drop every open exec connection ([`Sim::drop_exec_connections`]).
    pub(crate) exec_cut: tokio::sync::Notify,
    /// Job uid → uids of its pods deleted before they finished: the job controller counts
    /// them as failed even after they are gone (a real one keeps them with its tracking
    /// finalizer until counted).
    pub(crate) deleted_unfinished: Mutex<std::collections::HashMap<String, HashSet<String>>>,
    /// Held while the Job controller reconciles: it runs from its own loop and from the API
    /// handler that creates a Job, and two runs at once would both see a new Job without a
    /// pod and create two.
    pub(crate) reconciling: Mutex<()>,
    /// Whether Argo's CRDs are "installed" ([`Sim::install_argo_crds`]).
    pub(crate) argo_crds: AtomicBool,
    /// Watch expiry on demand ([`Sim::expire_watches`]).
    pub(crate) expiry: expire::Expiry,
    /// Every request served, by verb and resource ([`Sim::requests`]).
    pub(crate) requests: requests::Counter,
    /// The shared container of virtual pods, once [`Sim::virtual_pods`] has been called.
    pub(crate) virtual_node: std::sync::OnceLock<kubelet::VirtualNode>,
}

impl Inner {
    /// Labels for a Docker object of this instance.
    pub(crate) fn docker_labels(
        &self,
        own: Option<&serde_json::Value>,
    ) -> std::collections::HashMap<String, String> {
        let mut labels: std::collections::HashMap<String, String> = own
            .and_then(serde_json::Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        labels.insert(INSTANCE_LABEL.to_owned(), self.id.clone());
        labels.insert(PID_LABEL.to_owned(), docker::pid_label());
        labels
    }
}

/// A running simulator. Dropping it stops the server and removes every Docker container and
/// volume it created.
pub struct Sim {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
    base_url: String,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("id", &self.inner.id)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// Starts a simulator: connects to Docker (`DOCKER_HOST`, else the default socket), binds a
    /// random port on `127.0.0.1` and creates the `default` namespace.
    ///
    /// # Errors
    /// When Docker cannot be reached or the port cannot be bound.
    pub async fn start() -> Result<Self, SimError> {
        Self::start_with_node(NodeSize::of_host()).await
    }

    /// Like [`Sim::start`] with a node of the given size.
    ///
    /// # Errors
    /// When Docker cannot be reached or the port cannot be bound.
    pub async fn start_with_node(node: NodeSize) -> Result<Self, SimError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("k8s-sim")
            .enable_all()
            .build()?;
        let started = runtime.spawn(async move {
            let docker = docker::connect_docker().await?;
            docker::remove_orphans(&docker).await;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
            let inner = Arc::new(Inner {
                id,
                store: store::Store::new(),
                docker,
                node,
                addr,
                kubelets: Mutex::new(HashSet::new()),
                denied: Mutex::new(HashSet::new()),
                pull_faults: Mutex::new(std::collections::HashMap::new()),
                extra_nodes: Mutex::new(Vec::new()),
                autoscaler: Mutex::new(None),
                claim_bind_delay: Mutex::new(None),
                stopping: AtomicBool::new(false),
                exec_cut: tokio::sync::Notify::new(),
                deleted_unfinished: Mutex::default(),
                reconciling: Mutex::default(),
                argo_crds: AtomicBool::new(false),
                expiry: expire::Expiry::default(),
                requests: requests::Counter::default(),
                virtual_node: std::sync::OnceLock::new(),
            });
            for ns in ["default", "kube-system", "kube-public"] {
                inner
                    .store
                    .create(
                        store::Res::Namespace,
                        "",
                        api::default_namespace(json!({"metadata": {"name": ns}})),
                    )
                    .map_err(|e| SimError(e.message))?;
            }
            let runtime_version = node::runtime_version(&inner.docker).await;
            inner
                .store
                .create(
                    store::Res::Node,
                    "",
                    node::node_object(NODE_NAME, &node, &runtime_version),
                )
                .map_err(|e| SimError(e.message))?;
            tokio::spawn(api::serve(inner.clone(), listener));
            tokio::spawn(jobs::run(inner.clone()));
            Ok::<_, SimError>(inner)
        });
        let inner = match started.await {
            Ok(Ok(inner)) => inner,
            Ok(Err(e)) => {
                runtime.shutdown_background();
                return Err(e);
            }
            Err(e) => {
                runtime.shutdown_background();
                return Err(SimError(format!("the simulator failed to start: {e}")));
            }
        };
        let base_url = format!("http://{}", inner.addr);
        Ok(Self {
            inner,
            runtime: Some(runtime),
            base_url,
        })
    }

    /// The API server's base URL, e.g. `http://127.0.0.1:40123`.
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The instance id: the value of [`INSTANCE_LABEL`] on this instance's Docker objects.
    #[must_use]
    pub fn instance_id(&self) -> &str {
        &self.inner.id
    }

    /// The node's allocatable resources.
    #[must_use]
    pub fn node_size(&self) -> NodeSize {
        self.inner.node
    }

    /// A kubeconfig (as JSON, which is valid YAML) for this simulator: one cluster on
    /// [`Sim::base_url`], no credentials, context `berth-sim`, namespace `default`.
    #[must_use]
    pub fn kubeconfig(&self) -> String {
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "berth-sim", "cluster": {"server": self.base_url}}],
            "users": [{"name": "berth-sim", "user": {}}],
            "contexts": [{"name": "berth-sim", "context": {
                "cluster": "berth-sim", "user": "berth-sim", "namespace": "default"}}],
            "current-context": "berth-sim",
            "preferences": {},
        });
        serde_json::to_string_pretty(&config).unwrap_or_default()
    }

    /// Writes [`Sim::kubeconfig`] to `path`.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), SimError> {
        std::fs::write(path, self.kubeconfig()).map_err(SimError::from)
    }

    /// Starts the CronJob `namespace/name`'s Job now, as its schedule would at the start of
    /// this minute (named `<name>-<minutes since the epoch>`, owned by the CronJob), so a test
    /// need not wait for the schedule; returns the Job's name. The controller also starts Jobs
    /// by itself at each scheduled minute.
    ///
    /// # Errors
    /// When there is no such CronJob, or this minute's Job exists already.
    pub fn fire_cron_job(&self, namespace: &str, name: &str) -> Result<String, String> {
        let cron = self
            .inner
            .store
            .get(store::Res::CronJob, namespace, name)
            .ok_or_else(|| format!("no cronjob {namespace}/{name}"))?;
        let now = meta::now_secs();
        let name = jobs::start_cron_run(&self.inner, &cron, now - now.rem_euclid(60))
            .map_err(|e| format!("{e:?}"))?;
        jobs::reconcile(&self.inner);
        Ok(name)
    }

    /// From now on, refuses requests with `verb` on `resource` with the API server's 403
    /// `Forbidden` `Status`, as RBAC does when nothing grants them; `SelfSubjectAccessReview`s
    /// (`kubectl auth can-i`) answer no.
    ///
    /// `verb` is an authorization verb: `get`, `list`, `watch`, `create`, `update`, `patch`,
    /// `delete` or `deletecollection` (a GET of a collection is `list`, or `watch` with
    /// `watch=true`; a DELETE of one is `deletecollection`). `resource` is the plural,
    /// optionally with a subresource: `jobs`, `pods`, `pods/exec`, `pods/log`, `jobs/status`,
    /// `persistentvolumeclaims`, `namespaces`. The API group follows from the resource (`jobs`
    /// is `batch`, the others are core). A websocket exec is a `get` of `pods/exec` that must
    /// also be allowed to `create` it, as on Kubernetes 1.35 and later; denying
    /// `create` on `pods/exec` refuses every exec.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), berth_k8s_sim::SimError> {
    /// let sim = berth_k8s_sim::Sim::start().await?;
    /// sim.deny("create", "jobs");
    /// sim.deny("create", "pods/exec");
    /// // kubectl create -f job.yaml: Error from server (Forbidden): ... jobs.batch is forbidden:
    /// // User "system:anonymous" cannot create resource "jobs" in API group "batch" in the
    /// // namespace "default"
    /// sim.allow("create", "jobs");
    /// # Ok(()) }
    /// ```
    pub fn deny(&self, verb: &str, resource: &str) {
        self.inner
            .denied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((verb.to_owned(), resource.to_owned()));
    }

    /// Takes `verb` on `resource` off the deny list again (see [`Sim::deny`]); nothing
    /// happens when it is not on it.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), berth_k8s_sim::SimError> {
    /// let sim = berth_k8s_sim::Sim::start().await?;
    /// sim.deny("list", "pods");
    /// // GET /api/v1/namespaces/default/pods is 403 Forbidden
    /// sim.allow("list", "pods");
    /// // ... and 200 again
    /// # Ok(()) }
    /// ```
    pub fn allow(&self, verb: &str, resource: &str) {
        self.inner
            .denied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(verb.to_owned(), resource.to_owned()));
    }

    /// Makes the next `times` pulls of `image` fail with a registry's rate-limit answer
    /// (`toomanyrequests`, a transient reason) and the one after succeed, as a registry
    /// hiccup does: the node acts as if it did not have `image` until then, so even
    /// `IfNotPresent` pulls it. The pods show `ErrImagePull`, then `ImagePullBackOff`, then run.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), berth_k8s_sim::SimError> {
    /// let sim = berth_k8s_sim::Sim::start().await?;
    /// sim.fail_pulls("berth-test/busybox:2", 2);
    /// // a pod of that image runs after two failed pulls and their back-offs (1 s, 2 s)
    /// # Ok(()) }
    /// ```
    pub fn fail_pulls(&self, image: &str, times: u32) {
        let message = "Error response from daemon: toomanyrequests: You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit";
        self.inner
            .pull_faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(image.to_owned(), (times, message.to_owned()));
    }

    /// Adds a cluster-autoscaler with one node group that may grow by one node of `node`'s
    /// size: a pod that fits no node but would fit the new one gets the autoscaler's
    /// `TriggeredScaleUp` event at once, and the node ([`SCALED_NODE_NAME`]) joins `delay`
    /// later, when the scheduler places the pod there. A pod that would not fit it either
    /// gets `NotTriggerScaleUp`. Without this call, the cluster is fixed and no autoscaler
    /// says anything, as on a cluster without one.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), berth_k8s_sim::SimError> {
    /// let sim = berth_k8s_sim::Sim::start().await?;
    /// let node = sim.node_size();
    /// sim.autoscale(node, std::time::Duration::from_secs(5));
    /// # Ok(()) }
    /// ```
    pub fn autoscale(&self, node: NodeSize, delay: Duration) {
        *self
            .inner
            .autoscaler
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Autoscaler {
            node,
            delay,
            triggered: false,
        });
    }

    /// Claims created from now on stay `Pending` (the provisioner's `ExternalProvisioning`
    /// event) for `delay`, then bind; a pod using one meanwhile stays Pending with the
    /// scheduler's "pod has unbound immediate PersistentVolumeClaims".
    pub fn bind_claims_after(&self, delay: Duration) {
        *self
            .inner
            .claim_bind_delay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(delay);
    }

    /// A fault: drops every open exec connection at once, as a network failure or an API
    /// server restart would: the TCP connection closes without a websocket close frame and
    /// without an exit status. The commands themselves keep running in their containers.
    pub fn drop_exec_connections(&self) {
        self.inner.exec_cut.notify_waiters();
    }

    /// "Installs" Argo Workflows' CRDs: from now on `argoproj.io/v1alpha1` `workflows` and
    /// `cronworkflows` are served (create, get, list, watch, patch, `status`, delete) and
    /// listed by discovery, stored only: no Workflow controller runs them, so a test plays
    /// the controller (creates the pods, patches `status.phase`). Before it, their paths are
    /// the API server's plain `404 page not found` for a group it does not serve.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), berth_k8s_sim::SimError> {
    /// let sim = berth_k8s_sim::Sim::start().await?;
    /// // GET /apis/argoproj.io/v1alpha1/namespaces/default/workflows is 404
    /// sim.install_argo_crds();
    /// // ... and now an empty WorkflowList
    /// # Ok(()) }
    /// ```
    pub fn install_argo_crds(&self) {
        self.inner
            .argo_crds
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Switches to virtual pods, as kwok runs them, so that a thousand pods fit on one
    /// machine: from now on a new pod (a Job's too) is bound to the node at once, whatever
    /// its requests, and reported Running at once (its `PodScheduled`, `Initialized`,
    /// `ContainersReady` and `Ready` conditions true, each container `running` and ready,
    /// the Job's `active` and `ready` counted) without a Docker container of its own. Every
    /// container of every virtual pod names ONE shared real container as its `containerID`:
    /// `exec` and `log` on any virtual pod reach that container, started here once from
    /// `image` (its command replaced by a long `sleep`), labelled with [`INSTANCE_LABEL`] and
    /// removed with the simulator. Deleting a virtual pod completes as for a real one: the
    /// deletion timestamp, then the object is gone.
    ///
    /// A virtual pod's own command, image, volumes, user and limits are not applied (the
    /// shared container runs the same for all), its containers never exit (it stays Running
    /// until deleted, as under kwok), and it records no kubelet events (only the
    /// scheduler's); `activeDeadlineSeconds` still fails it. Pods created before the call
    /// keep their containers. Calling it again changes nothing.
    ///
    /// # Errors
    /// When the shared container cannot be created or started (`image` missing).
    pub async fn virtual_pods(&self, image: &str) -> Result<(), SimError> {
        if self.inner.virtual_node.get().is_some() {
            return Ok(());
        }
        let Some(runtime) = self.runtime.as_ref() else {
            return Err(SimError("the simulator is stopped".to_owned()));
        };
        let inner = self.inner.clone();
        let image = image.to_owned();
        let node = runtime
            .spawn(async move { kubelet::start_shared_container(&inner, &image).await })
            .await
            .map_err(|e| SimError(format!("starting virtual pods: {e}")))?
            .map_err(SimError)?;
        if let Err(extra) = self.inner.virtual_node.set(node) {
            // A concurrent call won: its container serves; this one's goes now.
            let docker = self.inner.docker.clone();
            let _ = runtime
                .spawn(async move {
                    let _ = docker
                        .remove_container(
                            &extra.container,
                            Some(bollard::query_parameters::RemoveContainerOptions {
                                force: true,
                                ..Default::default()
                            }),
                        )
                        .await;
                })
                .await;
        }
        Ok(())
    }

    /// The Docker id of the virtual pods' shared container, once [`Sim::virtual_pods`] has
    /// started it.
    #[must_use]
    pub fn virtual_container(&self) -> Option<&str> {
        self.inner.virtual_node.get().map(|n| n.container.as_str())
    }

    /// The requests served so far, by verb and resource (see [`Requests`]), since the start
    /// or the last [`Sim::reset_requests`].
    #[must_use]
    pub fn requests(&self) -> Requests {
        self.inner.requests.snapshot()
    }

    /// Sets every request count back to zero.
    pub fn reset_requests(&self) {
        self.inner.requests.reset();
    }

    /// Stops the simulator and removes every container and volume it created.
    pub async fn shutdown(mut self) {
        let inner = self.inner.clone();
        if let Some(runtime) = self.runtime.take() {
            let (done, finished) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                stop(runtime, &inner);
                let _ = done.send(());
            });
            let _ = finished.await;
        }
    }
}

fn stop(runtime: tokio::runtime::Runtime, inner: &Inner) {
    inner
        .stopping
        .store(true, std::sync::atomic::Ordering::SeqCst);
    runtime.shutdown_timeout(Duration::from_secs(2));
    let id = inner.id.clone();
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async move {
        let Ok(docker) = docker::connect_docker().await else {
            return;
        };
        for _ in 0..2 {
            docker::remove_instance(&docker, &id).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            let inner = self.inner.clone();
            // A thread of its own: dropping a runtime inside another one's context panics.
            let _ = std::thread::spawn(move || stop(runtime, &inner)).join();
        }
    }
}
