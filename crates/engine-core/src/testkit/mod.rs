//! The conformance suite: one async function per behaviour in [`cases`], run unchanged against
//! every backend, plus the test image every backend's tests use.
//!
//! A backend's test file expands the whole suite with one macro call:
//!
//! ```no_run
//! # mod demo {
//! use berth_engine_core::testkit::Fixture;
//!
//! async fn fixture() -> Fixture {
//!     unimplemented_engine_for_doc()
//! }
//! # fn unimplemented_engine_for_doc() -> Fixture { panic!() }
//! berth_engine_core::conformance_suite!(fixture());
//! # }
//! ```
//!
//! The test image is built without a registry: a `FROM scratch` image holding the host's
//! statically linked busybox (Debian's `busybox-static`), built with the engine's own
//! `ContainerEngine::build_image`. See
//! [`busybox_build_context`].

pub mod cases;
pub mod cases_copy;
pub mod cases_detached;
pub mod cases_detached_cmd;
pub mod cases_exec;
pub mod cases_foreign;
pub mod cases_kill;
pub mod cases_lifecycle;
pub mod cases_once;
pub mod cases_outcomes;
pub mod cases_pools;
pub mod cases_ports;
pub mod cases_runs;
pub mod cases_shell;
pub mod cases_workspace;
mod cases_zombies;

use std::future::Future;
use std::io::Read;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::OnceCell;

use crate::{
    tar_stream_from_bytes, BuildSpec, ContainerEngine, EnvironmentId, EnvironmentSpec, Error,
    ImageRef, Progress, PullPolicy, Result, SessionId,
};

/// The tag of the test image. Bump the version when [`busybox_build_context`] changes.
pub const TEST_IMAGE: &str = "berth-test/busybox:2";

/// The uid of the unprivileged user in the test image (`berth`, home `/home/berth`).
pub const TEST_UID: u32 = 1000;

/// An engine under test and the image its environments run.
#[derive(Clone)]
pub struct Fixture {
    /// The engine under test.
    pub engine: Arc<dyn ContainerEngine>,
    /// An image with busybox's `sh`, `cat`, `head`, `id`, `sleep`, `kill`, `grep`, `tar`.
    pub image: ImageRef,
    /// Whatever must live as long as the fixture (a simulator, a temporary kubeconfig).
    pub guard: Option<Arc<dyn std::any::Any + Send + Sync>>,
    /// Makes objects of the same platform that berth did not create, for the cases that
    /// check berth leaves them alone ([`cases_foreign`]); those cases fail without it.
    pub foreign: Option<Arc<dyn ForeignObjects>>,
}

/// A backend's way to make an object berth did not create (a container started with the plain
/// Docker API, a Job without berth's labels), for [`cases_foreign`]. Implemented by each
/// backend's test file with its SDK, never through berth.
#[async_trait::async_trait]
pub trait ForeignObjects: Send + Sync {
    /// Starts a long-running object from `image` (its keepalive is `sleep`) without berth's
    /// labels and returns the strings a user might pass for it: its name first, then any
    /// other id (a full id, an id prefix).
    async fn create(&self, image: &ImageRef) -> Vec<String>;
    /// Whether the object called `name` still exists and has not been asked to stop.
    async fn is_alive(&self, name: &str) -> bool;
    /// Removes it (best effort; the test is over).
    async fn remove(&self, name: &str);
    /// Creates a workspace volume (a Docker volume, a claim) without berth's labels and
    /// returns its name.
    async fn create_volume(&self) -> String;
    /// Whether the volume called `name` still exists.
    async fn volume_exists(&self, name: &str) -> bool;
    /// Removes that volume (best effort; the test is over).
    async fn remove_volume(&self, name: &str);
}

impl Fixture {
    /// A fixture for `engine` running `image`.
    pub fn new(engine: Arc<dyn ContainerEngine>, image: ImageRef) -> Self {
        Self {
            engine,
            image,
            guard: None,
            foreign: None,
        }
    }

    /// Gives the fixture a way to make objects berth did not create.
    #[must_use]
    pub fn with_foreign(mut self, foreign: impl ForeignObjects + 'static) -> Self {
        self.foreign = Some(Arc::new(foreign));
        self
    }

