//! Image pulls as a kubelet makes them, by `imagePullPolicy`, with the kubelet's events and
//! the pull faults of [`crate::Sim::fail_pulls`].

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use super::container::CreateError;
use super::Worker;
use crate::meta::json_str;

impl Worker {
    /// Gets container `c`'s image onto the node as its `imagePullPolicy` says, with the
    /// kubelet's events: `Never` uses only what is there (`ErrImageNeverPull`); `Always` pulls
    /// through Docker (here it fails: no registry can be reached, with Docker's own message);
    /// `IfNotPresent` uses what is there and answers a missing image as a registry answers
    /// for an image that does not exist. Faults from [`crate::Sim::fail_pulls`] come first.
    pub(super) async fn pull(&self, c: &Value) -> Result<(), CreateError> {
        let image = json_str(&c["image"]).to_owned();
        let policy = json_str(&c["imagePullPolicy"]).to_owned();
        let present = self.inner.docker.inspect_image(&image).await.is_ok();
        if policy == "Never" {
            if present {
                let msg = format!("Container image \"{image}\" already present on machine");
                self.event("Normal", "Pulled", &msg, "kubelet");
                return Ok(());
            }
            return Err(CreateError::NeverPull(format!(
                "Container image \"{image}\" is not present with pull policy of Never"
            )));
        }
        let fault = {
            let mut faults = self
                .inner
                .pull_faults
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match faults.get_mut(&image) {
                Some((left, message)) if *left > 0 => {
                    *left -= 1;
                    Some(message.clone())
                }
                _ => None,
            }
        };
        // An image with faults set was not on the node: it must be pulled.
        if policy != "Always" && present && !self.was_faulted(&image) {
            let msg = format!("Container image \"{image}\" already present on machine");
            self.event("Normal", "Pulled", &msg, "kubelet");
            return Ok(());
        }
        self.event(
            "Normal",
            "Pulling",
            &format!("Pulling image \"{image}\""),
            "kubelet",
        );
        let began = std::time::Instant::now();
        if let Some(message) = fault {
            return Err(CreateError::ImageMissing(format!(
                "Failed to pull image \"{image}\": {message}"
            )));
        }
        let pulled = if policy == "Always" {
            self.docker_pull(&image).await
        } else if present {
            // The faults are used up: this pull "succeeds" with the image already here.
            Ok(())
        } else {
            let repo = image.rsplit_once(':').map_or(image.as_str(), |(r, t)| {
                if t.contains('/') {
                    image.as_str()
                } else {
                    r
                }
            });
            Err(format!(
                "Error response from daemon: pull access denied for {repo}, repository does not exist or may require 'docker login': denied: requested access to the resource is denied"
            ))
        };
        match pulled {
            Ok(()) => {
                let took = began.elapsed().as_secs_f64();
                let size = self
                    .inner
                    .docker
                    .inspect_image(&image)
                    .await
                    .ok()
                    .and_then(|i| i.size)
                    .unwrap_or(0);
                let msg = format!(
                    "Successfully pulled image \"{image}\" in {took:.3}s ({took:.3}s including waiting). Image size: {size} bytes."
                );
                self.event("Normal", "Pulled", &msg, "kubelet");
                Ok(())
            }
            Err(message) => Err(CreateError::ImageMissing(format!(
                "Failed to pull image \"{image}\": {message}"
            ))),
        }
    }

    /// Whether a fault of [`crate::Sim::fail_pulls`] was ever set for `image` (its node
    /// then "pulls" it once the faults are used up).
    fn was_faulted(&self, image: &str) -> bool {
        self.inner
            .pull_faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(image)
    }

    /// A real pull through Docker (30 s at most); the error is Docker's message.
    async fn docker_pull(&self, image: &str) -> Result<(), String> {
        let (from_image, tag) = match image.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r.to_owned(), t.to_owned()),
            _ => (image.to_owned(), "latest".to_owned()),
        };
        let pull = async {
            let mut stream = self.inner.docker.create_image(
                Some(bollard::query_parameters::CreateImageOptions {
                    from_image: Some(from_image),
                    tag: Some(tag),
                    ..Default::default()
                }),
                None,
                None,
            );
            while let Some(item) = stream.next().await {
                match item {
                    Ok(info) => {
                        if let Some(m) = info.error_detail.and_then(|d| d.message) {
                            return Err(format!("Error response from daemon: {m}"));
                        }
                    }
                    Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => {
                        return Err(format!("Error response from daemon: {message}"))
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(30), pull)
            .await
            .unwrap_or_else(|_| Err("context deadline exceeded".to_owned()))
    }
}
