//! The files bs-users places: keys files (root-owned central ones or
//! `~/.ssh/authorized_keys` through file descriptors), homes, the sshd
//! drop-in and the refresh schedule.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use bs_core::config::{AuthorizedKeysMode, RefreshMode};
use bs_core::safefs::{self, DirFd, FileSpec, Kind};
use bs_core::{CoreError, Root};

/// Sorts before any other drop-in: sshd keeps the first value it reads.
pub const SSHD_DROPIN: &str = "/etc/ssh/sshd_config.d/00-bs-authorized-keys.conf";
pub const CRON_FILE: &str = "/etc/cron.d/bs-users-keys";
pub const SYSTEMD_SERVICE: &str = "/etc/systemd/system/bs-users-refresh.service";
pub const SYSTEMD_TIMER: &str = "/etc/systemd/system/bs-users-refresh.timer";
const MAX_KEYS_FILE: u64 = 1024 * 1024;

/// Where a user's keys live and who they are.
#[derive(Clone, Debug)]
pub struct KeyHome<'a> {
    pub name: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub home: &'a str,
}

#[derive(Clone, Debug)]
pub struct Placement {
    pub mode: AuthorizedKeysMode,
    pub central_dir: PathBuf,
}

impl Placement {
    pub fn central_file(&self, root: &Root, name: &str) -> PathBuf {
        root.join(&self.central_dir).join(name)
    }

