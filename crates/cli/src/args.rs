//! The `berth` command line: clap argument structs only, no behaviour.

use std::path::PathBuf;
use std::time::Duration;

use berth_engine_core::BackendKind;
use clap::{Args, Parser, Subcommand};

/// The opening line of `berth --help`: what berth is for, to a user.
const ABOUT: &str = "Run commands for AI agents and CI jobs in isolated, long-lived environments (containers on Docker, Jobs on Kubernetes) that are always cleaned up.";

/// berth: isolated, long-lived environments for agent and CI sessions, on Docker or Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about = ABOUT)]
pub struct Cli {
    /// Config file (default: ./berth.yaml, else ~/.config/berth/config.yaml, else built-in
    /// defaults).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Backend, overriding runner.backend: docker or kubernetes.
    #[arg(long, global = true, value_name = "NAME", value_parser = parse_backend)]
    pub backend: Option<BackendKind>,
    /// Docker daemon address, overriding docker.host: unix:///path, tcp://host:2376,
    /// ssh://[user@]host[:port].
    #[arg(long, global = true, value_name = "ADDRESS")]
    pub docker_host: Option<String>,
    /// A docker CLI context (`docker context ls`) to connect through, overriding
    /// docker.context; not with --docker-host.
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        conflicts_with = "docker_host"
    )]
    pub docker_context: Option<String>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the engine: reachable? which version? is the image there?
    Doctor(DoctorArgs),
    /// Start an environment and print its id; it runs until `berth down` or its lifetime.
    Up(UpArgs),
    /// Run a command in a running environment (with --detach: in the background, printing
    /// its id for `berth attach`, `berth ps` and `berth kill`).
    Exec(ExecArgs),
    /// Follow a detached command's output to its end; exit with the command's exit code.
    /// Any process may attach, as often as it likes, and gets the same bytes.
    Attach(AttachArgs),
    /// List an environment's detached commands: running, exited (with the code) or lost.
    Ps(PsArgs),
    /// Kill a detached command's whole process tree.
    Kill(KillArgs),
    /// Start an environment, run one command, stop it; exit with the command's exit code.
    Run(RunArgs),
    /// An interactive shell (a TTY) in an environment, or in a fresh one with --image.
    Shell(ShellArgs),
    /// Copy files: `berth cp LOCAL ENV:DIR` or `berth cp ENV:PATH LOCAL_DIR`.
    Cp(CpArgs),
    /// List berth's environments (with --runs: its batch runs and schedules).
    Ls(LsArgs),
    /// Stop and remove environments; cancel batch runs, remove schedules.
    Down(DownArgs),
    /// Run a command to completion in the configured image, detached from this process (a
    /// container on Docker, a Job on Kubernetes; with --schedule a CronJob): print its name
    /// and exit 0 at once, or with --watch follow its logs and exit with its exit code.
    Submit(SubmitArgs),
    /// Print a batch run's output (with -f: follow it until the run ends).
    Logs(LogsArgs),
    /// Say where a batch run is: pending, running, succeeded, failed (with the exit code),
    /// cancelled, deadline_exceeded, lost, or scheduled.
    Status(StatusArgs),
    /// Remove what berth left behind: environments whose owner process is gone, that have
    /// exited, or (with --older-than) that are old.
    Gc(GcArgs),
    /// Pull or build images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// The named remote builders of the config (`builders:`).
    #[command(subcommand)]
    Builder(BuilderCommand),
    /// Print the Kubernetes objects (Job, PVC) a session would create, as YAML, without
    /// creating anything; with --rbac the Role berth needs, with --server the manifests
    /// that deploy `berth serve` in the cluster; with --kind a Job, CronJob, Argo Workflow or
    /// CronWorkflow that runs a command to completion.
    Render(RenderArgs),
    /// Run the job agent: an HTTP API that runs jobs in environments of their own (SIGTERM
    /// drains, a second signal cancels, SIGHUP reloads the API keys).
    Serve(ServeArgs),
    /// Forward a local port to a port inside an environment until interrupted (Ctrl-C);
    /// --json prints {"address", "remote_port"} once listening.
    PortForward(PortForwardArgs),
    /// Change what a running environment may reach: --allow DEST (host:port, CIDR or
    /// CIDR:port, repeatable) with --dns for its resolver, --none for no network, --full for
    /// all of it. On Docker this needs berth on the daemon's host, as root.
    Network(NetworkArgs),
    /// Warm pools of the config (`pools:`): fill, list, drain.
    #[command(subcommand)]
    Pool(PoolCommand),
}

