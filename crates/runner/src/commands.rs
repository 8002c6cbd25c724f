//! One function per subcommand: load config, call the library, print.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use berth_engine_core::{
    BuildSpec, ContainerEngine, EnvironmentId, EnvironmentSpec, ErrorKind, ExecOutput, ExecRequest,
    ImageRef, LabelSelector, OutputChunk, Progress, ProgressEvent, PullPolicy, SessionId, Stdin,
    StopOutcome,
};
use berth_runner::config::parse_memory_bytes;
use berth_runner::config::{parse_duration, BerthConfig, LoadOptions, Loaded};
use berth_runner::copy::{self, ExtractOptions};
use berth_runner::gc::{collect_garbage, GcOptions};
use berth_runner::session::Session;
use berth_runner::state::StateDir;
use berth_runner::{archive, backend};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::cli::{
    Cli, Command, CommandArgs, CpArgs, DoctorArgs, DownArgs, EnvArgs, ExecArgs, GcArgs,
    ImageBuildArgs, ImageCommand, ImageEnsureArgs, LsArgs, RenderArgs, RunArgs, ShellArgs, UpArgs,
};
use crate::terminal;

/// The offline test image (`berth_engine_core::testkit::TEST_IMAGE`, not linked into the
/// binary), named in the hint of a failed pull.
const TEST_IMAGE: &str = "berth-test/busybox:2";

/// Global options every command sees.
struct Ctx {
    loaded: Loaded,
    json: bool,
}

impl Ctx {
    fn config(&self) -> &BerthConfig {
        &self.loaded.config
    }

    async fn engine(&self) -> anyhow::Result<Arc<dyn ContainerEngine>> {
        let config = self.config();
        backend::connect(config)
            .await
            .with_context(|| format!("cannot use the {} backend", config.runner.backend))
    }

    fn print_json(&self, value: &serde_json::Value) {
        println!("{value}");
    }
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut overrides = Vec::new();
    if let Some(b) = &cli.backend {
        overrides.push(("runner.backend".to_owned(), b.clone()));
    }
    if let Some(h) = &cli.docker_host {
        overrides.push(("docker.host".to_owned(), h.clone()));
    }
    let mut options = LoadOptions::default();
    options.path = cli.config.clone();
    options.overrides = overrides;
    let loaded = BerthConfig::load(&options)?;
    let ctx = Ctx {
        loaded,
        json: cli.json,
    };
    match cli.command {
        Command::Doctor(a) => doctor(&ctx, a).await,
        Command::Up(a) => up(&ctx, a).await,
        Command::Exec(a) => exec(&ctx, a).await,
        Command::Run(a) => run(&ctx, a).await,
        Command::Shell(a) => shell(&ctx, a).await,
        Command::Cp(a) => cp(&ctx, a).await,
        Command::Ls(a) => ls(&ctx, a).await,
        Command::Down(a) => down(&ctx, a).await,
        Command::Gc(a) => gc(&ctx, a).await,
        Command::Image(ImageCommand::Ensure(a)) => image_ensure(&ctx, a).await,
        Command::Image(ImageCommand::Build(a)) => image_build(&ctx, a).await,
        Command::Render(a) => render(&ctx, a),
    }
}

fn env_id(text: &str) -> anyhow::Result<EnvironmentId> {
    EnvironmentId::new(text).context("invalid environment id")
}

fn session_id(text: &str) -> anyhow::Result<SessionId> {
    SessionId::new(text).context("invalid --session")
}

fn image_of(ctx: &Ctx, flag: Option<&String>) -> anyhow::Result<ImageRef> {
    let image = flag
        .cloned()
        .or_else(|| ctx.config().runner.image.clone())
        .ok_or_else(|| anyhow!("no image: pass --image or set runner.image in the config"))?;
    ImageRef::new(image).context("invalid --image")
}

fn parse_pairs(flag: &str, pairs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow!("invalid {flag} {p:?}: expected KEY=VALUE"))
        })
        .collect()
}

