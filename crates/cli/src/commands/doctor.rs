//! `berth doctor`: print the library's checks.

use std::process::ExitCode;

use super::Ctx;
use crate::args::DoctorArgs;

pub async fn doctor(ctx: &Ctx, args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let checks = berth_runner::doctor::run(&ctx.loaded, args.image.as_deref()).await;
    let ok = berth_runner::doctor::all_ok(&checks);
    if ctx.json {
        ctx.print_json(&serde_json::json!({"ok": ok, "checks": checks}));
    } else {
        for c in &checks {
            let status = if c.ok { "ok  " } else { "FAIL" };
            let fix = c
                .fix
                .as_deref()
                .map(|f| format!("; {f}"))
                .unwrap_or_default();
            println!("{status} {}: {}{fix}", c.name, c.detail);
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
