//! Where the API server finds a pod's container for `exec` and `log` (with its 400s for a
//! wrong container name or a pod without a node), and `GET .../pods/NAME/log` from Docker's
//! logs.

use std::sync::Arc;

use bollard::query_parameters::LogsOptions;
use bytes::Bytes;
use futures_util::StreamExt;
use hyper::Response;

use crate::api::{self, Body, Params};
use crate::errors::ApiError;
use crate::meta::{self, json_str};
use crate::store::Res;
use crate::Inner;
use serde_json::Value;

/// Whether no node was assigned to `pod` yet: the API server then has no kubelet to send an
/// exec or a log request to.
pub(crate) fn unscheduled(pod: &Value) -> bool {
    json_str(&pod["spec"]["nodeName"]).is_empty()
}

/// The name of `container` in `pod` (the only one when `None`), or the API server's 400.
pub(crate) fn container_name(pod: &Value, container: Option<&str>) -> Result<String, ApiError> {
    let name = json_str(&pod["metadata"]["name"]);
    let specs = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = specs.iter().map(|c| json_str(&c["name"])).collect();
    let container = match container.filter(|c| !c.is_empty()) {
        Some(c) => c.to_owned(),
        None if names.len() == 1 => names[0].to_owned(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                names.join(" ")
            )))
        }
    };
    if !names.contains(&container.as_str()) {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    Ok(container)
}

/// The Docker id of `container` in `pod`, or the error the API server would answer: the
/// container name is checked first, then that the pod has a node (as the API server's
/// `streamLocation` does), then the kubelet's view of the container.
pub(crate) fn container_id(pod: &Value, container: Option<&str>) -> Result<String, ApiError> {
    let name = json_str(&pod["metadata"]["name"]);
    let container = container_name(pod, container)?;
    if unscheduled(pod) {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let st = statuses.iter().find(|c| c["name"] == container.as_str());
    let id = st
        .and_then(|c| c["containerID"].as_str())
        .and_then(|id| id.strip_prefix("docker://"));
    match id {
        Some(id) => Ok(id.to_owned()),
        None => {
            let reason = st
                .and_then(|c| c["state"]["waiting"]["reason"].as_str())
                .unwrap_or("ContainerCreating");
            Err(ApiError::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
            )))
        }
    }
}

/// `GET .../pods/NAME/log`: the container's Docker logs, followed when `follow=true`.
pub(crate) async fn logs(
    inner: &Arc<Inner>,
    ns: &str,
    name: &str,
    params: &Params,
) -> Result<Response<Body>, ApiError> {
    let pod = inner
        .store
        .get(Res::Pod, ns, name)
        .ok_or_else(|| ApiError::not_found(Res::Pod, name))?;
    if unscheduled(&pod) {
        // The API server's LogLocation has no node to ask and streams nothing: 204.
        container_name(&pod, params.get("container"))?;
        let mut resp = Response::new(api::full(Bytes::new()));
        *resp.status_mut() = hyper::StatusCode::NO_CONTENT;
        return Ok(resp);
    }
    let mut id = container_id(&pod, params.get("container"))?;
    if params.flag("previous") {
        let container = params
            .get("container")
            .or_else(|| pod["spec"]["containers"][0]["name"].as_str())
            .unwrap_or("");
        let previous = pod["status"]["containerStatuses"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == container))
            .and_then(|c| c["lastState"]["terminated"]["containerID"].as_str())
            .and_then(|c| c.strip_prefix("docker://"))
            .map(str::to_owned);
        id = previous.ok_or_else(|| {
            ApiError::bad_request(format!(
                "previous terminated container \"{container}\" in pod \"{name}\" not found"
            ))
        })?;
    }
    let follow = params.flag("follow");
    let options = LogsOptions {
        follow,
        stdout: true,
        stderr: true,
        timestamps: params.flag("timestamps"),
        tail: params
            .get("tailLines")
            .filter(|t| t.parse::<u64>().is_ok())
            .unwrap_or("all")
            .to_owned(),
        // `sinceTime` (RFC 3339) or `sinceSeconds`, as Docker's `since`: whole seconds,
        // lines at or after it.
        since: params
            .get("sinceTime")
            .and_then(meta::parse_rfc3339)
            .or_else(|| {
                params
                    .get("sinceSeconds")
                    .and_then(|s| s.parse::<i64>().ok())
                    .map(|s| meta::now_secs() - s)
            })
            .and_then(|s| i32::try_from(s).ok())
            .unwrap_or(0),
        ..Default::default()
    };
    let limit = params
        .get("limitBytes")
        .and_then(|l| l.parse::<usize>().ok());
    let (tx, resp) = api::streaming("text/plain");
    let docker = inner.docker.clone();
    tokio::spawn(async move {
        let mut stream = docker.logs(&id, Some(options));
        let mut sent = 0_usize;
        while let Some(Ok(chunk)) = stream.next().await {
            let mut bytes: Bytes = chunk.into_bytes();
            if let Some(limit) = limit {
                if sent >= limit {
                    break;
                }
                bytes.truncate(limit - sent);
            }
            sent += bytes.len();
            if tx.send(bytes).await.is_err() {
                break;
            }
        }
    });
    Ok(resp)
}
