//! `berth render`: the Kubernetes objects a session would create, the Role berth needs, the
//! manifests that deploy `berth serve`, or a command's run as a Job, CronJob, Argo Workflow
//! or CronWorkflow (`--kind`).

use std::process::ExitCode;

use berth_runner::{backend, rbac, render, spec};

use berth_runner::render::kinds::{Kind, RunManifest};

use super::{env_options, parse_pairs, Ctx};
use crate::args::RenderArgs;

pub fn render(ctx: &Ctx, args: RenderArgs) -> anyhow::Result<ExitCode> {
    let objects = if args.server {
        render::server_objects(ctx.config())?
    } else if let Some(subject) = &args.rbac {
        rbac::objects_with(ctx.config(), subject, args.engine)
    } else if let Some(kind) = &args.kind {
        let kind: Kind = kind.parse()?;
        let spec = render::kinds::run_spec(
            ctx.config(),
            &env_options(&args.env)?,
            parse_pairs("--env", &args.run_env)?,
            args.workdir.clone(),
        )?;
        let mut run = RunManifest::new(kind, args.command);
        run.schedule = args.schedule;
        run.timezone = args.timezone;
        run.source = args
            .git
            .map(|url| berth_runner::runs::git(url, args.branch));
        render::kinds::objects(ctx.config(), &spec, &run)?
    } else {
        let spec = spec::environment_spec(ctx.config(), &env_options(&args.env)?)?;
        backend::render(ctx.config(), &spec)?
    };
    if ctx.json {
        ctx.print_json(&serde_json::Value::Array(objects));
    } else {
        print!("{}", render::yaml(&objects)?);
    }
    Ok(ExitCode::SUCCESS)
}
