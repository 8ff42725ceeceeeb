//! Secrets for credential injection: stored by the user (`airlock secret set`), read only by the
//! host side (the gate), never passed into a sandbox.
//!
//! Stores, looked up in this order:
//! 1. the OS keyring (the freedesktop Secret Service over the user's D-Bus session bus), where
//!    one is reachable: encrypted at rest, unlocked for the login session ([`keyring`]);
//! 2. a JSON file only the user can read (`<data>/secrets.json`, mode 0600 in a 0700
//!    directory), where there is no keyring (servers, CI) or `AIRLOCK_SECRET_STORE=file`;
//! 3. the service's usual environment variable in the environment of `airlock` itself (e.g.
//!    `ANTHROPIC_API_KEY`).
//!
//! Custom service definitions (hosts, header: not secret) always live in the file. Sandboxes
//! reach neither store: no D-Bus socket is mounted in, and Airlock's state is masked or outside
//! their view.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::CoreError;
use crate::store::{mkdir_private, write_atomic};

#[cfg(feature = "keyring")]
pub mod keyring;

/// Without the `keyring` feature: never available.
#[cfg(not(feature = "keyring"))]
pub mod keyring {
    use zeroize::Zeroizing;

    pub use super::KeyringError;

    fn off<T>() -> Result<T, KeyringError> {
        Err(KeyringError::Unavailable(
            "this airlock was built without keyring support".into(),
        ))
    }
    pub fn get(_: &str) -> Result<Option<Zeroizing<String>>, KeyringError> {
        off()
    }
    pub fn set(_: &str, _: &str) -> Result<(), KeyringError> {
        off()
    }
    pub fn remove(_: &str) -> Result<bool, KeyringError> {
        off()
    }
    pub fn services() -> Result<Vec<String>, KeyringError> {
        off()
    }
}

/// Why a keyring operation did not happen (with or without the `keyring` feature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyringError {
    /// There is no keyring to talk to (no session bus, no provider, no answer).
    Unavailable(String),
    /// The keyring answered but the operation failed (locked, prompt dismissed…).
    Failed(String),
}

impl KeyringError {
    pub fn message(&self) -> &str {
        match self {
            KeyringError::Unavailable(m) | KeyringError::Failed(m) => m,
        }
    }
}

/// Where `airlock secret set` stores, from `AIRLOCK_SECRET_STORE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreChoice {
    /// The keyring where one is reachable, else the file (the default).
    Auto,
    /// Only the file; D-Bus is never used.
    File,
    /// Only the keyring: an error when there is none.
    Keyring,
}

/// The variable that chooses the store.
pub const STORE_VAR: &str = "AIRLOCK_SECRET_STORE";

impl StoreChoice {
    pub fn parse(v: &str) -> Result<StoreChoice, CoreError> {
        match v.trim() {
            "" | "auto" => Ok(StoreChoice::Auto),
            "file" => Ok(StoreChoice::File),
            "keyring" => Ok(StoreChoice::Keyring),
            other => Err(CoreError::InvalidValue {
                what: STORE_VAR,
                value: other.to_string(),
                reason: "expected auto (the default), file or keyring".into(),
            }),
        }
    }

    /// From `AIRLOCK_SECRET_STORE` (unset: auto).
    pub fn from_env() -> Result<StoreChoice, CoreError> {
        match std::env::var(STORE_VAR) {
            Ok(v) => StoreChoice::parse(&v),
            Err(_) => Ok(StoreChoice::Auto),
        }
    }
}

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

#[derive(Debug)]
pub struct SecretStore {
    path: PathBuf,
    file: SecretsFile,
    choice: StoreChoice,
    /// Why the keyring is not used, once known: checked at first use, then not asked again.
    keyring_down: std::cell::RefCell<Option<String>>,
}

/// Where a secret came from, for `airlock secret ls` (never its value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SecretSource {
    /// The OS keyring (Secret Service).
    Keyring,
    File(PathBuf),
    Environment(String),
}

impl SecretSource {
    /// `keyring`, `file` or `environment`.
    pub fn kind(&self) -> &'static str {
        match self {
            SecretSource::Keyring => "keyring",
            SecretSource::File(_) => "file",
            SecretSource::Environment(_) => "environment",
        }
    }
}

