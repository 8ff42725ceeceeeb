//! `airlock policy …` and `airlock trust`: the network policy of sandboxes.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

use airlock_core::spec::{NetworkSpec, SandboxSpec};
use airlock_core::store::Store;
use airlock_net::{NetworkConfig, Policy, Rule, TrustStore};
use airlock_ns::net::{self, NetPaths};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::app::{Failure, fail};
use crate::{exit, ui};

#[derive(Debug, Subcommand)]
pub enum NetCommand {
    /// Inspect and change network policy: which destinations a sandbox may reach
    #[command(
        subcommand,
        after_help = "Examples:
  airlock policy check --net balanced api.anthropic.com    # would a new sandbox reach it?
  airlock policy allow --sandbox dev registry.npmjs.org    # applies to the running sandbox at once
  airlock policy ls --sandbox dev
  airlock policy log dev --follow"
    )]
    Policy(PolicyCommand),

    /// Trust a project's airlock.toml so it may widen the network policy (remembered by content hash)
    #[command(
        after_help = "Example:\n  airlock trust                 # trusts ./airlock.toml as it is now\n  airlock trust --revoke        # forget it\n\nAn untrusted project file can only narrow the policy: a cloned repository cannot open the network for itself. Editing the file revokes its trust."
    )]
    Trust {
        /// The project file [default: ./airlock.toml]
        path: Option<PathBuf>,
        #[arg(long)]
        revoke: bool,
    },
}

#[derive(Debug, Args)]
pub struct PolicyScope {
    /// The sandbox whose policy to use or change
    #[arg(long, value_name = "NAME")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the verdict for HOST[:PORT] and the rule that decided (exit 0 allowed, 1 denied); makes no connection
    Check {
        #[command(flatten)]
        scope: PolicyScope,
        /// Preset when no --sandbox is given: none, balanced, open
        #[arg(long = "net", value_name = "PRESET", value_parser = ["none", "balanced", "open"])]
        net: Option<String>,
        #[arg(long, value_name = "RULE")]
        allow: Vec<String>,
        #[arg(long, value_name = "RULE")]
        deny: Vec<String>,
        /// HOST, HOST:PORT, an IP address or [IPv6]:PORT (default port 443)
        destination: String,
    },
    /// Show the effective policy: preset, rules and where each comes from
    Ls {
        #[command(flatten)]
        scope: PolicyScope,
        #[arg(long)]
        json: bool,
    },
    /// Allow a destination in a sandbox (takes effect while it runs)
    Allow {
        #[command(flatten)]
        scope: PolicyScope,
        rule: String,
    },
    /// Deny a destination in a sandbox (deny always wins)
    Deny {
        #[command(flatten)]
        scope: PolicyScope,
        rule: String,
    },
    /// Remove a rule added with `policy allow` or `policy deny`
    Rm {
        #[command(flatten)]
        scope: PolicyScope,
        rule: String,
    },
    /// Show the sandbox's network decisions: time, destination, path, verdict, rule
    Log {
        name: String,
        /// Keep printing new decisions as they happen
        #[arg(long, short = 'f')]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
}

pub fn dispatch(c: NetCommand) -> Result<i32, Failure> {
    match c {
        NetCommand::Trust { path, revoke } => trust(path, revoke),
        NetCommand::Policy(p) => match p {
            PolicyCommand::Check {
                scope,
                net,
                allow,
                deny,
                destination,
            } => check(scope, net, allow, deny, &destination),
            PolicyCommand::Ls { scope, json } => ls(scope, json),
            PolicyCommand::Allow { scope, rule } => edit(scope, &rule, Edit::Allow),
            PolicyCommand::Deny { scope, rule } => edit(scope, &rule, Edit::Deny),
            PolicyCommand::Rm { scope, rule } => edit(scope, &rule, Edit::Remove),
            PolicyCommand::Log { name, follow, json } => log(&name, follow, json),
        },
    }
}

fn policy_failure(e: impl std::fmt::Display) -> Failure {
    fail(exit::USAGE, e)
}

fn require_sandbox(scope: &PolicyScope, what: &str) -> Result<String, Failure> {
    scope
        .sandbox
        .clone()
        .ok_or_else(|| fail(exit::USAGE, format!("`airlock policy {what}` needs --sandbox NAME (rules for new sandboxes go in ~/.config/airlock/config.toml [network])")))
}

/// The policy of a sandbox, or of a would-be sandbox of the current directory with these flags.
fn effective(
    store: &Store,
    scope: &PolicyScope,
    net: Option<String>,
    allow: Vec<String>,
    deny: Vec<String>,
) -> Result<(Policy, Option<SandboxSpec>), Failure> {
    if let Some(name) = &scope.sandbox {
        let spec = store.load(name)?;
        let p = net::build_policy(&spec, &net::paths(store, &spec))?;
        return Ok((p, Some(spec)));
    }
    for r in allow.iter().chain(&deny) {
        r.parse::<Rule>()
            .map_err(|e| policy_failure(format!("invalid rule {r:?}: {e}")))?;
    }
    let cwd = std::env::current_dir().map_err(|e| fail(exit::FAILURE, e))?;
    let paths = NetPaths {
        sandbox_rules: PathBuf::from("/nonexistent/airlock-no-sandbox-rules"),
        log: PathBuf::new(),
        user_config: net::user_config_path(),
        project: cwd.join("airlock.toml"),
        trust: net::trust_store_path(store),
    };
    let mut spec = crate::commands::lifecycle::placeholder_spec(cwd);
    spec.network = NetworkSpec {
        publish: vec![],
        preset: net,
        allow,
        deny,
        host_ports: vec![],
    };
    Ok((net::build_policy(&spec, &paths)?, None))
}

fn check(
    scope: PolicyScope,
    net: Option<String>,
    allow: Vec<String>,
    deny: Vec<String>,
    destination: &str,
) -> Result<i32, Failure> {
    let store = Store::open()?;
    let (policy, _) = effective(&store, &scope, net, allow, deny)?;
    let (host, port) =
        airlock_net::policy::parse_destination(destination, 443).map_err(policy_failure)?;
    let v = policy.check(&host, port);
    for w in policy.warnings() {
        ui::warn(w);
    }
    let word = if v.allowed { "allow" } else { "deny" };
    println!("{word} {host}:{port}  ({})", v.rule);
    Ok(if v.allowed { 0 } else { exit::FAILURE })
}

#[derive(Serialize)]
struct Listing {
    preset: String,
    allow: Vec<(String, String)>,
    deny: Vec<(String, String)>,
    host_ports: Vec<u16>,
    warnings: Vec<String>,
}

fn ls(scope: PolicyScope, json: bool) -> Result<i32, Failure> {
    let store = Store::open()?;
    let (p, _) = effective(&store, &scope, None, vec![], vec![])?;
    let l = Listing {
        preset: p.preset().to_string(),
        allow: p
            .allow_rules()
            .iter()
            .map(|r| (r.rule.to_string(), r.source.to_string()))
            .collect(),
        deny: p
            .deny_rules()
            .iter()
            .map(|r| (r.rule.to_string(), r.source.to_string()))
            .collect(),
        host_ports: p.exposures().iter().map(|e| e.port).collect(),
        warnings: p.warnings().to_vec(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&l)?);
        return Ok(0);
    }
    println!("preset  {}", l.preset);
    for (r, s) in &l.allow {
        println!("allow   {r}  ({s})");
    }
    for (r, s) in &l.deny {
        println!("deny    {r}  ({s})");
    }
    for port in &l.host_ports {
        println!("expose  host.airlock.internal:{port} -> host 127.0.0.1:{port}");
    }
    for w in &l.warnings {
        ui::warn(w);
    }
    Ok(0)
}

