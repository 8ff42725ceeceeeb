//! run, create, start, stop, rm, exec, shell.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_core::backend::{Backend, ExecRequest, Outcome, is_running};
use airlock_core::spec::{Isolation, Limits, NetworkSpec, SandboxSpec, WorkspaceMode, now_secs};
use airlock_core::store::Store;
use airlock_core::units;
use anyhow::Context;

use super::backend;
use crate::app::{Failure, fail};
use crate::cli::{CreateArgs, ExecArgs, IsolationArg, ModeArg, RunArgs, SandboxOpts};
use crate::{exit, ui, user};

/// Default cap on processes + threads: a fork bomb stops here.
const DEFAULT_PIDS: u64 = 4096;

fn parse_env(items: &[String], files: &[PathBuf]) -> Result<Vec<(String, String)>, Failure> {
    let mut out = Vec::new();
    let mut push = |k: &str, v: String, origin: &str| -> Result<(), Failure> {
        if k.is_empty() || k.contains('\0') || v.contains('\0') {
            return Err(fail(
                exit::USAGE,
                format!("invalid environment variable {origin}: expected KEY=VALUE"),
            ));
        }
        out.push((k.to_string(), v));
        Ok(())
    };
    for f in files {
        let text = std::fs::read_to_string(f)
            .map_err(|e| fail(exit::USAGE, format!("--env-file {}: {e}", f.display())))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (k, v) = line.split_once('=').ok_or_else(|| {
                fail(
                    exit::USAGE,
                    format!(
                        "--env-file {} line {}: expected KEY=VALUE",
                        f.display(),
                        i + 1
                    ),
                )
            })?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
                .unwrap_or(v);
            push(
                k.trim(),
                v.to_string(),
                &format!("in {} line {}", f.display(), i + 1),
            )?;
        }
    }
    for item in items {
        match item.split_once('=') {
            Some((k, v)) => push(k, v.to_string(), &format!("{item:?}"))?,
            // `-e KEY` copies the variable from here, as docker does.
            None => match std::env::var(item) {
                Ok(v) => push(item, v, &format!("{item:?}"))?,
                Err(_) => {
                    return Err(fail(
                        exit::USAGE,
                        format!("-e {item}: no such variable here; use -e {item}=VALUE"),
                    ));
                }
            },
        }
    }
    Ok(out)
}

fn limits(opts: &SandboxOpts) -> Result<Limits, Failure> {
    Ok(Limits {
        cpus: opts.cpus.as_deref().map(units::parse_cpus).transpose()?,
        memory_bytes: opts.memory.as_deref().map(units::parse_size).transpose()?,
        pids: Some(match opts.pids {
            Some(0) => return Err(fail(exit::USAGE, "--pids must be at least 1")),
            Some(n) => n,
            None => DEFAULT_PIDS,
        }),
        timeout_secs: opts
            .timeout
            .as_deref()
            .map(units::parse_duration)
            .transpose()?
            .map(|d| d.as_secs_f64()),
    })
}

