//! The command-line surface. Names and flags are a contract (tests and scripts rely on them).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Quick start:
  airlock run                         # a shell in a sandbox of the current directory
  airlock run --rm -- make test       # one command, then throw the sandbox away
  airlock run --name dev -- npm ci    # a named sandbox that keeps its state
  airlock exec dev -- npm test        # run more in it
  airlock rm dev                      # delete it and everything in it

The agent sees the project at its host path (copy-on-write by default: the host copy is not
modified), a private home, and nothing else of the host. See `airlock COMMAND --help`.";

#[derive(Debug, Parser)]
#[command(
    name = "airlock",
    version,
    about = "Give an AI coding agent its own disposable system",
    long_about = "Airlock runs a command (typically a coding agent) in a sandbox: the project at the same path, \
copy-on-write; its own processes, users, network and hostname; no host secrets, sockets or other files; \
resource limits; and a lifecycle to keep, inspect or throw the whole thing away.",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parse the command line. clap builds every subcommand's arguments before it parses
    /// (~0.3 ms and ~80 page faults here, a twentieth of a cold `airlock run --rm -- true`), so
    /// the commands on the start path (`run`, `exec`) are first parsed against a tree holding only
    /// themselves, built from the same derived definitions (the variants add only help texts).
    /// Anything else, and anything that is not a clean parse (help, a usage error), goes through
    /// the whole tree, so what the user sees is the usual output.
    pub fn parse_args() -> Cli {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        Cli::parse_start_path(&args).unwrap_or_else(|| Cli::parse_from(args))
    }

    /// `run` and `exec` parsed against a tree of their own (see [`Cli::parse_args`]); `None`
    /// for anything else or anything but a clean parse.
    fn parse_start_path(args: &[std::ffi::OsString]) -> Option<Cli> {
        use clap::FromArgMatches as _;
        let only = match args.get(1).and_then(|a| a.to_str()) {
            Some("run") => RunArgs::augment_args(clap::Command::new("run")),
            Some("exec") => ExecArgs::augment_args(clap::Command::new("exec")),
            _ => return None,
        };
        let m = clap::Command::new("airlock")
            .subcommand(only)
            .try_get_matches_from(args)
            .ok()?;
        Cli::from_arg_matches(&m).ok()
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a sandbox for the workspace and run a command in it (default: your login shell)
    #[command(after_help = "Examples:
  airlock run                               # interactive shell, sandbox kept afterwards
  airlock run --rm -- cargo test            # one-shot: deleted when the command exits
  airlock run --name dev --memory 4g -- bash
  airlock run --workspace-mode ro -- grep -r TODO .
  airlock run claude                        # the Claude Code agent, its API allowed, key injected

Exit status: the command's own, 128+N when it was killed by signal N, 124 when --timeout
expired, 125 when Airlock itself failed before the command ran.")]
    Run(RunArgs),

    /// Create a named sandbox without starting it
    #[command(
        after_help = "Example:\n  airlock create dev --memory 4g --pids 512\n  airlock exec dev -- make"
    )]
    Create(CreateArgs),

    /// Start a stopped sandbox in the background (keeps its writable layers)
    #[command(after_help = "Example:\n  airlock start dev && airlock exec dev -- make")]
    Start { name: String },

    /// Stop a running sandbox: TERM everything inside, KILL after the grace period
    #[command(
        after_help = "Example:\n  airlock stop dev            # its files, home and installed packages are kept"
    )]
    Stop {
        name: String,
        /// Seconds to wait after TERM before KILL
        #[arg(long, short = 't', default_value_t = 10)]
        time: u64,
    },

    /// Delete sandboxes and everything in them (processes, mounts, cgroups, layers, state)
    #[command(
        after_help = "Example:\n  airlock rm dev scratch\n  airlock rm --force dev      # even if it is running"
    )]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
        /// Stop running sandboxes first instead of refusing
        #[arg(long, short = 'f')]
        force: bool,
    },

    /// Run a command in a sandbox (starting it if it is stopped)
    #[command(after_help = "Examples:
  airlock exec dev -- npm test
  airlock exec -t dev -- htop
  airlock exec -e DEBUG=1 -w /tmp dev -- ls
  airlock exec --root vmdev -- apt-get install -y jq   # a VM sandbox's own disk")]
    Exec(ExecArgs),

    /// Open an interactive login shell in a sandbox
    #[command(after_help = "Example:\n  airlock shell dev")]
    Shell { name: String },

    /// List sandboxes
    #[command(after_help = "Example:\n  airlock ls\n  airlock ls --json | jq '.[].name'")]
    Ls {
        #[arg(long)]
        json: bool,
    },

    /// Show everything about a sandbox: state, workspace, mode, limits, pids, disk use
    #[command(after_help = "Example:\n  airlock inspect dev --json")]
    Inspect {
        name: String,
        #[arg(long)]
        json: bool,
    },

    /// Clean up what crashed sandboxes left behind, and say what was removed
    #[command(after_help = "Example:\n  airlock gc")]
    Gc {
        #[arg(long)]
        json: bool,
    },

    /// Show what an agent could reach: secrets, credential files, daemon sockets, network, kernel surface
    #[command(after_help = "Examples:
  airlock audit                         # this machine, as you: what any agent you run can reach
  airlock audit --sandbox dev           # the same probe inside a sandbox
  airlock audit --compare               # host and a fresh default sandbox side by side
  airlock audit --json --fail-on high   # for CI: exit 1 if anything high is found

