//! Connections to ports inside an environment's pod.
//!
//! Relayed through a pods/exec of busybox `nc 127.0.0.1 PORT` in the pod (see
//! [`berth_engine_core::backend::connect_port_via_exec`]): it needs no permission beyond the
//! `pods/exec` berth already holds, a closed port is refused before any byte is relayed, and a
//! client's half-close reaches the server as end of file (exec's v5 protocol closes stdin).
//! The `pods/portforward` subresource over websocket (kube's `Api::portforward`) cannot do
//! the last: its protocol has no half-close, so kube ends the whole stream, answer included,
//! when the client finishes sending; and `kubectl port-forward` speaks SPDY (tunnelled in a
//! websocket since 1.31), which berth would have to carry too. It would spare the image its
//! `nc`; that is the price of this choice.

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
