//! One async function per behaviour every backend must show. Each panics (with a message
//! saying what differed) when the behaviour is broken, and stops what it started either way.
//!
//! The cases live in one file per area (`cases_exec`, `cases_copy`, `cases_workspace`,
//! `cases_lifecycle`, ...) and are all re-exported here, where
//! [`conformance_suite!`](crate::conformance_suite) finds them. Its list is checked against
//! the files by a unit test: a case missing from it fails the build's tests.

use bytes::Bytes;

pub use super::cases_detached_cmd::*;
use super::Fixture;
use crate::{EnvironmentId, ExecRequest};

pub use super::cases_copy::*;
pub use super::cases_detached::*;
pub use super::cases_exec::*;
pub use super::cases_foreign::*;
pub use super::cases_kill::*;
pub use super::cases_lifecycle::*;
pub use super::cases_once::*;
pub use super::cases_outcomes::*;
pub use super::cases_pools::*;
pub use super::cases_ports::*;
pub use super::cases_runs::*;
pub use super::cases_shell::*;
pub use super::cases_workspace::*;
pub use super::cases_zombies::no_zombie_is_left_behind;

pub(super) const MIB: usize = 1024 * 1024;

pub(super) async fn run(fx: &Fixture, env: &EnvironmentId, req: ExecRequest) -> crate::ExecOutput {
    let what = format!("{:?}", req.argv);
    fx.engine
        .exec(env, req)
        .await
        .unwrap_or_else(|e| panic!("exec {what} failed: {e} ({e:?})"))
}

pub(super) fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
        .collect()
}

pub(super) async fn process_lines(fx: &Fixture, env: &EnvironmentId) -> Vec<String> {
    let out = run(
        fx,
        env,
        ExecRequest::shell(
            "for f in /proc/[0-9]*/cmdline; do tr '\\000' ' ' < $f 2>/dev/null; echo; done",
        ),
    )
    .await;
    out.stdout_lossy().lines().map(str::to_owned).collect()
}