The probe never prints secret values (only names and redacted hints), never writes, and bounds
every network attempt. `--net-targets none` makes no connection or lookup beyond loopback.")]
    Audit(AuditArgs),

    /// List the ports a sandbox publishes on the host (-p)
    #[command(
        after_help = "Example:\n  airlock run --name web -p 8080:5173 -- npm run dev -- --host 127.0.0.1\n  airlock ports web"
    )]
    Ports {
        name: String,
        #[arg(long)]
        json: bool,
    },

    /// Print shell completions
    #[command(
        after_help = "Example:\n  airlock completions bash > ~/.local/share/bash-completion/completions/airlock"
    )]
    Completions { shell: clap_complete::Shell },

    #[command(flatten)]
    Review(crate::commands::review::ReviewCommand),

    #[command(flatten)]
    Net(crate::commands::policy::NetCommand),

    #[command(flatten)]
    Template(crate::commands::template::TemplateCommand),

    #[command(flatten)]
    Kit(crate::commands::kit::KitCommand),

    #[command(flatten)]
    Secret(crate::commands::secret::SecretCommand),

    /// Check what this host gives each isolation tier (namespaces, cgroups, network capture,
    /// QEMU, guest kernel, KVM or TCG) and say how to fix what is missing
    ///
    /// Example: airlock doctor --json
    Doctor {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },

    /// (internal) The audit probe, as run inside a sandbox: prints a JSON report
    #[command(name = "__probe", hide = true)]
    Probe(ProbeArgs),
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Run the probe inside this sandbox instead of on the host
    #[arg(long, value_name = "NAME", conflicts_with = "compare")]
    pub sandbox: Option<String>,

    /// Compare the host with a sandbox (default: a fresh default sandbox of this directory)
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "")]
    pub compare: Option<String>,

    /// Print the report as JSON (schema: crates/airlock-probe/schema/report.v1.json)
    #[arg(long)]
    pub json: bool,

    /// Exit with status 1 if a finding of this severity or worse is found
    #[arg(long, value_name = "high|medium|low")]
    pub fail_on: Option<String>,

    /// Non-loopback network targets: `builtin`, `none`, or a file listing them
    #[arg(long, value_name = "none|builtin|FILE", default_value = "builtin")]
    pub net_targets: String,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[arg(long, default_value = "none")]
    pub net_targets: String,
    #[arg(long)]
    pub sandbox: Option<String>,
    #[arg(long)]
    pub workspace: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ModeArg {
    Cow,
    Rw,
    Ro,
    Clone,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum IsolationArg {
    Namespace,
    Vm,
}

/// Options shared by `run` and `create`.
#[derive(Debug, Args, Clone)]
pub struct SandboxOpts {
    /// The project directory the agent works on [default: the current directory]
    #[arg(long, short = 'W', value_name = "PATH")]
    pub workspace: Option<PathBuf>,

    /// How the workspace is mounted: cow (copy-on-write: host untouched), rw (live), ro, or clone (a private git clone; fetch the agent's commits back with git)
    #[arg(long, value_enum, default_value = "cow", value_name = "MODE")]
    pub workspace_mode: ModeArg,

    /// Isolation tier: namespace (starts in milliseconds, shares the host kernel) or vm (its own
    /// kernel under QEMU, for untrusted work) [default: `isolation` in ~/.config/airlock/config.toml, else namespace]
    #[arg(long, value_enum)]
    pub isolation: Option<IsolationArg>,

    /// Run a private Docker daemon inside (needs --isolation vm and Docker installed on the host
    /// or in the template); `docker` then talks to it, never to the host's daemon
    #[arg(long)]
    pub docker: bool,

    /// CPU limit, e.g. 2 or 0.5
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,

    /// Memory limit, e.g. 512m or 4g
    #[arg(long, short = 'm', value_name = "SIZE")]
    pub memory: Option<String>,

    /// Maximum number of processes and threads [default: 4096]
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,

    /// Kill the sandbox after this long, e.g. 30s, 10m, 2h
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,

    /// Set an environment variable inside (KEY=VALUE, or KEY to copy it from here)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Read environment variables from a file of KEY=VALUE lines
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,

    /// Network preset: none (nothing; the default), balanced (model APIs, registries, code hosts), open (public internet)
    #[arg(long = "net", value_name = "PRESET", value_parser = ["none", "balanced", "open"])]
    pub net: Option<String>,

    /// Allow a destination: example.com, *.example.com, example.com:8443, 203.0.113.0/24
    #[arg(long, value_name = "RULE")]
    pub allow: Vec<String>,

    /// Deny a destination (deny always wins), same syntax as --allow
    #[arg(long, value_name = "RULE")]
    pub deny: Vec<String>,

    /// Make a host loopback service reachable inside as host.airlock.internal:PORT
    #[arg(long, value_name = "PORT")]
    pub host_port: Vec<u16>,

    /// Forward your SSH agent into the sandbox (off by default: its keys can then be used, not read, from inside)
    #[arg(long)]
    pub ssh_agent: bool,

    /// Start from a template saved with `airlock save` (warm caches, installed packages)
    #[arg(long, value_name = "TEMPLATE")]
    pub template: Option<String>,

    /// Keep a workspace subdirectory (relative to the workspace) out of copy-on-write, for build
    /// outputs and dependency trees (target, node_modules, .venv): the sandbox gets a directory of
    /// its own there, at native file speed, kept across runs, never in diff/review/apply; what
    /// the host has there is hidden inside. Repeatable; also `[workspace] cache_dirs` in the
    /// project's airlock.toml. In rw and ro workspaces the directory must exist on the host. It
    /// is a mount point inside: empty it with `rm -rf DIR/*`; removing DIR itself fails (EBUSY)
    #[arg(long = "cache-dir", value_name = "PATH")]
    pub cache_dir: Vec<PathBuf>,

    /// Publish a service started inside on the host: [HOST_IP:]HOST_PORT:SANDBOX_PORT (host IP default 127.0.0.1)
    #[arg(long = "publish", short = 'p', value_name = "[IP:]HOST:SANDBOX")]
    pub publish: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// An agent kit to run (claude, codex, gemini, opencode, aider, shell; see `airlock kit ls`);
    /// arguments after -- go to the agent
    #[arg(value_name = "KIT")]
    pub kit_name: Option<String>,

    /// Run CMD (after --) with a kit's environment, network policy and credentials
    #[arg(long, value_name = "KIT", conflicts_with = "kit_name")]
    pub kit: Option<String>,

    /// Name of the sandbox: created if new, reused if it exists [default: a generated name]
    #[arg(long)]
    pub name: Option<String>,

    /// Delete the sandbox when the command exits
    #[arg(long)]
    pub rm: bool,

    /// Do not allocate a terminal even if stdin is one
    #[arg(long, short = 'T')]
    pub no_tty: bool,

    #[command(flatten)]
    pub opts: SandboxOpts,

    /// The command and its arguments (after --)
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The sandbox's name (`airlock create NAME`, or `--name NAME`)
    #[arg(
        value_name = "NAME",
        required_unless_present = "name_flag",
        conflicts_with = "name_flag"
    )]
    pub name: Option<String>,

    /// The sandbox's name, as `--name` (same as the positional NAME)
    #[arg(long = "name", id = "name_flag", value_name = "NAME")]
    pub name_flag: Option<String>,

    #[command(flatten)]
    pub opts: SandboxOpts,
}

