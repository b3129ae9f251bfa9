//! The tree walker: file descriptors only, parallel, memory bounded.
//!
//! * Directories are opened with `openat(parent, name, O_DIRECTORY |
//!   O_NOFOLLOW)` and checked to be the inode (dev, ino) that was listed;
//!   their entries are read with `getdents64` ([`RawDir`]) into a reused
//!   buffer and `fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW)`ed. Nothing is
//!   ever reached through a path that the kernel resolves for us below the
//!   tree's top, so a symlink a user plants is never followed.
//! * Symlinks are counted and reported, never followed, never re-owned.
//!   Other file systems (mount points) are not entered. Devices, FIFOs and
//!   sockets are counted and left alone (opening a device can have effects).
//! * A regular file that needs a change and has several hard links is not
//!   touched: it may be a link to a file outside the tree (an error record).
//! * Work is a LIFO stack of directories shared by N workers (both cores);
//!   a job holds its parent's fd and its name, so memory and open fds grow
//!   with the tree's depth and the width of one directory, never with the
//!   number of files. Records go to the writer over a bounded channel.

use std::ffi::{CStr, CString, OsStr};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex};

use rustix::fs::{AtFlags, Gid, Mode, OFlags, RawDir, Stat, Uid, XattrFlags};
use rustix::io::Errno;

use crate::acl::{Acl, NamedSpec, XATTR_ACCESS, XATTR_DEFAULT};

/// What a tree must look like; `None` is "not enforced".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub dir_mode: Option<u32>,
    pub file_mode: Option<u32>,
    pub setgid: Option<bool>,
    pub acl: Option<Vec<NamedSpec>>,
    pub default_acl: Option<Vec<NamedSpec>>,
}

/// The state of one entry, as far as the policy cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    /// The access ACL; a plain mode is shown as its three-entry ACL.
    pub access: Acl,
    /// The default ACL of a directory (`None`: has none).
    pub default: Option<Acl>,
}

/// What an entry should be: each `None` is left as it is.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Want {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
    pub access: Option<Acl>,
    pub default: Option<Option<Acl>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Differs {
    pub owner: bool,
    pub group: bool,
    pub mode: bool,
    pub acl: bool,
    pub mask: bool,
    pub default_acl: bool,
}

impl Differs {
    pub fn any(&self) -> bool {
        self.owner || self.group || self.mode || self.acl || self.mask || self.default_acl
    }

    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.owner, "owner"),
            (self.group, "group"),
            (self.mode, "mode"),
            (self.acl, "acl"),
            (self.mask, "mask"),
            (self.default_acl, "default_acl"),
        ]
        .into_iter()
        .filter_map(|(d, n)| d.then_some(n))
        .collect()
    }
}

/// The entries without the mask, each with the rights it really grants.
/// Compared this way, a file that inherited `group:reviewers:r-x` from a
/// default ACL under a 0640 mode (mask `r--`) is not drift: its reviewers
/// get exactly `r--`, as configured. A mask that would let the `x` through
/// is still drift, reported as `mask`.
fn effective_entries(acl: &Acl) -> Vec<crate::acl::Entry> {
    acl.entries()
        .iter()
        .filter(|e| e.tag != crate::acl::Tag::Mask)
        .map(|e| crate::acl::Entry {
            perm: acl.effective(e),
            ..*e
        })
        .collect()
}

