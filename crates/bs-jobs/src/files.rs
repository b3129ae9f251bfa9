//! File-descriptor based helpers for the privacy trees and job volumes.
//!
//! A job's volume is written by the job (uid 10000): it may hold symlinks
//! to /etc/shadow, hard links, fifos. Everything below it, and below the
//! workspaces (which researchers may be able to write), is reached through
//! `O_NOFOLLOW` descriptors one component at a time; only regular files
//! with a single link are read, and files are created atomically
//! (temp, fsync, rename) with owner and mode set on the descriptor, so the
//! default ACLs bs-perms put on a tree apply to them and nothing is ever
//! written through a link.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use bs_core::safefs::{self, DirFd, FileSpec, Kind};
use bs_core::CoreError;
use rustix::fs::{AtFlags, Gid, Mode, OFlags, Uid};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use crate::error::Result;

/// Open the directory `path` (a tree's top, like /srv/high_privacy),
/// creating it with `spec` only when it is missing; an existing one is
/// left as bs-perms made it.
pub fn open_tree_top(path: &Path, spec: &FileSpec) -> Result<DirFd> {
    if let Some(parent) = path.parent() {
        safefs::ensure_dir_all(parent, &FileSpec::root(0o755))?;
    }
    let (parent, name) = safefs::split(path)?;
    let parent = DirFd::open(parent)?;
    subdir_create_only(&parent, name, spec)
}

/// Open `name` below `dir`; create it with `spec` when missing. Existing
/// directories keep their owner and mode (bs-perms owns those).
pub fn subdir_create_only(dir: &DirFd, name: &OsStr, spec: &FileSpec) -> Result<DirFd> {
    match rustix::fs::mkdirat(dir.fd(), name, Mode::from_raw_mode(spec.mode)) {
        Ok(()) => {
            let sub = dir.open_subdir(name)?;
            set_owner_mode(&sub.fd(), sub.path(), spec)?;
            Ok(sub)
        }
        Err(Errno::EXIST) => Ok(dir.open_subdir(name)?),
        Err(e) => Err(CoreError::io(dir.path().join(name), e.into()).into()),
    }
}

/// Open (creating as needed) every directory of the relative path `rel`
/// below `base`, without following a symlink anywhere.
pub fn ensure_dirs(base: &DirFd, rel: &Path, spec: &FileSpec) -> Result<DirFd> {
    let mut cur = base.try_clone()?;
    for comp in rel.components() {
        match comp {
            Component::Normal(name) => cur = subdir_create_only(&cur, name, spec)?,
            Component::CurDir => {}
            _ => {
                return Err(CoreError::Unsafe {
                    path: base.path().join(rel),
                    reason: "not a plain relative path".into(),
                }
                .into())
            }
        }
    }
    Ok(cur)
}

pub fn set_owner_mode(fd: &impl AsFd, path: &Path, spec: &FileSpec) -> Result<()> {
    rustix::fs::fchown(
        fd,
        Some(Uid::from_raw(spec.uid)),
        Some(Gid::from_raw(spec.gid)),
    )
    .map_err(|e| CoreError::io(path, e.into()))?;
    // After fchown, which clears setuid/setgid: the mode goes last.
    rustix::fs::fchmod(fd, Mode::from_raw_mode(spec.mode))
        .map_err(|e| CoreError::io(path, e.into()))?;
    Ok(())
}

/// What a copy wrote.
#[derive(Debug, Clone)]
pub struct Copied {
    pub size: u64,
    pub sha256: String,
}

/// Write `name` in `dir` atomically from a reader, hashing as it goes.
///
/// The temp name is unique to the process and call (`.<name>.<pid>-<n>.bs-tmp`):
/// two jobs of one action in one workspace may write the same file at
/// the same time, and a shared temp name would let one rename the other's
/// half-written file (found by the 10,000-job bench with two workers).
pub fn write_from(
    dir: &DirFd,
    name: &OsStr,
    src: &mut dyn Read,
    spec: &FileSpec,
) -> Result<Copied> {
    write_from_opts(dir, name, src, spec, true)
}

/// [`write_from`]; without `dir_sync` the rename is not made durable
/// here: the caller fsyncs the directory after its last file there.
pub fn write_from_opts(
    dir: &DirFd,
    name: &OsStr,
    src: &mut dyn Read,
    spec: &FileSpec,
    dir_sync: bool,
) -> Result<Copied> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}-{n}.bs-tmp", std::process::id()));
    let tmp_path = dir.path().join(&tmp);
    let fd = rustix::fs::openat(
        dir.fd(),
        &tmp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(spec.mode),
    )
    .map_err(|e| CoreError::io(&tmp_path, e.into()))?;
    let result = (|| -> Result<Copied> {
        let mut file = std::fs::File::from(fd);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CoreError::io(&tmp_path, e).into()),
            };
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .map_err(|e| CoreError::io(&tmp_path, e))?;
            size += n as u64;
        }
        set_owner_mode(&file, &tmp_path, spec)?;
        file.sync_all().map_err(|e| CoreError::io(&tmp_path, e))?;
        // Test hook: a worker killed with a temp written, not yet renamed.
        crate::faults::crash_point("before_rename");
        rustix::fs::renameat(dir.fd(), &tmp, dir.fd(), name)
            .map_err(|e| CoreError::io(dir.path().join(name), e.into()))?;
        if dir_sync {
            rustix::fs::fsync(dir.fd()).map_err(|e| CoreError::io(dir.path(), e.into()))?;
        }
        Ok(Copied {
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    })();
    if result.is_err() {
        let _ = dir.remove_if_exists(&tmp);
    }
    result
}

