//! Whole files bs-perms owns (sudoers.d rules, the sshd drop-in, login.defs,
//! the TMOUT snippet, the banner): compared byte for byte, validated before
//! they go live, written atomically with owner and mode set before the rename.

use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

use bs_core::safefs::{self, DirFd, FileSpec};
use bs_core::{CoreError, Output};

use crate::{PermsChange, RunCtx, Selection};

pub struct ManagedFile {
    /// The system path (`/etc/sudoers.d/bs-developers`).
    pub target: String,
    pub contents: Vec<u8>,
    pub spec: FileSpec,
    /// What the file is, for the record (`sudoers`, `sshd_dropin`, ...).
    pub kind: &'static str,
}

/// A validator's answer: `Err((error kind, message))` refuses the file.
pub type Validation = Result<(), (&'static str, String)>;

/// How converging one file went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Changed,
    /// Validation or the write failed; the old file (if any) is in place.
    Failed,
    /// Not in the plan given to `apply --plan`.
    NotSelected,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Read a file under the root if it exists (refusing a symlink at its name).
pub fn read_existing(
    host: &Path,
    max: u64,
) -> Result<Option<(Vec<u8>, rustix::fs::Stat)>, CoreError> {
    let (dir, name) = safefs::split(host)?;
    match DirFd::open(dir) {
        Ok(d) => d.read_file(name, max),
        Err(CoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Plan, check or apply one managed file. `validate` sees the exact bytes
/// that would be installed and answers `(error kind, message)` to refuse.
pub fn converge(
    ctx: &RunCtx<'_>,
    out: &mut Output,
    sel: &mut Selection,
    file: &ManagedFile,
    validate: &mut dyn FnMut(&[u8]) -> Validation,
) -> Outcome {
    let host = ctx.root.join(&file.target);
    let sha256 = sha256_hex(&file.contents);
    match safefs::is_current(&host, &file.contents, &file.spec) {
        Ok(true) => {
            out.item("file", false, &json!({"action": "write", "target": file.target, "kind": file.kind, "sha256": sha256}));
            return Outcome::Unchanged;
        }
        Ok(false) => {}
        Err(e) => {
            out.error(e.kind(), &file.target, &e.to_string());
            return Outcome::Failed;
        }
    }
    let change = PermsChange::Write {
        target: file.target.clone(),
        sha256: sha256.clone(),
    };
    if let Err((kind, message)) = validate(&file.contents) {
        out.error(
            kind,
            &file.target,
            &format!("{message} (not installed; the old file, if any, stays)"),
        );
        return Outcome::Failed;
    }
    if ctx.applying() {
        if !sel.allows(&change) {
            return Outcome::NotSelected;
        }
        let written = host
            .parent()
            .map(|p| safefs::ensure_dir_all(p, &FileSpec::root(0o755)))
            .unwrap_or(Ok(()))
            .and_then(|()| safefs::write_atomic(&host, &file.contents, &file.spec));
        if let Err(e) = written {
            out.error(e.kind(), &file.target, &e.to_string());
            return Outcome::Failed;
        }
    }
    out.item(
        "file",
        true,
        &json!({"action": "write", "target": file.target, "kind": file.kind, "sha256": sha256}),
    );
    Outcome::Changed
}

/// A private scratch directory for validating generated config; removed on drop.
/// Run a validator (`visudo -cf`, `sshd -t`) on a candidate file, keep
/// what ran for the records, and turn a refusal into `(reject_kind,
/// "<what> refused it: <stderr>")`. A validator that cannot run at all is
/// `(spawn_kind, why)`: the candidate is then not installed either.
pub fn run_validator(
    ctx: &RunCtx<'_>,
    log: &mut Vec<bs_core::cmd::Ran>,
    cmd: &bs_core::cmd::Cmd,
    spawn_kind: &'static str,
    reject_kind: &'static str,
    what: &str,
) -> Result<(), (&'static str, String)> {
    let ran = ctx
        .runner
        .run(cmd)
        .map_err(|e| (spawn_kind, e.to_string()))?;
    let ok = ran.success();
    let stderr = ran.stderr.trim().to_string();
    log.push(ran);
    if ok {
        Ok(())
    } else {
        Err((reject_kind, format!("{what} refused it: {stderr}")))
    }
}

pub struct Scratch {
    pub path: std::path::PathBuf,
}

impl Scratch {
    pub fn new() -> Result<Scratch, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("bs-perms-{}-{nanos}", std::process::id()));
        // mkdir fails if the name exists: nobody can pre-plant it for us.
        rustix::fs::mkdir(&path, rustix::fs::Mode::from_raw_mode(0o700))
            .map_err(|e| format!("{}: {}", path.display(), std::io::Error::from(e)))?;
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
