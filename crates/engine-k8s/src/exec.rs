//! Exec over the pod exec websocket, and what Kubernetes exec lacks made up inside the pod:
//! env, workdir and user by wrapping the argv; timeouts by killing the marked process tree.

use std::time::{Duration, Instant};

use berth_engine_core::backend::{
    self, sweep_argv, watchdog_argv, ExecProcessExt, OomReport, SweepReport, EXEC_MARKER_VAR,
};
use berth_engine_core::{
    EnvironmentId, Error, ExecProcess, ExecRequest, ExecStdin, Result, Stdin, TtySize,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{AttachParams, TerminalSize};
use kube::Api;
use tokio::io::AsyncWriteExt;

use crate::attach::{
    attach, exit_status, pump, read_capped, run_raw, Carrying, EXIT_BERTH_MISSING,
};
use crate::errors::BACKEND;
use crate::manifest::CONTAINER;
use crate::status::Verdict;
use crate::KubernetesEngine;

/// How an image lets a root exec become another user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UserTool {
    /// util-linux `setpriv --reuid --regid` (Debian, Ubuntu, Fedora images).
    Setpriv,
    /// `su -p -s /bin/sh NAME` (busybox, Alpine); needs the user in /etc/passwd.
    Su,
    /// Neither.
    None,
}

/// How long after its deadline a timed-out exec may take to end (its in-pod watchdog fires at
/// the same deadline, rounded up to a whole second) before the sweep runs anyway.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// How long the sweep after a timeout or a drop may take.
const SWEEP_LIMIT: Duration = Duration::from_secs(30);

fn wrap_user(tool: UserTool, user: &str, inner: Vec<String>) -> Result<Vec<String>> {
    let (uid, gid) = user.split_once(':').unwrap_or((user, ""));
    match tool {
        UserTool::Setpriv => {
            let mut argv = vec![
                "setpriv".to_owned(),
                format!("--reuid={uid}"),
                format!("--regid={}", if gid.is_empty() { uid } else { gid }),
                "--clear-groups".to_owned(),
                "--".to_owned(),
            ];
            argv.extend(inner);
            Ok(argv)
        }
        UserTool::Su => {
            // su takes a name: resolve a numeric uid through /etc/passwd first.
            let script = format!(
                "u=\"$1\"; shift; case \"$u\" in *[!0-9]*) n=\"$u\";; *) n=$(awk -F: -v u=\"$u\" '$3==u {{print $1; exit}}' /etc/passwd);; esac; \
                 if [ -z \"$n\" ]; then echo \"berth: uid $u has no /etc/passwd entry, which su needs\" >&2; exit {EXIT_BERTH_MISSING}; fi; \
                 exec su -p -s /bin/sh \"$n\" -c 'exec \"$@\"' -- sh \"$@\""
            );
            let mut argv = vec!["sh".to_owned(), "-c".to_owned(), script, "sh".to_owned(), uid.to_owned()];
            argv.extend(inner);
            Ok(argv)
        }
        UserTool::None => Err(Error::Unsupported {
            backend: BACKEND,
            operation: "exec as user",
            reason: format!(
                "Kubernetes exec has no user field, so berth switches users inside the pod, and this image has neither util-linux setpriv nor su; add one to the image, or run the environment as {user} (EnvironmentSpec::user)"
            ),
        }),
    }
}

/// The argv that runs `req` with its env, workdir and the kill marker.
fn wrap(req: &ExecRequest, marker: &str, tool: Option<UserTool>) -> Result<Vec<String>> {
    let mut inner = vec!["env".to_owned(), format!("{EXEC_MARKER_VAR}={marker}")];
    inner.extend(req.env.iter().map(|(k, v)| format!("{k}={v}")));
    inner.extend(req.argv.iter().cloned());
    if let Some(dir) = &req.workdir {
        let mut argv = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "cd \"$1\" || exit 126; shift; exec \"$@\"".to_owned(),
            "sh".to_owned(),
            dir.clone(),
        ];
        argv.extend(inner);
        inner = argv;
    }
    match (&req.user, tool) {
        (Some(user), Some(tool)) => wrap_user(tool, user, inner),
        _ => Ok(inner),
    }
}

async fn user_tool(engine: &KubernetesEngine, env: &EnvironmentId, pod: &str) -> Result<UserTool> {
    if let Some(t) = engine
        .user_tools
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(pod)
    {
        return Ok(*t);
    }
    let probe = ExecRequest::shell(
        "if setpriv --help 2>&1 | grep -q -- --reuid; then echo setpriv; \
         elif command -v su >/dev/null 2>&1; then echo su; else echo none; fi",
    );
    let out = run_raw(
        engine,
        env,
        pod,
        vec!["sh".into(), "-c".into(), probe.argv[2].clone()],
    )
    .await?;
    let tool = match String::from_utf8_lossy(&out.1).trim() {
        "setpriv" => UserTool::Setpriv,
        "su" => UserTool::Su,
        _ => UserTool::None,
    };
    engine
        .user_tools
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(pod.to_owned(), tool);
    Ok(tool)
}

