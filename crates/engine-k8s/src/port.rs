//! Connections to ports inside an environment's pod.
//!
//! Relayed through a pods/exec of busybox `nc 127.0.0.1 PORT` in the pod (see
//! [`berth_engine_core::backend::connect_port_via_exec`]), so they need no permission beyond
//! the `pods/exec` berth already holds, and a closed port is refused before any byte is
//! relayed. The pods/portforward subresource would spare the image its `nc`; it is not used
//! yet.

use berth_engine_core::backend::connect_port_via_exec;
use berth_engine_core::{EnvironmentId, PortStream, Result};

use crate::KubernetesEngine;

/// One connection to `port` inside `env`'s pod, relayed through an exec of `nc`.
pub(crate) async fn connect(
    engine: &KubernetesEngine,
    env: &EnvironmentId,
    port: u16,
) -> Result<PortStream> {
    connect_port_via_exec(engine, env, port).await
}