/// The workspace must exist, and must not expose what the sandbox exists to hide.
fn workspace(opts: &SandboxOpts, store: &Store, home: &Path) -> Result<PathBuf, Failure> {
    let raw = match &opts.workspace {
        Some(p) => p.clone(),
        None => std::env::current_dir()
            .context("cannot read the current directory; pass --workspace PATH")?,
    };
    let ws = std::fs::canonicalize(&raw).map_err(|e| {
        fail(
            exit::USAGE,
            format!(
                "workspace {}: {e}; pass an existing directory with --workspace",
                raw.display()
            ),
        )
    })?;
    if !ws.is_dir() {
        return Err(fail(
            exit::USAGE,
            format!("workspace {} is not a directory", ws.display()),
        ));
    }
    let refuse = |why: String| {
        Err(fail(
            exit::USAGE,
            format!("refusing workspace {}: {why}", ws.display()),
        ))
    };
    if ws == Path::new("/") {
        return refuse("it is the whole filesystem; run airlock from a project directory or pass --workspace DIR".into());
    }
    let home = std::fs::canonicalize(home).unwrap_or_else(|_| home.to_path_buf());
    if home.starts_with(&ws) {
        return refuse(format!(
            "it contains your home directory ({}), so the agent would see ~/.ssh and every credential; run airlock from a project directory or pass --workspace DIR",
            home.display()
        ));
    }
    for state in [&store.paths.data, &store.paths.runtime] {
        let state = std::fs::canonicalize(state).unwrap_or_else(|_| state.clone());
        if state.starts_with(&ws) || ws.starts_with(&state) {
            return refuse(format!(
                "it overlaps Airlock's own state in {}",
                state.display()
            ));
        }
    }
    for sys in [
        "/usr", "/etc", "/proc", "/sys", "/dev", "/boot", "/var", "/run",
    ] {
        if ws == Path::new(sys) {
            return refuse("it is a system directory".into());
        }
    }
    Ok(ws)
}

/// Network options, validated now so a bad rule creates nothing.
fn network_spec(opts: &SandboxOpts) -> Result<NetworkSpec, Failure> {
    for r in opts.allow.iter().chain(&opts.deny) {
        r.parse::<airlock_net::Rule>()
            .map_err(|e| fail(exit::USAGE, format!("invalid network rule {r:?}: {e}")))?;
    }
    if let Some(p) = opts.host_port.iter().find(|p| **p == 0) {
        return Err(fail(
            exit::USAGE,
            format!("--host-port {p}: a port is 1-65535"),
        ));
    }
    let mut publish: Vec<airlock_core::spec::PortMap> = Vec::new();
    for p in &opts.publish {
        let m = airlock_core::spec::PortMap::parse(p).map_err(|e| fail(exit::USAGE, e))?;
        if publish
            .iter()
            .any(|o| o.host_port == m.host_port && o.host_ip == m.host_ip)
        {
            return Err(fail(
                exit::USAGE,
                format!("-p {p}: host port {} is published twice", m.host_port),
            ));
        }
        if !m.host_ip.is_loopback() {
            ui::warn(&format!(
                "-p {p}: {} is reachable from other machines, not only this one",
                m.host_ip
            ));
        }
        publish.push(m);
    }
    Ok(NetworkSpec {
        publish,
        preset: opts.net.clone(),
        allow: opts.allow.clone(),
        deny: opts.deny.clone(),
        host_ports: opts.host_port.clone(),
    })
}

/// A spec for a sandbox that does not exist (to compute the policy a new one would get).
pub fn placeholder_spec(workspace: PathBuf) -> SandboxSpec {
    SandboxSpec {
        name: "new".into(),
        workspace,
        mode: WorkspaceMode::Cow,
        isolation: Isolation::Namespace,
        limits: Limits::default(),
        env: vec![],
        user: user::invoking_user(),
        network: NetworkSpec::default(),
        template: None,
        kit: None,
        credentials: vec![],
        ssh_agent: false,
        docker: false,
        cache_dirs: vec![],
        ephemeral: true,
        created_at: 0,
    }
}

/// `isolation = "namespace" | "vm"` in the user's config.toml, else the namespace tier.
fn configured_isolation() -> Result<Isolation, Failure> {
    let Some(path) = airlock_ns::net::user_config_path() else {
        return Ok(Isolation::Namespace);
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Isolation::Namespace);
    };
    let value: toml::Table = toml::from_str(&text).map_err(|e| {
        fail(
            exit::USAGE,
            format!("{}: not valid TOML: {e}", path.display()),
        )
    })?;
    match value.get("isolation").map(|v| v.as_str()) {
        None => Ok(Isolation::Namespace),
        Some(Some("namespace")) => Ok(Isolation::Namespace),
        Some(Some("vm")) => Ok(Isolation::Vm),
        Some(_) => Err(fail(
            exit::USAGE,
            format!(
                "{}: `isolation` must be \"namespace\" or \"vm\"",
                path.display()
            ),
        )),
    }
}

