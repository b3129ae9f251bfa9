//! The account databases under a root: `/etc/passwd`, `/etc/shadow`,
//! `/etc/group`, `/etc/gshadow`.
//!
//! bs edits them itself, in one transaction a run, instead of calling
//! `useradd`/`usermod`/`gpasswd` once per user: the same code then works on
//! the live host and on a sandbox root (Debian 12's gpasswd, passwd and
//! newusers take only `--root`, which chroots), and 1,000 users cost one
//! write of each file instead of thousands of processes. Compatibility with
//! shadow-utils is kept where it matters:
//!
//! * [`PwLock`] takes the same lock as `lckpwdf(3)` (a POSIX record lock on
//!   `/etc/.pwd.lock`), so a concurrent `useradd` or `passwd` waits for us
//!   and we wait for it.
//! * Lines bs does not understand (comments, NIS `+` entries) are kept
//!   verbatim and in place; files keep their owner and mode; the previous
//!   version is kept as `passwd-` etc., as shadow-utils does.
//! * Each file is replaced atomically (see [`crate::safefs`]), and the four
//!   together as one transaction through an intent journal ([`journal`]):
//!   after a kill at any point the old set or the new set is in force, or
//!   the next run finishes the transaction ([`recover`]) and
//!   [`AccountDb::repair`] mends what someone else's change in between left.

mod journal;
mod logindefs;
mod repair;

pub use journal::{recover, Outcome, Recovered, JOURNAL};
pub use logindefs::{people_uid_range, UidRange};
pub use repair::Repair;

use std::cell::{Cell, OnceCell};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, Mode, OFlags};

use crate::error::{CoreError, Result};
use crate::root::Root;
use crate::safefs::{self, FileSpec};

pub const PASSWD: &str = "/etc/passwd";
pub const SHADOW: &str = "/etc/shadow";
pub const GROUP: &str = "/etc/group";
pub const GSHADOW: &str = "/etc/gshadow";
pub const PWD_LOCK: &str = "/etc/.pwd.lock";

/// The `lckpwdf(3)` lock, held until dropped.
#[derive(Debug)]
pub struct PwLock {
    _fd: std::os::fd::OwnedFd,
}

impl PwLock {
    pub fn acquire(root: &Root, timeout: Duration) -> Result<PwLock> {
        let path = root.join(PWD_LOCK);
        let fd = rustix::fs::open(
            &path,
            OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| CoreError::io(&path, e.into()))?;
        let start = Instant::now();
        loop {
            match rustix::fs::fcntl_lock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(PwLock { _fd: fd }),
                Err(rustix::io::Errno::AGAIN)
                | Err(rustix::io::Errno::ACCESS)
                | Err(rustix::io::Errno::INTR) => {
                    if start.elapsed() >= timeout {
                        return Err(CoreError::LockTimeout {
                            path,
                            holder: " (a shadow-utils tool)".into(),
                            waited_secs: timeout.as_secs(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(CoreError::io(&path, e.into())),
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub password: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowEntry {
    pub name: String,
    pub hash: String,
    /// Day of the last password change; `0` forces a change at next login.
    pub last_change: String,
    pub min: String,
    pub max: String,
    pub warn: String,
    pub inactive: String,
    /// Day the account expires; `1` (2 Jan 1970) blocks every login method.
    pub expire: String,
    pub reserved: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub password: String,
    pub gid: u32,
    pub members: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GshadowEntry {
    pub name: String,
    pub password: String,
    pub admins: Vec<String>,
    pub members: Vec<String>,
}

/// A line of one of the files: an entry, or text kept verbatim.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Line<T> {
    Entry(T),
    Verbatim(String),
}

trait Record: Sized {
    fn parse(line: &str) -> Option<Self>;
    fn render(&self) -> String;
    fn key(&self) -> &str;
}

impl Record for PasswdEntry {
    fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 7 {
            return None;
        }
        Some(PasswdEntry {
            name: f[0].into(),
            password: f[1].into(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            gecos: f[4].into(),
            home: f[5].into(),
            shell: f[6].into(),
        })
    }
    fn render(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}:{}:{}",
            self.name, self.password, self.uid, self.gid, self.gecos, self.home, self.shell
        )
    }
    fn key(&self) -> &str {
        &self.name
    }
}

impl Record for ShadowEntry {
    fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 9 {
            return None;
        }
        Some(ShadowEntry {
            name: f[0].into(),
            hash: f[1].into(),
            last_change: f[2].into(),
            min: f[3].into(),
            max: f[4].into(),
            warn: f[5].into(),
            inactive: f[6].into(),
            expire: f[7].into(),
            reserved: f[8].into(),
        })
    }
    fn render(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}:{}:{}:{}:{}",
            self.name,
            self.hash,
            self.last_change,
            self.min,
            self.max,
            self.warn,
            self.inactive,
            self.expire,
            self.reserved
        )
    }
    fn key(&self) -> &str {
        &self.name
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|m| !m.is_empty())
        .map(String::from)
        .collect()
}

impl Record for GroupEntry {
    fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 4 {
            return None;
        }
        Some(GroupEntry {
            name: f[0].into(),
            password: f[1].into(),
            gid: f[2].parse().ok()?,
            members: split_list(f[3]),
        })
    }
    fn render(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.name,
            self.password,
            self.gid,
            self.members.join(",")
        )
    }
    fn key(&self) -> &str {
        &self.name
    }
}

impl Record for GshadowEntry {
    fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 4 {
            return None;
        }
        Some(GshadowEntry {
            name: f[0].into(),
            password: f[1].into(),
            admins: split_list(f[2]),
            members: split_list(f[3]),
        })
    }
    fn render(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.name,
            self.password,
            self.admins.join(","),
            self.members.join(",")
        )
    }
    fn key(&self) -> &str {
        &self.name
    }
}

