//! Ending a command's whole process tree inside an environment, for timeouts and cancelled
//! execs. Neither Docker nor Kubernetes can signal an exec, so the kill runs inside the
//! environment, as shell code that every backend wraps around or next to the command.
//!
//! Two pieces, both plain POSIX `sh` that busybox `ash`, `dash` and `bash` run alike:
//!
//! - The **watchdog** ([`watchdog_argv`]) wraps a command that has a timeout. It starts the
//!   command as its child and, beside it, a timer (`sleep`) in a subshell. Both processes exist
//!   before the command runs, so a fork bomb that fills the pids limit cannot disarm the kill:
//!   at the deadline the timer only uses shell builtins (`read` from `/proc`, `kill`, `case`).
//!   When the command ends first, the wrapper kills the timer and exits with the command's
//!   status.
//! - The **sweep** ([`sweep_argv`]) runs as an exec of its own: for a dropped exec, and after a
//!   timeout to kill what the watchdog could not reach and to report what is left
//!   ([`SweepReport`]).
//!
//! Both find the tree the same way, re-scanning `/proc` until nothing new turns up: the root
//! and its descendants (by parent pid), every process in a session or process group of a
//! member (never PID 1's), and every process whose environment carries the exec's
//! [`EXEC_MARKER_VAR`](crate::backend::EXEC_MARKER_VAR). Every member is stopped (SIGSTOP) before any is killed, so a shell
//! never sees its child die and runs its next statement; then all are SIGKILLed, and the scan
//! repeats until none is left.
//!
//! # Caveats
//! A process that clears the marker, calls `setsid` and is re-parented to PID 1 (a daemon)
//! leaves every trace the kill can follow. The sweep cannot kill it safely, but it reports
//! processes started since the exec that carry no berth marker at all as possible escapees,
//! and the timeout error says so ([`Error::TimeoutLeftProcesses`]). Only ending the
//! environment is sure to end them. Processes of another user cannot be read or signalled
//! (berth drops `CAP_SYS_PTRACE` and `CAP_KILL` is not enough to read their environment), so
//! a setuid program the command ran may survive and is reported as a survivor.

use std::time::Duration;

use crate::error::Error;

/// The shell functions both scripts share. `st PID` parses `/proc/PID/stat` into `s` (state),
/// `pp`, `pg`, `sid`, `t0` (start time in clock ticks) and `n` (name); `envhas PID TEXT` tests
/// its environment (whose NULs `read` drops, so the last "line" has no newline); `marked PID`
/// tests it for `$mk`; `grab` stops every not yet stopped member once; `reap` stops and
/// kills in rounds until a round finds nobody; `self` fills `me`, `skip` (us, our ancestors,
/// PID 1) and `keep` (PID 1's session and group, never followed).
const FUNCTIONS: &str = r#"
st() {
  { IFS= read -r l < "/proc/$1/stat"; } 2>/dev/null || return 1
  n=${l#*\(}; n=${n%\)*}
  set -- ${l##*\) }
  s=$1 pp=$2 pg=$3 sid=$4
  shift 19
  t0=$1
}
envhas() {
  { while IFS= read -r e || [ -n "$e" ]; do
      case $e in *"$2"*) return 0 ;; esac; e=
    done < "/proc/$1/environ"; } 2>/dev/null
  return 1
}
marked() { envhas "$1" "$mk"; }
member() {
  case "$tree" in *" $p "*|*" $pp "*) return 0 ;; esac
  case "$sids" in *" $sid "*) return 0 ;; esac
  case "$pgs" in *" $pg "*) return 0 ;; esac
  marked "$p"
}
grab() {
  new=0
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    case "$skip$got" in *" $p "*) continue ;; esac
    st "$p" || continue
    case $s in Z|X|x) continue ;; esac
    member || continue
    kill -STOP "$p" 2>/dev/null
    got="$got$p "; new=1
    case "$tree" in *" $p "*) ;; *) tree="$tree$p " ;; esac
    case "$keep$sids" in *" $sid "*) ;; *) sids="$sids$sid " ;; esac
    case "$keep$pgs" in *" $pg "*) ;; *) pgs="$pgs$pg " ;; esac
  done
}
reap() {
  r=0
  while [ $r -lt 50 ]; do
    r=$((r + 1)); got=" "
    grab
    while [ $new = 1 ]; do grab; done
    [ "$got" = " " ] && return 0
    for p in $got; do kill -KILL "$p" 2>/dev/null; done
  done
  return 1
}
self() {
  { IFS= read -r l < /proc/self/stat; } 2>/dev/null
  me=${l%% *}
  skip=" 1 $me "
  a=$me
  while st "$a" && [ "$pp" -gt 1 ]; do skip="$skip$pp "; a=$pp; done
  keep=" "
  if st 1; then keep=" $sid $pg "; fi
}
"#;