impl CreateArgs {
    /// The name, given either way (clap requires one of the two).
    pub fn sandbox_name(&self) -> Option<&str> {
        self.name.as_deref().or(self.name_flag.as_deref())
    }
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Allocate a terminal (window size and signals are forwarded)
    #[arg(long, short = 't')]
    pub tty: bool,

    /// Set an environment variable for this command
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Working directory inside [default: the workspace]
    #[arg(long = "workdir", short = 'w', value_name = "DIR")]
    pub workdir: Option<PathBuf>,

    /// Run as root inside: for a VM sandbox, the guest's root, e.g. to `apt-get install` into
    /// the sandbox's own disk (the host is never touched). In the namespace tier only when
    /// Airlock itself runs as root (a rootless sandbox has no root to give)
    #[arg(long)]
    pub root: bool,

    pub name: String,

    /// The command and its arguments (after --)
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start path's own parse gives what the whole tree gives, or leaves the case to it.
    #[test]
    fn the_start_path_parses_like_the_whole_tree() {
        let cases: &[&[&str]] = &[
            &["run"],
            &["run", "--rm", "--", "true"],
            &["run", "claude", "--", "--resume"],
            &[
                "run", "--name", "dev", "--memory", "4g", "-p", "8080:80", "--", "sh", "-c", "x",
            ],
            &[
                "run",
                "--kit",
                "shell",
                "-T",
                "--allow",
                "example.test",
                "--",
                "bash",
            ],
            &["run", "--workspace-mode", "ro", "--rm", "--", "ls"],
            &["exec", "dev", "--", "make"],
            &["exec", "-t", "-e", "A=1", "-w", "/tmp", "dev", "--", "ls"],
            &["run", "--help"],
            &["run", "--no-such-flag"],
            &["run", "--kit", "a", "b"],
            &["exec"],
            &["ls", "--json"],
        ];
        for case in cases {
            let args: Vec<std::ffi::OsString> = std::iter::once("airlock")
                .chain(case.iter().copied())
                .map(Into::into)
                .collect();
            let whole = Cli::try_parse_from(&args);
            match Cli::parse_start_path(&args) {
                Some(fast) => assert_eq!(
                    format!("{fast:?}"),
                    format!("{:?}", whole.expect("the whole tree accepts it too")),
                    "{case:?}"
                ),
                None => assert!(
                    whole.is_err() || !matches!(case[0], "run" | "exec"),
                    "{case:?}: the start path refused what the whole tree accepts"
                ),
            }
        }
    }

    /// `create NAME` and `create --name NAME` name the sandbox alike; neither, or both, is
    /// refused.
    #[test]
    fn create_takes_the_name_either_way() {
        let name = |args: &[&str]| match Cli::try_parse_from(
            std::iter::once("airlock").chain(args.iter().copied()),
        ) {
            Ok(Cli {
                command: Command::Create(a),
                ..
            }) => Ok(a.sandbox_name().map(str::to_string)),
            Ok(other) => panic!("{args:?} parsed as {other:?}"),
            Err(e) => Err(e.kind()),
        };
        assert_eq!(name(&["create", "dev"]), Ok(Some("dev".into())));
        assert_eq!(name(&["create", "--name", "dev"]), Ok(Some("dev".into())));
        assert_eq!(
            name(&["create", "dev", "--memory", "4g"]),
            Ok(Some("dev".into()))
        );
        assert!(name(&["create"]).is_err());
        assert!(name(&["create", "a", "--name", "b"]).is_err());
    }
}
