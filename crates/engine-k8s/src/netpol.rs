//! Egress policy on Kubernetes: a `networking.k8s.io/v1` NetworkPolicy per environment.
//!
//! The policy is named like the environment's Job, selects its pod by the `job-name` label
//! the Job controller puts on it, has `policyTypes: [Egress]` and so denies every egress the
//! rules do not allow: none for `network: none`, DNS (UDP and TCP port 53, to any address,
//! since where the cluster's resolver lives varies: kube-dns, NodeLocal DNSCache) when asked,
//! and one `ipBlock` rule per entry of the allow list, with its port for TCP and UDP. `full`
//! has no policy. It carries berth's labels, is created before the Job (so the pod never
//! runs without it where the network plugin enforces it), is owned by the Job once that
//! exists (the cluster's garbage collector removes it with a Job its TTL removed), and is
//! deleted with the environment by `stop`.
//!
//! NetworkPolicy rules take address blocks only, and a pod's view of a host name's addresses
//! is its own: an allow-list entry naming a host is refused with an error naming it, rather
//! than resolved here to addresses that may not be what the pod would reach. Whether any of it
//! is enforced depends on the cluster's network plugin (Calico, Cilium and others do;
//! kindnet before Kubernetes 1.32 and flannel alone do not).

use berth_engine_core::{
    Destination, EnvironmentId, EnvironmentSpec, Error, Network, Result, StopOutcome,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, PostParams};
use kube::Api;

use crate::errors;
use crate::{KubernetesConfig, KubernetesEngine};

/// The pod label the Job controller sets to the Job's name; the policy selects by it.
pub const JOB_NAME_LABEL: &str = "job-name";

/// The rules of `network`, or `None` for `full` (no policy).
///
/// # Errors
/// [`Error::InvalidSpec`] naming `network.allow` for an entry naming a host.
fn egress_rules(network: &Network) -> Result<Option<Vec<NetworkPolicyEgressRule>>> {
    let allow = match network {
        Network::None => return Ok(Some(Vec::new())),
        Network::Allow(allow) => allow,
        _ => return Ok(None),
    };
    let ports = |port: Option<u16>| {
        port.map(|p| {
            ["TCP", "UDP"]
                .map(|protocol| NetworkPolicyPort {
                    protocol: Some(protocol.into()),
                    port: Some(IntOrString::Int(i32::from(p))),
                    ..Default::default()
                })
                .to_vec()
        })
    };
    let mut rules = Vec::new();
    if allow.dns {
        rules.push(NetworkPolicyEgressRule {
            to: None,
            ports: ports(Some(53)),
        });
    }
    for entry in &allow.allow {
        let cidr = match &entry.dest {
            Destination::Cidr(c) => c.to_string(),
            Destination::Host(host) => {
                return Err(Error::invalid_spec(
                    "network.allow",
                    format!(
                        "entry {entry}: a Kubernetes NetworkPolicy takes address blocks only, and {host}'s addresses as seen from here may not be the pod's; write its CIDR (for example from `dig +short {host}`)"
                    ),
                ))
            }
            _ => {
                return Err(Error::invalid_spec(
                    "network.allow",
                    format!("entry {entry}: not an address block"),
                ))
            }
        };
        rules.push(NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock { cidr, except: None }),
                ..Default::default()
            }]),
            ports: ports(entry.port),
        });
    }
    Ok(Some(rules))
}

/// The NetworkPolicy of the environment `spec` whose Job is `job_name`, or `None` when its
/// network is `full`.
///
/// # Errors
/// [`Error::InvalidSpec`] naming `network.allow` for an entry naming a host.
pub fn network_policy(
    spec: &EnvironmentSpec,
    config: &KubernetesConfig,
    job_name: &str,
    created_unix_secs: u64,
) -> Result<Option<NetworkPolicy>> {
    policy_for(
        &spec.network,
        config,
        job_name,
        spec.object_labels(created_unix_secs),
    )
}

fn policy_for(
    network: &Network,
    config: &KubernetesConfig,
    job_name: &str,
    labels: std::collections::BTreeMap<String, String>,
) -> Result<Option<NetworkPolicy>> {
    let Some(egress) = egress_rules(network)? else {
        return Ok(None);
    };
    Ok(Some(NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(job_name.to_owned()),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some([(JOB_NAME_LABEL.to_owned(), job_name.to_owned())].into()),
                ..Default::default()
            }),
            policy_types: Some(vec!["Egress".into()]),
            egress: Some(egress),
            ingress: None,
        }),
    }))
}