/// `sh -c WATCHDOG berth-watchdog SECONDS ARGV...`: see the module docs. When the command
/// ends first, the timer is stopped (and seen stopped) before its `sleep` is looked up and
/// killed, so a timer caught forking leaves no `sleep` behind. The command keeps
/// the exec's stdin and stderr (the wrapper's own stderr is silenced so that `bash` prints no
/// job notices into the command's output). A command that cannot be started exits 127 with
/// the shell's message, as in a terminal.
const WATCHDOG: &str = r#"t=$1; shift
exec 3<&0 4>&2 2>/dev/null
"$@" <&3 2>&4 3<&- 4>&- &
c=$!
exec 3<&- 4>&- </dev/null
f=
trap 'f=1' USR1
(
  trap '' HUP INT TERM QUIT
  exec >/dev/null
  sleep "$t" || exit 0
  FUNCTIONS
  st "$c" || exit 0
  case $s in Z|X|x) exit 0 ;; esac
  kill -USR1 $$
  mk="BERTH_EXEC_ID=$BERTH_EXEC_ID"
  self
  tree=" $c "; sids=" "; pgs=" "
  case "$keep" in *" $sid "*) ;; *) sids=" $sid " ;; esac
  case "$keep" in *" $pg "*) ;; *) pgs=" $pg " ;; esac
  reap
) &
k=$!
trap '' HUP INT TERM QUIT
wait "$c"
rc=$?
if [ -n "$f" ]; then wait "$k"; exit 137; fi
kill -STOP "$k" 2>/dev/null
i=0
while [ $i -lt 10000 ]; do
  { IFS= read -r l < "/proc/$k/stat"; } 2>/dev/null || break
  set -- ${l##*\) }
  case $1 in T|t|Z|X|x) break ;; esac
  i=$((i + 1))
done
if [ -n "$f" ]; then kill -CONT "$k" 2>/dev/null; wait "$k"; exit 137; fi
for d in /proc/[0-9]*; do
  { IFS= read -r l < "$d/stat"; } 2>/dev/null || continue
  set -- ${l##*\) }
  [ "$2" = "$k" ] && kill -KILL "${d#/proc/}" 2>/dev/null
done
kill -KILL "$k" 2>/dev/null
exit "$rc"
"#;

/// `sh -c SWEEP berth-sweep MARKER SINCE_TICKS_AGO [SPARE_PID]`: kills the marked tree (as the watchdog
/// does, seeded by the marker alone), then prints one line per process left:
/// `survivor PID NAME` for members still alive, `escaped PID NAME` for processes started
/// since the exec that carry no berth marker at all (readable environment, no
/// `BERTH_EXEC_ID=`), outside the sweep's own session and outside any session whose leader
/// carries a marker (another exec's command that ran `env -i` is not an escape).
const SWEEP: &str = r#"FUNCTIONS
mk="BERTH_EXEC_ID=$1"
self
st "$me"
keep="$keep$sid $pg "
if [ -n "$3" ] && st "$3"; then keep="$keep$sid $pg "; skip="$skip$3 "; fi
tree=" "; sids=" "; pgs=" "
reap
{ read -r u _ < /proc/uptime; } 2>/dev/null
since=$(( ${u%.*}${u#*.} - $2 ))
for d in /proc/[0-9]*; do
  p=${d#/proc/}
  case "$skip" in *" $p "*) continue ;; esac
  st "$p" || continue
  case $s in Z|X|x) continue ;; esac
  if member; then echo "survivor $p $n"; continue; fi
  case "$keep" in *" $sid "*) continue ;; esac
  [ "$t0" -ge "$since" ] || continue
  [ -r "$d/environ" ] || continue
  envhas "$p" BERTH_EXEC_ID= && continue
  [ "$sid" != "$p" ] && envhas "$sid" BERTH_EXEC_ID= && continue
  echo "escaped $p $n"
done
exit 0
"#;

/// The argv that runs `argv` under the timeout watchdog: its tree is stopped and killed from
/// inside the environment once `limit` (rounded up to whole seconds, so the watchdog never
/// fires before the caller's own deadline) has passed. The exec must carry
/// [`EXEC_MARKER_VAR`](crate::backend::EXEC_MARKER_VAR); the image needs `sh` and `sleep`.
#[must_use]
pub fn watchdog_argv(limit: Duration, argv: &[String]) -> Vec<String> {
    let secs = limit.as_secs() + u64::from(limit.subsec_nanos() > 0);
    let mut out = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        WATCHDOG.replace("FUNCTIONS", FUNCTIONS),
        "berth-watchdog".to_owned(),
        secs.max(1).to_string(),
    ];
    out.extend(argv.iter().cloned());
    out
}

/// The argv of the sweep for the exec marked `marker` that started `since` ago: kills what is
/// left of its tree and prints a report for [`SweepReport::parse`]. Run it as the exec's user
/// (reading another user's `/proc/PID/environ` needs `CAP_SYS_PTRACE`, which berth drops) and
/// without the marker itself. It uses only shell builtins, so it works in any image with `sh`.
#[must_use]
pub fn sweep_argv(marker: &str, since: Duration) -> Vec<String> {
    // Clock ticks are USER_HZ, 100 on every Linux architecture berth runs on; one second of
    // slack covers the time between the caller's clock and the first fork.
    let ticks = (since.as_millis() / 10 + 100).to_string();
    vec![
        "sh".to_owned(),
        "-c".to_owned(),
        SWEEP.replace("FUNCTIONS", FUNCTIONS),
        "berth-sweep".to_owned(),
        marker.to_owned(),
        ticks,
    ]
}

/// Like [`sweep_argv`], sparing the process `spare` and never following its session or
/// process group: for a command run by a long-lived shell (see [`Shell`](crate::Shell)), whose
/// children share the shell's session, the command's tree dies and the shell lives on.
#[must_use]
pub fn sweep_sparing_argv(marker: &str, since: Duration, spare: u32) -> Vec<String> {
    let mut argv = sweep_argv(marker, since);
    argv.push(spare.to_string());
    argv
}

/// What a sweep found after killing an exec's tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweepReport {
    /// Members of the tree still alive after the kill, as `pid (name)`: processes berth may not
    /// signal (another user's, a setuid program).
    pub survivors: Vec<String>,
    /// Processes started since the exec that carry no berth marker, as `pid (name)`: they may
    /// have escaped the tree (cleared the marker, `setsid`, re-parented to PID 1), or come from
    /// something other than berth.
    pub escaped: Vec<String>,
}

