//! One-shot runs: an environment made for one command that nothing else will exec into
//! ([`ContainerEngine::run_once`]), and the "command not found" probe its general path uses.

use crate::{
    ContainerEngine, EnvironmentId, EnvironmentSpec, Error, ExecProcess, ExecRequest, Result, Stdin,
};

/// What [`ContainerEngine::run_once`] names the object of a program that is not there.
pub const WHAT_COMMAND: &str = "command";

/// The error of a program `name` that cannot be found in the environment:
/// [`Error::NotFound`] of [`WHAT_COMMAND`].
#[must_use]
pub fn command_not_found(name: impl Into<String>) -> Error {
    Error::NotFound {
        what: WHAT_COMMAND,
        name: name.into(),
    }
}

/// The program `e` says could not be found, when it is [`command_not_found`]'s error.
#[must_use]
pub fn missing_command(e: &Error) -> Option<&str> {
    match e {
        Error::NotFound { what, name } if *what == WHAT_COMMAND => Some(name),
        _ => None,
    }
}

/// Whether `req`'s program, a bare name, is missing from the environment's PATH for a command
/// run as `req` says (its user, workdir and variables): [`command_not_found`] if so. Asks the
/// image's `sh`; without one (or on any failure to ask) the answer is "not known to be
/// missing", and the runtime speaks.
pub async fn probe_command_missing<E: ContainerEngine + ?Sized>(
    engine: &E,
    env: &EnvironmentId,
    req: &ExecRequest,
) -> Option<Error> {
    let name = req.argv.first()?;
    if name.contains('/') {
        return None;
    }
    // Exit 3 means "not found", unlike 126/127 from an image without sh.
    let script = "command -v -- \"$1\" >/dev/null 2>&1 && exit 0; exit 3";
    let mut probe = req.clone();
    probe.argv = ["sh", "-c", script, "sh", name].map(str::to_owned).to_vec();
    probe.stdin = Stdin::Null;
    probe.tty = None;
    probe.timeout = None;
    let out = engine.exec(env, probe).await.ok()?;
    (out.status.code() == 3).then(|| command_not_found(name.clone()))
}

/// The general one-shot path every backend has: start an environment of `spec`, ask whether
/// the program is there ([`probe_command_missing`]), then exec `req` in it. What was started
/// is stopped again when anything after the start fails.
///
/// # Errors
/// As [`ContainerEngine::start`] and [`ContainerEngine::exec_streaming`];
/// [`command_not_found`] for a bare program name missing from the environment's PATH.
pub async fn start_then_exec<E: ContainerEngine + ?Sized>(
    engine: &E,
    spec: &EnvironmentSpec,
    req: ExecRequest,
) -> Result<(EnvironmentId, ExecProcess)> {
    req.validate()?;
    let env = engine.start(spec).await?;
    exec_in_started(engine, env, req).await
}

/// The second half of [`start_then_exec`], for an environment that was just started (or
/// claimed from a pool) for this one command: the missing-program probe, then the exec; on
/// any failure the environment is stopped, since nothing else will use it.
///
/// # Errors
/// [`command_not_found`] when the program is not there; the exec's errors, with a failed
/// clean-up attached.
pub async fn exec_in_started<E: ContainerEngine + ?Sized>(
    engine: &E,
    env: EnvironmentId,
    req: ExecRequest,
) -> Result<(EnvironmentId, ExecProcess)> {
    let started = async {
        if let Some(missing) = probe_command_missing(engine, &env, &req).await {
            return Err(missing);
        }
        engine.exec_streaming(&env, req).await
    }
    .await;
    match started {
        Ok(process) => Ok((env, process)),
        Err(e) => match engine.stop(&env).await {
            Ok(_) => Err(e),
            Err(cleanup) => Err(e.with_cleanup_failure(cleanup)),
        },
    }
}
