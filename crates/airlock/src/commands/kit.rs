//! Kits: how to run a coding agent in a sandbox (command, network allowlist, credentials,
//! environment, how to install it). Built-in kits are reviewed data files in `kits/`; user kits
//! live in `~/.config/airlock/kits/*.toml` and may `extends` a built-in one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use airlock_core::secrets::builtin_services;
use airlock_core::spec::{CredentialSpec, SandboxSpec};
use airlock_core::store::Store;
use airlock_core::units::random_bytes;
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use crate::app::{Failure, fail};
use crate::{exit, ui};

const BUILTIN: &[(&str, &str)] = &[
    ("claude", include_str!("../../../../kits/claude.toml")),
    ("codex", include_str!("../../../../kits/codex.toml")),
    ("gemini", include_str!("../../../../kits/gemini.toml")),
    ("opencode", include_str!("../../../../kits/opencode.toml")),
    ("aider", include_str!("../../../../kits/aider.toml")),
    ("shell", include_str!("../../../../kits/shell.toml")),
];

/// A kit's credential. For a built-in service (anthropic, openai, gemini, github) only `service`
/// is needed; the other fields default to the service's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KitCredential {
    pub service: String,
    #[serde(default)]
    pub env: String,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub header: String,
    #[serde(default)]
    pub format: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kit {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A built-in kit this one extends (user kits only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub credentials: Vec<KitCredential>,
}

#[derive(Debug, Subcommand)]
pub enum KitCommand {
    /// Agent kits: list them or show one
    #[command(
        subcommand,
        after_help = "Examples:\n  airlock kit ls\n  airlock kit show claude\n\nUser kits: ~/.config/airlock/kits/NAME.toml (same fields; `extends = \"claude\"` to start from a built-in).\nA credential of a built-in service needs only its name, e.g. `[[credentials]]` `service = \"github\"` (git over HTTPS then authenticates through the gate too)."
    )]
    Kit(KitSub),
}

#[derive(Debug, Subcommand)]
pub enum KitSub {
    /// List the built-in and user kits
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show a kit: command, network allowlist, credentials, environment, how to install
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

fn parse(text: &str, origin: &str) -> Result<Kit, Failure> {
    let mut kit: Kit =
        toml::from_str(text).map_err(|e| fail(exit::FAILURE, format!("kit {origin}: {e}")))?;
    for c in &mut kit.credentials {
        fill_credential(c).map_err(|e| fail(exit::FAILURE, format!("kit {origin}: {e}")))?;
    }
    Ok(kit)
}

/// Fills a credential's missing fields from its built-in service.
fn fill_credential(c: &mut KitCredential) -> Result<(), String> {
    if let Some(def) = builtin_services()
        .into_iter()
        .find(|d| d.service == c.service)
    {
        if c.env.is_empty() {
            c.env = def.env;
        }
        if c.hosts.is_empty() {
            c.hosts = def.hosts;
        }
        if c.header.is_empty() {
            c.header = def.header;
        }
        if c.format.is_empty() {
            c.format = def.format;
        }
    }
    if c.env.is_empty() || c.hosts.is_empty() || c.header.is_empty() || c.format.is_empty() {
        return Err(format!(
            "credential {:?} needs env, hosts, header and format (only the built-in services anthropic, openai, gemini and github have defaults)",
            c.service
        ));
    }
    if !c.format.contains("{secret}") {
        return Err(format!(
            "credential {:?}: format must contain {{secret}}",
            c.service
        ));
    }
    Ok(())
}

fn user_dir() -> Option<PathBuf> {
    airlock_ns::net::user_config_path().and_then(|p| p.parent().map(|d| d.join("kits")))
}

fn builtin(name: &str) -> Option<Result<Kit, Failure>> {
    BUILTIN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, t)| parse(t, &format!("built-in {n}")))
}

/// A kit by name: the user's (extending a built-in if it says so), else the built-in.
pub fn load(name: &str) -> Result<Kit, Failure> {
    if let Some(path) = user_dir().map(|d| d.join(format!("{name}.toml")))
        && path.is_file()
    {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| fail(exit::FAILURE, format!("{}: {e}", path.display())))?;
        let mine = parse(&text, &path.display().to_string())?;
        return Ok(match &mine.extends {
            Some(base) => {
                let mut k = builtin(base).ok_or_else(|| {
                    fail(
                        exit::FAILURE,
                        format!("{}: extends unknown kit {base:?}", path.display()),
                    )
                })??;
                k.name = mine.name.clone();
                if !mine.description.is_empty() {
                    k.description = mine.description;
                }
                if !mine.command.is_empty() {
                    k.command = mine.command;
                }
                k.allow.extend(mine.allow);
                k.env.extend(mine.env);
                k.credentials.extend(mine.credentials);
                if mine.install.is_some() {
                    k.install = mine.install;
                }
                k
            }
            None => mine,
        });
    }
    builtin(name).unwrap_or_else(|| {
        Err(fail(exit::NOT_FOUND, format!("no kit named {name:?} (see `airlock kit ls`; to run a command instead: `airlock run -- {name} ...`)")))
    })
}

fn all() -> Vec<Kit> {
    let mut names: Vec<String> = BUILTIN.iter().map(|(n, _)| n.to_string()).collect();
    if let Some(d) = user_dir()
        && let Ok(rd) = std::fs::read_dir(d)
    {
        for e in rd.flatten() {
            if let Some(n) = e.file_name().to_string_lossy().strip_suffix(".toml")
                && !names.iter().any(|x| x == n)
            {
                names.push(n.to_string());
            }
        }
    }
    names.iter().filter_map(|n| load(n).ok()).collect()
}