/// Work out what an entry should be and what differs. Pure: unit-tested.
pub fn evaluate(policy: &Policy, is_dir: bool, have: &State) -> (Want, Differs) {
    let mut want = Want {
        uid: policy.uid,
        gid: policy.gid,
        ..Want::default()
    };
    let configured = if is_dir {
        policy.dir_mode
    } else {
        policy.file_mode
    };
    let mut base = configured.unwrap_or(have.mode);
    if is_dir {
        match policy.setgid {
            Some(true) => base |= 0o2000,
            Some(false) => base &= !0o2000,
            None => base = (base & !0o2000) | (have.mode & 0o2000),
        }
    }
    let mode_enforced = configured.is_some() || (is_dir && policy.setgid.is_some());
    // Base entries: from the configured mode, else from what is there now
    // (group:: lives in the ACL when there is a mask, not in the mode).
    let (u, g, o) = if configured.is_some() {
        (
            ((base >> 6) & 7) as u16,
            ((base >> 3) & 7) as u16,
            (base & 7) as u16,
        )
    } else {
        let get = |t| have.access.get(t).unwrap_or(0);
        (
            get(crate::acl::Tag::UserObj),
            get(crate::acl::Tag::GroupObj),
            get(crate::acl::Tag::Other),
        )
    };
    if let Some(specs) = &policy.acl {
        let named: Vec<_> = specs.iter().map(|s| s.resolve(is_dir, base)).collect();
        let access = Acl::with_computed_mask(u, g, o, &named);
        want.mode = Some((base & 0o7000) | access.mode_bits());
        want.access = Some(access);
    } else if mode_enforced {
        want.mode = Some(base);
    }
    if is_dir {
        if let Some(specs) = &policy.default_acl {
            want.default = Some(if specs.is_empty() {
                None
            } else {
                let named: Vec<_> = specs.iter().map(|s| s.resolve(true, base)).collect();
                Some(Acl::with_computed_mask(u, g, o, &named))
            });
        }
    }
    let differs = Differs {
        owner: want.uid.is_some_and(|w| w != have.uid),
        group: want.gid.is_some_and(|w| w != have.gid),
        mode: want.mode.is_some_and(|w| w != have.mode),
        acl: want
            .access
            .as_ref()
            .is_some_and(|w| effective_entries(w) != effective_entries(&have.access)),
        mask: want
            .access
            .as_ref()
            .is_some_and(|w| w.mask() != have.access.mask()),
        default_acl: want.default.as_ref().is_some_and(|w| *w != have.default),
    };
    (want, differs)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Dir => "dir",
            EntryKind::File => "file",
        }
    }
}

/// Something the writer has to say about one path.
#[derive(Debug)]
pub enum Event {
    /// An entry that differs: fixed (apply) or drift (plan/check).
    Differs {
        path: PathBuf,
        kind: EntryKind,
        differs: Differs,
        have: Box<State>,
        want: Box<Want>,
        fixed: bool,
    },
    /// A directory created (a configured subdirectory).
    Created { path: PathBuf },
    /// Left alone on purpose: `symlink`, `other_file_system`, `special_file`.
    Skipped { path: PathBuf, reason: &'static str },
    Error {
        path: PathBuf,
        kind: &'static str,
        message: String,
    },
}

/// Counters of one walk.
#[derive(Debug, Default)]
pub struct Stats {
    pub dirs: AtomicU64,
    pub files: AtomicU64,
    pub differing: AtomicU64,
    pub fixed: AtomicU64,
    pub symlinks: AtomicU64,
    pub other_fs: AtomicU64,
    pub special: AtomicU64,
    pub hard_linked: AtomicU64,
    pub errors: AtomicU64,
}

impl Stats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Job {
    parent: Arc<OwnedFd>,
    name: CString,
    path: PathBuf,
    ino: u64,
}

#[derive(Default)]
struct QueueState {
    jobs: Vec<Job>,
    active: usize,
}

struct Ctx<'a> {
    policy: &'a Policy,
    fix: bool,
    /// Send a record for every differing path (off with `--summary`).
    report_paths: bool,
    dev: u64,
    stats: &'a Stats,
    events: SyncSender<Event>,
    queue: Mutex<QueueState>,
    ready: Condvar,
}

/// How to walk.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Change what differs (apply), or only report it (plan, check).
    pub fix: bool,
    /// Send an event for every differing or skipped path (off: counts only).
    pub report_paths: bool,
    pub threads: usize,
}

/// Walk the tree whose top directory is `name` in `parent` (shown as
/// `top`), applying `policy` when `opts.fix`. Events go to `events`.
pub fn walk(
    parent: Arc<OwnedFd>,
    name: &OsStr,
    top: &Path,
    policy: &Policy,
    opts: Options,
    stats: &Stats,
    events: SyncSender<Event>,
) {
    let Options {
        fix,
        report_paths,
        threads,
    } = opts;
    let Ok(cname) = CString::new(name.as_bytes()) else {
        return;
    };
    let st = match rustix::fs::statat(&*parent, &*cname, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(e) => {
            bump(&stats.errors);
            let _ = events.send(Event::Error {
                path: top.to_path_buf(),
                kind: "io",
                message: std::io::Error::from(e).to_string(),
            });
            return;
        }
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        bump(&stats.errors);
        let _ = events.send(Event::Error {
            path: top.to_path_buf(),
            kind: "unsafe_path",
            message: "the top of a tree must be a directory (not a symlink)".into(),
        });
        return;
    }
    let ctx = Ctx {
        policy,
        fix,
        report_paths,
        dev: st.st_dev,
        stats,
        events,
        queue: Mutex::new(QueueState {
            jobs: vec![Job {
                parent,
                name: cname,
                path: top.to_path_buf(),
                ino: st.st_ino,
            }],
            active: 0,
        }),
        ready: Condvar::new(),
    };
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| worker(&ctx));
        }
    });
}

