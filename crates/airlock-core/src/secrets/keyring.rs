//! The OS keyring: the freedesktop Secret Service (gnome-keyring, KeePassXC, KWallet's
//! bridge…) on the user's D-Bus session bus, through `secret-service` (pure Rust D-Bus, no
//! libdbus).
//!
//! Each operation opens its own connection on a private single-threaded runtime and closes both
//! before returning: no thread outlives a call (the supervisor forks right after reading
//! secrets). Finding out that there is no keyring is fast and bounded: without a session bus
//! socket nothing is attempted; otherwise connecting (which may start the provider by D-Bus
//! activation) is given [`CONNECT_TIMEOUT`].
//!
//! Items carry the attributes `application=airlock` and `service=NAME`, in the default
//! collection (usually the login keyring).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use secret_service::{EncryptionType, Error, SecretService};
use zeroize::Zeroizing;

/// Connecting to the bus and opening a Secret Service session.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One call that needs no user interaction.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A call that may show an unlock prompt on the desktop.
const PROMPT_TIMEOUT: Duration = Duration::from_secs(60);

pub use super::KeyringError;

/// The attributes of `service`'s item.
fn attributes(service: &str) -> HashMap<&str, &str> {
    HashMap::from([("application", "airlock"), ("service", service)])
}

/// Whether a session bus can be reached at all, without connecting: the address zbus would use
/// (`DBUS_SESSION_BUS_ADDRESS`, else `$XDG_RUNTIME_DIR/bus`) must name a socket that exists.
pub fn session_bus() -> Result<(), KeyringError> {
    let unavailable = |m: String| Err(KeyringError::Unavailable(m));
    match std::env::var("DBUS_SESSION_BUS_ADDRESS") {
        Ok(addr) if !addr.trim().is_empty() => {
            let mut paths = Vec::new();
            for transport in addr.split(';') {
                let Some(params) = transport.strip_prefix("unix:") else {
                    return Ok(()); // tcp: and others: only connecting tells
                };
                for kv in params.split(',') {
                    match kv.split_once('=') {
                        Some(("path", p)) => {
                            paths.push(PathBuf::from(crate::units::dbus_unescape(p)))
                        }
                        Some(("abstract" | "tmpdir" | "dir" | "runtime", _)) => return Ok(()),
                        _ => {}
                    }
                }
            }
            if paths.iter().any(|p| p.exists()) {
                Ok(())
            } else {
                unavailable(format!(
                    "DBUS_SESSION_BUS_ADDRESS={addr} names no socket that exists"
                ))
            }
        }
        _ => {
            let dir = std::env::var("XDG_RUNTIME_DIR")
                .ok()
                .filter(|d| !d.is_empty())
                // SAFETY: geteuid cannot fail.
                .unwrap_or_else(|| format!("/run/user/{}", unsafe { libc::geteuid() }));
            let bus = PathBuf::from(dir).join("bus");
            if bus.exists() {
                Ok(())
            } else {
                unavailable(format!(
                    "no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is not set and {} does not exist)",
                    bus.display()
                ))
            }
        }
    }
}

/// A readable account of a Secret Service error.
fn describe(e: &Error) -> String {
    match e {
        Error::Locked => "the keyring is locked".into(),
        Error::Prompt => "the keyring's unlock prompt was dismissed".into(),
        Error::PromptDisconnected => "the keyring went away during its unlock prompt".into(),
        Error::NoResult => "the keyring has no default collection".into(),
        Error::Unavailable => "no Secret Service provider on the session bus".into(),
        e => e.to_string(),
    }
}

/// Runs `fut` on a private single-threaded runtime, then shuts the runtime down.
fn block<T>(fut: impl Future<Output = Result<T, KeyringError>>) -> Result<T, KeyringError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| KeyringError::Unavailable(format!("starting a D-Bus client: {e}")))?;
    let out = rt.block_on(fut);
    rt.shutdown_timeout(Duration::from_millis(500));
    out
}

