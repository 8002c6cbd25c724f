//! Storage: claims (validated, bound at once or after a provisioner's delay) backed by Docker
//! volumes, and a pod container's volume mounts (claims, emptyDir, hostPath, subPath, fsGroup)
//! as Docker mounts.

use std::sync::Arc;
use std::time::Duration;

use bollard::models::{Mount, MountType, VolumeCreateRequest};
use bollard::query_parameters::RemoveVolumeOptions;
use serde_json::{json, Value};

use super::container::CreateError;
use super::{record_event, Worker, POD_UID_LABEL};
use crate::errors::ApiError;
use crate::meta::{self, json_str};
use crate::store::Res;
use crate::Inner;

/// Validates a claim and binds it at once.
pub(crate) fn default_pvc(mut pvc: Value, name: &str) -> Result<Value, ApiError> {
    let storage = pvc["spec"]["resources"]["requests"]["storage"].clone();
    if storage.is_null() {
        return Err(ApiError::invalid(
            Res::Pvc,
            name,
            "spec.resources[storage]",
            "FieldValueRequired",
            "Required value",
        ));
    }
    let modes = pvc["spec"]["accessModes"].clone();
    if modes.as_array().is_none_or(Vec::is_empty) {
        return Err(ApiError::invalid(
            Res::Pvc,
            name,
            "spec.accessModes",
            "FieldValueRequired",
            "Required value: at least 1 access mode is required",
        ));
    }
    if pvc["spec"]["volumeMode"].is_null() {
        pvc["spec"]["volumeMode"] = json!("Filesystem");
    }
    if pvc["spec"]["volumeName"].is_null() {
        pvc["spec"]["volumeName"] = json!(format!("pvc-{}", meta::new_uid()));
    }
    pvc["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] = json!("yes");
    pvc["status"] = json!({
        "phase": "Bound",
        "accessModes": modes,
        "capacity": {"storage": storage},
    });
    Ok(pvc)
}

/// Leaves a new claim Pending, as a claim waiting for its provisioner is.
pub(crate) fn unbind(pvc: &mut Value) {
    if let Some(a) = pvc["metadata"]["annotations"].as_object_mut() {
        a.remove("pv.kubernetes.io/bind-completed");
    }
    pvc["status"] = json!({"phase": "Pending"});
}

/// Binds a Pending claim after `delay`, with the provisioner's events.
pub(crate) fn bind_later(inner: &Arc<Inner>, pvc: &Value, delay: Duration) {
    let waiting = "Waiting for a volume to be created either by the external provisioner 'berth.dev/k8s-sim' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.";
    record_event(
        inner,
        pvc,
        "Normal",
        "ExternalProvisioning",
        waiting,
        "persistentvolume-controller",
    );
    let inner = inner.clone();
    let (ns, name, uid) = (
        json_str(&pvc["metadata"]["namespace"]).to_owned(),
        json_str(&pvc["metadata"]["name"]).to_owned(),
        pvc["metadata"]["uid"].clone(),
    );
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let bound = inner.store.update(Res::Pvc, &ns, &name, None, |c| {
            if c["metadata"]["uid"] != uid {
                return Err(ApiError::not_found(Res::Pvc, &name));
            }
            c["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] = json!("yes");
            c["status"] = json!({
                "phase": "Bound",
                "accessModes": c["spec"]["accessModes"],
                "capacity": {"storage": c["spec"]["resources"]["requests"]["storage"]},
            });
            Ok(())
        });
        if let Ok(claim) = bound {
            let msg = format!(
                "Successfully provisioned volume {}",
                json_str(&claim["spec"]["volumeName"])
            );
            record_event(
                &inner,
                &claim,
                "Normal",
                "ProvisioningSucceeded",
                &msg,
                "berth.dev/k8s-sim",
            );
        }
    });
}

/// The name of the Docker volume behind a claim.
fn claim_volume(inner: &Inner, pvc: &Value) -> String {
    format!(
        "k8s-sim-{}-{}",
        inner.id,
        json_str(&pvc["spec"]["volumeName"])
    )
}