    /// Keeps `guard` alive as long as the fixture.
    #[must_use]
    pub fn with_guard(mut self, guard: impl std::any::Any + Send + Sync) -> Self {
        self.guard = Some(Arc::new(guard));
        self
    }

    /// A spec for a fresh session, with a short lifetime so that a crashed test's
    /// environments end by themselves.
    #[must_use]
    pub fn spec(&self) -> EnvironmentSpec {
        EnvironmentSpec::new(self.image.clone(), SessionId::generate())
            .with_max_lifetime(std::time::Duration::from_secs(900))
    }

    /// Starts `spec`, runs `body`, and stops the environment whether `body` passed or
    /// panicked.
    ///
    /// # Panics
    /// When start or stop fails, or when `body` panics.
    pub async fn with_env<F, Fut>(&self, spec: &EnvironmentSpec, body: F)
    where
        F: FnOnce(EnvironmentId) -> Fut,
        Fut: Future<Output = ()>,
    {
        let env = self
            .engine
            .start(spec)
            .await
            .unwrap_or_else(|e| panic!("start failed: {e} ({e:?})"));
        let outcome = AssertUnwindSafe(body(env.clone())).catch_unwind().await;
        let stopped = self.engine.stop(&env).await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
        stopped.unwrap_or_else(|e| panic!("stop failed: {e}"));
    }
}

static TEST_IMAGE_READY: OnceCell<ImageRef> = OnceCell::const_new();

/// Makes sure [`TEST_IMAGE`] exists on `engine`, building it once per process with
/// [`busybox_build_context`] when it is missing.
///
/// # Errors
/// When the busybox binary is missing or dynamically linked, or the build fails.
pub async fn ensure_test_image(engine: &dyn ContainerEngine) -> Result<ImageRef> {
    TEST_IMAGE_READY
        .get_or_try_init(|| async {
            let image = ImageRef::new(TEST_IMAGE)?;
            match engine
                .ensure_image(&image, PullPolicy::Never, &Progress::none())
                .await
            {
                Ok(_) => return Ok(image),
                Err(e) if e.kind() == crate::ErrorKind::ImageNotFound => {}
                Err(e) => return Err(e),
            }
            let context = busybox_build_context(&busybox_path())?;
            engine
                .build_image(
                    BuildSpec::new(image.clone(), tar_stream_from_bytes(context)),
                    &Progress::none(),
                )
                .await?;
            Ok(image)
        })
        .await
        .cloned()
}

/// The busybox binary the test image is made from: `$BERTH_BUSYBOX`, else `/bin/busybox`.
#[must_use]
pub fn busybox_path() -> PathBuf {
    std::env::var_os("BERTH_BUSYBOX").map_or_else(|| PathBuf::from("/bin/busybox"), PathBuf::from)
}

/// A Docker build context (a tar archive) for the test image: `FROM scratch`, then a root
/// filesystem with the statically linked busybox at `/bin/busybox`, a symlink for each of its
/// applets, `/etc/passwd` with root and `berth` (uid 1000), `/tmp`, `/workspace` and
/// `/home/berth`.
///
/// # Errors
/// [`Error::InvalidSpec`] naming `busybox` when the binary is missing or dynamically linked
/// (install Debian's `busybox-static`).
pub fn busybox_build_context(busybox: &Path) -> Result<Vec<u8>> {
    busybox_context(busybox, None)
}

/// Like [`busybox_build_context`], with symlinks for the given applet paths only (for
/// example `["/bin/sleep", "/usr/bin/env"]`): an image lacking tools berth would otherwise
/// use (no `sh`, no `su`), to test how a backend copes.
///
/// # Errors
/// As [`busybox_build_context`].
pub fn busybox_build_context_with_applets(busybox: &Path, applets: &[&str]) -> Result<Vec<u8>> {
    busybox_context(busybox, Some(applets))
}