pub fn build_spec(
    name: String,
    opts: &SandboxOpts,
    ephemeral: bool,
    store: &Store,
) -> Result<SandboxSpec, Failure> {
    units::validate_name(&name)?;
    let user = user::invoking_user();
    let isolation = match opts.isolation {
        Some(IsolationArg::Namespace) => Isolation::Namespace,
        Some(IsolationArg::Vm) => Isolation::Vm,
        None => configured_isolation()?,
    };
    if opts.ssh_agent && isolation == Isolation::Vm {
        return Err(fail(
            exit::USAGE,
            "--ssh-agent is not available with --isolation vm (a unix socket cannot cross into the guest); use the namespace tier, or a deploy key inside the VM",
        ));
    }
    if opts.docker && isolation != Isolation::Vm {
        return Err(fail(
            exit::USAGE,
            "--docker needs --isolation vm: a Docker daemon needs its own kernel (the namespace tier never exposes the host's daemon)",
        ));
    }
    let workspace = workspace(opts, store, &user.home)?;
    let mode = match opts.workspace_mode {
        ModeArg::Cow => WorkspaceMode::Cow,
        ModeArg::Rw => WorkspaceMode::Rw,
        ModeArg::Ro => WorkspaceMode::Ro,
        ModeArg::Clone => WorkspaceMode::Clone,
    };
    let mut wanted: Vec<(PathBuf, String)> = opts
        .cache_dir
        .iter()
        .map(|d| (d.clone(), "--cache-dir".to_string()))
        .collect();
    wanted.extend(project_cache_dirs(&workspace)?);
    let cache_dirs = cache_dirs(&wanted, &workspace, mode)?;
    Ok(SandboxSpec {
        workspace,
        mode,
        cache_dirs,
        isolation,
        limits: limits(opts)?,
        env: parse_env(&opts.env, &opts.env_file)?,
        network: network_spec(opts)?,
        kit: None,
        credentials: vec![],
        ssh_agent: {
            if opts.ssh_agent {
                ui::warn(
                    "--ssh-agent: programs in the sandbox can use (not read) your SSH keys to log in wherever its network policy lets them, for as long as it runs",
                );
            }
            opts.ssh_agent
        },
        template: match &opts.template {
            Some(t) => Some(super::template::require(store, t)?),
            None => None,
        },
        user,
        docker: opts.docker,
        ephemeral,
        created_at: now_secs(),
        name,
    })
}

/// `p` with its longest existing ancestor resolved (symlinks, `..`): what the path names on the
/// host even where its last components do not exist yet.
fn canonical_prefix(p: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut at = p;
    loop {
        if let Ok(c) = std::fs::canonicalize(at) {
            return rest.iter().rev().fold(c, |acc, n| acc.join(n));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                at = parent;
            }
            _ => return p.to_path_buf(),
        }
    }
}

