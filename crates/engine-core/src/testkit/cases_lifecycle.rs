//! Conformance cases: starting, listing, stopping and ending environments, images, and
//! input refused before any I/O.

use std::time::{Duration, Instant};

use super::cases::run;
use super::Fixture;
use crate::{
    tar_stream_from_bytes, BuildSpec, EnvironmentId, EnvironmentState, ErrorKind, ExecRequest,
    ImageRef, LabelSelector, Progress, PullPolicy, Resources, SessionId, StopOutcome,
};

/// Stopping twice is fine: the second time says the environment was already gone.
pub async fn stop_twice_is_fine(fx: &Fixture) {
    let env = fx.engine.start(&fx.spec()).await.expect("start");
    let started = Instant::now();
    let first = fx.engine.stop(&env).await.expect("first stop");
    let took = started.elapsed();
    assert_eq!(first, StopOutcome::Stopped);
    eprintln!("stop took {took:?}");
    assert_eq!(
        fx.engine.stop(&env).await.expect("second stop"),
        StopOutcome::AlreadyGone
    );
}

/// An exec in a stopped environment is `NotFound`.
pub async fn exec_in_stopped_environment_is_not_found(fx: &Fixture) {
    let env = fx.engine.start(&fx.spec()).await.expect("start");
    fx.engine.stop(&env).await.expect("stop");
    let err = fx
        .engine
        .exec(&env, ExecRequest::new(["true"]))
        .await
        .expect_err("exec after stop");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains(env.as_str()), "{err}");
}

/// A missing image is `ImageNotFound` naming the reference, from start and from ensure_image.
pub async fn missing_image_is_image_not_found(fx: &Fixture) {
    let image = ImageRef::new(format!("berth-test/missing:{}", SessionId::generate())).unwrap();
    let mut spec = fx.spec();
    spec.image = image.clone();
    let session = spec.session.clone();
    let err = fx.engine.start(&spec).await.expect_err("start must fail");
    assert_eq!(err.kind(), ErrorKind::ImageNotFound, "{err}");
    assert!(err.to_string().contains(image.as_str()), "{err}");
    let left = fx
        .engine
        .list(&LabelSelector::session(&session))
        .await
        .expect("list");
    assert!(left.is_empty(), "a failed start left {left:?}");
    let err = fx
        .engine
        .ensure_image(&image, PullPolicy::Never, &Progress::none())
        .await
        .expect_err("ensure_image must fail");
    assert_eq!(err.kind(), ErrorKind::ImageNotFound, "{err}");
    assert!(err.to_string().contains(image.as_str()), "{err}");
}

