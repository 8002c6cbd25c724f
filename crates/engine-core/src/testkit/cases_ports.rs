//! Conformance cases: connections to ports inside an environment
//! ([`ContainerEngine::connect_port`](crate::ContainerEngine::connect_port)) and
//! [`PortForward`] over them: a real HTTP server answers through the forward, a closed port is
//! a clear error while the forward serves on, concurrent clients each get their own bytes, and
//! binary data crosses exactly both ways.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::cases::{pattern, run, MIB};
use super::Fixture;
use crate::{EnvironmentId, ErrorKind, ExecRequest, PortForward};

/// The loopback address with a free port, for a forward's local side.
fn any_local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn forward(fx: &Fixture, env: &EnvironmentId, port: u16) -> PortForward {
    PortForward::start(fx.engine.clone(), env.clone(), any_local(), port)
        .await
        .unwrap_or_else(|e| panic!("starting a forward to port {port} failed: {e} ({e:?})"))
}

/// Starts busybox `nc` as a persistent server on `port` running `prog` for each connection,
/// in the background, and waits until the port listens.
async fn serve(fx: &Fixture, env: &EnvironmentId, port: u16, prog: &str) {
    run(
        fx,
        env,
        ExecRequest::shell(format!(
            "nc -ll -p {port} -e {prog} </dev/null >/dev/null 2>&1 &"
        )),
    )
    .await;
    wait_listening(fx, env, port).await;
}

/// Waits (up to 10 s) until a connection to `port` inside succeeds.
async fn wait_listening(fx: &Fixture, env: &EnvironmentId, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match fx.engine.connect_port(env, port).await {
            Ok(mut stream) => {
                let _ = stream.shutdown().await;
                return;
            }
            Err(e) if e.kind() == ErrorKind::PortClosed && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("port {port} never listened: {e} ({e:?})"),
        }
    }
}

/// Sends `data`, closes the write side (half-close), and reads everything back, writing and
/// reading at once so that an echo cannot deadlock on full buffers.
async fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to the forward at {addr} failed: {e}"));
    let (mut read, mut write) = stream.into_split();
    let sending = async {
        write.write_all(data).await.expect("write to the forward");
        write.shutdown().await.expect("half-close the forward");
    };
    let receiving = async {
        let mut got = Vec::new();
        read.read_to_end(&mut got)
            .await
            .expect("read from the forward");
        got
    };
    let ((), got) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(sending, receiving)
    })
    .await
    .expect("the exchange through the forward took over 120 s");
    got
}

/// busybox `httpd` started inside the environment answers a GET through a [`PortForward`],
/// twice (one forward, one connection inside per client); `connect_port` alone, with a
/// half-closed request, gets the same answer.
pub async fn port_forward_reaches_an_http_server_inside(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        run(
            fx,
            &env,
            ExecRequest::shell(
                "mkdir -p /tmp/www && printf 'hello through the forward\\n' > /tmp/www/index.html \
                 && httpd -p 8080 -h /tmp/www",
            ),
        )
        .await;
        wait_listening(fx, &env, 8080).await;
        let fwd = forward(fx, &env, 8080).await;
        assert_eq!(fwd.remote_port(), 8080);
        assert!(fwd.local_addr().ip().is_loopback());
        assert_ne!(fwd.local_addr().port(), 0, "port 0 must pick a free port");
        for _ in 0..2 {
            let answer = exchange(fwd.local_addr(), b"GET /index.html HTTP/1.0\r\n\r\n").await;
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.starts_with("HTTP/1."), "{answer}");
            assert!(answer.contains(" 200 OK\r\n"), "{answer}");
            assert!(answer.ends_with("hello through the forward\n"), "{answer}");
        }

        let mut direct = fx
            .engine
            .connect_port(&env, 8080)
            .await
            .unwrap_or_else(|e| panic!("connect_port failed: {e} ({e:?})"));
        direct
            .write_all(b"GET /missing HTTP/1.0\r\n\r\n")
            .await
            .expect("write");
        direct.shutdown().await.expect("half-close");
        let mut answer = Vec::new();
        direct.read_to_end(&mut answer).await.expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1."), "{answer}");
        assert!(answer.contains(" 404 "), "{answer}");

        // A dropped forward stops listening and closes the clients it serves.
        let addr = fwd.local_addr();
        let mut open_client = TcpStream::connect(addr).await.expect("connect");
        open_client
            .write_all(b"GET /index.html HTTP/1.0\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(fwd);
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(10), open_client.read_to_end(&mut rest))
                .await
                .is_ok();
        assert!(closed, "a client of a dropped forward was left open");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the forward at {addr} still accepts after it was dropped"
        );
    })
    .await;
}