/// The spec of a new environment from config and flags, validated before any I/O.
fn environment_spec(ctx: &Ctx, args: &EnvArgs) -> anyhow::Result<EnvironmentSpec> {
    let config = ctx.config();
    let image = image_of(ctx, args.image.as_ref())?;
    let session = match &args.session {
        Some(id) => session_id(id)?,
        None => SessionId::generate(),
    };
    let resources = config.runner_resources();
    let workspace = config.workspace_for(&session);
    let mut spec = EnvironmentSpec::new(image, session)
        .with_name(args.name.clone())
        .with_workspace(workspace)
        .with_resources(resources)
        .with_max_lifetime(config.max_lifetime())
        .with_network(config.runner.network);
    spec.mount_path.clone_from(&config.runner.mount_path);
    if config.runner.backend == berth_engine_core::BackendKind::Kubernetes {
        spec.user.clone_from(&config.kubernetes.run_as_user);
        spec.security = config.kubernetes.security;
    }
    spec.validate()?;
    Ok(spec)
}

fn exec_request(args: &CommandArgs, command: Vec<String>) -> anyhow::Result<ExecRequest> {
    let mut req = ExecRequest::new(command);
    for (k, v) in parse_pairs("--env", &args.env)? {
        req = req.with_env(k, v);
    }
    if let Some(dir) = &args.workdir {
        req = req.with_workdir(dir.clone());
    }
    if let Some(user) = &args.user {
        req = req.with_user(user.clone());
    }
    if let Some(timeout) = args.timeout {
        req = req.with_timeout(timeout);
    }
    req.validate()?;
    Ok(req)
}

async fn read_all_stdin() -> anyhow::Result<bytes::Bytes> {
    let mut buf = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut buf)
        .await
        .context("cannot read standard input")?;
    Ok(buf.into())
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(255))
}

fn output_json(out: &ExecOutput) -> serde_json::Value {
    json!({
        "exit_code": out.status.code(),
        "stdout": out.stdout_lossy(),
        "stderr": out.stderr_lossy(),
        "stdout_truncated": out.stdout_truncated,
        "stderr_truncated": out.stderr_truncated,
        "duration_ms": u64::try_from(out.duration.as_millis()).unwrap_or(u64::MAX),
        "oom_killed": out.oom_killed(),
        "memory_limit_bytes": out.oom.and_then(|o| o.limit_bytes),
    })
}

/// Says on stderr that the out-of-memory killer, not the command, ended it: its 137 alone
/// looks like a command that killed itself. A lost connection or an environment stopped under
/// the command is an error (exit 125) with its own message, never an exit code.
fn report_oom(oom: Option<berth_engine_core::OomKill>) {
    if let Some(oom) = oom {
        eprintln!("{}", oom.message());
    }
}

/// Runs `req` in `env`: with `--json`, captured and printed as one object; otherwise
/// streamed to our stdout and stderr as it comes, with stdin forwarded when asked.
async fn exec_in(
    ctx: &Ctx,
    engine: &dyn ContainerEngine,
    env: &EnvironmentId,
    mut req: ExecRequest,
    interactive: bool,
) -> anyhow::Result<ExitCode> {
    if ctx.json {
        if interactive {
            req.stdin = Stdin::Bytes(read_all_stdin().await?);
        }
        let out = engine.exec(env, req).await?;
        ctx.print_json(&output_json(&out));
        report_oom(out.oom);
        return Ok(exit_code(out.status.code()));
    }
    if interactive {
        req.stdin = Stdin::Piped;
    }
    let mut process = engine.exec_streaming(env, req).await?;
    if let Some(mut stdin) = process.take_stdin() {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut stdin).await;
            let _ = stdin.close().await;
        });
    }
    forward_output(process.take_output().expect("output is taken once")).await?;
    let outcome = process.wait_outcome().await?;
    report_oom(outcome.oom);
    Ok(exit_code(outcome.status.code()))
}

async fn forward_output(mut output: berth_engine_core::OutputStream) -> anyhow::Result<()> {
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Some(chunk) = output.next_chunk().await {
        match chunk {
            OutputChunk::Stdout(b) => {
                stdout.write_all(&b).await?;
                stdout.flush().await?;
            }
            OutputChunk::Stderr(b) => {
                stderr.write_all(&b).await?;
                stderr.flush().await?;
            }
        }
    }
    Ok(())
}

