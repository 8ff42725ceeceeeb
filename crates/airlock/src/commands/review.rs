//! Review and apply the agent's work: diff, apply, reset, cp (issue 4).
//!
//! The rules (what is a conflict, why the sandbox must be stopped) are documented in the
//! `airlock-review` crate.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use airlock_core::backend::is_running;
use airlock_core::spec::{SandboxSpec, WorkspaceMode};
use airlock_core::store::{SandboxLock, Store};
use airlock_ns::layers::Layers;
use airlock_review::copy::View;
use airlock_review::diff::Sides;
use airlock_review::{ApplyOptions, Category, Change, Outcome};
use clap::{Args, Subcommand};

use crate::app::{Failure, fail};
use crate::{exit, ui};

#[derive(Debug, Subcommand)]
pub enum ReviewCommand {
    /// Show what the agent changed in the workspace, relative to the host directory
    #[command(after_help = "Examples:
  airlock diff dev                   # unified diffs (coloured, paged on a terminal)
  airlock diff dev --stat            # one line per changed path
  airlock diff dev --json src/       # machine-readable, only under src/

Letters in --stat: A added, M modified, D deleted, m mode changed, L symlink, T type changed.
Sensitive paths (git hooks and config, shell rc files, .envrc, CI configs, editor and agent
configs) are marked with '!'. Changes inside .git are summarised unless --include-git.")]
    Diff(DiffArgs),

    /// Write the agent's changes into the host workspace (the sandbox must be stopped)
    #[command(after_help = "Examples:
  airlock apply dev --dry-run        # what would be written, skipped, or is in conflict
  airlock apply dev                  # everything that is safe to apply
  airlock apply dev src/ README.md   # only these paths
  airlock apply dev --allow-sensitive .github/workflows/ci.yml

Symlinks made by the agent are written as symlinks, never followed; nothing is written through
a symlink on the host or outside the workspace. Each file is replaced atomically. A host file
that changed after the sandbox copied it is a conflict: reported and left alone (--force
overwrites). Applied changes leave the sandbox's layer, so sandbox and host agree afterwards.
Exit status 1 if anything selected was not applied (conflict or failure).")]
    Apply(ApplyArgs),

    /// Discard the agent's workspace changes (default), or everything it changed (--all)
    #[command(after_help = "Examples:
  airlock reset dev                  # the workspace is the host's again
  airlock reset dev --all            # also the home and installed packages

The sandbox must be stopped (`airlock stop NAME`).")]
    Reset(ResetArgs),

    /// Copy files between the host and a sandbox (NAME:PATH on the sandbox side)
    #[command(after_help = "Examples:
  airlock cp dev:build/report.html ./report.html
  airlock cp dev:~/.npmrc /tmp/       # ~ is the sandbox's home
  airlock cp ./fixtures dev:tests/    # into the workspace (sandbox stopped) or the home

Sandbox paths are relative to the workspace, or absolute inside the workspace or the home.
Symlinks on the sandbox side are copied as symlinks, never followed. Existing files are not
overwritten without --force.")]
    Cp(CpArgs),
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    pub name: String,
    /// Only these paths (relative to the workspace)
    pub paths: Vec<PathBuf>,
    /// One line per changed path, with added/removed line counts
    #[arg(long)]
    pub stat: bool,
    /// Print the changes as JSON
    #[arg(long)]
    pub json: bool,
    /// Show changes inside .git in full
    #[arg(long)]
    pub include_git: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    pub name: String,
    /// Only these paths (relative to the workspace); default: every change
    pub paths: Vec<PathBuf>,
    /// Say what would be done, write nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Also apply changes inside .git (objects, refs, index…)
    #[arg(long)]
    pub include_git: bool,
    /// Also apply changes to sensitive paths (git hooks and config, shell rc files, CI, editor and agent configs)
    #[arg(long)]
    pub allow_sensitive: bool,
    /// Overwrite host files that changed after the sandbox copied them
    #[arg(long, short = 'f')]
    pub force: bool,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    pub name: String,
    /// Discard the workspace changes (the default)
    #[arg(long, conflicts_with = "all")]
    pub workspace: bool,
    /// Discard everything: workspace changes, home, installed packages
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// NAME:PATH or a host path
    pub src: String,
    /// NAME:PATH or a host path
    pub dst: String,
    /// Overwrite existing files
    #[arg(long, short = 'f')]
    pub force: bool,
}