fn worker(ctx: &Ctx<'_>) {
    let mut dirbuf: Vec<MaybeUninit<u8>> = vec![MaybeUninit::uninit(); 64 * 1024];
    loop {
        let job = {
            let Ok(mut q) = ctx.queue.lock() else { return };
            loop {
                if let Some(job) = q.jobs.pop() {
                    q.active += 1;
                    break job;
                }
                if q.active == 0 {
                    ctx.ready.notify_all();
                    return;
                }
                q = match ctx.ready.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
        };
        dir_job(ctx, job, &mut dirbuf);
        if let Ok(mut q) = ctx.queue.lock() {
            q.active -= 1;
            if q.active == 0 && q.jobs.is_empty() {
                ctx.ready.notify_all();
            }
        }
    }
}

fn push(ctx: &Ctx<'_>, job: Job) {
    if let Ok(mut q) = ctx.queue.lock() {
        q.jobs.push(job);
        ctx.ready.notify_one();
    }
}

fn error(ctx: &Ctx<'_>, path: PathBuf, kind: &'static str, e: impl std::fmt::Display) {
    bump(&ctx.stats.errors);
    let _ = ctx.events.send(Event::Error {
        path,
        kind,
        message: e.to_string(),
    });
}

fn skipped(ctx: &Ctx<'_>, path: PathBuf, reason: &'static str) {
    if ctx.report_paths {
        let _ = ctx.events.send(Event::Skipped { path, reason });
    }
}

const DIR_OPEN: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
const FILE_OPEN: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

fn dir_job(ctx: &Ctx<'_>, job: Job, dirbuf: &mut [MaybeUninit<u8>]) {
    let fd = match rustix::fs::openat(&*job.parent, &*job.name, DIR_OPEN, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::LOOP | Errno::NOTDIR) => {
            return error(
                ctx,
                job.path,
                "raced",
                "replaced by a symlink or file while walking: left alone",
            );
        }
        Err(Errno::NOENT) => return,
        Err(e) => return error(ctx, job.path, "io", std::io::Error::from(e)),
    };
    drop(job.parent);
    let st = match rustix::fs::fstat(&fd) {
        Ok(st) => st,
        Err(e) => return error(ctx, job.path, "io", std::io::Error::from(e)),
    };
    if st.st_ino != job.ino || st.st_dev != ctx.dev {
        return error(
            ctx,
            job.path,
            "raced",
            "not the directory that was listed: left alone",
        );
    }
    bump(&ctx.stats.dirs);
    check_dir(ctx, &fd, &st, &job.path);

    let fd = Arc::new(fd);
    // Counted per directory, not per file: one shared atomic add a file
    // would bounce a cache line between the workers.
    let mut files = 0u64;
    let mut dir = RawDir::new(fd.as_fd(), dirbuf);
    while let Some(entry) = dir.next() {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                error(ctx, job.path.clone(), "io", std::io::Error::from(e));
                break;
            }
        };
        let name = entry.file_name();
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let child_path = || job.path.join(OsStr::from_bytes(bytes));
        let st = match rustix::fs::statat(&*fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => {
                error(ctx, child_path(), "io", std::io::Error::from(e));
                continue;
            }
        };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                if st.st_dev != ctx.dev {
                    bump(&ctx.stats.other_fs);
                    skipped(ctx, child_path(), "other_file_system");
                    continue;
                }
                push(
                    ctx,
                    Job {
                        parent: Arc::clone(&fd),
                        name: name.to_owned(),
                        path: child_path(),
                        ino: st.st_ino,
                    },
                );
            }
            libc::S_IFREG => {
                files += 1;
                check_file(ctx, &fd, name, &st, &child_path);
            }
            libc::S_IFLNK => {
                bump(&ctx.stats.symlinks);
                skipped(ctx, child_path(), "symlink");
            }
            _ => {
                bump(&ctx.stats.special);
                skipped(ctx, child_path(), "special_file");
            }
        }
    }
    ctx.stats.files.fetch_add(files, Ordering::Relaxed);
}