pub(crate) async fn exec_streaming(
    engine: &KubernetesEngine,
    env: &EnvironmentId,
    req: ExecRequest,
) -> Result<ExecProcess> {
    req.validate()?;
    let pod = engine.pod_of(env).await?;
    let tool = match &req.user {
        Some(_) => Some(user_tool(engine, env, &pod).await?),
        None => None,
    };
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let started_at = Instant::now();
    let argv = match (req.timeout, req.tty) {
        // A timed exec runs under the watchdog, which kills its tree from inside at the
        // deadline without forking (a fork bomb cannot disarm it). A terminal's foreground
        // job must stay the command itself, so tty execs rely on the sweep.
        (Some(limit), None) => {
            let mut watched = req.clone();
            watched.argv = watchdog_argv(limit, &req.argv);
            wrap(&watched, &marker, tool)?
        }
        _ => wrap(&req, &marker, tool)?,
    };
    let tty = req.tty;
    let mut attached = attach(
        engine,
        env,
        &pod,
        argv,
        req.stdin != Stdin::Null,
        tty.is_some(),
    )
    .await?;
    let resize_tx = attached.terminal_size();
    if let (Some(size), Some(tx)) = (tty, resize_tx.as_ref()) {
        let _ = tx.try_send(TerminalSize {
            width: size.cols,
            height: size.rows,
        });
    }
    let stdin_writer = attached.stdin();
    let (stdin_handle, stdin_bytes) = match (req.stdin.clone(), stdin_writer) {
        (Stdin::Piped, Some(w)) => (Some(ExecStdin::new(Box::pin(w))), None),
        (Stdin::Bytes(b), Some(w)) => (None, Some((b, w))),
        _ => (None, None),
    };
    let end = attached.take_end().expect("the end is taken once");
    let stdout = attached.stdout();
    let stderr = attached.stderr();
    let kill = Killer {
        engine_pods: engine.pod_api(),
        pod: pod.clone(),
        marker,
        user: req.user.clone(),
        tool,
        started_at,
    };
    // Checked now, so that a sweep that cannot be built fails the exec, not the kill.
    kill.argv()?;
    let env_id = env.clone();
    let timeout = req.timeout;
    let kill_on_drop = kill.clone();
    let oom = OomReport::default();
    let verdict = Verdict {
        pods: engine.pod_api(),
        pod: pod.clone(),
        address: engine.address.clone(),
        oom: oom.clone(),
    };
    let process = backend::spawn(stdin_handle, move |sink| async move {
        // Keep the attached process (its websocket task) alive for the whole exec.
        let attached = attached;
        let write = async move {
            if let Some((bytes, mut w)) = stdin_bytes {
                let _ = w.write_all(&bytes).await;
                let _ = w.shutdown().await;
            }
        };
        let read = async {
            tokio::join!(pump(stdout, &sink, false), pump(stderr, &sink, true));
        };
        let work = async {
            let ((), ()) = tokio::join!(write, read);
            end.await
        };
        let status = match timeout {
            None => work.await,
            Some(limit) => {
                tokio::pin!(work);
                let deadline = tokio::time::sleep_until((started_at + limit).into());
                let ended = tokio::select! {
                    s = &mut work => Some(s),
                    () = deadline => None,
                };
                match ended {
                    // Past the limit, the watchdog ended it an instant before our own timer.
                    Some(s) if started_at.elapsed() < limit => s,
                    ended => {
                        if ended.is_none() {
                            // The watchdog kills the tree at this same deadline.
                            let _ = tokio::time::timeout(KILL_GRACE, &mut work).await;
                        }
                        let report = kill.sweep().await.unwrap_or_default();
                        drop(attached);
                        return Err(report.timeout_error(format!("exec in {env_id}"), limit));
                    }
                }
            }
        };
        drop(attached);
        let status = exit_status(status, &verdict.address, &env_id, Carrying::Command);
        verdict.judge(&env_id, status).await
    });
    let process = process
        .with_oom_report(oom)
        .with_kill_on_drop(async move { kill_on_drop.run().await });
    Ok(match resize_tx {
        Some(tx) => process.with_resizer(Box::new(move |size: TtySize| {
            let tx = tx.clone();
            Box::pin(async move {
                tx.send(TerminalSize {
                    width: size.cols,
                    height: size.rows,
                })
                .await
                .map_err(|e| Error::backend(BACKEND, "resize the exec terminal", e))
            })
        })),
        None => process,
    })
}

