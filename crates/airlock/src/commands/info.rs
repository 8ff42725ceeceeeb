//! ls, inspect, gc, completions.

use std::path::PathBuf;

use airlock_core::backend::is_running;
use airlock_core::spec::{RuntimeState, SandboxSpec};
use airlock_core::store::{Store, disk_usage, remove_tree};
use airlock_core::units::format_size;
use clap::CommandFactory;
use serde::Serialize;

use super::backend;
use crate::app::Failure;
use crate::cli::Cli;
use crate::ui;

#[derive(Serialize)]
struct Summary<'a> {
    name: &'a str,
    state: &'static str,
    isolation: &'static str,
    workspace: &'a PathBuf,
    mode: &'static str,
    created_at: u64,
}

fn state_of(store: &Store, name: &str) -> (Option<RuntimeState>, &'static str) {
    match store.read_runtime(name).ok().flatten() {
        Some(s) if is_running(&s) => (Some(s), "running"),
        Some(s) => (Some(s), "crashed"),
        None => (None, "stopped"),
    }
}

pub fn ls(json: bool) -> Result<i32, Failure> {
    let store = Store::open()?;
    let specs = store.list()?;
    let rows: Vec<(Summary, ())> = specs
        .iter()
        .map(|s| {
            (
                Summary {
                    name: &s.name,
                    state: state_of(&store, &s.name).1,
                    isolation: s.isolation.as_str(),
                    workspace: &s.workspace,
                    mode: s.mode.as_str(),
                    created_at: s.created_at,
                },
                (),
            )
        })
        .collect();
    if json {
        let list: Vec<&Summary> = rows.iter().map(|(s, _)| s).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    if rows.is_empty() {
        ui::note("no sandboxes yet; create one with `airlock run` or `airlock create --name NAME`");
        return Ok(0);
    }
    let w = rows
        .iter()
        .map(|(s, _)| s.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{}",
        ui::bold(&format!(
            "{:<w$}  {:<8}  {:<9}  {:<4}  {:<20}  WORKSPACE",
            "NAME", "STATE", "ISOLATION", "MODE", "CREATED"
        ))
    );
    for (s, _) in &rows {
        println!(
            "{:<w$}  {:<8}  {:<9}  {:<4}  {:<20}  {}",
            s.name,
            ui::state_colored(s.state),
            s.isolation,
            s.mode,
            ui::format_time(s.created_at),
            s.workspace.display()
        );
    }
    Ok(0)
}

#[derive(Serialize)]
struct Inspect<'a> {
    name: &'a str,
    state: &'static str,
    isolation: &'static str,
    workspace: &'a PathBuf,
    mode: &'static str,
    /// Workspace subdirectories kept out of copy-on-write (`--cache-dir`), relative.
    cache_dirs: &'a [PathBuf],
    user: &'a airlock_core::spec::SandboxUser,
    limits: &'a airlock_core::spec::Limits,
    limits_enforcement: Option<&'a str>,
    system: Option<&'a str>,
    /// How the sandbox's ids map to the host's.
    ids: Option<&'a str>,
    network: Option<&'a str>,
    /// The VMM, accelerator and guest kernel of a microVM sandbox.
    vm: Option<&'a str>,
    docker: bool,
    net_policy: &'a airlock_core::spec::NetworkSpec,
    env: Vec<&'a str>,
    created_at: u64,
    started_at: Option<u64>,
    init_pid: Option<i32>,
    supervisor_pid: Option<i32>,
    pids: Vec<i32>,
    memory_bytes: Option<u64>,
    cgroups: Vec<&'a PathBuf>,
    state_dir: PathBuf,
    disk_used_bytes: u64,
    ephemeral: bool,
    /// Host paths hidden inside a namespace sandbox (a VM sandbox has a root of its own).
    hidden: Option<airlock_ns::mounts::Masks>,
}

/// Host pids of every process in the sandbox's pid namespace.
fn sandbox_pids(init_pid: i32) -> Vec<i32> {
    let Ok(target) = std::fs::read_link(format!("/proc/{init_pid}/ns/pid")) else {
        return vec![];
    };
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/pid"))
                .ok()
                .as_ref()
                == Some(&target)
        })
        .collect();
    pids.sort_unstable();
    pids
}

