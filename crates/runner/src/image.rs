//! Image preparation before a start: which backends need the image pulled first, and a
//! failed pull said as "not here, and the pull failed".

use berth_engine_core::{
    BackendKind, ContainerEngine, ErrorKind, ImageInfo, ImageRef, Progress, PullPolicy,
};

use crate::error::{Result, RunnerError};

/// The offline test image (`berth_engine_core::testkit::TEST_IMAGE`, not linked into the
/// library), named in the hint of a failed pull.
const TEST_IMAGE: &str = "berth-test/busybox:2";

/// Whether `backend` needs the image pulled before a start. Docker creates nothing from a
/// missing image; a cluster pulls on its own and its start reports a failed pull with the
/// reason, so there a check would only cost a pod.
#[must_use]
pub fn needs_pre_pull(backend: BackendKind) -> bool {
    match backend {
        BackendKind::Docker => true,
        BackendKind::Kubernetes => false,
    }
}

/// Makes `image` present where the engine needs it before a start, as `policy` says;
/// `Ok(None)` where the engine pulls by itself.
///
/// # Errors
/// [`RunnerError::ImageMissing`] when the pull failed or the image exists nowhere; the
/// engine's error otherwise.
pub async fn prepare(
    engine: &dyn ContainerEngine,
    image: &ImageRef,
    policy: PullPolicy,
    progress: &Progress,
) -> Result<Option<ImageInfo>> {
    if !needs_pre_pull(engine.backend()) {
        return Ok(None);
    }
    engine
        .ensure_image(image, policy, progress)
        .await
        .map(Some)
        .map_err(|e| missing_image(image, e))
}

/// A failed pull of a missing image says first that the image is not here; the test image
/// comes from no registry, so it names the command that builds it.
fn missing_image(image: &ImageRef, e: berth_engine_core::Error) -> RunnerError {
    if !matches!(e.kind(), ErrorKind::ImagePull | ErrorKind::ImageNotFound) {
        return e.into();
    }
    let hint = if image.as_str() == TEST_IMAGE {
        "; build it with `cargo run -p berth-engine-docker --example test-image`"
    } else {
        ""
    };
    RunnerError::ImageMissing {
        image: image.clone(),
        hint,
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_docker_pulls_first() {
        assert!(needs_pre_pull(BackendKind::Docker));
        assert!(!needs_pre_pull(BackendKind::Kubernetes));
    }

    #[test]
    fn a_failed_pull_of_the_test_image_names_the_command_that_builds_it() {
        let image = ImageRef::new(TEST_IMAGE).expect("image");
        let pull = berth_engine_core::Error::ImageNotFound {
            image: TEST_IMAGE.into(),
            reason: "no registry".into(),
        };
        let err = missing_image(&image, pull);
        assert!(matches!(err, RunnerError::ImageMissing { .. }));
        assert!(err.to_string().contains("example test-image"), "{err}");
        let other = missing_image(&image, berth_engine_core::Error::invalid_spec("x", "y"));
        assert!(matches!(other, RunnerError::Engine(_)), "{other}");
    }
}
