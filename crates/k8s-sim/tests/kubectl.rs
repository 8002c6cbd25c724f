//! The simulator's fidelity, checked by the real kubectl 1.31, 1.32 and 1.33.
//!
//! Each test starts its own simulator, so they run in parallel and depend on nothing but
//! Docker and the kubectl binaries; both missing is a failure, not a skip. The simulator removes
//! its containers when dropped, also when a test panics.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_k8s_sim::{Sim, INSTANCE_LABEL};

const IMAGE: &str = berth_engine_core::testkit::TEST_IMAGE;

#[path = "kubectl/simproto.rs"]
mod simproto;
mod support;

/// The kubectl binary of minor version `minor`.
fn kubectl_binary(minor: u32) -> PathBuf {
    let candidates = [
        PathBuf::from(format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{minor}")),
        PathBuf::from(format!("/usr/local/bin/kubectl.1.{minor}")),
    ];
    for c in &candidates {
        if c.exists() {
            return c.clone();
        }
    }
    // /usr/bin/kubectl counts when it is the right version.
    let plain = PathBuf::from("/usr/bin/kubectl");
    if let Ok(out) = Command::new(&plain)
        .args(["version", "--client", "-o", "json"])
        .output()
    {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["clientVersion"]["minor"].as_str() == Some(&minor.to_string()) {
            return plain;
        }
    }
    panic!("kubectl 1.{minor} is missing: looked for {candidates:?} and /usr/bin/kubectl");
}

/// A simulator, a kubeconfig for it, and one kubectl version.
struct Cluster {
    sim: Sim,
    dir: tempfile::TempDir,
    kubectl: PathBuf,
}

async fn cluster(minor: u32) -> Cluster {
    let kubectl = kubectl_binary(minor);
    let support::Started { sim, dir } = support::start_sim().await;
    Cluster { sim, dir, kubectl }
}

impl Cluster {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .env("HOME", self.dir.path())
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args);
        cmd
    }

    /// Runs kubectl, feeding `stdin`, and returns its output.
    fn run_with_input(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = self.command(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl runs");
        let feeder = stdin.map(|data| {
            let mut pipe = child.stdin.take().expect("stdin pipe");
            let data = data.to_vec();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            })
        });
        let out = child.wait_with_output().expect("kubectl finishes");
        if let Some(f) = feeder {
            f.join().expect("stdin feeder");
        }
        out
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with_input(args, None)
    }

    /// Runs kubectl and returns its stdout, failing the test when it fails.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply_yaml(&self, name: &str, yaml: &str) {
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).expect("manifest");
        self.ok(&["create", "-f", path.to_str().expect("utf-8 path")]);
    }

    fn pod_of_job(&self, job: &str) -> String {
        let selector = format!("job-name={job}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.ok(&[
                "get",
                "pods",
                "-l",
                &selector,
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ]);
            if let Some(name) = out.split_whitespace().next() {
                return name.to_owned();
            }
            if Instant::now() > deadline {
                let all = self.ok(&["get", "pods,jobs", "-o", "yaml"]);
                panic!("no pod for job {job} after 30 s; the cluster holds:\n{all}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the pod of job `job` is Ready; returns its name.
    fn wait_job_ready(&self, job: &str) -> String {
        let selector = format!("job-name={job}");
        self.ok(&[
            "wait",
            "--for=condition=Ready",
            "pod",
            "-l",
            &selector,
            "--timeout=60s",
        ]);
        self.pod_of_job(job)
    }

    /// The simulator's Docker containers, running or not.
    async fn containers(&self) -> Vec<bollard::models::ContainerSummary> {
        let instance = support::instance_label(self.sim.instance_id());
        support::containers_labelled(&support::docker().await, &[instance]).await
    }

    /// `kubectl get KIND NAME -o jsonpath=PATH`.
    fn get(&self, kind: &str, name: &str, path: &str) -> String {
        self.ok(&["get", kind, name, "-o", &format!("jsonpath={path}")])
    }

    /// Waits until job `job` has failed; returns the reason of its `Failed` condition.
    fn wait_job_failed(&self, job: &str) -> String {
        let job = format!("job/{job}");
        self.ok(&["wait", "--for=condition=Failed", &job, "--timeout=60s"]);
        self.ok(&[
            "get",
            &job,
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Failed")].reason}"#,
        ])
    }

    /// Waits until job `job` has no pods left.
    fn wait_job_pods_gone(&self, job: &str) {
        let selector = format!("job-name={job}");
        eventually(Duration::from_secs(30), || {
            self.ok(&["get", "pods", "-l", &selector, "-o", "name"])
                .trim()
                .is_empty()
                .then_some(())
        });
    }
}

/// Polls `f` every 200 ms until it returns `Some`, failing after `limit`.
fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "condition not reached in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn job_yaml(name: &str, image: &str, script: &str) -> String {
    format!(
        r#"apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
  labels:
    app.kubernetes.io/managed-by: berth
spec:
  backoffLimit: 0
  template:
    metadata:
      labels:
        app.kubernetes.io/managed-by: berth
        suite: kubectl
    spec:
      restartPolicy: Never
      containers:
      - name: main
        image: {image}
        command: ["sh", "-c", {script:?}]
"#
    )
}

