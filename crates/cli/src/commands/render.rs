//! `berth render`: the Kubernetes objects a session would create, the Role berth needs, or
//! the manifests that deploy `berth serve`.

use std::process::ExitCode;

use berth_runner::{backend, rbac, render, spec};

use super::{env_options, Ctx};
use crate::args::RenderArgs;

pub fn render(ctx: &Ctx, args: RenderArgs) -> anyhow::Result<ExitCode> {
    let objects = if args.server {
        render::server_objects(ctx.config())?
    } else if let Some(subject) = &args.rbac {
        rbac::objects(ctx.config(), subject)
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