    /// The installed keys file's text, if there is one.
    pub fn read(&self, root: &Root, user: &KeyHome) -> Result<Option<String>, CoreError> {
        let bytes = match self.mode {
            AuthorizedKeysMode::Central => {
                let path = self.central_file(root, user.name);
                let (dir, name) = safefs::split(&path)?;
                match DirFd::open(dir) {
                    Ok(d) => d.read_file(name, MAX_KEYS_FILE)?.map(|(b, _)| b),
                    Err(CoreError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        None
                    }
                    Err(e) => return Err(e),
                }
            }
            AuthorizedKeysMode::Home => {
                let Some(ssh) = open_ssh_dir(root, user, false)? else {
                    return Ok(None);
                };
                check_owned_file(&ssh, user)?;
                ssh.read_file(OsStr::new("authorized_keys"), MAX_KEYS_FILE)?
                    .map(|(b, _)| b)
            }
        };
        Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Install the keys file; returns whether anything changed.
    pub fn write(&self, root: &Root, user: &KeyHome, content: &str) -> Result<bool, CoreError> {
        match self.mode {
            AuthorizedKeysMode::Central => {
                let path = self.central_file(root, user.name);
                if let Some(dir) = path.parent() {
                    safefs::ensure_dir_all(dir, &FileSpec::root(0o755))?;
                }
                // Root-owned and not writable by the user: they cannot add keys.
                safefs::write_atomic(&path, content.as_bytes(), &FileSpec::root(0o644))
            }
            AuthorizedKeysMode::Home => {
                let ssh = open_ssh_dir(root, user, true)?.ok_or_else(|| CoreError::Unsafe {
                    path: root.join(user.home).join(".ssh"),
                    reason: "could not be created".into(),
                })?;
                check_owned_file(&ssh, user)?;
                ssh.write_file(
                    OsStr::new("authorized_keys"),
                    content.as_bytes(),
                    &FileSpec {
                        mode: 0o600,
                        uid: user.uid,
                        gid: user.gid,
                    },
                )
            }
        }
    }

    /// Remove the keys from both places (a disabled user must lose every
    /// key, wherever an earlier config put them).
    pub fn remove(&self, root: &Root, user: &KeyHome) -> Result<bool, CoreError> {
        let mut removed = safefs::remove_file(&self.central_file(root, user.name))?;
        if let Some(ssh) = open_ssh_dir(root, user, false)? {
            removed |= ssh.remove_if_exists(OsStr::new("authorized_keys"))?;
        }
        Ok(removed)
    }

    /// Whether any keys file exists for the user, in either place.
    pub fn any_exists(&self, root: &Root, user: &KeyHome) -> Result<bool, CoreError> {
        if self
            .central_file(root, user.name)
            .symlink_metadata()
            .is_ok()
        {
            return Ok(true);
        }
        match open_ssh_dir(root, user, false) {
            Ok(Some(ssh)) => Ok(ssh.stat_at(OsStr::new("authorized_keys"))?.is_some()),
            Ok(None) => Ok(false),
            // A symlinked .ssh holds no key sshd would use with StrictModes.
            Err(CoreError::Unsafe { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Open `~/.ssh` through file descriptors. Refuses (an `Unsafe` error,
/// nothing written) when the home or `.ssh` is a symlink or not owned by
/// the user: as root we would otherwise write wherever it points.
fn open_ssh_dir(root: &Root, user: &KeyHome, create: bool) -> Result<Option<DirFd>, CoreError> {
    let home = root.join(user.home);
    let (parent, name) = safefs::split(&home)?;
    let parent = match DirFd::open(parent) {
        Ok(d) => d,
        Err(CoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let home_fd = match parent.stat_at(name)? {
        None => return Ok(None),
        Some(_) => parent.open_subdir(name)?,
    };
    let st = home_fd.stat()?;
    if st.st_uid != user.uid {
        return Err(CoreError::Unsafe {
            path: home,
            reason: format!("is owned by uid {}, not {}", st.st_uid, user.name),
        });
    }
    let ssh = OsStr::new(".ssh");
    match home_fd.stat_at(ssh)? {
        None if !create => Ok(None),
        None => {
            let spec = FileSpec {
                mode: 0o700,
                uid: user.uid,
                gid: user.gid,
            };
            Ok(Some(home_fd.ensure_subdir(ssh, &spec)?.0))
        }
        Some(st) => {
            let path = home_fd.path().join(ssh);
            if Kind::of(&st) != Kind::Dir {
                return Err(CoreError::Unsafe {
                    path,
                    reason: "is a symlink or not a directory".into(),
                });
            }
            if st.st_uid != user.uid {
                return Err(CoreError::Unsafe {
                    path,
                    reason: format!("is owned by uid {}, not {}", st.st_uid, user.name),
                });
            }
            Ok(Some(home_fd.open_subdir(ssh)?))
        }
    }
}

fn check_owned_file(ssh: &DirFd, user: &KeyHome) -> Result<(), CoreError> {
    if let Some(st) = ssh.stat_at(OsStr::new("authorized_keys"))? {
        let path = ssh.path().join("authorized_keys");
        if Kind::of(&st) != Kind::File {
            return Err(CoreError::Unsafe {
                path,
                reason: "is a symlink or not a regular file".into(),
            });
        }
        if st.st_uid != user.uid {
            return Err(CoreError::Unsafe {
                path,
                reason: format!("is owned by uid {}, not {}", st.st_uid, user.name),
            });
        }
    }
    Ok(())
}

/// Create a home (0750) filled from /etc/skel. It is built under a temp
/// name and renamed into place, so a run killed half-way leaves no
/// half-made home, only a temp directory the next run clears. An existing
/// directory is never taken over: it may hold someone else's files.
pub fn create_home(root: &Root, home: &str, uid: u32, gid: u32) -> Result<bool, CoreError> {
    let path = root.join(home);
    let (parent, name) = safefs::split(&path)?;
    safefs::ensure_dir_all(parent, &FileSpec::root(0o755))?;
    let parent = DirFd::open(parent)?;
    if parent.stat_at(name)?.is_some() {
        return Err(CoreError::Unsafe {
            path,
            reason: "already exists; not taking it over".into(),
        });
    }
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(".bs-tmp");
    remove_temp_home(&parent, &tmp)?;
    // Root-only while it is being filled; the final owner and mode last.
    let (dir, _) = parent.ensure_subdir(&tmp, &FileSpec::root(0o700))?;
    if let Ok(skel) = DirFd::open(&root.join("/etc/skel")) {
        for (entry, kind) in skel.entries()? {
            if kind != Kind::File {
                continue;
            }
            if let Some((bytes, st)) = skel.read_file(&entry, 1024 * 1024)? {
                let spec = FileSpec {
                    mode: st.st_mode & 0o777,
                    uid,
                    gid,
                };
                dir.write_file(&entry, &bytes, &spec)?;
            }
        }
    }
    dir.set_owner_mode(&FileSpec {
        mode: 0o750,
        uid,
        gid,
    })?;
    rustix::fs::renameat(parent.fd(), &tmp, parent.fd(), name)
        .map_err(|e| CoreError::io(&path, e.into()))?;
    rustix::fs::fsync(parent.fd()).map_err(|e| CoreError::io(parent.path(), e.into()))?;
    Ok(true)
}

/// Remove a temp home left by a killed run: only plain files inside, as
/// create_home makes them; anything else there is refused.
fn remove_temp_home(parent: &DirFd, tmp: &OsStr) -> Result<(), CoreError> {
    let Some(st) = parent.stat_at(tmp)? else {
        return Ok(());
    };
    if Kind::of(&st) != Kind::Dir {
        parent.remove_if_exists(tmp)?;
        return Ok(());
    }
    let dir = parent.open_subdir(tmp)?;
    for (entry, kind) in dir.entries()? {
        if kind == Kind::Dir {
            return Err(CoreError::Unsafe {
                path: dir.path().join(entry),
                reason: "unexpected directory in a temp home".into(),
            });
        }
        dir.remove_if_exists(&entry)?;
    }
    rustix::fs::unlinkat(parent.fd(), tmp, rustix::fs::AtFlags::REMOVEDIR)
        .map_err(|e| CoreError::io(parent.path().join(tmp), e.into()))?;
    Ok(())
}

pub fn sshd_dropin(central_dir: &Path) -> String {
    format!(
        "# Managed by bs-users: SSH keys live in root-owned files users cannot edit.\n\
         # Accounts bs does not manage need their keys there too.\n\
         AuthorizedKeysFile {}/%u\n",
        central_dir.display()
    )
}

/// Ask a running sshd to re-read its config (live root only). Works with
/// and without systemd: Debian's ssh.service and a hand-started sshd both
/// write /run/sshd.pid.
pub fn reload_sshd(root: &Root) -> Option<String> {
    if !root.is_live() {
        return Some("sandbox root: sshd not reloaded".into());
    }
    let pid = std::fs::read_to_string("/run/sshd.pid").ok()?;
    let pid = pid.trim().parse::<i32>().ok()?;
    let pid = rustix::process::Pid::from_raw(pid)?;
    match rustix::process::kill_process(pid, rustix::process::Signal::HUP) {
        Ok(()) => None,
        Err(e) => Some(format!("could not signal sshd: {e}")),
    }
}

/// The refresh schedule's files for `mode`, and the files of other modes
/// that must go.
pub fn schedule_files(mode: RefreshMode) -> (Vec<(&'static str, String)>, Vec<&'static str>) {
    let cron = (
        CRON_FILE,
        "# Managed by bs-users: refresh SSH keys every 15 minutes, after a random delay.\n\
         SHELL=/bin/sh\n\
         PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         */15 * * * * root bs-users keys refresh --random-delay 300 >/var/lib/bs/users/last-refresh.jsonl 2>&1\n"
            .to_string(),
    );
    let service = (
        SYSTEMD_SERVICE,
        "# Managed by bs-users.\n\
         [Unit]\n\
         Description=bs-users: refresh SSH keys\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart=/usr/local/bin/bs-users keys refresh\n\
         StandardOutput=append:/var/lib/bs/users/last-refresh.jsonl\n"
            .to_string(),
    );
    let timer = (
        SYSTEMD_TIMER,
        "# Managed by bs-users.\n\
         [Unit]\n\
         Description=bs-users: refresh SSH keys every 15 minutes\n\
         \n\
         [Timer]\n\
         OnBootSec=2min\n\
         OnUnitActiveSec=15min\n\
         RandomizedDelaySec=5min\n\
         \n\
         [Install]\n\
         WantedBy=timers.target\n"
            .to_string(),
    );
    match mode {
        RefreshMode::Cron => (vec![cron], vec![SYSTEMD_SERVICE, SYSTEMD_TIMER]),
        RefreshMode::Systemd => (vec![service, timer], vec![CRON_FILE]),
        RefreshMode::None => (vec![], vec![CRON_FILE, SYSTEMD_SERVICE, SYSTEMD_TIMER]),
    }
}