/// `cache_dirs` of the `[workspace]` table in the project's `airlock.toml`, e.g.
/// `cache_dirs = ["target", "node_modules"]`, named on stderr when there are any. Honoured
/// without `airlock trust`: a cache directory changes nothing of the host and opens nothing; at
/// worst it keeps what the agent writes there out of review, which the note and `inspect` show.
fn project_cache_dirs(ws: &Path) -> Result<Vec<(PathBuf, String)>, Failure> {
    let path = ws.join("airlock.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => {
            return Err(fail(
                exit::USAGE,
                format!("{}: cannot read it: {e}", path.display()),
            ));
        }
    };
    let bad = |why: String| fail(exit::USAGE, format!("{}: {why}", path.display()));
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| bad(format!("not valid TOML: {e}")))?;
    let Some(section) = table.get("workspace") else {
        return Ok(vec![]);
    };
    let section = section
        .as_table()
        .ok_or_else(|| bad("[workspace] must be a table".into()))?;
    for key in section.keys().filter(|k| *k != "cache_dirs") {
        ui::warn(&format!(
            "{}: [workspace] {key} is not a setting Airlock knows (it knows cache_dirs); ignored",
            path.display()
        ));
    }
    let Some(list) = section.get("cache_dirs") else {
        return Ok(vec![]);
    };
    let dirs: Vec<PathBuf> = list
        .as_array()
        .and_then(|a| {
            a.iter()
                .map(|v| v.as_str().map(PathBuf::from))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| {
            bad("[workspace] cache_dirs must be a list of paths, e.g. [\"target\"]".into())
        })?;
    if !dirs.is_empty() {
        let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        ui::note(&format!(
            "cache directories from {}: {} (kept out of copy-on-write and review)",
            path.display(),
            shown.join(", ")
        ));
    }
    let source = format!("cache_dirs of {}", path.display());
    Ok(dirs.into_iter().map(|d| (d, source.clone())).collect())
}

/// `--cache-dir` paths as normalized workspace-relative paths, checked before anything is
/// created: inside the workspace, none inside another, in a directory the workspace has, and
/// where the host has something at the path it is a directory reached through directories (the
/// sandbox checks again at every start, against its own view). Only the cache directory itself
/// may be missing (and only in cow and clone workspaces, where the sandbox makes it in its own
/// layer): nothing else of the layer is made for it, so review shows nothing of it.
fn cache_dirs(
    raw: &[(PathBuf, String)],
    ws: &Path,
    mode: WorkspaceMode,
) -> Result<Vec<PathBuf>, Failure> {
    let mut out: Vec<PathBuf> = Vec::new();
    for (p, source) in raw {
        let bad =
            |p: &Path, why: String| fail(exit::USAGE, format!("{source} {}: {why}", p.display()));
        // The workspace is canonical; an absolute path may reach it through a symlink. Then the
        // same normalization as every other workspace path the user gives (`diff`, `apply`).
        let given = if p.is_absolute() {
            canonical_prefix(p)
        } else {
            p.clone()
        };
        let clean = airlock_review::user_rel(&given, ws).map_err(|e| {
            bad(
                p,
                format!(
                    "{e}; name a directory inside the workspace {}",
                    ws.display()
                ),
            )
        })?;
        if clean.to_str().is_none() {
            return Err(bad(
                p,
                "is not UTF-8; name a directory whose name is".into(),
            ));
        }
        if clean.as_os_str().is_empty() {
            return Err(bad(
                p,
                "is the workspace itself; name a subdirectory of it, e.g. --cache-dir target"
                    .into(),
            ));
        }
        if clean.components().any(|c| c.as_os_str() == ".git") {
            return Err(bad(
                p,
                "is in .git, the repository itself, which review and apply must see".into(),
            ));
        }
        if out.contains(&clean) {
            // Given twice (a flag and the project file): once is enough.
            continue;
        }
        if let Some(o) = out
            .iter()
            .find(|o| o.starts_with(&clean) || clean.starts_with(o))
        {
            return Err(bad(
                p,
                format!(
                    "overlaps --cache-dir {}; give each directory once, none inside another",
                    o.display()
                ),
            ));
        }
        // What the host has on the way must be directories (the clone mode's workspace is the
        // sandbox's own clone, checked at start).
        if mode != WorkspaceMode::Clone {
            let mut at = ws.to_path_buf();
            for c in clean.components() {
                at.push(c);
                match std::fs::symlink_metadata(&at) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(bad(
                            p,
                            format!(
                                "{} is a symlink or a file; a cache directory must be a directory",
                                at.display()
                            ),
                        ));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        if at != ws.join(&clean) {
                            return Err(bad(
                                p,
                                format!(
                                    "{} does not exist; the directory a cache directory is in must exist in the workspace",
                                    at.display()
                                ),
                            ));
                        }
                        if matches!(mode, WorkspaceMode::Rw | WorkspaceMode::Ro) {
                            return Err(bad(
                                p,
                                format!(
                                    "{} does not exist; in a {} workspace Airlock creates nothing on the host, so create it first (mkdir -p {}) or use the default cow mode",
                                    at.display(),
                                    mode.as_str(),
                                    ws.join(&clean).display()
                                ),
                            ));
                        }
                        break;
                    }
                    Err(e) => return Err(bad(p, format!("{}: {e}", at.display()))),
                }
            }
        }
        out.push(clean);
    }
    Ok(out)
}