/// One database file: its lines, and how it looked when loaded.
#[derive(Debug)]
struct Table<T> {
    path: PathBuf,
    lines: Vec<Line<T>>,
    original: String,
    spec: FileSpec,
    /// False when the file did not exist (gshadow may be absent).
    present: bool,
    /// Device and inode of the file read: every replacement (ours or
    /// shadow-utils') is a rename, so a new identity means it changed.
    identity: Option<(u64, u64)>,
    /// The line of each key's first entry (the one every reader uses), so
    /// a look-up per person keeps a run linear in the number of people
    /// (issue 18, item 6). Rebuilt whenever lines are removed; entries are
    /// only appended otherwise, and their keys never change.
    index: HashMap<String, usize>,
}

impl<T: Record + Clone> Table<T> {
    /// A table standing for a file that was not read.
    fn absent(path: PathBuf) -> Table<T> {
        Table {
            path,
            lines: Vec::new(),
            original: String::new(),
            spec: FileSpec::root(0o640),
            present: false,
            identity: None,
            index: HashMap::new(),
        }
    }

    fn load(path: PathBuf, default_spec: FileSpec) -> Result<Table<T>> {
        let (dir, name) = safefs::split(&path)?;
        let read = match safefs::DirFd::open(dir) {
            Ok(d) => d.read_file(name, 256 * 1024 * 1024)?,
            Err(CoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                None
            }
            Err(e) => return Err(e),
        };
        let identity = read.as_ref().map(|(_, st)| (st.st_dev, st.st_ino));
        let (text, spec, present) = match read {
            Some((bytes, st)) => (
                String::from_utf8(bytes).map_err(|_| CoreError::Unsafe {
                    path: path.clone(),
                    reason: "is not UTF-8 text".into(),
                })?,
                FileSpec {
                    mode: st.st_mode & 0o7777,
                    uid: st.st_uid,
                    gid: st.st_gid,
                },
                true,
            ),
            None => (String::new(), default_spec, false),
        };
        let lines = text
            .lines()
            .map(|l| match T::parse(l) {
                Some(e) if !l.starts_with('#') && !l.starts_with('+') && !l.starts_with('-') => {
                    Line::Entry(e)
                }
                _ => Line::Verbatim(l.to_string()),
            })
            .collect();
        let mut table = Table {
            path,
            lines,
            original: text,
            spec,
            present,
            identity,
            index: HashMap::new(),
        };
        table.reindex();
        Ok(table)
    }

    fn reindex(&mut self) {
        self.index.clear();
        for (at, line) in self.lines.iter().enumerate() {
            if let Line::Entry(e) = line {
                self.index.entry(e.key().to_string()).or_insert(at);
            }
        }
    }

    /// The line of `key`'s first entry.
    fn position(&self, key: &str) -> Option<usize> {
        let at = *self.index.get(key)?;
        match self.lines.get(at) {
            Some(Line::Entry(e)) if e.key() == key => Some(at),
            _ => None,
        }
    }

    /// Whether the file is still the one read (not replaced or removed).
    fn still_current(&self) -> Result<bool> {
        let (dir, name) = safefs::split(&self.path)?;
        let now = match safefs::DirFd::open(dir) {
            Ok(d) => d.stat_at(name)?,
            Err(CoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                None
            }
            Err(e) => return Err(e),
        };
        Ok(now.map(|st| (st.st_dev, st.st_ino)) == self.identity)
    }

    fn entries(&self) -> impl Iterator<Item = &T> {
        self.lines.iter().filter_map(|l| match l {
            Line::Entry(e) => Some(e),
            Line::Verbatim(_) => None,
        })
    }

    fn get(&self, key: &str) -> Option<&T> {
        match self.lines.get(self.position(key)?) {
            Some(Line::Entry(e)) => Some(e),
            _ => None,
        }
    }

    /// The entry of `key`, to change anything but its key.
    fn get_mut(&mut self, key: &str) -> Option<&mut T> {
        let at = self.position(key)?;
        match self.lines.get_mut(at) {
            Some(Line::Entry(e)) => Some(e),
            _ => None,
        }
    }

    fn push(&mut self, entry: T) {
        self.index
            .entry(entry.key().to_string())
            .or_insert(self.lines.len());
        self.lines.push(Line::Entry(entry));
    }

    /// Keep only the lines `keep` accepts (the index follows).
    fn retain(&mut self, keep: impl FnMut(&Line<T>) -> bool) {
        self.lines.retain(keep);
        self.reindex();
    }

