//! Templates: a stopped sandbox's system and home layers, frozen read-only, from which new
//! sandboxes start by layer stacking (no copy at start): warm caches, installed packages.
//!
//! ```text
//! <data>/templates/<NAME>/template.json
//! <data>/templates/<NAME>/system/<dir>/   the source's copy-on-write layer of /usr, /etc, …
//! <data>/templates/<NAME>/home/           the source's home
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use airlock_core::backend::is_running;
use airlock_core::spec::now_secs;
use airlock_core::store::{Store, disk_usage, read_json, remove_tree, write_json_atomic};
use airlock_core::units::{format_size, random_bytes, validate_name};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use crate::app::{Failure, fail};
use crate::{exit, ui};

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Freeze a stopped sandbox's system and home layers (not its workspace changes) as a template
    #[command(
        after_help = "Example:\n  airlock run --name base -- sh -c 'npm ci && pip install --user -r requirements.txt'\n  airlock save base node-warm\n  airlock run --template node-warm --rm -- npm test     # starts with warm caches"
    )]
    Save { name: String, template: String },

    /// List, inspect or delete templates
    #[command(subcommand)]
    Template(TemplateSub),
}

#[derive(Debug, Subcommand)]
pub enum TemplateSub {
    /// List templates
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show a template: source, size, layers, the sandboxes using it
    Inspect {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete templates (refused while a sandbox uses one, unless --force)
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long, short = 'f')]
        force: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct TemplateInfo {
    name: String,
    source: String,
    created_at: u64,
    system_dirs: Vec<String>,
    home: bool,
}

fn dir(store: &Store, name: &str) -> PathBuf {
    store.paths.templates().join(name)
}

/// Check that template `name` exists (for `--template`); returns its name.
pub fn require(store: &Store, name: &str) -> Result<String, Failure> {
    validate_name(name).map_err(|e| fail(exit::USAGE, e))?;
    if !dir(store, name).join("template.json").is_file() {
        return Err(fail(
            exit::NOT_FOUND,
            format!(
                "no template named {name:?} (see `airlock template ls`; make one with `airlock save SANDBOX {name}`)"
            ),
        ));
    }
    Ok(name.to_string())
}

pub fn dispatch(c: TemplateCommand) -> Result<i32, Failure> {
    match c {
        TemplateCommand::Save { name, template } => save(&name, &template),
        TemplateCommand::Template(TemplateSub::Ls { json }) => ls(json),
        TemplateCommand::Template(TemplateSub::Inspect { name, json }) => inspect(&name, json),
        TemplateCommand::Template(TemplateSub::Rm { names, force }) => rm(&names, force),
    }
}

