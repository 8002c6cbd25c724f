//! One file per subcommand: each parses its flags into library values, calls the library,
//! and prints. [`dispatch`] loads the config and picks the file.

mod attach;
mod builder;
mod cp;
mod doctor;
mod down;
mod exec;
mod gc;
mod image;
mod kill;
mod logs;
mod ls;
mod network;
mod pool;
mod port_forward;
mod ps;
mod render;
mod run;
mod serve;
mod shell;
mod status;
mod submit;
mod up;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use berth_engine_core::{
    CommandId, ContainerEngine, DetachedCommands, EnvironmentId, ImageRef, SessionId,
};
use berth_runner::config::{BerthConfig, LoadOptions, Loaded};
use berth_runner::spec::EnvOptions;

use crate::args::{BuilderCommand, Cli, Command, DetachedArgs, EnvArgs, ImageCommand, PoolCommand};

/// What every command sees: the loaded config and the global flags.
pub struct Ctx {
    /// The config and where it came from.
    pub loaded: Loaded,
    /// `--json`.
    pub json: bool,
}

impl Ctx {
    /// The config.
    pub fn config(&self) -> &BerthConfig {
        &self.loaded.config
    }

    /// The configured engine.
    pub async fn engine(&self) -> anyhow::Result<Arc<dyn ContainerEngine>> {
        let config = self.config();
        berth_runner::backend::connect(config)
            .await
            .with_context(|| format!("cannot use the {} backend", config.runner.backend))
    }

    /// Prints one JSON value on stdout.
    pub fn print_json(&self, value: &serde_json::Value) {
        println!("{value}");
    }
}

/// Loads the config (flags over environment over file) and runs the command.
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut options = LoadOptions::default();
    options.path = cli.config.clone();
    if let Some(b) = cli.backend {
        options
            .overrides
            .push(("runner.backend".to_owned(), b.as_str().to_owned()));
    }
    if let Some(h) = &cli.docker_host {
        options
            .overrides
            .push(("docker.host".to_owned(), h.clone()));
    }
    if let Some(c) = &cli.docker_context {
        options
            .overrides
            .push(("docker.context".to_owned(), c.clone()));
    }
    let loaded = BerthConfig::load(&options)?;
    let ctx = Ctx {
        loaded,
        json: cli.json,
    };
    match cli.command {
        Command::Doctor(a) => doctor::doctor(&ctx, a).await,
        Command::Up(a) => up::up(&ctx, a).await,
        Command::Exec(a) => exec::exec(&ctx, a).await,
        Command::Attach(a) => attach::attach(&ctx, a).await,
        Command::Ps(a) => ps::ps(&ctx, a).await,
        Command::Kill(a) => kill::kill(&ctx, a).await,
        Command::Run(a) => run::run(&ctx, a).await,
        Command::Shell(a) => shell::shell(&ctx, a).await,
        Command::Cp(a) => cp::cp(&ctx, a).await,
        Command::Ls(a) => ls::ls(&ctx, a).await,
        Command::Down(a) => down::down(&ctx, a).await,
        Command::Submit(a) => submit::submit(&ctx, a).await,
        Command::Logs(a) => logs::logs(&ctx, a).await,
        Command::Status(a) => status::status(&ctx, a).await,
        Command::Gc(a) => gc::gc(&ctx, a).await,
        Command::Image(ImageCommand::Ensure(a)) => image::ensure(&ctx, a).await,
        Command::Image(ImageCommand::Build(a)) => image::build(&ctx, a).await,
        Command::Builder(BuilderCommand::Ls(_)) => builder::ls(&ctx).await,
        Command::Render(a) => render::render(&ctx, a),
        Command::Serve(a) => serve::serve(&ctx, a).await,
        Command::PortForward(a) => port_forward::port_forward(&ctx, a).await,
        Command::Network(a) => network::network(&ctx, a).await,
        Command::Pool(PoolCommand::Fill(a)) => pool::fill(&ctx, a).await,
        Command::Pool(PoolCommand::Ls(_)) => pool::ls(&ctx).await,
        Command::Pool(PoolCommand::Drain(a)) => pool::drain(&ctx, a).await,
    }
}

/// An environment id argument.
pub fn env_id(text: &str) -> anyhow::Result<EnvironmentId> {
    EnvironmentId::new(text).context("invalid environment id")
}

/// The detached commands of an environment argument, resolved as `berth exec` resolves it.
pub async fn detached_commands(ctx: &Ctx, environment: &str) -> anyhow::Result<DetachedCommands> {
    let env = env_id(environment)?;
    Ok(DetachedCommands::new(ctx.engine().await?, env))
}

/// The environment's detached commands and the command an `ENV ID` pair names; the id is
/// checked before any I/O.
pub async fn detached_command(
    ctx: &Ctx,
    args: &DetachedArgs,
) -> anyhow::Result<(DetachedCommands, CommandId)> {
    let id: CommandId = args
        .id
        .parse()
        .with_context(|| format!("invalid ID argument {:?}", args.id))?;
    Ok((detached_commands(ctx, &args.environment).await?, id))
}

/// A run name argument.
pub fn run_id(text: &str) -> anyhow::Result<berth_engine_core::RunId> {
    berth_engine_core::RunId::new(text).context("invalid run name")
}

/// Prints a run's output as it comes: each stream to its own where the engine keeps them
/// apart (Docker), else to stdout.
pub fn print_log_line(line: &berth_engine_core::LogLine) {
    use std::io::Write;
    let written = match line.source {
        berth_engine_core::LogSource::Stderr => std::io::stderr().write_all(&line.data),
        _ => {
            let mut out = std::io::stdout().lock();
            out.write_all(&line.data).and_then(|()| out.flush())
        }
    };
    // A closed pipe (`berth logs | head`) ends nothing but the printing.
    let _ = written;
}

/// A `--session` argument.
pub fn session_id(text: &str) -> anyhow::Result<SessionId> {
    SessionId::new(text).context("invalid --session")
}

/// `--image`, `--session` and `--name` as the library's options.
pub fn env_options(args: &EnvArgs) -> anyhow::Result<EnvOptions> {
    let image = args
        .image
        .clone()
        .map(ImageRef::new)
        .transpose()
        .context("invalid --image")?;
    let session = args.session.as_deref().map(session_id).transpose()?;
    Ok(EnvOptions::named(args.name.clone())
        .with_image(image)
        .with_session(session))
}

/// `KEY=VALUE` flags as pairs.
pub fn parse_pairs(flag: &str, pairs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow::anyhow!("invalid {flag} {p:?}: expected KEY=VALUE"))
        })
        .collect()
}

/// A process exit code from a command's.
pub fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(255))
}
