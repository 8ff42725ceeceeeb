//! `airlock secret`: the credentials the gate injects for agents. Values are read from a prompt
//! or stdin, never from the command line, and never printed.

use std::io::{IsTerminal, Read};

use airlock_core::secrets::{STORE_VAR, SecretSource, SecretStore, ServiceDef, StoreChoice};
use airlock_core::store::Store;
use clap::Subcommand;

use crate::app::{Failure, fail};
use crate::{exit, ui};

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store the credentials agents use; sandboxes only ever see placeholders
    #[command(
        subcommand,
        after_help = "Examples:
  airlock secret set anthropic                 # prompts (or reads stdin): never on the command line
  airlock secret set-custom acme --host api.acme.test --header x-acme-key
  airlock secret ls
  airlock secret rm anthropic

Built-in services: anthropic, openai, gemini, github. Without a stored secret the usual variable of
Airlock's own environment is used (ANTHROPIC_API_KEY, ...), still only at the gate.

Where secrets are stored: the OS keyring (Secret Service: gnome-keyring, KeePassXC...) when your
session has one, else a file only you can read (<state>/secrets.json, mode 0600). Lookup order:
keyring, file, environment. AIRLOCK_SECRET_STORE=file never uses the keyring; =keyring fails
rather than fall back to the file."
    )]
    Secret(SecretSub),
}

#[derive(Debug, Subcommand)]
pub enum SecretSub {
    /// Store a service's secret, read from a prompt or stdin
    Set { service: String },
    /// Define a custom service (hosts and header) and store its secret
    SetCustom {
        name: String,
        /// Hosts the secret is sent to (repeatable)
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Header carrying it, e.g. authorization or x-api-key
        #[arg(long)]
        header: String,
        /// Header value format; {secret} is replaced by the secret
        #[arg(long, default_value = "{secret}")]
        format: String,
        /// Variable name agents read (inside: the placeholder)
        #[arg(long)]
        env: Option<String>,
    },
    /// List services with a secret available and where it comes from (never values)
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Delete a stored secret (and a custom service definition)
    Rm { service: String },
}

/// "in the OS keyring" / "in FILE (why not the keyring)".
fn stored(secrets: &SecretStore, place: &SecretSource) -> String {
    match place {
        SecretSource::Keyring => "in the OS keyring (Secret Service)".into(),
        SecretSource::File(p) => match (secrets.choice(), secrets.keyring_unavailable()) {
            (StoreChoice::Auto, Some(why)) => {
                format!("in {} (mode 0600; no OS keyring: {why})", p.display())
            }
            _ => format!("in {} (mode 0600; {STORE_VAR}=file)", p.display()),
        },
        SecretSource::Environment(k) => format!("in ${k}"),
    }
}

fn read_secret(service: &str) -> Result<String, Failure> {
    let mut value = String::new();
    if std::io::stdin().is_terminal() {
        eprint!("secret for {service} (input hidden): ");
        // Turn echo off while reading.
        let _raw = airlock_ns::pty::RawMode::enter(0);
        let mut b = [0u8; 1];
        while std::io::stdin()
            .read(&mut b)
            .map(|n| n == 1)
            .unwrap_or(false)
            && b[0] != b'\r'
            && b[0] != b'\n'
        {
            if b[0] == 3 {
                return Err(fail(exit::FAILURE, "cancelled"));
            }
            value.push(b[0] as char);
        }
        eprintln!();
    } else {
        std::io::stdin()
            .read_to_string(&mut value)
            .map_err(|e| fail(exit::FAILURE, format!("reading stdin: {e}")))?;
    }
    let value = value.trim().to_string();
    if value.is_empty() {
        return Err(fail(exit::USAGE, "empty secret: nothing stored"));
    }
    Ok(value)
}

pub fn dispatch(c: SecretCommand) -> Result<i32, Failure> {
    let SecretCommand::Secret(sub) = c;
    let store = Store::open()?;
    let mut secrets = SecretStore::load(&store.paths.data)?;
    match sub {
        SecretSub::Set { service } => {
            if secrets.service(&service).is_none() {
                return Err(fail(
                    exit::USAGE,
                    format!(
                        "unknown service {service:?}: built-in ones are anthropic, openai, gemini, github; define others with `airlock secret set-custom`"
                    ),
                ));
            }
            let v = read_secret(&service)?;
            let place = secrets.set(&service, &v)?;
            ui::note(&format!(
                "stored the {service} secret {}",
                stored(&secrets, &place)
            ));
        }
        SecretSub::SetCustom {
            name,
            hosts,
            header,
            format,
            env,
        } => {
            if !format.contains("{secret}") {
                return Err(fail(exit::USAGE, "--format must contain {secret}"));
            }
            let env = env.unwrap_or_else(|| {
                format!("{}_API_KEY", name.to_ascii_uppercase().replace('-', "_"))
            });
            let v = read_secret(&name)?;
            secrets.set_custom(ServiceDef {
                service: name.clone(),
                env,
                hosts,
                header,
                format,
            })?;
            let place = secrets.set(&name, &v)?;
            ui::note(&format!(
                "stored the {name} secret {}",
                stored(&secrets, &place)
            ));
        }
        SecretSub::Ls { json } => {
            let list = secrets.list()?;
            if json {
                let v: Vec<serde_json::Value> = list
                    .iter()
                    .map(|(s, src)| match src {
                        SecretSource::Keyring => {
                            serde_json::json!({"service": s, "store": "keyring"})
                        }
                        SecretSource::File(p) => {
                            serde_json::json!({"service": s, "store": "file", "stored_in": p})
                        }
                        SecretSource::Environment(k) => {
                            serde_json::json!({"service": s, "store": "environment", "environment": k})
                        }
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                if list.is_empty() {
                    ui::note("no secrets; add one with `airlock secret set SERVICE`");
                }
                for (s, src) in list {
                    match src {
                        SecretSource::Keyring => {
                            println!("{s:<12} stored in the OS keyring (Secret Service)")
                        }
                        SecretSource::File(p) => println!("{s:<12} stored in {}", p.display()),
                        SecretSource::Environment(k) => {
                            println!("{s:<12} from ${k} of airlock's environment")
                        }
                    }
                }
                if let Some(why) = secrets.keyring_unavailable()
                    && secrets.choice() == StoreChoice::Auto
                {
                    ui::note(&format!(
                        "no OS keyring ({why}): new secrets go to {}",
                        secrets.file_path().display()
                    ));
                }
            }
        }
        SecretSub::Rm { service } => {
            if secrets.remove(&service)? {
                ui::note(&format!("removed the {service} secret"));
            } else {
                return Err(fail(
                    exit::NOT_FOUND,
                    format!("no stored secret for {service:?}"),
                ));
            }
        }
    }
    Ok(0)
}