/// `berth render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// How the environment would be made.
    #[command(flatten)]
    pub env: EnvArgs,
    /// Print instead the least-privilege Role berth needs in its namespace, bound to this
    /// service account (default `berth`).
    #[arg(long, value_name = "SERVICE_ACCOUNT", num_args = 0..=1, default_missing_value = "berth")]
    pub rbac: Option<String>,
    /// With --rbac: the runs' engine whose permissions the Role also grants; `argo` adds
    /// the verbs on Argo's workflows and cronworkflows that `submit --engine argo` uses.
    #[arg(long, value_name = "ENGINE", default_value = "job", requires = "rbac")]
    pub engine: berth_runner::runs::RunEngine,
    /// Print instead the manifests that run `berth serve` in kubernetes.namespace: a
    /// ServiceAccount, Role and RoleBinding, a ConfigMap, a Deployment and a Service. The API
    /// keys come from a Secret you create: berth-server-api-keys, key `keys`. Not with --rbac,
    /// --image, --session or --name.
    #[arg(long, conflicts_with_all = ["rbac", "image", "session", "name"])]
    pub server: bool,
    /// Print instead an object that runs CMD (after `--`) to completion in the configured
    /// image, with what an environment gets (security profile, resources, service account,
    /// workspace, lifetime as the deadline, TTL): a batch/v1 job or cronjob, or an Argo
    /// workflow or cron-workflow. It is named <prefix>-<--name> (berth-main by default).
    /// Not with --rbac or --server.
    #[arg(
        long,
        value_name = "KIND",
        value_parser = ["job", "cronjob", "workflow", "cron-workflow"],
        conflicts_with_all = ["rbac", "server"]
    )]
    pub kind: Option<String>,
    /// With --kind cronjob or cron-workflow (required there): when it runs, a cron expression
    /// of five fields ("0 4 * * *").
    #[arg(long, value_name = "CRON", requires = "kind")]
    pub schedule: Option<String>,
    /// With --kind cronjob or cron-workflow: the IANA time zone of --schedule
    /// (Europe/Berlin); default the controller's (usually UTC).
    #[arg(long, value_name = "TZ", requires = "kind")]
    pub timezone: Option<String>,
    /// With --kind: an environment variable of the command, KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", requires = "kind")]
    pub run_env: Vec<String>,
    /// With --kind: the command's working directory.
    #[arg(short = 'w', long, requires = "kind")]
    pub workdir: Option<String>,
    /// With --kind: clone this repository into the workspace first (an init container of
    /// kubernetes.git_image), and start the command in it unless --workdir says otherwise.
    #[arg(long, value_name = "URL", requires = "kind")]
    pub git: Option<String>,
    /// With --git: the branch or tag (default: the repository's HEAD).
    #[arg(long, value_name = "BRANCH", requires = "git")]
    pub branch: Option<String>,
    /// With --kind: the command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD", requires = "kind")]
    pub command: Vec<String>,
}

/// `berth doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Image to look for (default: runner.image).
    #[arg(long)]
    pub image: Option<String>,
}

/// How an environment is made (`up`, `run`, `shell --image`).
#[derive(Debug, Args, Clone)]
pub struct EnvArgs {
    /// Image (default: runner.image from the config).
    #[arg(long)]
    pub image: Option<String>,
    /// Session id to label the environment with (default: a fresh random id).
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// Environment name within the session.
    #[arg(long, default_value = "main")]
    pub name: String,
    /// Claim the environment from this warm pool (`pools.NAME` in the config); when the
    /// pool is empty, start one cold from the pool's spec (and say so).
    #[arg(long, value_name = "NAME", conflicts_with = "image")]
    pub pool: Option<String>,
}

/// What a command runs with (`exec`, `run`).
#[derive(Debug, Args, Clone)]
pub struct CommandArgs {
    /// Extra environment variable for the command, KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory of the command.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// User of the command (uid, uid:gid or name).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Pass berth's standard input to the command.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Kill the command (its whole process tree) after this long (90s, 5m, 1h, or plain
    /// seconds); exit code 124.
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
}

/// `berth up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// How to make it.
    #[command(flatten)]
    pub env: EnvArgs,
}