/// `list` finds exactly the session's environments by label, running; none after stop.
pub async fn list_finds_the_session_by_label(fx: &Fixture) {
    let spec_a = fx.spec().with_name("a").with_label("team", "blue");
    let session = spec_a.session.clone();
    let mut spec_b = fx.spec().with_name("b");
    spec_b.session = session.clone();
    let other = fx.spec();
    let (a, b, c) = tokio::join!(
        fx.engine.start(&spec_a),
        fx.engine.start(&spec_b),
        fx.engine.start(&other)
    );
    let started: Vec<EnvironmentId> = [&a, &b, &c]
        .into_iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    let check = std::panic::AssertUnwindSafe(async {
        let (a, b) = (a.as_ref().expect("start a"), b.as_ref().expect("start b"));
        c.as_ref().expect("start other");
        let found = fx
            .engine
            .list(&LabelSelector::session(&session))
            .await
            .expect("list");
        let mut ids: Vec<_> = found.iter().map(|s| s.id.clone()).collect();
        ids.sort();
        let mut want = vec![a.clone(), b.clone()];
        want.sort();
        assert_eq!(ids, want);
        for status in &found {
            assert_eq!(status.state, EnvironmentState::Running, "{status:?}");
            assert_eq!(status.session.as_ref(), Some(&session));
            assert!(status.created_unix_secs.is_some(), "{status:?}");
        }
        let blue = fx
            .engine
            .list(&LabelSelector::session(&session).with("team", "blue"))
            .await
            .expect("list blue");
        assert_eq!(blue.len(), 1);
        assert_eq!(&blue[0].id, a);
    });
    let outcome = futures_util::FutureExt::catch_unwind(check).await;
    for env in &started {
        fx.engine.stop(env).await.expect("stop");
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    let left = fx
        .engine
        .list(&LabelSelector::session(&session))
        .await
        .expect("list");
    assert!(left.is_empty(), "left after stop: {left:?}");
}

/// Malformed specs and requests are `InvalidSpec` naming the field, and create nothing.
pub async fn invalid_input_is_rejected_before_io(fx: &Fixture) {
    let spec = fx.spec().with_resources(Resources {
        memory_bytes: Some(0),
        ..Resources::default()
    });
    let err = fx.engine.start(&spec).await.expect_err("zero memory");
    assert_eq!(err.kind(), ErrorKind::InvalidSpec);
    assert!(err.to_string().contains("resources.memory"), "{err}");
    let spec = fx.spec().with_env("BAD=NAME", "x");
    let err = fx.engine.start(&spec).await.expect_err("env name with =");
    assert!(err.to_string().contains("env"), "{err}");
    let left = fx
        .engine
        .list(&LabelSelector::session(&spec.session))
        .await
        .expect("list");
    assert!(left.is_empty());
    fx.with_env(&fx.spec(), |env| async move {
        let err = fx
            .engine
            .exec(&env, ExecRequest::new(Vec::<String>::new()))
            .await
            .expect_err("empty argv");
        assert_eq!(err.kind(), ErrorKind::InvalidSpec);
        assert!(err.to_string().contains("argv"), "{err}");
        let err = fx
            .engine
            .exec(&env, ExecRequest::new(["true"]).with_env("A\0B", "x"))
            .await
            .expect_err("env name with NUL");
        assert!(err.to_string().contains("env"), "{err}");
    })
    .await;
}

/// The environment ends by itself after its maximum lifetime; exec then says `NotFound`, and
/// stop still cleans up.
pub async fn environment_ends_after_max_lifetime(fx: &Fixture) {
    // Long enough to start on a loaded machine (a Kubernetes start that outlives the lifetime
    // fails at once with EnvironmentGone, which is not what this case is about).
    let spec = fx.spec().with_max_lifetime(Duration::from_secs(5));
    let env = fx.engine.start(&spec).await.expect("start");
    let selector = LabelSelector::session(&spec.session);
    let deadline = Instant::now() + Duration::from_secs(60);
    let ended = loop {
        let found = fx.engine.list(&selector).await.expect("list");
        let running = found.iter().any(|s| s.state == EnvironmentState::Running);
        if !running || Instant::now() > deadline {
            break !running;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let exec = fx.engine.exec(&env, ExecRequest::new(["true"])).await;
    let stopped = fx.engine.stop(&env).await;
    assert!(ended, "still running 60 s after a 5 s lifetime");
    let err = exec.expect_err("exec after the lifetime");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    stopped.expect("stop after the lifetime");
    assert!(fx.engine.list(&selector).await.expect("list").is_empty());
}

/// `build_image` builds from a tar context (or is `Unsupported` with a reason), and the result
/// runs.
pub async fn build_image_or_unsupported(fx: &Fixture) {
    let tag = ImageRef::new("berth-test/conformance-build:1").unwrap();
    let dockerfile = format!(
        "FROM {}\nARG GREETING\nRUN echo \"$GREETING\" > /built\n",
        fx.image
    );
    let mut context = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(dockerfile.len() as u64);
    context
        .append_data(&mut h, "Dockerfile", dockerfile.as_bytes())
        .expect("tar");
    let context = context.into_inner().expect("tar");
    let events = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = events.clone();
    let progress = Progress::new(move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    let build = BuildSpec::new(tag.clone(), tar_stream_from_bytes(context))
        .with_build_arg("GREETING", "hello from build");
    match fx.engine.build_image(build, &progress).await {
        Err(e) if e.is_unsupported() => {
            assert!(e.to_string().len() > 40, "Unsupported needs a reason: {e}");
            return;
        }
        other => {
            other.expect("build");
        }
    }
    assert!(
        events.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "no progress"
    );
    let mut spec = fx.spec();
    spec.image = tag;
    fx.with_env(&spec, |env| async move {
        let out = run(fx, &env, ExecRequest::new(["cat", "/built"])).await;
        assert_eq!(out.stdout_lossy(), "hello from build\n");
    })
    .await;
    let broken = "FROM scratch\nRUN false\n";
    let mut context = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(broken.len() as u64);
    context
        .append_data(&mut h, "Dockerfile", broken.as_bytes())
        .expect("tar");
    let err = fx
        .engine
        .build_image(
            BuildSpec::new(
                ImageRef::new("berth-test/conformance-broken:1").unwrap(),
                tar_stream_from_bytes(context.into_inner().expect("tar")),
            ),
            &Progress::none(),
        )
        .await
        .expect_err("a failing build");
    assert_eq!(err.kind(), ErrorKind::Build, "{err}");
}
