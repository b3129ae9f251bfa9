//! `[release]`: the settings of bs-release (see docs/bs-release.md).

use std::path::PathBuf;

use serde::Deserialize;

use super::layers::Layers;
use super::users::UsersConfig;
use crate::error::Result;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReleaseConfig {
    /// Base URL of the release server: files go to
    /// `{server}/releases/workspace/{ws}` and `{server}/releases/release/{id}`.
    /// Empty: `publish` is refused (the token is `RELEASE_TOKEN` in the secrets file).
    pub server: String,
    /// The env file holding `RELEASE_TOKEN`: owned by the service account
    /// (bs-release runs as it and cannot read root's secrets file), mode 0600.
    pub secrets_file: PathBuf,
    /// Members of any of these groups may create requests (authors).
    pub author_groups: Vec<String>,
    /// Members of any of these groups review, approve and publish (output checkers).
    pub checker_groups: Vec<String>,
    /// Independent reviews every file needs before the request can be approved.
    pub reviews_needed: u32,
    /// The largest file the release server takes, in bytes.
    pub max_file_bytes: u64,
    /// Disclosure check: a count in a CSV cell at or below this (and above 0) is flagged.
    pub low_count_threshold: u64,
    /// Disclosure check: a CSV with more data rows than this is flagged.
    pub max_csv_rows: u64,
    /// Disclosure check: file types (extensions, lower case, no dot) that may be released.
    pub allowed_extensions: Vec<String>,
    /// Attempts per HTTP call to the release server (a timeout, a refused connection or a 5xx).
    pub upload_attempts: u32,
    /// Pause between attempts, in milliseconds (doubled after each failure).
    pub retry_delay_ms: u64,
    /// Total time allowed for one HTTP call to the release server, in seconds.
    pub upload_timeout_secs: u64,
    /// Hashing threads for `files`; 0 = one per CPU.
    pub hash_threads: usize,
    /// Threads for `request add`, which copies, hashes and checks each file
    /// at once; the copies wait for the disk, so more threads than CPUs keep
    /// both the CPUs and the disk's queue busy. 0 = 16, or two per CPU where
    /// that is more.
    pub copy_threads: usize,
    /// Post request status changes to `{server}/airlock/events/`, as Airlock
    /// does, so job-server can notify people (best effort: a failed post is
    /// reported, never fatal).
    pub events: bool,
    /// The Unix socket `bs-release serve` listens on (the SSH mode: people
    /// reach it with `ssh -L 8000:<socket> <backend>`; who they are comes
    /// from the kernel, SO_PEERCRED).
    pub web_socket: PathBuf,
}

impl Default for ReleaseConfig {
    fn default() -> Self {
        ReleaseConfig {
            server: String::new(),
            secrets_file: PathBuf::from("/etc/bs/release.env"),
            author_groups: vec!["researchers".into(), "developers".into()],
            checker_groups: vec!["reviewers".into()],
            reviews_needed: 2,
            max_file_bytes: 16 * 1024 * 1024,
            low_count_threshold: 7,
            max_csv_rows: 5000,
            allowed_extensions: [
                "csv", "tsv", "txt", "json", "md", "html", "png", "jpg", "jpeg", "svg", "pdf",
                "log",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            upload_attempts: 3,
            retry_delay_ms: 1000,
            upload_timeout_secs: 300,
            hash_threads: 0,
            copy_threads: 0,
            events: false,
            web_socket: PathBuf::from("/run/bs-release/web.sock"),
        }
    }
}

impl ReleaseConfig {
    pub(super) fn validate(&self, layers: &Layers, users: &UsersConfig) -> Result<()> {
        if self.reviews_needed < 2 {
            return Err(layers.error(
                "release.reviews_needed",
                "every file needs at least two independent reviews",
            ));
        }
        if self.upload_attempts == 0 {
            return Err(layers.error("release.upload_attempts", "must be at least 1"));
        }
        if self.checker_groups.is_empty() {
            return Err(layers.error("release.checker_groups", "no group may review releases"));
        }
        for (key, list) in [
            ("release.author_groups", &self.author_groups),
            ("release.checker_groups", &self.checker_groups),
        ] {
            for g in list {
                if !users.groups.is_empty() && !users.groups.contains_key(g) {
                    return Err(layers.error(
                        key,
                        format!("group {g:?} is not one of the groups in [users.groups]"),
                    ));
                }
            }
        }
        if !self.server.is_empty() && !super::is_http_url(&self.server) {
            return Err(layers.error("release.server", "must be an http:// or https:// URL"));
        }
        for ext in &self.allowed_extensions {
            if ext.is_empty() || ext.starts_with('.') || ext.to_lowercase() != *ext {
                return Err(layers.error(
                    "release.allowed_extensions",
                    format!("{ext:?}: give a lower-case extension without the dot"),
                ));
            }
        }
        Ok(())
    }
}
