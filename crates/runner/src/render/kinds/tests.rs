use super::*;
use crate::spec::{environment_spec, EnvOptions};

fn config(yaml: &str) -> BerthConfig {
    BerthConfig::from_yaml_str(yaml).expect("config")
}

const RESTRICTED: &str = "runner:\n  backend: kubernetes\n  image: busybox:1.36\nkubernetes:\n  namespace: agents\n  pvc_name: ws\n  create_pvc: true\n  service_account: runner\n  security: restricted\n  run_as_user: \"1000\"\n  resources:\n    limits:\n      cpu: 500m\n      memory: 1Gi\n";

fn spec_of(config: &BerthConfig, name: &str) -> EnvironmentSpec {
    environment_spec(config, &EnvOptions::named(name.to_owned())).expect("spec")
}

fn argv() -> Vec<String> {
    vec!["make".into(), "test".into()]
}

fn render(kind: Kind, schedule: Option<&str>) -> Vec<Value> {
    let c = config(RESTRICTED);
    let mut run = RunManifest::new(kind, argv());
    if let Some(s) = schedule {
        run = run.with_schedule(s).with_timezone("Europe/Berlin");
    }
    objects(&c, &spec_of(&c, "nightly"), &run).expect("objects")
}

#[test]
fn a_job_is_the_claim_and_the_job_running_the_command() {
    let objects = render(Kind::Job, None);
    assert_eq!(objects.len(), 2);
    assert_eq!(objects[0]["kind"], "PersistentVolumeClaim");
    assert_eq!(objects[0]["metadata"]["name"], "ws");
    let job = &objects[1];
    assert_eq!(job["apiVersion"], "batch/v1");
    assert_eq!(job["kind"], "Job");
    assert_eq!(job["metadata"]["name"], "berth-nightly");
    assert_eq!(job["metadata"]["namespace"], "agents");
    assert_eq!(
        job["metadata"]["labels"]["app.kubernetes.io/created-by"],
        "berth"
    );
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["command"], json!(["make", "test"]));
    assert_eq!(pod["containers"][0]["image"], "busybox:1.36");
    assert_eq!(pod["containers"][0]["resources"]["limits"]["cpu"], "500m");
    assert_eq!(pod["serviceAccountName"], "runner");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "ws"
    );
    assert_eq!(job["spec"]["activeDeadlineSeconds"], 86400);
    assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 600);
}

#[test]
fn a_cron_job_has_the_schedule_its_zone_and_the_job_template() {
    let objects = render(Kind::CronJob, Some("0  4 * * 1-5"));
    let cron = objects.last().unwrap();
    assert_eq!(cron["kind"], "CronJob");
    assert_eq!(cron["spec"]["schedule"], "0 4 * * 1-5");
    assert_eq!(cron["spec"]["timeZone"], "Europe/Berlin");
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
    assert_eq!(
        cron["spec"]["jobTemplate"]["spec"],
        render(Kind::Job, None)[1]["spec"]
    );
}

#[test]
fn a_workflow_runs_the_environments_container_as_its_entrypoint() {
    let objects = render(Kind::Workflow, None);
    let wf = objects.last().unwrap();
    assert_eq!(wf["apiVersion"], "argoproj.io/v1alpha1");
    assert_eq!(wf["kind"], "Workflow");
    assert_eq!(wf["metadata"]["name"], "berth-nightly");
    let spec = &wf["spec"];
    assert_eq!(spec["entrypoint"], "main");
    assert_eq!(spec["templates"][0]["name"], "main");
    let job = &render(Kind::Job, None)[1];
    let pod = &job["spec"]["template"]["spec"];
    let mut container = pod["containers"][0].clone();
    container.as_object_mut().unwrap().remove("name");
    assert_eq!(spec["templates"][0]["container"], container);
    assert_eq!(spec["securityContext"], pod["securityContext"]);
    assert_eq!(spec["volumes"], pod["volumes"]);
    assert_eq!(spec["serviceAccountName"], "runner");
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["executor"]["serviceAccountName"], "runner");
    assert_eq!(spec["activeDeadlineSeconds"], 86400);
    assert_eq!(spec["ttlStrategy"]["secondsAfterCompletion"], 600);
    assert_eq!(spec["podGC"]["strategy"], "OnPodSuccess");
    assert_eq!(spec["podMetadata"]["labels"], job["metadata"]["labels"]);
}

#[test]
fn a_cron_workflow_wraps_the_workflow_spec() {
    let objects = render(Kind::CronWorkflow, Some("*/15 * * * *"));
    let cron = objects.last().unwrap();
    assert_eq!(cron["kind"], "CronWorkflow");
    assert_eq!(cron["spec"]["schedule"], "*/15 * * * *");
    assert_eq!(cron["spec"]["timezone"], "Europe/Berlin");
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
    assert_eq!(
        cron["spec"]["workflowSpec"],
        render(Kind::Workflow, None)[1]["spec"]
    );
}

