//! Images: inspect, pull (with progress and failure classification) and build.

use berth_engine_core::{
    BuildSpec, Error, ImageInfo, ImageRef, Progress, ProgressEvent, PullPolicy, Result,
};
use bollard::query_parameters::{BuildImageOptions, CreateImageOptions, PushImageOptions};
use futures_util::StreamExt;

use crate::errors::{self};
use crate::DockerEngine;

pub(crate) async fn ensure(
    engine: &DockerEngine,
    image: &ImageRef,
    policy: PullPolicy,
    progress: &Progress,
) -> Result<ImageInfo> {
    if policy != PullPolicy::Always {
        if let Some(info) = engine.inspect_image_info(image).await? {
            return Ok(info);
        }
        if policy == PullPolicy::Never {
            return Err(Error::ImageNotFound {
                image: image.to_string(),
                reason: format!(
                    "it is not on the Docker daemon at {} and the pull policy is never; build it, load it, or allow pulling",
                    engine.address
                ),
            });
        }
    }
    engine.pull(image, progress).await?;
    engine
        .inspect_image_info(image)
        .await?
        .ok_or_else(|| Error::ImageNotFound {
            image: image.to_string(),
            reason: "the pull finished but the daemon does not have the image".into(),
        })
}

pub(crate) async fn build(
    engine: &DockerEngine,
    build: BuildSpec,
    platform: Option<&str>,
    progress: &Progress,
) -> Result<ImageInfo> {
    build.validate()?;
    let tag = build.tag.clone();
    let options = BuildImageOptions {
        dockerfile: build.dockerfile.clone(),
        t: Some(tag.to_string()),
        buildargs: Some(build.build_args.clone().into_iter().collect()),
        labels: Some(build.labels.clone().into_iter().collect()),
        pull: build.pull.then(|| "1".to_owned()),
        rm: true,
        forcerm: true,
        platform: platform.unwrap_or_default().to_owned(),
        ..Default::default()
    };
    let body = bollard::body_try_stream(build.context);
    let mut stream = engine.docker.build_image(options, None, Some(body));
    let build_failed = |reason: String| Error::Build {
        tag: tag.to_string(),
        reason,
    };
    while let Some(item) = stream.next().await {
        let info =
            item.map_err(|e| stream_error(&engine.address, "build image", e, build_failed))?;
        if let Some(detail) = info.error_detail {
            return Err(build_failed(detail.message.unwrap_or_default()));
        }
        if let Some(line) = info
            .stream
            .as_deref()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
        {
            progress.emit(&ProgressEvent::status(None, line));
        }
        if let Some(status) = info.status {
            progress.emit(&ProgressEvent::status(info.id, status));
        }
    }
    engine.inspect_image_info(&tag).await?.ok_or_else(|| {
        build_failed("the build finished but the daemon has no image with that tag".into())
    })
}

impl DockerEngine {
    /// Builds `build` for `platform` (`linux/arm64`; `None` means the daemon's own), as
    /// [`berth_engine_core::ContainerEngine::build_image`] does for the daemon's platform.
    /// The daemon tags the image only when every step succeeded; a build whose connection
    /// is lost is cancelled by the daemon and tags nothing.
    ///
    /// # Errors
    /// [`Error::Build`] when a step fails; [`Error::Unavailable`] when the daemon cannot be
    /// reached or the connection is lost mid-build.
    pub async fn build_image_for(
        &self,
        build: BuildSpec,
        platform: Option<&str>,
        progress: &Progress,
    ) -> Result<ImageInfo> {
        self::build(self, build, platform, progress).await
    }

