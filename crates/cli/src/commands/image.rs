//! `berth image ensure` and `berth image build`.

use std::process::ExitCode;

use anyhow::Context;
use berth_engine_core::{BuildSpec, ImageInfo, ImageRef, PullPolicy};
use berth_runner::{build_context, builders};

use super::{parse_pairs, Ctx};
use crate::args::{ImageBuildArgs, ImageEnsureArgs};
use crate::progress;

fn print_info(ctx: &Ctx, info: ImageInfo) -> anyhow::Result<ExitCode> {
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&info)?);
    } else {
        println!("{} {}", info.reference, info.id.unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn ensure(ctx: &Ctx, args: ImageEnsureArgs) -> anyhow::Result<ExitCode> {
    let image = ImageRef::new(args.image.clone()).context("invalid IMAGE")?;
    let policy = match &args.pull {
        Some(p) => p.parse::<PullPolicy>().context("invalid --pull")?,
        None => ctx.config().runner.pull_policy,
    };
    let engine = ctx.engine().await?;
    let info = engine
        .ensure_image(&image, policy, &progress::pulls(ctx.json))
        .await?;
    print_info(ctx, info)
}

pub async fn build(ctx: &Ctx, args: ImageBuildArgs) -> anyhow::Result<ExitCode> {
    let tag = ImageRef::new(args.tag.clone()).context("invalid --tag")?;
    let context = build_context::pack(&args.context, &args.file)?;
    let mut build = BuildSpec::new(tag, context).with_dockerfile(args.file.clone());
    for (k, v) in parse_pairs("--build-arg", &args.build_args)? {
        build = build.with_build_arg(k, v);
    }
    build.validate()?;
    if let Some(builder) = &args.builder {
        let info = builders::build(
            ctx.config(),
            builder,
            build,
            args.push,
            &progress::pulls(ctx.json),
        )
        .await?;
        return print_info(ctx, info);
    }
    let engine = ctx.engine().await?;
    let info = engine
        .build_image(build, &progress::pulls(ctx.json))
        .await?;
    print_info(ctx, info)
}