/// create, wait, exec (exit code, streams, 1 MiB stdin), logs, get -o json / -l, and
/// foreground deletion removing the pod's container.
async fn job_lifecycle(minor: u32) {
    let c = cluster(minor).await;
    c.apply_yaml(
        "job",
        &job_yaml("work", IMAGE, "echo started; echo to-stderr >&2; sleep 600"),
    );
    let pod = c.wait_job_ready("work");

    // exec: exit code and streams.
    let out = c.run(&[
        "exec",
        &pod,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "exec exit code: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("err\n"), "stderr: {stderr:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("err"));
    let ok = c.run(&["exec", &pod, "--", "true"]);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");

    // exec -i: 1 MiB through cat, exactly (stdin EOF must reach cat).
    let data: Vec<u8> = (0..1024 * 1024_u32)
        .map(|i| u8::try_from((i.wrapping_mul(2_654_435_761) >> 13) & 0xff).unwrap_or(0))
        .collect();
    let out = c.run_with_input(&["exec", "-i", &pod, "--", "cat"], Some(&data));
    assert!(out.status.success(), "exec -i cat: {out:?}");
    assert_eq!(out.stdout.len(), data.len(), "bytes back from cat");
    assert!(out.stdout == data, "cat changed the data");

    // logs.
    let logs = c.ok(&["logs", &pod]);
    assert!(logs.contains("started"), "logs: {logs:?}");
    assert!(logs.contains("to-stderr"), "logs: {logs:?}");

    // get -o json, selectors.
    let json: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "pods", "-o", "json"])).expect("json");
    let items = json["items"].as_array().expect("items");
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(item["metadata"]["name"], pod.as_str());
    assert_eq!(item["status"]["phase"], "Running");
    assert_eq!(item["metadata"]["labels"]["job-name"], "work");
    assert_eq!(
        item["metadata"]["labels"]["batch.kubernetes.io/job-name"],
        "work"
    );
    assert!(item["metadata"]["labels"]["controller-uid"].is_string());
    assert_eq!(item["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(item["metadata"]["ownerReferences"][0]["kind"], "Job");
    assert!(item["metadata"]["resourceVersion"].is_string());
    assert!(item["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].is_string());
    let selected = c.ok(&[
        "get",
        "pods",
        "-l",
        "suite=kubectl,job-name=work",
        "-o",
        "name",
    ]);
    assert_eq!(selected.trim(), format!("pod/{pod}"));
    let none = c.ok(&["get", "pods", "-l", "job-name!=work", "-o", "name"]);
    assert_eq!(none.trim(), "");
    let table = c.ok(&["get", "pods"]);
    assert!(
        table.lines().next().unwrap_or("").contains("READY")
            && table.contains("1/1")
            && table.contains("Running"),
        "table: {table}"
    );
    let jobs = c.ok(&["get", "jobs"]);
    assert!(
        jobs.contains("work") && jobs.contains("0/1"),
        "jobs: {jobs}"
    );

    // The container carries the sim label and the pod's own labels.
    let containers = c.containers().await;
    assert_eq!(containers.len(), 1, "{containers:?}");
    let labels = containers[0].labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("berth")
    );

    // Foreground deletion removes the pod and its container before the job.
    c.ok(&[
        "delete",
        "job",
        "work",
        "--cascade=foreground",
        "--timeout=60s",
    ]);
    let left = c.ok(&["get", "pods,jobs", "-o", "name"]);
    assert_eq!(left.trim(), "", "left after foreground delete: {left}");
    assert!(c.containers().await.is_empty(), "container left behind");
    c.sim.shutdown().await;
}

/// `kubectl logs -f` follows until the container ends.
async fn logs_follow(minor: u32) {
    let c = cluster(minor).await;
    c.apply_yaml(
        "job",
        &job_yaml("talk", IMAGE, "echo one; sleep 3; echo two; exit 0"),
    );
    let pod = c.pod_of_job("talk");
    // Follow as soon as the container exists (it may still be running, or done under load).
    eventually(Duration::from_secs(60), || {
        c.run(&["logs", &pod]).status.success().then_some(())
    });
    let started = Instant::now();
    let logs = c.ok(&["logs", "-f", &pod]);
    assert_eq!(logs, "one\ntwo\n");
    assert!(started.elapsed() < Duration::from_secs(30));
    c.ok(&[
        "wait",
        "--for=condition=Complete",
        "job/talk",
        "--timeout=60s",
    ]);
    let status = c.get("pod", &pod, "{.status.phase}");
    assert_eq!(status, "Succeeded");
    let table = c.ok(&["get", "pods"]);
    assert!(table.contains("Completed"), "table: {table}");
    let jobs = c.ok(&["get", "jobs"]);
    assert!(jobs.contains("1/1"), "jobs: {jobs}");
}

/// `kubectl get pods -w` prints the pod as it changes.
async fn get_watch(minor: u32) {
    let c = cluster(minor).await;
    let mut watch = c
        .command(&["get", "pods", "-w", "--request-timeout=0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let stdout = watch.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    c.apply_yaml("job", &job_yaml("watched", IMAGE, "sleep 600"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            seen.push(line);
            if seen
                .iter()
                .any(|l| l.contains("watched-") && l.contains("Running"))
            {
                break;
            }
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        seen.iter()
            .any(|l| l.contains("watched-") && l.contains("Running")),
        "kubectl get -w printed: {seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.contains("ContainerCreating") || l.contains("Pending")),
        "no pending state seen: {seen:#?}"
    );
}

/// A missing image ends in ImagePullBackOff; an oversized request and a missing claim stay
/// Pending with the scheduler's Unschedulable message.
async fn failure_states(minor: u32) {
    let c = cluster(minor).await;
    c.apply_yaml(
        "bad-image",
        &job_yaml("noimage", "berth-test/does-not-exist:1", "true"),
    );
    c.apply_yaml(
        "huge",
        &format!(
            "{}        resources:\n          requests:\n            cpu: \"512\"\n",
            job_yaml("huge", IMAGE, "sleep 600")
        ),
    );
    c.apply_yaml(
        "nopvc",
        r#"apiVersion: v1
kind: Pod
metadata:
  name: nopvc
spec:
  containers:
  - name: main
    image: berth-test/busybox:2
    command: ["sleep", "600"]
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: missing}
"#,
    );
    let bad = c.pod_of_job("noimage");
    eventually(Duration::from_secs(30), || {
        let table = c.ok(&["get", "pods", &bad]);
        table.contains("ImagePullBackOff").then_some(())
    });
    let huge = c.pod_of_job("huge");
    let message = eventually(Duration::from_secs(30), || {
        let m = c.get(
            "pod",
            &huge,
            r#"{.status.conditions[?(@.type=="PodScheduled")].message}"#,
        );
        (!m.is_empty()).then_some(m)
    });
    assert!(
        message.starts_with("0/1 nodes are available: 1 Insufficient cpu."),
        "{message}"
    );
    let reason = c.get("pod", &huge, r#"{.status.phase} {.status.conditions[?(@.type=="PodScheduled")].reason} {.status.conditions[?(@.type=="PodScheduled")].status}"#);
    assert_eq!(reason, "Pending Unschedulable False");
    let table = c.ok(&["get", "pods", &huge]);
    assert!(table.contains("Pending"), "{table}");
    let message = eventually(Duration::from_secs(30), || {
        let m = c.get(
            "pod",
            "nopvc",
            r#"{.status.conditions[?(@.type=="PodScheduled")].message}"#,
        );
        (!m.is_empty()).then_some(m)
    });
    assert!(
        message.contains(r#"persistentvolumeclaim "missing" not found"#),
        "{message}"
    );
    // Nothing ran: no container for the unschedulable pods nor the missing image.
    assert!(c.containers().await.is_empty());
    // Errors come back as Status objects kubectl understands.
    let out = c.run(&["get", "pod", "no-such-pod"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#"pods "no-such-pod" not found"#), "{err}");
    let path = c.dir.path().join("ns.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n",
    )
    .expect("manifest");
    let out = c.run(&["create", "-f", path.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"namespaces "default" already exists"#),
        "{err}"
    );
}

/// `kubectl auth can-i` answers from the deny list, and a denied create fails with the API
/// server's Forbidden message.
async fn authorization(minor: u32) {
    let c = cluster(minor).await;
    let can_i = |args: &[&str]| {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        let out = c.run(&all);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stdout, stderr)
    };
    let (code, out, err) = can_i(&["create", "jobs"]);
    assert_eq!((code, out.as_str()), (Some(0), "yes\n"), "{err}");
    let (code, out, err) = can_i(&["create", "pods", "--subresource=exec"]);
    assert_eq!((code, out.as_str()), (Some(0), "yes\n"), "{err}");

    c.sim.deny("create", "jobs");
    let (code, out, err) = can_i(&["create", "jobs"]);
    assert_eq!(code, Some(1), "{out} {err}");
    assert!(out.starts_with("no"), "{out} {err}");
    // Only jobs: other verbs and resources stay allowed.
    let (code, out, _) = can_i(&["get", "jobs"]);
    assert_eq!((code, out.as_str()), (Some(0), "yes\n"));
    let (code, out, _) = can_i(&["create", "pods"]);
    assert_eq!((code, out.as_str()), (Some(0), "yes\n"));
    let manifest = c.dir.path().join("denied.yaml");
    std::fs::write(&manifest, job_yaml("denied", IMAGE, "true")).expect("manifest");
    let manifest = manifest.to_str().expect("utf-8 path");
    let out = c.run(&["create", "-f", manifest]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"is forbidden: User "system:anonymous" cannot create resource "jobs" in API group "batch""#),
        "{err}"
    );
    assert!(err.contains("Forbidden"), "{err}");
    assert_eq!(c.ok(&["get", "jobs", "-o", "name"]), "");

    c.sim.deny("create", "pods/exec");
    let (code, out, err) = can_i(&["create", "pods", "--subresource=exec"]);
    assert_eq!(code, Some(1), "{out} {err}");
    assert!(out.starts_with("no"), "{out} {err}");

    c.sim.allow("create", "jobs");
    c.sim.allow("create", "pods/exec");
    let (code, out, err) = can_i(&["create", "jobs"]);
    assert_eq!((code, out.as_str()), (Some(0), "yes\n"), "{err}");
    let (code, out, err) = can_i(&["create", "pods", "--subresource=exec"]);
    assert_eq!((code, out.as_str()), (Some(0), "yes\n"), "{err}");
    c.ok(&["create", "-f", manifest, "--dry-run=server"]);
}

/// The tests run with each kubectl version: a module per version, a test per case.
macro_rules! per_version {
    ($($module:ident => $minor:expr),* $(,)?) => {$(
        mod $module {
            per_version!(@cases $minor;
                job_lifecycle, logs_follow, get_watch, failure_states, authorization);
        }
    )*};
    (@cases $minor:expr; $($case:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            super::$case($minor).await;
        }
    )*};
}

per_version!(kubectl_1_31 => 31, kubectl_1_32 => 32, kubectl_1_33 => 33);

/// Dropping the simulator removes its containers and volumes, also after a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_removes_docker_objects() {
    let c = cluster(32).await;
    c.apply_yaml(
        "pvc",
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    c.apply_yaml("job", &job_yaml("left", IMAGE, "sleep 600"));
    c.wait_job_ready("left");
    assert_eq!(c.containers().await.len(), 1);
    let id = c.sim.instance_id().to_owned();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _c = c;
        panic!("a failing test");
    }));
    assert!(outcome.is_err());
    let docker = support::docker().await;
    let instance = [support::instance_label(&id)];
    let containers = support::containers_labelled(&docker, &instance).await;
    assert!(containers.is_empty(), "{containers:?}");
    let volumes = support::volumes_labelled(&docker, &instance).await;
    assert!(volumes.is_empty(), "{volumes:?}");
}

/// One HTTP/1.1 request on a fresh connection: the status code, the head (for headers) and
/// the body (de-chunked).
fn http(
    base_url: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, String, String) {
    use std::io::Read;
    let addr = base_url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (code, head.to_owned(), body)
}

/// [`http`] with a JSON body (or none): the status code and the body.
fn raw_http(base_url: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let (code, _, body) = http(
        base_url,
        method,
        path,
        "application/json",
        body.unwrap_or(""),
    );
    (code, body)
}

/// The `type` of each event of a watch stream's body.
fn event_types(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|e| e["type"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// [`raw_http`] `GET` without a body.
fn http_get(base_url: &str, path: &str) -> (u16, String) {
    raw_http(base_url, "GET", path, None)
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

fn status_of(body: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["apiVersion"], "v1", "{v}");
    assert_eq!(v["status"], "Failure", "{v}");
    v
}

/// The deny list over plain HTTP: the verb each request is authorized as, the Status bodies
/// of the 403s, SelfSubjectAccessReview and its discovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_list() {
    let c = cluster(32).await;
    let url = c.sim.base_url().to_owned();
    let forbidden = |method: &str, path: &str, body: Option<&str>| {
        let (code, body) = raw_http(&url, method, path, body);
        assert_eq!(code, 403, "{method} {path}: {body}");
        let s = status_of(&body);
        assert_eq!(s["reason"], "Forbidden", "{s}");
        assert_eq!(s["code"], 403, "{s}");
        s
    };
    let pods = "/api/v1/namespaces/default/pods";

    // Cluster scope.
    c.sim.deny("list", "namespaces");
    let s = forbidden("GET", "/api/v1/namespaces", None);
    assert_eq!(
        s["message"],
        r#"namespaces is forbidden: User "system:anonymous" cannot list resource "namespaces" in API group "" at the cluster scope"#
    );
    assert_eq!(s["details"], serde_json::json!({"kind": "namespaces"}));
    // A namespace is its own namespace (get is not list).
    assert_eq!(http_get(&url, "/api/v1/namespaces/default").0, 200);
    c.sim.deny("get", "namespaces");
    let s = forbidden("GET", "/api/v1/namespaces/default", None);
    assert_eq!(
        s["message"],
        r#"namespaces "default" is forbidden: User "system:anonymous" cannot get resource "namespaces" in API group "" in the namespace "default""#
    );
    c.sim.allow("list", "namespaces");
    assert_eq!(http_get(&url, "/api/v1/namespaces").0, 200);

    // list and watch are different verbs; so are delete and deletecollection.
    c.sim.deny("watch", "pods");
    assert_eq!(http_get(&url, pods).0, 200);
    forbidden("GET", &format!("{pods}?watch=1"), None);
    let s = forbidden("GET", "/api/v1/pods?watch=true", None);
    assert!(
        s["message"]
            .as_str()
            .unwrap_or("")
            .ends_with(r#"cannot watch resource "pods" in API group "" at the cluster scope"#),
        "{s}"
    );
    c.sim.deny("deletecollection", "persistentvolumeclaims");
    forbidden(
        "DELETE",
        "/api/v1/namespaces/default/persistentvolumeclaims",
        None,
    );
    assert_eq!(
        raw_http(
            &url,
            "DELETE",
            "/api/v1/namespaces/default/persistentvolumeclaims/nope",
            None
        )
        .0,
        404
    );

    // A named object and a subresource: exec is a get of pods/exec that must also be allowed to
    // create it.
    c.sim.deny("create", "pods/exec");
    let s = forbidden(
        "GET",
        &format!("{pods}/p1/exec?command=true&stdout=1"),
        None,
    );
    assert_eq!(
        s["message"],
        r#"pods "p1" is forbidden: User "system:anonymous" cannot create resource "pods/exec" in API group "" in the namespace "default""#
    );
    assert_eq!(
        s["details"],
        serde_json::json!({"name": "p1", "kind": "pods"})
    );
    c.sim.deny("get", "pods/log");
    let s = forbidden("GET", &format!("{pods}/p1/log"), None);
    assert!(
        s["message"]
            .as_str()
            .unwrap_or("")
            .contains(r#"cannot get resource "pods/log""#),
        "{s}"
    );
    assert_eq!(http_get(&url, &format!("{pods}/p1")).0, 404);
    c.sim.deny("patch", "jobs/status");
    let s = forbidden(
        "PATCH",
        "/apis/batch/v1/namespaces/default/jobs/j1/status",
        Some("{}"),
    );
    assert_eq!(
        s["message"],
        r#"jobs.batch "j1" is forbidden: User "system:anonymous" cannot patch resource "jobs/status" in API group "batch" in the namespace "default""#
    );
    assert_eq!(
        s["details"],
        serde_json::json!({"name": "j1", "group": "batch", "kind": "jobs"})
    );
    // Unknown resources stay 404.
    c.sim.deny("list", "widgets");
    assert_eq!(http_get(&url, "/api/v1/namespaces/default/widgets").0, 404);
    // A served one is denied like the others.
    c.sim.deny("list", "secrets");
    assert_eq!(http_get(&url, "/api/v1/namespaces/default/secrets").0, 403);

    // SelfSubjectAccessReview, as kubectl sends it.
    let review = |verb: &str, group: &str, resource: &str, sub: &str| {
        let body = serde_json::json!({
            "kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": {"resourceAttributes": {"namespace": "default", "verb": verb,
                "group": group, "resource": resource, "subresource": sub}},
            "status": {"allowed": false},
        });
        let (code, body) = raw_http(
            &url,
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            Some(&body.to_string()),
        );
        assert_eq!(code, 201, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["kind"], "SelfSubjectAccessReview");
        assert_eq!(v["spec"]["resourceAttributes"]["verb"], verb);
        v["status"].clone()
    };
    assert_eq!(review("create", "", "pods", "exec")["allowed"], false);
    assert_eq!(review("create", "", "pods", "exec")["denied"], true);
    assert_eq!(review("create", "", "pods", "")["allowed"], true);
    assert_eq!(review("get", "", "pods", "exec")["allowed"], true);
    // The group matters: jobs are batch.
    c.sim.deny("create", "jobs");
    assert_eq!(review("create", "batch", "jobs", "")["allowed"], false);
    assert_eq!(review("create", "", "jobs", "")["allowed"], true);
    c.sim.allow("create", "jobs");
    assert_eq!(review("create", "batch", "jobs", "")["allowed"], true);
    let (code, body) = raw_http(
        &url,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        Some(r#"{"spec":{}}"#),
    );
    assert_eq!(code, 422, "{body}");
    assert_eq!(status_of(&body)["reason"], "Invalid");
    let (code, _) = http_get(
        &url,
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
    );
    assert_eq!(code, 405);

    // Discovery.
    let (_, body) = http_get(&url, "/apis");
    let groups: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(
        groups["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .any(|g| g["name"] == "authorization.k8s.io"
                && g["preferredVersion"]["groupVersion"] == "authorization.k8s.io/v1"),
        "{groups}"
    );
    let (code, body) = http_get(&url, "/apis/authorization.k8s.io");
    assert_eq!(code, 200, "{body}");
    let (_, body) = http_get(&url, "/apis/authorization.k8s.io/v1");
    let list: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(list["resources"][0]["name"], "selfsubjectaccessreviews");
    assert_eq!(list["resources"][0]["kind"], "SelfSubjectAccessReview");
    assert_eq!(list["resources"][0]["namespaced"], false);
    assert_eq!(list["resources"][0]["verbs"], serde_json::json!(["create"]));
    let api_resources = c.ok(&["api-resources", "--api-group=authorization.k8s.io"]);
    assert!(
        api_resources.contains("selfsubjectaccessreviews"),
        "{api_resources}"
    );
}

/// Status bodies for NotFound, AlreadyExists, Conflict, Invalid and Forbidden; selectors;
/// watch from a resourceVersion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_semantics() {
    let c = cluster(32).await;
    let url = c.sim.base_url().to_owned();
    let (code, body) = http_get(&url, "/api/v1/namespaces/default/pods/nope");
    assert_eq!(code, 404);
    let s = status_of(&body);
    assert_eq!(s["reason"], "NotFound");
    assert_eq!(s["code"], 404);
    assert_eq!(s["message"], r#"pods "nope" not found"#);
    assert_eq!(s["details"]["name"], "nope");
    assert_eq!(s["details"]["kind"], "pods");

    let (code, body) = http_get(&url, "/apis/batch/v1/namespaces/default/jobs/nope");
    assert_eq!(code, 404);
    assert_eq!(
        status_of(&body)["message"],
        r#"jobs.batch "nope" not found"#
    );

    let claim = r#"{"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{"name":"c1","labels":{"tier":"a"}},"spec":{"accessModes":["ReadWriteOnce"],"resources":{"requests":{"storage":"1Gi"}}}}"#;
    let path = "/api/v1/namespaces/default/persistentvolumeclaims";
    let (code, body) = raw_http(&url, "POST", path, Some(claim));
    assert_eq!(code, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(created["status"]["phase"], "Bound");
    let rv1: u64 = created["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("resourceVersion");
    let (code, body) = raw_http(&url, "POST", path, Some(claim));
    assert_eq!(code, 409);
    assert_eq!(status_of(&body)["reason"], "AlreadyExists");

    // Conflict: a PUT with a stale resourceVersion.
    let mut stale = created.clone();
    stale["metadata"]["resourceVersion"] = serde_json::json!("1");
    let (code, body) = raw_http(&url, "PUT", &format!("{path}/c1"), Some(&stale.to_string()));
    assert_eq!(code, 409, "{body}");
    assert_eq!(status_of(&body)["reason"], "Conflict");
    let mut fresh = created.clone();
    fresh["metadata"]["labels"]["tier"] = serde_json::json!("b");
    let (code, body) = raw_http(&url, "PUT", &format!("{path}/c1"), Some(&fresh.to_string()));
    assert_eq!(code, 200, "{body}");
    let updated: serde_json::Value = serde_json::from_str(&body).expect("json");
    let rv2: u64 = updated["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("resourceVersion");
    assert!(rv2 > rv1);

    // Invalid: a job whose pods would restart forever.
    let job = r#"{"apiVersion":"batch/v1","kind":"Job","metadata":{"name":"j"},"spec":{"template":{"spec":{"restartPolicy":"Always","containers":[{"name":"c","image":"x"}]}}}}"#;
    let (code, body) = raw_http(
        &url,
        "POST",
        "/apis/batch/v1/namespaces/default/jobs",
        Some(job),
    );
    assert_eq!(code, 422);
    let s = status_of(&body);
    assert_eq!(s["reason"], "Invalid");
    assert_eq!(
        s["details"]["causes"][0]["field"],
        "spec.template.spec.restartPolicy"
    );

    // Forbidden: the default namespace cannot be deleted.
    let (code, body) = raw_http(&url, "DELETE", "/api/v1/namespaces/default", None);
    assert_eq!(code, 403);
    assert_eq!(status_of(&body)["reason"], "Forbidden");

    // Selectors.
    let list = |q: &str| {
        let (code, body) = http_get(&url, &format!("{path}?{q}"));
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(list("labelSelector=tier%3Db"), ["c1"]);
    assert!(list("labelSelector=tier%21%3Db").is_empty());
    assert_eq!(list("labelSelector=tier%20in%20(a,b)"), ["c1"]);
    assert!(list("labelSelector=tier%20notin%20(b)").is_empty());
    assert_eq!(list("fieldSelector=metadata.name%3Dc1"), ["c1"]);
    assert!(list("fieldSelector=metadata.name%3Dc2").is_empty());

    // A watch from rv1 replays the update, then the deletion arrives live.
    let (code, _) = raw_http(&url, "DELETE", &format!("{path}/c1"), None);
    assert_eq!(code, 200);
    let (code, body) = http_get(
        &url,
        &format!("{path}?watch=1&resourceVersion={rv1}&timeoutSeconds=1"),
    );
    assert_eq!(code, 200);
    let types = event_types(&body);
    assert_eq!(types, ["MODIFIED", "DELETED"], "{body}");
    // Through a selector, the relabel (tier a -> b) brings the claim in: ADDED.
    let (_, body) = http_get(
        &url,
        &format!("{path}?watch=1&resourceVersion={rv1}&timeoutSeconds=1&labelSelector=tier%3Db"),
    );
    let types = event_types(&body);
    assert_eq!(types, ["ADDED", "DELETED"], "{body}");
    let (_, body) = http_get(
        &url,
        &format!("{path}?watch=1&resourceVersion={rv1}&timeoutSeconds=1&labelSelector=tier%3Da"),
    );
    let types = event_types(&body);
    assert_eq!(types, ["DELETED"], "the relabel takes it out: {body}");
}

/// Claims are labelled Docker volumes; subPath mounts see a sub-directory of the volume;
/// emptyDir works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_and_subpath() {
    let c = cluster(32).await;
    c.apply_yaml(
        "storage",
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
  labels: {app.kubernetes.io/managed-by: berth}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata:
  name: user
  labels: {app.kubernetes.io/managed-by: berth}
spec:
  restartPolicy: Never
  securityContext: {runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000}
  containers:
  - name: main
    image: berth-test/busybox:2
    command: ["sh", "-c", "echo in-sub > /sub/file && echo scratch > /scratch/f && sleep 600"]
    volumeMounts:
    - {name: d, mountPath: /data}
    - {name: d, mountPath: /sub, subPath: nested/dir}
    - {name: e, mountPath: /scratch}
  volumes:
  - name: d
    persistentVolumeClaim: {claimName: data}
  - name: e
    emptyDir: {}
"#,
    );
    c.ok(&["wait", "--for=condition=Ready", "pod/user", "--timeout=60s"]);
    let seen = eventually(Duration::from_secs(10), || {
        let out = c.run(&[
            "exec",
            "user",
            "--",
            "cat",
            "/data/nested/dir/file",
            "/scratch/f",
        ]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(seen, "in-sub\nscratch\n");
    let id = c.ok(&["exec", "user", "--", "id", "-u"]);
    assert_eq!(id.trim(), "1000");
    let described = c.ok(&["describe", "pod", "user"]);
    assert!(
        described.contains("Started") && described.contains("Scheduled"),
        "{described}"
    );
    let nodes = c.ok(&["get", "nodes"]);
    assert!(
        nodes.contains("berth-sim-node") && nodes.contains("Ready"),
        "{nodes}"
    );
    let claim = c.get("pvc", "data", "{.status.phase}");
    assert_eq!(claim, "Bound");
    let labels = [
        support::instance_label(c.sim.instance_id()),
        "app.kubernetes.io/managed-by=berth".to_owned(),
    ];
    let volumes = support::volumes_labelled(&support::docker().await, &labels).await;
    assert_eq!(volumes.len(), 1, "the claim's volume carries its labels");
    c.ok(&["delete", "pod", "user", "--timeout=60s"]);
    c.ok(&["delete", "pvc", "data", "--timeout=60s"]);
    assert!(c.containers().await.is_empty());
}

/// activeDeadlineSeconds fails the job and kills its pod; backoffLimit counts failed pods;
/// ttlSecondsAfterFinished deletes a finished job and its pods; orphaning keeps the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_controller() {
    let c = cluster(32).await;
    c.apply_yaml(
        "deadline",
        &job_yaml("slow", IMAGE, "sleep 600").replace(
            "  backoffLimit: 0\n",
            "  backoffLimit: 0\n  activeDeadlineSeconds: 2\n",
        ),
    );
    c.apply_yaml(
        "backoff",
        &job_yaml("flaky", IMAGE, "exit 1").replace("backoffLimit: 0", "backoffLimit: 1"),
    );
    c.apply_yaml(
        "ttl",
        &job_yaml("brief", IMAGE, "true").replace(
            "  backoffLimit: 0\n",
            "  backoffLimit: 0\n  ttlSecondsAfterFinished: 1\n",
        ),
    );
    c.apply_yaml("orphan", &job_yaml("parent", IMAGE, "sleep 600"));
    c.apply_yaml(
        "suspended",
        &job_yaml("later", IMAGE, "sleep 600").replace(
            "  backoffLimit: 0\n",
            "  backoffLimit: 0\n  suspend: true\n",
        ),
    );

    let reason = c.wait_job_failed("slow");
    assert_eq!(reason, "DeadlineExceeded");
    c.wait_job_pods_gone("slow");

    c.wait_job_failed("flaky");
    let flaky = c.get(
        "job",
        "flaky",
        r#"{.status.failed} {.status.conditions[?(@.type=="Failed")].reason}"#,
    );
    assert_eq!(flaky, "2 BackoffLimitExceeded");
    let pods = c.ok(&["get", "pods", "-l", "job-name=flaky", "-o", "name"]);
    assert_eq!(pods.lines().count(), 2, "{pods}");
    let table = c.ok(&["get", "pods", "-l", "job-name=flaky"]);
    assert!(table.contains("Error"), "{table}");

    c.ok(&["wait", "--for=delete", "job/brief", "--timeout=60s"]);
    let gone = c.run(&["get", "job", "brief"]);
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains(r#"jobs.batch "brief" not found"#),
        "{gone:?}"
    );
    c.wait_job_pods_gone("brief");

    c.wait_job_ready("parent");
    // A suspended job has no pod until it is resumed.
    c.ok(&[
        "wait",
        "--for=condition=Suspended",
        "job/later",
        "--timeout=30s",
    ]);
    assert!(c
        .ok(&["get", "pods", "-l", "job-name=later", "-o", "name"])
        .trim()
        .is_empty());
    c.ok(&[
        "patch",
        "job",
        "later",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    let resumed = c.pod_of_job("later");
    c.ok(&[
        "wait",
        "--for=condition=Ready",
        &format!("pod/{resumed}"),
        "--timeout=60s",
    ]);
    c.ok(&["delete", "job", "parent", "--cascade=orphan"]);
    std::thread::sleep(Duration::from_secs(1));
    let owners = c.ok(&[
        "get",
        "pods",
        "-l",
        "job-name=parent",
        "-o",
        "jsonpath={.items[0].status.phase} {.items[0].metadata.ownerReferences}",
    ]);
    assert_eq!(owners.trim(), "Running");
}

/// Runs one exec over a raw websocket with `protocol`, sending `input` messages first, and
/// returns every binary message received.
async fn ws_exec(url: &str, path: &str, protocol: &str, input: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let addr = url.trim_start_matches("http://");
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().expect("header"));
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("websocket handshake");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(protocol)
    );
    for msg in input {
        ws.send(Message::Binary(msg.into())).await.expect("send");
    }
    let mut received = Vec::new();
    let read = async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Binary(b)) => received.push(b.to_vec()),
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the exec ends");
    received
}

fn channel(messages: &[Vec<u8>], ch: u8) -> Vec<u8> {
    messages
        .iter()
        .filter(|m| m.first() == Some(&ch))
        .flat_map(|m| m[1..].to_vec())
        .collect()
}

/// The channel protocols byte by byte: v4 and v5 output and status frames, v5 stdin close,
/// and watch bookmarks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_protocols_and_bookmarks() {
    let c = cluster(32).await;
    let url = c.sim.base_url().to_owned();
    c.apply_yaml("job", &job_yaml("ws", IMAGE, "sleep 600"));
    let pod = c.wait_job_ready("ws");
    let base = format!("/api/v1/namespaces/default/pods/{pod}/exec");

    let failing = format!(
        "{base}?command=sh&command=-c&command=echo%20hi%3B%20echo%20oops%20%3E%262%3B%20exit%207&stdout=true&stderr=true"
    );
    for protocol in ["v4.channel.k8s.io", "v5.channel.k8s.io"] {
        let got = ws_exec(&url, &failing, protocol, vec![]).await;
        assert_eq!(channel(&got, 1), b"hi\n", "{protocol}");
        assert_eq!(channel(&got, 2), b"oops\n", "{protocol}");
        let status: serde_json::Value =
            serde_json::from_slice(&channel(&got, 3)).expect("status JSON");
        assert_eq!(status["status"], "Failure", "{status}");
        assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
        assert_eq!(
            status["details"]["causes"],
            serde_json::json!([{"reason": "ExitCode", "message": "7"}])
        );
        assert!(status["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("command terminated with non-zero exit code"));
    }

    let cat = format!("{base}?command=cat&stdin=true&stdout=true&stderr=true");
    let got = ws_exec(
        &url,
        &cat,
        "v5.channel.k8s.io",
        vec![b"\x00abc".to_vec(), b"\x00def".to_vec(), vec![255, 0]],
    )
    .await;
    assert_eq!(channel(&got, 1), b"abcdef");
    let status: serde_json::Value = serde_json::from_slice(&channel(&got, 3)).expect("status");
    assert_eq!(
        status,
        serde_json::json!({"metadata": {}, "status": "Success"})
    );

    // A watch allowing bookmarks gets one within its period.
    let (code, body) = http_get(
        &url,
        "/api/v1/namespaces/default/pods?watch=true&allowWatchBookmarks=true&timeoutSeconds=12",
    );
    assert_eq!(code, 200);
    let bookmark = body
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["type"] == "BOOKMARK")
        .unwrap_or_else(|| panic!("no bookmark in {body}"));
    assert!(bookmark["object"]["metadata"]["resourceVersion"].is_string());
}

/// How a container spec maps to Docker: command/args, env, workingDir, runAsUser, limits,
/// no init; a memory hog is OOMKilled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_mapping() {
    let c = cluster(32).await;
    c.apply_yaml(
        "pods",
        r#"apiVersion: v1
kind: Pod
metadata:
  name: shaped
  labels: {app.kubernetes.io/managed-by: berth, role: shaped}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: berth-test/busybox:2
    command: ["sh", "-c"]
    args: ['echo "$GREETING from $POD_NAME in $(pwd) as $(id -u):$(id -g)"; sleep 600']
    workingDir: /tmp
    env:
    - {name: GREETING, value: hello}
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    securityContext:
      runAsUser: 1000
      runAsGroup: 1000
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL], add: [CHOWN]}
    resources:
      limits: {cpu: 500m, memory: 64Mi}
---
apiVersion: v1
kind: Pod
metadata:
  name: rootless
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true}
  containers:
  - name: main
    image: berth-test/busybox:2
    command: ["sleep", "600"]
---
apiVersion: v1
kind: Pod
metadata:
  name: hog
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: berth-test/busybox:2
    command: ["tail", "/dev/zero"]
    resources:
      limits: {memory: 16Mi}
"#,
    );
    c.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/shaped",
        "--timeout=60s",
    ]);
    let logs = eventually(Duration::from_secs(20), || {
        let l = c.ok(&["logs", "shaped"]);
        (!l.is_empty()).then_some(l)
    });
    assert_eq!(logs, "hello from shaped in /tmp as 1000:1000\n");
    let previous = c.run(&["logs", "shaped", "--previous"]);
    assert!(!previous.status.success());
    let containers = c.containers().await;
    let shaped = containers
        .iter()
        .find(|s| {
            s.labels
                .as_ref()
                .and_then(|l| l.get("role"))
                .is_some_and(|r| r == "shaped")
        })
        .expect("the shaped pod's container carries its labels");
    let inspect = support::docker()
        .await
        .inspect_container(shaped.id.as_deref().unwrap_or(""), None)
        .await
        .expect("inspect");
    let host = inspect.host_config.expect("host config");
    assert_eq!(host.memory, Some(64 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    // As on a node: no init, the command is PID 1 (the pod does not share its PIDs).
    assert_eq!(host.init, Some(false));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(host.cap_add, Some(vec!["CHOWN".to_owned()]));
    assert_eq!(host.readonly_rootfs, Some(true));
    assert!(host
        .security_opt
        .unwrap_or_default()
        .contains(&"no-new-privileges:true".to_owned()));
    let config = inspect.config.expect("config");
    assert_eq!(config.user.as_deref(), Some("1000:1000"));
    assert_eq!(config.working_dir.as_deref(), Some("/tmp"));

    let reason = eventually(Duration::from_secs(60), || {
        let r = c.get(
            "pod",
            "hog",
            "{.status.containerStatuses[0].state.terminated.reason}",
        );
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(reason, "OOMKilled");
    let phase = c.get("pod", "hog", "{.status.phase}");
    assert_eq!(phase, "Failed");
    let table = c.ok(&["get", "pod", "hog"]);
    assert!(table.contains("OOMKilled"), "{table}");

    // runAsNonRoot with an image that runs as root never starts.
    eventually(Duration::from_secs(30), || {
        let t = c.ok(&["get", "pod", "rootless"]);
        t.contains("CreateContainerConfigError").then_some(())
    });
}

/// Deleting a namespace removes its jobs, pods (and their containers) and claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_lifecycle() {
    let c = cluster(33).await;
    c.apply_yaml(
        "ns",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: scratch\n",
    );
    let namespaces = c.ok(&["get", "namespaces"]);
    assert!(namespaces.contains("scratch") && namespaces.contains("Active"));
    let path = c.dir.path().join("job-in-ns.yaml");
    std::fs::write(&path, job_yaml("inner", IMAGE, "sleep 600")).expect("manifest");
    let file = path.to_str().expect("utf-8");
    c.ok(&["create", "-n", "scratch", "-f", file]);
    c.ok(&[
        "wait",
        "-n",
        "scratch",
        "--for=condition=Ready",
        "pod",
        "-l",
        "job-name=inner",
        "--timeout=60s",
    ]);
    assert!(c.ok(&["get", "pods", "-o", "name"]).trim().is_empty());
    let all = c.ok(&["get", "pods", "-A", "-o", "name"]);
    assert_eq!(all.lines().count(), 1, "{all}");
    assert_eq!(c.containers().await.len(), 1);
    c.ok(&["delete", "namespace", "scratch", "--timeout=60s"]);
    let gone = c.run(&["get", "namespace", "scratch"]);
    assert!(!gone.status.success());
    assert!(c.ok(&["get", "pods", "-A", "-o", "name"]).trim().is_empty());
    assert!(c.containers().await.is_empty());
    let out = c.run(&["create", "-n", "scratch", "-f", file]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(r#"namespaces "scratch" not found"#),
        "{out:?}"
    );
}

/// A simulator whose process died without cleaning up (SIGKILL) leaves labelled objects; the
/// next simulator to start removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_removes_objects_of_dead_simulators() {
    support::ensure_image().await;
    let mut child = Command::new("true").spawn().expect("spawn");
    let dead_pid = child.id();
    child.wait().expect("wait");
    let ns: String = std::fs::read_link("/proc/self/ns/pid")
        .expect("pid namespace")
        .to_string_lossy()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let instance = format!("orphan{}", std::process::id());
    let docker = support::docker().await;
    let labels = std::collections::HashMap::from([
        (INSTANCE_LABEL.to_owned(), instance.clone()),
        (
            berth_k8s_sim::PID_LABEL.to_owned(),
            format!("{dead_pid}@{ns}"),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "berth".to_owned(),
        ),
    ]);
    docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            bollard::models::ContainerCreateBody {
                image: Some(IMAGE.to_owned()),
                cmd: Some(vec!["true".to_owned()]),
                labels: Some(labels),
                ..Default::default()
            },
        )
        .await
        .expect("create the orphan");
    let orphan = [support::instance_label(&instance)];
    assert_eq!(
        support::containers_labelled(&docker, &orphan).await.len(),
        1
    );
    let sim = Sim::start().await.expect("start");
    let left = support::containers_labelled(&docker, &orphan).await;
    assert_eq!(left.len(), 0, "the orphan is gone");
    sim.shutdown().await;
}

/// restartPolicy Always restarts a container that exits (a new container, the old one kept for
/// `logs --previous`); a job with OnFailure fails once its restarts pass backoffLimit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts() {
    let c = cluster(33).await;
    c.apply_yaml(
        "crasher",
        r#"apiVersion: v1
kind: Pod
metadata:
  name: crasher
spec:
  restartPolicy: Always
  containers:
  - name: main
    image: berth-test/busybox:2
    command: ["sh", "-c", "echo ran; exit 1"]
---
apiVersion: v1
kind: Pod
metadata:
  name: limited
spec:
  restartPolicy: Never
  activeDeadlineSeconds: 2
  containers:
  - name: main
    image: berth-test/busybox:2
    command: ["sleep", "600"]
"#,
    );
    c.apply_yaml(
        "retry",
        &job_yaml("retry", IMAGE, "exit 2")
            .replace("backoffLimit: 0", "backoffLimit: 1")
            .replace("restartPolicy: Never", "restartPolicy: OnFailure"),
    );
    let restarts = eventually(Duration::from_secs(60), || {
        let r = c.get(
            "pod",
            "crasher",
            "{.status.containerStatuses[0].restartCount}",
        );
        r.parse::<u32>().ok().filter(|n| *n >= 1)
    });
    assert!(restarts >= 1);
    let previous = c.ok(&["logs", "crasher", "--previous"]);
    assert_eq!(previous, "ran\n");
    let last = c.get(
        "pod",
        "crasher",
        "{.status.phase} {.status.containerStatuses[0].lastState.terminated.exitCode}",
    );
    assert_eq!(last, "Running 1");
    let limited = eventually(Duration::from_secs(30), || {
        let r = c.get("pod", "limited", "{.status.phase} {.status.reason}");
        r.starts_with("Failed").then_some(r)
    });
    assert_eq!(limited, "Failed DeadlineExceeded");
    let reason = c.wait_job_failed("retry");
    assert_eq!(reason, "BackoffLimitExceeded");
    c.wait_job_pods_gone("retry");
}

/// A pod manifest: container `main` of `image`, with `extra` YAML under the container.
fn pod_yaml(name: &str, image: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: main\n    image: {image}\n    command: [\"sleep\", \"60\"]\n{extra}"
    )
}

/// kubectl sees admission and the kubelet's pulls as on a real cluster: Pod Security and
/// ResourceQuota refusals with the API server's words, LimitRange defaults in the stored pod,
/// and `ErrImageNeverPull` with the kubelet's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simwait_admission_and_pull_policy_through_kubectl() {
    let c = cluster(33).await;
    c.apply_yaml(
        "ns",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: locked\n  labels:\n    pod-security.kubernetes.io/enforce: baseline\n",
    );
    let path = c.dir.path().join("privileged.yaml");
    let privileged = pod_yaml("p", IMAGE, "    securityContext:\n      privileged: true\n");
    std::fs::write(&path, privileged).expect("manifest");
    let out = c.run(&[
        "create",
        "-n",
        "locked",
        "-f",
        path.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"Error from server (Forbidden): error when creating"#)
            && err.contains(r#"pods "p" is forbidden: violates PodSecurity "baseline:latest": privileged (container "main" must not set securityContext.privileged=true)"#),
        "{err}"
    );

    c.apply_yaml(
        "quota",
        "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: small\nspec:\n  hard:\n    limits.memory: 100Mi\n",
    );
    c.apply_yaml(
        "range",
        "apiVersion: v1\nkind: LimitRange\nmetadata:\n  name: defaults\nspec:\n  limits:\n  - type: Container\n    default:\n      memory: 64Mi\n",
    );
    assert!(c.ok(&["get", "quota,limits"]).contains("small"));
    // The LimitRange fills in the limit the quota asks for.
    c.apply_yaml("fits", &pod_yaml("fits", IMAGE, ""));
    let limit = c.get(
        "pod",
        "fits",
        "{.spec.containers[0].resources.limits.memory}",
    );
    assert_eq!(limit, "64Mi");
    let path = c.dir.path().join("big.yaml");
    let big = pod_yaml(
        "big",
        IMAGE,
        "    resources:\n      limits:\n        memory: 64Mi\n",
    );
    std::fs::write(&path, big).expect("manifest");
    let out = c.run(&["create", "-f", path.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"pods "big" is forbidden: exceeded quota: small, requested: limits.memory=64Mi, used: limits.memory=64Mi, limited: limits.memory=100Mi"#),
        "{err}"
    );
    c.ok(&["delete", "pod", "fits", "--wait=false"]);
    c.ok(&["delete", "quota", "small"]);

    let never = pod_yaml(
        "never",
        "berth-test/not-on-this-node:1",
        "    imagePullPolicy: Never\n",
    );
    c.apply_yaml("never", &never);
    let reason = eventually(Duration::from_secs(30), || {
        let r = c.get(
            "pod",
            "never",
            "{.status.containerStatuses[0].state.waiting.reason}",
        );
        (r == "ErrImageNeverPull").then_some(r)
    });
    assert_eq!(reason, "ErrImageNeverPull");
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=ErrImageNeverPull",
    ]);
    assert!(
        events.contains(r#"Container image "berth-test/not-on-this-node:1" is not present with pull policy of Never"#),
        "{events}"
    );
}
