//! `berth exec`: run a command in a running environment.

use std::process::ExitCode;

use anyhow::Context;
use berth_engine_core::{DetachedCommand, DetachedCommands, ExecRequest, ShellOptions};
use berth_runner::lifecycle;
use serde_json::json;

use super::{env_id, parse_pairs, Ctx};
use crate::args::{CommandArgs, ExecArgs};
use crate::output;

/// The request `args` describe for `command`, validated.
pub fn exec_request(args: &CommandArgs, command: Vec<String>) -> anyhow::Result<ExecRequest> {
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

/// `argv` as one `sh` script that runs exactly it: each word single-quoted, and `exec` so
/// the command is the script's process.
fn script_of(argv: &[String]) -> String {
    let words: Vec<String> = argv
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
        .collect();
    format!("exec {}", words.join(" "))
}

/// `exec --detach`: starts `req` under the supervisor and prints its id.
async fn detach(ctx: &Ctx, commands: &DetachedCommands, req: ExecRequest) -> anyhow::Result<()> {
    let mut options = ShellOptions::default();
    options.env = req.env;
    options.workdir = req.workdir;
    options.user = req.user;
    let id = commands
        .start(DetachedCommand::new(script_of(&req.argv)).with_options(options))
        .await
        .context("cannot start the detached command")?;
    if ctx.json {
        ctx.print_json(&json!({ "id": id.as_str() }));
    } else {
        println!("{id}");
    }
    Ok(())
}

pub async fn exec(ctx: &Ctx, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let env = env_id(&args.environment)?;
    let req = exec_request(&args.cmd, args.command.clone())?;
    let engine = ctx.engine().await?;
    if args.detach {
        detach(ctx, &DetachedCommands::new(engine, env), req).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let code = output::exec_in(
        ctx.json,
        engine.as_ref(),
        &env,
        req.clone(),
        args.cmd.interactive,
    )
    .await?;
    // Only a failed exec pays for the question (the runtime's text is already out by then).
    if code == ExitCode::from(126) {
        if let Some(missing) = lifecycle::command_missing(engine.as_ref(), &env, &req).await {
            return Err(missing.into());
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::script_of;

    #[test]
    fn a_detached_argv_is_quoted_word_for_word() {
        let argv = ["printf", "%s|", "it's", "$HOME", "a b", ""].map(String::from);
        assert_eq!(
            script_of(&argv),
            r"exec 'printf' '%s|' 'it'\''s' '$HOME' 'a b' ''"
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script_of(&argv)])
            .output()
            .expect("sh");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's|$HOME|a b||");
    }
}