/// `berth exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// How to run it.
    #[command(flatten)]
    pub cmd: CommandArgs,
    /// Start the command in the background under a supervisor in the environment, print its
    /// id and exit at once; it outlives this process (`berth attach` follows it). Its stdin
    /// is empty; no --timeout (`berth kill` ends it).
    #[arg(short = 'd', long, conflicts_with_all = ["interactive", "timeout"])]
    pub detach: bool,
    /// The environment id (from `berth up` or `berth ls`).
    pub environment: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// A detached command of an environment (`attach`, `kill`).
#[derive(Debug, Args)]
pub struct DetachedArgs {
    /// The environment id (as `berth exec` takes it).
    pub environment: String,
    /// The command id `berth exec --detach` printed.
    #[arg(value_name = "ID")]
    pub id: String,
}

/// `berth attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Which command.
    #[command(flatten)]
    pub command: DetachedArgs,
    /// Start at this byte of the command's stdout (default: its beginning).
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub stdout_offset: u64,
    /// Start at this byte of the command's stderr (default: its beginning).
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub stderr_offset: u64,
}

/// `berth ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// The environment id (as `berth exec` takes it).
    pub environment: String,
    /// Also remove the files of the commands that have ended (exited or lost); they are no
    /// longer listed or attachable.
    #[arg(long)]
    pub prune: bool,
}

/// `berth kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// Which command.
    #[command(flatten)]
    pub command: DetachedArgs,
}

/// `berth run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// How to make the environment.
    #[command(flatten)]
    pub env: EnvArgs,
    /// How to run the command.
    #[command(flatten)]
    pub cmd: CommandArgs,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `berth shell`.
#[derive(Debug, Args)]
pub struct ShellArgs {
    /// An environment to open the shell in; without it, a fresh one is started (and stopped
    /// afterwards) from --image.
    pub environment: Option<String>,
    /// Image for a fresh environment (default: runner.image).
    #[arg(long, conflicts_with = "environment")]
    pub image: Option<String>,
    /// User of the shell.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory of the shell.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// The shell program and arguments (default: sh).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `berth cp`.
#[derive(Debug, Args)]
pub struct CpArgs {
    /// Source: a local path (`.` or `DIR/.` for a directory's contents), or ENV:PATH.
    pub source: String,
    /// Destination: ENV:DIR (an existing directory); or a local path: into it when it is a
    /// directory, over it when it is a file, created when it does not exist.
    pub destination: String,
    /// Copying out: keep the archive's permission bits instead of masking them by the umask
    /// (set-uid, set-gid and sticky bits are stripped regardless).
    #[arg(long)]
    pub preserve_mode: bool,
    /// Copying out: accept file names holding control characters (newlines, escapes).
    #[arg(long)]
    pub allow_control_characters: bool,
    /// Copying out: most bytes written, e.g. 8Gi (default: config copy.max_bytes).
    #[arg(long, value_name = "SIZE")]
    pub max_bytes: Option<String>,
    /// Copying out: most archive entries (default: config copy.max_entries).
    #[arg(long, value_name = "N")]
    pub max_entries: Option<u64>,
    /// Copying out: longest path in bytes (default: config copy.max_path_bytes).
    #[arg(long, value_name = "N")]
    pub max_path_bytes: Option<u64>,
}

/// `berth ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only this session's environments.
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// List the workspace volumes (Kubernetes: claims) berth created instead.
    #[arg(long, conflicts_with = "runs")]
    pub volumes: bool,
    /// List the batch runs and schedules (with their last runs) instead.
    #[arg(long)]
    pub runs: bool,
}