pub fn create_sandbox(store: &Store, spec: &SandboxSpec, be: &dyn Backend) -> Result<(), Failure> {
    be.preflight()?;
    store.create(spec, |dir| be.prepare(spec, dir))?;
    if spec.mode == WorkspaceMode::Clone && !spec.ephemeral {
        let clone = store.paths.sandbox_dir(&spec.name).join("clone");
        ui::note(&format!(
            "sandbox {n} works on its own clone of this repository; bring its commits back with:\n  git -C {ws} fetch {c} '+refs/heads/*:refs/remotes/airlock-{n}/*'",
            n = spec.name,
            ws = spec.workspace.display(),
            c = clone.display()
        ));
    }
    Ok(())
}

fn open_store() -> Result<Store, Failure> {
    Ok(Store::open()?)
}

/// Kill what a crashed supervisor left, so the sandbox can start again.
fn reap_stale(store: &Store, be: &dyn Backend, name: &str) -> Result<(), Failure> {
    if let Some(state) = store.read_runtime(name)?
        && !is_running(&state)
    {
        be.reap(store, name, Some(&state))?;
    }
    Ok(())
}

pub fn remove_sandbox(store: &Store, be: &dyn Backend, name: &str) -> Result<(), Failure> {
    let state = store.read_runtime(name).ok().flatten();
    be.reap(store, name, state.as_ref())?;
    store.remove_files(name)?;
    Ok(())
}

fn outcome_code(outcome: Outcome, spec: &SandboxSpec) -> i32 {
    match outcome {
        Outcome::Exited(c) => c,
        Outcome::TimedOut => {
            ui::note(&format!(
                "sandbox {} was killed: --timeout of {}s expired",
                spec.name,
                spec.limits.timeout_secs.unwrap_or(0.0)
            ));
            exit::TIMED_OUT
        }
    }
}