impl SecretStore {
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("secrets.json")
    }

    /// The store of `data_dir`, with the choice of `AIRLOCK_SECRET_STORE`.
    pub fn load(data_dir: &Path) -> Result<SecretStore, CoreError> {
        Self::load_with(data_dir, StoreChoice::from_env()?)
    }

    pub fn load_with(data_dir: &Path, choice: StoreChoice) -> Result<SecretStore, CoreError> {
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
        let down = (choice == StoreChoice::File).then(|| format!("{STORE_VAR}=file"));
        Ok(SecretStore {
            path,
            file,
            choice,
            keyring_down: std::cell::RefCell::new(down),
        })
    }

    /// The file of the file store.
    pub fn file_path(&self) -> &Path {
        &self.path
    }

    pub fn choice(&self) -> StoreChoice {
        self.choice
    }

    /// Why the keyring is not used, if it is known not to be (`None`: in use, or not tried yet).
    pub fn keyring_unavailable(&self) -> Option<String> {
        self.keyring_down.borrow().clone()
    }

    fn save(&self) -> Result<(), CoreError> {
        if let Some(dir) = self.path.parent() {
            mkdir_private(dir)?;
        }
        let text = dump_file(&self.file);
        write_atomic(&self.path, text.as_bytes())
    }

    /// Runs a keyring operation unless the keyring is known to be out of reach. `Ok(None)`: not
    /// used (auto mode, no keyring: the caller falls back to the file). With
    /// `AIRLOCK_SECRET_STORE=keyring`, no keyring is an error; so is, in any mode, a keyring that
    /// answered but failed, when `strict`.
    fn keyring<T>(
        &self,
        strict: bool,
        op: impl FnOnce() -> Result<T, KeyringError>,
    ) -> Result<Option<T>, CoreError> {
        if let Some(why) = self.keyring_down.borrow().clone() {
            return match self.choice {
                StoreChoice::Keyring => Err(keyring_error(&KeyringError::Unavailable(why))),
                _ => Ok(None),
            };
        }
        match op() {
            Ok(v) => Ok(Some(v)),
            Err(e @ KeyringError::Unavailable(_)) => {
                *self.keyring_down.borrow_mut() = Some(e.message().to_string());
                match self.choice {
                    StoreChoice::Keyring => Err(keyring_error(&e)),
                    _ => Ok(None),
                }
            }
            Err(e) if strict || self.choice == StoreChoice::Keyring => Err(keyring_error(&e)),
            Err(_) => Ok(None),
        }
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

    /// Stores `service`'s secret: in the keyring when one is reachable (and then removes any
    /// copy from the file), else in the file. Where it went.
    pub fn set(&mut self, service: &str, value: &str) -> Result<SecretSource, CoreError> {
        if self
            .keyring(true, || keyring::set(service, value))?
            .is_some()
        {
            if self.file.secrets.remove(service).is_some() {
                self.save()?;
            }
            return Ok(SecretSource::Keyring);
        }
        self.file
            .secrets
            .insert(service.to_string(), value.to_string());
        self.save()?;
        Ok(SecretSource::File(self.path.clone()))
    }

    pub fn set_custom(&mut self, def: ServiceDef) -> Result<(), CoreError> {
        self.file.custom.insert(def.service.clone(), def);
        self.save()
    }

    /// Deletes `service`'s secret from the keyring and the file (and its custom definition);
    /// whether there was anything.
    pub fn remove(&mut self, service: &str) -> Result<bool, CoreError> {
        let in_keyring = self
            .keyring(true, || keyring::remove(service))?
            .unwrap_or(false);
        let in_file = self.file.secrets.remove(service).is_some()
            | self.file.custom.remove(service).is_some();
        if in_file {
            self.save()?;
        }
        Ok(in_keyring || in_file)
    }

    /// The secret of `service` and where it came from: the keyring, else the file, else the
    /// service's usual variable in our own environment.
    pub fn lookup(
        &self,
        service: &str,
    ) -> Result<Option<(Zeroizing<String>, SecretSource)>, CoreError> {
        if let Some(Some(v)) = self.keyring(false, || keyring::get(service))? {
            return Ok(Some((v, SecretSource::Keyring)));
        }
        if let Some(v) = self.file.secrets.get(service) {
            return Ok(Some((
                Zeroizing::new(v.clone()),
                SecretSource::File(self.path.clone()),
            )));
        }
        Ok(self.in_environment(service))
    }

    fn in_environment(&self, service: &str) -> Option<(Zeroizing<String>, SecretSource)> {
        let def = self.service(service)?;
        let mut vars = vec![def.env.clone()];
        if service == "github" {
            vars.push("GH_TOKEN".into());
        }
        vars.into_iter().find_map(|k| {
            std::env::var(&k)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| (Zeroizing::new(v), SecretSource::Environment(k)))
        })
    }

    /// [`SecretStore::lookup`], with a store that fails counted as holding nothing.
    pub fn get(&self, service: &str) -> Option<(String, SecretSource)> {
        self.lookup(service)
            .ok()
            .flatten()
            .map(|(v, src)| (v.to_string(), src))
    }

    /// Names of the services with a secret available, and where it is (values are not read).
    pub fn list(&self) -> Result<Vec<(String, SecretSource)>, CoreError> {
        let in_keyring = self.keyring(false, keyring::services)?.unwrap_or_default();
        Ok(self
            .services()
            .iter()
            .filter_map(|s| {
                let name = s.service.clone();
                if in_keyring.contains(&name) {
                    Some((name, SecretSource::Keyring))
                } else if self.file.secrets.contains_key(&name) {
                    Some((name, SecretSource::File(self.path.clone())))
                } else {
                    self.in_environment(&name).map(|(_, src)| (name, src))
                }
            })
            .collect())
    }
}