/// Read an ACL xattr through an fd; `None` when there is none.
fn read_acl_fd(fd: BorrowedFd<'_>, xattr: &str) -> Result<Option<Acl>, String> {
    read_acl_with(|buf| rustix::fs::fgetxattr(fd, xattr, buf))
}

/// Decode what `get` (an fgetxattr or getxattrat into the buffer) answers;
/// `None` when there is no such xattr.
fn read_acl_with(get: impl Fn(&mut [u8]) -> Result<usize, Errno>) -> Result<Option<Acl>, String> {
    let mut buf = [0u8; 512];
    let n = match get(&mut buf[..]) {
        Ok(n) => n,
        Err(Errno::NODATA) => return Ok(None),
        Err(Errno::RANGE) => {
            let mut big = vec![0u8; 64 * 1024];
            let n = get(&mut big[..]).map_err(|e| std::io::Error::from(e).to_string())?;
            return Acl::decode(&big[..n]).map(Some).map_err(|e| e.to_string());
        }
        Err(Errno::OPNOTSUPP) => return Err("the file system does not support POSIX ACLs".into()),
        Err(Errno::NOSYS) => return Err(ENOSYS_TEXT.into()),
        Err(e) => return Err(std::io::Error::from(e).to_string()),
    };
    Acl::decode(&buf[..n]).map(Some).map_err(|e| e.to_string())
}

/// Read the access ACL of the regular file `name` in the directory `dir`,
/// which `st` (from `fstatat(AT_SYMLINK_NOFOLLOW)`) describes.
///
/// The fast way is `getxattrat(dirfd, name, AT_SYMLINK_NOFOLLOW)` (Linux
/// 6.13): one syscall with a one-component lookup relative to the directory
/// we opened and verified; a symlink at `name` is not followed. Where the
/// kernel lacks it, the file is opened (`O_NOFOLLOW | O_NONBLOCK |
/// O_NOCTTY`), checked to be the inode we listed, and read with fgetxattr.
/// (A path through `/proc/self/fd/<dirfd>/<name>` with lgetxattr is as safe
/// but measured slower than both: every call walks procfs and a magic link.)
///
/// The race that remains with getxattrat: between our `fstatat` and the
/// read, a user who can write the directory may swap `name` for another
/// file, and we read that file's ACL. That only affects what we *think* (a
/// read, of an inode in the same directory), never what we change: every
/// change goes through an fd opened with O_NOFOLLOW, checked to be the
/// (dev, ino) we listed, and the decision is made again from that fd
/// (fstat + fgetxattr) before anything is written.
fn read_file_acl(dir: BorrowedFd<'_>, name: &CStr, st: &Stat) -> Result<Option<Acl>, String> {
    if HAVE_GETXATTRAT.load(Ordering::Relaxed) {
        match read_acl_with(|buf| getxattrat_nofollow(dir, name, XATTR_ACCESS_C, buf)) {
            Err(e) if e == ENOSYS_TEXT => HAVE_GETXATTRAT.store(false, Ordering::Relaxed),
            other => return other,
        }
    }
    let fd = match rustix::fs::openat(dir, name, FILE_OPEN, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(std::io::Error::from(e).to_string()),
    };
    let now = rustix::fs::fstat(&fd).map_err(|e| std::io::Error::from(e).to_string())?;
    if now.st_ino != st.st_ino || now.st_dev != st.st_dev {
        return Err("replaced while walking".into());
    }
    read_acl_fd(fd.as_fd(), XATTR_ACCESS)
}

static HAVE_GETXATTRAT: AtomicBool = AtomicBool::new(true);
const ENOSYS_TEXT: &str = "getxattrat: ENOSYS";
const XATTR_ACCESS_C: &CStr = c"system.posix_acl_access";