pub fn dispatch(c: ReviewCommand) -> Result<i32, Failure> {
    match c {
        ReviewCommand::Diff(a) => diff(a),
        ReviewCommand::Apply(a) => apply(a),
        ReviewCommand::Reset(a) => reset(a),
        ReviewCommand::Cp(a) => cp(a),
    }
}

fn load(name: &str) -> Result<(Store, SandboxSpec, PathBuf), Failure> {
    let store = Store::open()?;
    let spec = store.load(name)?;
    let upper = Layers::new(&store.paths.sandbox_dir(name)).workspace().0;
    Ok((store, spec, upper))
}

/// The changes in the sandbox's workspace layer, without what its cache directories
/// (`--cache-dir`) put there: their mount points, made in the layer where the host has no such
/// directory. A change to something the host has under a cache directory's path (possible only
/// by going around the mount, as the VM guest's root can) is still shown.
fn scan(upper: &Path, spec: &SandboxSpec) -> Result<Vec<Change>, Failure> {
    let mut changes = airlock_review::scan(upper, &spec.workspace)?;
    changes.retain(|c| c.old.is_some() || in_cache_dir(spec, &c.path).is_none());
    Ok(changes)
}

/// Take the lifecycle lock and make sure the sandbox is not running (its layers are mounted
/// while it runs, and overlayfs layers must not change under a mount).
fn lock_stopped(store: &Store, name: &str, what: &str) -> Result<SandboxLock, Failure> {
    let lock = store.lock(name)?;
    if let Some(state) = store.read_runtime(name)?
        && is_running(&state)
    {
        return Err(fail(
            exit::CONFLICT,
            format!(
                "sandbox {name} is running; stop it first: airlock stop {name} ({what} changes its layers, which must not change while they are mounted)"
            ),
        ));
    }
    Ok(lock)
}

fn rel_paths(paths: &[PathBuf], ws: &Path) -> Result<Vec<PathBuf>, Failure> {
    paths
        .iter()
        .map(|p| airlock_review::user_rel(p, ws).map_err(|e| fail(exit::USAGE, e)))
        .collect()
}

fn no_layer_note(spec: &SandboxSpec) -> String {
    match spec.mode {
        WorkspaceMode::Rw => format!(
            "sandbox {} uses --workspace-mode rw: its changes are made directly on the host, there is nothing to review",
            spec.name
        ),
        _ => format!(
            "sandbox {} uses --workspace-mode {}: it cannot change the workspace, there is nothing to review",
            spec.name,
            spec.mode.as_str()
        ),
    }
}

