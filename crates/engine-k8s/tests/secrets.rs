//! Secrets and ConfigMaps reaching an environment on the simulator: a Secret as env with a
//! prefix and by key, a ConfigMap mounted with an item mapping, optional missing ones
//! skipped, and a required missing one (or key) a start error naming it.

mod common;

use std::collections::BTreeMap;

use berth_engine_core::{ContainerEngine, EnvironmentSpec, ExecRequest, ImageRef, SessionId};
use berth_engine_k8s::manifest::{
    Cache, EnvFromSource, FileMount, KeyRef, NewClaim, PodExtras, SourceKind,
};
use berth_engine_k8s::KubernetesConfig;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};

async fn client(guard: &common::SimGuard) -> kube::Client {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&guard.sim.kubeconfig()).expect("kubeconfig"),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("client config");
    kube::Client::try_from(config).expect("client")
}

async fn objects(client: &kube::Client) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let mut secret = Secret::default();
    secret.metadata.name = Some("api-keys".into());
    secret.data = Some(BTreeMap::from([
        ("TOKEN".to_owned(), ByteString(b"s3cret value".to_vec())),
        ("USER".to_owned(), ByteString(b"bot".to_vec())),
    ]));
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut map = ConfigMap::default();
    map.metadata.name = Some("app-config".into());
    map.data = Some(BTreeMap::from([
        ("settings.yaml".to_owned(), "mode: fast\n".to_owned()),
        ("unused".to_owned(), "x".to_owned()),
    ]));
    maps.create(&PostParams::default(), &map)
        .await
        .expect("config map");
}

fn extras() -> PodExtras {
    let mut extras = PodExtras::default();
    let mut from = EnvFromSource::new(SourceKind::Secret, "api-keys");
    from.prefix = Some("API_".into());
    extras.env_from.push(from);
    let mut missing = EnvFromSource::new(SourceKind::ConfigMap, "not-there");
    missing.optional = true;
    extras.env_from.push(missing);
    extras.key_env.insert(
        "DB_PASSWORD".into(),
        KeyRef::new(SourceKind::Secret, "api-keys", "TOKEN"),
    );
    let mut optional_key = KeyRef::new(SourceKind::Secret, "api-keys", "NO_SUCH_KEY");
    optional_key.optional = true;
    extras.key_env.insert("MAYBE".into(), optional_key);
    let mut mount = FileMount::new(SourceKind::ConfigMap, "app-config", "/etc/app");
    mount
        .items
        .insert("settings.yaml".into(), "conf/app.yaml".into());
    extras.mounts.push(mount);
    let mut optional_mount = FileMount::new(SourceKind::Secret, "absent-secret", "/etc/opt");
    optional_mount.optional = true;
    extras.mounts.push(optional_mount);
    extras
}

fn spec(image: &ImageRef) -> EnvironmentSpec {
    EnvironmentSpec::new(image.clone(), SessionId::generate())
}

