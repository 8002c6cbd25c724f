//! The Kubernetes permissions berth uses, as data: what `berth doctor` checks one by one
//! (SelfSubjectAccessReview) and what `berth render --rbac` grants in a least-privilege Role.

use serde_json::{json, Value};

use crate::config::BerthConfig;
use crate::runs::RunEngine;

/// One verb on one resource berth uses in its namespace, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// The authorization verb: `get`, `list`, `watch`, `create`, `delete`, `patch`,
    /// `deletecollection`.
    pub verb: &'static str,
    /// The API group (`""` for core, `batch`).
    pub group: &'static str,
    /// The resource's plural.
    pub resource: &'static str,
    /// The subresource (`exec`), if any.
    pub subresource: Option<&'static str>,
    /// What berth does with it.
    pub why: &'static str,
}

impl Permission {
    /// `create pods/exec`: how doctor names the check.
    #[must_use]
    pub fn name(&self) -> String {
        format!("{} {}", self.verb, self.resource_path())
    }

    /// `pods/exec` or `jobs`.
    #[must_use]
    pub fn resource_path(&self) -> String {
        match self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.to_owned(),
        }
    }

    /// The Role rule that grants exactly this, as one line of YAML.
    #[must_use]
    pub fn rule(&self) -> String {
        format!(
            "{{apiGroups: [\"{}\"], resources: [\"{}\"], verbs: [\"{}\"]}}",
            self.group,
            self.resource_path(),
            self.verb
        )
    }
}

const fn p(
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    subresource: Option<&'static str>,
    why: &'static str,
) -> Permission {
    Permission {
        verb,
        group,
        resource,
        subresource,
        why,
    }
}

/// Every permission berth uses with `config`: Jobs and pods always; the claim verbs when a
/// workspace claim is configured, created or listed. Nodes and namespaces are cluster-scoped
/// and optional (without them berth cannot tell an oversized request at once, and waits the
/// scale-up grace instead; doctor cannot confirm the namespace), so a namespaced Role leaves
/// them out.
#[must_use]
pub fn required(config: &BerthConfig) -> Vec<Permission> {
    required_with(config, RunEngine::Job)
}

/// [`required`], plus with [`RunEngine::Argo`] the verbs on Argo's `workflows` and
/// `cronworkflows` (argoproj.io) that `berth submit --engine argo`, `status`, `logs`,
/// `ls --runs`, `down` and `gc` use.
#[must_use]
pub fn required_with(config: &BerthConfig, engine: RunEngine) -> Vec<Permission> {
    let mut out = required_jobs(config);
    if engine == RunEngine::Argo {
        for (verb, why) in [
            ("create", "submit --engine argo creates a Workflow"),
            ("get", "status and logs look a Workflow up"),
            ("list", "ls --runs and gc list Workflows"),
            ("patch", "down cancels a Workflow (label, spec.shutdown)"),
            ("delete", "gc removes finished Workflows"),
        ] {
            out.push(p(verb, "argoproj.io", "workflows", None, why));
        }
        for (verb, why) in [
            (
                "create",
                "submit --engine argo --schedule creates a CronWorkflow",
            ),
            ("get", "status looks a CronWorkflow up"),
            ("list", "ls --runs and gc list CronWorkflows"),
            ("delete", "down and gc remove a CronWorkflow"),
        ] {
            out.push(p(verb, "argoproj.io", "cronworkflows", None, why));
        }
    }
    out
}

