//! The `berth` binary: parses the command line, calls the `berth-runner` library, prints.
//! Nothing else in berth prints.

mod args;
mod commands;
mod output;
mod progress;
mod terminal;

use std::process::ExitCode;
use std::time::Duration;

use berth_engine_core::ErrorKind;
use berth_runner::RunnerError;
use clap::Parser;

use crate::args::Cli;

/// Exit code for berth's own failures, as docker uses.
pub(crate) const EXIT_BERTH_FAILED: u8 = 125;
/// Exit code when the command does not exist, as a shell and `docker run` use.
pub(crate) const EXIT_NOT_FOUND: u8 = 127;
/// Exit code when the command's timeout killed it, as timeout(1) uses.
pub(crate) const EXIT_TIMED_OUT: u8 = 124;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_BERTH_FAILED);
        }
    };
    let result = runtime.block_on(commands::dispatch(cli));
    // A blocked read of our stdin must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: {e:#}");
            if let Some(hint) = config_hint(&e) {
                eprintln!("berth: {hint}");
            }
            ExitCode::from(failure_code(&e))
        }
    }
}

/// The config key that would avoid a failure, where the engine's error points at one: the
/// engines say what to change in their own terms, the config's names are the CLI's.
fn config_hint(e: &anyhow::Error) -> Option<&'static str> {
    let refused_by_pod_security = e
        .chain()
        .filter_map(|c| c.downcast_ref::<berth_engine_core::Error>())
        .chain(
            e.chain()
                .filter_map(|c| c.downcast_ref::<RunnerError>())
                .filter_map(|r| match r {
                    RunnerError::Engine(inner) => Some(inner),
                    _ => None,
                }),
        )
        .any(|err| {
            err.kind() == berth_engine_core::ErrorKind::Forbidden
                && err.to_string().contains("violates PodSecurity")
        });
    refused_by_pod_security.then_some(
        "set `kubernetes.security: restricted` in the config: that profile passes every Pod Security level",
    )
}

/// The exit code of a failure: 128 + the signal for an interrupted `run`/`shell`, 127 for a
/// command not found, 124 for a timeout, else berth's own 125.
fn failure_code(e: &anyhow::Error) -> u8 {
    if let Some(interrupted) = e.downcast_ref::<output::Interrupted>() {
        return interrupted.exit_code();
    }
    let runner = e.chain().filter_map(|c| c.downcast_ref::<RunnerError>());
    let mut kinds = e
        .chain()
        .filter_map(|c| c.downcast_ref::<berth_engine_core::Error>())
        .map(berth_engine_core::Error::kind)
        .chain(runner.clone().filter_map(RunnerError::engine_kind));
    if runner
        .clone()
        .any(|r| matches!(r, RunnerError::CommandNotFound { .. }))
    {
        EXIT_NOT_FOUND
    } else if kinds.any(|k| k == ErrorKind::Timeout) {
        EXIT_TIMED_OUT
    } else {
        EXIT_BERTH_FAILED
    }
}

/// Help and version go to stdout with exit 0; every other parse failure is berth's usage
/// error, exit 125 like docker's (clap's own 2 would look like the command's exit code).
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind as Kind;
    // Printing can only fail on a closed stream, when there is no one left to tell.
    let _ = e.print();
    if matches!(e.kind(), Kind::DisplayHelp | Kind::DisplayVersion) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_BERTH_FAILED)
    }
}

/// The log filter for `-v` given `verbose` times, when `RUST_LOG` does not say. Without `-v`
/// only berth's own warnings show: a dependency (kube's client, hyper, bollard) logs nothing,
/// since berth reports each failure itself, once, in its own words.
fn default_log_filter(verbose: u8) -> &'static str {
    match verbose {
        0 => "off,berth=warn,berth_cli=warn,berth_runner=warn,berth_engine_core=warn,berth_engine_docker=warn,berth_engine_k8s=warn",
        1 => "info,berth=debug,berth_cli=debug,berth_runner=debug,berth_engine_docker=debug,berth_engine_core=debug,berth_engine_k8s=debug",
        _ => "trace",
    }
}

fn init_tracing(verbose: u8) {
    let default = default_log_filter(verbose);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use super::default_log_filter;

    #[test]
    fn only_berth_warns_by_default() {
        let quiet = default_log_filter(0);
        assert!(quiet.starts_with("off,"), "{quiet}");
        for krate in ["berth_runner", "berth_engine_k8s", "berth_engine_docker"] {
            assert!(quiet.contains(&format!("{krate}=warn")), "{quiet}");
        }
        for filter in [quiet, default_log_filter(1), default_log_filter(2)] {
            assert!(
                tracing_subscriber::EnvFilter::try_new(filter).is_ok(),
                "{filter}"
            );
        }
        assert!(default_log_filter(1).starts_with("info,"));
        assert!(default_log_filter(1).contains("berth_engine_k8s=debug"));
    }
}
