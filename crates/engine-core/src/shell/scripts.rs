//! The shell code a [`Shell`](super::Shell) runs in the environment.

/// The driver loop; see the module docs. The framing token arrives as the first line of stdin,
/// never in the command line, the environment or a file name, where any process in the
/// environment could read it and forge a marker; `$1` is the kill mark, a second random value
/// that only names the commands' processes (`BERTH_EXEC_ID`) and their stdin files. Its
/// variables start with `__berth_` so that commands are unlikely to clobber them. Markers go
/// to fds 8 and 9 (copies of stdout and stderr made at start), so a command that redirects its
/// shell's stdout (`exec >log`) does not lose them; commands run with 8 and 9 closed.
pub(super) const DRIVER: &str = r#"__berth_m=$1
shift
IFS= read -r __berth_t
readonly __berth_t __berth_m
exec 8>&1 9>&2
printf '%s R %s\n' "$__berth_t" "$$" >&8
while IFS=' ' read -r __berth_n __berth_i __berth_k; do
  __berth_c=
  while [ "$__berth_k" -gt 0 ] && IFS= read -r __berth_l; do
    __berth_c="$__berth_c$__berth_l
"
    __berth_k=$((__berth_k - 1))
  done
  __berth_f=/dev/null
  if [ "$__berth_i" -gt 0 ]; then
    __berth_f=/tmp/.berth-shell-$__berth_m-$__berth_n.in
    __berth_b=$((__berth_i / 65536))
    { [ "$__berth_b" -eq 0 ] || dd bs=65536 count="$__berth_b" iflag=fullblock
      [ $((__berth_i % 65536)) -eq 0 ] || dd bs=$((__berth_i % 65536)) count=1 iflag=fullblock
    } 2>/dev/null >"$__berth_f"
  fi
  printf '%s S %s\n' "$__berth_t" "$__berth_n" >&8
  printf '%s S %s\n' "$__berth_t" "$__berth_n" >&9
  BERTH_EXEC_ID=$__berth_m-$__berth_n-c
  export BERTH_EXEC_ID
  command eval "$__berth_c" <"$__berth_f" 8>&- 9>&-
  __berth_r=$?
  [ "$__berth_f" = /dev/null ] || rm -f "$__berth_f"
  printf '%s E %s %s\n' "$__berth_t" "$__berth_n" "$__berth_r" >&8
  printf '%s E %s %s\n' "$__berth_t" "$__berth_n" "$__berth_r" >&9
done
"#;

/// Sends SIGINT to every process whose environment carries `BERTH_EXEC_ID=$1` (a command's
/// processes; the shell itself carries another value). Only builtins: `read` drops the NULs
/// between variables, and markers end in `-c`, so one command's marker is never a part of
/// another's.
pub(super) const INTERRUPT: &str = r#"m="BERTH_EXEC_ID=$1"
for d in /proc/[0-9]*; do
  { while IFS= read -r e || [ -n "$e" ]; do
      case $e in *"$m"*) kill -INT "${d#/proc/}"; break ;; esac; e=
    done < "$d/environ"; } 2>/dev/null
done
exit 0
"#;
