//! File operations for a process running as root.
//!
//! Two rules, both from incidents in tools like ours (Ansible's
//! authorized_key module once followed a user's symlink as root;
//! CVE-2011-1485-style races live in check-then-open code):
//!
//! * Anything below a directory a user can write is reached only through
//!   file descriptors opened with `O_NOFOLLOW`, one path component at a
//!   time ([`DirFd::open_beneath`]), and changed with `fchown`/`fchmod`
//!   on those descriptors. A symlink is never followed.
//! * Files are replaced atomically: a temp file in the same directory gets
//!   its content, owner and mode and is fsynced before it is renamed over
//!   the target, then the directory is fsynced. A reader sees the old file
//!   or the new one, never half of one, and a crash leaves no half-written
//!   file. The temp name is fixed per target (`.<name>.bs-tmp`), so a run
//!   killed mid-write leaves at most one stray file that the next run
//!   removes.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Gid, Mode, OFlags, Stat, Uid};
use rustix::io::Errno;

use crate::error::{CoreError, Result};

/// Owner and permission bits a file or directory must end up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSpec {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl FileSpec {
    pub fn root(mode: u32) -> FileSpec {
        FileSpec {
            mode,
            uid: 0,
            gid: 0,
        }
    }
}

/// What kind of object a directory entry is, as `lstat` sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

