//! `berth shell`: an interactive TTY in an environment, or in a fresh one.

use std::process::ExitCode;

use anyhow::{bail, Context};
use berth_engine_core::{ContainerEngine, EnvironmentId, ExecRequest, Stdin};
use berth_runner::session::Session;
use berth_runner::{lifecycle, spec};

use super::{env_id, env_options, exit_code, Ctx};
use crate::args::{EnvArgs, ShellArgs};
use crate::progress::{self, Mode};
use crate::{output, terminal};

pub async fn shell(ctx: &Ctx, args: ShellArgs) -> anyhow::Result<ExitCode> {
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
    if let Some(env) = &args.environment {
        return interactive_tty(engine.as_ref(), &env_id(env)?, req).await;
    }
    let env_args = EnvArgs {
        image: args.image.clone(),
        session: None,
        name: "shell".into(),
        pool: None,
    };
    let spec = spec::environment_spec(ctx.config(), &env_options(&env_args)?)?;
    let session = Session::new(engine.clone(), spec);
    let (progress, spinner) = progress::start(Mode::for_start(ctx.json, true));
    let body = async {
        let env = lifecycle::start(
            &session,
            "shell",
            ctx.config().runner.pull_policy,
            &progress,
        )
        .await
        .context("failed to start an environment for the shell")?;
        drop(spinner);
        interactive_tty(engine.as_ref(), &env, req).await
    };
    let (outcome, stopped) = output::in_session(&session, body).await;
    let code = outcome?;
    stopped?;
    Ok(code)
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
    output::forward_stdin(&mut process);
    let mut winch =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
    let forward = output::forward_output(
        process
            .take_output()
            .context("the shell's output was already taken")?,
    );
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
