//! What bs-users keeps under `<root>/var/lib/bs/`:
//!
//! * `users/ledger.json`: the accounts bs manages. Only these are ever
//!   disabled or have their memberships set; everyone else is left alone.
//! * `users/snapshot.json`: what `keys refresh` needs (each active user's
//!   repository keys and the fetch settings), so the timer works without
//!   a repository checkout.
//! * `users/refresh.json`: the last fetch result per login, for `list`.
//! * `keys/<login>.keys`: the last good fetched keys of each login, used
//!   when a fetch fails so a flaky proxy never locks anyone out.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use bs_core::config::{AuthorizedKeysMode, GuardConfig, HttpSettings};
use bs_core::safefs::{self, FileSpec};
use bs_core::{CoreError, Root};

pub const STATE_DIR: &str = "/var/lib/bs/users";
pub const KEYS_DIR: &str = "/var/lib/bs/keys";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ledger {
    pub users: BTreeMap<String, LedgerEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LedgerEntry {
    pub login: String,
    pub uid: u32,
    #[serde(default)]
    pub disabled: bool,
    /// True when the account existed before bs managed it.
    #[serde(default)]
    pub adopted: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub fetch_keys: bool,
    pub key_source: String,
    pub fetch_concurrency: usize,
    pub fetch_retries: u32,
    pub authorized_keys: Option<AuthorizedKeysMode>,
    pub central_keys_dir: PathBuf,
    pub http: Option<HttpSettings>,
    /// The mass-change limits, for the refresh's key-drop check.
    #[serde(default)]
    pub guard: Option<GuardConfig>,
    pub users: Vec<SnapshotUser>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotUser {
    pub name: String,
    pub login: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    /// The text of keys/<login> in the repository at the last apply.
    pub repo_keys: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefreshResult {
    pub ok: bool,
    pub at: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

fn private_dir() -> FileSpec {
    FileSpec::root(0o700)
}

fn load_json<T: DeserializeOwned + Default>(root: &Root, path: &str) -> Result<T, CoreError> {
    let file = root.join(path);
    match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CoreError::Unsafe {
            path: file,
            reason: format!("cannot parse bs state: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(CoreError::io(file, e)),
    }
}

/// `/var/lib/bs` is shared by every tool (some run as the service account),
/// so it stays traversable; our own subdirectories are root-only.
fn ensure_private_dir(root: &Root, file: &std::path::Path) -> Result<(), CoreError> {
    safefs::ensure_dir_all(&root.join("/var/lib/bs"), &FileSpec::root(0o755))?;
    if let Some(dir) = file.parent() {
        safefs::ensure_dir_all(dir, &private_dir())?;
    }
    Ok(())
}

fn save_json<T: Serialize>(root: &Root, path: &str, value: &T) -> Result<bool, CoreError> {
    let file = root.join(path);
    ensure_private_dir(root, &file)?;
    let mut text = serde_json::to_vec_pretty(value).map_err(|e| CoreError::Unsafe {
        path: file.clone(),
        reason: e.to_string(),
    })?;
    text.push(b'\n');
    safefs::write_atomic(&file, &text, &FileSpec::root(0o600))
}

impl Ledger {
    pub fn load(root: &Root) -> Result<Ledger, CoreError> {
        load_json(root, &format!("{STATE_DIR}/ledger.json"))
    }
    pub fn save(&self, root: &Root) -> Result<bool, CoreError> {
        save_json(root, &format!("{STATE_DIR}/ledger.json"), self)
    }
}

impl Snapshot {
    pub fn load(root: &Root) -> Result<Option<Snapshot>, CoreError> {
        let file = root.join(format!("{STATE_DIR}/snapshot.json"));
        if !file.exists() {
            return Ok(None);
        }
        load_json(root, &format!("{STATE_DIR}/snapshot.json")).map(Some)
    }
    pub fn save(&self, root: &Root) -> Result<bool, CoreError> {
        save_json(root, &format!("{STATE_DIR}/snapshot.json"), self)
    }
}

pub fn load_refresh(root: &Root) -> Result<BTreeMap<String, RefreshResult>, CoreError> {
    load_json(root, &format!("{STATE_DIR}/refresh.json"))
}

pub fn save_refresh(root: &Root, r: &BTreeMap<String, RefreshResult>) -> Result<bool, CoreError> {
    save_json(root, &format!("{STATE_DIR}/refresh.json"), r)
}

/// The last good fetched keys of `login` (as rendered), if any.
pub fn last_good(root: &Root, login: &str) -> Result<Option<String>, CoreError> {
    let file = root.join(format!("{KEYS_DIR}/{login}.keys"));
    match std::fs::read_to_string(&file) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CoreError::io(file, e)),
    }
}

pub fn save_last_good(root: &Root, login: &str, text: &str) -> Result<bool, CoreError> {
    let file = root.join(format!("{KEYS_DIR}/{login}.keys"));
    ensure_private_dir(root, &file)?;
    safefs::write_atomic(&file, text.as_bytes(), &FileSpec::root(0o600))
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