impl KubernetesEngine {
    pub(crate) fn network_policies(&self) -> Api<NetworkPolicy> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    /// Creates `policy`, or replaces the one of the same name.
    pub(crate) async fn put_network_policy(&self, policy: &NetworkPolicy) -> Result<()> {
        let api = self.network_policies();
        let name = policy.metadata.name.clone().unwrap_or_default();
        match api.create(&PostParams::default(), policy).await {
            Ok(_) => return Ok(()),
            Err(e) if errors::is_conflict(&e) => {}
            Err(e) => return Err(errors::api(&self.address, "create networkpolicy", e)),
        }
        let current = api
            .get(&name)
            .await
            .map_err(|e| errors::api(&self.address, "get networkpolicy", e))?;
        let mut next = policy.clone();
        next.metadata.resource_version = current.metadata.resource_version;
        next.metadata.owner_references = current.metadata.owner_references;
        api.replace(&name, &PostParams::default(), &next)
            .await
            .map(|_| ())
            .map_err(|e| errors::api(&self.address, "replace networkpolicy", e))
    }

    /// Hands the policy `name` to the Job `job`, so the cluster's garbage collector removes it
    /// with the Job. Best effort: `stop` deletes it anyway.
    pub(crate) async fn own_network_policy(&self, name: &str, job: &Job) {
        let Some(uid) = job.metadata.uid.clone() else {
            return;
        };
        let owner = OwnerReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: name.to_owned(),
            uid,
            controller: Some(false),
            block_owner_deletion: None,
        };
        let patch = serde_json::json!({"metadata": {"ownerReferences": [owner]}});
        if let Err(e) = self
            .network_policies()
            .patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            tracing::debug!(policy = name, error = %e, "could not make the job own its network policy");
        }
    }

    /// Deletes the policy `name`; a missing one is [`StopOutcome::AlreadyGone`].
    pub(crate) async fn delete_network_policy(&self, name: &str) -> Result<StopOutcome> {
        match self
            .network_policies()
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(StopOutcome::Stopped),
            Err(e) if errors::is_not_found(&e) => Ok(StopOutcome::AlreadyGone),
            // Without the permission berth cannot have made one either (or the Job owns it,
            // and the garbage collector removes it with the Job).
            Err(e) if errors::is_forbidden(&e) => {
                tracing::debug!(policy = name, error = %e, "not allowed to delete network policies");
                Ok(StopOutcome::AlreadyGone)
            }
            Err(e) => Err(errors::api(&self.address, "delete networkpolicy", e)),
        }
    }
}

/// How old a policy without its Job must be to count as left behind: `start` creates the
/// policy a moment before the Job, and a `gc` in between must not take it.
const ORPHAN_AFTER_SECS: u64 = 120;

/// berth's NetworkPolicies matching `selector` whose Job (named in `jobs`) is gone, as exited
/// environments, so `berth gc` removes them (`stop` deletes the policy of a missing Job).
/// Left behind only when berth died between creating the policy and the Job, or on a cluster
/// without a garbage collector for owner references. Without the permission to list them
/// there is none of berth's to find.
pub(crate) async fn orphans(
    engine: &KubernetesEngine,
    selector: &berth_engine_core::LabelSelector,
    jobs: &std::collections::BTreeSet<String>,
) -> Result<Vec<berth_engine_core::EnvironmentStatus>> {
    let params = kube::api::ListParams::default().labels(&crate::job::label_selector(selector));
    let policies = match engine.network_policies().list(&params).await {
        Ok(list) => list.items,
        Err(e) if errors::is_forbidden(&e) || errors::is_not_found(&e) => return Ok(Vec::new()),
        Err(e) => return Err(errors::api(&engine.address, "list networkpolicies", e)),
    };
    let now = crate::now_unix();
    let mut out = Vec::new();
    for policy in policies {
        let Some(name) = policy.metadata.name.clone() else {
            continue;
        };
        let labels = policy.metadata.labels.clone().unwrap_or_default();
        let created = labels
            .get(berth_engine_core::LABEL_CREATED)
            .and_then(|c| c.parse::<u64>().ok())
            .unwrap_or(0);
        if jobs.contains(&name)
            || policy.metadata.deletion_timestamp.is_some()
            || now.saturating_sub(created) < ORPHAN_AFTER_SECS
            || !selector.matches(&labels)
        {
            continue;
        }
        if engine.jobs().get_opt(&name).await.ok().flatten().is_some() {
            continue;
        }
        out.push(berth_engine_core::EnvironmentStatus::new(
            EnvironmentId::new(name)?,
            String::new(),
            berth_engine_core::EnvironmentState::Exited,
            labels,
        ));
    }
    Ok(out)
}

