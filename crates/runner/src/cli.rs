//! The `berth` command line: clap argument structs only, no behaviour.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// berth: isolated, long-lived environments for agent and CI sessions, on Docker or Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about)]
pub struct Cli {
    /// Config file (default: ./berth.yaml, else ~/.config/berth/config.yaml, else built-in
    /// defaults).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Backend, overriding runner.backend: docker or kubernetes.
    #[arg(long, global = true, value_name = "NAME")]
    pub backend: Option<String>,
    /// Docker daemon address, overriding docker.host.
    #[arg(long, global = true, value_name = "ADDRESS")]
    pub docker_host: Option<String>,
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
    /// Run a command in a running environment.
    Exec(ExecArgs),
    /// Start an environment, run one command, stop it; exit with the command's exit code.
    Run(RunArgs),
    /// An interactive shell (a TTY) in an environment, or in a fresh one with --image.
    Shell(ShellArgs),
    /// Copy files: `berth cp LOCAL ENV:DIR` or `berth cp ENV:PATH LOCAL_DIR`.
    Cp(CpArgs),
    /// List berth's environments.
    Ls(LsArgs),
    /// Stop and remove environments.
    Down(DownArgs),
    /// Remove what berth left behind: environments whose owner process is gone, that have
    /// exited, or (with --older-than) that are old.
    Gc(GcArgs),
    /// Pull or build images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Print the Kubernetes objects (Job, PVC) a session would create, as YAML, without
    /// creating anything.
    Render(RenderArgs),
}

/// `berth render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// How the environment would be made.
    #[command(flatten)]
    pub env: EnvArgs,
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
    /// Kill the command (its whole process tree) after this many seconds; exit code 124.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
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
    /// The environment id (from `berth up` or `berth ls`).
    pub environment: String,
    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
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
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
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
    #[arg(long)]
    pub volumes: bool,
}

/// `berth down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// Environment ids.
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
    /// The context directory.
    pub context: PathBuf,
}