async fn timed<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, KeyringError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(KeyringError::Failed(format!("{what}: {}", describe(&e)))),
        Err(_) => Err(KeyringError::Failed(format!(
            "{what}: no answer within {} s",
            limit.as_secs()
        ))),
    }
}

/// A session with the Secret Service (secrets travel encrypted over the bus).
/// The items whose attributes include `attrs` (locked and unlocked).
async fn search<'a>(
    ss: &'a SecretService<'static>,
    attrs: HashMap<&str, &str>,
) -> Result<secret_service::SearchItemsResult<secret_service::Item<'a>>, KeyringError> {
    timed(
        CALL_TIMEOUT,
        "searching the keyring",
        ss.search_items(attrs),
    )
    .await
}

async fn connect() -> Result<SecretService<'static>, KeyringError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, SecretService::connect(EncryptionType::Dh)).await {
        Ok(Ok(ss)) => Ok(ss),
        Ok(Err(e)) => Err(KeyringError::Unavailable(format!(
            "connecting to the Secret Service: {}",
            describe(&e)
        ))),
        Err(_) => Err(KeyringError::Unavailable(format!(
            "the Secret Service did not answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// The secret stored for `service`, if any. A locked item is unlocked first (which may prompt).
pub fn get(service: &str) -> Result<Option<Zeroizing<String>>, KeyringError> {
    session_bus()?;
    block(async {
        let ss = connect().await?;
        let found = search(&ss, attributes(service)).await?;
        let item = match (found.unlocked.first(), found.locked.first()) {
            (Some(item), _) => item,
            (None, Some(item)) => {
                timed(PROMPT_TIMEOUT, "unlocking the keyring", item.unlock()).await?;
                item
            }
            (None, None) => return Ok(None),
        };
        let secret =
            Zeroizing::new(timed(CALL_TIMEOUT, "reading the secret", item.get_secret()).await?);
        let text = std::str::from_utf8(&secret).map_err(|_| {
            KeyringError::Failed(format!(
                "the keyring's {service} secret is not UTF-8 text; store it again with `airlock secret set {service}`"
            ))
        })?;
        Ok(Some(Zeroizing::new(text.to_string())))
    })
}

/// Stores `value` as `service`'s secret in the default collection (replacing any).
pub fn set(service: &str, value: &str) -> Result<(), KeyringError> {
    session_bus()?;
    block(async {
        let ss = connect().await?;
        let collection = timed(
            CALL_TIMEOUT,
            "opening the default keyring",
            ss.get_default_collection(),
        )
        .await?;
        if timed(
            CALL_TIMEOUT,
            "opening the default keyring",
            collection.is_locked(),
        )
        .await?
        {
            timed(PROMPT_TIMEOUT, "unlocking the keyring", collection.unlock()).await?;
        }
        timed(
            PROMPT_TIMEOUT,
            "storing the secret",
            collection.create_item(
                &format!("Airlock: {service} secret"),
                attributes(service),
                value.as_bytes(),
                true,
                "text/plain",
            ),
        )
        .await?;
        Ok(())
    })
}

/// Deletes `service`'s items; whether there were any.
pub fn remove(service: &str) -> Result<bool, KeyringError> {
    session_bus()?;
    block(async {
        let ss = connect().await?;
        let found = search(&ss, attributes(service)).await?;
        let mut any = false;
        for item in found.unlocked.iter().chain(&found.locked) {
            timed(PROMPT_TIMEOUT, "deleting the secret", item.delete()).await?;
            any = true;
        }
        Ok(any)
    })
}

/// The services that have a secret in the keyring (their values are not read).
pub fn services() -> Result<Vec<String>, KeyringError> {
    session_bus()?;
    block(async {
        let ss = connect().await?;
        let found = search(&ss, HashMap::from([("application", "airlock")])).await?;
        let mut names = Vec::new();
        for item in found.unlocked.iter().chain(&found.locked) {
            let attrs = timed(CALL_TIMEOUT, "reading an item", item.get_attributes()).await?;
            if let Some(s) = attrs.get("service") {
                names.push(s.clone());
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    })
}
