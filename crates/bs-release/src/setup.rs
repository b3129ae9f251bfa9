//! `plan` / `apply`: what bs-release needs before people can use it through
//! sudo: the request store and the audit directory, owned by the service
//! account, the config snapshot under `/var/lib/bs/repo`, and
//! `/etc/bs/release.toml`, which pins that snapshot and the backend for runs
//! through sudo (sudo drops BS_REPO/BS_BACKEND, and a caller must not be able
//! to choose a config of their own). The pin names the snapshot, not the
//! operator's checkout: that may be deleted or moved after `just manage`, or
//! sit in a home the service account cannot read.

use std::ffi::OsStr;

use bs_core::config::{Config, Snapshot, Source};
use bs_core::plan::{still_needed, Change, Mode};
use bs_core::safefs::{self, DirFd, FileSpec};
use bs_core::{Output, Root};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::Result;
use crate::{audit, store, HostPin, HOST_FILE};

/// One change `apply` makes: the record `plan` prints, and what
/// `apply --plan` reads back (each re-checked against a fresh plan).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum SetupChange {
    /// The request store or the audit directory: the service account's, 0750.
    Ensure {
        target: String,
        owner: String,
        /// Permission bits (`mode` is the verb in every record).
        perms: String,
    },
    /// The token file, empty, when missing (never overwritten).
    Create {
        target: String,
        owner: String,
        /// Permission bits (`mode` is the verb in every record).
        perms: String,
    },
    /// A file of the config snapshot (new or different); its content is
    /// part of the change, so a plan made before the checkout changed is skipped.
    WriteSnapshot {
        target: String,
        source: String,
        content: String,
    },
    /// The pin `/etc/bs/release.toml`.
    Write {
        target: String,
        repo: std::path::PathBuf,
        backend: String,
    },
    /// The systemd unit of `bs-release serve` (new or different; never enabled here).
    WriteUnit { target: String, content: String },
}

/// Where the unit goes.
pub const UNIT_DIR: &str = "/etc/systemd/system";
pub const WEB_UNIT: &str = "bs-release-web.service";
const WEB_UNIT_TEMPLATE: &str = include_str!("../units/bs-release-web.service");

/// The unit as it must be on this backend: run as the service account,
/// its socket's directory made by systemd when it is under /run.
pub fn web_unit(config: &Config) -> String {
    let socket = &config.release.web_socket;
    let runtime = match socket
        .parent()
        .and_then(|p| p.strip_prefix("/run").ok())
        .and_then(|d| d.to_str())
    {
        Some(dir) if !dir.is_empty() && !dir.contains('/') => {
            format!("RuntimeDirectory={dir}\nRuntimeDirectoryMode=0755")
        }
        _ => "# The socket's directory is not under /run: it must exist, writable by the service account.".into(),
    };
    WEB_UNIT_TEMPLATE
        .replace("@USER@", &config.service_account.name)
        .replace("@GROUP@", &config.service_account.gid.to_string())
        .replace("@BIN@", "/usr/local/bin/bs-release")
        .replace("@RUNTIME@", &runtime)
}

impl Change for SetupChange {
    fn record_type(&self) -> &'static str {
        match self {
            SetupChange::Ensure { .. } => "dir",
            SetupChange::Create { .. } | SetupChange::Write { .. } => "file",
            SetupChange::WriteSnapshot { .. } => "snapshot",
            SetupChange::WriteUnit { .. } => "unit",
        }
    }
    fn target(&self) -> String {
        match self {
            SetupChange::Ensure { target, .. }
            | SetupChange::Create { target, .. }
            | SetupChange::WriteSnapshot { target, .. }
            | SetupChange::Write { target, .. }
            | SetupChange::WriteUnit { target, .. } => target.clone(),
        }
    }
}

/// Where things go, and what they must be.
struct Wanted {
    requests: std::path::PathBuf,
    audit_dir: std::path::PathBuf,
    secrets: std::path::PathBuf,
    svc_dir: FileSpec,
    pin: HostPin,
}

fn wanted(root: &Root, config: &Config, snap: &Snapshot) -> Wanted {
    let (uid, gid) = (config.service_account.uid, config.service_account.gid);
    let Source { repo, backend } = snap.source();
    Wanted {
        requests: root
            .join(&config.paths.medium_privacy)
            .join(store::REQUESTS_DIR),
        audit_dir: root.join(audit::AUDIT_DIR),
        secrets: root.join(&config.release.secrets_file),
        svc_dir: FileSpec {
            mode: 0o750,
            uid,
            gid,
        },
        pin: HostPin { repo, backend },
    }
}

/// What apply would change, in the order it does it (the snapshot before
/// the pin that names it).
fn plan(root: &Root, config: &Config, snap: &Snapshot) -> Result<Vec<SetupChange>> {
    let w = wanted(root, config, snap);
    let owner = config.service_account.name.clone();
    let mut changes = Vec::new();
    for dir in [&w.requests, &w.audit_dir] {
        if !dir_is(dir, &w.svc_dir) {
            changes.push(SetupChange::Ensure {
                target: root.display_path(dir),
                owner: owner.clone(),
                perms: "0750".into(),
            });
        }
    }
    if std::fs::symlink_metadata(&w.secrets).is_err() {
        changes.push(SetupChange::Create {
            target: root.display_path(&w.secrets),
            owner: owner.clone(),
            perms: "0600".into(),
        });
    }
    for file in snap.stale(root)? {
        changes.push(SetupChange::WriteSnapshot {
            target: file.target(),
            source: file.source.display().to_string(),
            content: file.content.clone(),
        });
    }
    if crate::read_pin(root).ok().as_ref() != Some(&w.pin) {
        changes.push(SetupChange::Write {
            target: HOST_FILE.into(),
            repo: w.pin.repo.clone(),
            backend: w.pin.backend.clone(),
        });
    }
    let unit = root.join(UNIT_DIR).join(WEB_UNIT);
    let content = web_unit(config);
    if std::fs::read_to_string(&unit).ok().as_deref() != Some(content.as_str()) {
        changes.push(SetupChange::WriteUnit {
            target: root.display_path(&unit),
            content,
        });
    }
    Ok(changes)
}

