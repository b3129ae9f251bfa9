//! The audit log, `<root>/var/lib/bs/release/audit.jsonl`: one JSON object a
//! line (time, user, action, request, file, sha256, detail) for every view,
//! add, state change, comment, vote and upload, and for refused attempts.
//!
//! Tamper-evident (issue 12): each line carries `seq` (its index) and
//! `prev`, the sha256 of the previous line's exact bytes, so a rewritten,
//! removed or reordered line breaks the chain at the line after it. The
//! head file `audit.head` records the count, size and last line's hash after
//! every append, so a log cut short (or its last line rewritten) no longer
//! matches it. An append that finds the log not ending where the head says
//! first records a `chain_break` entry: the evidence stays in the log even
//! after later appends. `bs-release audit` verifies the whole chain.
//!
//! Appends hold an exclusive `flock` on the log (views append without the
//! request store's lock), are one write, and are fsynced before the change
//! they record is made: a change is saved only after its entry is durable.
//!
//! The limit: whoever has the service account's rights and recomputes every
//! hash and the head can still forge a consistent log; the chain catches
//! edits by hand and every tool that does not know it.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bs_core::config::Config;
use bs_core::safefs::{self, DirFd, FileSpec};
use bs_core::Root;
use rustix::fs::{FlockOperation, Mode, OFlags};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::hash;

pub const AUDIT_DIR: &str = "/var/lib/bs/release";
pub const AUDIT_FILE: &str = "audit.jsonl";
pub const HEAD_FILE: &str = "audit.head";
/// `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The action of the entry an append writes when the log does not end where
/// the head says.
pub const CHAIN_BREAK: &str = "chain_break";

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
    /// The line's index in the log (from 0); absent on lines written before the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// sha256 of the previous line's bytes ([`GENESIS`] for the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
}

/// Where the log ended after the last append.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub entries: u64,
    pub bytes: u64,
    /// Offset of the last line, and the sha256 of its bytes.
    pub last_offset: u64,
    pub last: String,
}

/// One place where the log is not what was written.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Break {
    /// 1-based line number (0: the log as a whole).
    pub line: u64,
    pub reason: String,
}

