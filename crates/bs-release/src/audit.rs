//! The audit log, `<root>/var/lib/bs/release/audit.jsonl`: one JSON object a
//! line (time, user, action, request, file, sha256, detail) for every view,
//! add, state change, comment, vote and upload, and for refused attempts.
//! The file is opened with O_APPEND (a line is one write, so lines of two
//! runs never interleave), never truncated or rewritten, and fsynced after
//! each batch of lines before the command reports success.

use std::io::Write;
use std::path::{Path, PathBuf};

use bs_core::config::Config;
use bs_core::safefs::{self, FileSpec};
use bs_core::Root;
use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

pub const AUDIT_DIR: &str = "/var/lib/bs/release";
pub const AUDIT_FILE: &str = "audit.jsonl";

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Entry {
    pub time: String,
    pub user: String,
    pub action: String,
    #[serde(default)]
    pub request: Option<String>,
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub detail: Value,
}

pub struct Audit {
    file: std::fs::File,
    path: PathBuf,
}

impl Audit {
    /// Open the log for appending. As root, a missing directory is created
    /// for the service account; as the service account it must exist
    /// (`bs-release apply` makes it).
    pub fn open(root: &Root, config: &Config) -> Result<Audit> {
        let dir = root.join(AUDIT_DIR);
        let (uid, gid) = (config.service_account.uid, config.service_account.gid);
        let is_root = rustix::process::geteuid().is_root();
        if !dir.is_dir() {
            if !is_root {
                return Err(Error::Usage(format!(
                    "{}: the audit directory is missing: run `bs-release apply` as root",
                    root.display_path(&dir)
                )));
            }
            ensure_state_dir(root, uid, gid)?;
        }
        let path = dir.join(AUDIT_FILE);
        let fd = rustix::fs::open(
            &path,
            OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o640),
        )
        .map_err(|e| Error::io(&path, e.into()))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| Error::io(&path, e.into()))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Error::Usage(format!(
                "{}: not a regular file",
                path.display()
            )));
        }
        if is_root && (st.st_uid != uid || st.st_gid != gid) {
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| Error::io(&path, e.into()))?;
        }
        Ok(Audit {
            file: std::fs::File::from(fd),
            path,
        })
    }

    /// Append entries as one write, then fsync.
    pub fn append(&mut self, entries: &[Entry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut text = Vec::new();
        for e in entries {
            serde_json::to_writer(&mut text, e).map_err(|e| Error::Usage(e.to_string()))?;
            text.push(b'\n');
        }
        self.file
            .write_all(&text)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Read every entry (a line that does not parse comes back as an error
/// entry naming its line, rather than hiding it).
pub fn read_all(path: &Path) -> Result<Vec<Entry>> {
    let (dir, name) = safefs::split(path)?;
    let dir = bs_core::safefs::DirFd::open(dir)?;
    let Some((bytes, _)) = dir.read_file(name, u64::MAX / 2)? else {
        return Ok(Vec::new());
    };
    let text = String::from_utf8_lossy(&bytes);
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| Entry {
                time: String::new(),
                user: String::new(),
                action: "unreadable_line".into(),
                request: None,
                file: None,
                sha256: None,
                detail: serde_json::json!({"line": i + 1, "error": e.to_string()}),
            })
        })
        .collect())
}

/// `/var/lib/bs` (root's, 0755) and `/var/lib/bs/release` (the service
/// account's, 0750). Returns whether something was created or changed.
pub fn ensure_state_dir(root: &Root, uid: u32, gid: u32) -> Result<bool> {
    let base = root.join("/var/lib/bs");
    let existed = base.join("release").is_dir();
    safefs::ensure_dir_all(&base, &FileSpec::root(0o755))?;
    let (_, changed) = bs_core::safefs::DirFd::open(&base)?.ensure_subdir(
        std::ffi::OsStr::new("release"),
        &FileSpec {
            mode: 0o750,
            uid,
            gid,
        },
    )?;
    Ok(changed || !existed)
}