fn busybox_context(busybox: &Path, only: Option<&[&str]>) -> Result<Vec<u8>> {
    let missing = |why: String| {
        Error::invalid_spec(
            "busybox",
            format!(
                "{}: {why}; install Debian's busybox-static (apt-get install busybox-static) or set BERTH_BUSYBOX",
                busybox.display()
            ),
        )
    };
    let mut binary = Vec::new();
    std::fs::File::open(busybox)
        .and_then(|mut f| f.read_to_end(&mut binary))
        .map_err(|e| missing(format!("cannot read it ({e})")))?;
    let head = &binary[..binary.len().min(8192)];
    if head.windows(7).any(|w| w == b"ld-linu" || w == b"ld-musl") {
        return Err(missing(
            "it is dynamically linked and cannot run in a FROM scratch image".into(),
        ));
    }
    let listing = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| missing(format!("cannot run it ({e})")))?;
    let mut applets = String::from_utf8_lossy(&listing.stdout).into_owned();
    if let Some(only) = only {
        applets = only.join("\n");
    }

    let rootfs = build_rootfs_tar(&binary, &applets).map_err(|e| missing(e.to_string()))?;
    let dockerfile = b"FROM scratch\nADD rootfs.tar /\nUSER 0\nWORKDIR /\nCMD [\"sh\"]\n";
    let mut context = tar::Builder::new(Vec::new());
    append_file(&mut context, "Dockerfile", 0o644, 0, dockerfile)
        .and_then(|()| append_file(&mut context, "rootfs.tar", 0o644, 0, &rootfs))
        .and_then(|()| context.into_inner())
        .map_err(|e| missing(e.to_string()))
}

fn build_rootfs_tar(busybox: &[u8], applets: &str) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (dir, mode, uid) in [
        ("bin", 0o755, 0),
        ("sbin", 0o755, 0),
        ("usr", 0o755, 0),
        ("usr/bin", 0o755, 0),
        ("usr/sbin", 0o755, 0),
        ("etc", 0o755, 0),
        ("root", 0o700, 0),
        ("home", 0o755, 0),
        ("home/berth", 0o755, TEST_UID),
        ("tmp", 0o1777, 0),
        ("workspace", 0o777, 0),
        ("proc", 0o755, 0),
        ("sys", 0o755, 0),
        ("dev", 0o755, 0),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_uid(uid.into());
        h.set_gid(uid.into());
        h.set_size(0);
        tar.append_data(&mut h, format!("{dir}/"), std::io::empty())?;
    }
    append_file(&mut tar, "bin/busybox", 0o755, 0, busybox)?;
    append_file(
        &mut tar,
        "etc/passwd",
        0o644,
        0,
        b"root:x:0:0:root:/root:/bin/sh\nberth:x:1000:1000:berth:/home/berth:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    append_file(
        &mut tar,
        "etc/group",
        0o644,
        0,
        b"root:x:0:\nberth:x:1000:\nnogroup:x:65534:\n",
    )?;
    for applet in applets.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let applet = applet.trim_start_matches('/');
        if applet == "bin/busybox" || !applet.contains('/') {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        tar.append_link(&mut h, applet, "/bin/busybox")?;
    }
    tar.into_inner()
}

fn append_file<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    uid: u64,
    data: &[u8],
) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_size(data.len() as u64);
    tar.append_data(&mut h, path, data)
}