enum Edit {
    Allow,
    Deny,
    Remove,
}

fn edit(scope: PolicyScope, rule: &str, how: Edit) -> Result<i32, Failure> {
    let what = match how {
        Edit::Allow => "allow",
        Edit::Deny => "deny",
        Edit::Remove => "rm",
    };
    let name = require_sandbox(&scope, what)?;
    let store = Store::open()?;
    let spec = store.load(&name)?;
    let rule: Rule = rule
        .parse()
        .map_err(|e| policy_failure(format!("invalid rule {rule:?}: {e}")))?;
    let _lock = store.lock(&name)?;
    let paths = net::paths(&store, &spec);
    let mut cfg = NetworkConfig::load(&paths.sandbox_rules)
        .map_err(policy_failure)?
        .unwrap_or_default();
    let changed = match how {
        Edit::Allow => cfg.add_allow(rule.clone()),
        Edit::Deny => cfg.add_deny(rule.clone()),
        Edit::Remove => cfg.remove(&rule),
    };
    if !changed {
        ui::note(&format!("nothing to change: {what} {rule} in {name}"));
        return Ok(0);
    }
    cfg.save(&paths.sandbox_rules)
        .map_err(|e| fail(exit::FAILURE, e))?;
    ui::note(&format!(
        "{what} {rule} in sandbox {name} (a running sandbox picks it up within a second)"
    ));
    Ok(0)
}

fn log(name: &str, follow: bool, json: bool) -> Result<i32, Failure> {
    let store = Store::open()?;
    let spec = store.load(name)?;
    let path = net::paths(&store, &spec).log;
    let print = |d: &airlock_net::Decision| {
        if json {
            println!("{}", serde_json::to_string(d).unwrap_or_default());
        } else {
            println!("{}", airlock_net::log::format_human(d));
        }
    };
    if follow {
        if !path.exists() {
            std::fs::write(&path, b"")
                .map_err(|e| fail(exit::FAILURE, format!("{}: {e}", path.display())))?;
        }
        airlock_net::log::follow(&path, true, Duration::from_millis(200), |d| {
            print(d);
            ControlFlow::Continue(())
        })
        .map_err(|e| fail(exit::FAILURE, e))?;
        return Ok(0);
    }
    match airlock_net::log::read_log(&path) {
        Ok(ds) => ds.iter().for_each(print),
        Err(_) if !path.exists() => {}
        Err(e) => return Err(fail(exit::FAILURE, e)),
    }
    Ok(0)
}

fn trust(path: Option<PathBuf>, revoke: bool) -> Result<i32, Failure> {
    let store = Store::open()?;
    let file = path.unwrap_or_else(|| PathBuf::from("airlock.toml"));
    let tpath = net::trust_store_path(&store);
    airlock_core::store::mkdir_private(&store.paths.data)?;
    let mut t = TrustStore::load(&tpath).map_err(|e| fail(exit::FAILURE, e))?;
    if revoke {
        let was = t.untrust(&file).map_err(|e| fail(exit::USAGE, e))?;
        ui::note(&format!(
            "{}: {}",
            file.display(),
            if was {
                "no longer trusted"
            } else {
                "was not trusted"
            }
        ));
    } else {
        let hash = t.trust(&file).map_err(|e| fail(exit::USAGE, e))?;
        ui::note(&format!(
            "trusted {} (sha256 {hash}); editing it revokes the trust",
            file.display()
        ));
    }
    Ok(0)
}
