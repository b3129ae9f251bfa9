//! Whole files bs-host owns (the backend profile, the motd banner, the
//! unattended-upgrades drop-in) and files it edits a block of (/etc/hosts,
//! cloud-init's template): compared byte for byte, validated when they have
//! a reader that can check them, written atomically with owner and mode set
//! before the rename.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

use bs_core::safefs::{self, DirFd, FileSpec};
use bs_core::{CoreError, Output};

use crate::{decide, HostChange, RunCtx, Selection};

pub struct ManagedFile {
    /// The system path (`/etc/profile.d/bs-backend.sh`).
    pub target: String,
    pub contents: Vec<u8>,
    pub mode: u32,
    /// What the file is, for the record (`backend_profile`, `hosts`, ...).
    pub kind: &'static str,
}

/// How converging one file went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Changed,
    /// Validation or the write failed; the old file (if any) is in place.
    Failed,
    /// Needed, but not made: a plan or check run, or not in `apply --plan`.
    Pending,
}

/// A validator's answer: `Err((error kind, message))` refuses the file.
pub type Validation = Result<(), (&'static str, String)>;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A file under the root, if it exists (refusing a symlink at its name).
pub fn read_existing(host: &Path) -> Result<Option<(Vec<u8>, rustix::fs::Stat)>, CoreError> {
    let (dir, name) = safefs::split(host)?;
    match DirFd::open(dir) {
        Ok(d) => d.read_file(name, 4 * 1024 * 1024),
        Err(CoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Converge a file with no validator.
pub fn converge(
    ctx: &RunCtx<'_>,
    out: &mut Output,
    sel: &mut Selection,
    file: &ManagedFile,
) -> Outcome {
    converge_validated(ctx, out, sel, file, &mut |_| Ok(()))
}

/// Plan, check or apply one file. `validate` sees the exact bytes that would
/// be installed and answers `(error kind, message)` to refuse them. An
/// existing file keeps its owner (and its mode, unless the file is new).
pub fn converge_validated(
    ctx: &RunCtx<'_>,
    out: &mut Output,
    sel: &mut Selection,
    file: &ManagedFile,
    validate: &mut dyn FnMut(&[u8]) -> Validation,
) -> Outcome {
    let host = ctx.root.join(&file.target);
    let spec = FileSpec::root(file.mode);
    let current = match safefs::is_current(&host, &file.contents, &spec) {
        Ok(c) => c,
        Err(e) => {
            out.error(e.kind(), &file.target, &e.to_string());
            return Outcome::Failed;
        }
    };
    let change = HostChange::Write {
        target: file.target.clone(),
        sha256: sha256_hex(&file.contents),
    };
    if !current {
        if let Err((kind, message)) = validate(&file.contents) {
            out.error(
                kind,
                &file.target,
                &format!("{message} (not installed; the old file, if any, stays)"),
            );
            return Outcome::Failed;
        }
    }
    if !decide(ctx, out, sel, &change, !current, json!({"kind": file.kind})) {
        return if current {
            Outcome::Unchanged
        } else {
            Outcome::Pending
        };
    }
    match write(&host, &file.contents, &spec) {
        Ok(Written::Atomically) => Outcome::Changed,
        Ok(Written::InPlace) => {
            out.emit(
                "note",
                &json!({"target": file.target, "message": "a mount point (a container's /etc/hosts): written in place, not renamed over"}),
            );
            Outcome::Changed
        }
        Err(e) => {
            out.error(e.kind(), &file.target, &e.to_string());
            Outcome::Failed
        }
    }
}

pub enum Written {
    Atomically,
    InPlace,
}

/// Write atomically; a file that is a mount point (Docker bind-mounts a
/// container's /etc/hosts) cannot be renamed over (EBUSY), so it is then
/// rewritten in place, through a descriptor that refuses a symlink.
pub fn write(host: &Path, contents: &[u8], spec: &FileSpec) -> Result<Written, CoreError> {
    if let Some(parent) = host.parent() {
        safefs::ensure_dir_all(parent, &FileSpec::root(0o755))?;
    }
    match safefs::write_atomic(host, contents, spec) {
        Ok(_) => Ok(Written::Atomically),
        Err(CoreError::Io { source, .. }) if source.raw_os_error() == Some(libc_ebusy()) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(host)
                .map_err(|e| CoreError::io(host, e))?;
            f.set_len(0).map_err(|e| CoreError::io(host, e))?;
            f.write_all(contents).map_err(|e| CoreError::io(host, e))?;
            f.sync_all().map_err(|e| CoreError::io(host, e))?;
            Ok(Written::InPlace)
        }
        Err(e) => Err(e),
    }
}

fn libc_ebusy() -> i32 {
    rustix::io::Errno::BUSY.raw_os_error()
}