impl SweepReport {
    /// Reads the sweep's standard output; lines it does not know are ignored.
    #[must_use]
    pub fn parse(stdout: &str) -> Self {
        let mut report = Self::default();
        for line in stdout.lines() {
            let mut parts = line.splitn(3, ' ');
            let (Some(what), Some(pid), name) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let entry = format!("{pid} ({})", name.unwrap_or("?"));
            match what {
                "survivor" => report.survivors.push(entry),
                "escaped" => report.escaped.push(entry),
                _ => {}
            }
        }
        report
    }

    /// Whether nothing was left.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.survivors.is_empty() && self.escaped.is_empty()
    }

    /// Every process left, with the reason, for messages.
    #[must_use]
    pub fn processes(&self) -> Vec<String> {
        let survivors = self
            .survivors
            .iter()
            .map(|p| format!("{p}: could not be killed"));
        let escaped = self
            .escaped
            .iter()
            .map(|p| format!("{p}: started during the exec, outside its tree"));
        survivors.chain(escaped).collect()
    }

    /// The error for an exec that timed out after `after`: [`Error::Timeout`] when the kill
    /// was clean, [`Error::TimeoutLeftProcesses`] naming what is left otherwise.
    #[must_use]
    pub fn timeout_error(&self, operation: String, after: Duration) -> Error {
        if self.is_clean() {
            Error::Timeout { operation, after }
        } else {
            Error::TimeoutLeftProcesses {
                operation,
                after,
                processes: self.processes(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_rounds_the_limit_up_and_keeps_the_argv() {
        let argv = watchdog_argv(
            Duration::from_millis(1500),
            &["echo".to_owned(), "a b".to_owned()],
        );
        assert_eq!(argv[..2], ["sh", "-c"]);
        assert!(!argv[2].contains("FUNCTIONS"), "the functions are inlined");
        assert_eq!(argv[3..], ["berth-watchdog", "2", "echo", "a b"]);
        assert_eq!(watchdog_argv(Duration::from_millis(10), &[])[4], "1");
        assert_eq!(watchdog_argv(Duration::from_secs(3), &[])[4], "3");
    }

    /// The shells berth's scripts must run in: busybox `ash` (the test image), `dash` and
    /// `bash` (Debian, Ubuntu, Fedora images).
    const SHELLS: &[&[&str]] = &[&["/bin/busybox", "sh"], &["dash"], &["bash"]];

    fn marker() -> String {
        format!("unit{}{}", std::process::id(), rand_suffix())
    }

    fn rand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    }

    /// Host pids (not zombies) whose `/proc/PID/<file>` contains `text` (NULs as spaces).
    fn live_pids(file: &str, text: &str) -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                let state = stat.rsplit_once(") ").map_or("Z", |(_, rest)| &rest[..1]);
                state != "Z"
                    && std::fs::read(e.path().join(file)).is_ok_and(|c| {
                        String::from_utf8_lossy(&c)
                            .replace('\0', " ")
                            .contains(text)
                    })
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn marked_pids(marker: &str) -> Vec<String> {
        live_pids("environ", &format!("BERTH_EXEC_ID={marker}"))
    }

    /// Nothing carrying `marker`, nor the unmarked child `sleep <unmarked>`, is left.
    fn assert_tree_gone(shell: &[&str], marker: &str, unmarked: &str) {
        assert!(
            marked_pids(marker).is_empty(),
            "{shell:?}: marked processes survived"
        );
        assert!(
            live_pids("cmdline", &format!("sleep {unmarked}")).is_empty(),
            "{shell:?}: the unmarked child survived"
        );
    }

    /// Runs `shell` with `args` in a session of its own (`setsid`), so that following the
    /// session can never reach this test's processes.
    fn in_new_session(shell: &[&str], args: &[String], marker: &str) -> std::process::Output {
        std::process::Command::new("setsid")
            .args(shell)
            .args(args)
            .env("BERTH_EXEC_ID", marker)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run setsid {shell:?} (util-linux, {shell:?} needed): {e}")
            })
    }

    /// In each shell: the command's status and output pass through; at the deadline the
    /// whole tree (a child that cleared the marker included) is stopped and killed, and the
    /// statement after the `sleep` never runs.
    #[test]
    fn watchdog_runs_and_kills_in_busybox_dash_and_bash() {
        for shell in SHELLS {
            let marker = marker();
            let ok = watchdog_argv(
                Duration::from_secs(5),
                &[
                    "sh".into(),
                    "-c".into(),
                    "echo out; echo err >&2; exit 3".into(),
                ],
            );
            let out = in_new_session(shell, &ok[1..], &marker);
            assert_eq!(out.status.code(), Some(3), "{shell:?}: {out:?}");
            assert_eq!(out.stdout, b"out\n", "{shell:?}");
            assert_eq!(out.stderr, b"err\n", "{shell:?}: no job notices");

            let script = "env -u BERTH_EXEC_ID sh -c 'sleep 987001' & sleep 30; echo after";
            let argv = watchdog_argv(
                Duration::from_secs(1),
                &["sh".into(), "-c".into(), script.into()],
            );
            let started = std::time::Instant::now();
            let out = in_new_session(shell, &argv[1..], &marker);
            assert_eq!(out.status.code(), Some(137), "{shell:?}: {out:?}");
            assert!(started.elapsed() < Duration::from_secs(10), "{shell:?}");
            assert!(
                !String::from_utf8_lossy(&out.stdout).contains("after"),
                "{shell:?}"
            );
            assert_tree_gone(shell, &marker, "987001");
        }
    }

    /// In each shell: the sweep kills every process carrying the marker, and those in their
    /// session, and exits 0.
    #[test]
    fn sweep_kills_the_marked_tree_in_busybox_dash_and_bash() {
        for shell in SHELLS {
            let marker = marker();
            let mut tree = std::process::Command::new("setsid")
                .args([
                    "sh",
                    "-c",
                    "env -u BERTH_EXEC_ID sleep 987002 & sleep 987003",
                ])
                .env("BERTH_EXEC_ID", &marker)
                .spawn()
                .expect("setsid");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while marked_pids(&marker).is_empty() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the tree never started"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(200));
            let argv = sweep_argv(&marker, Duration::from_secs(5));
            let out = std::process::Command::new(shell[0])
                .args(&shell[1..])
                .args(&argv[1..])
                .output()
                .expect("sweep");
            assert!(out.status.success(), "{shell:?}: {out:?}");
            assert!(
                !String::from_utf8_lossy(&out.stdout).contains("survivor"),
                "{shell:?}: {out:?}"
            );
            let _ = tree.wait();
            assert_tree_gone(shell, &marker, "987002");
        }
    }

    #[test]
    fn sweep_report_parses_and_names_what_is_left() {
        let report = SweepReport::parse(
            "survivor 12 sleep\nnoise\nescaped 40 my daemon\nescaped x y\nsurvivor\n",
        );
        assert_eq!(report.survivors, ["12 (sleep)"]);
        assert_eq!(report.escaped, ["40 (my daemon)"]);
        let err = report.timeout_error("exec in e".into(), Duration::from_secs(2));
        assert_eq!(err.kind(), crate::ErrorKind::Timeout);
        let text = err.to_string();
        assert!(text.contains("2 may have escaped"), "{text}");
        assert!(
            text.contains("40 (my daemon): started during the exec"),
            "{text}"
        );
        let clean = SweepReport::parse("");
        assert!(clean.is_clean());
        assert!(matches!(
            clean.timeout_error("x".into(), Duration::from_secs(1)),
            Error::Timeout { .. }
        ));
    }
}
