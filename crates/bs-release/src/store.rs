//! Where requests live: `<medium>/requests/<id>/request.json` and the copies
//! of their files, `<medium>/requests/<id>/files/<sha256>`, owned by the
//! service account. Everything below the medium-privacy directory is reached
//! through descriptors opened without following symlinks (a job's outputs
//! are written by code we do not control), and request files are replaced
//! atomically, under a lock held by every run that changes a request.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};
use std::time::Duration;

use bs_core::config::Config;
use bs_core::lock::RunLock;
use bs_core::safefs::{DirFd, FileSpec, Kind};
use bs_core::{CoreError, Root};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::content::Content;
use crate::error::{Error, Result};
use crate::manifest::{self, Manifest};
use crate::request::Request;

pub const REQUESTS_DIR: &str = "requests";
pub const WORKSPACES_DIR: &str = "workspaces";
const REQUEST_FILE: &str = "request.json";
const FILES_DIR: &str = "files";
const LOCK_FILE: &str = ".lock";
const MAX_REQUEST_JSON: u64 = 64 * 1024 * 1024;

pub struct Store {
    medium: DirFd,
    requests: DirFd,
    uid: u32,
    gid: u32,
    lock_timeout: Duration,
}

/// A workspace name: one plain path component.
/// A group name: a short label of letters, digits, spaces, `-`, `_` and `.`.
pub fn valid_group(name: &str) -> Result<()> {
    let ok = !name.trim().is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || " -_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "--group {name:?}: use up to 100 letters, digits, spaces, '-', '_' or '.'"
        )))
    }
}

pub fn valid_workspace(ws: &str) -> Result<()> {
    let ok = !ws.is_empty()
        && !ws.starts_with('.')
        && ws
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "workspace {ws:?}: use letters, digits, '.', '_' and '-' (not starting with '.')"
        )))
    }
}

/// An output path inside a workspace: relative, plain components, nothing
/// that could break a header (`"`, `\`, control characters).
pub fn valid_output_path(path: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::Usage(format!("{path:?}: {why}")));
    if path.is_empty() || path.len() > 1024 {
        return bad("an output path must be 1 to 1024 characters");
    }
    if path
        .chars()
        .any(|c| c.is_control() || c == '"' || c == '\\')
    {
        return bad("an output path may not hold quotes, backslashes or control characters");
    }
    if path.starts_with('/') || path.ends_with('/') {
        return bad("give the path relative to the workspace, like output/table.csv");
    }
    for comp in Path::new(path).components() {
        if !matches!(comp, Component::Normal(_)) {
            return bad("'.' and '..' are not allowed in an output path");
        }
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad("empty, '.' or '..' path component");
    }
    Ok(())
}

/// A request id: digits only, so it is always one safe path component.
pub fn valid_id(id: &str) -> Result<()> {
    if !id.is_empty() && id.len() <= 12 && id.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "request id {id:?}: a request id is a number"
        )))
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

