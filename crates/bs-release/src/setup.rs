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
use bs_core::plan::Mode;
use bs_core::safefs::{self, DirFd, FileSpec};
use bs_core::{Output, Root};
use serde_json::{json, Map, Value};

use crate::error::Result;
use crate::{audit, store, HostPin, HOST_FILE};

pub(crate) fn run(
    root: &Root,
    config: &Config,
    out: &mut Output,
    mode: Mode,
) -> Result<Map<String, Value>> {
    out.set_mode(mode);
    let apply = mode == Mode::Apply;
    let (uid, gid) = (config.service_account.uid, config.service_account.gid);
    let svc_dir = FileSpec {
        mode: 0o750,
        uid,
        gid,
    };

    // The medium-privacy directory is bs-perms' to shape; we only make it if it is missing.
    let medium = root.join(&config.paths.medium_privacy);
    let requests = medium.join(store::REQUESTS_DIR);
    let needs_medium = !medium.is_dir();
    let needs_requests = !dir_is(&requests, &svc_dir);
    if apply && (needs_medium || needs_requests) {
        if let Some(parent) = medium.parent() {
            safefs::ensure_dir_all(parent, &FileSpec::root(0o755))?;
        }
        let (parent, name) = safefs::split(&medium)?;
        if needs_medium {
            DirFd::open(parent)?.ensure_subdir(name, &svc_dir)?;
        }
        DirFd::open(&medium)?.ensure_subdir(OsStr::new(store::REQUESTS_DIR), &svc_dir)?;
    }
    out.item(
        "dir",
        needs_medium || needs_requests,
        &json!({"action": if needs_requests {"ensure"} else {"none"}, "target": root.display_path(&requests),
                "owner": config.service_account.name, "mode": "0750"}),
    );

    let audit_dir = root.join(audit::AUDIT_DIR);
    let needs_audit = !dir_is(&audit_dir, &svc_dir);
    if apply && needs_audit {
        audit::ensure_state_dir(root, uid, gid)?;
    }
    out.item(
        "dir",
        needs_audit,
        &json!({"action": if needs_audit {"ensure"} else {"none"}, "target": root.display_path(&audit_dir),
                "owner": config.service_account.name, "mode": "0750"}),
    );

    // The token file: made empty (a comment) when missing, never overwritten.
    let secrets = root.join(&config.release.secrets_file);
    let needs_secrets = std::fs::symlink_metadata(&secrets).is_err();
    if apply && needs_secrets {
        if let Some(parent) = secrets.parent() {
            safefs::ensure_dir_all(parent, &FileSpec::root(0o755))?;
        }
        safefs::write_atomic(
            &secrets,
            b"# RELEASE_TOKEN=... : the release server's token for this backend\n",
            &FileSpec {
                mode: 0o600,
                uid,
                gid,
            },
        )?;
    }
    out.item(
        "file",
        needs_secrets,
        &json!({"action": if needs_secrets {"create"} else {"none"},
                "target": root.display_path(&secrets), "owner": config.service_account.name, "mode": "0600"}),
    );

    // The snapshot first: the pin must never name one that is not there.
    let snap = Snapshot::capture(&config.source(), root)?;
    snap.converge(root, mode, &snap.stale(root)?, out)?;

    let Source { repo, backend } = snap.source();
    let pin = HostPin { repo, backend };
    let text = format!(
        "# Written by `bs-release apply`: the config snapshot and backend that bs-release\n\
         # uses when people run it through sudo. Owned by root; do not edit.\n\
         repo = {}\nbackend = {}\n",
        toml_string(&pin.repo.to_string_lossy()),
        toml_string(&pin.backend)
    );
    let path = root.join(HOST_FILE);
    let current = crate::read_pin(root).ok();
    let needs_pin = current.as_ref() != Some(&pin);
    if apply {
        safefs::ensure_dir_all(path.parent().unwrap_or(root.path()), &FileSpec::root(0o755))?;
        safefs::write_atomic(&path, text.as_bytes(), &FileSpec::root(0o644))?;
    }
    out.item(
        "file",
        needs_pin,
        &json!({"action": if needs_pin {"write"} else {"none"}, "target": HOST_FILE,
                "repo": pin.repo, "backend": pin.backend}),
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