impl Kind {
    pub fn of(st: &Stat) -> Kind {
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

/// An open directory. Every operation is relative to it and never follows
/// a symlink in the name it is given.
#[derive(Debug)]
pub struct DirFd {
    fd: OwnedFd,
    path: PathBuf,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl DirFd {
    /// Open a directory by absolute path. Parent components are resolved by
    /// the kernel (use this for root-owned system directories); the last
    /// component must not be a symlink.
    pub fn open(path: &Path) -> Result<DirFd> {
        let fd = rustix::fs::open(path, DIR_FLAGS, Mode::empty()).map_err(|e| map_open(path, e))?;
        Ok(DirFd {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Open `rel` below this directory one component at a time, each with
    /// `O_NOFOLLOW`: no symlink anywhere in `rel` is followed, and `..` is
    /// refused.
    pub fn open_beneath(&self, rel: &Path) -> Result<DirFd> {
        let mut current = self.try_clone()?;
        for comp in rel.components() {
            match comp {
                Component::Normal(name) => current = current.open_subdir(name)?,
                Component::CurDir => {}
                _ => {
                    return Err(CoreError::Unsafe {
                        path: self.path.join(rel),
                        reason: "only plain relative paths may be opened beneath a directory"
                            .into(),
                    })
                }
            }
        }
        Ok(current)
    }

    pub fn try_clone(&self) -> Result<DirFd> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| CoreError::io(&self.path, e))?;
        Ok(DirFd {
            fd,
            path: self.path.clone(),
        })
    }

    /// Open the directory entry `name`, refusing symlinks.
    pub fn open_subdir(&self, name: &OsStr) -> Result<DirFd> {
        let path = self.path.join(name);
        let fd = rustix::fs::openat(&self.fd, name, DIR_FLAGS, Mode::empty())
            .map_err(|e| map_open(&path, e))?;
        Ok(DirFd { fd, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn stat(&self) -> Result<Stat> {
        rustix::fs::fstat(&self.fd).map_err(|e| CoreError::io(&self.path, e.into()))
    }

    /// `lstat` of an entry; `None` when it does not exist.
    pub fn stat_at(&self, name: &OsStr) -> Result<Option<Stat>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(CoreError::io(self.path.join(name), e.into())),
        }
    }

    /// Set owner and mode of this directory through its descriptor.
    pub fn set_owner_mode(&self, spec: &FileSpec) -> Result<bool> {
        set_owner_mode(&self.fd, &self.path, spec)
    }

    /// Make sure the subdirectory `name` exists with `spec` and open it. An
    /// existing symlink or non-directory there is refused, never replaced.
    pub fn ensure_subdir(&self, name: &OsStr, spec: &FileSpec) -> Result<(DirFd, bool)> {
        let mut changed = false;
        match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => changed = true,
            Err(Errno::EXIST) => {}
            Err(e) => return Err(CoreError::io(self.path.join(name), e.into())),
        }
        let dir = self.open_subdir(name)?;
        changed |= dir.set_owner_mode(spec)?;
        Ok((dir, changed))
    }

    /// Read a regular file in this directory, refusing a symlink or anything
    /// larger than `max` bytes. `None` when it does not exist.
    pub fn read_file(&self, name: &OsStr, max: u64) -> Result<Option<(Vec<u8>, Stat)>> {
        let path = self.path.join(name);
        let fd = match rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(map_open(&path, e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| CoreError::io(&path, e.into()))?;
        if Kind::of(&st) != Kind::File {
            return Err(CoreError::Unsafe {
                path,
                reason: "not a regular file".into(),
            });
        }
        if st.st_size as u64 > max {
            return Err(CoreError::Unsafe {
                path,
                reason: format!("larger than {max} bytes"),
            });
        }
        let mut buf = Vec::with_capacity(st.st_size as usize);
        std::fs::File::from(fd)
            .take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| CoreError::io(&path, e))?;
        Ok(Some((buf, st)))
    }

    /// Replace `name` atomically with `contents`, owned and moded per `spec`.
    /// Returns false (and writes nothing) when the file already is exactly
    /// that. An existing symlink at `name` is replaced by the file, never
    /// written through.
    pub fn write_file(&self, name: &OsStr, contents: &[u8], spec: &FileSpec) -> Result<bool> {
        let tmp = temp_name(name);
        // A temp left by a run that was killed: ours, since we hold the run lock.
        self.remove_if_exists(&tmp)?;
        if self.file_is(name, contents, spec)? {
            return Ok(false);
        }
        let tmp_path = self.path.join(&tmp);
        let fd = rustix::fs::openat(
            &self.fd,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| CoreError::io(&tmp_path, e.into()))?;
        let result = (|| {
            let mut file = std::fs::File::from(fd);
            file.write_all(contents)
                .map_err(|e| CoreError::io(&tmp_path, e))?;
            set_owner_mode(&file, &tmp_path, spec)?;
            file.sync_all().map_err(|e| CoreError::io(&tmp_path, e))?;
            rustix::fs::renameat(&self.fd, &tmp, &self.fd, name)
                .map_err(|e| CoreError::io(self.path.join(name), e.into()))?;
            rustix::fs::fsync(&self.fd).map_err(|e| CoreError::io(&self.path, e.into()))
        })();
        if result.is_err() {
            let _ = self.remove_if_exists(&tmp);
        }
        result.map(|()| true)
    }

    /// Whether `name` is a regular file with exactly these bytes, owner and mode.
    pub fn file_is(&self, name: &OsStr, contents: &[u8], spec: &FileSpec) -> Result<bool> {
        match self.read_file(name, contents.len() as u64) {
            Ok(Some((bytes, st))) => Ok(bytes == contents
                && st.st_mode & 0o7777 == spec.mode
                && st.st_uid == spec.uid
                && st.st_gid == spec.gid),
            Ok(None) => Ok(false),
            // A symlink, a directory or a bigger file: not what we want there.
            Err(CoreError::Unsafe { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Remove the entry `name` (not a directory). Returns whether it existed.
    pub fn remove_if_exists(&self, name: &OsStr) -> Result<bool> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(CoreError::io(self.path.join(name), e.into())),
        }
    }

    /// The names in this directory (without `.` and `..`), with their kind.
    pub fn entries(&self) -> Result<Vec<(OsString, Kind)>> {
        let dup = rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| CoreError::io(&self.path, e.into()))?;
        let mut dir = rustix::fs::Dir::new(dup).map_err(|e| CoreError::io(&self.path, e.into()))?;
        let mut out = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| CoreError::io(&self.path, e.into()))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let kind = match entry.file_type() {
                rustix::fs::FileType::RegularFile => Kind::File,
                rustix::fs::FileType::Directory => Kind::Dir,
                rustix::fs::FileType::Symlink => Kind::Symlink,
                _ => Kind::Other,
            };
            out.push((OsStr::from_bytes(name).to_os_string(), kind));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

fn temp_name(name: &OsStr) -> OsString {
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(".bs-tmp");
    tmp
}

/// True for the temp files [`DirFd::write_file`] creates.
pub fn is_temp_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.starts_with(b".") && b.ends_with(b".bs-tmp")
}

fn set_owner_mode(fd: impl AsFd, path: &Path, spec: &FileSpec) -> Result<bool> {
    let st = rustix::fs::fstat(&fd).map_err(|e| CoreError::io(path, e.into()))?;
    let mut changed = false;
    if st.st_uid != spec.uid || st.st_gid != spec.gid {
        rustix::fs::fchown(
            &fd,
            Some(Uid::from_raw(spec.uid)),
            Some(Gid::from_raw(spec.gid)),
        )
        .map_err(|e| CoreError::io(path, e.into()))?;
        changed = true;
    }
    // After fchown: chown clears setuid/setgid bits, so the mode goes last.
    let st = rustix::fs::fstat(&fd).map_err(|e| CoreError::io(path, e.into()))?;
    if st.st_mode & 0o7777 != spec.mode {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(spec.mode))
            .map_err(|e| CoreError::io(path, e.into()))?;
        changed = true;
    }
    Ok(changed)
}

fn map_open(path: &Path, e: Errno) -> CoreError {
    match e {
        // O_NOFOLLOW on a symlink gives ELOOP; O_DIRECTORY on one, ENOTDIR.
        Errno::LOOP => CoreError::Unsafe {
            path: path.to_path_buf(),
            reason: "is a symlink".into(),
        },
        Errno::NOTDIR => CoreError::Unsafe {
            path: path.to_path_buf(),
            reason: "is not a directory (or is a symlink)".into(),
        },
        e => CoreError::io(path, e.into()),
    }
}

/// Split an absolute path into its parent directory and file name.
pub fn split(path: &Path) -> Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(CoreError::Unsafe {
            path: path.to_path_buf(),
            reason: "has no file name".into(),
        }),
    }
}

/// Atomically replace the file at `path` (in a root-owned directory).
pub fn write_atomic(path: &Path, contents: &[u8], spec: &FileSpec) -> Result<bool> {
    let (dir, name) = split(path)?;
    DirFd::open(dir)?.write_file(name, contents, spec)
}

/// `mkdir -p` for root-owned system directories under a root: each missing
/// directory is created with `spec`; existing ones are left as they are.
pub fn ensure_dir_all(path: &Path, spec: &FileSpec) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        ensure_dir_all(parent, spec)?;
    }
    let (dir, name) = split(path)?;
    DirFd::open(dir)?.ensure_subdir(name, spec)?;
    Ok(())
}