    fn render(&self) -> String {
        let mut out = String::with_capacity(self.original.len() + 256);
        for l in &self.lines {
            match l {
                Line::Entry(e) => out.push_str(&e.render()),
                Line::Verbatim(s) => out.push_str(s),
            }
            out.push('\n');
        }
        out
    }

    /// The journal entry for this file when its text changed, else `None`.
    fn pending(&self, system_path: &str) -> Option<journal::JournalFile> {
        let text = self.render();
        if text == self.original && self.present {
            return None;
        }
        Some(journal::JournalFile {
            path: system_path.to_string(),
            before: self.present.then(|| self.original.clone()),
            after: text,
            mode: self.spec.mode,
            uid: self.spec.uid,
            gid: self.spec.gid,
        })
    }

    /// Keep the version before this transaction as `<file>-`, as
    /// shadow-utils does.
    fn backup(&self) -> Result<()> {
        if self.present {
            let mut backup = self.path.clone().into_os_string();
            backup.push("-");
            safefs::write_atomic(Path::new(&backup), self.original.as_bytes(), &self.spec)?;
        }
        Ok(())
    }

    fn replace(&mut self, text: &str) -> Result<()> {
        safefs::write_atomic(&self.path, text.as_bytes(), &self.spec)?;
        self.original = text.to_string();
        self.present = true;
        Ok(())
    }
}

/// The four account files of a root, loaded and edited together.
#[derive(Debug)]
pub struct AccountDb {
    passwd: Table<PasswdEntry>,
    shadow: Table<ShadowEntry>,
    group: Table<GroupEntry>,
    gshadow: Table<GshadowEntry>,
    /// Loaded without the shadow files ([`AccountDb::load_public`]): never saved.
    read_only: bool,
    root: Root,
    /// For each user, the lines of the groups listing them (file order):
    /// built on the first [`AccountDb::groups_of`], kept by
    /// [`AccountDb::set_member`], dropped when lines are removed.
    memberships: OnceCell<HashMap<String, Vec<usize>>>,
    /// Every uid and gid in use, built on the first [`AccountDb::free_id`].
    used_ids: OnceCell<BTreeSet<u32>>,
    /// `(min, from)`: every id in `min..from` is in use, so the next
    /// [`AccountDb::free_id`] from `min` starts at `from` (ids are only
    /// added between repairs): creating n users stays linear.
    free_from: Cell<(u32, u32)>,
}

/// A new account: the passwd fields. The shadow entry gets an empty,
/// expired password (set at first login), like `passwd -de`.
#[derive(Clone, Debug)]
pub struct NewUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
}

impl AccountDb {
    /// Load the files, as every tool that reads them does. Hold a
    /// [`PwLock`] from before this until after [`AccountDb::save`] when
    /// changes will be written.
    ///
    /// Refuses while a bs-users transaction is pending (see
    /// [`AccountDb::load_as_is`]) and retries while another process
    /// replaces a file mid-read, so a reader never takes a half-old,
    /// half-new set for the truth.
    pub fn load(root: &Root) -> Result<AccountDb> {
        read_consistent(root, true, AccountDb::read_all)
    }

    /// [`AccountDb::load`] for bs-users alone, which either has just
    /// finished a pending transaction ([`recover`], lock held) or reports it
    /// as drift (plan, check) and must still read the files as they are.
    pub fn load_as_is(root: &Root) -> Result<AccountDb> {
        read_consistent(root, false, AccountDb::read_all)
    }

    fn read_all(root: &Root) -> Result<AccountDb> {
        let shadow_gid = 42; // Debian's `shadow` group, used only if the file is created
        Ok(AccountDb {
            passwd: Table::load(root.join(PASSWD), FileSpec::root(0o644))?,
            shadow: Table::load(
                root.join(SHADOW),
                FileSpec {
                    mode: 0o640,
                    uid: 0,
                    gid: shadow_gid,
                },
            )?,
            group: Table::load(root.join(GROUP), FileSpec::root(0o644))?,
            gshadow: Table::load(
                root.join(GSHADOW),
                FileSpec {
                    mode: 0o640,
                    uid: 0,
                    gid: shadow_gid,
                },
            )?,
            read_only: false,
            root: root.clone(),
            memberships: OnceCell::new(),
            used_ids: OnceCell::new(),
            free_from: Cell::new((0, 0)),
        })
    }

    /// Only passwd and group, the files everyone may read: name, uid and
    /// membership look-ups for a process that cannot read the shadow files
    /// (bs-release runs as the service account). Its shadow tables are
    /// empty and [`AccountDb::save`] refuses it. A pending transaction is
    /// refused as in [`AccountDb::load`] (the journal's existence is
    /// visible to anyone; its content is not).
    pub fn load_public(root: &Root) -> Result<AccountDb> {
        read_consistent(root, true, |root| {
            Ok(AccountDb {
                passwd: Table::load(root.join(PASSWD), FileSpec::root(0o644))?,
                shadow: Table::absent(root.join(SHADOW)),
                group: Table::load(root.join(GROUP), FileSpec::root(0o644))?,
                gshadow: Table::absent(root.join(GSHADOW)),
                read_only: true,
                root: root.clone(),
                memberships: OnceCell::new(),
                used_ids: OnceCell::new(),
                free_from: Cell::new((0, 0)),
            })
        })
    }

