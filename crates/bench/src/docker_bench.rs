//! The Docker suite: berth's `DockerEngine` against raw bollard (the same calls and the same
//! hardened container config, written here without berth's layer) and the docker CLI, for
//! exec latency and throughput, start, stop, concurrency and memory.

use super::*;
/// The process's resident set and peak, in bytes.
pub(crate) fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets VmHWM to the current RSS (Linux `clear_refs` 5), so a peak can be measured per run.
pub(crate) fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub(crate) struct Bench {
    pub(crate) engine: Arc<DockerEngine>,
    pub(crate) raw: Docker,
    pub(crate) image: ImageRef,
    pub(crate) smoke: bool,
    pub(crate) session: SessionId,
}

impl Bench {
    fn spec(&self) -> EnvironmentSpec {
        EnvironmentSpec::new(self.image.clone(), self.session.clone())
            .with_max_lifetime(Duration::from_secs(3600))
    }

    fn raw_labels(&self) -> std::collections::HashMap<String, String> {
        [
            (LABEL_MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned()),
            (LABEL_SESSION.to_owned(), self.session.to_string()),
        ]
        .into_iter()
        .collect()
    }

    /// The raw-bollard equivalent of berth's start: create + start, same image and keepalive.
    pub(crate) async fn raw_start(&self, name: &str) -> anyhow::Result<()> {
        self.raw
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.to_owned()),
                    ..Default::default()
                }),
                ContainerCreateBody {
                    image: Some(self.image.to_string()),
                    entrypoint: Some(vec!["sleep".into()]),
                    cmd: Some(vec!["3600".into()]),
                    labels: Some(self.raw_labels()),
                    // The same hardened container berth creates, so only berth's layer differs.
                    host_config: Some(HostConfig {
                        init: Some(true),
                        privileged: Some(false),
                        security_opt: Some(vec!["no-new-privileges:true".into()]),
                        cap_drop: Some(vec!["ALL".into()]),
                        cap_add: Some(
                            berth_engine_docker::HARDENED_CAPABILITIES
                                .iter()
                                .map(|c| (*c).to_owned())
                                .collect(),
                        ),
                        pids_limit: Some(berth_engine_docker::DEFAULT_PIDS_LIMIT as i64),
                        network_mode: Some("bridge".into()),
                        ..Default::default()
                    }),
                    stop_timeout: Some(1),
                    ..Default::default()
                },
            )
            .await?;
        self.raw.start_container(name, None).await?;
        Ok(())
    }

    /// The raw-bollard equivalent of berth's stop: kill + remove in one forced remove.
    pub(crate) async fn raw_stop(&self, name: &str) -> anyhow::Result<()> {
        self.raw
            .remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await?;
        Ok(())
    }

    /// The raw-bollard exec: create_exec + start_exec (drained) + inspect_exec.
    pub(crate) async fn raw_exec(
        &self,
        container: &str,
        argv: &[&str],
    ) -> anyhow::Result<(i64, u64)> {
        raw_docker_exec(&self.raw, container, argv).await
    }

    pub(crate) async fn docker_cli(&self, args: &[&str]) -> anyhow::Result<()> {
        let status = tokio::process::Command::new("docker")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .context("running the docker CLI")?;
        if !status.success() {
            bail!("docker {args:?} failed: {status}");
        }
        Ok(())
    }

    /// Shells and detached commands against fresh execs and the `docker exec -i sh` floor.
    pub(crate) async fn shells(&self) -> anyhow::Result<Vec<Scenario>> {
        let env = self.engine.start(&self.spec()).await?;
        let result = shell_bench::scenarios(
            self.engine.clone(),
            &env,
            "Docker",
            env.as_str(),
            self.smoke,
        )
        .await;
        self.engine.stop(&env).await?;
        result
    }

    /// Scenario 1: `echo hi` latency, 200 sequential execs in one environment.
    pub(crate) async fn exec_latency(&self) -> anyhow::Result<Scenario> {
        let iterations = if self.smoke { 5 } else { 200 };
        let env = self.engine.start(&self.spec()).await?;
        let result = async {
            let (mut berth, mut raw, mut cli) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..iterations {
                let t = Instant::now();
                let out = self
                    .engine
                    .exec(&env, ExecRequest::new(["echo", "hi"]))
                    .await?;
                berth.push(t.elapsed());
                anyhow::ensure!(out.stdout_lossy() == "hi\n", "berth exec output");
                let t = Instant::now();
                self.raw_exec(env.as_str(), &["echo", "hi"]).await?;
                raw.push(t.elapsed());
                let t = Instant::now();
                self.docker_cli(&["exec", env.as_str(), "echo", "hi"])
                    .await?;
                cli.push(t.elapsed());
            }
            Ok(Scenario::timed(
                "1. exec `echo hi` latency",
                &format!("{iterations} sequential execs in one environment, alternating subjects."),
                vec![
                    ("berth exec", berth),
                    ("raw bollard (create+start+inspect exec)", raw),
                    ("docker exec (CLI)", cli),
                ],
            ))
        }
        .await;
        self.engine.stop(&env).await?;
        result
    }

    /// Scenario 2: throughput of a large stream, and berth's peak RSS growth while streaming.
    pub(crate) async fn exec_throughput(&self) -> anyhow::Result<Scenario> {
        let total: u64 = if self.smoke { 16 << 20 } else { 512 << 20 };
        let rounds = if self.smoke { 1 } else { 3 };
        let count = total.to_string();
        let argv = ["head", "-c", count.as_str(), "/dev/zero"];
        let env = self.engine.start(&self.spec()).await?;
        let result = async {
            let (mut berth, mut raw, mut cli) = (Vec::new(), Vec::new(), Vec::new());
            let mut peak_growth = 0u64;
            for _ in 0..rounds {
                reset_peak();
                let (rss_before, _) = memory();
                let t = Instant::now();
                let got = shell_bench::stream_counting(
                    self.engine.as_ref(),
                    &env,
                    ExecRequest::new(argv),
                )
                .await?;
                berth.push(t.elapsed());
                let (_, peak) = memory();
                peak_growth = peak_growth.max(peak.saturating_sub(rss_before));
                anyhow::ensure!(got == total, "berth streamed {got} of {total} bytes");
                let t = Instant::now();
                let (_, got) = self.raw_exec(env.as_str(), &argv).await?;
                raw.push(t.elapsed());
                anyhow::ensure!(got == total, "bollard streamed {got} of {total} bytes");
                let t = Instant::now();
                let mut args = vec!["exec", env.as_str()];
                args.extend_from_slice(&argv);
                self.docker_cli(&args).await?;
                cli.push(t.elapsed());
            }
            let mib = total as f64 / f64::from(1 << 20);
            let rate = |v: &[Duration]| mib / stats(v).p50 * 1000.0;
            let mut scenario = Scenario::values(
                "2. exec throughput",
                &format!(
                    "`head -c {total} /dev/zero` streamed and counted, median of {rounds}; higher is better, so berth/this above 1 is faster. berth's peak RSS growth while streaming: {:.1} MiB.",
                    peak_growth as f64 / f64::from(1 << 20)
                ),
                "MiB/s",
                vec![
                    ("berth exec_streaming", rate(&berth)),
                    ("raw bollard", rate(&raw)),
                    ("docker exec > /dev/null (CLI)", rate(&cli)),
                ],
            );
            scenario.rows.push(Row {
                subject: "berth peak RSS growth while streaming".into(),
                stats: None,
                value: Some(peak_growth as f64 / f64::from(1 << 20)),
                unit: "MiB".into(),
                ratio_berth_over_this: None,
            });
            Ok(scenario)
        }
        .await;
        self.engine.stop(&env).await?;
        result
    }

    /// Scenario 3: start and stop latency, one environment at a time.
    pub(crate) async fn start_stop(&self) -> anyhow::Result<Vec<Scenario>> {
        let iterations = if self.smoke { 2 } else { 20 };
        let (mut b_start, mut b_stop, mut r_start, mut r_stop, mut c_start, mut c_stop) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for i in 0..iterations {
            // Rotate who goes first: a removal leaves the daemon busy for a moment, and the
            // subject after it would pay for that every time.
            for turn in 0..3 {
                match (turn + i) % 3 {
                    0 => {
                        let t = Instant::now();
                        let env = self.engine.start(&self.spec()).await?;
                        b_start.push(t.elapsed());
                        let t = Instant::now();
                        self.engine.stop(&env).await?;
                        b_stop.push(t.elapsed());
                    }
                    1 => {
                        let name = format!("berth-bench-{}-raw-{i}", self.session);
                        let t = Instant::now();
                        self.raw_start(&name).await?;
                        r_start.push(t.elapsed());
                        let t = Instant::now();
                        self.raw_stop(&name).await?;
                        r_stop.push(t.elapsed());
                    }
                    _ => {
                        let name = format!("berth-bench-{}-cli-{i}", self.session);
                        let label = format!("{LABEL_SESSION}={}", self.session);
                        let managed = format!("{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}");
                        let mut run = vec![
                            "run",
                            "-d",
                            "--init",
                            "--name",
                            &name,
                            "--label",
                            &label,
                            "--label",
                            &managed,
                            "--security-opt",
                            "no-new-privileges:true",
                            "--cap-drop",
                            "ALL",
                            "--pids-limit",
                            "4096",
                            "--entrypoint",
                            "sleep",
                        ];
                        for cap in berth_engine_docker::HARDENED_CAPABILITIES {
                            run.extend(["--cap-add", cap]);
                        }
                        run.extend([self.image.as_str(), "3600"]);
                        let t = Instant::now();
                        self.docker_cli(&run).await?;
                        c_start.push(t.elapsed());
                        let t = Instant::now();
                        self.docker_cli(&["rm", "-f", "-v", &name]).await?;
                        c_stop.push(t.elapsed());
                    }
                }
            }
        }
        Ok(vec![
            Scenario::timed(
                "3a. start (until it accepts execs)",
                &format!("{iterations} environments per subject, one at a time, the subjects' order rotating."),
                vec![
                    ("berth start", b_start),
                    ("raw bollard create+start", r_start),
                    ("docker run -d (CLI)", c_start),
                ],
            ),
            Scenario::timed(
                "3b. stop (kill + remove)",
                "The same environments. berth stops without a SIGTERM grace period.",
                vec![
                    ("berth stop", b_stop),
                    ("raw bollard remove (force)", r_stop),
                    ("docker rm -f (CLI)", c_stop),
                ],
            ),
        ])
    }

    /// Scenario 4: N environments started concurrently, then removed concurrently.
    pub(crate) async fn concurrent(&self, n: usize) -> anyhow::Result<Scenario> {
        let rounds = if self.smoke { 1 } else { 3 };
        let (mut b_up, mut b_down, mut r_up, mut r_down) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let specs: Vec<EnvironmentSpec> = (0..n).map(|_| self.spec()).collect();
            let t = Instant::now();
            let started =
                futures_util::future::join_all(specs.iter().map(|s| self.engine.start(s))).await;
            b_up.push(t.elapsed());
            let ids: Vec<EnvironmentId> = started.into_iter().collect::<Result<_, _>>()?;
            let t = Instant::now();
            for r in futures_util::future::join_all(ids.iter().map(|id| self.engine.stop(id))).await
            {
                r?;
            }
            b_down.push(t.elapsed());

            let names: Vec<String> = (0..n)
                .map(|i| format!("berth-bench-{}-c{round}-{i}", self.session))
                .collect();
            let t = Instant::now();
            for r in futures_util::future::join_all(names.iter().map(|n| self.raw_start(n))).await {
                r?;
            }
            r_up.push(t.elapsed());
            let t = Instant::now();
            for r in futures_util::future::join_all(names.iter().map(|n| self.raw_stop(n))).await {
                r?;
            }
            r_down.push(t.elapsed());
        }
        let mut s = Scenario::timed(
            &format!("4. {n} environments concurrently"),
            &format!(
                "Wall time until all {n} run, then until all are removed; median of {rounds}."
            ),
            vec![
                ("berth start, all", b_up),
                ("raw bollard create+start, all", r_up),
            ],
        );
        let down = Scenario::timed(
            "",
            "",
            vec![
                ("berth stop, all", b_down),
                ("raw bollard remove, all", r_down),
            ],
        );
        s.rows.extend(down.rows);
        Ok(s)
    }

    /// Scenario 11: a cold `berth run true` (the binary, as a user runs it) against `docker
    /// run --rm IMAGE true`, alternating, with the library's one-shot path and the old path
    /// (start + the "command not found" probe + exec + stop, what `berth run` did before
    /// `run_once`) beside them. `BERTH_BENCH_BIN` names the berth binary (default: next to
    /// this one); `BERTH_BENCH_OLD_BIN` adds a row for another build of it (an old one).
    pub(crate) async fn cold_run(&self) -> anyhow::Result<Scenario> {
        let iterations = if self.smoke { 2 } else { 40 };
        let bin = std::env::var_os("BERTH_BENCH_BIN")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|e| e.parent().map(|d| d.join("berth")))
            })
            .filter(|p| p.is_file());
        let old_bin = std::env::var_os("BERTH_BENCH_OLD_BIN").map(std::path::PathBuf::from);
        let image = self.image.to_string();
        let session = self.session.to_string();
        let berth_run = |bin: std::path::PathBuf| {
            let (image, session) = (image.clone(), session.clone());
            async move {
                let status = tokio::process::Command::new(&bin)
                    .args([
                        "run",
                        "--image",
                        &image,
                        "--session",
                        &session,
                        "--",
                        "true",
                    ])
                    // The bench's own config: the built-in defaults, whatever the caller has.
                    .env("BERTH_RUNNER__PULL_POLICY", "if_not_present")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await
                    .with_context(|| format!("running {}", bin.display()))?;
                if !status.success() {
                    bail!("{} run true failed: {status}", bin.display());
                }
                anyhow::Ok(())
            }
        };
        // `docker run --rm` with the container berth makes (init, hardening, labels), so the
        // cost of the container's config is told apart from berth's own.
        let label = format!("{LABEL_SESSION}={}", self.session);
        let managed = format!("{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}");
        let mut like_berth = vec![
            "run",
            "--rm",
            "--init",
            "--label",
            &label,
            "--label",
            &managed,
            "--security-opt",
            "no-new-privileges:true",
            "--cap-drop",
            "ALL",
            "--pids-limit",
            "4096",
        ];
        for cap in berth_engine_docker::HARDENED_CAPABILITIES {
            like_berth.extend(["--cap-add", cap]);
        }
        like_berth.extend([self.image.as_str(), "true"]);
        let subjects = if old_bin.is_some() { 6 } else { 5 };
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); subjects];
        for i in 0..iterations {
            // Rotate who goes first: a removal leaves the daemon busy for a moment.
            for turn in 0..subjects {
                let who = (turn + i) % subjects;
                let t = Instant::now();
                match who {
                    0 => match &bin {
                        Some(bin) => berth_run(bin.clone()).await?,
                        None => continue,
                    },
                    1 => {
                        self.docker_cli(&["run", "--rm", self.image.as_str(), "true"])
                            .await?;
                    }
                    2 => {
                        let (env, process) = self
                            .engine
                            .run_once(&self.spec(), ExecRequest::new(["true"]))
                            .await?;
                        let status = process.wait().await?;
                        self.engine.stop(&env).await?;
                        anyhow::ensure!(status.success(), "true failed: {status}");
                    }
                    3 => {
                        let env = self.engine.start(&self.spec()).await?;
                        let req = ExecRequest::new(["true"]);
                        let missing = berth_engine_core::probe_command_missing(
                            self.engine.as_ref(),
                            &env,
                            &req,
                        )
                        .await;
                        let out = self.engine.exec(&env, req).await?;
                        self.engine.stop(&env).await?;
                        anyhow::ensure!(missing.is_none() && out.status.success(), "true failed");
                    }
                    4 => self.docker_cli(&like_berth).await?,
                    _ => berth_run(old_bin.clone().unwrap_or_default()).await?,
                }
                samples[who].push(t.elapsed());
            }
        }
        let mut rows = Vec::new();
        if bin.is_some() {
            rows.push(("berth run true (CLI, one-shot)", samples[0].clone()));
        }
        rows.extend([
            ("docker run --rm IMAGE true (CLI)", samples[1].clone()),
            ("library: run_once + wait + stop", samples[2].clone()),
            (
                "library: start + probe + exec + stop (the old path)",
                samples[3].clone(),
            ),
        ]);
        if bin.is_none() {
            // The library's one-shot path is the subject the ratios are taken against.
            rows.swap(0, 1);
        }
        rows.push((
            "docker run --rm with berth's container config (CLI)",
            samples[4].clone(),
        ));
        if subjects == 6 {
            rows.push(("berth run true (BERTH_BENCH_OLD_BIN)", samples[5].clone()));
        }
        let missing = if bin.is_none() {
            " No berth binary was found next to the bench (build berth-cli or set BERTH_BENCH_BIN): the library's one-shot path leads."
        } else {
            ""
        };
        Ok(Scenario::timed(
            "13. cold run `true`: berth run vs docker run --rm",
            &format!("{iterations} runs per subject, alternating, the order rotating.{missing} The binaries are measured as a user runs them (process start, config, connect included); `docker run --rm` uses no init, berth's one-shot container runs under Docker's init like every environment."),
            rows,
        ))
    }

    /// Scenario 5: resident memory of a process holding a session of 50 live environments.
    pub(crate) async fn memory_50(&self) -> anyhow::Result<Scenario> {
        let n = if self.smoke { 3 } else { 50 };
        let (before, _) = memory();
        let session = berth_runner::session::Session::new(
            self.engine.clone() as Arc<dyn ContainerEngine>,
            self.spec(),
        );
        let names: Vec<String> = (0..n).map(|i| format!("env{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let started = session.start_many(&refs).await;
        let (after, _) = memory();
        session.shutdown().await?;
        started?;
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        Ok(Scenario {
            name: format!("5. memory with {n} live environments"),
            note: "RSS of this process: before the session, and holding it with every environment running.".into(),
            rows: vec![
                Row { subject: "RSS before".into(), stats: None, value: Some(mib(before)), unit: "MiB".into(), ratio_berth_over_this: None },
                Row { subject: format!("RSS holding {n} environments"), stats: None, value: Some(mib(after)), unit: "MiB".into(), ratio_berth_over_this: None },
                Row { subject: "growth per environment".into(), stats: None, value: Some(mib(after.saturating_sub(before)) * 1024.0 / n as f64), unit: "KiB".into(), ratio_berth_over_this: None },
            ],
        })
    }
}

/// Exec with bollard alone: create_exec + start_exec (drained, bytes counted) + inspect_exec
/// until the exit code is known. Returns (exit code, bytes of output).
pub(crate) async fn raw_docker_exec(
    docker: &Docker,
    container: &str,
    argv: &[&str],
) -> anyhow::Result<(i64, u64)> {
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(argv.iter().map(|s| (*s).to_owned()).collect()),
                ..Default::default()
            },
        )
        .await?;
    let mut bytes = 0u64;
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&created.id, None).await?
    {
        while let Some(item) = output.next().await {
            if let LogOutput::StdOut { message } | LogOutput::StdErr { message } = item? {
                bytes += message.len() as u64;
            }
        }
    }
    loop {
        let inspect = docker.inspect_exec(&created.id).await?;
        if inspect.running != Some(true) {
            if let Some(code) = inspect.exit_code {
                return Ok((code, bytes));
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