pub fn dispatch(c: KitCommand) -> Result<i32, Failure> {
    match c {
        KitCommand::Kit(KitSub::Ls { json }) => {
            let kits = all();
            if json {
                println!("{}", serde_json::to_string_pretty(&kits)?);
            } else {
                for k in kits {
                    println!("{:<10} {}", k.name, k.description);
                }
            }
            Ok(0)
        }
        KitCommand::Kit(KitSub::Show { name, json }) => {
            let k = load(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&k)?);
                return Ok(0);
            }
            println!("{}  {}", ui::bold(&k.name), k.description);
            println!(
                "  command      {}",
                if k.command.is_empty() {
                    "(login shell)".into()
                } else {
                    k.command.join(" ")
                }
            );
            println!("  network      allow [{}]", k.allow.join(", "));
            for c in &k.credentials {
                println!(
                    "  credential   {} as {}: {} on {} (the sandbox sees a placeholder)",
                    c.service,
                    c.env,
                    c.header,
                    c.hosts.join(", ")
                );
            }
            for (key, v) in &k.env {
                println!("  env          {key}={v}");
            }
            if let Some(i) = &k.install {
                println!("  install      {i}");
            }
            Ok(0)
        }
    }
}

fn placeholder() -> String {
    let mut b = [0u8; 12];
    random_bytes(&mut b);
    format!(
        "airlock-placeholder-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// Apply a kit to a new sandbox's spec: its allowlist, environment and credential placeholders.
pub fn apply(kit: &Kit, spec: &mut SandboxSpec) {
    spec.kit = Some(kit.name.clone());
    for a in &kit.allow {
        if !spec.network.allow.contains(a) {
            spec.network.allow.push(a.clone());
        }
    }
    let home = spec.user.home.display().to_string();
    for (k, v) in &kit.env {
        let v = v.replace('~', &home);
        spec.env.retain(|(ek, _)| ek != k);
        spec.env.insert(0, (k.clone(), v));
    }
    for c in &kit.credentials {
        let p = placeholder();
        spec.env.retain(|(k, _)| k != &c.env);
        spec.env.push((c.env.clone(), p.clone()));
        spec.credentials.push(CredentialSpec {
            service: c.service.clone(),
            env: c.env.clone(),
            hosts: c.hosts.clone(),
            header: c.header.clone(),
            format: c.format.clone(),
            placeholder: p,
        });
    }
}

/// Whether the kit's program can be found inside a sandbox of `spec` (host directories,
/// template layers, the sandbox's own home), and if not, exactly how to install it.
pub fn check_installed(kit: &Kit, spec: &SandboxSpec, store: &Store) -> Result<(), Failure> {
    let Some(program) = kit.command.first() else {
        return Ok(());
    };
    let home = &spec.user.home;
    let path = kit
        .env
        .get("PATH")
        .cloned()
        .unwrap_or_else(|| airlock_ns::process::DEFAULT_PATH.to_string());
    let template = spec
        .template
        .as_ref()
        .map(|t| store.paths.templates().join(t));
    let sandbox_home = store.paths.sandbox_dir(&spec.name).join("home");
    let found = path.split(':').any(|dir| {
        let dir = dir.replace('~', &home.display().to_string());
        let dir = Path::new(&dir);
        let mut candidates = vec![dir.join(program)];
        if let Ok(rel) = dir.strip_prefix(home) {
            candidates.push(sandbox_home.join(rel).join(program));
            if let Some(t) = &template {
                candidates.push(t.join("home").join(rel).join(program));
            }
        } else if let (Some(t), Ok(rel)) = (&template, dir.strip_prefix("/")) {
            let mut comps = rel.components();
            if let Some(top) = comps.next() {
                candidates.push(
                    t.join("system")
                        .join(top.as_os_str())
                        .join(comps.as_path())
                        .join(program),
                );
            }
        }
        candidates.iter().any(|c| c.exists())
    });
    if found {
        return Ok(());
    }
    let install = kit
        .install
        .clone()
        .unwrap_or_else(|| format!("install {program}"));
    Err(fail(
        exit::FAILURE,
        format!(
            "{program} (kit {k}) is not installed where a sandbox can see it. Install it once into a template:\n  airlock run --name {k}-base --net balanced -- sh -c '{install}'\n  airlock save {k}-base {k}\n  airlock run {k} --template {k}",
            k = kit.name
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_services_fill_a_credential_and_others_must_say_everything() {
        let kit = parse(
            "name = \"k\"\n[[credentials]]\nservice = \"github\"\n[[credentials]]\nservice = \"anthropic\"\nhosts = [\"api.anthropic.test\"]\n",
            "test",
        )
        .unwrap();
        let gh = &kit.credentials[0];
        assert_eq!(gh.env, "GITHUB_TOKEN");
        assert!(gh.hosts.contains(&"github.com".to_string()), "{gh:?}");
        assert_eq!(
            (gh.header.as_str(), gh.format.as_str()),
            ("authorization", "Bearer {secret}")
        );
        assert_eq!(kit.credentials[1].hosts, vec!["api.anthropic.test"]);
        assert_eq!(kit.credentials[1].header, "x-api-key");
        let e = parse(
            "name = \"k\"\n[[credentials]]\nservice = \"acme\"\nhosts = [\"a.test\"]\n",
            "test",
        )
        .unwrap_err();
        let msg = e.error.to_string();
        assert!(msg.contains("needs env, hosts, header and format"), "{msg}");
        for (n, t) in BUILTIN {
            parse(t, n).unwrap();
        }
    }
}