/// Replaces the policy of the running environment `env` with `network`.
pub(crate) async fn set_network(
    engine: &KubernetesEngine,
    env: &EnvironmentId,
    network: &Network,
) -> Result<()> {
    if !engine.is_berths(env).await? {
        return Err(Error::NotFound {
            what: "environment",
            name: env.to_string(),
        });
    }
    let job = engine
        .jobs()
        .get(env.as_str())
        .await
        .map_err(|e| errors::api(&engine.address, "get job", e))?;
    let labels = job.metadata.labels.clone().unwrap_or_default();
    match policy_for(network, &engine.config, env.as_str(), labels)? {
        None => match engine
            .network_policies()
            .delete(env.as_str(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(e) if errors::is_not_found(&e) => {}
            Err(e) => return Err(errors::api(&engine.address, "delete networkpolicy", e)),
        },
        Some(policy) => {
            engine.put_network_policy(&policy).await?;
            engine.own_network_policy(env.as_str(), &job).await;
        }
    }
    tracing::debug!(env = %env, policy = %network.describe(), "replaced the network policy");
    Ok(())
}

#[cfg(test)]
mod tests {
    use berth_engine_core::{EgressAllow, ImageRef, SessionId};

    use super::*;

    fn spec(network: Network) -> EnvironmentSpec {
        EnvironmentSpec::new(
            ImageRef::new("busybox:1.36").unwrap(),
            SessionId::new("s1").unwrap(),
        )
        .with_network(network)
    }

    #[test]
    fn full_has_no_policy_and_none_denies_all_egress() {
        let config = KubernetesConfig::default();
        assert!(network_policy(&spec(Network::Full), &config, "j", 1)
            .unwrap()
            .is_none());
        let p = network_policy(&spec(Network::None), &config, "j", 1)
            .unwrap()
            .unwrap();
        let s = p.spec.unwrap();
        assert_eq!(s.policy_types, Some(vec!["Egress".to_owned()]));
        assert_eq!(s.egress, Some(vec![]));
        assert_eq!(
            s.pod_selector.unwrap().match_labels.unwrap()[JOB_NAME_LABEL],
            "j"
        );
        let labels = p.metadata.labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "berth");
        assert_eq!(labels["berth.dev/session"], "s1");
    }

    #[test]
    fn an_allow_list_becomes_ip_blocks_with_ports_and_dns() {
        let allow = EgressAllow::parse(&["10.0.0.0/8:443", "192.168.1.7"], true).unwrap();
        let p = network_policy(
            &spec(Network::Allow(allow)),
            &KubernetesConfig::default(),
            "j",
            1,
        )
        .unwrap()
        .unwrap();
        let json = serde_json::to_value(&p).unwrap();
        let egress = json["spec"]["egress"].as_array().unwrap();
        assert_eq!(egress.len(), 3);
        assert_eq!(egress[0]["ports"][0]["port"], 53);
        assert!(egress[0].get("to").is_none(), "DNS to any address");
        assert_eq!(egress[1]["to"][0]["ipBlock"]["cidr"], "10.0.0.0/8");
        assert_eq!(egress[1]["ports"][1]["protocol"], "UDP");
        assert_eq!(egress[2]["to"][0]["ipBlock"]["cidr"], "192.168.1.7/32");
        assert!(egress[2].get("ports").is_none());
    }

    #[test]
    fn a_host_name_is_refused_naming_the_entry() {
        let allow = EgressAllow::parse(&["pypi.org:443"], false).unwrap();
        let err = network_policy(
            &spec(Network::Allow(allow)),
            &KubernetesConfig::default(),
            "j",
            1,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("network.allow") && msg.contains("pypi.org:443"),
            "{msg}"
        );
    }
}
