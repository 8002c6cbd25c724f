//! Connections to ports inside a container without publishing them.
//!
//! Publishing a port (`-p`) is fixed at container creation, so forwarding to a running
//! environment that way would need a restart. Dialling the container's bridge address from
//! here works only where the daemon is local and the container has a network, and never for
//! a remote daemon (`ssh://`, `tcp://`) or a network-less environment. An exec of busybox
//! `nc 127.0.0.1 PORT` inside the container reaches the port in every one of those cases (the
//! container's own loopback always exists), over the connection berth already has to the
//! daemon; see [`berth_engine_core::backend::connect_port_via_exec`].

use berth_engine_core::backend::connect_port_via_exec;
use berth_engine_core::{EnvironmentId, PortStream, Result};

use crate::DockerEngine;

/// One connection to `port` inside `env`, relayed through an exec of `nc`.
pub(crate) async fn connect(
    engine: &DockerEngine,
    env: &EnvironmentId,
    port: u16,
) -> Result<PortStream> {
    connect_port_via_exec(engine, env, port).await
}
