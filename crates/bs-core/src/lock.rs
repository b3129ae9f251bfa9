//! The run lock: every mutating run holds an exclusive `flock` on
//! `<root>/run/lock/bs.lock`, so two converges (a manual `just manage` and
//! the key-refresh timer) never interleave their writes. A waiting run
//! gives up after `--lock-timeout` with an error naming the holder.

use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, Mode, OFlags};

use crate::error::{CoreError, Result};
use crate::root::Root;

pub const LOCK_PATH: &str = "/run/lock/bs.lock";

/// Held until dropped; the kernel releases it if the process dies.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl RunLock {
    pub fn acquire(root: &Root, timeout: Duration) -> Result<RunLock> {
        let path = root.join(LOCK_PATH);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
        }
        Self::acquire_file(path, timeout, None)
    }

    /// The same exclusive lock on another file, for state that a service
    /// account changes (it cannot open root's `bs.lock`). The file is created
    /// if missing (0660) and, when `owner` is given and we run as root, handed
    /// to that uid/gid so the service account can take the lock later. The
    /// directory must exist.
    pub fn acquire_file(
        path: PathBuf,
        timeout: Duration,
        owner: Option<(u32, u32)>,
    ) -> Result<RunLock> {
        let fd = rustix::fs::open(
            &path,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(if owner.is_some() { 0o640 } else { 0o600 }),
        )
        .map_err(|e| CoreError::io(&path, e.into()))?;
        if let Some((uid, gid)) = owner {
            if rustix::process::geteuid().is_root() {
                let st = rustix::fs::fstat(&fd).map_err(|e| CoreError::io(&path, e.into()))?;
                if st.st_uid != uid || st.st_gid != gid {
                    rustix::fs::fchown(
                        &fd,
                        Some(rustix::fs::Uid::from_raw(uid)),
                        Some(rustix::fs::Gid::from_raw(gid)),
                    )
                    .map_err(|e| CoreError::io(&path, e.into()))?;
                }
            }
        }
        let start = Instant::now();
        loop {
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) | Err(rustix::io::Errno::INTR) => {
                    if start.elapsed() >= timeout {
                        let mut holder = String::new();
                        let _ = std::fs::File::from(fd).read_to_string(&mut holder);
                        let holder = holder.trim();
                        return Err(CoreError::LockTimeout {
                            path,
                            holder: if holder.is_empty() {
                                String::new()
                            } else {
                                format!(" (pid {holder})")
                            },
                            waited_secs: timeout.as_secs(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(CoreError::io(&path, e.into())),
            }
        }
        // Record who holds it, for the error message of the next waiter.
        let mut file = std::fs::File::from(fd);
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        Ok(RunLock { _file: file, path })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_then_times_out_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path()).unwrap();
        let first = RunLock::acquire(&root, Duration::from_secs(1)).unwrap();
        let started = Instant::now();
        let err = RunLock::acquire(&root, Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        let msg = err.to_string();
        assert!(msg.contains("bs.lock"), "{msg}");
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        drop(first);
        RunLock::acquire(&root, Duration::from_millis(300)).unwrap();
    }

    #[test]
    fn a_lock_file_for_a_service_account_is_handed_to_it() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.lock");
        let lock =
            RunLock::acquire_file(path.clone(), Duration::from_secs(1), Some((10000, 10000)))
                .unwrap();
        if rustix::process::geteuid().is_root() {
            assert_eq!(std::fs::metadata(&path).unwrap().uid(), 10000);
        }
        assert!(RunLock::acquire_file(path.clone(), Duration::from_millis(200), None).is_err());
        drop(lock);
        RunLock::acquire_file(path, Duration::from_millis(200), None).unwrap();
    }
}
