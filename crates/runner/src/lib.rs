//! berth's session runner: configuration ([`config`]), backend selection ([`backend`]),
//! multi-environment sessions ([`session`]), garbage collection ([`gc`]) and file transfer
//! ([`archive`], with [`copy`] treating what an environment sends as untrusted) — the library
//! behind the `berth` CLI.
//!
//! ```no_run
//! use berth_runner::{backend, config::BerthConfig};
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     let loaded = BerthConfig::load(&Default::default())?;
//!     let engine = backend::connect(&loaded.config).await?;
//!     println!("{:?}", engine.init().await?);
//!     Ok(())
//! }
//! ```

pub mod archive;
pub mod backend;
pub mod config;
pub mod copy;
pub mod doctor;
pub mod gc;
pub mod owner;
pub mod rbac;
pub mod session;
pub mod state;