fn memory_of(state: &RuntimeState) -> Option<u64> {
    state.cgroups.iter().find_map(|d| {
        ["memory.current", "memory.usage_in_bytes"]
            .iter()
            .find_map(|f| std::fs::read_to_string(d.join(f)).ok()?.trim().parse().ok())
    })
}

pub fn inspect(name: &str, json: bool) -> Result<i32, Failure> {
    let store = Store::open()?;
    let spec: SandboxSpec = store.load(name)?;
    let (state, label) = state_of(&store, name);
    let running = label == "running";
    let st = state.as_ref().filter(|_| running);
    let dir = store.paths.sandbox_dir(name);
    let info = Inspect {
        name: &spec.name,
        state: label,
        isolation: spec.isolation.as_str(),
        workspace: &spec.workspace,
        mode: spec.mode.as_str(),
        cache_dirs: &spec.cache_dirs,
        user: &spec.user,
        limits: &spec.limits,
        limits_enforcement: st.map(|s| s.limits_enforcement.as_str()),
        system: st.map(|s| s.system_mode.as_str()),
        ids: st.map(|s| s.ids.as_str()).filter(|s| !s.is_empty()),
        network: st.map(|s| s.network.as_str()),
        vm: st.and_then(|s| s.vm.as_deref()),
        docker: spec.docker,
        net_policy: &spec.network,
        env: spec.env.iter().map(|(k, _)| k.as_str()).collect(),
        created_at: spec.created_at,
        started_at: st.map(|s| s.started_at),
        init_pid: st.map(|s| s.init_pid),
        supervisor_pid: st.map(|s| s.supervisor_pid),
        pids: st.map(|s| sandbox_pids(s.init_pid)).unwrap_or_default(),
        memory_bytes: st.and_then(memory_of),
        cgroups: st.map(|s| s.cgroups.iter().collect()).unwrap_or_default(),
        disk_used_bytes: disk_usage(&dir),
        state_dir: dir,
        ephemeral: spec.ephemeral,
        hidden: (spec.isolation == airlock_core::spec::Isolation::Namespace)
            .then(|| airlock_ns::mounts::Masks::of_host().existing()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(0);
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!("{}  {}", ui::bold(info.name), ui::state_colored(info.state));
    println!(
        "  workspace     {} ({})",
        info.workspace.display(),
        info.mode
    );
    if !info.cache_dirs.is_empty() {
        let dirs: Vec<String> = info
            .cache_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        println!(
            "  cache dirs    {} (the sandbox's own, not copy-on-write, never applied)",
            dirs.join(", ")
        );
    }
    println!(
        "  isolation     {}{}",
        info.isolation,
        if info.docker {
            " (with a private Docker daemon)"
        } else {
            ""
        }
    );
    if let Some(v) = info.vm {
        println!("  vm            {v}");
    }
    println!(
        "  user          {} (uid {}, gid {}), home {}",
        info.user.name,
        info.user.uid,
        info.user.gid,
        info.user.home.display()
    );
    println!(
        "  limits        cpus {}, memory {}, pids {}, timeout {}",
        opt(info.limits.cpus.map(|c| c.to_string())),
        opt(info.limits.memory_bytes.map(format_size)),
        opt(info.limits.pids.map(|p| p.to_string())),
        opt(info.limits.timeout_secs.map(|t| format!("{t}s")))
    );
    if let Some(e) = info.limits_enforcement {
        println!("  enforced by   {e}");
    }
    if let Some(s) = info.system {
        println!("  system dirs   {s}");
    }
    if let Some(s) = info.ids {
        println!("  ids           {s}");
    }
    if let Some(n) = info.network {
        println!("  network       {n}");
    }
    println!(
        "  net policy    preset {}, allow [{}], deny [{}], host ports {:?}  (see `airlock policy ls --sandbox {}`)",
        info.net_policy.preset.as_deref().unwrap_or("none"),
        info.net_policy.allow.join(", "),
        info.net_policy.deny.join(", "),
        info.net_policy.host_ports,
        info.name
    );
    if let Some(h) = &info.hidden {
        println!(
            "  hidden        {} host files and {} directories, empty inside (credentials, keys, other services' state, logs; `--json` lists them)",
            h.files.len(),
            h.dirs.len() + h.private_dirs.len()
        );
    }
    if !info.env.is_empty() {
        println!("  env           {}", info.env.join(", "));
    }
    println!("  created       {}", ui::format_time(info.created_at));
    if let Some(t) = info.started_at {
        println!("  started       {}", ui::format_time(t));
    }
    if let (Some(i), Some(s)) = (info.init_pid, info.supervisor_pid) {
        println!(
            "  pids          init {i}, supervisor {s}, all {:?}",
            info.pids
        );
    }
    if let Some(m) = info.memory_bytes {
        println!("  memory used   {}", format_size(m));
    }
    println!(
        "  disk used     {} in {}",
        format_size(info.disk_used_bytes),
        info.state_dir.display()
    );
    Ok(0)
}

#[derive(Serialize)]
struct GcReport {
    removed: Vec<String>,
}

pub fn gc(json: bool) -> Result<i32, Failure> {
    let store = Store::open()?;
    let mut removed = Vec::new();
    let specs = store.list()?;
    for spec in &specs {
        let be = backend(spec.isolation)?;
        let _lock = store.lock(&spec.name)?;
        let state = store.read_runtime(&spec.name)?;
        let running = state.as_ref().is_some_and(is_running);
        let supervised = state.as_ref().is_some_and(|s| {
            airlock_core::store::process_is(s.supervisor_pid, s.supervisor_start_ticks)
        });
        if running && supervised {
            continue;
        }
        removed.extend(be.reap(&store, &spec.name, state.as_ref())?);
        if spec.ephemeral {
            store.remove_files(&spec.name)?;
            removed.push(format!(
                "sandbox {} (--rm, its command had ended)",
                spec.name
            ));
        }
    }
    // Guest images of the microVM tier that no longer match the agent or kernel.
    for img in airlock_vm::initramfs::prune(&store.paths.data.join("cache").join("vm"), 2) {
        removed.push(format!("unused guest image {}", img.display()));
    }
    for stale in store.stale_entries() {
        if store.remove_stale(&stale) {
            removed.push(format!("leftover {}", stale.display()));
        }
    }
    // Runtime directories and cgroups of sandboxes that no longer exist.
    let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    if let Ok(rd) = std::fs::read_dir(store.paths.runtime.join("sandboxes")) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !known.contains(&n.as_str()) {
                let be = backend(airlock_core::spec::Isolation::Namespace)?;
                let state = store.read_runtime(&n).ok().flatten();
                removed.extend(be.reap(&store, &n, state.as_ref())?);
                if remove_tree(&e.path()).is_ok() {
                    removed.push(format!("runtime directory {}", e.path().display()));
                }
            }
        }
    }
    for (n, dir) in airlock_ns::cgroups::existing(
        &airlock_ns::cgroups::detect(),
        &airlock_ns::cgroups::scope_for(&store.paths.data),
    ) {
        if !known.contains(&n.as_str()) {
            removed.extend(airlock_ns::cgroups::remove_dirs(&[dir]));
        }
    }
    removed.dedup();
    if json {
        println!("{}", serde_json::to_string_pretty(&GcReport { removed })?);
    } else if removed.is_empty() {
        ui::note("nothing to clean up");
    } else {
        for r in &removed {
            println!("removed {r}");
        }
    }
    Ok(0)
}

pub fn completions(shell: clap_complete::Shell) -> Result<i32, Failure> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "airlock", &mut std::io::stdout());
    Ok(0)
}

pub fn ports(name: &str, json: bool) -> Result<i32, Failure> {
    let store = Store::open()?;
    let spec = store.load(name)?;
    let (_, state) = state_of(&store, name);
    let running = state == "running";
    if json {
        let v: Vec<serde_json::Value> = spec
            .network
            .publish
            .iter()
            .map(|m| {
                serde_json::json!({
                    "host_ip": m.host_ip, "host_port": m.host_port,
                    "sandbox_port": m.sandbox_port, "active": running,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    if spec.network.publish.is_empty() {
        ui::note(&format!(
            "{name} publishes no ports (create it with -p HOST_PORT:SANDBOX_PORT)"
        ));
    }
    for m in &spec.network.publish {
        println!(
            "{m}{}",
            if running {
                ""
            } else {
                "  (inactive: the sandbox is not running)"
            }
        );
    }
    Ok(0)
}