/// `berth submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Image (default: runner.image from the config).
    #[arg(long)]
    pub image: Option<String>,
    /// Session id to label the run with (default: a fresh random id).
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// The run's name (a DNS label of up to 20 characters); its object is named
    /// <prefix>-<session>-<name>-<random>.
    #[arg(long, default_value = "run")]
    pub name: String,
    /// Follow the run's logs and exit with its exit code (read from the run's status).
    #[arg(long, conflicts_with = "schedule")]
    pub watch: bool,
    /// Run on a schedule instead (Kubernetes: a CronJob): five cron fields ("0 4 * * *").
    #[arg(long, value_name = "CRON")]
    pub schedule: Option<String>,
    // --engine (issue 14, Argo).
    /// What runs it: `job` (the backend's own: a container, or a Kubernetes Job/CronJob) or
    /// `argo` (an Argo Workflow/CronWorkflow; Kubernetes with Argo Workflows installed).
    #[arg(long, value_name = "ENGINE", default_value = "job")]
    pub engine: berth_runner::runs::RunEngine,
    /// Clone this repository into the run's workspace before CMD starts, and start CMD in
    /// it. Docker: checked out here (any URL or local path this machine reaches; token from
    /// BERTH_GIT_TOKEN) and copied in; Kubernetes: cloned by the pod (an init container of
    /// kubernetes.git_image, token from the Secret kubernetes.git_secret).
    #[arg(long, value_name = "URL")]
    pub git: Option<String>,
    /// With --git: the branch or tag (default: the repository's HEAD).
    #[arg(long, value_name = "BRANCH", requires = "git")]
    pub branch: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `berth logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Follow the output until the run ends; a dropped connection is resumed without
    /// losing or repeating a line.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The run's name (from `berth submit` or `berth ls --runs`).
    pub run: String,
}

/// `berth status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The run's name (from `berth submit` or `berth ls --runs`).
    pub run: String,
}

/// `berth down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// Environment ids, or names of batch runs (cancelled, kept for `berth status`) and
    /// schedules (removed).
    pub environments: Vec<String>,
    /// Every environment of this session.
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
}

/// `berth gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Also remove anything older than this (90s, 30m, 24h, 2d), whoever owns it.
    #[arg(long, value_name = "DURATION")]
    pub older_than: Option<String>,
    /// Only report what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Only this session's environments (and volumes).
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// Also remove workspace volumes (Kubernetes: claims) berth created that no environment
    /// uses; with --older-than, only older ones.
    #[arg(long)]
    pub volumes: bool,
}

/// `berth image`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Make sure an image is present, pulling it if the policy allows.
    Ensure(ImageEnsureArgs),
    /// Build an image from a directory holding a Dockerfile.
    Build(ImageBuildArgs),
}

/// `berth image ensure`.
#[derive(Debug, Args)]
pub struct ImageEnsureArgs {
    /// The image.
    pub image: String,
    /// always, if_not_present or never (default: runner.pull_policy).
    #[arg(long)]
    pub pull: Option<String>,
}

/// `berth image build`.
#[derive(Debug, Args)]
pub struct ImageBuildArgs {
    /// The tag of the result.
    #[arg(short = 't', long)]
    pub tag: String,
    /// The Dockerfile, relative to the context.
    #[arg(short = 'f', long, default_value = "Dockerfile")]
    pub file: String,
    /// Build argument KEY=VALUE (repeatable).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Build on this named builder (`builders:` in the config) instead of the configured
    /// Docker daemon.
    #[arg(long, value_name = "NAME")]
    pub builder: Option<String>,
    /// After the build, push the tag to the builder's registry (builders.NAME.registry);
    /// needs --builder.
    #[arg(long, requires = "builder")]
    pub push: bool,
    /// The context directory (its .dockerignore is honoured).
    pub context: PathBuf,
}

/// `berth builder`.
#[derive(Debug, Subcommand)]
pub enum BuilderCommand {
    /// List the builders: reachable or not, Docker version, OS/arch, CPUs, memory, free disk.
    Ls(BuilderLsArgs),
}

/// `berth pool`.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Start members until the pool has --size ready ones (default: its min_ready; never
    /// more than its max), replacing members idle past idle_ttl or of an older spec.
    Fill(PoolFillArgs),
    /// List the configured pools: ready members, others, min_ready, max.
    Ls(PoolLsArgs),
    /// Stop every unclaimed member of the pool (claimed ones belong to their sessions).
    Drain(PoolDrainArgs),
}

/// `berth pool fill`.
#[derive(Debug, Args)]
pub struct PoolFillArgs {
    /// The pool (`pools.NAME` in the config).
    pub name: String,
    /// How many ready members to have.
    #[arg(long, value_name = "N")]
    pub size: Option<usize>,
}

/// `berth pool ls`.
#[derive(Debug, Args)]
pub struct PoolLsArgs {}

/// `berth pool drain`.
#[derive(Debug, Args)]
pub struct PoolDrainArgs {
    /// The pool (`pools.NAME` in the config).
    pub name: String,
}