/// Whether the file at `path` is a regular file with exactly these bytes,
/// owner and mode (false when it or its directory does not exist).
pub fn is_current(path: &Path, contents: &[u8], spec: &FileSpec) -> Result<bool> {
    let (dir, name) = split(path)?;
    match DirFd::open(dir) {
        Ok(d) => d.file_is(name, contents, spec),
        Err(CoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Remove a file at `path` if it exists (not through a symlinked parent).
pub fn remove_file(path: &Path) -> Result<bool> {
    let (dir, name) = split(path)?;
    match DirFd::open(dir) {
        Ok(d) => d.remove_if_exists(name),
        Err(CoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn me() -> (u32, u32) {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    }

    #[test]
    fn atomic_write_sets_mode_and_owner_and_reports_no_change_the_second_time() {
        let dir = tempfile::tempdir().unwrap();
        let (uid, gid) = me();
        let spec = FileSpec {
            mode: 0o640,
            uid,
            gid,
        };
        let p = dir.path().join("f");
        assert!(write_atomic(&p, b"hello\n", &spec).unwrap());
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!(meta.uid(), uid);
        assert_eq!(std::fs::read(&p).unwrap(), b"hello\n");
        let ino = meta.ino();
        assert!(!write_atomic(&p, b"hello\n", &spec).unwrap());
        assert_eq!(
            std::fs::metadata(&p).unwrap().ino(),
            ino,
            "unchanged file was rewritten"
        );
        assert!(write_atomic(&p, b"bye\n", &spec).unwrap());
        assert_ne!(
            std::fs::metadata(&p).unwrap().ino(),
            ino,
            "not replaced by rename"
        );
    }

    #[test]
    fn a_stray_temp_from_a_killed_run_is_removed_even_when_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (uid, gid) = me();
        let spec = FileSpec {
            mode: 0o644,
            uid,
            gid,
        };
        let p = dir.path().join("f");
        write_atomic(&p, b"x", &spec).unwrap();
        std::fs::write(dir.path().join(".f.bs-tmp"), b"half").unwrap();
        assert!(!write_atomic(&p, b"x", &spec).unwrap());
        assert!(!dir.path().join(".f.bs-tmp").exists());
        assert!(is_temp_name(OsStr::new(".f.bs-tmp")));
    }

    #[test]
    fn writing_over_a_symlink_replaces_the_link_not_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let (uid, gid) = me();
        let target = dir.path().join("shadow-copy");
        std::fs::write(&target, b"secret").unwrap();
        let link = dir.path().join("authorized_keys");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomic(
            &link,
            b"ssh-ed25519 AAAA",
            &FileSpec {
                mode: 0o600,
                uid,
                gid,
            },
        )
        .unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"secret");
        assert!(!std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn open_beneath_refuses_a_symlinked_component() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home/alice")).unwrap();
        std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("elsewhere"),
            dir.path().join("home/alice/.ssh"),
        )
        .unwrap();
        let base = DirFd::open(dir.path()).unwrap();
        assert!(base.open_beneath(Path::new("home/alice")).is_ok());
        let err = base.open_beneath(Path::new("home/alice/.ssh")).unwrap_err();
        assert!(matches!(err, CoreError::Unsafe { .. }), "{err}");
        assert!(base.open_beneath(Path::new("home/../etc")).is_err());
    }

    #[test]
    fn read_file_refuses_symlinks_and_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![b'a'; 100]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        let d = DirFd::open(dir.path()).unwrap();
        assert!(d.read_file(OsStr::new("big"), 10).is_err());
        assert!(d.read_file(OsStr::new("link"), 1 << 20).is_err());
        assert!(d.read_file(OsStr::new("missing"), 10).unwrap().is_none());
    }

    #[test]
    fn ensure_subdir_refuses_a_symlink_in_place_of_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/tmp", dir.path().join("d")).unwrap();
        let (uid, gid) = me();
        let base = DirFd::open(dir.path()).unwrap();
        assert!(base
            .ensure_subdir(
                OsStr::new("d"),
                &FileSpec {
                    mode: 0o700,
                    uid,
                    gid
                }
            )
            .is_err());
        let (_, created) = base
            .ensure_subdir(
                OsStr::new("e"),
                &FileSpec {
                    mode: 0o750,
                    uid,
                    gid,
                },
            )
            .unwrap();
        assert!(created);
        let mode = std::fs::metadata(dir.path().join("e"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o750);
    }
}