/// A connection to a port nothing listens on is [`ErrorKind::PortClosed`] naming the port, at
/// once (port 0 is refused as invalid before any I/O); through a forward the client is closed without a byte, the forward reports the same
/// error, and serves the next client once a server listens.
pub async fn port_forward_to_a_closed_port_is_a_clear_error(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let started = Instant::now();
        let err = match fx.engine.connect_port(&env, 7071).await {
            Ok(_) => panic!("a connection to a closed port succeeded"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), ErrorKind::PortClosed, "{err} ({err:?})");
        assert!(err.to_string().contains("port 7071"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );

        match fx.engine.connect_port(&env, 0).await {
            Ok(_) => panic!("a connection to port 0 succeeded"),
            Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidSpec, "{e}"),
        }
        let zero = PortForward::start(fx.engine.clone(), env.clone(), any_local(), 0).await;
        let err = zero.expect_err("a forward to port 0 started");
        assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{err}");
        assert!(err.to_string().contains("remote_port"), "{err}");

        let mut fwd = forward(fx, &env, 7071).await;
        let mut client = TcpStream::connect(fwd.local_addr()).await.expect("connect");
        let _ = client.write_all(b"anyone?").await;
        let mut got = Vec::new();
        // Closed without a byte: an end of file, or a reset (the client's bytes were unread).
        match tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut got)).await {
            Ok(Ok(_)) => assert!(got.is_empty(), "a closed port answered {got:?}"),
            Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            Err(_) => panic!("the client of a closed port hung for 30 s"),
        }
        let err = tokio::time::timeout(Duration::from_secs(30), fwd.next_error())
            .await
            .expect("the forward reported no error for the refused client")
            .expect("the forward stopped");
        assert_eq!(err.kind(), ErrorKind::PortClosed, "{err} ({err:?})");
        assert!(err.to_string().contains("port 7071"), "{err}");

        serve(fx, &env, 7071, "cat").await;
        let got = exchange(fwd.local_addr(), b"now someone").await;
        assert_eq!(got, b"now someone");
    })
    .await;
}

/// 20 clients at once through one forward to an echo server each get exactly their own bytes
/// back.
pub async fn port_forward_serves_20_concurrent_connections(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        serve(fx, &env, 7072, "cat").await;
        let fwd = forward(fx, &env, 7072).await;
        let addr = fwd.local_addr();
        let clients = (0..20u8).map(|i| async move {
            let mine: Vec<u8> = pattern(64 * 1024 + usize::from(i))
                .iter()
                .map(|b| b ^ i)
                .collect();
            let got = exchange(addr, &mine).await;
            assert!(
                got == mine,
                "client {i} got {} bytes, not its own {}",
                got.len(),
                mine.len()
            );
        });
        futures_util::future::join_all(clients).await;
    })
    .await;
}

/// 3 MiB holding every byte value cross a forward to an echo server and come back exactly,
/// while both directions flow at once, in an environment without network access (only its
/// loopback): the forward needs none.
pub async fn port_forward_relays_binary_bytes_exactly_both_ways(fx: &Fixture) {
    fx.with_env(&fx.spec().with_network(false), |env| async move {
        serve(fx, &env, 7073, "cat").await;
        let fwd = forward(fx, &env, 7073).await;
        let data = pattern(3 * MIB + 7);
        let got = exchange(fwd.local_addr(), &data).await;
        assert_eq!(got.len(), data.len(), "the echo lost or added bytes");
        let first_difference = got.iter().zip(data.iter()).position(|(a, b)| a != b);
        assert_eq!(first_difference, None, "the echo changed a byte");
    })
    .await;
}