/// `cp -a`: keeps modes, owners (where permitted), timestamps, xattrs (overlay opaque markers),
/// device nodes (overlay whiteouts) and symlinks as they are.
fn copy_tree(from: &Path, to: &Path) -> Result<(), Failure> {
    let out = Command::new("cp")
        .arg("-a")
        .arg("--no-target-directory")
        .arg(from)
        .arg(to)
        .output()
        .map_err(|e| fail(exit::FAILURE, format!("running cp: {e}")))?;
    if !out.status.success() {
        return Err(fail(
            exit::FAILURE,
            format!(
                "copying {} to {}: {}",
                from.display(),
                to.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut r| r.next().is_none())
        .unwrap_or(true)
}

fn save(name: &str, template: &str) -> Result<i32, Failure> {
    let store = Store::open()?;
    let spec = store.load(name)?;
    validate_name(template).map_err(|e| fail(exit::USAGE, e))?;
    let _lock = store.lock(name)?;
    if store.read_runtime(name)?.as_ref().is_some_and(is_running) {
        return Err(fail(
            exit::CONFLICT,
            format!(
                "sandbox {name} is running; stop it first (`airlock stop {name}`) so its layers are consistent"
            ),
        ));
    }
    if spec.template.is_some() {
        return Err(fail(
            exit::FAILURE,
            format!(
                "sandbox {name} itself starts from a template; saving stacked templates is not supported yet (save from a sandbox created without --template)"
            ),
        ));
    }
    if spec.ephemeral {
        return Err(fail(
            exit::FAILURE,
            format!("sandbox {name} is a --rm sandbox: its layers live in memory only"),
        ));
    }
    let final_dir = dir(&store, template);
    if final_dir.exists() {
        return Err(fail(
            exit::CONFLICT,
            format!(
                "a template named {template:?} already exists (`airlock template rm {template}` first)"
            ),
        ));
    }
    let mut rnd = [0u8; 4];
    random_bytes(&mut rnd);
    let staging = store.paths.templates().join(format!(
        ".tmp-{template}-{:02x}{:02x}{:02x}{:02x}",
        rnd[0], rnd[1], rnd[2], rnd[3]
    ));
    airlock_core::store::mkdir_private(&staging.join("system"))?;
    let result = (|| -> Result<(), Failure> {
        let sandbox_dir = store.paths.sandbox_dir(name);
        let mut system_dirs = Vec::new();
        for d in airlock_ns::mounts::SYSTEM_DIRS {
            let upper = sandbox_dir.join("layers/system").join(d).join("upper");
            if upper.is_dir() && !is_empty_dir(&upper) {
                copy_tree(&upper, &staging.join("system").join(d))?;
                system_dirs.push(d.to_string());
            }
        }
        let home = sandbox_dir.join("home");
        let has_home = home.is_dir();
        if has_home {
            copy_tree(&home, &staging.join("home"))?;
        }
        let info = TemplateInfo {
            name: template.into(),
            source: name.into(),
            created_at: now_secs(),
            system_dirs,
            home: has_home,
        };
        write_json_atomic(&staging.join("template.json"), &info)?;
        std::fs::rename(&staging, &final_dir)
            .map_err(|e| fail(exit::FAILURE, format!("{}: {e}", final_dir.display())))
    })();
    if let Err(e) = result {
        let _ = remove_tree(&staging);
        return Err(e);
    }
    ui::note(&format!(
        "saved {name} as template {template}; start from it with `airlock run --template {template}`"
    ));
    Ok(0)
}

fn load(store: &Store, name: &str) -> Result<TemplateInfo, Failure> {
    require(store, name)?;
    Ok(read_json(&dir(store, name).join("template.json"))?)
}

fn users(store: &Store, name: &str) -> Result<Vec<String>, Failure> {
    Ok(store
        .list()?
        .into_iter()
        .filter(|s| s.template.as_deref() == Some(name))
        .map(|s| s.name)
        .collect())
}

fn ls(json: bool) -> Result<i32, Failure> {
    let store = Store::open()?;
    let mut names: Vec<String> = std::fs::read_dir(store.paths.templates())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let infos: Vec<TemplateInfo> = names.iter().filter_map(|n| load(&store, n).ok()).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&infos)?);
        return Ok(0);
    }
    if infos.is_empty() {
        ui::note("no templates yet; make one with `airlock save SANDBOX TEMPLATE`");
    }
    for t in &infos {
        println!(
            "{}  from {}  {}  {}",
            t.name,
            t.source,
            ui::format_time(t.created_at),
            format_size(disk_usage(&dir(&store, &t.name)))
        );
    }
    Ok(0)
}

fn inspect(name: &str, json: bool) -> Result<i32, Failure> {
    let store = Store::open()?;
    let info = load(&store, name)?;
    let used_by = users(&store, name)?;
    let size = disk_usage(&dir(&store, name));
    if json {
        let v = serde_json::json!({ "template": info, "disk_used_bytes": size, "used_by": used_by, "path": dir(&store, name) });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("{}  (read-only)", ui::bold(&info.name));
    println!(
        "  from          sandbox {} at {}",
        info.source,
        ui::format_time(info.created_at)
    );
    println!(
        "  layers        system: [{}], home: {}",
        info.system_dirs.join(", "),
        info.home
    );
    println!("  disk used     {}", format_size(size));
    println!(
        "  used by       {}",
        if used_by.is_empty() {
            "-".into()
        } else {
            used_by.join(", ")
        }
    );
    Ok(0)
}

fn rm(names: &[String], force: bool) -> Result<i32, Failure> {
    let store = Store::open()?;
    let mut code = 0;
    for name in names {
        let res = (|| -> Result<(), Failure> {
            load(&store, name)?;
            let used = users(&store, name)?;
            if !used.is_empty() && !force {
                return Err(fail(
                    exit::CONFLICT,
                    format!(
                        "template {name} is used by {}; delete those first or use --force (they will not start again)",
                        used.join(", ")
                    ),
                ));
            }
            remove_tree(&dir(&store, name))?;
            Ok(())
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