fn paint(code: &str, s: &str, on: bool) -> String {
    if on {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

fn colorize(text: &str, on: bool) -> String {
    if !on {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for line in text.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let code =
            if body.starts_with("diff ") || body.starts_with("+++ ") || body.starts_with("--- ") {
                "1"
            } else if body.starts_with("! ") {
                "1;33"
            } else if body.starts_with("@@") {
                "36"
            } else if body.starts_with('+') {
                "32"
            } else if body.starts_with('-') {
                "31"
            } else {
                ""
            };
        if code.is_empty() {
            out.push_str(line);
        } else {
            out.push_str(&paint(code, body, true));
            out.push_str(nl);
        }
    }
    out
}

fn term_rows() -> usize {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it for a terminal and fails otherwise.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: ioctl on stdout with a pointer to our winsize.
    let rc = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 && ws.ws_row > 0 {
        ws.ws_row as usize
    } else {
        24
    }
}

/// Print, through `$PAGER` (default `less -R`) when stdout is a terminal and the text is long.
fn page(text: &str) {
    let mut stdout = std::io::stdout();
    if !stdout.is_terminal() || text.lines().count() < term_rows() {
        let _ = stdout.write_all(text.as_bytes());
        return;
    }
    let pager = std::env::var("PAGER")
        .ok()
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(|| "less -R".into());
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(&pager)
        .stdin(std::process::Stdio::piped());
    if std::env::var_os("LESS").is_none() {
        cmd.env("LESS", "FRX");
    }
    match cmd.spawn() {
        Ok(mut child) => {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(text.as_bytes());
            }
            let _ = child.wait();
        }
        Err(_) => {
            let _ = stdout.write_all(text.as_bytes());
        }
    }
}

fn diff(a: DiffArgs) -> Result<i32, Failure> {
    let (_store, spec, upper) = load(&a.name)?;
    let paths = rel_paths(&a.paths, &spec.workspace)?;
    let changes: Vec<Change> = if spec.mode == WorkspaceMode::Cow {
        scan(&upper, &spec)?
            .into_iter()
            .filter(|c| paths.is_empty() || paths.iter().any(|p| c.path.starts_with(p)))
            .collect()
    } else {
        ui::note(&no_layer_note(&spec));
        vec![]
    };
    if a.json {
        let v = serde_json::json!({
            "sandbox": spec.name,
            "workspace": spec.workspace,
            "mode": spec.mode.as_str(),
            "changes": changes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    if changes.is_empty() {
        if spec.mode == WorkspaceMode::Cow {
            ui::note(&format!("no changes in {}", spec.name));
        }
        return Ok(0);
    }
    if let Some(hint) = cache_dir_hint(&changes) {
        ui::note(&hint);
    }
    let sides = Sides::open(&upper, &spec.workspace)?;
    let color = ui::color_stdout();
    let (git, shown): (Vec<&Change>, Vec<&Change>) = changes
        .iter()
        .partition(|c| c.category == Category::GitInternal && !a.include_git);
    let mut out = String::new();
    if a.stat {
        for c in &shown {
            let counts = match sides.line_counts(c) {
                Some((add, del)) => format!(
                    "{} {}",
                    paint("32", &format!("+{add}"), color),
                    paint("31", &format!("-{del}"), color)
                ),
                None if c.binary => format!(
                    "binary, {} bytes",
                    c.new
                        .as_ref()
                        .or(c.old.as_ref())
                        .map(|e| e.size)
                        .unwrap_or(0)
                ),
                None => String::new(),
            };
            let mark = if c.sensitive {
                paint("1;33", "!", color)
            } else {
                " ".into()
            };
            out.push_str(&format!(
                "{}{} {}  {}\n",
                c.kind.letter(),
                mark,
                c.path.display(),
                counts
            ));
        }
    } else {
        for c in &shown {
            out.push_str(&colorize(&sides.render(c), color));
        }
    }
    if !git.is_empty() {
        out.push_str(&format!(
            "{} change(s) inside .git not shown (see them with --include-git; applied only with --include-git)\n",
            git.len()
        ));
    }
    let sensitive = changes.iter().filter(|c| c.sensitive).count();
    if a.stat {
        out.push_str(&format!(
            "{} change(s){}\n",
            changes.len(),
            if sensitive > 0 {
                format!(", {sensitive} sensitive (applied only with --allow-sensitive)")
            } else {
                String::new()
            }
        ));
    }
    page(&out);
    Ok(0)
}

fn apply(a: ApplyArgs) -> Result<i32, Failure> {
    let (store, spec, upper) = load(&a.name)?;
    let paths = rel_paths(&a.paths, &spec.workspace)?;
    if spec.mode != WorkspaceMode::Cow {
        ui::note(&no_layer_note(&spec));
        if a.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&airlock_review::ApplyReport::default())?
            );
        }
        return Ok(0);
    }
    let _lock = if a.dry_run {
        store.lock(&a.name)?
    } else {
        lock_stopped(&store, &a.name, "apply")?
    };
    let changes = scan(&upper, &spec)?;
    let selected = airlock_review::select(&changes, &paths);
    if !paths.is_empty() && selected.is_empty() {
        ui::note("no changes under the given paths");
    }
    let opts = ApplyOptions {
        dry_run: a.dry_run,
        include_git: a.include_git,
        allow_sensitive: a.allow_sensitive,
        force: a.force,
        prune_upper: true,
    };
    let report = airlock_review::apply(&selected, &upper, &spec.workspace, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let color = ui::color_stdout();
        let line = |label: &str, code: &str, o: &Outcome| {
            let reason = o
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            println!(
                "{} {} {}{reason}",
                paint(code, label, color),
                o.kind.letter(),
                o.path.display()
            );
        };
        let done = if a.dry_run { "would apply" } else { "applied" };
        for o in &report.applied {
            line(done, "32", o);
        }
        for o in &report.skipped {
            line("skipped", "33", o);
        }
        for o in &report.conflicts {
            line("conflict", "1;31", o);
        }
        for o in &report.failed {
            line("failed", "1;31", o);
        }
    }
    let n_not = report.conflicts.len() + report.failed.len();
    if !report.skipped.is_empty() {
        ui::note(&format!(
            "{} change(s) skipped by policy (see above)",
            report.skipped.len()
        ));
    }
    if selected.is_empty() && paths.is_empty() {
        ui::note(&format!("no changes in {}", spec.name));
    } else if !a.dry_run {
        ui::note(&format!(
            "{} change(s) applied to {}",
            report.applied.len(),
            spec.workspace.display()
        ));
    }
    if n_not > 0 {
        ui::error(&format!(
            "{n_not} change(s) not applied ({} conflict(s), {} failure(s))",
            report.conflicts.len(),
            report.failed.len()
        ));
        return Ok(exit::FAILURE);
    }
    Ok(0)
}

fn reset(a: ResetArgs) -> Result<i32, Failure> {
    let (store, spec, _) = load(&a.name)?;
    let _lock = lock_stopped(&store, &a.name, "reset")?;
    let layers = Layers::new(&store.paths.sandbox_dir(&a.name));
    let mut dirs = vec![];
    if spec.mode == WorkspaceMode::Cow {
        let (u, w) = layers.workspace();
        dirs.extend([u, w]);
    } else if !a.all {
        ui::note(&no_layer_note(&spec));
        return Ok(0);
    }
    if a.all {
        let sys = layers.dir.join("layers/system");
        if let Ok(rd) = std::fs::read_dir(&sys) {
            for e in rd.flatten() {
                dirs.push(e.path().join("upper"));
                dirs.push(e.path().join("work"));
            }
        }
        dirs.push(layers.home());
    }
    let mut n = 0;
    for d in &dirs {
        n += airlock_review::empty_dir(d)?;
    }
    ui::note(&format!(
        "reset {}: discarded {n} entr{} ({})",
        a.name,
        if n == 1 { "y" } else { "ies" },
        if a.all {
            "workspace changes, home, installed packages"
        } else {
            "workspace changes"
        }
    ));
    Ok(0)
}

/// `NAME:PATH` → (name, path), if `s` names a sandbox.
fn sandbox_ref(s: &str) -> Option<(&str, &str)> {
    let (name, path) = s.split_once(':')?;
    if name.is_empty() || name.contains('/') || airlock_core::units::validate_name(name).is_err() {
        return None;
    }
    Some((name, path))
}

/// Where a sandbox path is (see [`sandbox_path`]).
struct SandboxPath {
    view: View,
    /// The path inside `view`.
    rel: PathBuf,
    /// In a cow workspace's layer (which must not change while the sandbox runs).
    cow: bool,
    /// The cache directory (workspace-relative) the path is in, if any.
    cache_dir: Option<PathBuf>,
}

/// The view and relative path of a sandbox path.
fn sandbox_path(store: &Store, spec: &SandboxSpec, path: &str) -> Result<SandboxPath, Failure> {
    let layers = Layers::new(&store.paths.sandbox_dir(&spec.name));
    let home = &spec.user.home;
    let p = if path == "~" {
        home.clone()
    } else if let Some(rest) = path.strip_prefix("~/") {
        home.join(rest)
    } else if path.is_empty() {
        spec.workspace.clone()
    } else {
        let p = PathBuf::from(path);
        if p.is_absolute() {
            p
        } else {
            spec.workspace.join(p)
        }
    };
    let check = |rel: &Path| -> Result<PathBuf, Failure> {
        let rel: PathBuf = rel
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect();
        if !rel.as_os_str().is_empty() {
            airlock_review::fsx::check_rel(&rel)
                .map_err(|why| fail(exit::USAGE, format!("sandbox path {path:?} {why}")))?;
        }
        Ok(rel)
    };
    if let Ok(rel) = p.strip_prefix(&spec.workspace) {
        let rel = check(rel)?;
        // A cache directory is the sandbox's own plain directory, whatever the workspace mode.
        if let Some((i, inside)) = in_cache_dir(spec, &rel) {
            let elsewhere = if spec.isolation == airlock_core::spec::Isolation::Vm {
                Some("a VM sandbox, on the VM's own disk")
            } else if spec.ephemeral {
                Some("a --rm sandbox, in its memory")
            } else {
                None
            };
            if let Some(kept) = elsewhere {
                return Err(fail(
                    exit::USAGE,
                    format!(
                        "{path} is in a cache directory of {kept}; copy it from inside instead (airlock exec {n} -- cp ...)",
                        n = spec.name
                    ),
                ));
            }
            return Ok(SandboxPath {
                view: View::Plain(layers.cache_dir(i)),
                rel: inside,
                cow: false,
                cache_dir: Some(spec.cache_dirs[i].clone()),
            });
        }
        let (view, cow) = match spec.mode {
            WorkspaceMode::Cow => (
                View::Overlay {
                    upper: layers.workspace().0,
                    lower: spec.workspace.clone(),
                },
                true,
            ),
            // The sandbox's own clone, never the host's repository.
            WorkspaceMode::Clone => (View::Plain(layers.clone_dir()), false),
            WorkspaceMode::Rw | WorkspaceMode::Ro => (View::Plain(spec.workspace.clone()), false),
        };
        return Ok(SandboxPath {
            view,
            rel,
            cow,
            cache_dir: None,
        });
    }
    if let Ok(rel) = p.strip_prefix(home) {
        return Ok(SandboxPath {
            view: View::Plain(layers.home()),
            rel: check(rel)?,
            cow: false,
            cache_dir: None,
        });
    }
    Err(fail(
        exit::USAGE,
        format!(
            "{path}: only paths in the sandbox's workspace ({}) or home ({}) can be copied",
            spec.workspace.display(),
            home.display()
        ),
    ))
}

fn cp(a: CpArgs) -> Result<i32, Failure> {
    let store = Store::open()?;
    let src = sandbox_ref(&a.src);
    let dst = sandbox_ref(&a.dst);
    let n = match (src, dst) {
        (Some((name, path)), None) => {
            let spec = store.load(name)?;
            let sp = sandbox_path(&store, &spec, path)?;
            // A whole cache directory copied into a directory keeps its own name.
            let dst = Path::new(&a.dst);
            let dst = match (&sp.cache_dir, sp.rel.as_os_str().is_empty()) {
                (Some(d), true) if dst.is_dir() => dst.join(d.file_name().unwrap_or_default()),
                _ => dst.to_path_buf(),
            };
            airlock_review::copy::copy_out(&sp.view, &sp.rel, &dst, a.force)?
        }
        (None, Some((name, path))) => {
            let spec = store.load(name)?;
            let SandboxPath {
                view,
                rel,
                cow,
                cache_dir,
            } = sandbox_path(&store, &spec, path)?;
            if let (Some(_), View::Plain(store)) = (&cache_dir, &view)
                && !store.exists()
            {
                // Not started yet: the directory its first start would make (and give to the
                // sandbox's user), with the same mode (the sandbox's directory above is 0700).
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(store)
                    .map_err(|e| {
                        fail(exit::FAILURE, format!("creating {}: {e}", store.display()))
                    })?;
            }
            // A cache directory is writable even in a read-only workspace.
            if spec.mode == WorkspaceMode::Ro
                && cache_dir.is_none()
                && rel_in_workspace(&spec, path)
            {
                return Err(fail(
                    exit::USAGE,
                    format!("sandbox {name} has a read-only workspace (--workspace-mode ro)"),
                ));
            }
            let _lock = if cow {
                Some(lock_stopped(&store, name, "copying into its workspace")?)
            } else {
                None
            };
            airlock_review::copy::copy_in(&view, Path::new(&a.src), &rel, a.force)?
        }
        (Some(_), Some(_)) => {
            return Err(fail(
                exit::USAGE,
                "copying between two sandboxes is not supported; copy through the host",
            ));
        }
        (None, None) => {
            return Err(fail(
                exit::USAGE,
                "one of SRC and DST must be a sandbox path, NAME:PATH (e.g. dev:src/main.rs)",
            ));
        }
    };
    ui::note(&format!(
        "copied {n} entr{}",
        if n == 1 { "y" } else { "ies" }
    ));
    Ok(0)
}

/// Names of the directories build tools and package managers fill with outputs and dependency
/// trees, which a cache directory keeps out of review (and at native file speed).
const BUILD_OUTPUT_DIRS: &[&str] = &[
    "target",
    "node_modules",
    ".venv",
    "venv",
    "__pycache__",
    "build",
    "dist",
    ".gradle",
    ".next",
    ".cache",
];

/// How many new entries under one such directory make `diff` suggest a cache directory.
const CACHE_DIR_HINT_AT: usize = 100;

/// A note for `diff` when most of what it would show is a build output or dependency tree: the
/// directory with the most new entries, if it has at least [`CACHE_DIR_HINT_AT`].
fn cache_dir_hint(changes: &[Change]) -> Option<String> {
    let mut counts: std::collections::BTreeMap<PathBuf, usize> = Default::default();
    for c in changes.iter().filter(|c| c.old.is_none()) {
        let mut at = PathBuf::new();
        for comp in c.path.components() {
            at.push(comp);
            if BUILD_OUTPUT_DIRS.iter().any(|d| comp.as_os_str() == *d) {
                *counts.entry(at).or_default() += 1;
                break;
            }
        }
    }
    let (dir, n) = counts.into_iter().max_by_key(|(_, n)| *n)?;
    (n >= CACHE_DIR_HINT_AT).then(|| {
        format!(
            "{n} of these changes are new entries under {d}/, build output or dependencies: as a cache directory it runs at native file speed and stays out of review (`--cache-dir {d}` for new sandboxes, or `[workspace] cache_dirs = [\"{d}\"]` in the project's airlock.toml)",
            d = dir.display()
        )
    })
}

/// The index of the cache directory `rel` (workspace-relative) is in, and its path inside it.
fn in_cache_dir(spec: &SandboxSpec, rel: &Path) -> Option<(usize, PathBuf)> {
    spec.cache_dirs
        .iter()
        .enumerate()
        .find_map(|(i, d)| rel.strip_prefix(d).ok().map(|r| (i, r.to_path_buf())))
}

fn rel_in_workspace(spec: &SandboxSpec, path: &str) -> bool {
    !(path == "~" || path.starts_with("~/") || Path::new(path).starts_with(&spec.user.home))
}