    /// Pushes `image` (its reference names the registry) from the daemon, with progress.
    /// No credentials are sent: the registry must accept the daemon's anonymous push (or
    /// the daemon's own configuration).
    ///
    /// # Errors
    /// [`Error::Backend`] (kind `Other`) with the registry's answer;
    /// [`Error::Unavailable`] when the daemon cannot be reached.
    pub async fn push_image(&self, image: &ImageRef, progress: &Progress) -> Result<()> {
        let mut stream = self.docker.push_image(
            image.repository(),
            Some(PushImageOptions {
                tag: image.tag().map(str::to_owned),
                ..Default::default()
            }),
            None,
        );
        let failed = |reason: String| {
            Error::backend(
                errors::BACKEND,
                "push image",
                std::io::Error::other(format!("pushing {image} failed: {reason}")),
            )
        };
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| stream_error(&self.address, "push image", e, failed))?;
            if let Some(detail) = info.error_detail {
                return Err(failed(detail.message.unwrap_or_default()));
            }
            if let Some(status) = info.status {
                progress.emit(&ProgressEvent::status(None, status));
            }
        }
        Ok(())
    }

    pub(crate) async fn inspect_image_info(&self, image: &ImageRef) -> Result<Option<ImageInfo>> {
        match crate::retry::idempotent("inspect image", || {
            self.docker.inspect_image(image.as_str())
        })
        .await
        {
            Ok(inspect) => Ok(Some(ImageInfo::new(
                image.clone(),
                inspect.id,
                inspect.size.and_then(|s| u64::try_from(s).ok()),
            ))),
            Err(e) if matches!(errors::status(&e), Some((404, _))) => Ok(None),
            Err(e) => Err(errors::other(&self.address, "inspect image", e)),
        }
    }

    pub(crate) async fn pull(&self, image: &ImageRef, progress: &Progress) -> Result<()> {
        let (from_image, tag) = match (image.digest(), image.tag()) {
            (Some(_), _) => (image.as_str().to_owned(), None),
            (None, tag) => (
                image.repository().to_owned(),
                Some(tag.unwrap_or("latest").to_owned()),
            ),
        };
        let mut stream = self.docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(from_image),
                tag,
                ..Default::default()
            }),
            None,
            None,
        );
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| self.pull_error(image, e))?;
            if let Some(detail) = info.error_detail {
                let reason = detail.message.unwrap_or_else(|| "unknown error".into());
                return Err(classify_pull_failure(image, reason));
            }
            if let Some(status) = info.status {
                let (current, total) = info
                    .progress_detail
                    .map(|d| {
                        (
                            d.current.and_then(|c| u64::try_from(c).ok()),
                            d.total.and_then(|t| u64::try_from(t).ok()),
                        )
                    })
                    .unwrap_or_default();
                progress.emit(&ProgressEvent::status(info.id, status).with_counts(current, total));
            }
        }
        Ok(())
    }

    pub(crate) fn pull_error(&self, image: &ImageRef, e: bollard::errors::Error) -> Error {
        if errors::is_transport(&e) {
            return errors::unavailable(&self.address, e);
        }
        let reason = match &e {
            bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
            bollard::errors::Error::DockerStreamError { error } => error.clone(),
            other => other.to_string(),
        };
        classify_pull_failure(image, reason)
    }
}

/// An error of a build or push stream: the transport failing is [`Error::Unavailable`], the
/// daemon's refusal or a step's failure is `failed(reason)`.
fn stream_error(
    address: &str,
    step: &str,
    e: bollard::errors::Error,
    failed: impl FnOnce(String) -> Error,
) -> Error {
    match e {
        e if errors::is_transport(&e) => errors::unavailable(address, e),
        bollard::errors::Error::DockerStreamError { error } => failed(error),
        bollard::errors::Error::DockerResponseServerError { message, .. } => failed(message),
        e => errors::other(address, step, e),
    }
}

fn classify_pull_failure(image: &ImageRef, reason: String) -> Error {
    let lower = reason.to_lowercase();
    if lower.contains("not found")
        || lower.contains("manifest unknown")
        || lower.contains("pull access denied")
        || lower.contains("does not exist")
    {
        Error::ImageNotFound {
            image: image.to_string(),
            reason,
        }
    } else {
        Error::ImagePull {
            image: image.to_string(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use berth_engine_core::ErrorKind;

    use super::*;

    fn kind_of(reason: &str) -> ErrorKind {
        let image = ImageRef::new("registry.example/team/app:1").unwrap();
        let err = classify_pull_failure(&image, reason.to_owned());
        assert!(
            err.to_string().contains(reason),
            "the daemon's words are kept: {err}"
        );
        err.kind()
    }

    #[test]
    fn a_missing_image_is_image_not_found_anything_else_a_pull_failure() {
        for missing in [
            "manifest for registry.example/team/app:1 not found: manifest unknown: manifest unknown",
            "pull access denied for team/app, repository does not exist or may require 'docker login'",
            "repository registry.example/team/app does not exist",
            "Error response from daemon: MANIFEST UNKNOWN",
        ] {
            assert_eq!(kind_of(missing), ErrorKind::ImageNotFound, "{missing}");
        }
        for transient in [
            "toomanyrequests: You have reached your pull rate limit",
            "Get \"https://registry.example/v2/\": dial tcp 10.0.0.1:443: connect: connection refused",
            "received unexpected HTTP status: 503 Service Unavailable",
            "no space left on device",
        ] {
            assert_eq!(kind_of(transient), ErrorKind::ImagePull, "{transient}");
        }
    }
}