fn required_jobs(config: &BerthConfig) -> Vec<Permission> {
    let k = &config.kubernetes;
    let mut out = vec![
        p(
            "create",
            "batch",
            "jobs",
            None,
            "start an environment (a Job)",
        ),
        p("get", "batch", "jobs", None, "look up an environment"),
        p("list", "batch", "jobs", None, "ls, gc and stop by session"),
        p(
            "watch",
            "batch",
            "jobs",
            None,
            "follow an environment's Job",
        ),
        p("delete", "batch", "jobs", None, "stop an environment"),
        p(
            "patch",
            "batch",
            "jobs",
            None,
            "up records the environment as detached (a label)",
        ),
        p("get", "", "pods", None, "find an environment's pod"),
        p(
            "list",
            "",
            "pods",
            None,
            "wait for the pod, list claims in use",
        ),
        p("watch", "", "pods", None, "wait until the pod runs"),
        p("create", "", "pods", None, "doctor's image check pod"),
        p(
            "delete",
            "",
            "pods",
            None,
            "remove doctor's image check pod",
        ),
        p(
            "deletecollection",
            "",
            "pods",
            None,
            "stop removes an environment's pods at once",
        ),
        p(
            "create",
            "",
            "pods",
            Some("exec"),
            "run commands and copy files",
        ),
        p(
            "get",
            "",
            "pods",
            Some("exec"),
            "run commands (the websocket upgrade is a GET)",
        ),
        p(
            "list",
            "",
            "events",
            None,
            "see scale-ups and admission refusals while waiting",
        ),
        p(
            "list",
            "",
            "persistentvolumeclaims",
            None,
            "ls --volumes and gc --volumes",
        ),
    ];
    // Batch runs (engine-k8s run.rs): logs from the pod log API; schedules are CronJobs,
    // created, read, listed (`ls --runs`) and deleted (`down`); a cancel deletes the pods and
    // labels the Job (both granted above).
    out.push(p(
        "get",
        "",
        "pods",
        Some("log"),
        "logs and submit --watch read a run's output",
    ));
    for (verb, why) in [
        ("create", "submit --schedule creates a CronJob"),
        ("get", "status and logs look a schedule up"),
        ("list", "ls --runs lists schedules"),
        ("delete", "down removes a schedule"),
    ] {
        out.push(p(verb, "batch", "cronjobs", None, why));
    }
    // An environment's egress policy is a NetworkPolicy named like its Job (netpol.rs):
    // created at start, replaced by `berth network`, deleted by stop.
    if config.runner.network != berth_engine_core::Network::Full {
        for (verb, why) in [
            ("create", "start an environment with its network policy"),
            ("get", "berth network reads the policy it replaces"),
            (
                "update",
                "berth network replaces an environment's network policy",
            ),
            (
                "patch",
                "start hands the policy to the environment's Job (owner)",
            ),
            ("delete", "stop removes the environment's network policy"),
        ] {
            out.push(p(verb, "networking.k8s.io", "networkpolicies", None, why));
        }
    }
    let creates_cache = k.caches.iter().any(|c| c.create.is_some());
    if k.pvc_name.is_some() || k.create_pvc || creates_cache {
        out.push(p(
            "get",
            "",
            "persistentvolumeclaims",
            None,
            "check the workspace claim",
        ));
    }
    if k.create_pvc || creates_cache {
        out.push(p(
            "create",
            "",
            "persistentvolumeclaims",
            None,
            "create a missing workspace claim",
        ));
        out.push(p(
            "delete",
            "",
            "persistentvolumeclaims",
            None,
            "gc --volumes removes claims berth created",
        ));
    }
    out
}

/// The least-privilege Role granting [`required`] in the configured namespace, and the
/// RoleBinding giving it to the service account `subject` (the identity berth runs as; the
/// environments' own `kubernetes.service_account` needs no permissions).
#[must_use]
pub fn objects(config: &BerthConfig, subject: &str) -> Vec<Value> {
    objects_with(config, subject, RunEngine::Job)
}