pub struct Audit {
    file: std::fs::File,
    path: PathBuf,
    dir: DirFd,
    spec: FileSpec,
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
        let dir_fd = DirFd::open(&dir)?;
        let path = dir.join(AUDIT_FILE);
        let fd = rustix::fs::openat(
            dir_fd.fd(),
            AUDIT_FILE,
            OFlags::RDWR | OFlags::APPEND | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
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
            dir: dir_fd,
            spec: FileSpec {
                mode: 0o640,
                uid,
                gid,
            },
        })
    }

    /// Append entries, chained, as one write; fsync; move the head on.
    /// Returns only when the entries are on disk: callers make the change
    /// an entry records after this, never before.
    pub fn append(&mut self, entries: &[Entry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let io = |e: std::io::Error| Error::io(&self.path, e);
        rustix::fs::flock(&self.file, FlockOperation::LockExclusive).map_err(|e| io(e.into()))?;
        let result = self.append_locked(entries);
        let _ = rustix::fs::flock(&self.file, FlockOperation::Unlock);
        result
    }

    fn append_locked(&mut self, entries: &[Entry]) -> Result<()> {
        let io = |e: std::io::Error| Error::io(&self.path, e);
        let size = self.file.metadata().map_err(io)?.len();
        let head = self.read_head()?;
        let (mut tail, broken) = self.tail(head.as_ref(), size)?;
        let mut batch: Vec<Entry> = Vec::with_capacity(entries.len() + 1);
        if let Some(reason) = broken {
            batch.push(Entry {
                time: crate::timefmt::now(),
                user: "bs-release".into(),
                action: CHAIN_BREAK.into(),
                request: None,
                file: None,
                sha256: None,
                detail: serde_json::json!({"reason": reason, "head": head, "bytes": size}),
                seq: None,
                prev: None,
            });
        }
        batch.extend_from_slice(entries);
        let mut text = Vec::new();
        // A line a crash cut short ends here, so ours starts on a line of its own.
        let mut last_byte = [0u8; 1];
        if size > 0
            && self.file.read_exact_at(&mut last_byte, size - 1).is_ok()
            && last_byte[0] != b'\n'
        {
            text.push(b'\n');
        }
        for e in &mut batch {
            e.seq = Some(tail.entries);
            e.prev = Some(tail.last.clone());
            let start = text.len();
            serde_json::to_writer(&mut text, e).map_err(|e| Error::Usage(e.to_string()))?;
            let line_hash = hash::sha256_bytes(&text[start..]);
            text.push(b'\n');
            tail = Head {
                entries: tail.entries + 1,
                bytes: size + text.len() as u64,
                last_offset: size + start as u64,
                last: line_hash,
            };
        }
        self.file.write_all(&text).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        let mut head_text = serde_json::to_vec(&tail).map_err(|e| Error::Usage(e.to_string()))?;
        head_text.push(b'\n');
        self.dir
            .write_file(std::ffi::OsStr::new(HEAD_FILE), &head_text, &self.spec)?;
        Ok(())
    }

    fn read_head(&self) -> Result<Option<Head>> {
        match self.dir.read_file(std::ffi::OsStr::new(HEAD_FILE), 4096)? {
            None => Ok(None),
            Some((bytes, _)) => Ok(serde_json::from_slice(&bytes).ok()),
        }
    }

    /// Where the log ends now (count, size, last line's hash), and why it
    /// does not end where the head says, if it does not. A log longer than
    /// the head by lines that chain on from it is a run killed between its
    /// write and the head's: not a break.
    fn tail(&self, head: Option<&Head>, size: u64) -> Result<(Head, Option<String>)> {
        let Some(head) = head else {
            if size == 0 {
                return Ok((empty_head(), None));
            }
            let lines = read_lines(&self.file, 0, size).map_err(|e| Error::io(&self.path, e))?;
            let end = scan_end(&lines, empty_head());
            let chained = lines
                .iter()
                .any(|(_, l)| parse_line(l).is_some_and(|e| e.prev.is_some()));
            let broken = chained.then(|| "the head file is missing".to_string());
            return Ok((end, broken));
        };
        if size < head.bytes {
            let lines = read_lines(&self.file, 0, size).map_err(|e| Error::io(&self.path, e))?;
            return Ok((
                scan_end(&lines, empty_head()),
                Some(format!(
                    "the log is {size} bytes, shorter than the {} bytes ({} entries) last written: truncated",
                    head.bytes, head.entries
                )),
            ));
        }
        let last_len = head.bytes.saturating_sub(head.last_offset);
        let mut last = vec![0u8; last_len as usize];
        let ok = head.entries == 0
            || (self.file.read_exact_at(&mut last, head.last_offset).is_ok()
                && last.last() == Some(&b'\n')
                && hash::sha256_bytes(&last[..last.len() - 1]) == head.last);
        if !ok {
            let lines = read_lines(&self.file, 0, size).map_err(|e| Error::io(&self.path, e))?;
            return Ok((
                scan_end(&lines, empty_head()),
                Some(format!(
                    "the last line written (entry {}) is not what was written: rewritten",
                    head.entries
                )),
            ));
        }
        if size == head.bytes {
            return Ok((head.clone(), None));
        }
        let lines =
            read_lines(&self.file, head.bytes, size).map_err(|e| Error::io(&self.path, e))?;
        let mut end = head.clone();
        let mut broken = None;
        for (offset, line) in &lines {
            match parse_line(line) {
                Some(e) if e.prev.as_deref() == Some(&end.last) && e.seq == Some(end.entries) => {}
                _ => {
                    broken = Some(
                        "lines after the last one written do not chain on: appended by hand"
                            .to_string(),
                    )
                }
            }
            end = Head {
                entries: end.entries + 1,
                bytes: offset + line.len() as u64 + 1,
                last_offset: *offset,
                last: hash::sha256_bytes(line),
            };
        }
        Ok((end, broken))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every entry and every break of the chain.
    pub fn verify(&self) -> Result<(Vec<Entry>, Vec<Break>)> {
        let _ = rustix::fs::flock(&self.file, FlockOperation::LockShared);
        let size = self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.path, e))?
            .len();
        let lines = read_lines(&self.file, 0, size);
        let head = self.read_head();
        let _ = rustix::fs::flock(&self.file, FlockOperation::Unlock);
        let lines = lines.map_err(|e| Error::io(&self.path, e))?;
        Ok(verify_lines(&lines, head?.as_ref(), size))
    }
}