pub(crate) fn run(
    root: &Root,
    config: &Config,
    out: &mut Output,
    mode: Mode,
    given: Option<Vec<SetupChange>>,
) -> Result<Map<String, Value>> {
    out.set_mode(mode);
    let apply = mode == Mode::Apply;
    let snap = Snapshot::capture(&config.source(), root)?;
    let fresh = plan(root, config, &snap)?;
    let changes = match given {
        Some(g) => {
            let (apply, stale) = still_needed(fresh, g);
            for s in stale {
                out.emit(
                    "skipped",
                    &json!({"target": s.target(), "change": s,
                            "reason": "in the plan given, but no longer needed or changed since: skipped"}),
                );
            }
            apply
        }
        None => fresh,
    };
    let w = wanted(root, config, &snap);
    let owner = &config.service_account.name;
    let has = |target: &str| changes.iter().any(|c| c.target() == target);

    // The medium-privacy directory is bs-perms' to shape; we only make it if it is missing.
    for (dir, is_requests) in [(&w.requests, true), (&w.audit_dir, false)] {
        let target = root.display_path(dir);
        let needed = has(&target);
        if apply && needed {
            if is_requests {
                let medium = root.join(&config.paths.medium_privacy);
                if let Some(parent) = medium.parent() {
                    safefs::ensure_dir_all(parent, &FileSpec::root(0o755))?;
                }
                let (parent, name) = safefs::split(&medium)?;
                DirFd::open(parent)?.ensure_subdir(name, &w.svc_dir)?;
                DirFd::open(&medium)?.ensure_subdir(OsStr::new(store::REQUESTS_DIR), &w.svc_dir)?;
            } else {
                audit::ensure_state_dir(root, w.svc_dir.uid, w.svc_dir.gid)?;
            }
        }
        out.item(
            "dir",
            needed,
            &json!({"action": if needed {"ensure"} else {"none"}, "target": target,
                    "owner": owner, "perms": "0750"}),
        );
    }

    // The token file: made empty (a comment) when missing, never overwritten.
    let target = root.display_path(&w.secrets);
    let needed = has(&target);
    if apply && needed && std::fs::symlink_metadata(&w.secrets).is_err() {
        if let Some(parent) = w.secrets.parent() {
            safefs::ensure_dir_all(parent, &FileSpec::root(0o755))?;
        }
        safefs::write_atomic(
            &w.secrets,
            b"# RELEASE_TOKEN=... : the release server's token for this backend\n",
            &FileSpec {
                mode: 0o600,
                uid: w.svc_dir.uid,
                gid: w.svc_dir.gid,
            },
        )?;
    }
    out.item(
        "file",
        needed,
        &json!({"action": if needed {"create"} else {"none"},
                "target": target, "owner": owner, "perms": "0600"}),
    );

    // The snapshot first: the pin must never name one that is not there
    // (under apply, converge loads the snapshot as written and fails if it is not).
    let stale: Vec<_> = snap
        .files()
        .iter()
        .filter(|f| {
            changes
                .iter()
                .any(|c| matches!(c, SetupChange::WriteSnapshot { .. }) && c.target() == f.target())
        })
        .collect();
    // Loading the snapshot (what converge does under apply) matters only
    // when this run writes it or the pin that names it.
    let snap_mode = if apply && stale.is_empty() && !has(HOST_FILE) {
        Mode::Plan
    } else {
        mode
    };
    snap.converge(root, snap_mode, &stale, out)?;

    let pin = &w.pin;
    let text = format!(
        "# Written by `bs-release apply`: the config snapshot and backend that bs-release\n\
         # uses when people run it through sudo. Owned by root; do not edit.\n\
         repo = {}\nbackend = {}\n",
        toml_string(&pin.repo.to_string_lossy()),
        toml_string(&pin.backend)
    );
    let needs_pin = has(HOST_FILE);
    if apply && needs_pin {
        let path = root.join(HOST_FILE);
        safefs::ensure_dir_all(path.parent().unwrap_or(root.path()), &FileSpec::root(0o755))?;
        safefs::write_atomic(&path, text.as_bytes(), &FileSpec::root(0o644))?;
    }
    out.item(
        "file",
        needs_pin,
        &json!({"action": if needs_pin {"write"} else {"none"}, "target": HOST_FILE,
                "repo": pin.repo, "backend": pin.backend}),
    );

    let unit = root.join(UNIT_DIR).join(WEB_UNIT);
    let target = root.display_path(&unit);
    let needs_unit = has(&target);
    if apply && needs_unit {
        safefs::ensure_dir_all(unit.parent().unwrap_or(root.path()), &FileSpec::root(0o755))?;
        safefs::write_atomic(&unit, web_unit(config).as_bytes(), &FileSpec::root(0o644))?;
    }
    out.item(
        "unit",
        needs_unit,
        &json!({"action": if needs_unit {"write"} else {"none"}, "target": target,
                "enable": "systemctl daemon-reload && systemctl enable --now bs-release-web"}),
    );
    Ok(Map::new())
}

fn dir_is(path: &std::path::Path, spec: &FileSpec) -> bool {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            m.is_dir()
                && m.uid() == spec.uid
                && m.gid() == spec.gid
                && m.mode() & 0o7777 == spec.mode
        }
        Err(_) => false,
    }
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}