/// [`objects`] granting [`required_with`] `engine`.
#[must_use]
pub fn objects_with(config: &BerthConfig, subject: &str, engine: RunEngine) -> Vec<Value> {
    let ns = &config.kubernetes.namespace;
    // One rule per (group, resource), verbs in berth's order: short, and each verb visible.
    let mut rules: Vec<(String, String, Vec<&str>)> = Vec::new();
    for perm in required_with(config, engine) {
        let (group, resource) = (perm.group.to_owned(), perm.resource_path());
        match rules
            .iter_mut()
            .find(|(g, r, _)| *g == group && *r == resource)
        {
            Some((_, _, verbs)) => verbs.push(perm.verb),
            None => rules.push((group, resource, vec![perm.verb])),
        }
    }
    let rules: Vec<Value> = rules
        .into_iter()
        .map(|(g, r, v)| json!({"apiGroups": [g], "resources": [r], "verbs": v}))
        .collect();
    let labels = json!({"app.kubernetes.io/managed-by": "berth"});
    vec![
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "berth", "namespace": ns, "labels": labels},
            "rules": rules,
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "berth", "namespace": ns, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "berth"},
            "subjects": [{"kind": "ServiceAccount", "name": subject, "namespace": ns}],
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_verbs_follow_the_config() {
        let mut config = BerthConfig::default();
        let names = |c: &BerthConfig| required(c).iter().map(Permission::name).collect::<Vec<_>>();
        let plain = names(&config);
        assert!(plain.contains(&"create pods/exec".to_owned()));
        assert!(plain.contains(&"watch pods".to_owned()));
        // `berth up` labels its Job detached; stop deletes the Job's pods as a collection.
        assert!(plain.contains(&"patch jobs".to_owned()));
        assert!(plain.contains(&"deletecollection pods".to_owned()));
        assert!(!plain.contains(&"create persistentvolumeclaims".to_owned()));
        // Runs read their logs; schedules are CronJobs.
        for want in [
            "get pods/log",
            "create cronjobs",
            "get cronjobs",
            "list cronjobs",
            "delete cronjobs",
        ] {
            assert!(plain.contains(&want.to_owned()), "{want}");
        }
        let caching = BerthConfig::from_yaml_str(
            "kubernetes:\n  caches: [{claim: cargo, path: /cache, create: {size: 1Gi}}]\n",
        )
        .expect("a cache");
        assert!(names(&caching).contains(&"create persistentvolumeclaims".to_owned()));
        config.kubernetes.create_pvc = true;
        let creating = names(&config);
        for want in [
            "get persistentvolumeclaims",
            "create persistentvolumeclaims",
            "delete persistentvolumeclaims",
        ] {
            assert!(creating.contains(&want.to_owned()), "{want}");
        }
    }

    #[test]
    fn network_policies_are_granted_only_when_the_network_is_limited() {
        let names = |c: &BerthConfig| required(c).iter().map(Permission::name).collect::<Vec<_>>();
        assert!(!names(&BerthConfig::default())
            .iter()
            .any(|n| n.contains("networkpolicies")));
        for yaml in [
            "runner:\n  network: none\n",
            "runner:\n  network: {allow: [10.0.0.0/8:443]}\n",
        ] {
            let config = BerthConfig::from_yaml_str(yaml).expect(yaml);
            let granted = names(&config);
            for verb in ["create", "get", "update", "patch", "delete"] {
                assert!(
                    granted.contains(&format!("{verb} networkpolicies")),
                    "{yaml}: {verb}"
                );
            }
            let role = &objects(&config, "berth")[0];
            assert!(role["rules"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["apiGroups"][0] == "networking.k8s.io"));
        }
    }

    #[test]
    fn argo_adds_its_workflow_verbs_and_nothing_else_does() {
        let config = BerthConfig::default();
        let names = |e| {
            required_with(&config, e)
                .iter()
                .map(Permission::name)
                .collect::<Vec<_>>()
        };
        assert!(!names(RunEngine::Job)
            .iter()
            .any(|n| n.contains("workflows")));
        let argo = names(RunEngine::Argo);
        for want in [
            "create workflows",
            "get workflows",
            "list workflows",
            "patch workflows",
            "delete workflows",
            "create cronworkflows",
            "get cronworkflows",
            "list cronworkflows",
            "delete cronworkflows",
        ] {
            assert!(argo.contains(&want.to_owned()), "{want}");
        }
        let role = &objects_with(&config, "berth", RunEngine::Argo)[0];
        let rule = role["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .find(|r| r["resources"][0] == "workflows")
            .expect("a workflows rule");
        assert_eq!(rule["apiGroups"], json!(["argoproj.io"]));
    }

    #[test]
    fn the_role_grants_exactly_what_is_required() {
        let mut config = BerthConfig::default();
        config.kubernetes.namespace = "agents".into();
        let objects = objects(&config, "berth");
        let rules = objects[0]["rules"].as_array().expect("rules");
        let granted: usize = rules
            .iter()
            .map(|r| r["verbs"].as_array().map_or(0, Vec::len))
            .sum();
        assert_eq!(granted, required(&config).len());
        let exec = rules
            .iter()
            .find(|r| r["resources"][0] == "pods/exec")
            .expect("exec rule");
        assert_eq!(exec["verbs"], json!(["create", "get"]));
        assert_eq!(objects[1]["subjects"][0]["namespace"], "agents");
        assert_eq!(
            required(&config)[0].rule(),
            "{apiGroups: [\"batch\"], resources: [\"jobs\"], verbs: [\"create\"]}"
        );
    }
}