/// `struct xattr_args` of the getxattrat syscall (include/uapi/linux/xattr.h).
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// New syscalls (>= 424) have the same number on every architecture.
const SYS_GETXATTRAT: libc::c_long = 464;

#[allow(unsafe_code)]
fn getxattrat_nofollow(
    dir: BorrowedFd<'_>,
    name: &CStr,
    xattr: &CStr,
    buf: &mut [u8],
) -> Result<usize, Errno> {
    let mut args = XattrArgs {
        value: buf.as_mut_ptr() as u64,
        size: u32::try_from(buf.len()).unwrap_or(u32::MAX),
        flags: 0,
    };
    // SAFETY: every pointer is valid for the call: `name` and `xattr` are
    // NUL-terminated C strings we borrow, `args.value` points at `buf`, which
    // is writable for `args.size` bytes, and `args` lives across the call
    // with the size we pass. The kernel writes at most `size` bytes to `buf`.
    let ret = unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
            xattr.as_ptr(),
            &mut args as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    if ret >= 0 {
        Ok(ret as usize)
    } else {
        Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        ))
    }
}

fn state_of(st: &Stat, access: Option<Acl>, default: Option<Acl>) -> State {
    let mode = st.st_mode & 0o7777;
    State {
        uid: st.st_uid,
        gid: st.st_gid,
        mode,
        access: access.unwrap_or_else(|| Acl::from_mode(mode)),
        default,
    }
}

/// Read the state of an open entry through its fd.
fn state_fd(ctx: &Ctx<'_>, fd: BorrowedFd<'_>, st: &Stat, is_dir: bool) -> Result<State, String> {
    let access = if ctx.policy.acl.is_some() {
        read_acl_fd(fd, XATTR_ACCESS)?
    } else {
        None
    };
    let default = if is_dir && ctx.policy.default_acl.is_some() {
        read_acl_fd(fd, XATTR_DEFAULT)?
    } else {
        None
    };
    Ok(state_of(st, access, default))
}

fn check_dir(ctx: &Ctx<'_>, fd: &OwnedFd, st: &Stat, path: &Path) {
    let have = match state_fd(ctx, fd.as_fd(), st, true) {
        Ok(s) => s,
        Err(e) => return error(ctx, path.to_path_buf(), "acl", e),
    };
    let (want, differs) = evaluate(ctx.policy, true, &have);
    if !differs.any() {
        return;
    }
    bump(&ctx.stats.differing);
    let fixed = if ctx.fix {
        match fix(fd.as_fd(), &want, &differs, st) {
            Ok(()) => true,
            Err(e) => return error(ctx, path.to_path_buf(), "fix_failed", e),
        }
    } else {
        false
    };
    report(
        ctx,
        path.to_path_buf(),
        EntryKind::Dir,
        differs,
        have,
        want,
        fixed,
    );
}

