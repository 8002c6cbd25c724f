//! berth's library: everything a front end (the `berth` CLI, an embedding agent runner, a
//! server) needs, and nothing that prints.
//!
//! - [`config`]: the layered configuration; [`backend`]: the factory from config to an
//!   engine, with what only some backends can do (doctor's checks, rendering);
//! - [`spec`]: environment specs from config; [`image`]: the image made present before a
//!   start; [`lifecycle`]: start with progress, `up`, `down`;
//! - [`session`]: many named environments, stopped together;
//! - [`gc`]: garbage collection as a pure plan and its execution; [`owner`], [`state`];
//! - [`doctor`]: typed checks; [`rbac`] and [`render`]: what berth needs and makes on
//!   Kubernetes;
//! - [`archive`] and [`copy`]: file transfer, treating what an environment sends as
//!   untrusted; [`error`]: the runner's own error type;
//! - [`runs`]: batch runs submitted, followed and waited for;
//! - [`source`]: a job's repository checked out (shallow, by gix) and its encrypted token
//!   decrypted.
//!
//! An embedder starting a session, running a command, copying a file in and out, and
//! collecting garbage:
//!
//! ```no_run
//! use std::path::Path;
//!
//! use berth_engine_core::ExecRequest;
//! use berth_runner::config::{BerthConfig, LoadOptions};
//! use berth_runner::copy::ExtractOptions;
//! use berth_runner::gc::{collect_garbage, GcOptions};
//! use berth_runner::lifecycle::{self, StartProgress};
//! use berth_runner::session::Session;
//! use berth_runner::spec::{self, EnvOptions};
//! use berth_runner::state::StateDir;
//! use berth_runner::{archive, backend, copy};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let config = BerthConfig::load(&LoadOptions::default())?.config;
//!     let engine = backend::connect(&config).await?;
//!
//!     // A session of one environment, made as the config says; progress as it starts.
//!     let spec = spec::environment_spec(&config, &EnvOptions::named("agent"))?;
//!     let session = Session::new(engine.clone(), spec);
//!     let progress = StartProgress::new(|phase| eprintln!("{phase}"));
//!     let env = lifecycle::start(&session, "agent", config.runner.pull_policy, &progress).await?;
//!
//!     // A file in, a command, a file out.
//!     engine.copy_in(&env, "/tmp", archive::pack_path(Path::new("notes.txt"))?).await?;
//!     let out = session.exec("agent", ExecRequest::shell("wc -l /tmp/notes.txt")).await?;
//!     println!("exit {}: {}", out.status.code(), out.stdout_lossy());
//!     let tar = engine.copy_out(&env, "/tmp/notes.txt").await?;
//!     archive::copy_out_to(tar, Path::new("out"), copy::source_name("/tmp/notes.txt"),
//!         &ExtractOptions::default()).await?;
//!
//!     // Stop it, then remove whatever an earlier, crashed run left behind.
//!     session.shutdown().await?;
//!     let report = collect_garbage(engine.as_ref(), &StateDir::from_env(), &GcOptions::default())
//!         .await?;
//!     println!("{} removed, {} kept", report.garbage.len(), report.kept);
//!     Ok(())
//! }
//! ```

pub mod archive;
pub mod backend;
pub mod build_context;
pub mod builders;
pub mod config;
pub mod copy;
pub mod doctor;
pub mod error;
pub mod gc;
pub mod image;
pub mod lifecycle;
pub mod owner;
pub mod pool;
pub mod rbac;
pub mod render;
pub mod runs;
pub mod session;
pub mod source;
pub mod spec;
pub mod state;

pub use error::{Result, RunnerError};
