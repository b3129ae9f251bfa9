//! `[users]`: groups, the people lists and where SSH keys come from and go.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::layers::Layers;
use crate::error::Result;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsersConfig {
    /// Groups bs manages, by name; a pinned gid is created with exactly
    /// that gid, and a gid taken by another group is an error.
    pub groups: BTreeMap<String, GroupSpec>,
    /// People lists by name: a file of GitHub logins and the groups each
    /// login on it gets. A login on several lists gets the union.
    pub lists: BTreeMap<String, ListSpec>,
    /// The repo directory with extra public keys, one file a login.
    pub keys_dir: PathBuf,
    /// Fetch `<key_source>/<login>.keys` (a GitHub keys proxy). Off in the
    /// test backend so it needs no network.
    pub fetch_keys: bool,
    pub key_source: String,
    pub fetch_concurrency: usize,
    /// Retries after a 5xx or a timeout (not after a 404 or garbage).
    pub fetch_retries: u32,
    pub authorized_keys: AuthorizedKeysMode,
    /// Where the keys files live in `central` mode.
    pub central_keys_dir: PathBuf,
    /// How `keys refresh` is scheduled on this backend.
    pub refresh: RefreshMode,
    pub shell: PathBuf,
    pub disabled_shell: PathBuf,
    pub home_base: PathBuf,
    /// Existing accounts bs did not create that it may take over, by Unix
    /// name (hosts migrating from the bash backend-server). Only within the
    /// people's uid range of login.defs, never the service account; any
    /// other existing account on a list is refused.
    pub adopt: Vec<String>,
    /// Limits on what one run may do without a human's `--allow-mass-change`.
    pub guard: GuardConfig,
}

/// A run past one of these stops with exit 2 before changing anything: a
/// truncated list or a key server answering empty for everyone must not
/// lock the platform team out (issue 12, items 6 and 7).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// Disabling more than this share of the active managed people (and
    /// more than one) at once.
    pub max_disable_share: f64,
    /// Dropping every fetched key of more than this share of the users
    /// holding fetched keys (and more than one) at once.
    pub max_key_drop_share: f64,
    /// Groups that grant sudo: a run that would leave one of them without
    /// members (that had some) stops.
    pub sudo_groups: Vec<String>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            max_disable_share: 0.25,
            max_key_drop_share: 0.25,
            sudo_groups: vec!["sudo".into()],
        }
    }
}

impl Default for UsersConfig {
    fn default() -> Self {
        UsersConfig {
            groups: BTreeMap::new(),
            lists: BTreeMap::new(),
            keys_dir: PathBuf::from("keys"),
            fetch_keys: false,
            key_source: String::new(),
            fetch_concurrency: 16,
            fetch_retries: 2,
            authorized_keys: AuthorizedKeysMode::Central,
            central_keys_dir: PathBuf::from("/etc/ssh/authorized_keys.d"),
            refresh: RefreshMode::None,
            shell: PathBuf::from("/bin/bash"),
            disabled_shell: PathBuf::from("/usr/sbin/nologin"),
            home_base: PathBuf::from("/home"),
            adopt: Vec::new(),
            guard: GuardConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListSpec {
    /// Path of the list file, relative to the repository.
    pub file: PathBuf,
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthorizedKeysMode {
    /// Root-owned `/etc/ssh/authorized_keys.d/<user>`; users cannot edit them.
    Central,
    /// `~/.ssh/authorized_keys`, written through file descriptors.
    Home,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RefreshMode {
    Systemd,
    Cron,
    None,
}

impl UsersConfig {
    pub(super) fn validate(&self, layers: &Layers) -> Result<()> {
        for (name, list) in &self.lists {
            for group in &list.groups {
                if !self.groups.contains_key(group) {
                    return Err(layers.error(
                        &format!("users.lists.{name}.groups"),
                        format!("group {group:?} is not declared under [users.groups]"),
                    ));
                }
            }
        }
        for name in self.groups.keys() {
            if !valid_unix_name(name) {
                return Err(layers.error(
                    &format!("users.groups.{name}"),
                    "not a valid group name (lower-case letters, digits, - and _, 32 at most)",
                ));
            }
        }
        if self.fetch_keys && !super::is_http_url(&self.key_source) {
            return Err(layers.error(
                "users.key_source",
                "fetch_keys is on, so key_source must be an http(s) URL",
            ));
        }
        for (key, share) in [
            (
                "users.guard.max_disable_share",
                self.guard.max_disable_share,
            ),
            (
                "users.guard.max_key_drop_share",
                self.guard.max_key_drop_share,
            ),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(layers.error(key, "must be a share between 0.0 and 1.0"));
            }
        }
        for name in &self.adopt {
            if !valid_unix_name(name) {
                return Err(
                    layers.error("users.adopt", format!("{name:?} is not a Unix user name"))
                );
            }
        }
        if self.fetch_concurrency == 0 {
            return Err(layers.error("users.fetch_concurrency", "must be at least 1"));
        }
        Ok(())
    }

    /// Every group bs manages membership of.
    pub fn managed_groups(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(String::as_str)
    }
}

/// A Unix user or group name Debian's shadow-utils accept by default.
pub fn valid_unix_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_lowercase() || c == '_' => {}
        _ => return false,
    }
    name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}