fn check_file(
    ctx: &Ctx<'_>,
    dirfd: &OwnedFd,
    name: &CStr,
    st: &Stat,
    child_path: &dyn Fn() -> PathBuf,
) {
    // When applying and the stat alone shows a change is due (owner, group,
    // or a configured mode), the ACL is read once, through the fd opened
    // for the fix, instead of also here.
    let due = ctx.fix && {
        let (_, quick) = evaluate(ctx.policy, false, &state_of(st, None, None));
        quick.owner || quick.group || (quick.mode && ctx.policy.file_mode.is_some())
    };
    let access = if ctx.policy.acl.is_some() && !due {
        match read_file_acl(dirfd.as_fd(), name, st) {
            Ok(a) => a,
            Err(e) => return error(ctx, child_path(), "acl", e),
        }
    } else {
        None
    };
    let have = state_of(st, access, None);
    let (want, differs) = evaluate(ctx.policy, false, &have);
    if !differs.any() {
        return;
    }
    if st.st_nlink > 1 {
        bump(&ctx.stats.hard_linked);
        return error(
            ctx,
            child_path(),
            "hard_linked",
            format!(
                "regular file with {} hard links needs {}: not changed (it may be a link to a file outside the tree)",
                st.st_nlink,
                differs.names().join(", ")
            ),
        );
    }
    bump(&ctx.stats.differing);
    if !ctx.fix {
        return report(
            ctx,
            child_path(),
            EntryKind::File,
            differs,
            have,
            want,
            false,
        );
    }
    // Re-decide from an fd that is verified to be the inode we listed.
    let fd = match rustix::fs::openat(dirfd, name, FILE_OPEN, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return,
        Err(Errno::LOOP) => {
            return error(
                ctx,
                child_path(),
                "raced",
                "replaced by a symlink while walking: left alone",
            )
        }
        Err(e) => return error(ctx, child_path(), "io", std::io::Error::from(e)),
    };
    let st2 = match rustix::fs::fstat(&fd) {
        Ok(s) => s,
        Err(e) => return error(ctx, child_path(), "io", std::io::Error::from(e)),
    };
    if st2.st_ino != st.st_ino
        || st2.st_dev != st.st_dev
        || st2.st_mode & libc::S_IFMT != libc::S_IFREG
    {
        return error(
            ctx,
            child_path(),
            "raced",
            "not the file that was listed: left alone",
        );
    }
    if st2.st_nlink > 1 {
        bump(&ctx.stats.hard_linked);
        return error(
            ctx,
            child_path(),
            "hard_linked",
            "gained a hard link while walking: not changed",
        );
    }
    let have = match state_fd(ctx, fd.as_fd(), &st2, false) {
        Ok(s) => s,
        Err(e) => return error(ctx, child_path(), "acl", e),
    };
    let (want, differs) = evaluate(ctx.policy, false, &have);
    if !differs.any() {
        return;
    }
    match fix(fd.as_fd(), &want, &differs, &st2) {
        Ok(()) => report(
            ctx,
            child_path(),
            EntryKind::File,
            differs,
            have,
            want,
            true,
        ),
        Err(e) => error(ctx, child_path(), "fix_failed", e),
    }
}

fn report(
    ctx: &Ctx<'_>,
    path: PathBuf,
    kind: EntryKind,
    differs: Differs,
    have: State,
    want: Want,
    fixed: bool,
) {
    if fixed {
        bump(&ctx.stats.fixed);
    }
    if ctx.report_paths {
        let _ = ctx.events.send(Event::Differs {
            path,
            kind,
            differs,
            have: Box::new(have),
            want: Box::new(want),
            fixed,
        });
    }
}