fn empty_head() -> Head {
    Head {
        entries: 0,
        bytes: 0,
        last_offset: 0,
        last: GENESIS.into(),
    }
}

fn parse_line(line: &[u8]) -> Option<Entry> {
    serde_json::from_slice(line).ok()
}

/// The lines (without their newline) of `file` between two offsets, each
/// with its offset. A last line without a newline is kept as it is.
fn read_lines(file: &std::fs::File, from: u64, to: u64) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
    let mut buf = vec![0u8; to.saturating_sub(from) as usize];
    file.read_exact_at(&mut buf, from)?;
    let mut out = Vec::new();
    let mut start = 0usize;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            out.push((from + start as u64, buf[start..i].to_vec()));
            start = i + 1;
        }
    }
    if start < buf.len() {
        out.push((from + start as u64, buf[start..].to_vec()));
    }
    Ok(out)
}

/// The head after `lines`, starting from `start`.
fn scan_end(lines: &[(u64, Vec<u8>)], start: Head) -> Head {
    lines.iter().fold(start, |h, (offset, line)| Head {
        entries: h.entries + 1,
        bytes: offset + line.len() as u64 + 1,
        last_offset: *offset,
        last: hash::sha256_bytes(line),
    })
}

/// Check every line against the one before it, and the end against the head.
pub fn verify_lines(
    lines: &[(u64, Vec<u8>)],
    head: Option<&Head>,
    size: u64,
) -> (Vec<Entry>, Vec<Break>) {
    let mut entries = Vec::with_capacity(lines.len());
    let mut breaks = Vec::new();
    let mut prev_hash = GENESIS.to_string();
    let mut chained = false;
    for (i, (_, line)) in lines.iter().enumerate() {
        let n = i as u64 + 1;
        match serde_json::from_slice::<Entry>(line) {
            Ok(e) => {
                match (&e.prev, e.seq) {
                    (Some(prev), Some(seq)) => {
                        if *prev != prev_hash {
                            breaks.push(Break {
                                line: n,
                                reason: "does not follow the line before it: a line before it was rewritten, removed or moved".into(),
                            });
                        } else if seq != i as u64 {
                            breaks.push(Break {
                                line: n,
                                reason: format!("is entry {seq} of the log but stands at line {n}"),
                            });
                        }
                        chained = true;
                    }
                    _ if chained => breaks.push(Break {
                        line: n,
                        reason: "is not chained: written by something other than bs-release".into(),
                    }),
                    // Lines written before the log was chained.
                    _ => {}
                }
                if e.action == CHAIN_BREAK {
                    breaks.push(Break {
                        line: n,
                        reason: format!(
                            "records a break found when it was written: {}",
                            e.detail
                                .get("reason")
                                .and_then(Value::as_str)
                                .unwrap_or("?")
                        ),
                    });
                }
                entries.push(e);
            }
            Err(err) => {
                breaks.push(Break {
                    line: n,
                    reason: format!("is not an audit entry: {err}"),
                });
                entries.push(Entry {
                    time: String::new(),
                    user: String::new(),
                    action: "unreadable_line".into(),
                    request: None,
                    file: None,
                    sha256: None,
                    detail: serde_json::json!({"line": n, "error": err.to_string()}),
                    seq: None,
                    prev: None,
                });
            }
        }
        prev_hash = hash::sha256_bytes(line);
    }
    match head {
        Some(h) => {
            let n = lines.len() as u64;
            let end_hash = if h.entries == 0 {
                Some(GENESIS.to_string())
            } else {
                lines
                    .get(h.entries as usize - 1)
                    .map(|(_, l)| hash::sha256_bytes(l))
            };
            if n < h.entries || size < h.bytes {
                breaks.push(Break {
                    line: 0,
                    reason: format!(
                        "the log has {n} entries ({size} bytes); {} entries ({} bytes) were written: truncated",
                        h.entries, h.bytes
                    ),
                });
            } else if end_hash.as_deref() != Some(h.last.as_str()) {
                breaks.push(Break {
                    line: h.entries,
                    reason: "is not the line that was written last: rewritten".into(),
                });
            }
        }
        None if chained => breaks.push(Break {
            line: 0,
            reason: format!(
                "the head file {HEAD_FILE} is missing: the end of the log cannot be checked"
            ),
        }),
        None => {}
    }
    (entries, breaks)
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