fn keyring_error(e: &KeyringError) -> CoreError {
    CoreError::Keyring(match e {
        KeyringError::Unavailable(why) => format!(
            "{why}; start a Secret Service provider (gnome-keyring, KeePassXC) in your session, or set {STORE_VAR}=file (or unset it) to use Airlock's 0600 file"
        ),
        KeyringError::Failed(why) => format!(
            "{why}; unlock the keyring and try again, or set {STORE_VAR}=file to use Airlock's 0600 file"
        ),
    })
}

fn parse_file(t: &str) -> Result<SecretsFile, String> {
    serde_json::from_str(t).map_err(|e| e.to_string())
}

fn dump_file(f: &SecretsFile) -> String {
    serde_json::to_string_pretty(f).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_store_keeps_secrets_private_and_never_uses_dbus() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut st = SecretStore::load_with(&data, StoreChoice::File).unwrap();
        st.set_custom(ServiceDef {
            service: "acme".into(),
            env: "AIRLOCK_TEST_ACME_KEY_NEVER_SET".into(),
            hosts: vec!["api.acme.test".into()],
            header: "x-acme-key".into(),
            format: "{secret}".into(),
        })
        .unwrap();
        assert_eq!(
            st.set("acme", "acme-secret-1").unwrap(),
            SecretSource::File(SecretStore::path_in(&data))
        );
        assert_eq!(
            st.keyring_unavailable().as_deref(),
            Some("AIRLOCK_SECRET_STORE=file")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(st.file_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut st = SecretStore::load_with(&data, StoreChoice::File).unwrap();
        let (v, src) = st.lookup("acme").unwrap().unwrap();
        assert_eq!((v.as_str(), src.kind()), ("acme-secret-1", "file"));
        assert!(
            st.list()
                .unwrap()
                .contains(&("acme".into(), SecretSource::File(st.file_path().into())))
        );
        assert!(st.remove("acme").unwrap());
        assert!(!st.remove("acme").unwrap());
        assert!(st.lookup("acme").unwrap().is_none());
        assert!(
            st.service("acme").is_none(),
            "rm drops the custom definition too"
        );
    }

    #[test]
    fn the_choice_is_parsed_strictly() {
        assert_eq!(StoreChoice::parse("").unwrap(), StoreChoice::Auto);
        assert_eq!(StoreChoice::parse("keyring").unwrap(), StoreChoice::Keyring);
        let e = StoreChoice::parse("vault").unwrap_err().to_string();
        assert!(
            e.contains("AIRLOCK_SECRET_STORE") && e.contains("auto"),
            "{e}"
        );
    }
}