async fn sh(
    engine: &dyn ContainerEngine,
    env: &berth_engine_core::EnvironmentId,
    script: &str,
) -> (i32, String) {
    let out = engine
        .exec(env, ExecRequest::shell(script))
        .await
        .expect("exec");
    (out.status.code(), out.stdout_lossy() + &out.stderr_lossy())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_config_maps_reach_the_environment_as_env_and_files() {
    let (engine, image, guard) =
        common::sim_engine(|c: &mut KubernetesConfig| c.pod = extras()).await;
    objects(&client(&guard).await).await;
    let env = engine.start(&spec(&image)).await.expect("start");
    let (code, out) = sh(
        &engine,
        &env,
        "echo \"$API_TOKEN|$API_USER|$DB_PASSWORD|${MAYBE-unset}\"; cat /etc/app/conf/app.yaml; ls /etc/app/conf; ls -A /etc/opt | wc -l",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out, "s3cret value|bot|s3cret value|unset\nmode: fast\napp.yaml\n0\n",
        "prefix, key ref, item mapping, optional ones"
    );
    let (code, out) = sh(&engine, &env, "echo x > /etc/app/conf/app.yaml").await;
    assert_ne!(code, 0, "the files are read-only: {out}");
    engine.stop(&env).await.expect("stop");
}

/// The error of starting an environment with `extras` on a fresh simulator holding the
/// objects of [`objects`], and how long it took.
async fn start_error(extras: PodExtras) -> (String, std::time::Duration) {
    let (engine, image, guard) =
        common::sim_engine(|c: &mut KubernetesConfig| c.pod = extras).await;
    objects(&client(&guard).await).await;
    let started = std::time::Instant::now();
    let err = engine.start(&spec(&image)).await.expect_err("cannot start");
    (err.to_string(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_missing_secret_or_key_is_a_start_error_naming_it() {
    let mut missing_secret = PodExtras::default();
    missing_secret.key_env.insert(
        "TOKEN".into(),
        KeyRef::new(SourceKind::Secret, "absent", "TOKEN"),
    );
    let mut missing_key = PodExtras::default();
    missing_key.key_env.insert(
        "TOKEN".into(),
        KeyRef::new(SourceKind::Secret, "api-keys", "NOPE"),
    );
    let mut missing_volume = PodExtras::default();
    missing_volume
        .mounts
        .push(FileMount::new(SourceKind::Secret, "gone", "/etc/gone"));
    for (extras, needles) in [
        (
            missing_secret,
            ["CreateContainerConfigError", "secret \"absent\" not found"],
        ),
        (
            missing_key,
            [
                "CreateContainerConfigError",
                "couldn't find key NOPE in Secret default/api-keys",
            ],
        ),
        (missing_volume, ["FailedMount", "secret \"gone\" not found"]),
    ] {
        let (text, took) = start_error(extras).await;
        for needle in needles {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        assert!(
            took < std::time::Duration::from_secs(30),
            "fails at once, not after start_timeout: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_claim_berth_creates_outlives_the_environment() {
    let (engine, image, _guard) = common::sim_engine(|c: &mut KubernetesConfig| {
        c.pod.caches.push(created_cache("build-cache"))
    })
    .await;
    let first = engine.start(&spec(&image)).await.expect("start");
    let (code, out) = sh(&engine, &first, "echo built > /cache/artifact").await;
    assert_eq!(code, 0, "{out}");
    engine.stop(&first).await.expect("stop");
    let second = engine.start(&spec(&image)).await.expect("start again");
    let (code, out) = sh(&engine, &second, "cat /cache/artifact").await;
    assert_eq!((code, out.as_str()), (0, "built\n"));
    engine.stop(&second).await.expect("stop");
}

/// A batch run makes its cache claim as an environment does: run first, it must not wait on
/// a claim nobody creates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_makes_its_cache_claim_too() {
    let (engine, image, _guard) = common::sim_engine(|c: &mut KubernetesConfig| {
        c.pod.caches.push(created_cache("run-cache"))
    })
    .await;
    let run = engine
        .submit_run(&berth_engine_core::RunSpec::new(
            spec(&image),
            ["sh", "-c", "echo ran > /cache/x && cat /cache/x"],
        ))
        .await
        .expect("submit");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        let status = engine.run_status(&run).await.expect("status");
        if status.state.is_finished() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run never finished: {status:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    assert_eq!(status.exit_code, Some(0), "{status:?}");
    engine
        .stop(&run.as_environment())
        .await
        .expect("remove the run");
}

/// A cache at `/cache` on claim `claim`, which berth creates (1Gi) when it is missing.
fn created_cache(claim: &str) -> Cache {
    Cache {
        claim: claim.into(),
        create: Some(NewClaim {
            size: "1Gi".into(),
            storage_class: None,
            access_modes: Vec::new(),
        }),
        path: "/cache".into(),
        read_only: false,
    }
}
