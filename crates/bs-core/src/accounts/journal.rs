//! The account files' transaction: an intent journal.
//!
//! Four renames cannot be one atomic step, and a kill between two of them
//! once left every new account with two shadow lines, or users whose
//! private groups were never written (issue 12, item 4). So before the
//! first rename, [`AccountDb::save`](super::AccountDb::save) writes the
//! whole new set, with what each file held before, to one journal file,
//! atomically (temp file, fsync, rename, fsync of the directory): that
//! rename is the commit point. Then the files are replaced one by one and
//! the journal is removed.
//!
//! After a kill, the next run (holding the `lckpwdf` lock) calls
//! [`recover`]: a file that still holds its old text gets its new text, a
//! file that already holds its new text is left, and a file that holds
//! neither (someone ran `useradd` in between) is left too and reported,
//! since writing over it would lose their change; the consistency repair
//! ([`super::AccountDb::repair`]) then mends whatever the mix left. Before
//! the commit point the old set is in force, after it the new one (once
//! recovered).

use std::ffi::OsStr;

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::root::Root;
use crate::safefs::{self, FileSpec};

use super::PwLock;

/// Beside the files it describes; root-only, as it holds shadow's hashes.
pub const JOURNAL: &str = "/etc/.bs-accounts.journal";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Journal {
    pub schema: u32,
    pub files: Vec<JournalFile>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JournalFile {
    /// The system path (`/etc/shadow`), joined under the root on recovery.
    pub path: String,
    /// The text before the transaction; `None` when the file did not exist.
    pub before: Option<String>,
    pub after: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl JournalFile {
    fn spec(&self) -> FileSpec {
        FileSpec {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
        }
    }
}

/// What recovery found for one file of an interrupted transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It still held the old text: the new text was written.
    RolledForward,
    /// The rename had happened before the interruption.
    AlreadyDone,
    /// Someone changed it since: left as it is (the repair checks it).
    ChangedSince,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recovered {
    pub path: String,
    pub outcome: Outcome,
}

pub(super) fn write(root: &Root, journal: &Journal) -> Result<()> {
    let path = root.join(JOURNAL);
    let text = serde_json::to_vec(journal).map_err(|e| CoreError::Unsafe {
        path: path.clone(),
        reason: format!("cannot serialise the account journal: {e}"),
    })?;
    safefs::write_atomic(&path, &text, &FileSpec::root(0o600))?;
    Ok(())
}

pub(super) fn remove(root: &Root) -> Result<()> {
    let path = root.join(JOURNAL);
    let (dir, name) = safefs::split(&path)?;
    let dir = safefs::DirFd::open(dir)?;
    if dir.remove_if_exists(name)? {
        // The removal must be durable before the next transaction's journal
        // can be mistaken for this one's.
        rustix::fs::fsync(dir.fd()).map_err(|e| CoreError::io(dir.path(), e.into()))?;
    }
    Ok(())
}

fn read_text(root: &Root, system_path: &str) -> Result<Option<String>> {
    let path = root.join(system_path);
    let (dir, name) = safefs::split(&path)?;
    let read = safefs::DirFd::open(dir)?.read_file(name, 256 * 1024 * 1024)?;
    match read {
        None => Ok(None),
        Some((bytes, _)) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| CoreError::Unsafe {
                path,
                reason: "is not UTF-8 text".into(),
            }),
    }
}

/// Finish a transaction a killed run left, if any. Call with the
/// `lckpwdf` lock held, before [`super::AccountDb::load`].
pub fn recover(root: &Root, _held: &PwLock) -> Result<Vec<Recovered>> {
    let path = root.join(JOURNAL);
    let (dir, name) = safefs::split(&path)?;
    let Some((bytes, _)) = safefs::DirFd::open(dir)?.read_file(name, 1024 * 1024 * 1024)? else {
        return Ok(Vec::new());
    };
    // The journal is written atomically, so an unreadable one was not
    // written by bs: refuse rather than guess which set is right.
    let journal: Journal = serde_json::from_slice(&bytes).map_err(|e| CoreError::Unsafe {
        path: path.clone(),
        reason: format!(
            "is not a bs account journal ({e}); compare the account files with their `-` backups, then remove it"
        ),
    })?;
    let mut out = Vec::new();
    for file in &journal.files {
        if !file.path.starts_with("/etc/") || OsStr::new(&file.path).len() > 64 {
            return Err(CoreError::Unsafe {
                path: path.clone(),
                reason: format!("names {:?}, not an account file", file.path),
            });
        }
        let current = read_text(root, &file.path)?;
        let outcome = if current.as_deref() == Some(file.after.as_str()) {
            Outcome::AlreadyDone
        } else if current == file.before {
            safefs::write_atomic(&root.join(&file.path), file.after.as_bytes(), &file.spec())?;
            Outcome::RolledForward
        } else {
            Outcome::ChangedSince
        };
        out.push(Recovered {
            path: file.path.clone(),
            outcome,
        });
    }
    remove(root)?;
    Ok(out)
}