#[test]
fn flags_are_checked_against_the_kind() {
    let c = config(RESTRICTED);
    let spec = spec_of(&c, "nightly");
    let err = |run: RunManifest| objects(&c, &spec, &run).unwrap_err().to_string();
    let e = err(RunManifest::new(Kind::Job, vec![]));
    assert!(e.contains("command") && e.contains("--kind job"), "{e}");
    let e = err(RunManifest::new(Kind::CronJob, argv()));
    assert!(e.contains("--schedule"), "{e}");
    let e = err(RunManifest::new(Kind::Workflow, argv()).with_schedule("0 4 * * *"));
    assert!(e.contains("--schedule") && e.contains("workflow"), "{e}");
    let e = err(RunManifest::new(Kind::Job, argv()).with_timezone("UTC"));
    assert!(e.contains("--timezone"), "{e}");
    for bad in [
        "0 4 * *",
        "0 4 * * * *",
        "@daily",
        "CRON_TZ=UTC 0 4 * * *",
        "0 4 * * ;",
    ] {
        let e = err(RunManifest::new(Kind::CronWorkflow, argv()).with_schedule(bad));
        assert!(e.contains("--schedule"), "{bad}: {e}");
    }
    let e = err(RunManifest::new(Kind::CronJob, argv())
        .with_schedule("0 4 * * *")
        .with_timezone("../etc/passwd"));
    assert!(e.contains("--timezone"), "{e}");
    assert!("pod"
        .parse::<Kind>()
        .unwrap_err()
        .to_string()
        .contains("--kind"));
    assert_eq!("cron-workflow".parse::<Kind>().unwrap(), Kind::CronWorkflow);
}

#[test]
fn names_fit_the_kind() {
    // The spec's name is a short DNS label already; a long prefix can still overflow.
    let c = config(RESTRICTED);
    let mut long = spec_of(&c, "nightly");
    long.name_prefix = "a".repeat(48);
    assert_eq!(object_name(&long, Kind::Job).unwrap().len(), 56);
    let e = object_name(&long, Kind::CronJob).unwrap_err().to_string();
    assert!(e.contains("--name") && e.contains("52"), "{e}");
    let mut upper = spec_of(&c, "nightly");
    upper.name_prefix = "Berth".into();
    let e = object_name(&upper, Kind::Job).unwrap_err().to_string();
    assert!(e.contains("--name") && e.contains("lowercase"), "{e}");
}

#[test]
fn the_run_spec_reads_the_kubernetes_settings_whatever_the_backend() {
    let c = config(&RESTRICTED.replace("backend: kubernetes", "backend: docker"));
    let spec = run_spec(
        &c,
        &EnvOptions::named("nightly".to_owned()),
        [("A".to_owned(), "1".to_owned())],
        Some("/workspace".into()),
    )
    .expect("spec");
    assert_eq!(
        spec.security,
        berth_engine_core::SecurityProfile::Restricted
    );
    assert_eq!(spec.user.as_deref(), Some("1000"));
    assert_eq!(spec.env["A"], "1");
    assert_eq!(spec.workdir.as_deref(), Some("/workspace"));
    assert!(
        matches!(spec.workspace, Workspace::Volume { .. }),
        "{:?}",
        spec.workspace
    );
    let e = run_spec(
        &c,
        &EnvOptions::named("x".to_owned()),
        [(String::new(), "1".to_owned())],
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("env"), "{e}");
}

#[test]
fn schedule_settings_reach_the_cron_job_and_the_cron_workflow() {
    let c = config(&format!(
        "{RESTRICTED}  schedules:\n    suspend: true\n    concurrency_policy: Replace\n    successful_jobs_history_limit: 5\n    failed_jobs_history_limit: 0\n    starting_deadline: 2m\n"
    ));
    let spec = spec_of(&c, "nightly");
    for kind in [Kind::CronJob, Kind::CronWorkflow] {
        let run = RunManifest::new(kind, argv()).with_schedule("0 4 * * *");
        let objects = objects(&c, &spec, &run).expect("objects");
        let cron = &objects.last().unwrap()["spec"];
        assert_eq!(cron["suspend"], true, "{kind:?}: {cron}");
        assert_eq!(cron["concurrencyPolicy"], "Replace", "{kind:?}");
        assert_eq!(cron["successfulJobsHistoryLimit"], 5, "{kind:?}");
        assert_eq!(cron["failedJobsHistoryLimit"], 0, "{kind:?}");
        assert_eq!(cron["startingDeadlineSeconds"], 120, "{kind:?}");
    }
    // Checked by name when the config loads.
    for (yaml, want) in [
        (
            "kubernetes:\n  schedules: {concurrency_policy: replace}\n",
            "expected Allow, Forbid or Replace, got \"replace\"",
        ),
        (
            "kubernetes:\n  schedules: {failed_jobs_history_limit: 3000000000}\n",
            "kubernetes.schedules.failed_jobs_history_limit",
        ),
        ("kubernetes:\n  schedules: {suspended: true}\n", "suspend"),
    ] {
        let err = BerthConfig::from_yaml_str(yaml).unwrap_err().to_string();
        assert!(err.contains(want), "{yaml}: {err}");
    }
}