pub fn run(a: RunArgs) -> Result<i32, Failure> {
    let store = open_store()?;
    let kit = match a.kit_name.as_ref().or(a.kit.as_ref()) {
        Some(k) => Some(super::kit::load(k)?),
        None => None,
    };
    let (spec, created) = match &a.name {
        Some(n) if store.exists(n) => {
            let spec = store.load(n)?;
            if a.rm && !spec.ephemeral {
                ui::note(&format!(
                    "--rm: sandbox {n} will be deleted when the command exits"
                ));
            }
            (spec, false)
        }
        _ => {
            let name = a.name.clone().unwrap_or_else(units::generate_name);
            let mut spec = build_spec(name, &a.opts, a.rm, &store)?;
            if let Some(k) = &kit {
                super::kit::apply(k, &mut spec);
                let secrets = airlock_core::secrets::SecretStore::load(&store.paths.data)?;
                for c in &spec.credentials {
                    if secrets.get(&c.service).is_none() {
                        ui::warn(&format!(
                            "no {s} secret: the agent will only have a placeholder; store one with `airlock secret set {s}`",
                            s = c.service
                        ));
                    }
                }
                if a.kit_name.is_some() {
                    super::kit::check_installed(k, &spec, &store)?;
                }
            }
            let be = backend(spec.isolation)?;
            airlock_core::startup::trace("spec built");
            create_sandbox(&store, &spec, be.as_ref()).map_err(|f| Failure {
                code: run_failed(f.code),
                ..f
            })?;
            if a.name.is_none() && !a.rm {
                ui::note(&format!(
                    "sandbox {} (kept after exit; delete with `airlock rm {}`)",
                    spec.name, spec.name
                ));
            }
            (spec, true)
        }
    };
    let be = backend(spec.isolation)?;
    // `airlock run KIT -- ARGS`: the kit's command with ARGS; `--kit KIT -- CMD`: CMD.
    let argv = match (&kit, &a.kit_name) {
        (Some(k), Some(_)) => k
            .command
            .iter()
            .cloned()
            .chain(a.command.iter().cloned())
            .collect(),
        _ => a.command.clone(),
    };
    let req = ExecRequest {
        argv,
        tty: !a.no_tty && std::io::stdin().is_terminal() && std::io::stdout().is_terminal(),
        ..Default::default()
    };
    airlock_core::startup::trace("sandbox created");
    let remove = a.rm || spec.ephemeral;
    // A sandbox whose files hold no layer (they are in the sandbox's memory) is deleted as soon
    // as it has ended, while the kernel still ends its namespaces; anything else after `run`.
    let mut removed = false;
    let early = remove && Store::keeps_in_memory(&spec);
    let result = run_in(&store, be.as_ref(), &spec, &req, &mut || {
        if early && let Ok(_lock) = store.lock(&spec.name) {
            removed = store.remove_files(&spec.name).is_ok();
        }
    });
    airlock_core::startup::trace("command done");
    if (remove && !(removed && result.is_ok())) || (created && result.is_err()) {
        let _lock = store.lock(&spec.name)?;
        let removed = remove_sandbox(&store, be.as_ref(), &spec.name);
        airlock_core::startup::trace("sandbox removed");
        if let Err(e) = removed {
            ui::warn(&format!(
                "could not delete sandbox {}: {}; run `airlock gc`",
                spec.name, e.error
            ));
        }
    }
    result.map_err(|f| Failure {
        code: run_failed(f.code),
        ..f
    })
}

fn run_failed(code: i32) -> i32 {
    if code == exit::FAILURE {
        exit::RUN_FAILED
    } else {
        code
    }
}

fn run_in(
    store: &Store,
    be: &dyn Backend,
    spec: &SandboxSpec,
    req: &ExecRequest,
    on_ended: &mut dyn FnMut(),
) -> Result<i32, Failure> {
    let lock = store.lock(&spec.name)?;
    if let Some(state) = store.read_runtime(&spec.name)?
        && is_running(&state)
    {
        drop(lock);
        return Ok(be.exec(store, spec, &state, req)?);
    }
    reap_stale(store, be, &spec.name)?;
    let mut lock = Some(lock);
    let outcome = be.run(
        store,
        spec,
        req,
        &mut || {
            lock.take();
        },
        on_ended,
    )?;
    Ok(outcome_code(outcome, spec))
}

pub fn create(a: CreateArgs) -> Result<i32, Failure> {
    let store = open_store()?;
    let name = a
        .sandbox_name()
        .expect("clap requires NAME or --name")
        .to_string();
    let spec = build_spec(name, &a.opts, false, &store)?;
    let be = backend(spec.isolation)?;
    create_sandbox(&store, &spec, be.as_ref())?;
    println!("{}", spec.name);
    Ok(0)
}

/// Start `name` if it is not running; return its runtime state.
pub fn ensure_running(
    store: &Store,
    be: &dyn Backend,
    spec: &SandboxSpec,
) -> Result<(airlock_core::spec::RuntimeState, bool), Failure> {
    let _lock = store.lock(&spec.name)?;
    if let Some(state) = store.read_runtime(&spec.name)?
        && is_running(&state)
    {
        return Ok((state, false));
    }
    reap_stale(store, be, &spec.name)?;
    Ok((be.start(store, spec)?, true))
}

