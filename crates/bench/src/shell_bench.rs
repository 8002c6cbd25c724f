//! Stateful shells and detached commands against fresh execs, on any engine, with the floor
//! the issue names: a plain `sh` held open through `docker exec -i` and driven with marker
//! lines (no stdin isolation, no exit-code framing on stderr, the docker CLI's relay).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use berth_engine_core::{
    AttachFrom, CommandId, ContainerEngine, DetachedCommand, DetachedCommands, EnvironmentId,
    ExecRequest, OutputChunk, Shell, ShellCommand, ShellOptions,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::{stats, Scenario};

/// `docker exec -i CONTAINER sh`, driven with marker lines.
struct Floor {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: BufReader<tokio::process::ChildStdout>,
    line: String,
}

impl Floor {
    async fn open(container: &str) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new("docker")
            .args(["exec", "-i", container, "sh"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("docker exec -i")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut floor = Self {
            child,
            stdin,
            stdout,
            line: String::new(),
        };
        floor.run("true").await?;
        Ok(floor)
    }

    async fn run(&mut self, command: &str) -> anyhow::Result<()> {
        self.stdin
            .write_all(format!("{command}; echo __floor_end $?\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        loop {
            self.line.clear();
            ensure!(
                self.stdout.read_line(&mut self.line).await? > 0,
                "the floor's sh ended"
            );
            if self.line.starts_with("__floor_end ") {
                return Ok(());
            }
        }
    }

    async fn close(mut self) {
        drop(self.stdin);
        let _ = self.child.wait().await;
    }
}

/// Streams `req`'s output to the end and returns how many stdout bytes came.
pub(crate) async fn stream_counting(
    engine: &dyn ContainerEngine,
    env: &EnvironmentId,
    req: ExecRequest,
) -> anyhow::Result<u64> {
    let mut process = engine.exec_streaming(env, req).await?;
    let mut output = process.take_output().context("output")?;
    let mut got = 0u64;
    while let Some(chunk) = output.next_chunk().await {
        if let OutputChunk::Stdout(b) = chunk {
            got += b.len() as u64;
        }
    }
    process.wait().await?;
    Ok(got)
}

async fn attach_to_end(commands: &DetachedCommands, id: &CommandId) -> anyhow::Result<()> {
    let o = commands
        .attach(id, AttachFrom::default())
        .await?
        .collect(1 << 20)
        .await?;
    ensure!(o.stdout_lossy() == "hi\n", "detached output {o:?}");
    Ok(())
}

/// The shell and detached scenarios for `engine`, measured in `env`; `floor` is the Docker
/// container behind the environment, for the `docker exec -i sh` floor.
pub(crate) async fn scenarios(
    engine: Arc<dyn ContainerEngine>,
    env: &EnvironmentId,
    backend: &str,
    floor: &str,
    smoke: bool,
) -> anyhow::Result<Vec<Scenario>> {
    let mut out = Vec::new();
    let mut shell = Shell::open(engine.clone(), env, ShellOptions::default()).await?;
    let mut floor = Floor::open(floor).await?;
    let fast = if smoke { 20 } else { 2000 };
    let slow = if smoke { 3 } else { 100 };
    for (command, argv, goal) in [
        ("true", vec!["true"], "p50 <= 0.25 ms"),
        ("/bin/echo hi", vec!["/bin/echo", "hi"], "p50 <= 1.2 ms"),
    ] {
        let (mut in_shell, mut fresh, mut floor_samples) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..fast {
            let t = Instant::now();
            let o = shell.run(ShellCommand::new(command)).await?;
            in_shell.push(t.elapsed());
            ensure!(o.status.success(), "{command} in the shell: {o:?}");
            let t = Instant::now();
            floor.run(command).await?;
            floor_samples.push(t.elapsed());
            if i < slow {
                let t = Instant::now();
                engine.exec(env, ExecRequest::new(argv.clone())).await?;
                fresh.push(t.elapsed());
            }
        }
        out.push(Scenario::timed(
            &format!("Shell dispatch of `{command}` ({backend})"),
            &format!("{fast} commands through one berth Shell and through the floor (`docker exec -i` holding `sh`, driven with marker lines), alternating; {slow} fresh execs. Goal: {goal}, over 100x faster than a fresh exec."),
            vec![
                ("berth Shell::run", in_shell),
                ("fresh berth exec", fresh),
                ("floor: docker exec -i sh + marker lines", floor_samples),
            ],
        ));
    }
    floor.close().await;

    // Throughput through one shell command and one plain exec.
    let total: u64 = if smoke { 16 << 20 } else { 512 << 20 };
    let rounds = if smoke { 1 } else { 3 };
    let script = format!("head -c {total} /dev/zero");
    let (mut via_shell, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let mut got = 0u64;
        shell
            .run_streaming(ShellCommand::new(script.clone()), |chunk| {
                if let OutputChunk::Stdout(b) = chunk {
                    got += b.len() as u64;
                }
            })
            .await?;
        via_shell.push(t.elapsed());
        ensure!(got == total, "the shell streamed {got} of {total}");
        let t = Instant::now();
        let got = stream_counting(engine.as_ref(), env, ExecRequest::shell(script.clone())).await?;
        plain.push(t.elapsed());
        ensure!(got == total, "the exec streamed {got} of {total}");
    }
    let mib = total as f64 / f64::from(1 << 20);
    let rate = |v: &[Duration]| mib / stats(v).p50 * 1000.0;
    out.push(Scenario::values(
        &format!("Shell throughput ({backend})"),
        &format!("`{script}` through one shell command and through a plain exec_streaming, median of {rounds}; higher is better. Goal: shell >= 0.9x plain."),
        "MiB/s",
        vec![
            ("berth Shell::run_streaming", rate(&via_shell)),
            ("berth exec_streaming", rate(&plain)),
        ],
    ));
    shell.close().await?;

    // Detached: start + attach to completion, a plain exec, and re-attaching a finished one.
    let commands = DetachedCommands::new(engine.clone(), env.clone());
    let n = if smoke { 2 } else { 30 };
    let (mut detached, mut fresh, mut reattach) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        let id = commands.start(DetachedCommand::new("echo hi")).await?;
        attach_to_end(&commands, &id).await?;
        detached.push(t.elapsed());
        let t = Instant::now();
        attach_to_end(&commands, &id).await?;
        reattach.push(t.elapsed());
        let t = Instant::now();
        engine.exec(env, ExecRequest::new(["echo", "hi"])).await?;
        fresh.push(t.elapsed());
        commands.remove(&id).await?;
    }
    let mut s = Scenario::timed(
        &format!("Detached `echo hi` ({backend})"),
        &format!("{n} rounds: start + attach until the exit code, then a re-attach of the finished command, then a plain exec."),
        vec![
            ("berth detached start + attach", detached),
            ("re-attach (finished command)", reattach),
            ("fresh berth exec", fresh),
        ],
    );
    s.rows[1].ratio_berth_over_this = None;
    out.push(s);
    eprintln!(
        "shell bench on {backend}: dispatch p50 {:.3} ms",
        out[0].rows[0].stats.as_ref().map_or(f64::NAN, |s| s.p50)
    );
    Ok(out)
}