    /// Whether no file read was replaced since.
    fn still_current(&self) -> Result<bool> {
        if !(self.passwd.still_current()? && self.group.still_current()?) {
            return Ok(false);
        }
        if self.read_only {
            return Ok(true);
        }
        Ok(self.shadow.still_current()? && self.gshadow.still_current()?)
    }

    pub fn users(&self) -> impl Iterator<Item = &PasswdEntry> {
        self.passwd.entries()
    }

    pub fn user(&self, name: &str) -> Option<&PasswdEntry> {
        self.passwd.get(name)
    }

    pub fn user_by_uid(&self, uid: u32) -> Option<&PasswdEntry> {
        self.passwd.entries().find(|u| u.uid == uid)
    }

    /// The entry of `name`, to change anything but the name.
    pub fn user_mut(&mut self, name: &str) -> Option<&mut PasswdEntry> {
        self.passwd.get_mut(name)
    }

    pub fn shadow(&self, name: &str) -> Option<&ShadowEntry> {
        self.shadow.get(name)
    }

    /// The shadow entry of `name`, to change anything but the name.
    pub fn shadow_mut(&mut self, name: &str) -> Option<&mut ShadowEntry> {
        self.shadow.get_mut(name)
    }

    pub fn groups(&self) -> impl Iterator<Item = &GroupEntry> {
        self.group.entries()
    }

    pub fn group(&self, name: &str) -> Option<&GroupEntry> {
        self.group.get(name)
    }

    pub fn group_by_gid(&self, gid: u32) -> Option<&GroupEntry> {
        self.group.entries().find(|g| g.gid == gid)
    }

    /// The groups that list `user` as a member (not the primary group).
    pub fn groups_of(&self, user: &str) -> Vec<&str> {
        let Some(lines) = self.memberships().get(user) else {
            return Vec::new();
        };
        lines
            .iter()
            .filter_map(|&at| match self.group.lines.get(at) {
                Some(Line::Entry(g)) => Some(g.name.as_str()),
                _ => None,
            })
            .collect()
    }

    fn memberships(&self) -> &HashMap<String, Vec<usize>> {
        self.memberships.get_or_init(|| {
            let mut index: HashMap<String, Vec<usize>> = HashMap::new();
            for (at, line) in self.group.lines.iter().enumerate() {
                if let Line::Entry(g) = line {
                    let unique: BTreeSet<&String> = g.members.iter().collect();
                    for member in unique {
                        index.entry(member.clone()).or_default().push(at);
                    }
                }
            }
            index
        })
    }

    /// The lowest id `>= min` and `< max` used neither as a uid nor as a
    /// gid, so a new user's private group can have the same number.
    pub fn free_id(&self, min: u32, max: u32) -> Option<u32> {
        let used = self.used_ids.get_or_init(|| {
            self.passwd
                .entries()
                .map(|u| u.uid)
                .chain(self.group.entries().map(|g| g.gid))
                .collect()
        });
        let mut candidate = match self.free_from.get() {
            (from_min, from) if from_min == min && from > min => from,
            _ => min,
        };
        for &id in used.range(candidate..) {
            if id != candidate {
                break;
            }
            candidate += 1;
        }
        self.free_from.set((min, candidate));
        (candidate < max).then_some(candidate)
    }

    fn id_used(&mut self, id: u32) {
        if let Some(used) = self.used_ids.get_mut() {
            used.insert(id);
        }
    }

    pub fn add_group(&mut self, name: &str, gid: u32) {
        self.id_used(gid);
        self.group.push(GroupEntry {
            name: name.into(),
            password: "x".into(),
            gid,
            members: Vec::new(),
        });
        if self.gshadow.present || self.shadow.present {
            self.gshadow.push(GshadowEntry {
                name: name.into(),
                password: "!".into(),
                admins: Vec::new(),
                members: Vec::new(),
            });
        }
    }

    pub fn add_user(&mut self, user: &NewUser) {
        self.id_used(user.uid);
        self.id_used(user.gid);
        self.passwd.push(PasswdEntry {
            name: user.name.clone(),
            password: "x".into(),
            uid: user.uid,
            gid: user.gid,
            // A ':' or newline would shift every later field of the line.
            gecos: user.gecos.replace([':', '\n'], " "),
            home: user.home.clone(),
            shell: user.shell.clone(),
        });
        self.shadow.push(ShadowEntry {
            name: user.name.clone(),
            hash: String::new(),
            last_change: "0".into(),
            min: String::new(),
            max: String::new(),
            warn: String::new(),
            inactive: String::new(),
            expire: String::new(),
            reserved: String::new(),
        });
    }

    /// Add or remove `user` from `group` (in group and gshadow). Returns
    /// whether anything changed.
    pub fn set_member(&mut self, group: &str, user: &str, member: bool) -> bool {
        let mut changed = false;
        if let Some(at) = self.group.position(group) {
            if let Some(Line::Entry(g)) = self.group.lines.get_mut(at) {
                changed |= set_in(&mut g.members, user, member);
                let listed = g.members.iter().any(|m| m == user);
                if let Some(index) = self.memberships.get_mut() {
                    let lines = index.entry(user.to_string()).or_default();
                    match (lines.binary_search(&at), listed) {
                        (Err(i), true) => lines.insert(i, at),
                        (Ok(i), false) => {
                            lines.remove(i);
                        }
                        _ => {}
                    }
                }
            }
        }
        if let Some(g) = self.gshadow.get_mut(group) {
            changed |= set_in(&mut g.members, user, member);
        }
        changed
    }