impl Store {
    /// Open the store under the medium-privacy directory, creating the
    /// requests directory (owned by the service account) if it is missing.
    pub fn open(root: &Root, config: &Config, lock_timeout: Duration) -> Result<Store> {
        let medium_path = root.join(&config.paths.medium_privacy);
        let medium = DirFd::open(&medium_path)?;
        let uid = config.service_account.uid;
        let gid = config.service_account.gid;
        let spec = FileSpec {
            mode: 0o750,
            uid,
            gid,
        };
        let requests = match medium.open_subdir(OsStr::new(REQUESTS_DIR)) {
            Ok(d) => d,
            Err(CoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                medium.ensure_subdir(OsStr::new(REQUESTS_DIR), &spec)?.0
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Store {
            medium,
            requests,
            uid,
            gid,
            lock_timeout,
        })
    }

    fn dir_spec(&self) -> FileSpec {
        FileSpec {
            mode: 0o750,
            uid: self.uid,
            gid: self.gid,
        }
    }

    fn file_spec(&self, mode: u32) -> FileSpec {
        FileSpec {
            mode,
            uid: self.uid,
            gid: self.gid,
        }
    }

    /// The lock every run that changes a request holds, so two reviewers
    /// voting at once cannot lose a vote (each reads, decides and writes
    /// under it).
    pub fn lock(&self) -> Result<RunLock> {
        Ok(RunLock::acquire_file(
            self.requests.path().join(LOCK_FILE),
            self.lock_timeout,
            Some((self.uid, self.gid)),
        )?)
    }

    pub fn ids(&self) -> Result<Vec<String>> {
        let mut ids: Vec<(u64, String)> = self
            .requests
            .entries()?
            .into_iter()
            .filter(|(_, kind)| *kind == Kind::Dir)
            .filter_map(|(name, _)| {
                let s = name.to_str()?.to_string();
                s.parse::<u64>().ok().map(|n| (n, s))
            })
            .collect();
        ids.sort();
        Ok(ids.into_iter().map(|(_, s)| s).collect())
    }

    fn request_dir(&self, id: &str) -> Result<DirFd> {
        valid_id(id)?;
        match self.requests.open_subdir(OsStr::new(id)) {
            Ok(d) => Ok(d),
            Err(CoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::NotFound {
                    what: format!("request {id}"),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn load(&self, id: &str) -> Result<Request> {
        let dir = self.request_dir(id)?;
        let Some((bytes, _)) = dir.read_file(OsStr::new(REQUEST_FILE), MAX_REQUEST_JSON)? else {
            return Err(Error::NotFound {
                what: format!("request {id}"),
            });
        };
        serde_json::from_slice(&bytes).map_err(|e| Error::Manifest {
            path: dir.path().join(REQUEST_FILE).display().to_string(),
            message: format!("unreadable request file: {e}"),
        })
    }

    pub fn save(&self, req: &Request) -> Result<()> {
        let dir = self.request_dir(&req.id)?;
        let mut text = serde_json::to_vec_pretty(req).map_err(|e| Error::Usage(e.to_string()))?;
        text.push(b'\n');
        dir.write_file(OsStr::new(REQUEST_FILE), &text, &self.file_spec(0o640))?;
        Ok(())
    }

    /// A new request with the next free number (call under the lock): its
    /// directory is made, its `request.json` is not written yet, so the
    /// caller can audit it first ([`Store::save`] writes it; `ls` skips a
    /// directory without one).
    pub fn allocate(&self, workspace: &str, author: &str, now: &str) -> Result<Request> {
        let next = self
            .ids()?
            .last()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        let id = next.to_string();
        let (dir, _) = self
            .requests
            .ensure_subdir(OsStr::new(&id), &self.dir_spec())?;
        dir.ensure_subdir(OsStr::new(FILES_DIR), &self.dir_spec())?;
        Ok(Request::new(id, workspace.into(), author.into(), now))
    }

    /// The files released from `workspace`: (path, sha256) of every file of
    /// its released requests. Such a file cannot be requested again as an
    /// output (Airlock's rule); new content at the same path can.
    pub fn released(
        &self,
        workspace: &str,
    ) -> Result<std::collections::BTreeSet<(String, String)>> {
        let mut out = std::collections::BTreeSet::new();
        for id in self.ids()? {
            let Ok(req) = self.load(&id) else { continue };
            if req.workspace == workspace && req.state == crate::request::State::Released {
                out.extend(req.outputs().map(|(p, f)| (p.clone(), f.sha256.clone())));
            }
        }
        Ok(out)
    }

    pub fn files_dir(&self, id: &str) -> Result<DirFd> {
        Ok(self
            .request_dir(id)?
            .ensure_subdir(OsStr::new(FILES_DIR), &self.dir_spec())?
            .0)
    }

    /// Write the copy of one output under a temp name, owned by the service
    /// account, mode 0640; [`Store::keep_copy`] names it by its sha256 once
    /// the caller has checked the hash. `index` keeps the temp names of the
    /// outputs of one run apart.
    ///
    /// Written with `O_DIRECT` where the file system allows it: the bytes go
    /// from our buffer to the disk, not through the page cache. A copy must
    /// reach the disk before the request refers to it anyway, nobody reads
    /// it soon, and writing it into the page cache first costs as much CPU
    /// as hashing it (measured: half of an add's profile). The write waits
    /// for the device, so the caller runs it beside the hashing and the
    /// disclosure checks of the same bytes.
    pub fn write_copy(&self, files: &DirFd, index: usize, content: &Content) -> Result<TempCopy> {
        // Stray temps of a killed run were removed by the caller (under the lock).
        let name = OsString::from(format!(".copy-{index}.bs-tmp"));
        let path = files.path().join(&name);
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let create = |extra: OFlags| {
            rustix::fs::openat(files.fd(), &name, flags | extra, Mode::from_raw_mode(0o600))
        };
        // A file system without direct I/O (ramfs, tmpfs before Linux 6.6,
        // some FUSE and network file systems) refuses the flag at open, but
        // only after it created the file: that empty temp of ours goes first.
        let (fd, direct) = match create(OFlags::DIRECT) {
            Ok(fd) => (fd, true),
            Err(Errno::INVAL) => {
                files.remove_if_exists(&name)?;
                let fd = create(OFlags::empty()).map_err(|e| Error::io(&path, e.into()))?;
                (fd, false)
            }
            Err(e) => return Err(Error::io(&path, e.into())),
        };
        let copy = TempCopy { name, path };
        let result = (|| -> Result<()> {
            let file = std::fs::File::from(fd);
            let io = |e: std::io::Error| Error::io(&copy.path, e);
            if direct {
                write_direct(&file, content).map_err(io)?;
            } else {
                std::io::Write::write_all(&mut &file, content.bytes()).map_err(io)?;
            }
            if is_root() {
                rustix::fs::fchown(
                    &file,
                    Some(rustix::fs::Uid::from_raw(self.uid)),
                    Some(rustix::fs::Gid::from_raw(self.gid)),
                )
                .map_err(|e| io(e.into()))?;
            }
            rustix::fs::fchmod(&file, Mode::from_raw_mode(0o640)).map_err(|e| io(e.into()))
        })();
        match result {
            Ok(()) => Ok(copy),
            Err(e) => {
                let _ = files.remove_if_exists(&copy.name);
                Err(e)
            }
        }
    }

    /// Name a written copy by its content's sha256 (a copy of the same
    /// content already there is replaced by an identical one).
    pub fn keep_copy(&self, files: &DirFd, copy: TempCopy, sha: &str) -> Result<()> {
        rustix::fs::renameat(files.fd(), &copy.name, files.fd(), sha)
            .map_err(|e| Error::io(files.path().join(sha), e.into()))
    }

    /// Remove a written copy that will not be kept (its hash was wrong).
    pub fn discard_copy(&self, files: &DirFd, copy: TempCopy) -> Result<()> {
        files.remove_if_exists(&copy.name)?;
        Ok(())
    }

    /// Make copies durable before a request refers to them: fdatasync each
    /// (on the hashing threads; after a direct write only the file's
    /// metadata is left to commit), then fsync the directory for the renames.
    /// Not syncfs: that would wait for every other process's dirty data too.
    pub fn sync_blobs(
        &self,
        files: &DirFd,
        shas: &[String],
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<()> {
        let results = crate::hash::par_map(pool, shas, |sha| -> Result<()> {
            let path = files.path().join(sha);
            let fd = rustix::fs::openat(
                files.fd(),
                sha.as_str(),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::io(&path, e.into()))?;
            rustix::fs::fdatasync(&fd).map_err(|e| Error::io(&path, e.into()))
        });
        results.into_iter().collect::<Result<Vec<()>>>()?;
        rustix::fs::fsync(files.fd()).map_err(|e| Error::io(files.path(), e.into()))
    }

    pub fn read_blob(&self, id: &str, sha: &str, max: u64) -> Result<Vec<u8>> {
        let files = self.files_dir(id)?;
        match files.read_file(OsStr::new(sha), max)? {
            Some((bytes, _)) => Ok(bytes),
            None => Err(Error::NotFound {
                what: format!("the copy {sha} in request {id}"),
            }),
        }
    }

    /// The path of a copy, for people who look at it (reviewers).
    pub fn blob_path(&self, id: &str, sha: &str) -> std::path::PathBuf {
        self.requests.path().join(id).join(FILES_DIR).join(sha)
    }

    pub fn workspace(&self, ws: &str) -> Result<DirFd> {
        valid_workspace(ws)?;
        let rel = Path::new(WORKSPACES_DIR).join(ws);
        match self.medium.open_beneath(&rel) {
            Ok(d) => Ok(d),
            Err(CoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::NotFound {
                    what: format!("workspace {ws}"),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The workspaces directory, for `check` on paths.
    pub fn workspaces(&self) -> Result<DirFd> {
        Ok(self.medium.open_beneath(Path::new(WORKSPACES_DIR))?)
    }

    pub fn medium_path(&self) -> &Path {
        self.medium.path()
    }

    pub fn manifest(&self, ws_dir: &DirFd) -> Result<Manifest> {
        let (parent, name) = split_rel(manifest::MANIFEST_PATH);
        let path = ws_dir
            .path()
            .join(manifest::MANIFEST_PATH)
            .display()
            .to_string();
        let dir = ws_dir.open_beneath(Path::new(parent))?;
        let Some((bytes, _)) = dir.read_file(OsStr::new(name), manifest::MAX_MANIFEST_BYTES)?
        else {
            return Err(Error::NotFound { what: path });
        };
        manifest::parse(&bytes).map_err(|message| Error::Manifest { path, message })
    }
}

/// A copy under its temp name, written but not yet named by its sha256.
#[must_use = "a written copy is kept (keep_copy) or discarded (discard_copy)"]
pub struct TempCopy {
    name: OsString,
    path: std::path::PathBuf,
}

/// Write `content` to a file opened with `O_DIRECT`: the whole blocks
/// straight from the aligned buffer, then the file cut to its true length
/// (the last block was written with its zero padding). A device that wants
/// a coarser alignment than [`crate::content::ALIGN`] refuses with EINVAL:
/// the rest is then written through the page cache.
fn write_direct(file: &std::fs::File, content: &Content) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let padded = content.padded();
    let mut done = 0;
    while done < padded.len() {
        match rustix::io::pwrite(file, &padded[done..], done as u64) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(Errno::INTR) => continue,
            Err(Errno::INVAL) => {
                let flags = rustix::fs::fcntl_getfl(file)?;
                rustix::fs::fcntl_setfl(file, flags - OFlags::DIRECT)?;
                let rest = content.bytes().get(done..).unwrap_or_default();
                file.write_all_at(rest, done as u64)?;
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if padded.len() != content.len() {
        rustix::fs::ftruncate(file, content.len() as u64)?;
    }
    Ok(())
}

fn split_rel(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((dir, name)) => (dir, name),
        None => (".", path),
    }
}

/// Open a regular file `rel` beneath `base` without following any symlink:
/// the file and its size.
pub fn open_file_beneath(base: &DirFd, rel: &str) -> Result<(std::fs::File, u64)> {
    let (parent, name) = split_rel(rel);
    let dir = base
        .open_beneath(Path::new(parent))
        .map_err(|e| not_found_or(e, base, rel))?;
    let path = base.path().join(rel);
    let fd: OwnedFd = match rustix::fs::openat(
        dir.fd(),
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => {
            return Err(Error::NotFound {
                what: path.display().to_string(),
            })
        }
        Err(Errno::LOOP) => {
            return Err(Error::NotReleasable {
                path: rel.into(),
                message: "is a symlink: refusing to follow it".into(),
            })
        }
        Err(e) => return Err(Error::io(&path, e.into())),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| Error::io(&path, e.into()))?;
    if Kind::of(&st) != Kind::File {
        return Err(Error::NotReleasable {
            path: rel.into(),
            message: "is not a regular file".into(),
        });
    }
    // A second name for the same bytes may sit in the high-privacy tree
    // (issue 12: a medium file hard-linked to a highly sensitive one went
    // into a request as releasable). The job runner copies outputs, so an
    // output with another link was not put there by it.
    if st.st_nlink != 1 {
        return Err(Error::NotReleasable {
            path: rel.into(),
            message: format!(
                "has {} hard links: another name for the same bytes may be outside this workspace; refusing it",
                st.st_nlink
            ),
        });
    }
    Ok((std::fs::File::from(fd), st.st_size as u64))
}

fn not_found_or(e: CoreError, base: &DirFd, rel: &str) -> Error {
    match e {
        CoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::NotFound {
                what: base.path().join(rel).display().to_string(),
            }
        }
        CoreError::Unsafe { reason, .. } => Error::NotReleasable {
            path: rel.into(),
            message: format!("a directory on its path {reason}: refusing to follow it"),
        },
        other => other.into(),
    }
}

/// Read a whole file of known size (at most `max` bytes).
pub fn read_all(mut file: std::fs::File, size: u64, max: u64, path: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(size.min(max) as usize);
    (&mut file)
        .take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    if buf.len() as u64 > max {
        return Err(Error::TooLarge {
            path: path.into(),
            size: buf.len() as u64,
            max,
        });
    }
    Ok(buf)
}

/// Remove an entry that is not a directory (for `sync-level4 --delete`).
pub fn unlink(dir: &DirFd, name: &OsStr) -> Result<()> {
    rustix::fs::unlinkat(dir.fd(), name, AtFlags::empty())
        .map_err(|e| Error::io(dir.path().join(name), e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_paths_must_be_plain_and_relative() {
        assert!(valid_output_path("output/table.csv").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "output/../../x",
            "a//b",
            "a/./b",
            "x\"y",
            "a\nb",
            "out/",
        ] {
            assert!(valid_output_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_and_workspaces_are_single_safe_components() {
        assert!(valid_id("12").is_ok());
        assert!(valid_id("../1").is_err());
        assert!(valid_id("").is_err());
        assert!(valid_workspace("my-ws_1.0").is_ok());
        assert!(valid_workspace("..").is_err());
        assert!(valid_workspace("a/b").is_err());
    }
}