/// Sweeps what is left of an exec's tree from a new exec in the pod (see
/// [`berth_engine_core::sweep_argv`]), as the exec's own user.
#[derive(Clone)]
struct Killer {
    engine_pods: Api<Pod>,
    pod: String,
    marker: String,
    user: Option<String>,
    tool: Option<UserTool>,
    started_at: Instant,
}

impl Killer {
    fn argv(&self) -> Result<Vec<String>> {
        let mut req = ExecRequest::new(sweep_argv(&self.marker, self.started_at.elapsed()));
        req.user.clone_from(&self.user);
        let mut argv = wrap(&req, &self.marker, self.tool)?;
        // The sweep must not carry the marker itself: drop `env MARKER=..` from its argv.
        if let Some(i) = argv.iter().position(|a| a.starts_with(EXEC_MARKER_VAR)) {
            argv.remove(i);
            if i > 0 && argv[i - 1] == "env" {
                argv.remove(i - 1);
            }
        }
        Ok(argv)
    }

    /// Kills what is left and reports what outlived the kill; `None` when the sweep could not
    /// run, which is worth a warning only while the pod still runs.
    async fn sweep(&self) -> Option<SweepReport> {
        let params = AttachParams::default().container(CONTAINER).stderr(true);
        let result = async {
            let argv = self.argv().map_err(|e| e.to_string())?;
            let mut attached = self
                .engine_pods
                .exec(&self.pod, argv, &params)
                .await
                .map_err(|e| e.to_string())?;
            let status = attached.take_status().expect("status");
            let out = read_capped(attached.stdout(), 64 * 1024);
            let err = read_capped(attached.stderr(), 4096);
            let (out, err, status) = tokio::join!(out, err, status);
            match status {
                Some(s) if s.status.as_deref() == Some("Success") => {
                    Ok(SweepReport::parse(&String::from_utf8_lossy(&out)))
                }
                s => Err(format!(
                    "{}: {}",
                    s.and_then(|s| s.message).unwrap_or_default(),
                    String::from_utf8_lossy(&err).trim()
                )),
            }
        };
        let failure = match tokio::time::timeout(SWEEP_LIMIT, result).await {
            Ok(Ok(report)) => return Some(report),
            Ok(Err(e)) => e,
            Err(_) => format!("the sweep did not finish in {SWEEP_LIMIT:?}"),
        };
        let running = self.engine_pods.get_opt(&self.pod).await.is_ok_and(|p| {
            p.and_then(|p| p.status)
                .and_then(|s| s.phase)
                .is_some_and(|phase| phase == "Running")
        });
        if running {
            tracing::warn!(pod = %self.pod, error = %failure, "killing an exec's processes failed; the image needs sh");
        } else {
            tracing::debug!(pod = %self.pod, error = %failure, "the pod ended before the sweep");
        }
        None
    }

    /// Ends a dropped exec's tree, warning when something outlived the kill.
    async fn run(&self) {
        if let Some(report) = self.sweep().await {
            if !report.is_clean() {
                tracing::warn!(pod = %self.pod, processes = ?report.processes(), "processes of a cancelled exec outlived the kill");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_puts_the_marker_env_and_workdir_inside_the_user_switch() {
        let req = ExecRequest::new(["id", "-u"])
            .with_env("A", "1")
            .with_workdir("/tmp")
            .with_user("1000:1001");
        let argv = wrap(&req, "m1", Some(UserTool::Setpriv)).unwrap();
        assert_eq!(
            &argv[..5],
            [
                "setpriv",
                "--reuid=1000",
                "--regid=1001",
                "--clear-groups",
                "--"
            ]
        );
        assert_eq!(&argv[5..7], ["sh", "-c"]);
        let tail = &argv[argv.len() - 5..];
        assert_eq!(tail, ["env", "BERTH_EXEC_ID=m1", "A=1", "id", "-u"]);
        let argv = wrap(&req, "m1", Some(UserTool::Su)).unwrap();
        assert_eq!(&argv[..2], ["sh", "-c"]);
        assert_eq!(argv[4], "1000");
        let plain = wrap(&ExecRequest::new(["true"]), "m2", None).unwrap();
        assert_eq!(plain, ["env", "BERTH_EXEC_ID=m2", "true"]);
    }
    #[test]
    fn no_user_tool_is_unsupported_with_a_reason() {
        let req = ExecRequest::new(["id"]).with_user("1000");
        let err = wrap(&req, "m", Some(UserTool::None)).unwrap_err();
        assert_eq!(err.kind(), berth_engine_core::ErrorKind::Unsupported);
        assert!(
            err.to_string()
                .contains("neither util-linux setpriv nor su"),
            "{err}"
        );
    }
}