async fn recv(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// `run` or `shell` ended by a signal after stopping its environments; berth exits with
/// 128 + the signal's number, as a shell reports a command killed by it (130 for Ctrl-C, 143
/// for SIGTERM).
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {name}; stopped the session's environments")]
pub struct Interrupted {
    name: &'static str,
    signal: u8,
}

impl Interrupted {
    /// 128 + the signal number.
    pub fn exit_code(&self) -> u8 {
        128 + self.signal
    }
}

async fn shutdown_signal() -> Interrupted {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut hup = signal(SignalKind::hangup()).ok();
    let (name, signal) = tokio::select! {
        _ = tokio::signal::ctrl_c() => ("Ctrl-C", 2),
        () = recv(term.as_mut()) => ("SIGTERM", 15),
        () = recv(hup.as_mut()) => ("SIGHUP", 1),
    };
    Interrupted { name, signal }
}

/// Runs `body` with the session's environments stopped afterwards, also on Ctrl-C/SIGTERM.
async fn with_session<F>(session: Session, body: F) -> anyhow::Result<ExitCode>
where
    F: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let outcome = tokio::select! {
        r = body => r,
        sig = shutdown_signal() => Err(sig.into()),
    };
    let stopped = session.shutdown().await;
    let code = outcome?;
    stopped.with_context(|| {
        format!(
            "failed to stop the environments of session {}",
            session.id()
        )
    })?;
    Ok(code)
}

