//! `berth render`: the Kubernetes objects a session would create, or the Role berth needs.

use std::process::ExitCode;

use berth_runner::{backend, rbac, spec};

use super::{env_options, Ctx};
use crate::args::RenderArgs;

pub fn render(ctx: &Ctx, args: RenderArgs) -> anyhow::Result<ExitCode> {
    let objects = match &args.rbac {
        Some(subject) => rbac::objects(ctx.config(), subject),
        None => {
            let spec = spec::environment_spec(ctx.config(), &env_options(&args.env)?)?;
            backend::render(ctx.config(), &spec)?
        }
    };
    if ctx.json {
        ctx.print_json(&serde_json::Value::Array(objects));
    } else {
        print!("{}", berth_runner::render::yaml(&objects)?);
    }
    Ok(ExitCode::SUCCESS)
}
