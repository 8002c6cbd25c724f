//! `berth submit`, `logs`, `status`, `ls --runs` and `down` of a batch run, end to end on
//! Docker and on the Kubernetes simulator: the binary from separate processes, as a user
//! would run it.

use std::process::Command;

use berth_engine_core::testkit::TEST_IMAGE;

mod common;

use common::{check_of, expect_exit, json_of, simulator, text};

/// Polls `probe` every 300 ms until it says done, failing with `what` and its last output
/// after `secs` seconds.
#[track_caller]
fn wait_for(secs: u64, what: &str, mut probe: impl FnMut() -> (bool, String)) {
    let start = std::time::Instant::now();
    loop {
        let (done, last) = probe();
        if done {
            return;
        }
        assert!(
            start.elapsed().as_secs() < secs,
            "{what} after {secs} s: {last}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

fn numbered(n: usize) -> String {
    (1..=n).map(|i| format!("line {i}\n")).collect()
}

const PRINT_30: &str =
    "i=1; while [ $i -le 30 ]; do echo line $i; i=$((i+1)); sleep 0.05; done; exit 3";

/// The whole flow against whatever backend `berth` (a command builder) is configured for.
fn submit_logs_status_watch_cancel(session: &str, berth: &dyn Fn(&[&str]) -> Command) {
    // Submit: the name at once, exit 0, while the run goes on.
    let out = expect_exit(
        &mut berth(&[
            "submit",
            "--session",
            session,
            "--name",
            "count",
            "--",
            "sh",
            "-c",
            PRINT_30,
        ]),
        0,
    );
    let run = text(&out.stdout).trim().to_owned();
    assert!(run.contains(session), "a run name: {run:?}");

    // Another process follows its logs: every line exactly once, then exit 0 at its end.
    let out = expect_exit(&mut berth(&["logs", "-f", &run]), 0);
    assert_eq!(text(&out.stdout), numbered(30));

    // Its status: the true exit code 3.
    let out = expect_exit(&mut berth(&["--json", "status", &run]), 0);
    let status = json_of(&out);
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["exit_code"], 3, "{status}");
    let out = expect_exit(&mut berth(&["status", &run]), 0);
    assert_eq!(text(&out.stdout), format!("{run}: failed (exit code 3)\n"));

    // --watch exits with the run's code, 0 and 3, with its output on stdout.
    for code in [0, 3] {
        let script = format!("echo watched; exit {code}");
        let out = expect_exit(
            &mut berth(&[
                "submit",
                "--watch",
                "--session",
                session,
                "--",
                "sh",
                "-c",
                &script,
            ]),
            code,
        );
        assert_eq!(text(&out.stdout), "watched\n");
        common::assert_stderr_has(&out, "submitted");
    }

    // `down NAME` cancels a running run, which stays for its status.
    let out = expect_exit(
        &mut berth(&[
            "submit",
            "--session",
            session,
            "--name",
            "sleeper",
            "--",
            "sleep",
            "600",
        ]),
        0,
    );
    let sleeper = text(&out.stdout).trim().to_owned();
    wait_for(90, "never running", || {
        let out = expect_exit(&mut berth(&["--json", "status", &sleeper]), 0);
        (json_of(&out)["state"] == "running", text(&out.stdout))
    });
    let out = expect_exit(&mut berth(&["down", &sleeper]), 0);
    assert_eq!(text(&out.stdout), format!("{sleeper}: cancelled\n"));
    wait_for(30, "not cancelled", || {
        let out = expect_exit(&mut berth(&["--json", "status", &sleeper]), 0);
        let state = json_of(&out)["state"].clone();
        if state != "cancelled" {
            assert_eq!(state, "running", "after cancel");
        }
        (state == "cancelled", text(&out.stdout))
    });

    // `ls --runs` shows the session's runs; plain `ls` shows no run as an environment.
    let out = expect_exit(
        &mut berth(&["--json", "ls", "--runs", "--session", session]),
        0,
    );
    let listed = json_of(&out);
    let ids: Vec<&str> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert!(
        ids.contains(&run.as_str()) && ids.contains(&sleeper.as_str()),
        "{listed}"
    );
    assert_eq!(ids.len(), 4, "{listed}");
    let out = expect_exit(&mut berth(&["--json", "ls", "--session", session]), 0);
    assert_eq!(
        json_of(&out),
        serde_json::json!([]),
        "runs listed as environments"
    );

    // A name that is no run: exit 125, saying so.
    let out = expect_exit(&mut berth(&["status", "berth-no-such-run-0"]), 125);
    common::assert_stderr_has(&out, "run not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_logs_status_watch_and_cancel_on_docker() {
    let (session, _cleanup) = common::fresh_session().await;
    let berth = |args: &[&str]| {
        let mut cmd = common::berth_with_state("runs-state", args);
        cmd.env("BERTH_RUNNER__IMAGE", TEST_IMAGE)
            .env("BERTH_RUNNER__BACKEND", "docker");
        cmd
    };
    submit_logs_status_watch_cancel(&session, &berth);

    // Docker has no scheduler: a schedule is refused, naming what to use.
    let out = expect_exit(
        &mut berth(&[
            "submit",
            "--schedule",
            "0 4 * * *",
            "--session",
            &session,
            "--",
            "true",
        ]),
        125,
    );
    common::assert_stderr_has(&out, "schedule is not supported");
    let out = expect_exit(
        &mut berth(&["submit", "--schedule", "every day", "--", "true"]),
        125,
    );
    common::assert_stderr_has(&out, "invalid schedule");
}

/// `berth ARGS` on the simulator whose kubeconfig [`simulator`] wrote in `dir`.
fn berth_on_sim(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = common::berth_in(dir, &dir.join("state"), args);
    common::on_kubernetes(&mut cmd, &dir.join("kubeconfig"));
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_logs_status_watch_and_cancel_on_kubernetes() {
    let (sim, dir) = simulator().await;
    let session = berth_engine_core::SessionId::generate().to_string();
    let berth = |args: &[&str]| berth_on_sim(dir.path(), args);
    submit_logs_status_watch_cancel(&session, &berth);
    drop(sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_and_its_runs_are_followed_on_kubernetes() {
    let (sim, dir) = simulator().await;
    let kubeconfig = dir.path().join("kubeconfig");
    let session = berth_engine_core::SessionId::generate().to_string();
    let berth = |args: &[&str]| berth_on_sim(dir.path(), args);
    let kubectl = |args: &[&str]| {
        let out = Command::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.33")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .expect("kubectl 1.33");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    let out = expect_exit(
        &mut berth(&[
            "submit",
            "--schedule",
            "0 4 * * *",
            "--session",
            &session,
            "--name",
            "nightly",
            "--",
            "sh",
            "-c",
            "echo scheduled; exit 3",
        ]),
        0,
    );
    let schedule = text(&out.stdout).trim().to_owned();
    // The real kubectl sees the CronJob, with its schedule.
    let listed = kubectl(&["get", "cronjobs"]);
    assert!(
        listed.contains(&schedule) && listed.contains("0 4 * * *"),
        "{listed}"
    );

    // It fires (the simulator's hook: no waiting until 4 o'clock); its Job is a run.
    let run = sim.fire_cron_job("default", &schedule).expect("fire");
    let out = expect_exit(&mut berth(&["logs", "-f", &run]), 0);
    assert_eq!(text(&out.stdout), "scheduled\n");
    let out = expect_exit(&mut berth(&["--json", "status", &run]), 0);
    let status = json_of(&out);
    assert_eq!(
        (status["state"].clone(), status["exit_code"].clone()),
        ("failed".into(), 3.into()),
        "{status}"
    );
    assert_eq!(kubectl(&["logs", &format!("job/{run}")]), "scheduled\n");

    // `ls --runs` shows the schedule with its last run, and the run itself.
    let out = expect_exit(
        &mut berth(&["--json", "ls", "--runs", "--session", &session]),
        0,
    );
    let listed = json_of(&out);
    let entry = |id: &str| {
        listed
            .as_array()
            .expect("a list")
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in {listed}"))
            .clone()
    };
    let cron = entry(&schedule);
    assert_eq!(cron["state"], "scheduled", "{cron}");
    assert_eq!(cron["schedule"], "0 4 * * *", "{cron}");
    assert_eq!(cron["runs"], serde_json::json!([run]), "{cron}");
    assert_eq!(entry(&run)["exit_code"], 3);

    // `down` removes the schedule, and its Jobs go with it.
    let out = expect_exit(&mut berth(&["down", &schedule]), 0);
    assert_eq!(text(&out.stdout), format!("{schedule}: schedule removed\n"));
    wait_for(30, "left after down", || {
        let out = expect_exit(
            &mut berth(&["--json", "ls", "--runs", "--session", &session]),
            0,
        );
        (json_of(&out) == serde_json::json!([]), text(&out.stdout))
    });
    drop(sim);
}

/// Every verb the simulator's authorizer could be asked for, on every resource berth might
/// touch: what a Role does not grant is denied.
const VERBS: [&str; 8] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];
const RESOURCES: [&str; 14] = [
    "jobs",
    "jobs/status",
    "cronjobs",
    "cronjobs/status",
    "pods",
    "pods/exec",
    "pods/log",
    "pods/attach",
    "pods/status",
    "persistentvolumeclaims",
    "events",
    "secrets",
    "configmaps",
    "namespaces",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_and_schedules_work_with_only_the_rendered_role_on_kubernetes() {
    let (sim, dir) = simulator().await;
    let session = berth_engine_core::SessionId::generate().to_string();
    let berth = |args: &[&str]| berth_on_sim(dir.path(), args);
    // Only what `berth render --rbac` grants.
    let role = json_of(&expect_exit(&mut berth(&["--json", "render", "--rbac"]), 0));
    let granted: Vec<(String, String)> = role[0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .flat_map(|r| {
            let resource = r["resources"][0].as_str().expect("resource").to_owned();
            r["verbs"]
                .as_array()
                .expect("verbs")
                .iter()
                .map(move |v| (v.as_str().expect("verb").to_owned(), resource.clone()))
        })
        .collect();
    for verb in VERBS {
        for resource in RESOURCES {
            if !granted.contains(&(verb.to_owned(), resource.to_owned())) {
                sim.deny(verb, resource);
            }
        }
    }
    // Doctor checks what runs use, and finds it granted.
    let report = json_of(&berth(&["--json", "doctor"]).output().expect("doctor"));
    for name in [
        "rbac: get pods/log",
        "rbac: create cronjobs",
        "rbac: delete cronjobs",
    ] {
        assert_eq!(check_of(&report, name)["ok"], true, "{name}: {report}");
    }

    // A run: watched to its exit code, its status, listed, and a running one cancelled.
    let out = expect_exit(
        &mut berth(&[
            "submit",
            "--watch",
            "--session",
            &session,
            "--",
            "sh",
            "-c",
            "echo ok; exit 3",
        ]),
        3,
    );
    assert_eq!(text(&out.stdout), "ok\n");
    let out = expect_exit(
        &mut berth(&["submit", "--session", &session, "--", "sleep", "600"]),
        0,
    );
    let sleeper = text(&out.stdout).trim().to_owned();
    expect_exit(&mut berth(&["logs", &sleeper]), 0);
    let out = expect_exit(&mut berth(&["down", &sleeper]), 0);
    assert_eq!(text(&out.stdout), format!("{sleeper}: cancelled\n"));

    // A schedule: created, fired, its run's logs, listed, removed.
    let out = expect_exit(
        &mut berth(&[
            "submit",
            "--schedule",
            "@daily",
            "--session",
            &session,
            "--",
            "echo",
            "nightly",
        ]),
        0,
    );
    let schedule = text(&out.stdout).trim().to_owned();
    let run = sim.fire_cron_job("default", &schedule).expect("fire");
    let out = expect_exit(&mut berth(&["logs", "-f", &run]), 0);
    assert_eq!(text(&out.stdout), "nightly\n");
    let out = expect_exit(
        &mut berth(&["--json", "ls", "--runs", "--session", &session]),
        0,
    );
    assert!(
        json_of(&out)
            .as_array()
            .expect("a list")
            .iter()
            .any(|r| r["id"] == schedule.as_str()),
        "{}",
        text(&out.stdout)
    );
    let out = expect_exit(&mut berth(&["down", &schedule]), 0);
    assert_eq!(text(&out.stdout), format!("{schedule}: schedule removed\n"));

    // Without the log permission, `logs` is refused, saying why, and doctor names it.
    let out = expect_exit(
        &mut berth(&["submit", "--session", &session, "--", "echo", "unread"]),
        0,
    );
    let unread = text(&out.stdout).trim().to_owned();
    sim.deny("get", "pods/log");
    let out = expect_exit(&mut berth(&["logs", "-f", &unread]), 125);
    common::assert_stderr_has(&out, "forbidden");
    let report = json_of(&berth(&["--json", "doctor"]).output().expect("doctor"));
    assert_eq!(
        check_of(&report, "rbac: get pods/log")["ok"],
        false,
        "{report}"
    );
    drop(sim);
}

/// Runs `git ARGS` in `dir` (the host's git, which makes the test repositories), with an
/// identity and no user or system config.
fn git(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=berth",
            "-c",
            "user.email=berth@example.com",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
}

/// A repository in `dir/repo`: `file` ("from main") and `link` (a symlink to it) on
/// `main`, and `feature.txt`
/// ("feature") on branch `feature` too.
fn git_repo(dir: &std::path::Path) -> std::path::PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("file"), "from main\n").expect("write");
    std::os::unix::fs::symlink("file", repo.join("link")).expect("symlink");
    git(&repo, &["add", "file", "link"]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    git(&repo, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(repo.join("feature.txt"), "feature\n").expect("write");
    git(&repo, &["add", "feature.txt"]);
    git(&repo, &["commit", "-q", "-m", "two"]);
    git(&repo, &["checkout", "-q", "main"]);
    repo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_git_checks_a_local_repository_out_into_the_run_on_docker() {
    let (session, _cleanup) = common::fresh_session().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = git_repo(dir.path());
    let repo = repo.to_str().expect("utf-8 path");
    let berth = |args: &[&str]| {
        let mut cmd = common::berth_with_state("runs-git-state", args);
        cmd.env("BERTH_RUNNER__IMAGE", TEST_IMAGE)
            .env("BERTH_RUNNER__BACKEND", "docker");
        cmd
    };
    let submit = |extra: &[&str], command: &[&str]| {
        let mut args = vec!["submit", "--watch", "--session", &session, "--git", repo];
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(command);
        berth(&args)
    };
    // The checkout is in the command's working directory at its first instruction.
    let out = expect_exit(&mut submit(&[], &["cat", "file"]), 0);
    assert_eq!(text(&out.stdout), "from main\n");
    let out = expect_exit(
        &mut submit(
            &[],
            &[
                "sh",
                "-c",
                "pwd; ls -a; readlink link; test -f feature.txt || exit 3",
            ],
        ),
        3,
    );
    assert_eq!(
        text(&out.stdout),
        "/workspace\n.\n..\n.git\nfile\nlink\nfile\n"
    );
    // --branch: that branch's files; a file:// URL works as a path does.
    let url = format!("file://{repo}");
    let out = expect_exit(
        &mut berth(&[
            "submit",
            "--watch",
            "--session",
            &session,
            "--git",
            &url,
            "--branch",
            "feature",
            "--",
            "cat",
            "feature.txt",
            "file",
        ]),
        0,
    );
    assert_eq!(text(&out.stdout), "feature\nfrom main\n");
    // Detached: the files are there when the run starts, whoever follows it.
    let out = expect_exit(
        &mut berth(&[
            "submit",
            "--session",
            &session,
            "--git",
            repo,
            "--",
            "cat",
            "file",
        ]),
        0,
    );
    let run = text(&out.stdout).trim().to_owned();
    let out = expect_exit(&mut berth(&["logs", "-f", &run]), 0);
    assert_eq!(text(&out.stdout), "from main\n");

    // An image whose user is not root gets the checkout as its own: it can change it.
    let image = UserImage::build(dir.path());
    let out = expect_exit(
        &mut berth(&[
            "submit",
            "--watch",
            "--session",
            &session,
            "--image",
            &image.0,
            "--git",
            repo,
            "--",
            "sh",
            "-c",
            "id -u; echo more >> file && touch new && stat -c %u file new",
        ]),
        0,
    );
    assert_eq!(text(&out.stdout), "1000\n1000\n1000\n");

    // Bad input: exit 125, naming --git, and no run left behind.
    let before = common::containers_of(&session).len();
    let missing = dir.path().join("no-such-repo");
    for (git_args, needle) in [
        (vec!["--git", missing.to_str().expect("utf-8")], "--git"),
        (
            vec!["--git", repo, "--branch", "no-such-branch"],
            "no-such-branch",
        ),
        (vec!["--git=--upload-pack=touch /tmp/x"], "--git"),
        (vec!["--git", "https://"], "--git"),
    ] {
        let mut args = vec!["submit", "--session", &session];
        args.extend(git_args);
        args.extend(["--", "true"]);
        let out = expect_exit(&mut berth(&args), 125);
        common::assert_stderr_has(&out, needle);
    }
    assert_eq!(
        common::containers_of(&session).len(),
        before,
        "a run was left"
    );
}

/// The test image running as uid 1000 (`USER 1000`), removed on drop.
struct UserImage(String);

impl UserImage {
    fn build(dir: &std::path::Path) -> Self {
        let tag = format!(
            "berth-test/user-{}:1",
            berth_engine_core::SessionId::generate()
                .as_str()
                .to_lowercase()
        );
        let context = dir.join("user-image");
        std::fs::create_dir_all(&context).expect("mkdir");
        std::fs::write(
            context.join("Dockerfile"),
            format!("FROM {TEST_IMAGE}\nUSER 1000\n"),
        )
        .expect("Dockerfile");
        let out = Command::new("docker")
            .args(["build", "-q", "-t", &tag])
            .arg(&context)
            .output()
            .expect("docker build");
        assert!(out.status.success(), "docker build: {}", text(&out.stderr));
        Self(tag)
    }
}

impl Drop for UserImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

/// An image with the host's `git` (its binary, the libraries it links and its exec path) on
/// top of the busybox test image, holding a bare copy of `repo` at `/srv/repo.git`: what a
/// cluster's git image and remote are, on a machine without a registry. Removed on drop.
struct GitImage(String);

impl GitImage {
    fn build(dir: &std::path::Path, repo: &std::path::Path) -> Self {
        let tag = format!(
            "berth-test/git-{}:1",
            berth_engine_core::SessionId::generate()
                .as_str()
                .to_lowercase()
        );
        let context = dir.join("git-image");
        let rootfs = context.join("rootfs");
        let copy = |from: &std::path::Path, to: &str| {
            let dest = rootfs.join(to.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
            std::fs::copy(from, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        };
        let which = Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .expect("sh");
        let git_bin = std::path::PathBuf::from(text(&which.stdout).trim());
        let exec_path = Command::new("git")
            .arg("--exec-path")
            .output()
            .expect("git");
        let exec_path = text(&exec_path.stdout).trim().to_owned();
        copy(&git_bin, "/usr/bin/git");
        for program in ["git", "git-upload-pack"] {
            copy(&git_bin, &format!("{exec_path}/{program}"));
        }
        let ldd = Command::new("ldd").arg(&git_bin).output().expect("ldd");
        for line in text(&ldd.stdout).lines() {
            // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "/lib64/ld-linux... (0x...)"
            let path = line
                .split("=>")
                .last()
                .and_then(|p| p.split_whitespace().next())
                .filter(|p| p.starts_with('/'));
            if let Some(path) = path {
                copy(std::path::Path::new(path), path);
            }
        }
        let bare = rootfs.join("srv/repo.git");
        std::fs::create_dir_all(rootfs.join("srv")).expect("mkdir");
        git(
            dir,
            &[
                "clone",
                "-q",
                "--bare",
                repo.to_str().expect("utf-8"),
                bare.to_str().expect("utf-8"),
            ],
        );
        std::fs::write(
            context.join("Dockerfile"),
            format!("FROM {TEST_IMAGE}\nCOPY rootfs/ /\n"),
        )
        .expect("Dockerfile");
        let out = Command::new("docker")
            .args(["build", "-q", "-t", &tag])
            .arg(&context)
            .output()
            .expect("docker build");
        assert!(out.status.success(), "docker build: {}", text(&out.stderr));
        Self(tag)
    }
}

impl Drop for GitImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_git_clones_in_an_init_container_on_kubernetes() {
    let (sim, dir) = simulator().await;
    let repo = git_repo(dir.path());
    let image = GitImage::build(dir.path(), &repo);
    let session = berth_engine_core::SessionId::generate().to_string();
    let berth = |args: &[&str]| {
        let mut cmd = berth_on_sim(dir.path(), args);
        cmd.env("BERTH_KUBERNETES__GIT_IMAGE", &image.0);
        cmd
    };
    let url = "file:///srv/repo.git";
    // The pod clones before the command's first instruction, which starts in the clone.
    let out = expect_exit(
        &mut berth(&[
            "submit",
            "--watch",
            "--session",
            &session,
            "--git",
            url,
            "--",
            "sh",
            "-c",
            "pwd; cat file",
        ]),
        0,
    );
    assert_eq!(text(&out.stdout), "/workspace\nfrom main\n");
    let out = expect_exit(
        &mut berth(&[
            "submit",
            "--watch",
            "--session",
            &session,
            "--git",
            url,
            "--branch",
            "feature",
            "--",
            "sh",
            "-c",
            "cat feature.txt; exit 3",
        ]),
        3,
    );
    assert_eq!(text(&out.stdout), "feature\n");
    // The Job holds the clone as an init container of the git image, with the command
    // container's security context, and only the workspace mounted.
    let listed = Command::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.33")
        .arg("--kubeconfig")
        .arg(dir.path().join("kubeconfig"))
        .args(["get", "jobs", "-o", "json", "-l"])
        .arg(format!("berth.dev/session={session}"))
        .output()
        .expect("kubectl 1.33");
    let jobs: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("kubectl's JSON");
    let job = &jobs["items"][0];
    let pod = &job["spec"]["template"]["spec"];
    let init = &pod["initContainers"][0];
    assert_eq!(init["name"], "git-clone", "{pod}");
    assert_eq!(init["image"], image.0.as_str());
    assert_eq!(
        init["securityContext"],
        pod["containers"][0]["securityContext"]
    );
    assert_eq!(
        init["volumeMounts"].as_array().map(Vec::len),
        Some(1),
        "{init}"
    );
    // A clone that fails fails the run before the command, saying so (berth's 125).
    let out = expect_exit(
        &mut berth(&[
            "submit",
            "--watch",
            "--session",
            &session,
            "--git",
            url,
            "--branch",
            "nope",
            "--",
            "true",
        ]),
        125,
    );
    common::assert_stderr_has(&out, "clone of its git source failed");

    // A persistent workspace already holding a checkout gets the asked-for commit over it.
    let on_claim = |args: &[&str]| {
        let mut cmd = berth(args);
        cmd.env("BERTH_KUBERNETES__PVC_NAME", "ws")
            .env("BERTH_KUBERNETES__CREATE_PVC", "true");
        cmd
    };
    let out = expect_exit(
        &mut on_claim(&[
            "submit",
            "--watch",
            "--session",
            &session,
            "--git",
            url,
            "--",
            "sh",
            "-c",
            "cat file; echo mine > untracked",
        ]),
        0,
    );
    assert_eq!(text(&out.stdout), "from main\n");
    let out = expect_exit(
        &mut on_claim(&[
            "submit",
            "--watch",
            "--session",
            &session,
            "--git",
            url,
            "--branch",
            "feature",
            "--",
            "cat",
            "feature.txt",
            "untracked",
        ]),
        0,
    );
    assert_eq!(text(&out.stdout), "feature\nmine\n");

    // A schedule clones afresh for each of its runs.
    let out = expect_exit(
        &mut berth(&[
            "submit",
            "--schedule",
            "0 4 * * *",
            "--session",
            &session,
            "--name",
            "nightly",
            "--git",
            url,
            "--",
            "cat",
            "file",
        ]),
        0,
    );
    let schedule = text(&out.stdout).trim().to_owned();
    let run = sim.fire_cron_job("default", &schedule).expect("fire");
    let out = expect_exit(&mut berth(&["logs", "-f", &run]), 0);
    assert_eq!(text(&out.stdout), "from main\n");
    drop(sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_json_lists_runs_and_environments_together_on_docker() {
    let (session, _cleanup) = common::fresh_session().await;
    let berth = |args: &[&str]| {
        let mut cmd = common::berth_with_state("runs-down-state", args);
        cmd.env("BERTH_RUNNER__IMAGE", TEST_IMAGE)
            .env("BERTH_RUNNER__BACKEND", "docker");
        cmd
    };
    let out = expect_exit(&mut berth(&["up", "--session", &session]), 0);
    let env = text(&out.stdout).trim().to_owned();
    let out = expect_exit(
        &mut berth(&["submit", "--session", &session, "--", "sleep", "600"]),
        0,
    );
    let run = text(&out.stdout).trim().to_owned();
    wait_for(60, "never running", || {
        let out = expect_exit(&mut berth(&["--json", "status", &run]), 0);
        (json_of(&out)["state"] == "running", text(&out.stdout))
    });
    // One JSON document: an array holding both, runs first.
    let out = expect_exit(&mut berth(&["--json", "down", &env, &run]), 0);
    assert_eq!(
        json_of(&out),
        serde_json::json!([
            {"id": run, "outcome": "cancelled"},
            {"id": env, "outcome": "stopped"},
        ])
    );
    // Runs alone: an array too.
    let out = expect_exit(&mut berth(&["--json", "down", &run]), 0);
    assert_eq!(
        json_of(&out),
        serde_json::json!([{"id": run, "outcome": "cancelled"}])
    );
}