/// Write bytes to `rel` below `base` (directories created with `dir_spec`).
pub fn write_rel(
    base: &DirFd,
    rel: &Path,
    bytes: &[u8],
    spec: &FileSpec,
    dir_spec: &FileSpec,
) -> Result<Copied> {
    let (dir, name) = open_parent(base, rel, dir_spec)?;
    write_from(&dir, name, &mut &bytes[..], spec)
}

/// The directory holding `rel` (created as needed) and the file name.
pub fn open_parent<'a>(
    base: &DirFd,
    rel: &'a Path,
    dir_spec: &FileSpec,
) -> Result<(DirFd, &'a OsStr)> {
    let name = rel.file_name().ok_or_else(|| CoreError::Unsafe {
        path: base.path().join(rel),
        reason: "has no file name".into(),
    })?;
    let parent = rel.parent().unwrap_or(Path::new(""));
    Ok((ensure_dirs(base, parent, dir_spec)?, name))
}

/// Open a regular file `rel` below `base` for reading: no symlink in any
/// component, not a device or fifo, and not a hard link to something else.
pub fn open_regular(base: &DirFd, rel: &Path) -> Result<(std::fs::File, u64)> {
    let parent = rel.parent().unwrap_or(Path::new(""));
    let name = rel.file_name().unwrap_or_default();
    let dir = base.open_beneath(parent)?;
    let path = dir.path().join(name);
    let fd = rustix::fs::openat(
        dir.fd(),
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::LOOP => CoreError::Unsafe {
            path: path.clone(),
            reason: "is a symlink".into(),
        },
        e => CoreError::io(&path, e.into()),
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| CoreError::io(&path, e.into()))?;
    if Kind::of(&st) != Kind::File {
        return Err(CoreError::Unsafe {
            path,
            reason: "not a regular file".into(),
        }
        .into());
    }
    if st.st_nlink != 1 {
        return Err(CoreError::Unsafe {
            path,
            reason: "has more than one hard link".into(),
        }
        .into());
    }
    Ok((std::fs::File::from(fd), st.st_size as u64))
}

/// Every regular file below `dir`, as `/`-joined relative paths, plus the
/// entries that are not (symlinks, fifos) for the record.
pub fn walk(dir: &DirFd) -> Result<(Vec<String>, Vec<String>)> {
    let mut files = Vec::new();
    let mut others = Vec::new();
    walk_into(dir, "", &mut files, &mut others, 0)?;
    files.sort();
    Ok((files, others))
}

fn walk_into(
    dir: &DirFd,
    prefix: &str,
    files: &mut Vec<String>,
    others: &mut Vec<String>,
    depth: usize,
) -> Result<()> {
    if depth > 64 {
        others.push(format!("{prefix}(too deep)"));
        return Ok(());
    }
    for (name, kind) in dir.entries()? {
        let Ok(n) = std::str::from_utf8(name.as_bytes()) else {
            others.push(format!("{prefix}{}", name.to_string_lossy()));
            continue;
        };
        let rel = format!("{prefix}{n}");
        match kind {
            Kind::File => files.push(rel),
            Kind::Dir => {
                let sub = dir.open_subdir(&name)?;
                walk_into(&sub, &format!("{rel}/"), files, others, depth + 1)?;
            }
            Kind::Symlink | Kind::Other => others.push(rel),
        }
    }
    Ok(())
}

/// The pid in a temp name [`write_from`] made (`.<name>.<pid>-<n>.bs-tmp`).
pub fn temp_pid(name: &OsStr) -> Option<u32> {
    let s = std::str::from_utf8(name.as_bytes()).ok()?;
    let stem = s.strip_prefix('.')?.strip_suffix(".bs-tmp")?;
    let (_, tail) = stem.rsplit_once('.')?;
    let (pid, n) = tail.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Remove the temps a killed worker left below `dir` (never following a
/// symlink): every `write_from` temp whose pid is not in `live`.
/// Returns how many went.
pub fn sweep_temps(dir: &DirFd, live: &[u32], depth: usize) -> Result<usize> {
    let mut n = 0;
    if depth > 64 {
        return Ok(0);
    }
    for (name, kind) in dir.entries()? {
        match kind {
            Kind::Dir => n += sweep_temps(&dir.open_subdir(&name)?, live, depth + 1)?,
            Kind::File => {
                if let Some(pid) = temp_pid(&name) {
                    if !live.contains(&pid) && dir.remove_if_exists(&name)? {
                        n += 1;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(n)
}

/// Remove a directory tree below `parent` by descriptor, never following
/// a symlink (the job could have planted one pointing anywhere).
pub fn remove_tree(parent: &DirFd, name: &OsStr) -> Result<bool> {
    let dir = match parent.open_subdir(name) {
        Ok(d) => d,
        Err(CoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(false)
        }
        Err(e) => return Err(e.into()),
    };
    for (entry, kind) in dir.entries()? {
        if kind == Kind::Dir {
            remove_tree(&dir, &entry)?;
        } else {
            dir.remove_if_exists(&entry)?;
        }
    }
    match rustix::fs::unlinkat(parent.fd(), name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(true),
        Err(e) => Err(CoreError::io(parent.path().join(name), e.into()).into()),
    }
}
