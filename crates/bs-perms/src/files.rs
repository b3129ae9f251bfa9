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

/// The error record of a candidate that did not pass its validator:
/// `cannot_run_kind` when the validator could not run, `refused_kind` when
/// it refused the candidate.
pub fn invalid(
    e: bs_core::validate::Invalid,
    cannot_run_kind: &'static str,
    refused_kind: &'static str,
) -> (&'static str, String) {
    use bs_core::validate::Invalid;
    match e {
        Invalid::CannotRun(why) => (cannot_run_kind, why),
        Invalid::Refused(why) => (refused_kind, why),
    }
}