/// Expands to one `#[tokio::test]` per conformance case, each calling
/// `testkit::cases::<case>(&$fixture.await)`. The calling crate needs `tokio` with the
/// `macros` and `rt-multi-thread` features.
///
/// The list of cases is written here once; `conformance_suite!(@names)` gives it as a
/// `&[&str]`, and a unit test of this crate fails when a `pub async fn` of a `cases*.rs`
/// file is missing from it (or listed twice), so a case cannot be added without running.
#[macro_export]
macro_rules! conformance_suite {
    (@names) => {
        $crate::conformance_suite!(@list (@names_of))
    };
    (@list ($($then:tt)*)) => {
        $crate::conformance_suite! { $($then)*;
            exit_codes,
            stdout_and_stderr_are_kept_apart,
            stdin_bytes_are_echoed_exactly,
            stdin_piped_and_closed_reaches_eof,
            tty_exec_has_a_resizable_terminal,
            env_and_workdir,
            exec_as_uid_1000,
            binary_output_round_trips,
            wait_after_dropping_output_gives_the_exit_code,
            streaming_256_mib_keeps_memory_bounded,
            captured_output_is_truncated_at_its_cap,
            timeout_kills_the_process_tree,
            dropping_an_unfinished_exec_kills_its_process_tree,
            timeout_kills_a_child_that_cleared_the_marker,
            no_statement_runs_after_the_timeout,
            timeout_kills_a_fork_bomb_at_the_pids_limit,
            timeout_reports_a_process_that_escaped,
            timeout_as_another_user_kills_the_tree,
            copy_round_trip_keeps_symlinks_dirs_and_modes,
            copy_errors_name_the_path,
            host_path_workspace_persists_across_environments,
            volume_workspace_persists_across_environments,
            volume_sub_path_is_kept_apart_or_unsupported,
            list_volumes_finds_workspace_volumes_by_label,
            stop_twice_is_fine,
            exec_in_stopped_environment_is_not_found,
            missing_image_is_image_not_found,
            list_finds_the_session_by_label,
            invalid_input_is_rejected_before_io,
            environment_ends_after_max_lifetime,
            build_image_or_unsupported,
            foreign_objects_are_refused_and_left_alone,
            foreign_volumes_are_refused_and_left_alone,
            mark_detached_is_recorded_on_the_environment,
            no_zombie_is_left_behind,
            out_of_memory_is_reported_as_such,
            stop_under_a_running_exec_is_environment_gone,
            shell_keeps_its_state_between_commands,
            shell_exit_codes_and_streams,
            shell_stdin_is_isolated,
            shell_output_is_exact_whatever_it_holds,
            shell_output_cannot_forge_a_result,
            shell_streams_64_mib_with_bounded_memory,
            shell_timeout_kills_the_command_and_the_shell_lives_on,
            shell_interrupt_stops_the_command,
            shell_background_job_returns_at_once,
            shell_killed_or_exited_is_shell_closed,
            detached_command_survives_a_dropped_client,
            detached_output_is_capped_keeping_the_first_bytes,
            run_exit_codes_come_from_the_status,
            run_logs_followed_give_every_line_once,
            run_logs_carry_any_bytes,
            run_log_stream_resumed_after_a_drop_gives_each_line_once,
            cancel_ends_a_running_run,
            a_run_past_its_deadline_is_deadline_exceeded,
            list_runs_finds_runs_by_label,
            a_name_that_is_not_a_berth_run_is_not_found,
            port_forward_reaches_an_http_server_inside,
            port_forward_to_a_closed_port_is_a_clear_error,
            port_forward_serves_20_concurrent_connections,
            port_forward_relays_binary_bytes_exactly_both_ways,
            a_claimed_member_has_the_sessions_labels_only,
            a_claimed_members_lifetime_counts_from_the_claim,
            no_member_is_claimed_twice_by_20_concurrent_claimers,
            a_claim_for_another_spec_leaves_the_member,
            run_once_exit_code_and_streams_apart,
            run_once_stdin_bytes_and_piped_close,
            run_once_output_is_capped,
            run_once_timeout_ends_everything,
            run_once_missing_command_is_not_found,
            run_once_is_listed_while_it_runs_and_stop_ends_it,
            run_once_ends_at_the_environments_max_lifetime,
        }
    };
    (@names_of; $($case:ident),* $(,)?) => {
        &[$(stringify!($case)),*]
    };
    ($fixture:expr) => {
        $crate::conformance_suite!(@list (@cases $fixture));
    };
    (@cases $fixture:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $fixture.await;
                $crate::testkit::cases::$case(&fixture).await;
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    /// Every `pub async fn` in a `cases*.rs` file is a case and must be in the suite's list
    /// exactly once (a listed name with no function is already a compile error).
    #[test]
    fn every_case_function_is_in_the_suite_list_once() {
        let listed: &[&str] = crate::conformance_suite!(@names);
        let unique: BTreeSet<&str> = listed.iter().copied().collect();
        assert_eq!(
            unique.len(),
            listed.len(),
            "a case is listed twice: {listed:?}"
        );
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/testkit");
        let mut defined = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).expect("read src/testkit") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if !(name.starts_with("cases") && name.ends_with(".rs")) {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read a cases file");
            for line in text.lines() {
                if let Some(rest) = line.trim_start().strip_prefix("pub async fn ") {
                    let case = rest.split(['(', '<']).next().unwrap_or_default().trim();
                    defined.insert(case.to_owned());
                }
            }
        }
        let missing: Vec<_> = defined
            .iter()
            .filter(|case| !unique.contains(case.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "cases not in conformance_suite!'s list (add them there): {missing:?}"
        );
    }
}
