//! Running commands in an environment: what to run ([`request`]), what it produced
//! ([`output`]), and the running command ([`process`]). What only backends use to build an
//! [`ExecProcess`] lives in [`crate::backend`].

mod output;
mod process;
mod request;

pub(crate) use output::{lock, CappedBuffer};
pub use output::{ExecOutcome, ExecOutput, ExitStatus, OomKill, OutputChunk, OutputStream};
pub use process::{ExecProcess, ExecStdin};
pub use request::{ExecRequest, Stdin, TtySize, DEFAULT_OUTPUT_LIMIT};