async fn doctor(ctx: &Ctx, args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let config = ctx.config();
    let mut checks: Vec<(String, bool, String)> = Vec::new();
    let source = match &ctx.loaded.source {
        berth_runner::config::ConfigSource::Defaults => "built-in defaults".to_owned(),
        berth_runner::config::ConfigSource::File(p) => p.display().to_string(),
    };
    checks.push(("config".into(), true, source));
    checks.push(("backend".into(), true, config.runner.backend.to_string()));
    checks.push(("limits".into(), true, limits_note(config).0));
    if config.runner.backend == berth_engine_core::BackendKind::Kubernetes {
        let k = &config.kubernetes;
        checks.push((
            "kubeconfig".into(),
            true,
            format!(
                "{}, context {}, namespace {}",
                k.kubeconfig.as_ref().map_or_else(
                    || "KUBECONFIG / ~/.kube/config / in-cluster".to_owned(),
                    |p| p.display().to_string()
                ),
                k.context.as_deref().unwrap_or("(current)"),
                k.namespace
            ),
        ));
        let kc = backend::kubernetes_config(config);
        if let Ok(engine) = berth_engine_k8s::KubernetesEngine::connect(kc).await {
            if engine.init().await.is_ok() {
                checks.extend(berth_runner::doctor::kubernetes(&engine, config).await);
            }
        }
    }
    match backend::connect(config).await {
        Err(e) => checks.push(("engine".into(), false, e.to_string())),
        Ok(engine) => match engine.init().await {
            Err(e) => checks.push(("engine".into(), false, e.to_string())),
            Ok(info) => {
                checks.push((
                    "engine".into(),
                    true,
                    format!(
                        "{} at {}, server {}{}",
                        info.backend,
                        info.endpoint,
                        info.server_version,
                        info.api_version
                            .map(|a| format!(", API {a}"))
                            .unwrap_or_default()
                    ),
                ));
                let image = args.image.clone().or_else(|| config.runner.image.clone());
                match image {
                    None => checks.push((
                        "image".into(),
                        false,
                        "no image configured (runner.image) or given (--image)".into(),
                    )),
                    Some(image)
                        if config.runner.backend == berth_engine_core::BackendKind::Kubernetes =>
                    {
                        checks.push(berth_runner::doctor::kubernetes_image(config, &image).await);
                    }
                    Some(image) => {
                        let image = ImageRef::new(image)?;
                        match engine
                            .ensure_image(&image, PullPolicy::Never, &Progress::none())
                            .await
                        {
                            Ok(info) => checks.push((
                                "image".into(),
                                true,
                                format!(
                                    "{image} present{}",
                                    info.id.map(|i| format!(" ({i})")).unwrap_or_default()
                                ),
                            )),
                            Err(e) => checks.push(("image".into(), false, e.to_string())),
                        }
                    }
                }
            }
        },
    }
    let ok = checks.iter().all(|(_, ok, _)| *ok);
    if ctx.json {
        let list: Vec<_> = checks
            .iter()
            .map(|(name, ok, detail)| json!({"check": name, "ok": ok, "detail": detail}))
            .collect();
        ctx.print_json(&json!({"ok": ok, "checks": list}));
    } else {
        for (name, ok, detail) in &checks {
            println!("{} {name}: {detail}", if *ok { "ok  " } else { "FAIL" });
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What an environment may use, said plainly, and whether it is unlimited.
fn limits_note(config: &BerthConfig) -> (String, bool) {
    let mut resources = config.runner_resources();
    if config.runner.backend == berth_engine_core::BackendKind::Kubernetes {
        let limits = &config.kubernetes.resources.limits;
        resources.cpu_millis = resources.cpu_millis.or(limits.resources().cpu_millis);
        resources.memory_bytes = resources.memory_bytes.or(limits.resources().memory_bytes);
    }
    let cpu = resources.cpu_millis.map_or_else(
        || "no CPU limit".to_owned(),
        |m| format!("{} CPUs", m as f64 / 1000.0),
    );
    let memory = resources.memory_bytes.map_or_else(
        || "no memory limit".to_owned(),
        |b| format!("{} MiB of memory", b >> 20),
    );
    let unlimited = resources.cpu_millis.is_none() || resources.memory_bytes.is_none();
    let note = format!(
        "{cpu}, {memory}{}",
        if unlimited {
            " (an unlimited environment can use the whole machine; set runner.resources or kubernetes.resources.limits)"
        } else {
            ""
        }
    );
    (note, unlimited)
}

/// Pulls the image where the engine needs it before a start (Docker creates nothing from a
/// missing image). A cluster pulls on its own and `start` reports pull failures with their
/// reason, so there a check would only cost a pod.
async fn prepare_image(
    ctx: &Ctx,
    engine: &dyn ContainerEngine,
    image: &ImageRef,
) -> anyhow::Result<()> {
    if engine.backend() == berth_engine_core::BackendKind::Docker {
        engine
            .ensure_image(image, ctx.config().runner.pull_policy, &progress_bar(ctx))
            .await
            .map_err(|e| missing_image(image, e))?;
    }
    Ok(())
}

/// A failed pull of a missing image says first that the image is not here; the test image
/// comes from no registry, so it names the command that builds it.
fn missing_image(image: &ImageRef, e: berth_engine_core::Error) -> anyhow::Error {
    let pull_failed = matches!(e.kind(), ErrorKind::ImagePull | ErrorKind::ImageNotFound);
    let hint = if image.as_str() == TEST_IMAGE {
        "; build it with `cargo run -p berth-engine-docker --example test-image`"
    } else {
        ""
    };
    if pull_failed {
        anyhow::Error::new(e).context(format!(
            "image {image} is not present locally, and pulling it failed{hint}"
        ))
    } else {
        e.into()
    }
}

async fn up(ctx: &Ctx, args: UpArgs) -> anyhow::Result<ExitCode> {
    let mut spec = environment_spec(ctx, &args.env)?;
    // Detachment is recorded on the object: asked for at creation, confirmed once ready, so
    // a `berth up` killed in between leaves something gc collects.
    spec.labels.insert(
        berth_engine_core::LABEL_DETACHED.into(),
        berth_engine_core::DETACHED_REQUESTED.into(),
    );
    if let (note, true) = limits_note(ctx.config()) {
        eprintln!("berth: note: this environment has {note}");
    }
    let engine = ctx.engine().await?;
    refuse_duplicate_name(engine.as_ref(), &spec).await?;
    prepare_image(ctx, engine.as_ref(), &spec.image).await?;
    let name = spec.name.clone();
    let session = Session::new(engine.clone(), spec);
    let id = session.start(&name).await.with_context(|| {
        format!(
            "failed to start an environment for session {}",
            session.id()
        )
    })?;
    engine
        .mark_detached(&id)
        .await
        .context("cannot record the environment as detached")?;
    let _ = session.detach();
    if ctx.json {
        ctx.print_json(&json!({"id": id, "session": session.id(), "name": name}));
    } else {
        println!("{id}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Names pick environments within a session (`berth ls` shows them), so two of the same name
/// in one session would be ambiguous.
async fn refuse_duplicate_name(
    engine: &dyn ContainerEngine,
    spec: &EnvironmentSpec,
) -> anyhow::Result<()> {
    let existing = engine.list(&LabelSelector::session(&spec.session)).await?;
    if let Some(same) = existing.iter().find(|e| {
        e.labels.get(berth_engine_core::LABEL_NAME) == Some(&spec.name)
            && e.state != berth_engine_core::EnvironmentState::Exited
    }) {
        bail!(
            "session {} already has an environment named {} ({}); pick another --name, or `berth down {}` first",
            spec.session,
            spec.name,
            same.id,
            same.id
        );
    }
    Ok(())
}

/// A command the environment cannot find: berth exits 127 with one line, as a shell and
/// `docker run` do, instead of the runtime's 126 and its "OCI runtime exec failed" text.
#[derive(Debug, thiserror::Error)]
#[error("{command}: command not found in {env} (not on its PATH)")]
pub struct CommandNotFound {
    command: String,
    env: EnvironmentId,
}

/// Whether `argv[0]`, a bare name, is missing from the environment's PATH for a command run
/// with `args` (its user, workdir and variables). Asks the image's `sh`; without one (or on
/// any failure to ask) the answer is "not known to be missing", and the runtime speaks.
async fn command_missing(
    engine: &dyn ContainerEngine,
    env: &EnvironmentId,
    args: &CommandArgs,
    argv: &[String],
) -> Option<CommandNotFound> {
    let name = argv.first()?;
    if name.contains('/') {
        return None;
    }
    // Exit 3 means "not found", unlike 126/127 from an image without sh.
    let script = "command -v -- \"$1\" >/dev/null 2>&1 && exit 0; exit 3";
    let probe = exec_request(
        args,
        vec![
            "sh".into(),
            "-c".into(),
            script.into(),
            "sh".into(),
            name.clone(),
        ],
    )
    .ok()?;
    let out = engine.exec(env, probe).await.ok()?;
    (out.status.code() == 3).then(|| CommandNotFound {
        command: name.clone(),
        env: env.clone(),
    })
}

async fn exec(ctx: &Ctx, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let env = env_id(&args.environment)?;
    let req = exec_request(&args.cmd, args.command.clone())?;
    let engine = ctx.engine().await?;
    let code = exec_in(ctx, engine.as_ref(), &env, req, args.cmd.interactive).await?;
    // Only a failed exec pays for the question (the runtime's text is already out by then).
    if code == ExitCode::from(126) {
        if let Some(missing) =
            command_missing(engine.as_ref(), &env, &args.cmd, &args.command).await
        {
            return Err(missing.into());
        }
    }
    Ok(code)
}

async fn run(ctx: &Ctx, args: RunArgs) -> anyhow::Result<ExitCode> {
    let spec = environment_spec(ctx, &args.env)?;
    let req = exec_request(&args.cmd, args.command.clone())?;
    let engine = ctx.engine().await?;
    prepare_image(ctx, engine.as_ref(), &spec.image).await?;
    let name = spec.name.clone();
    let session = Session::new(engine.clone(), spec);
    let body = async {
        let env = session.start(&name).await.with_context(|| {
            format!(
                "failed to start an environment for session {}",
                session.id()
            )
        })?;
        // Next to starting an environment the question costs little, and a missing
        // command then gets one clear line instead of the runtime's.
        if let Some(missing) =
            command_missing(engine.as_ref(), &env, &args.cmd, &args.command).await
        {
            return Err(missing.into());
        }
        exec_in(ctx, engine.as_ref(), &env, req, args.cmd.interactive).await
    };
    let outcome = tokio::select! {
        r = body => r,
        sig = shutdown_signal() => Err(sig.into()),
    };
    let stopped = session.shutdown().await;
    // `run` owns its environment: a timeout ends all of it, so processes that escaped the
    // in-environment kill ended with it and the outcome is a plain timeout.
    let outcome = match outcome {
        Err(e) if stopped.is_ok() => Err(ended_escapes(e)),
        other => other,
    };
    let code = outcome?;
    stopped.context("failed to stop the environment")?;
    Ok(code)
}

/// A timeout that left processes behind, once their environment has been removed.
fn ended_escapes(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<berth_engine_core::Error>() {
        Ok(berth_engine_core::Error::TimeoutLeftProcesses {
            operation, after, ..
        }) => anyhow::Error::new(berth_engine_core::Error::Timeout { operation, after })
            .context("ended the environment with everything the command started"),
        Ok(other) => other.into(),
        Err(e) => e,
    }
}

async fn shell(ctx: &Ctx, args: ShellArgs) -> anyhow::Result<ExitCode> {
    let command = if args.command.is_empty() {
        vec!["sh".to_owned()]
    } else {
        args.command.clone()
    };
    if !terminal::stdin_is_terminal() {
        // A TTY exec fed from a pipe cannot work; refuse before anything starts.
        bail!(
            "stdin is not a terminal; use `berth exec -i ENV -- sh` to feed commands from a pipe"
        );
    }
    let mut req = ExecRequest::new(command)
        .with_tty(terminal::size())
        .with_stdin(Stdin::Piped);
    req.user.clone_from(&args.user);
    req.workdir.clone_from(&args.workdir);
    req.validate()?;
    let engine = ctx.engine().await?;
    match &args.environment {
        Some(env) => {
            let env = env_id(env)?;
            interactive_tty(engine.as_ref(), &env, req).await
        }
        None => {
            let env_args = EnvArgs {
                image: args.image.clone(),
                session: None,
                name: "shell".into(),
            };
            let spec = environment_spec(ctx, &env_args)?;
            prepare_image(ctx, engine.as_ref(), &spec.image).await?;
            let session = Session::new(engine.clone(), spec);
            let started = session.start("shell").await;
            let body = async {
                let env = started?;
                interactive_tty(engine.as_ref(), &env, req).await
            };
            with_session(session, body).await
        }
    }
}

/// A TTY exec wired to our terminal: raw mode, stdin forwarded, window size followed.
async fn interactive_tty(
    engine: &dyn ContainerEngine,
    env: &EnvironmentId,
    req: ExecRequest,
) -> anyhow::Result<ExitCode> {
    let mut process = engine.exec_streaming(env, req).await?;
    let raw = terminal::stdin_is_terminal()
        .then(terminal::RawMode::enter)
        .flatten();
    if let Some(mut stdin) = process.take_stdin() {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut stdin).await;
            let _ = stdin.close().await;
        });
    }
    let mut winch =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
    let forward = forward_output(process.take_output().expect("output is taken once"));
    tokio::pin!(forward);
    let result = loop {
        tokio::select! {
            r = &mut forward => break r,
            Some(()) = async {
                match winch.as_mut() {
                    Some(w) => w.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                // Resizing is best effort: the shell may be exiting.
                let _ = process.resize(terminal::size()).await;
            }
        }
    };
    drop(raw);
    result?;
    Ok(exit_code(process.wait().await?.code()))
}

/// `ENV:PATH` → (env, path); anything else is local.
fn remote(spec: &str) -> Option<(EnvironmentId, String)> {
    let (env, path) = spec.split_once(':')?;
    if env.contains('/') || env.starts_with('.') {
        return None;
    }
    Some((EnvironmentId::new(env).ok()?, path.to_owned()))
}

async fn cp(ctx: &Ctx, args: CpArgs) -> anyhow::Result<ExitCode> {
    let engine = ctx.engine().await?;
    match (remote(&args.source), remote(&args.destination)) {
        (None, Some((env, dir))) => {
            let tar = archive::pack_path(Path::new(&args.source))?;
            engine
                .copy_in(&env, &dir, tar)
                .await
                .with_context(|| format!("failed to copy {} into {env}:{dir}", args.source))?;
        }
        (Some((env, path)), None) => {
            let mut limits = ctx.config().copy.limits();
            if let Some(size) = &args.max_bytes {
                limits.max_bytes =
                    parse_memory_bytes(size).map_err(|e| anyhow!("invalid --max-bytes: {e}"))?;
            }
            limits.max_entries = args.max_entries.unwrap_or(limits.max_entries);
            limits.max_path_bytes = args.max_path_bytes.unwrap_or(limits.max_path_bytes);
            let options = ExtractOptions::default()
                .limits(limits)
                .preserve_mode(args.preserve_mode)
                .allow_control_characters(args.allow_control_characters);
            let stream = engine.copy_out(&env, &path).await?;
            archive::copy_out_to(
                stream,
                Path::new(&args.destination),
                copy::source_name(&path),
                &options,
            )
            .await
            .with_context(|| format!("failed to copy {env}:{path} to {}", args.destination))?;
        }
        (Some(_), Some(_)) => {
            bail!("copying between two environments is not supported: copy out, then in")
        }
        (None, None) => bail!("one of SOURCE and DESTINATION must be ENV:PATH"),
    }
    if ctx.json {
        ctx.print_json(
            &json!({"copied": true, "source": args.source, "destination": args.destination}),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn age(created: Option<u64>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match created {
        None => "?".into(),
        Some(c) => {
            let s = now.saturating_sub(c);
            match s {
                0..=119 => format!("{s}s"),
                120..=7199 => format!("{}m", s / 60),
                7200..=172_799 => format!("{}h", s / 3600),
                _ => format!("{}d", s / 86400),
            }
        }
    }
}

async fn ls(ctx: &Ctx, args: LsArgs) -> anyhow::Result<ExitCode> {
    let selector = match &args.session {
        Some(s) => LabelSelector::session(&session_id(s)?),
        None => LabelSelector::all(),
    };
    let engine = ctx.engine().await?;
    if args.volumes {
        let volumes = engine.list_volumes(&selector).await?;
        if ctx.json {
            ctx.print_json(&serde_json::to_value(&volumes)?);
        } else {
            println!("{:<40} {:<14} {:<7} AGE", "VOLUME", "SESSION", "IN USE");
            for v in &volumes {
                println!(
                    "{:<40} {:<14} {:<7} {}",
                    v.name,
                    v.session.as_ref().map_or("-", |s| s.as_str()),
                    if v.in_use { "yes" } else { "no" },
                    age(v.created_unix_secs),
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let envs = engine.list(&selector).await?;
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&envs)?);
    } else {
        println!(
            "{:<40} {:<14} {:<10} {:<8} {:<6} IMAGE",
            "ID", "SESSION", "NAME", "STATE", "AGE"
        );
        for e in &envs {
            let state = serde_json::to_value(e.state)?;
            println!(
                "{:<40} {:<14} {:<10} {:<8} {:<6} {}",
                e.id,
                e.session.as_ref().map_or("-", |s| s.as_str()),
                e.labels
                    .get(berth_engine_core::LABEL_NAME)
                    .map_or("-", String::as_str),
                state.as_str().unwrap_or("?"),
                age(e.created_unix_secs),
                e.image
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn down(ctx: &Ctx, args: DownArgs) -> anyhow::Result<ExitCode> {
    let named: Vec<EnvironmentId> = args
        .environments
        .iter()
        .map(|e| env_id(e))
        .collect::<anyhow::Result<_>>()?;
    let session = args.session.as_deref().map(session_id).transpose()?;
    if named.is_empty() && session.is_none() {
        bail!("nothing to stop: name environments, or pass --session");
    }
    let engine = ctx.engine().await?;
    let mut targets: Vec<(EnvironmentId, bool)> = named.into_iter().map(|e| (e, true)).collect();
    if let Some(s) = &session {
        let found = engine.list(&LabelSelector::session(s)).await?;
        if found.is_empty() && targets.is_empty() {
            // Nothing to stop is success: the session is as asked, without environments.
            eprintln!("berth: session {s} has no environments; nothing to stop");
        }
        targets.extend(found.into_iter().map(|e| (e.id, false)));
    }
    let state = StateDir::from_env();
    let mut results = Vec::new();
    let mut failed = None;
    for (env, named) in targets {
        match engine.stop(&env).await {
            // An id the user gave that names nothing is a mistake (a typo, another
            // machine's id), not a success.
            Ok(StopOutcome::AlreadyGone) if named => {
                failed = Some(anyhow!("no berth environment {env}: nothing stopped"));
            }
            Ok(outcome) => {
                state.forget(&env);
                results.push((env, outcome));
            }
            Err(e) => failed = Some(anyhow::Error::new(e).context(format!("failed to stop {env}"))),
        }
    }
    if ctx.json {
        let list: Vec<_> = results
            .iter()
            .map(|(id, o)| json!({"id": id, "outcome": o}))
            .collect();
        ctx.print_json(&json!(list));
    } else {
        for (id, outcome) in &results {
            let what = match outcome {
                StopOutcome::Stopped => "stopped",
                StopOutcome::AlreadyGone => "already gone",
            };
            println!("{id}: {what}");
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

async fn gc(ctx: &Ctx, args: GcArgs) -> anyhow::Result<ExitCode> {
    let mut options = GcOptions::default();
    options.dry_run = args.dry_run;
    options.older_than = args
        .older_than
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| anyhow!("invalid --older-than: {e}"))?;
    options.session = args.session.as_deref().map(session_id).transpose()?;
    options.volumes = args.volumes;
    let engine = ctx.engine().await?;
    let report = collect_garbage(engine.as_ref(), &StateDir::from_env(), &options).await?;
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&report)?);
    } else {
        let verb = |removed: bool| match (removed, args.dry_run) {
            (true, _) => "removed",
            (false, true) => "would remove",
            (false, false) => "FAILED to remove",
        };
        for item in &report.garbage {
            println!("{} {}: {}", verb(item.removed), item.id, item.reason);
        }
        for item in &report.volumes {
            println!(
                "{} volume {}: {}",
                verb(item.removed),
                item.name,
                item.reason
            );
        }
        println!(
            "{} garbage, {} kept; volumes: {} garbage, {} kept{}{}",
            report.garbage.len(),
            report.kept,
            report.volumes.len(),
            report.volumes_kept,
            if args.volumes || report.volumes_kept == 0 {
                ""
            } else {
                " (--volumes removes unused ones)"
            },
            if args.dry_run { " (dry run)" } else { "" }
        );
    }
    let all_removed =
        report.garbage.iter().all(|i| i.removed) && report.volumes.iter().all(|i| i.removed);
    Ok(if all_removed || args.dry_run {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A progress spinner on stderr for pulls and builds, drawn from the first event on (so a
/// present image prints nothing); silent with --json or without a terminal.
fn progress_bar(ctx: &Ctx) -> Progress {
    if ctx.json {
        return Progress::none();
    }
    let bar = std::sync::OnceLock::<indicatif::ProgressBar>::new();
    Progress::new(move |e: &ProgressEvent| {
        let bar = bar.get_or_init(indicatif::ProgressBar::new_spinner);
        let counts = match (e.current, e.total) {
            (Some(c), Some(t)) if t > 0 => format!(" {}/{} MiB", c >> 20, t >> 20),
            _ => String::new(),
        };
        let id =
            e.id.as_deref()
                .map(|i| format!("{i}: "))
                .unwrap_or_default();
        bar.set_message(format!("{id}{}{counts}", e.status));
        bar.tick();
    })
}

async fn image_ensure(ctx: &Ctx, args: ImageEnsureArgs) -> anyhow::Result<ExitCode> {
    let image = ImageRef::new(args.image.clone()).context("invalid IMAGE")?;
    let policy = match &args.pull {
        Some(p) => p.parse::<PullPolicy>().context("invalid --pull")?,
        None => ctx.config().runner.pull_policy,
    };
    let engine = ctx.engine().await?;
    let info = engine
        .ensure_image(&image, policy, &progress_bar(ctx))
        .await?;
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&info)?);
    } else {
        println!("{} {}", info.reference, info.id.unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

async fn image_build(ctx: &Ctx, args: ImageBuildArgs) -> anyhow::Result<ExitCode> {
    let tag = ImageRef::new(args.tag.clone()).context("invalid --tag")?;
    let context = archive::pack_dir_contents(&args.context)?;
    let mut build = BuildSpec::new(tag, context).with_dockerfile(args.file.clone());
    for (k, v) in parse_pairs("--build-arg", &args.build_args)? {
        build = build.with_build_arg(k, v);
    }
    build.validate()?;
    let engine = ctx.engine().await?;
    let info = match engine.build_image(build, &progress_bar(ctx)).await {
        Err(e) if e.kind() == ErrorKind::Build => return Err(anyhow::Error::new(e)),
        other => other?,
    };
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&info)?);
    } else {
        println!("{} {}", info.reference, info.id.unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

fn render(ctx: &Ctx, args: RenderArgs) -> anyhow::Result<ExitCode> {
    let objects = match &args.rbac {
        Some(subject) => berth_runner::rbac::objects(ctx.config(), subject),
        None => {
            let spec = environment_spec(ctx, &args.env)?;
            berth_engine_k8s::render(&spec, &backend::kubernetes_config(ctx.config()))?
        }
    };
    if ctx.json {
        ctx.print_json(&serde_json::Value::Array(objects));
        return Ok(ExitCode::SUCCESS);
    }
    for object in &objects {
        let mut text = String::new();
        yaml_rust2::YamlEmitter::new(&mut text)
            .dump(&to_yaml(object))
            .map_err(|e| anyhow!("cannot write YAML: {e:?}"))?;
        println!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

fn to_yaml(value: &serde_json::Value) -> yaml_rust2::Yaml {
    use yaml_rust2::Yaml;
    match value {
        serde_json::Value::Null => Yaml::Null,
        serde_json::Value::Bool(b) => Yaml::Boolean(*b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map_or_else(|| Yaml::Real(n.to_string()), Yaml::Integer),
        serde_json::Value::String(s) => Yaml::String(s.clone()),
        serde_json::Value::Array(items) => Yaml::Array(items.iter().map(to_yaml).collect()),
        serde_json::Value::Object(map) => Yaml::Hash(
            map.iter()
                .map(|(k, v)| (Yaml::String(k.clone()), to_yaml(v)))
                .collect(),
        ),
    }
}