    /// Write every file that changed, as one transaction (see [`journal`]).
    /// Returns the files written.
    pub fn save(&mut self) -> Result<Vec<PathBuf>> {
        self.save_with(&mut |_| Ok(()))
    }

    /// [`AccountDb::save`], calling `step` before each file is replaced; an
    /// error from it stops the save there, as a kill would: tests use it to
    /// prove every interruption point recoverable.
    pub fn save_with(&mut self, step: &mut dyn FnMut(&Path) -> Result<()>) -> Result<Vec<PathBuf>> {
        if self.read_only {
            return Err(CoreError::Usage(
                "account files loaded without shadow and gshadow cannot be saved".into(),
            ));
        }
        let has_gshadow = self.gshadow.present
            || self
                .gshadow
                .lines
                .iter()
                .any(|l| matches!(l, Line::Entry(_)));
        // Order as shadow-utils: the shadow files first, so that even a
        // reader between two renames never sees a passwd entry without
        // its shadow entry.
        let mut files = Vec::new();
        files.extend(self.shadow.pending(SHADOW));
        files.extend(self.passwd.pending(PASSWD));
        if has_gshadow {
            files.extend(self.gshadow.pending(GSHADOW));
        }
        files.extend(self.group.pending(GROUP));
        if files.is_empty() {
            return Ok(Vec::new());
        }
        for file in &files {
            self.table_backup(&file.path)?;
        }
        let journal = journal::Journal { schema: 1, files };
        // The commit point: from here on the new set is the one in force.
        journal::write(&self.root, &journal)?;
        let mut written = Vec::new();
        for file in &journal.files {
            let path = self.root.join(&file.path);
            step(&path)?;
            match file.path.as_str() {
                SHADOW => self.shadow.replace(&file.after)?,
                PASSWD => self.passwd.replace(&file.after)?,
                GSHADOW => self.gshadow.replace(&file.after)?,
                _ => self.group.replace(&file.after)?,
            }
            written.push(path);
        }
        journal::remove(&self.root)?;
        Ok(written)
    }

    fn table_backup(&self, system_path: &str) -> Result<()> {
        match system_path {
            SHADOW => self.shadow.backup(),
            PASSWD => self.passwd.backup(),
            GSHADOW => self.gshadow.backup(),
            _ => self.group.backup(),
        }
    }
}

/// How long a reader waits for a pending transaction to finish, or for
/// the files to stop changing, before it refuses. A live bs-users save
/// holds its journal for four atomic writes, well under this; a journal
/// still there after it was left by a killed run.
const SETTLE: Duration = Duration::from_secs(3);