/// Apply `want` through the fd: owner first (chown clears setuid/setgid),
/// then the ACLs (setting the access ACL rewrites the mode's rwx bits), then
/// the mode (whose group bits are the mask, so the ACL stays as written).
///
/// `before` is the fd's stat before any change: when it has no setuid,
/// setgid or sticky bit, the mode after chown and the ACL write is known
/// (the ACL's rwx bits), so no second fstat is needed to decide on chmod.
pub fn fix(
    fd: BorrowedFd<'_>,
    want: &Want,
    differs: &Differs,
    before: &Stat,
) -> Result<(), String> {
    let io = |e: Errno| std::io::Error::from(e).to_string();
    if differs.owner || differs.group {
        rustix::fs::fchown(fd, want.uid.map(Uid::from_raw), want.gid.map(Gid::from_raw))
            .map_err(io)?;
    }
    if differs.acl || differs.mask {
        if let Some(access) = &want.access {
            if access.is_minimal() {
                match rustix::fs::fremovexattr(fd, XATTR_ACCESS) {
                    Ok(()) | Err(Errno::NODATA) => {}
                    Err(e) => return Err(io(e)),
                }
            } else {
                rustix::fs::fsetxattr(fd, XATTR_ACCESS, &access.encode(), XattrFlags::empty())
                    .map_err(io)?;
            }
        }
    }
    if differs.default_acl {
        match &want.default {
            Some(Some(default)) => {
                rustix::fs::fsetxattr(fd, XATTR_DEFAULT, &default.encode(), XattrFlags::empty())
                    .map_err(io)?
            }
            Some(None) => match rustix::fs::fremovexattr(fd, XATTR_DEFAULT) {
                Ok(()) | Err(Errno::NODATA) => {}
                Err(e) => return Err(io(e)),
            },
            None => {}
        }
    }
    if let Some(mode) = want.mode {
        let now = if before.st_mode & 0o7000 == 0 {
            match (&want.access, differs.acl || differs.mask) {
                (Some(access), true) if !access.is_minimal() => access.mode_bits(),
                _ => before.st_mode & 0o777,
            }
        } else {
            rustix::fs::fstat(fd).map_err(io)?.st_mode & 0o7777
        };
        if now != mode {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(io)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{Tag, R, W, X};

    fn plain(uid: u32, gid: u32, mode: u32) -> State {
        State {
            uid,
            gid,
            mode,
            access: Acl::from_mode(mode),
            default: None,
        }
    }

    fn reviewers() -> Vec<NamedSpec> {
        vec![NamedSpec {
            tag: Tag::Group,
            id: 10010,
            perm: R,
            cond_x: true,
        }]
    }

    #[test]
    fn what_is_not_configured_is_not_enforced() {
        let (want, d) = evaluate(&Policy::default(), false, &plain(5, 6, 0o4777));
        assert_eq!(want, Want::default());
        assert!(!d.any());
    }

    #[test]
    fn a_private_file_in_medium_privacy_gets_mode_acl_and_mask() {
        let policy = Policy {
            uid: Some(10000),
            gid: Some(10000),
            file_mode: Some(0o640),
            dir_mode: Some(0o750),
            acl: Some(reviewers()),
            default_acl: Some(reviewers()),
            ..Policy::default()
        };
        let (want, d) = evaluate(&policy, false, &plain(1001, 1001, 0o600));
        assert_eq!(d.names(), ["owner", "group", "mode", "acl", "mask"]);
        assert_eq!(want.mode, Some(0o640));
        let acl = want.access.unwrap();
        assert_eq!(acl.mask(), Some(R));
        assert_eq!(want.default, None, "files have no default ACL");
        let (want, d) = evaluate(&policy, true, &plain(10000, 10000, 0o750));
        assert_eq!(d.names(), ["acl", "mask", "default_acl"]);
        let default = want.default.unwrap().unwrap();
        assert_eq!(default.mask(), Some(R | X));
        assert_eq!(default.get(Tag::UserObj), Some(R | W | X));
    }

    #[test]
    fn setgid_is_kept_unless_configured() {
        let p = Policy {
            dir_mode: Some(0o750),
            ..Policy::default()
        };
        assert!(!evaluate(&p, true, &plain(0, 0, 0o2750)).1.any());
        let p = Policy {
            setgid: Some(true),
            ..p
        };
        let (want, d) = evaluate(&p, true, &plain(0, 0, 0o750));
        assert!(d.mode);
        assert_eq!(want.mode, Some(0o2750));
    }

    #[test]
    fn a_compliant_extended_acl_is_no_drift() {
        let policy = Policy {
            file_mode: Some(0o640),
            acl: Some(reviewers()),
            ..Policy::default()
        };
        let (want, _) = evaluate(&policy, false, &plain(0, 0, 0o600));
        let have = State {
            uid: 0,
            gid: 0,
            mode: want.mode.unwrap(),
            access: want.access.clone().unwrap(),
            default: None,
        };
        assert!(!evaluate(&policy, false, &have).1.any());
    }
}

#[cfg(test)]
mod acl_read_tests {
    use super::*;

    #[test]
    fn getxattrat_and_the_open_fallback_read_the_same_acl() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "").unwrap();
        let out = std::process::Command::new("setfacl")
            .args(["-m", "u:4242:r"])
            .arg(&f)
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::write(dir.path().join("plain"), "").unwrap();
        let dfd = rustix::fs::open(dir.path(), DIR_OPEN, Mode::empty()).unwrap();
        for (name, extended) in [(c"f", true), (c"plain", false)] {
            let st = rustix::fs::statat(&dfd, name, AtFlags::SYMLINK_NOFOLLOW).unwrap();
            let mut direct = vec![0u8; 512];
            let fast = getxattrat_nofollow(dfd.as_fd(), name, XATTR_ACCESS_C, &mut direct);
            let via = read_file_acl(dfd.as_fd(), name, &st).unwrap();
            HAVE_GETXATTRAT.store(false, Ordering::Relaxed);
            let via_open = read_file_acl(dfd.as_fd(), name, &st).unwrap();
            HAVE_GETXATTRAT.store(true, Ordering::Relaxed);
            assert_eq!(via, via_open);
            assert_eq!(via.is_some(), extended);
            if let Ok(n) = fast {
                assert_eq!(Acl::decode(&direct[..n]).ok(), via);
            }
        }
    }
}