pub fn start(name: &str) -> Result<i32, Failure> {
    let store = open_store()?;
    let spec = store.load(name)?;
    let be = backend(spec.isolation)?;
    airlock_core::startup::trace("start: spec loaded");
    let (state, started) = ensure_running(&store, be.as_ref(), &spec)?;
    airlock_core::startup::trace("start: running");
    if started {
        ui::note(&format!("started {name} (init pid {})", state.init_pid));
    } else {
        ui::note(&format!("{name} is already running"));
    }
    Ok(0)
}

pub fn stop(name: &str, grace: u64) -> Result<i32, Failure> {
    let store = open_store()?;
    let spec = store.load(name)?;
    let be = backend(spec.isolation)?;
    let _lock = store.lock(name)?;
    match store.read_runtime(name)? {
        Some(state) if is_running(&state) => {
            be.stop(&store, &spec, &state, Duration::from_secs(grace))?;
            // If the supervisor could not clean up (it crashed), do it here.
            if store.read_runtime(name)?.is_some() {
                be.reap(&store, name, Some(&state))?;
            }
            ui::note(&format!("stopped {name}"));
        }
        _ => {
            reap_stale(&store, be.as_ref(), name)?;
            ui::note(&format!("{name} is not running"));
        }
    }
    Ok(0)
}

pub fn rm(names: &[String], force: bool) -> Result<i32, Failure> {
    let store = open_store()?;
    let mut code = 0;
    for name in names {
        let res = (|| -> Result<(), Failure> {
            let spec = store.load(name)?;
            let be = backend(spec.isolation)?;
            let _lock = store.lock(name)?;
            if let Some(state) = store.read_runtime(name)?
                && is_running(&state)
            {
                if !force {
                    return Err(fail(
                        exit::CONFLICT,
                        format!(
                            "sandbox {name} is running; stop it first (`airlock stop {name}`) or use `airlock rm --force {name}`"
                        ),
                    ));
                }
                be.stop(&store, &spec, &state, Duration::ZERO)?;
            }
            remove_sandbox(&store, be.as_ref(), name)
        })();
        match res {
            Ok(()) => println!("{name}"),
            Err(f) => {
                ui::error(&f.error.to_string());
                code = f.code;
            }
        }
    }
    Ok(code)
}

pub fn exec(a: ExecArgs) -> Result<i32, Failure> {
    let store = open_store()?;
    let spec = store.load(&a.name)?;
    let env = parse_env(&a.env, &[])?;
    let workdir = a.workdir.map(|w| {
        if w.is_absolute() {
            w
        } else {
            spec.workspace.join(w)
        }
    });
    if a.root && spec.isolation == Isolation::Namespace && spec.user.uid != 0 {
        return Err(fail(
            exit::USAGE,
            format!(
                "exec --root: sandbox {} is a rootless namespace sandbox, which has no root to give (the host's ids cannot be mapped); use a VM sandbox (--isolation vm) to install system packages",
                spec.name
            ),
        ));
    }
    let req = ExecRequest {
        argv: a.command,
        env,
        workdir,
        tty: a.tty,
        as_root: a.root,
        ..Default::default()
    };
    exec_request(&store, &spec, &req)
}

pub fn exec_request(store: &Store, spec: &SandboxSpec, req: &ExecRequest) -> Result<i32, Failure> {
    let be = backend(spec.isolation)?;
    let (state, _) = ensure_running(store, be.as_ref(), spec).map_err(|f| Failure {
        code: run_failed(f.code),
        ..f
    })?;
    be.exec(store, spec, &state, req).map_err(|e| {
        let f: Failure = e.into();
        Failure {
            code: run_failed(f.code),
            ..f
        }
    })
}

pub fn shell(name: &str) -> Result<i32, Failure> {
    let store = open_store()?;
    let spec = store.load(name)?;
    let req = ExecRequest {
        argv: vec![spec.user.shell.display().to_string(), "-l".into()],
        tty: std::io::stdin().is_terminal(),
        ..Default::default()
    };
    exec_request(&store, &spec, &req)
}
