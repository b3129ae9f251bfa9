//! Generated config is checked by the program that will read it before it
//! goes live (`visudo -cf`, `sshd -t`, `chronyd -p`): a file its reader
//! refuses is never installed, and the old one stays.
//!
//! Candidates are written into a [`Scratch`] directory, private to this run,
//! never into a guessable path under /tmp (another user could plant a link
//! there). What ran is kept for the records.

use std::path::{Path, PathBuf};

use crate::cmd::{Cmd, Ran, Runner};
use crate::root::Root;

/// Why a candidate did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// The validator could not run (missing, killed, no scratch space): the
    /// candidate is not installed either, since nothing vouched for it.
    CannotRun(String),
    /// The validator ran and refused the candidate: `<what> refused it: <stderr>`.
    Refused(String),
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::CannotRun(why) | Invalid::Refused(why) => f.write_str(why),
        }
    }
}

/// Whether a candidate was checked at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    Passed,
    /// Not checked, and why: only ever under a sandbox root, where nothing
    /// goes live (a note for the records).
    Skipped(String),
}

/// A private scratch directory (mode 0700, a name nobody could pre-plant:
/// `mkdir` fails if it exists), removed with everything in it on drop.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub fn new(tool: &str) -> Result<Scratch, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("{tool}-{}-{nanos}", std::process::id()));
        rustix::fs::mkdir(&path, rustix::fs::Mode::from_raw_mode(0o700))
            .map_err(|e| format!("{}: {}", path.display(), std::io::Error::from(e)))?;
        Ok(Scratch { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write a file into the scratch directory; its path.
    pub fn write(&self, name: &str, contents: &[u8]) -> Result<PathBuf, Invalid> {
        let p = self.path.join(name);
        std::fs::write(&p, contents)
            .map_err(|e| Invalid::CannotRun(format!("{}: {e}", p.display())))?;
        Ok(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Run a validator, keep what ran in `log`, and turn a refusal into
/// [`Invalid::Refused`] naming `what` (e.g. `visudo -cf`).
pub fn run(runner: &dyn Runner, cmd: &Cmd, what: &str, log: &mut Vec<Ran>) -> Result<(), Invalid> {
    let ran = runner
        .run(cmd)
        .map_err(|e| Invalid::CannotRun(e.to_string()))?;
    let ok = ran.success();
    let stderr = ran.stderr.trim().to_string();
    log.push(ran);
    if ok {
        Ok(())
    } else {
        Err(Invalid::Refused(format!("{what} refused it: {stderr}")))
    }
}

/// `visudo -cf` on the exact bytes of a sudoers file.
pub fn sudoers(
    runner: &dyn Runner,
    tool: &str,
    contents: &[u8],
    log: &mut Vec<Ran>,
) -> Result<(), Invalid> {
    let scratch = Scratch::new(tool).map_err(Invalid::CannotRun)?;
    let file = scratch.write("sudoers", contents)?;
    let cmd = Cmd::new("visudo")
        .args(["-c", "-f"])
        .arg(file.to_string_lossy());
    run(runner, &cmd, "visudo -cf", log)
}

/// `sshd -t` on a main config that includes the new drop-in first, as sshd
/// will read it (sshd keeps the first value it reads). On the live host the
/// real main config, and so every other drop-in and the host keys, follow
/// it; under a sandbox root the drop-in is checked on its own with a
/// throwaway host key.
///
/// `sshd -t` refuses to run without its privilege separation directory,
/// /run/sshd. On the live host it is created if missing (as the ssh service
/// does); under a sandbox root the machine is not touched, and without it
/// the check is skipped with a note: nothing goes live there.
pub fn sshd_dropin(
    root: &Root,
    runner: &dyn Runner,
    tool: &str,
    contents: &[u8],
    log: &mut Vec<Ran>,
) -> Result<Checked, Invalid> {
    let privsep = Path::new("/run/sshd");
    if !privsep.is_dir() {
        if !root.is_live() {
            return Ok(Checked::Skipped(
                "sandbox root and no /run/sshd on this machine: the drop-in was not checked with sshd -t"
                    .into(),
            ));
        }
        std::fs::create_dir_all(privsep)
            .map_err(|e| Invalid::CannotRun(format!("{}: {e}", privsep.display())))?;
    }
    let scratch = Scratch::new(tool).map_err(Invalid::CannotRun)?;
    let dropin = scratch.write("dropin.conf", contents)?;
    let mut main = format!("Include {}\n", dropin.display());
    if root.is_live() {
        main.push_str("Include /etc/ssh/sshd_config\n");
    } else {
        let key = scratch.path().join("host_key");
        let keygen = Cmd::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(key.to_string_lossy());
        run(runner, &keygen, "ssh-keygen", log).map_err(|e| Invalid::CannotRun(e.to_string()))?;
        main.push_str(&format!("HostKey {}\n", key.display()));
    }
    let main_path = scratch.write("sshd_config", main.as_bytes())?;
    let sshd = Cmd::new("sshd")
        .args(["-t", "-f"])
        .arg(main_path.to_string_lossy());
    run(runner, &sshd, "sshd -t", log)?;
    Ok(Checked::Passed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::RecordingRunner;

    #[test]
    fn scratch_is_private_and_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt;
        let s = Scratch::new("bs-core-test").unwrap();
        let p = s.path().to_path_buf();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        s.write("f", b"x").unwrap();
        drop(s);
        assert!(!p.exists());
    }

    #[test]
    fn a_refusal_names_the_validator_and_keeps_what_ran() {
        let runner = RecordingRunner::new();
        runner.answer("visudo", 1, "", "bad line 3\n");
        let mut log = Vec::new();
        let r = run(&runner, &Cmd::new("visudo"), "visudo -cf", &mut log);
        assert_eq!(
            r,
            Err(Invalid::Refused("visudo -cf refused it: bad line 3".into()))
        );
        assert_eq!(log.len(), 1);
        assert_eq!(
            run(&runner, &Cmd::new("visudo"), "visudo -cf", &mut log),
            Ok(())
        );
        assert_eq!(log.len(), 2);
    }
}