/// Creates the Docker volume behind a claim.
pub(crate) async fn create_claim_volume(inner: &Inner, pvc: &Value) -> Result<(), ApiError> {
    let mut labels = inner.docker_labels(Some(&pvc["metadata"]["labels"]));
    labels.insert(
        "berth.dev/k8s-sim-claim".to_owned(),
        json_str(&pvc["metadata"]["name"]).to_owned(),
    );
    inner
        .docker
        .create_volume(VolumeCreateRequest {
            name: Some(claim_volume(inner, pvc)),
            labels: Some(labels),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|e| ApiError::internal(format!("creating the volume of the claim: {e}")))
}

/// Removes a deleted claim's volume once no container uses it any more.
pub(crate) fn remove_claim_volume(inner: &Arc<Inner>, pvc: &Value) {
    let name = claim_volume(inner, pvc);
    let inner = inner.clone();
    tokio::spawn(async move {
        for _ in 0..600 {
            match inner
                .docker
                .remove_volume(&name, Some(RemoveVolumeOptions { force: false }))
                .await
            {
                Ok(()) => return,
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => return,
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    });
}

impl Worker {
    /// The Docker mounts of `container`'s `volumeMounts`.
    pub(super) async fn mounts(
        &self,
        pod: &Value,
        container: &Value,
    ) -> Result<Vec<Mount>, CreateError> {
        let volumes = pod["spec"]["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let fs_group = pod["spec"]["securityContext"]["fsGroup"]
            .as_u64()
            .and_then(|g| u32::try_from(g).ok());
        let mut mounts = Vec::new();
        for vm in container["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let vname = json_str(&vm["name"]);
            let target = json_str(&vm["mountPath"]).to_owned();
            let read_only = vm["readOnly"].as_bool().unwrap_or(false);
            let sub_path = json_str(&vm["subPath"]).trim_matches('/').to_owned();
            if sub_path.split('/').any(|p| p == "..") {
                return Err(CreateError::Config(format!(
                    "subPath {sub_path:?} must not contain '..'"
                )));
            }
            let Some(vol) = volumes.iter().find(|v| v["name"] == vname) else {
                return Err(CreateError::Config(format!(
                    "volumeMount {vname:?} names no volume of the pod"
                )));
            };
            // (docker volume name) or (host path)
            let source: Result<String, String> = if let Some(claim) =
                vol["persistentVolumeClaim"]["claimName"].as_str()
            {
                let pvc = self
                    .inner
                    .store
                    .get(Res::Pvc, &self.ns, claim)
                    .ok_or_else(|| {
                        CreateError::Config(format!("persistentvolumeclaim \"{claim}\" not found"))
                    })?;
                Ok(claim_volume(&self.inner, &pvc))
            } else if vol["secret"].is_object() || vol["configMap"].is_object() {
                Ok(self.object_files(vol).await?)
            } else if vol["emptyDir"].is_object() {
                Ok(self.pod_volume(vname, "emptyDir").await?)
            } else if let Some(path) = vol["hostPath"]["path"].as_str() {
                let typ = json_str(&vol["hostPath"]["type"]);
                if typ == "DirectoryOrCreate" {
                    let _ = std::fs::create_dir_all(path);
                }
                Err(path.to_owned())
            } else {
                return Err(CreateError::Config(format!(
                    "volume {vname:?}: only persistentVolumeClaim, emptyDir and hostPath volumes are simulated"
                )));
            };
            // fsGroup: the volume's directory (on the daemon's host, which is this host) gets
            // the group, group rwx and setgid, like the kubelet's ownership management.
            if let (Some(gid), Ok(volume)) = (fs_group, &source) {
                if let Ok(v) = self.inner.docker.inspect_volume(volume).await {
                    give_to_group(std::path::Path::new(&v.mountpoint), gid);
                }
            }
            let read_only = read_only || vol["secret"].is_object() || vol["configMap"].is_object();
            let mount = match (source, sub_path.is_empty()) {
                (Ok(volume), true) => Mount {
                    target: Some(target),
                    source: Some(volume),
                    typ: Some(MountType::VOLUME),
                    read_only: Some(read_only),
                    ..Default::default()
                },
                (Err(host), true) => Mount {
                    target: Some(target),
                    source: Some(host),
                    typ: Some(MountType::BIND),
                    read_only: Some(read_only),
                    ..Default::default()
                },
                (source, false) => {
                    // Docker 20.10 has no volume subpath: bind the sub-directory of the
                    // volume's (or host path's) directory on the host instead.
                    let base = match source {
                        Ok(volume) => {
                            self.inner
                                .docker
                                .inspect_volume(&volume)
                                .await
                                .map_err(|e| {
                                    CreateError::Other(format!("inspecting {volume}: {e}"))
                                })?
                                .mountpoint
                        }
                        Err(host) => host,
                    };
                    let dir = std::path::Path::new(&base).join(&sub_path);
                    std::fs::create_dir_all(&dir).map_err(|e| {
                        CreateError::Config(format!(
                            "failed to create subPath directory for volumeMount {vname:?} of container {:?}: {e}",
                            json_str(&container["name"])
                        ))
                    })?;
                    if let Some(gid) = fs_group {
                        let base = std::path::Path::new(&base);
                        let mut p = dir.as_path();
                        while p.starts_with(base) && p != base {
                            give_to_group(p, gid);
                            p = p.parent().unwrap_or(base);
                        }
                    }
                    Mount {
                        target: Some(target),
                        source: Some(dir.to_string_lossy().into_owned()),
                        typ: Some(MountType::BIND),
                        read_only: Some(read_only),
                        ..Default::default()
                    }
                }
            };
            mounts.push(mount);
        }
        Ok(mounts)
    }
}

impl Worker {
    /// A Docker volume owned by this pod (labelled with its uid, so the pod's cleanup removes
    /// it), named after the pod and the volume `vname`; `what` names it in errors.
    async fn pod_volume(&self, vname: &str, what: &str) -> Result<String, CreateError> {
        let name = format!(
            "k8s-sim-{}-{}-{}",
            self.inner.id,
            &self.uid[..8.min(self.uid.len())],
            vname
        );
        let mut labels = self.inner.docker_labels(None);
        labels.insert(POD_UID_LABEL.to_owned(), self.uid.clone());
        self.inner
            .docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.clone()),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(|e| CreateError::Other(format!("creating {what} {vname}: {e}")))?;
        Ok(name)
    }

    /// A Docker volume (removed with the pod's) holding a `secret` or `configMap` volume's
    /// files: every key, or `items` key -> path, with `defaultMode` (0644); empty when the
    /// object is missing and `optional`, as the kubelet mounts it. A missing required object
    /// or key is the kubelet's FailedMount.
    async fn object_files(&self, vol: &Value) -> Result<String, CreateError> {
        use std::os::unix::fs::PermissionsExt;
        let vname = json_str(&vol["name"]);
        let (res, source, name) = if vol["secret"].is_object() {
            let s = &vol["secret"];
            (Res::Secret, s, json_str(&s["secretName"]))
        } else {
            let c = &vol["configMap"];
            (Res::ConfigMap, c, json_str(&c["name"]))
        };
        let optional = source["optional"].as_bool() == Some(true);
        let failed = |what: String| {
            CreateError::Mount(format!(
                "MountVolume.SetUp failed for volume \"{vname}\" : {what}"
            ))
        };
        let kind = if res == Res::Secret {
            "secret"
        } else {
            "configmap"
        };
        let files: std::collections::BTreeMap<String, Vec<u8>> =
            match self.inner.store.get(res, &self.ns, name) {
                None if optional => std::collections::BTreeMap::new(),
                None => return Err(failed(format!("{kind} \"{name}\" not found"))),
                Some(obj) => object_data(&obj, res, true),
            };
        let mut wanted = Vec::new();
        match source["items"].as_array() {
            Some(items) => {
                for item in items {
                    let key = json_str(&item["key"]);
                    let path = json_str(&item["path"]);
                    if path.starts_with('/') || path.split('/').any(|p| p == "..") {
                        return Err(failed(format!("invalid path {path:?} for key {key:?}")));
                    }
                    match files.get(key) {
                        Some(bytes) => {
                            wanted.push((path.to_owned(), bytes.clone(), item["mode"].as_u64()))
                        }
                        None if optional => {}
                        None => {
                            let what = if res == Res::Secret {
                                "secret"
                            } else {
                                "configmap"
                            };
                            return Err(failed(format!(
                                "{what} references non-existent {what} key: {key}"
                            )));
                        }
                    }
                }
            }
            None => wanted.extend(files.into_iter().map(|(k, v)| (k, v, None))),
        }
        let mode = source["defaultMode"].as_u64().unwrap_or(0o644);
        let volume = self.pod_volume(vname, "volume").await?;
        let dir = self
            .inner
            .docker
            .inspect_volume(&volume)
            .await
            .map_err(|e| CreateError::Other(format!("inspecting {volume}: {e}")))?
            .mountpoint;
        for (path, bytes, item_mode) in wanted {
            // A key or item path must stay inside the volume (the API server refuses such
            // keys and paths; this is the kubelet's own guard).
            if path.is_empty()
                || path.starts_with('/')
                || path.split('/').any(|p| p == ".." || p == ".")
            {
                return Err(failed(format!("invalid path {path:?}")));
            }
            let file = std::path::Path::new(&dir).join(&path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| CreateError::Other(format!("writing {vname}: {e}")))?;
            }
            std::fs::write(&file, bytes)
                .map_err(|e| CreateError::Other(format!("writing {vname}: {e}")))?;
            #[allow(clippy::cast_possible_truncation)]
            let m = item_mode.unwrap_or(mode) as u32;
            let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(m & 0o777));
        }
        Ok(volume)
    }
}

/// The keys of a Secret (`data`, base64) or ConfigMap (`data`, and `binaryData` when
/// `binary`: files get it, env does not) as bytes.
pub(super) fn object_data(
    obj: &Value,
    res: Res,
    binary: bool,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = std::collections::BTreeMap::new();
    let decoded = |v: &Value| b64.decode(json_str(v)).unwrap_or_default();
    if let Some(data) = obj["data"].as_object() {
        for (k, v) in data {
            let bytes = if res == Res::Secret {
                decoded(v)
            } else {
                json_str(v).as_bytes().to_vec()
            };
            out.insert(k.clone(), bytes);
        }
    }
    if res == Res::ConfigMap && binary {
        if let Some(data) = obj["binaryData"].as_object() {
            for (k, v) in data {
                out.insert(k.clone(), decoded(v));
            }
        }
    }
    out
}

/// Gives `dir` to group `gid` with group rwx and setgid (errors are logged, not fatal).
fn give_to_group(dir: &std::path::Path, gid: u32) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::os::unix::fs::chown(dir, None, Some(gid)) {
        tracing::warn!(dir = %dir.display(), error = %e, "fsGroup: chown failed");
        return;
    }
    if let Ok(meta) = std::fs::metadata(dir) {
        let mode = meta.permissions().mode() | 0o2070;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
    }
}
