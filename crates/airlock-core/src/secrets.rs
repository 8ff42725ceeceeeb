//! Secrets for credential injection: stored by the user (`airlock secret set`), read only by the
//! host side (the gate), never passed into a sandbox.
//!
//! Storage: a JSON file only the user can read (`<data>/secrets.json`, mode 0600 in a 0700
//! directory). The OS keyring (Secret Service over D-Bus) is not used yet: a process running as
//! the user can read this file, exactly as it could ask an unlocked keyring; sandboxes cannot
//! (Airlock's state is masked or outside their view). Fallback: the service's usual environment
//! variable in the environment of `airlock` itself (e.g. `ANTHROPIC_API_KEY`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::CoreError;
use crate::store::{mkdir_private, write_atomic};

/// How a service's credential is sent: to which hosts, in which header, in which format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDef {
    pub service: String,
    /// The environment variable agents read it from (inside: a placeholder).
    pub env: String,
    pub hosts: Vec<String>,
    pub header: String,
    /// `{secret}` is replaced by the secret, e.g. `Bearer {secret}`.
    pub format: String,
}

/// The built-in services.
pub fn builtin_services() -> Vec<ServiceDef> {
    let def = |service: &str, env: &str, hosts: &[&str], header: &str, format: &str| ServiceDef {
        service: service.into(),
        env: env.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        header: header.into(),
        format: format.into(),
    };
    vec![
        def(
            "anthropic",
            "ANTHROPIC_API_KEY",
            &["api.anthropic.com"],
            "x-api-key",
            "{secret}",
        ),
        def(
            "openai",
            "OPENAI_API_KEY",
            &["api.openai.com"],
            "authorization",
            "Bearer {secret}",
        ),
        def(
            "gemini",
            "GEMINI_API_KEY",
            &["generativelanguage.googleapis.com"],
            "x-goog-api-key",
            "{secret}",
        ),
        def(
            "github",
            "GITHUB_TOKEN",
            // The API, and git over HTTPS (which sends it as `Basic`).
            &["api.github.com", "github.com"],
            "authorization",
            "Bearer {secret}",
        ),
    ]
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SecretsFile {
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    #[serde(default)]
    custom: BTreeMap<String, ServiceDef>,
}

#[derive(Debug, Clone)]
pub struct SecretStore {
    path: PathBuf,
    file: SecretsFile,
}

/// Where a secret came from, for `airlock secret ls` (never its value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SecretSource {
    File(PathBuf),
    Environment(String),
}

impl SecretStore {
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("secrets.json")
    }

    pub fn load(data_dir: &Path) -> Result<SecretStore, CoreError> {
        let path = Self::path_in(data_dir);
        let file = match std::fs::read_to_string(&path) {
            Ok(t) => parse_file(&t).map_err(|reason| CoreError::InvalidValue {
                what: "secrets file",
                value: path.display().to_string(),
                reason,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SecretsFile::default(),
            Err(e) => return Err(CoreError::io(&path, e)),
        };
        Ok(SecretStore { path, file })
    }

    fn save(&self) -> Result<(), CoreError> {
        if let Some(dir) = self.path.parent() {
            mkdir_private(dir)?;
        }
        let text = dump_file(&self.file);
        write_atomic(&self.path, text.as_bytes())
    }

    /// Every service this store knows: built-in ones and the user's custom ones.
    pub fn services(&self) -> Vec<ServiceDef> {
        let mut v = builtin_services();
        v.extend(self.file.custom.values().cloned());
        v
    }

    pub fn service(&self, name: &str) -> Option<ServiceDef> {
        self.services().into_iter().find(|s| s.service == name)
    }

    pub fn set(&mut self, service: &str, value: &str) -> Result<(), CoreError> {
        self.file
            .secrets
            .insert(service.to_string(), value.to_string());
        self.save()
    }

    pub fn set_custom(&mut self, def: ServiceDef) -> Result<(), CoreError> {
        self.file.custom.insert(def.service.clone(), def);
        self.save()
    }

    pub fn remove(&mut self, service: &str) -> Result<bool, CoreError> {
        let had = self.file.secrets.remove(service).is_some()
            | self.file.custom.remove(service).is_some();
        if had {
            self.save()?;
        }
        Ok(had)
    }

    /// The secret of `service`: stored, else from the service's usual variable in our own
    /// environment.
    pub fn get(&self, service: &str) -> Option<(String, SecretSource)> {
        if let Some(v) = self.file.secrets.get(service) {
            return Some((v.clone(), SecretSource::File(self.path.clone())));
        }
        let def = self.service(service)?;
        let mut vars = vec![def.env.clone()];
        if service == "github" {
            vars.push("GH_TOKEN".into());
        }
        vars.into_iter().find_map(|k| {
            std::env::var(&k)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| (v, SecretSource::Environment(k)))
        })
    }

    /// Names of the services with a secret available, and where it is.
    pub fn list(&self) -> Vec<(String, SecretSource)> {
        self.services()
            .iter()
            .filter_map(|s| {
                self.get(&s.service)
                    .map(|(_, src)| (s.service.clone(), src))
            })
            .collect()
    }
}

fn parse_file(t: &str) -> Result<SecretsFile, String> {
    serde_json::from_str(t).map_err(|e| e.to_string())
}

fn dump_file(f: &SecretsFile) -> String {
    serde_json::to_string_pretty(f).unwrap_or_default()
}
