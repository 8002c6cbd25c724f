//! Copies in and out of a pod as tar streams through `tar` in the pod.

use berth_engine_core::backend::{self};
use berth_engine_core::{EnvironmentId, Error, Result, TarStream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::attach::{attach, exit_status, read_capped, Carrying, EXIT_BERTH_MISSING, READ_CHUNK};
use crate::errors::BACKEND;
use crate::KubernetesEngine;

/// Extracts `tar` into `dest` with `tar -x` in the pod. Completeness is checked twice: tar
/// fails on an archive cut short, and the exit status must arrive on the status channel (a
/// stream that ends without one is an error, never a success: the `kubectl cp` truncation).
pub(crate) async fn copy_in(
    engine: &KubernetesEngine,
    env: &EnvironmentId,
    dest: &str,
    mut tar: TarStream,
) -> Result<()> {
    backend::require_absolute("dest", dest)?;
    let pod = engine.pod_of(env).await?;
    let script = format!(
        "test -d \"$1\" || {{ echo \"berth: no directory $1\" >&2; exit {EXIT_BERTH_MISSING}; }}; \
         exec tar -xf - -C \"$1\""
    );
    let argv = vec![
        "sh".into(),
        "-c".into(),
        script,
        "sh".into(),
        dest.to_owned(),
    ];
    let mut attached = attach(engine, env, &pod, argv, true, false).await?;
    let mut stdin = attached.stdin().expect("stdin requested");
    let status = attached.take_end().expect("the end is taken once");
    let out = read_capped(attached.stdout(), 4096);
    let err = read_capped(attached.stderr(), 64 * 1024);
    let write = async move {
        while let Some(chunk) = tar.next().await {
            let chunk =
                chunk.map_err(|e| Error::backend(BACKEND, "read the archive to copy in", e))?;
            stdin
                .write_all(&chunk)
                .await
                .map_err(|e| Error::backend(BACKEND, "send the archive into the pod", e))?;
        }
        stdin
            .shutdown()
            .await
            .map_err(|e| Error::backend(BACKEND, "close the archive stream", e))?;
        Ok::<(), Error>(())
    };
    let (written, _, err, status) = tokio::join!(write, out, err, status);
    let status = exit_status(status, &engine.address, env, Carrying::Copy(true, dest))?;
    let err = String::from_utf8_lossy(&err).into_owned();
    if status.code() == EXIT_BERTH_MISSING {
        return Err(Error::path_not_found(dest, env));
    }
    if !status.success() {
        return Err(Error::backend(
            BACKEND,
            "extract an archive in the pod",
            format!("tar exited with {status}: {}", err.trim()),
        ));
    }
    written
}

/// Streams `path` out of the pod as a tar archive made by `tar -c`.
pub(crate) async fn copy_out(
    engine: &KubernetesEngine,
    env: &EnvironmentId,
    path: &str,
) -> Result<TarStream> {
    backend::require_absolute("path", path)?;
    let pod = engine.pod_of(env).await?;
    let script = format!(
        "test -e \"$1\" || test -L \"$1\" || {{ echo \"berth: no such path $1\" >&2; exit {EXIT_BERTH_MISSING}; }}; \
         cd \"$(dirname \"$1\")\" && exec tar -cf - \"$(basename \"$1\")\""
    );
    let argv = vec![
        "sh".into(),
        "-c".into(),
        script,
        "sh".into(),
        path.to_owned(),
    ];
    let mut attached = attach(engine, env, &pod, argv, false, false).await?;
    let status = attached.take_end().expect("the end is taken once");
    let mut stdout = attached.stdout().expect("stdout");
    let stderr = read_capped(attached.stderr(), 64 * 1024);
    // Read the first piece before returning, so a missing path is an error here, not half-way
    // through the caller's read.
    let mut first = vec![0u8; READ_CHUNK];
    let n = stdout
        .read(&mut first)
        .await
        .map_err(|e| Error::backend(BACKEND, "read the archive from the pod", e))?;
    first.truncate(n);
    let env = env.clone();
    let path = path.to_owned();
    let address = engine.address.clone();
    if n == 0 {
        let (err, status) = tokio::join!(stderr, status);
        let status = exit_status(status, &address, &env, Carrying::Copy(false, &path))?;
        if status.code() == EXIT_BERTH_MISSING {
            return Err(Error::path_not_found(&path, &env));
        }
        return Err(Error::backend(
            BACKEND,
            "archive a path in the pod",
            format!(
                "tar exited with {status}: {}",
                String::from_utf8_lossy(&err).trim()
            ),
        ));
    }
    let state = (Some(attached), stdout, Some((status, stderr)), env);
    let rest = futures_util::stream::unfold(state, move |(attached, mut stdout, finish, env)| {
        let (address, path) = (address.clone(), path.clone());
        async move {
            let mut buf = vec![0u8; READ_CHUNK];
            match stdout.read(&mut buf).await {
                Ok(0) => {
                    let (status, stderr) = finish?;
                    let (err, status) = tokio::join!(stderr, status);
                    drop(attached);
                    match exit_status(status, &address, &env, Carrying::Copy(false, &path)) {
                        Ok(s) if s.success() => None,
                        Ok(s) => Some((
                            Err(std::io::Error::other(format!(
                                "tar in {env} exited with {s}: {}",
                                String::from_utf8_lossy(&err).trim()
                            ))),
                            (None, stdout, None, env),
                        )),
                        Err(e) => Some((Err(std::io::Error::other(e)), (None, stdout, None, env))),
                    }
                }
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), (attached, stdout, finish, env)))
                }
                Err(e) => Some((Err(e), (None, stdout, None, env))),
            }
        }
    });
    Ok(Box::pin(
        futures_util::stream::iter([Ok(Bytes::from(first))]).chain(rest),
    ))
}
