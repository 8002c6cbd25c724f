//! Server-side printing: `meta.k8s.io/v1` `Table` objects with the columns the real API server
//! prints for each resource (what `kubectl get` shows).

use serde_json::{json, Value};

use crate::meta::{self, json_str};
use crate::store::Res;

fn column(name: &str, typ: &str, format: &str, priority: u8, description: &str) -> Value {
    json!({"name": name, "type": typ, "format": format, "description": description,
        "priority": priority})
}

fn columns(res: Res) -> Vec<Value> {
    let name = column(
        "Name",
        "string",
        "name",
        0,
        "Name must be unique within a namespace.",
    );
    let age = column(
        "Age",
        "string",
        "",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    match res {
        Res::Pod => vec![
            name,
            column("Ready", "string", "", 0, "The aggregate readiness state of this pod for accepting traffic."),
            column("Status", "string", "", 0, "The aggregate status of the containers in this pod."),
            column("Restarts", "string", "", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            age,
            column("IP", "string", "", 1, "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
            column("Node", "string", "", 1, "NodeName is a request to schedule this pod onto a specific node."),
            column("Nominated Node", "string", "", 1, "nominatedNodeName is set when this pod preempts other pods on the node."),
            column("Readiness Gates", "string", "", 1, "If specified, all readiness gates will be evaluated for pod readiness."),
        ],
        Res::Job => vec![
            name,
            column("Status", "string", "", 0, "Status of the job."),
            column("Completions", "string", "", 0, "The completion status of the job."),
            column("Duration", "string", "", 0, "Time required to complete the job."),
            age,
            column("Containers", "string", "", 1, "Names of each container in the template."),
            column("Images", "string", "", 1, "Images referenced by each container in the template."),
            column("Selector", "string", "", 1, "A label query over pods that should match the pod count."),
        ],
        Res::Node => vec![
            name,
            column("Status", "string", "", 0, "The status of the node"),
            column("Roles", "string", "", 0, "The roles of the node"),
            age,
            column("Version", "string", "", 0, "Kubelet Version reported by the node."),
            column("Internal-IP", "string", "", 1, "List of addresses reachable to the node. Queried from cloud provider, if available."),
            column("External-IP", "string", "", 1, "List of addresses reachable to the node. Queried from cloud provider, if available."),
            column("OS-Image", "string", "", 1, "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
            column("Kernel-Version", "string", "", 1, "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
            column("Container-Runtime", "string", "", 1, "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
        ],
        Res::Event => vec![
            column("Last Seen", "string", "", 0, "Time of the last occurrence."),
            column("Type", "string", "", 0, "Type of this event (Normal, Warning)."),
            column("Reason", "string", "", 0, "Why the action was taken."),
            column("Object", "string", "", 0, "The object this Event is about."),
            column("Message", "string", "", 0, "A human-readable description of the status of this operation."),
            name,
        ],
        Res::Namespace => vec![
            name,
            column("Status", "string", "", 0, "The status of the namespace"),
            age,
        ],
        Res::ResourceQuota | Res::LimitRange => vec![name, age],
        Res::Secret => vec![
            name,
            column("Type", "string", "", 0, "The type of the secret"),
            column("Data", "string", "", 0, "The number of entries in the secret"),
            age,
        ],
        Res::ConfigMap => vec![
            name,
            column("Data", "string", "", 0, "Data contains the configuration data."),
            age,
        ],
        Res::ServiceAccount => vec![
            name,
            column("Secrets", "string", "", 0, "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."),
            age,
        ],
        Res::Service => vec![
            name,
            column("Type", "string", "", 0, "type determines how the Service is exposed."),
            column("Cluster-IP", "string", "", 0, "clusterIP is the IP address of the service and is usually assigned randomly."),
            column("External-IP", "string", "", 0, "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
            column("Port(s)", "string", "", 0, "The list of ports that are exposed by this service."),
            age,
            column("Selector", "string", "", 1, "Route service traffic to pods with label keys and values matching this selector."),
        ],
        Res::CronJob => vec![
            name,
            column("Schedule", "string", "", 0, "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron."),
            column("Timezone", "string", "", 0, "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones."),
            column("Suspend", "boolean", "", 0, "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions."),
            column("Active", "integer", "", 0, "A list of pointers to currently running jobs."),
            column("Last Schedule", "date", "", 0, "Information when was the last time the job was successfully scheduled."),
            age,
            column("Containers", "string", "", 1, "Names of each container in the template."),
            column("Images", "string", "", 1, "Images referenced by each container in the template."),
            column("Selector", "string", "", 1, "A label query over pods that should match the pod count."),
        ],
        Res::Deployment => vec![
            name,
            column("Ready", "string", "", 0, "Number of the pod with ready state"),
            column("Up-to-date", "string", "", 0, "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
            column("Available", "string", "", 0, "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
            age,
            column("Containers", "string", "", 1, "Names of each container in the template."),
            column("Images", "string", "", 1, "Images referenced by each container in the template."),
            column("Selector", "string", "", 1, "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment."),
        ],
        Res::NetworkPolicy => vec![
            name,
            column("Pod-Selector", "string", "", 0, "Pod selector of this network policy."),
            age,
        ],
        Res::Role => vec![
            name,
            column("Created At", "date", "", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
        ],
        Res::RoleBinding => vec![
            name,
            column("Role", "string", "", 0, "RoleRef is the Role referenced by this binding."),
            age,
            column("Users", "string", "", 1, "Users in the roleBinding"),
            column("Groups", "string", "", 1, "Groups in the roleBinding"),
            column("ServiceAccounts", "string", "", 1, "ServiceAccounts in the roleBinding"),
        ],
        // Argo's CRDs' additionalPrinterColumns.
        Res::Workflow => vec![
            name,
            column("Status", "string", "", 0, "Status of the workflow"),
            column("Age", "date", "", 0, "When the workflow was started"),
            column("Message", "string", "", 1, "Human readable message indicating details about why the workflow is in this condition."),
        ],
        Res::CronWorkflow => vec![name, age],
        Res::Pvc => vec![
            name,
            column("Status", "string", "", 0, "Phase represents the current phase of PersistentVolumeClaim."),
            column("Volume", "string", "", 0, "VolumeName is the binding reference to the PersistentVolume backing this claim."),
            column("Capacity", "string", "", 0, "Capacity represents the actual resources of the underlying volume."),
            column("Access Modes", "string", "", 0, "AccessModes contains the desired access modes the volume should have."),
            column("StorageClass", "string", "", 0, "StorageClassName is the name of the StorageClass required by the claim."),
            column("VolumeAttributesClass", "string", "", 0, "The VolumeAttributesClass used by this claim."),
            age,
            column("VolumeMode", "string", "", 1, "volumeMode defines what type of volume is required by the claim."),
        ],
    }
}

/// The string `v` holds as an owned table cell (`""` for anything else).
fn cell(v: &Value) -> String {
    json_str(v).to_owned()
}

/// The items of an array (none for anything else).
fn items(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// A `key=value,...` selector as kubectl prints it.
fn match_labels(v: &Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn or_none(v: String) -> String {
    if v.is_empty() {
        "<none>".to_owned()
    } else {
        v
    }
}

/// The pod STATUS column, computed the way kubectl's printer does.
pub(crate) fn pod_status_reason(pod: &Value) -> (String, usize, usize, i64) {
    let status = &pod["status"];
    let mut reason = cell(&status["reason"]);
    if reason.is_empty() {
        reason = cell(&status["phase"]);
    }
    let total = pod["spec"]["containers"].as_array().map_or(0, Vec::len);
    let mut ready = 0;
    let mut restarts = 0;
    let mut has_running = false;
    let statuses = status["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for cs in statuses.iter().rev() {
        restarts += cs["restartCount"].as_i64().unwrap_or(0);
        let state = &cs["state"];
        if let Some(r) = state["waiting"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            reason = r.to_owned();
        } else if let Some(r) = state["terminated"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            reason = r.to_owned();
        } else if state["terminated"].is_object() {
            let signal = state["terminated"]["signal"].as_i64().unwrap_or(0);
            reason = if signal != 0 {
                format!("Signal:{signal}")
            } else {
                format!(
                    "ExitCode:{}",
                    state["terminated"]["exitCode"].as_i64().unwrap_or(0)
                )
            };
        } else if cs["ready"].as_bool() == Some(true) && state["running"].is_object() {
            has_running = true;
            ready += 1;
        }
    }
    if reason == "Completed" && has_running {
        let pod_ready = status["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        reason = if pod_ready { "Running" } else { "NotReady" }.to_owned();
    }
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        reason = "Terminating".to_owned();
    }
    (reason, ready, total, restarts)
}

fn job_status(job: &Value) -> String {
    if !job["metadata"]["deletionTimestamp"].is_null() {
        return "Terminating".to_owned();
    }
    let conds = job["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let has = |t: &str| {
        conds
            .iter()
            .any(|c| c["type"] == t && c["status"] == "True")
    };
    for t in [
        "Failed",
        "Complete",
        "Suspended",
        "FailureTarget",
        "SuccessCriteriaMet",
    ] {
        if has(t) {
            return t.to_owned();
        }
    }
    "Running".to_owned()
}

fn cells(res: Res, obj: &Value) -> Vec<Value> {
    let md = &obj["metadata"];
    let name = cell(&md["name"]);
    let age = meta::age(md["creationTimestamp"].as_str());
    match res {
        Res::Pod => {
            let (reason, ready, total, restarts) = pod_status_reason(obj);
            vec![
                json!(name),
                json!(format!("{ready}/{total}")),
                json!(reason),
                json!(restarts.to_string()),
                json!(age),
                json!(or_none(cell(&obj["status"]["podIP"]))),
                json!(or_none(cell(&obj["spec"]["nodeName"]))),
                json!("<none>"),
                json!("<none>"),
            ]
        }
        Res::Job => {
            let completions = obj["spec"]["completions"].as_i64().unwrap_or(1);
            let succeeded = obj["status"]["succeeded"].as_i64().unwrap_or(0);
            let start = obj["status"]["startTime"]
                .as_str()
                .and_then(meta::parse_rfc3339);
            let end = obj["status"]["completionTime"]
                .as_str()
                .and_then(meta::parse_rfc3339)
                .unwrap_or_else(meta::now_secs);
            let duration = start.map_or_else(String::new, |s| meta::human_duration(end - s));
            let containers = obj["spec"]["template"]["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let names: Vec<String> = containers.iter().map(|c| cell(&c["name"])).collect();
            let images: Vec<String> = containers.iter().map(|c| cell(&c["image"])).collect();
            let selector = obj["spec"]["selector"]["matchLabels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                json!(name),
                json!(job_status(obj)),
                json!(format!("{succeeded}/{completions}")),
                json!(duration),
                json!(age),
                json!(names.join(",")),
                json!(images.join(",")),
                json!(selector),
            ]
        }
        Res::Namespace => vec![
            json!(name),
            json!(cell(&obj["status"]["phase"])),
            json!(age),
        ],
        Res::ResourceQuota | Res::LimitRange => vec![json!(name), json!(age)],
        Res::Secret => {
            let count = obj["data"].as_object().map_or(0, serde_json::Map::len);
            vec![
                json!(name),
                json!(json_str(&obj["type"])),
                json!(count),
                json!(age),
            ]
        }
        Res::ConfigMap => {
            let count = |f: &str| obj[f].as_object().map_or(0, serde_json::Map::len);
            vec![
                json!(name),
                json!(count("data") + count("binaryData")),
                json!(age),
            ]
        }
        Res::ServiceAccount => vec![
            json!(name),
            json!(obj["secrets"].as_array().map_or(0, Vec::len)),
            json!(age),
        ],
        Res::Service => {
            let spec = &obj["spec"];
            let ports: Vec<String> = items(&spec["ports"])
                .iter()
                .map(|p| {
                    let node_port = p["nodePort"]
                        .as_i64()
                        .map_or_else(String::new, |n| format!(":{n}"));
                    format!("{}{node_port}/{}", p["port"], cell(&p["protocol"]))
                })
                .collect();
            let external: Vec<String> = items(&spec["externalIPs"]).iter().map(cell).collect();
            vec![
                json!(name),
                json!(cell(&spec["type"])),
                json!(or_none(cell(&spec["clusterIP"]))),
                json!(or_none(external.join(","))),
                json!(or_none(ports.join(","))),
                json!(age),
                json!(or_none(match_labels(&spec["selector"]))),
            ]
        }
        Res::CronJob => {
            let spec = &obj["spec"];
            let containers = items(&spec["jobTemplate"]["spec"]["template"]["spec"]["containers"]);
            let names: Vec<String> = containers.iter().map(|c| cell(&c["name"])).collect();
            let images: Vec<String> = containers.iter().map(|c| cell(&c["image"])).collect();
            let last = meta::age(obj["status"]["lastScheduleTime"].as_str());
            vec![
                json!(name),
                json!(cell(&spec["schedule"])),
                json!(or_none(cell(&spec["timeZone"]))),
                json!(spec["suspend"].as_bool().unwrap_or(false)),
                json!(items(&obj["status"]["active"]).len()),
                json!(if obj["status"]["lastScheduleTime"].is_null() {
                    "<none>".to_owned()
                } else {
                    last
                }),
                json!(age),
                json!(names.join(",")),
                json!(images.join(",")),
                json!("<none>"),
            ]
        }
        Res::Deployment => {
            let spec = &obj["spec"];
            let status = &obj["status"];
            let count = |v: &Value| v.as_i64().unwrap_or(0);
            let containers = items(&spec["template"]["spec"]["containers"]);
            let names: Vec<String> = containers.iter().map(|c| cell(&c["name"])).collect();
            let images: Vec<String> = containers.iter().map(|c| cell(&c["image"])).collect();
            vec![
                json!(name),
                json!(format!(
                    "{}/{}",
                    count(&status["readyReplicas"]),
                    count(&spec["replicas"])
                )),
                json!(count(&status["updatedReplicas"])),
                json!(count(&status["availableReplicas"])),
                json!(age),
                json!(names.join(",")),
                json!(images.join(",")),
                json!(match_labels(&spec["selector"]["matchLabels"])),
            ]
        }
        Res::NetworkPolicy => vec![
            json!(name),
            json!(match_labels(&obj["spec"]["podSelector"]["matchLabels"])),
            json!(age),
        ],
        Res::Role => vec![json!(name), json!(cell(&md["creationTimestamp"]))],
        Res::RoleBinding => {
            let subjects = items(&obj["subjects"]);
            let of_kind = |kind: &str| {
                subjects
                    .iter()
                    .filter(|s| s["kind"] == kind)
                    .map(|s| match s["namespace"].as_str() {
                        Some(ns) if kind == "ServiceAccount" => {
                            format!("{ns}/{}", cell(&s["name"]))
                        }
                        _ => cell(&s["name"]),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                json!(name),
                json!(format!(
                    "{}/{}",
                    cell(&obj["roleRef"]["kind"]),
                    cell(&obj["roleRef"]["name"])
                )),
                json!(age),
                json!(of_kind("User")),
                json!(of_kind("Group")),
                json!(of_kind("ServiceAccount")),
            ]
        }
        Res::Workflow => vec![
            json!(name),
            json!(cell(&obj["status"]["phase"])),
            json!(meta::age(obj["status"]["startedAt"].as_str())),
            json!(cell(&obj["status"]["message"])),
        ],
        Res::CronWorkflow => vec![json!(name), json!(age)],
        Res::Node => vec![
            json!(name),
            json!("Ready"),
            json!("control-plane"),
            json!(age),
            json!(cell(&obj["status"]["nodeInfo"]["kubeletVersion"])),
            json!("127.0.0.1"),
            json!("<none>"),
            json!(cell(&obj["status"]["nodeInfo"]["osImage"])),
            json!(cell(&obj["status"]["nodeInfo"]["kernelVersion"])),
            json!(cell(&obj["status"]["nodeInfo"]["containerRuntimeVersion"])),
        ],
        Res::Event => {
            let seen = obj["lastTimestamp"]
                .as_str()
                .or_else(|| obj["eventTime"].as_str());
            let io = &obj["involvedObject"];
            vec![
                json!(meta::age(seen)),
                json!(cell(&obj["type"])),
                json!(cell(&obj["reason"])),
                json!(format!(
                    "{}/{}",
                    cell(&io["kind"]).to_lowercase(),
                    cell(&io["name"])
                )),
                json!(cell(&obj["message"])),
                json!(name),
            ]
        }
        Res::Pvc => {
            let modes: Vec<String> = obj["status"]["accessModes"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|m| match m.as_str().unwrap_or("") {
                    "ReadWriteOnce" => "RWO".to_owned(),
                    "ReadOnlyMany" => "ROX".to_owned(),
                    "ReadWriteMany" => "RWX".to_owned(),
                    "ReadWriteOncePod" => "RWOP".to_owned(),
                    other => other.to_owned(),
                })
                .collect();
            vec![
                json!(name),
                json!(cell(&obj["status"]["phase"])),
                json!(cell(&obj["spec"]["volumeName"])),
                json!(cell(&obj["status"]["capacity"]["storage"])),
                json!(modes.join(",")),
                json!(or_none(cell(&obj["spec"]["storageClassName"]))),
                json!("<unset>"),
                json!(age),
                json!(cell(&obj["spec"]["volumeMode"])),
            ]
        }
    }
}

/// A table of `objects`. `include` is the `includeObject` parameter: `None`, `Object` or
/// `PartialObjectMetadata` (the default).
pub(crate) fn table(res: Res, objects: &[Value], include: &str, rv: Option<u64>) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut row = json!({"cells": cells(res, obj)});
            match include {
                "None" => {}
                "Object" => row["object"] = obj.clone(),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj["metadata"],
                    });
                }
            }
            row
        })
        .collect();
    let mut md = json!({});
    if let Some(rv) = rv {
        md["resourceVersion"] = json!(rv.to_string());
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": md,
        "columnDefinitions": columns(res),
        "rows": rows,
    })
}
