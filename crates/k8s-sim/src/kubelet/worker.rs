//! A pod worker, one per pod: schedules the pod, creates and starts its containers, watches
//! them (restarting by the pod's `restartPolicy` with the kubelet's back-off), enforces
//! `activeDeadlineSeconds`, and when the pod is deleted removes its containers and
//! emptyDir volumes, then the pod object.

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::{
    ListContainersOptions, RemoveContainerOptions, StartContainerOptions,
};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::container::{trim_docker_time, wait_exit, CreateError};
use super::status::{ContainerState, ContainerStatus};
use super::{record_event, Stop, Worker, POD_UID_LABEL};
use crate::meta::{self, json_str};
use crate::store::Res;
use crate::INSTANCE_LABEL;

impl Worker {
    /// Runs the pod until it is deleted (or its deadline passes), then removes its Docker
    /// objects and the pod object.
    pub(super) async fn run(self) {
        let deleted = self.wait_deleted();
        tokio::select! {
            () = deleted => {}
            _ = self.lifecycle() => { self.wait_deleted().await; }
            () = self.deadline() => {
                self.fail_deadline().await;
                self.wait_deleted().await;
            }
        }
        self.cleanup().await;
        // A container create that was in flight when the worker stopped may land just after
        // the first sweep: sweep once more a little later, without holding up the deletion.
        let late = Worker {
            inner: self.inner.clone(),
            ns: self.ns.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
        };
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            late.cleanup().await;
        });
        let still_ours = self
            .inner
            .store
            .get(Res::Pod, &self.ns, &self.name)
            .is_some_and(|p| p["metadata"]["uid"] == self.uid.as_str());
        if still_ours {
            self.inner.store.remove(Res::Pod, &self.ns, &self.name);
        }
        self.inner
            .kubelets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.uid);
    }

    /// Returns when the pod's `activeDeadlineSeconds` (counted from its startTime) has passed;
    /// never when it has none.
    async fn deadline(&self) {
        loop {
            let pod = self.pod();
            let deadline = pod.as_ref().and_then(|p| {
                let secs = p["spec"]["activeDeadlineSeconds"].as_i64()?;
                let start = p["status"]["startTime"]
                    .as_str()
                    .and_then(meta::parse_rfc3339)?;
                Some(start + secs)
            });
            let terminal = pod
                .as_ref()
                .is_some_and(|p| matches!(json_str(&p["status"]["phase"]), "Succeeded" | "Failed"));
            match deadline {
                Some(d) if !terminal => {
                    let left = d - meta::now_secs();
                    if left <= 0 {
                        return;
                    }
                    let left = u64::try_from(left).unwrap_or(1).min(1);
                    tokio::time::sleep(Duration::from_secs(left)).await;
                }
                _ => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// Kills the pod's containers and fails it with reason DeadlineExceeded, as a kubelet does.
    pub(super) async fn fail_deadline(&self) {
        let filter = HashMap::from([(
            "label".to_owned(),
            vec![format!("{POD_UID_LABEL}={}", self.uid)],
        )]);
        if let Ok(list) = self
            .inner
            .docker
            .list_containers(Some(ListContainersOptions {
                all: false,
                filters: Some(filter),
                ..Default::default()
            }))
            .await
        {
            for c in list {
                if let Some(id) = c.id {
                    let _ = self
                        .inner
                        .docker
                        .kill_container(
                            &id,
                            None::<bollard::query_parameters::KillContainerOptions>,
                        )
                        .await;
                }
            }
        }
        let message = "Pod was active on the node longer than the specified deadline";
        let _ = self.update(|p| {
            let now = meta::now_rfc3339();
            let st = &mut p["status"];
            st["phase"] = json!("Failed");
            st["reason"] = json!("DeadlineExceeded");
            st["message"] = json!(message);
            if let Some(cs) = st["containerStatuses"].as_array_mut() {
                for c in cs {
                    let started = c["state"]["running"]["startedAt"].clone();
                    if !started.is_null() {
                        c["state"] = json!({"terminated": {"exitCode": 137, "reason": "Error",
                            "startedAt": started, "finishedAt": now,
                            "containerID": c["containerID"]}});
                        c["ready"] = json!(false);
                        c["started"] = json!(false);
                    }
                }
            }
            if let Some(conds) = st["conditions"].as_array_mut() {
                for c in conds {
                    if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                        c["status"] = json!("False");
                        c["reason"] = json!("PodFailed");
                        c["lastTransitionTime"] = json!(now);
                    }
                }
            }
        });
        self.event("Warning", "DeadlineExceeded", message, "kubelet");
    }

    /// The pod as stored, if it is still this worker's (same uid).
    pub(super) fn pod(&self) -> Option<Value> {
        self.inner
            .store
            .get(Res::Pod, &self.ns, &self.name)
            .filter(|p| p["metadata"]["uid"] == self.uid.as_str())
    }

    /// Returns once the pod is gone or marked for deletion.
    async fn wait_deleted(&self) {
        let mut changes = self.inner.store.subscribe_changes();
        loop {
            match self.pod() {
                None => return,
                Some(p) if !p["metadata"]["deletionTimestamp"].is_null() => return,
                Some(_) => {}
            }
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Records an event about the pod (nothing when it is gone).
    pub(super) fn event(&self, typ: &str, reason: &str, message: &str, component: &str) {
        if let Some(pod) = self.pod() {
            record_event(&self.inner, &pod, typ, reason, message, component);
        }
    }

    /// Changes the stored pod with `f`; `Stop::Deleted` when it is gone.
    pub(super) fn update(&self, f: impl FnOnce(&mut Value)) -> Result<Value, Stop> {
        if self.pod().is_none() {
            return Err(Stop::Deleted);
        }
        self.inner
            .store
            .update(Res::Pod, &self.ns, &self.name, None, |p| {
                f(p);
                Ok(())
            })
            .map_err(|_| Stop::Deleted)
    }

    /// Schedules the pod, creates and starts its containers and supervises them.
    async fn lifecycle(&self) -> Result<(), Stop> {
        self.schedule().await?;
        let pod = self.pod().ok_or(Stop::Deleted)?;
        let containers = pod["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let init = pod["spec"]["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let waiting = |reason: &'static str| {
            move |c: &Value| ContainerStatus {
                name: json_str(&c["name"]).to_owned(),
                image: json_str(&c["image"]).to_owned(),
                id: None,
                image_id: String::new(),
                state: ContainerState::Waiting {
                    reason: reason.to_owned(),
                    message: None,
                },
                restarts: 0,
                last_state: None,
            }
        };
        let first = if init.is_empty() {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        let mut statuses: Vec<ContainerStatus> = containers.iter().map(waiting(first)).collect();
        self.set_status(&statuses, None)?;
        if !init.is_empty() {
            let mut init_statuses: Vec<ContainerStatus> =
                init.iter().map(waiting("PodInitializing")).collect();
            if !self
                .run_init_containers(&pod, &init, &mut init_statuses, &statuses)
                .await?
            {
                return Ok(());
            }
            for s in &mut statuses {
                s.state = ContainerState::Waiting {
                    reason: "ContainerCreating".to_owned(),
                    message: None,
                };
            }
            self.set_status(&statuses, None)?;
        }
        self.create_containers(&pod, &containers, &mut statuses)
            .await?;
        let ip = self.start_containers(&mut statuses).await;
        self.set_status(&statuses, ip.as_deref())?;
        self.supervise(&pod, &containers, statuses).await
    }

    /// Runs the pod's init containers one after the other, each to completion, as a kubelet
    /// does before it creates the pod's containers: a failed one is run again after a
    /// back-off unless `restartPolicy` is `Never`, which fails the pod. Returns whether they
    /// all succeeded.
    async fn run_init_containers(
        &self,
        pod: &Value,
        init: &[Value],
        init_statuses: &mut [ContainerStatus],
        statuses: &[ContainerStatus],
    ) -> Result<bool, Stop> {
        let policy = json_str(&pod["spec"]["restartPolicy"]).to_owned();
        for (i, c) in init.iter().enumerate() {
            loop {
                let created = match self.pull(c).await {
                    Ok(()) => {
                        self.create_container(pod, c, init_statuses[i].restarts)
                            .await
                    }
                    Err(e) => Err(e),
                };
                let (id, image_id) = match created {
                    Ok(created) => created,
                    Err(
                        CreateError::NeverPull(m)
                        | CreateError::ImageMissing(m)
                        | CreateError::Config(m)
                        | CreateError::Mount(m)
                        | CreateError::Other(m),
                    ) => {
                        self.event("Warning", "Failed", &format!("Error: {m}"), "kubelet");
                        init_statuses[i].state = ContainerState::Waiting {
                            reason: "CreateContainerConfigError".to_owned(),
                            message: Some(m),
                        };
                        self.set_init_status(init_statuses, statuses, None)?;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        if self
                            .pod()
                            .is_none_or(|p| !p["metadata"]["deletionTimestamp"].is_null())
                        {
                            return Err(Stop::Deleted);
                        }
                        continue;
                    }
                };
                init_statuses[i].id = Some(id.clone());
                init_statuses[i].image_id = image_id;
                let started = self
                    .inner
                    .docker
                    .start_container(&id, None::<StartContainerOptions>)
                    .await;
                let (exit_code, reason) = if let Err(e) = started {
                    tracing::warn!(error = %e, "init container start failed");
                    (128, "StartError")
                } else {
                    let msg = format!("Started container {}", init_statuses[i].name);
                    self.event("Normal", "Started", &msg, "kubelet");
                    init_statuses[i].state = ContainerState::Running {
                        started_at: meta::now_rfc3339(),
                    };
                    self.set_init_status(init_statuses, statuses, None)?;
                    wait_exit(self.inner.docker.clone(), id.clone(), i).await;
                    let inspect = self.inner.docker.inspect_container(&id, None).await.ok();
                    let Some(state) = inspect.and_then(|i| i.state) else {
                        return Err(Stop::Deleted);
                    };
                    let code = state.exit_code.unwrap_or(0);
                    (code, if code == 0 { "Completed" } else { "Error" })
                };
                let started_at = match &init_statuses[i].state {
                    ContainerState::Running { started_at } => started_at.clone(),
                    _ => meta::now_rfc3339(),
                };
                init_statuses[i].state = ContainerState::Terminated {
                    exit_code,
                    reason: reason.to_owned(),
                    started_at,
                    finished_at: meta::now_rfc3339(),
                };
                if exit_code == 0 {
                    self.set_init_status(init_statuses, statuses, None)?;
                    break;
                }
                if policy == "Never" {
                    self.set_init_status(init_statuses, statuses, Some("Failed"))?;
                    return Ok(false);
                }
                self.set_init_status(init_statuses, statuses, None)?;
                init_statuses[i].restarts += 1;
                let backoff = Duration::from_secs(
                    1 << init_statuses[i].restarts.clamp(1, 5).saturating_sub(1),
                );
                let msg = format!(
                    "Back-off restarting failed container {}",
                    init_statuses[i].name
                );
                self.event("Warning", "BackOff", &msg, "kubelet");
                tokio::time::sleep(backoff).await;
            }
        }
        Ok(true)
    }

    /// Writes the init containers' statuses, then the pod status from `statuses`, with the
    /// pod's phase set to `phase` when given (`Failed` after an init container failed).
    fn set_init_status(
        &self,
        init: &[ContainerStatus],
        statuses: &[ContainerStatus],
        phase: Option<&str>,
    ) -> Result<(), Stop> {
        let init: Vec<Value> = init.iter().map(ContainerStatus::to_json).collect();
        self.update(|p| p["status"]["initContainerStatuses"] = json!(init))?;
        self.set_status(statuses, None)?;
        if let Some(phase) = phase {
            self.update(|p| {
                p["status"]["phase"] = json!(phase);
                if let Some(conds) = p["status"]["conditions"].as_array_mut() {
                    for c in conds {
                        if c["type"] == "PodReadyToStartContainers" {
                            c["status"] = json!("False");
                        }
                    }
                }
            })?;
        }
        Ok(())
    }

    /// Waits for each container to end, and restarts it when the pod's `restartPolicy` says
    /// so, as a kubelet does.
    async fn supervise(
        &self,
        pod: &Value,
        containers: &[Value],
        mut statuses: Vec<ContainerStatus>,
    ) -> Result<(), Stop> {
        // Wait for each container to end.
        let policy = json_str(&pod["spec"]["restartPolicy"]).to_owned();
        let waits = statuses.iter().enumerate().map(|(i, info)| {
            wait_exit(
                self.inner.docker.clone(),
                info.id.clone().unwrap_or_default(),
                i,
            )
        });
        let mut waits: futures_util::stream::FuturesUnordered<_> = waits.collect();
        while let Some(i) = waits.next().await {
            if !matches!(statuses[i].state, ContainerState::Running { .. }) {
                continue;
            }
            let id = statuses[i].id.clone().unwrap_or_default();
            let inspect = self.inner.docker.inspect_container(&id, None).await.ok();
            let Some(state) = inspect.and_then(|i| i.state) else {
                // Removed under us: the pod is being deleted.
                return Err(Stop::Deleted);
            };
            let exit_code = state.exit_code.unwrap_or(0);
            let reason = if state.oom_killed == Some(true) {
                "OOMKilled"
            } else if exit_code == 0 {
                "Completed"
            } else {
                "Error"
            };
            let started_at = match &statuses[i].state {
                ContainerState::Running { started_at } => started_at.clone(),
                _ => meta::now_rfc3339(),
            };
            statuses[i].state = ContainerState::Terminated {
                exit_code,
                reason: reason.to_owned(),
                started_at,
                finished_at: state
                    .finished_at
                    .map_or_else(meta::now_rfc3339, |t| trim_docker_time(&t)),
            };
            let restart = policy == "Always" || (policy == "OnFailure" && exit_code != 0);
            if !restart {
                self.set_status(&statuses, None)?;
                continue;
            }
            // Restart as a kubelet does: a new container after a back-off, the dead one kept
            // (and named in lastState) for `logs --previous`, older ones removed.
            let terminated = statuses[i].to_json()["state"].clone();
            if let Some(old) = statuses[i].last_state.as_ref().and_then(|l| {
                l["terminated"]["containerID"]
                    .as_str()
                    .and_then(|c| c.strip_prefix("docker://"))
                    .map(str::to_owned)
            }) {
                let _ = self
                    .inner
                    .docker
                    .remove_container(
                        &old,
                        Some(RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                    .await;
            }
            statuses[i].last_state = Some(terminated);
            statuses[i].restarts += 1;
            let backoff =
                Duration::from_secs(1 << statuses[i].restarts.clamp(1, 5).saturating_sub(1));
            statuses[i].state = ContainerState::Waiting {
                reason: "CrashLoopBackOff".to_owned(),
                message: Some(format!(
                    "back-off {}s restarting failed container={} pod={}_{}({})",
                    backoff.as_secs(),
                    statuses[i].name,
                    self.name,
                    self.ns,
                    self.uid
                )),
            };
            self.set_status(&statuses, None)?;
            let msg = format!("Back-off restarting failed container {}", statuses[i].name);
            self.event("Warning", "BackOff", &msg, "kubelet");
            tokio::time::sleep(backoff).await;
            let spec = &containers[i];
            match self.create_container(pod, spec, statuses[i].restarts).await {
                Ok((id, _)) => {
                    if self
                        .inner
                        .docker
                        .start_container(&id, None::<StartContainerOptions>)
                        .await
                        .is_ok()
                    {
                        statuses[i].id = Some(id.clone());
                        statuses[i].state = ContainerState::Running {
                            started_at: meta::now_rfc3339(),
                        };
                        let msg = format!("Started container {}", statuses[i].name);
                        self.event("Normal", "Started", &msg, "kubelet");
                        waits.push(wait_exit(self.inner.docker.clone(), id, i));
                    }
                }
                Err(
                    CreateError::NeverPull(m)
                    | CreateError::ImageMissing(m)
                    | CreateError::Config(m)
                    | CreateError::Mount(m)
                    | CreateError::Other(m),
                ) => {
                    statuses[i].state = ContainerState::Waiting {
                        reason: "CreateContainerError".to_owned(),
                        message: Some(m),
                    };
                }
            }
            self.set_status(&statuses, None)?;
        }
        Ok(())
    }

    /// Removes the pod's Docker containers and emptyDir volumes.
    async fn cleanup(&self) {
        let labels = vec![
            format!("{INSTANCE_LABEL}={}", self.inner.id),
            format!("{POD_UID_LABEL}={}", self.uid),
        ];
        crate::docker::remove_labelled(&self.inner.docker, labels).await;
    }
}