/// Read with `read` until a set is read that no transaction and no other
/// writer touched meanwhile; with `refuse_pending`, a journal that stays
/// is an error naming the fix.
fn read_consistent(
    root: &Root,
    refuse_pending: bool,
    read: impl Fn(&Root) -> Result<AccountDb>,
) -> Result<AccountDb> {
    let start = Instant::now();
    loop {
        let blocked = if refuse_pending { pending(root)? } else { None };
        if blocked.is_none() {
            let db = read(root)?;
            let after = if refuse_pending { pending(root)? } else { None };
            if after.is_none() && db.still_current()? {
                return Ok(db);
            }
        }
        if start.elapsed() >= SETTLE {
            return Err(blocked.unwrap_or_else(|| CoreError::Unsafe {
                path: root.join(PASSWD),
                reason: format!(
                    "the account files kept changing while they were read for {} s; try again",
                    SETTLE.as_secs()
                ),
            }));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The refusal for a pending bs-users transaction, if one is pending.
fn pending(root: &Root) -> Result<Option<CoreError>> {
    let path = root.join(JOURNAL);
    match std::fs::symlink_metadata(&path) {
        Ok(_) => Ok(Some(CoreError::Unsafe {
            path,
            reason: "a bs-users run was stopped while it changed the account files, \
                     which may be half old, half new; run `bs-users apply` to finish \
                     that change, then run this again"
                .into(),
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CoreError::io(path, e)),
    }
}

fn set_in(list: &mut Vec<String>, item: &str, present: bool) -> bool {
    let pos = list.iter().position(|m| m == item);
    match (pos, present) {
        (None, true) => {
            list.push(item.to_string());
            true
        }
        (Some(i), false) => {
            list.remove(i);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox() -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\n# a comment kept as is\n+@nis::::::\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nsudo:x:27:olduser\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/gshadow"),
            "root:*::\nsudo:*::olduser\n",
        )
        .unwrap();
        let root = Root::new(dir.path()).unwrap();
        (dir, root)
    }

    #[test]
    fn unknown_lines_survive_a_round_trip_and_changes_land_in_all_files() {
        let (dir, root) = sandbox();
        let _lock = PwLock::acquire(&root, Duration::from_secs(1)).unwrap();
        let mut db = AccountDb::load(&root).unwrap();
        db.add_group("developers", 10001);
        db.add_user(&NewUser {
            name: "alice".into(),
            uid: 1000,
            gid: 1000,
            gecos: "github Alice".into(),
            home: "/home/alice".into(),
            shell: "/bin/bash".into(),
        });
        db.add_group("alice", 1000);
        assert!(db.set_member("sudo", "alice", true));
        assert!(!db.set_member("sudo", "alice", true));
        assert!(db.set_member("sudo", "olduser", false));
        let written = db.save().unwrap();
        assert_eq!(written.len(), 4);
        let passwd = std::fs::read_to_string(dir.path().join("etc/passwd")).unwrap();
        assert!(passwd.contains("# a comment kept as is\n+@nis::::::\n"));
        assert!(passwd.ends_with("alice:x:1000:1000:github Alice:/home/alice:/bin/bash\n"));
        let shadow = std::fs::read_to_string(dir.path().join("etc/shadow")).unwrap();
        assert!(shadow.contains("alice::0::::::\n"), "{shadow}");
        let group = std::fs::read_to_string(dir.path().join("etc/group")).unwrap();
        assert!(group.contains("sudo:x:27:alice\n"), "{group}");
        let gshadow = std::fs::read_to_string(dir.path().join("etc/gshadow")).unwrap();
        assert!(gshadow.contains("sudo:*::alice\n"), "{gshadow}");
        assert!(gshadow.contains("developers:!::\n"), "{gshadow}");
        // the previous versions are kept, as shadow-utils does
        assert!(std::fs::read_to_string(dir.path().join("etc/group-"))
            .unwrap()
            .contains("olduser"));
        let again = AccountDb::load(&root).unwrap();
        assert_eq!(again.groups_of("alice"), vec!["sudo"]);
        assert_eq!(again.user("alice").unwrap().uid, 1000);
    }

    fn add_alice(db: &mut AccountDb) {
        db.add_group("developers", 10001);
        db.add_group("alice", 1000);
        db.add_user(&NewUser {
            name: "alice".into(),
            uid: 1000,
            gid: 1000,
            gecos: "GitHub alice".into(),
            home: "/home/alice".into(),
            shell: "/bin/bash".into(),
        });
        db.set_member("sudo", "alice", true);
    }

    fn files(dir: &Path) -> Vec<String> {
        ["passwd", "shadow", "group", "gshadow"]
            .iter()
            .map(|f| std::fs::read_to_string(dir.join("etc").join(f)).unwrap())
            .collect()
    }

    /// A save that stops (as a kill would) after `renames` of its four renames.
    fn save_stopped_after(db: &mut AccountDb, renames: usize) -> Result<Vec<PathBuf>> {
        let mut n = 0;
        db.save_with(&mut |_| {
            n += 1;
            if n > renames {
                Err(CoreError::Usage("killed".into()))
            } else {
                Ok(())
            }
        })
    }

    #[test]
    fn a_save_stopped_before_any_file_is_rolled_forward_by_the_next_run() {
        // Stop before the 1st, 2nd, 3rd and 4th rename: each time the next
        // run's recovery must produce exactly the set a whole save writes.
        let (whole_dir, whole_root) = sandbox();
        let mut db = AccountDb::load(&whole_root).unwrap();
        add_alice(&mut db);
        db.save().unwrap();
        let want = files(whole_dir.path());
        for stop_at in 0..4 {
            let (dir, root) = sandbox();
            let lock = PwLock::acquire(&root, Duration::from_secs(1)).unwrap();
            let mut db = AccountDb::load(&root).unwrap();
            add_alice(&mut db);
            let stopped = save_stopped_after(&mut db, stop_at);
            assert!(stopped.is_err());
            assert!(root.join(JOURNAL).exists(), "stop {stop_at}: no journal");
            let recovered = recover(&root, &lock).unwrap();
            assert_eq!(recovered.len(), 4, "stop {stop_at}");
            assert_eq!(
                recovered
                    .iter()
                    .filter(|r| r.outcome == Outcome::AlreadyDone)
                    .count(),
                stop_at,
            );
            assert_eq!(files(dir.path()), want, "stop {stop_at}");
            assert!(!root.join(JOURNAL).exists());
            assert!(recover(&root, &lock).unwrap().is_empty());
            let mut again = AccountDb::load(&root).unwrap();
            assert!(again.repair(&|_| true).is_empty(), "stop {stop_at}");
        }
    }

    #[test]
    fn a_pending_transaction_is_refused_to_readers_until_bs_users_finishes_it() {
        let (dir, root) = sandbox();
        let lock = PwLock::acquire(&root, Duration::from_secs(1)).unwrap();
        let mut db = AccountDb::load(&root).unwrap();
        add_alice(&mut db);
        // Killed after shadow and passwd: alice has a passwd line but no group.
        let _ = save_stopped_after(&mut db, 2);
        drop(lock);
        assert!(std::fs::read_to_string(dir.path().join("etc/passwd"))
            .unwrap()
            .contains("alice:"));
        // Every reader (bs-perms, bs-docker, bs-jobs, bs-release) waits a
        // little, then refuses with the fix, rather than use the torn set.
        for load in [AccountDb::load, AccountDb::load_public] {
            let start = Instant::now();
            let err = load(&root).unwrap_err();
            assert!(start.elapsed() >= SETTLE, "refused without waiting");
            let text = err.to_string();
            assert_eq!(err.kind(), "unsafe_path");
            assert!(text.contains(JOURNAL), "{text}");
            assert!(text.contains("run `bs-users apply`"), "{text}");
        }
        // bs-users itself still reads the files as they are (plan, check).
        assert!(AccountDb::load_as_is(&root)
            .unwrap()
            .user("alice")
            .is_some());
        // Once bs-users has finished the transaction, readers read the new set.
        let lock = PwLock::acquire(&root, Duration::from_secs(1)).unwrap();
        recover(&root, &lock).unwrap();
        let db = AccountDb::load(&root).unwrap();
        assert_eq!(db.group("alice").unwrap().gid, 1000);
        assert_eq!(db.groups_of("alice"), vec!["sudo"]);
    }

    #[test]
    fn a_journal_that_goes_away_while_a_reader_waits_is_a_live_save_not_a_refusal() {
        let (dir, root) = sandbox();
        let journal = root.join(JOURNAL);
        std::fs::write(&journal, "{}").unwrap();
        let remover = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            std::fs::remove_file(journal).unwrap();
        });
        let db = AccountDb::load(&root).unwrap();
        remover.join().unwrap();
        assert!(db.user("root").is_some());
        drop(dir);
    }

    #[test]
    fn a_file_replaced_after_it_was_read_makes_the_set_not_current() {
        let (dir, root) = sandbox();
        let db = AccountDb::load(&root).unwrap();
        assert!(db.still_current().unwrap());
        // what every writer does: a new file renamed over the old one
        let etc = dir.path().join("etc");
        std::fs::write(etc.join("group.new"), "root:x:0:\n").unwrap();
        std::fs::rename(etc.join("group.new"), etc.join("group")).unwrap();
        assert!(!db.still_current().unwrap());
        assert!(AccountDb::load(&root).unwrap().still_current().unwrap());
    }

    #[test]
    fn the_indexes_follow_every_change_in_file_order() {
        let (dir, root) = sandbox();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nsudo:x:27:olduser,alice\nstaff:x:50:alice,alice\nsudo:x:28:bob\n",
        )
        .unwrap();
        let mut db = AccountDb::load(&root).unwrap();
        // the first line of a name is the one in use, as for every reader
        assert_eq!(db.group("sudo").unwrap().gid, 27);
        assert_eq!(db.groups_of("alice"), vec!["sudo", "staff"]);
        assert_eq!(db.groups_of("bob"), vec!["sudo"]);
        db.add_group("developers", 10001);
        assert!(db.set_member("developers", "alice", true));
        assert!(db.set_member("sudo", "alice", false));
        assert!(db.set_member("root", "alice", true));
        assert_eq!(db.groups_of("alice"), vec!["root", "staff", "developers"]);
        // listed twice in staff: removing one listing leaves them a member
        assert!(db.set_member("staff", "alice", false));
        assert_eq!(db.groups_of("alice"), vec!["root", "staff", "developers"]);
        assert!(db.set_member("staff", "alice", false));
        assert_eq!(db.groups_of("alice"), vec!["root", "developers"]);
        assert_eq!(db.groups_of("nobody"), Vec::<&str>::new());
        // the repair drops the second sudo line: bob's membership goes with it
        db.repair(&|_| false);
        assert_eq!(db.groups_of("bob"), Vec::<&str>::new());
        assert_eq!(db.groups_of("alice"), vec!["root", "developers"]);
        assert!(db.set_member("developers", "bob", true));
        assert_eq!(db.groups_of("bob"), vec!["developers"]);
        assert_eq!(db.group("developers").unwrap().gid, 10001);
        db.save().unwrap();
        let again = AccountDb::load(&root).unwrap();
        assert_eq!(again.groups_of("alice"), vec!["root", "developers"]);
        assert_eq!(again.groups_of("bob"), vec!["developers"]);
    }

    #[test]
    fn recovery_leaves_a_file_someone_changed_since_and_the_repair_mends_the_mix() {
        let (dir, root) = sandbox();
        let lock = PwLock::acquire(&root, Duration::from_secs(1)).unwrap();
        let mut db = AccountDb::load(&root).unwrap();
        add_alice(&mut db);
        // Killed after shadow and passwd were replaced ...
        let _ = save_stopped_after(&mut db, 2);
        // ... then a `groupadd` before the next run.
        let group = std::fs::read_to_string(dir.path().join("etc/group")).unwrap();
        std::fs::write(dir.path().join("etc/group"), group + "staff2:x:3000:\n").unwrap();
        let recovered = recover(&root, &lock).unwrap();
        let outcome = |p: &str| {
            recovered
                .iter()
                .find(|r| r.path == p)
                .unwrap()
                .outcome
                .clone()
        };
        assert_eq!(outcome(GROUP), Outcome::ChangedSince);
        assert_eq!(outcome(GSHADOW), Outcome::RolledForward);
        let mut db = AccountDb::load(&root).unwrap();
        let repairs = db.repair(&|u| u.name == "alice");
        let problems: Vec<(&str, &str)> = repairs
            .iter()
            .map(|r| (r.name.as_str(), r.problem))
            .collect();
        // alice's private group was lost with group's new text; gshadow had
        // lines for groups the kept group file does not have.
        assert!(
            problems.contains(&("alice", "missing_private_group")),
            "{problems:?}"
        );
        assert!(
            problems.contains(&("developers", "orphan_entry")),
            "{problems:?}"
        );
        assert!(
            problems.contains(&("staff2", "missing_entry")),
            "{problems:?}"
        );
        db.save().unwrap();
        let db = AccountDb::load(&root).unwrap();
        assert_eq!(db.group("alice").unwrap().gid, 1000);
        assert!(db.group("staff2").is_some());
    }

    #[test]
    fn duplicate_and_orphan_lines_are_repaired_but_a_stranger_gets_no_group() {
        let (dir, root) = sandbox();
        let etc = dir.path().join("etc");
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/bin/bash\nbob:x:1000:1000::/home/bob:/bin/bash\nstranger:x:1001:4242::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            etc.join("shadow"),
            "root:*:19000:0:99999:7:::\nbob::0::::::\nbob::0::::::\ngone:!:1::::::\n",
        )
        .unwrap();
        let mut db = AccountDb::load(&root).unwrap();
        let repairs = db.repair(&|u| u.name == "bob");
        let problems: Vec<(&str, &str, &str)> = repairs
            .iter()
            .map(|r| (r.file, r.name.as_str(), r.problem))
            .collect();
        assert!(
            problems.contains(&(SHADOW, "bob", "duplicate_entry")),
            "{problems:?}"
        );
        assert!(
            problems.contains(&(SHADOW, "gone", "orphan_entry")),
            "{problems:?}"
        );
        assert!(
            problems.contains(&(SHADOW, "stranger", "missing_entry")),
            "{problems:?}"
        );
        assert!(
            problems.contains(&(GROUP, "bob", "missing_private_group")),
            "{problems:?}"
        );
        assert!(!problems
            .iter()
            .any(|p| p.1 == "stranger" && p.2 == "missing_private_group"));
        db.save().unwrap();
        let shadow = std::fs::read_to_string(etc.join("shadow")).unwrap();
        assert_eq!(shadow.matches("bob:").count(), 1, "{shadow}");
        assert!(shadow.contains("stranger:!:"), "{shadow}");
        assert!(AccountDb::load(&root)
            .unwrap()
            .repair(&|u| u.name == "bob")
            .is_empty());
    }

    #[test]
    fn the_public_view_reads_no_shadow_file_and_cannot_be_saved() {
        let (dir, root) = sandbox();
        // Unreadable to anyone but root, as on a host: the public view never opens it.
        std::fs::remove_file(dir.path().join("etc/shadow")).unwrap();
        std::fs::create_dir(dir.path().join("etc/shadow")).unwrap();
        let mut db = AccountDb::load_public(&root).unwrap();
        assert_eq!(db.groups_of("olduser"), vec!["sudo"]);
        assert!(db.user("root").is_some() && db.shadow("root").is_none());
        db.add_group("x", 1234);
        assert!(db.save().is_err());
    }

    #[test]
    fn saving_without_changes_writes_nothing() {
        let (_dir, root) = sandbox();
        let mut db = AccountDb::load(&root).unwrap();
        assert!(db.save().unwrap().is_empty());
    }

    #[test]
    fn free_id_skips_ids_used_as_uid_or_gid() {
        let (_dir, root) = sandbox();
        let mut db = AccountDb::load(&root).unwrap();
        db.add_group("g", 1000);
        db.add_user(&NewUser {
            name: "u".into(),
            uid: 1001,
            gid: 1001,
            gecos: String::new(),
            home: "/home/u".into(),
            shell: "/bin/sh".into(),
        });
        assert_eq!(db.free_id(1000, 60000), Some(1002));
        assert_eq!(db.free_id(1000, 1002), None);
        // ids taken after the first look-up count too
        db.add_group("h", 1002);
        db.add_group("far", 1004);
        assert_eq!(db.free_id(1000, 60000), Some(1003));
        assert_eq!(db.free_id(999, 60000), Some(999));
        db.add_user(&NewUser {
            name: "v".into(),
            uid: 1003,
            gid: 1003,
            gecos: String::new(),
            home: "/home/v".into(),
            shell: "/bin/sh".into(),
        });
        assert_eq!(db.free_id(1000, 60000), Some(1005));
        assert_eq!(db.free_id(1000, 1005), None);
        assert_eq!(db.free_id(1004, 60000), Some(1005));
    }

    #[test]
    fn the_pwd_lock_excludes_a_second_holder() {
        let (_dir, root) = sandbox();
        // POSIX record locks are per process, so the contender is a child.
        let _held = PwLock::acquire(&root, Duration::from_secs(1)).unwrap();
        let lock = root.join(PWD_LOCK);
        let status = std::process::Command::new("python3")
            .args([
                "-c",
                "import fcntl,sys\nf=open(sys.argv[1],'w')\ntry:\n fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB)\nexcept OSError:\n sys.exit(7)\n",
            ])
            .arg(&lock)
            .status()
            .unwrap();
        assert_eq!(
            status.code(),
            Some(7),
            "a second process got the lckpwdf lock"
        );
    }
}