/// `berth builder ls`.
#[derive(Debug, Args)]
pub struct BuilderLsArgs {}

/// `--backend`: a backend's name, as `runner.backend` takes it.
fn parse_backend(text: &str) -> Result<BackendKind, String> {
    text.parse()
        .map_err(|_| format!("unknown backend {text:?}: expected docker or kubernetes"))
}

/// `--timeout`: a duration as `--older-than` takes it, plain seconds included.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    berth_runner::config::parse_duration(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn timeout_takes_durations_and_plain_seconds() {
        for (given, secs) in [("90s", 90), ("5m", 300), ("7", 7)] {
            let cli = Cli::try_parse_from(["berth", "run", "--timeout", given, "--", "true"])
                .unwrap_or_else(|e| panic!("{given}: {e}"));
            let Command::Run(run) = cli.command else {
                panic!("not run")
            };
            assert_eq!(run.cmd.timeout, Some(Duration::from_secs(secs)));
        }
        for bad in ["abc", "-1", "1.5", "0"] {
            assert!(
                Cli::try_parse_from(["berth", "run", "--timeout", bad, "--", "true"]).is_err(),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn backend_is_parsed_as_a_kind() {
        let cli = Cli::try_parse_from(["berth", "--backend", "k8s", "ls"]).expect("k8s");
        assert_eq!(cli.backend, Some(BackendKind::Kubernetes));
        let err = Cli::try_parse_from(["berth", "--backend", "dockr", "ls"]).expect_err("typo");
        assert!(
            err.to_string().contains("expected docker or kubernetes"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_flag_before_the_command_is_an_error() {
        let err =
            Cli::try_parse_from(["berth", "run", "--session", "s", "--bogusflag", "--", "pwd"])
                .expect_err("--bogusflag");
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
        // The command's own flags still pass, with or without `--`.
        for argv in [
            &["berth", "run", "ls", "-la"][..],
            &["berth", "run", "--", "ls", "-la"],
            &["berth", "exec", "env1", "--", "sh", "-c", "x"],
        ] {
            Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
    }
}

/// `berth serve`: flags override the config's `server:` section.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, host:port (server.listen; default 127.0.0.1:8080). A
    /// non-loopback address needs API keys.
    #[arg(long, value_name = "ADDRESS")]
    pub listen: Option<String>,
    /// File of API keys, one per line, read again on SIGHUP (server.api_keys_file).
    #[arg(long, value_name = "FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Jobs that run at once (server.max_concurrent_jobs).
    #[arg(long, value_name = "N")]
    pub max_concurrent_jobs: Option<u64>,
    /// Jobs that wait for a slot (server.max_queued_jobs).
    #[arg(long, value_name = "N")]
    pub max_queued_jobs: Option<u64>,
    /// How long running jobs may finish after SIGTERM (server.drain_timeout), like 60s.
    #[arg(long, value_name = "DURATION")]
    pub drain_timeout: Option<String>,
    /// TLS certificate chain, PEM (server.tls.cert); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key, PEM (server.tls.key); needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// `berth network`.
#[derive(Debug, Args)]
pub struct NetworkArgs {
    /// The environment id (as `berth exec` takes it).
    pub environment: String,
    /// Allow egress to DEST (`host:port`, `CIDR` or `CIDR:port`); repeatable. Everything
    /// not allowed is refused.
    #[arg(long = "allow", value_name = "DEST", conflicts_with_all = ["none", "full"])]
    pub allow: Vec<String>,
    /// With an allow list: allow DNS (port 53) to the environment's resolver too (off unless
    /// given here; a config file's allow list has it on by default).
    #[arg(long, conflicts_with_all = ["none", "full"])]
    pub dns: bool,
    /// No network at all (loopback only).
    #[arg(long, conflicts_with = "full")]
    pub none: bool,
    /// The ordinary, unrestricted network.
    #[arg(long)]
    pub full: bool,
}

/// `berth port-forward`.
#[derive(Debug, Args)]
pub struct PortForwardArgs {
    /// The environment id (as `berth exec` takes it).
    pub environment: String,
    /// `[LOCAL:]REMOTE`: the port inside, and the local one (0 or absent picks a free port).
    #[arg(value_name = "[LOCAL:]REMOTE")]
    pub ports: String,
    /// The local address to listen on.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub address: std::net::IpAddr,
}
