//! Running commands: always from an argv list, never through a shell, and
//! recorded. Commands that would change the running host (service
//! restarts, cache flushes) are marked [`Effect::Host`] and are skipped,
//! and reported as skipped, when the root is a sandbox. Validators
//! (`visudo -cf`, `sshd -t`, `chronyd -p`) only read and always run.
//!
//! Secrets never go into argv (any user can read `/proc/<pid>/cmdline`):
//! pass them on stdin or in a 0600 file.
//!
//! The [`Runner`] trait lets privileged logic be tested with a
//! [`RecordingRunner`] that records and can fail, instead of `cfg(test)`.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{CoreError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Reads or validates; safe under a sandbox root.
    ReadOnly,
    /// Changes the running host; skipped under a sandbox root.
    Host,
}

#[derive(Clone, Debug, Serialize)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
    pub effect: Effect,
    #[serde(skip)]
    pub stdin: Option<Vec<u8>>,
    #[serde(skip)]
    pub timeout: Option<Duration>,
}

impl Cmd {
    pub fn new(program: impl Into<String>) -> Cmd {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            effect: Effect::ReadOnly,
            stdin: None,
            timeout: Some(Duration::from_secs(120)),
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Cmd {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Mark the command as one that changes the live host.
    pub fn host(mut self) -> Cmd {
        self.effect = Effect::Host;
        self
    }

    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(data.into());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Cmd {
        self.timeout = Some(t);
        self
    }

    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.clone())
            .chain(self.args.iter().cloned())
            .collect()
    }
}

/// What happened when a command was run (or skipped): the `command` record.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Ran {
    pub argv: Vec<String>,
    /// Exit status; `None` when skipped or killed by a signal.
    pub status: Option<i32>,
    pub skipped: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip)]
    pub stdout: String,
    /// The end of stderr, for the record when the command failed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    pub duration_ms: u64,
}

impl Ran {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// Whether systemd is this machine's init (sd_booted(3): it made
/// /run/systemd/system). In a container or a chroot it is not, and
/// `systemctl` cannot start, stop or enable anything: tools write their
/// units for when it is and say so, instead of failing or, worse, taking
/// systemctl's failure for "not running".
pub fn systemd_is_init() -> bool {
    std::path::Path::new("/run/systemd/system").exists()
}

pub trait Runner: Send + Sync {
    fn run(&self, cmd: &Cmd) -> Result<Ran>;
}

/// Runs commands for real; skips host-changing ones unless the root is live.
pub struct SystemRunner {
    live: bool,
}

impl SystemRunner {
    pub fn new(root: &crate::Root) -> SystemRunner {
        SystemRunner {
            live: root.is_live(),
        }
    }
}

impl Runner for SystemRunner {
    fn run(&self, cmd: &Cmd) -> Result<Ran> {
        if cmd.effect == Effect::Host && !self.live {
            return Ok(Ran {
                argv: cmd.argv(),
                status: None,
                skipped: true,
                reason: "sandbox root: not touching the live host".into(),
                stdout: String::new(),
                stderr: String::new(),
                duration_ms: 0,
            });
        }
        let started = Instant::now();
        let mut child = Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| CoreError::CommandSpawn {
                program: cmd.program.clone(),
                source,
            })?;
        if let (Some(data), Some(mut pipe)) = (cmd.stdin.as_ref(), child.stdin.take()) {
            let _ = pipe.write_all(data);
        }
        // Read both pipes on threads so a chatty command cannot deadlock us.
        let mut out_pipe = child.stdout.take();
        let mut err_pipe = child.stderr.take();
        let out_t = std::thread::spawn(move || read_all(out_pipe.as_mut()));
        let err_t = std::thread::spawn(move || read_all(err_pipe.as_mut()));
        // Wait on a thread so the timeout costs nothing while the command
        // runs (no polling); on timeout the child is killed by pid.
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let waited = match cmd.timeout {
            Some(t) => rx.recv_timeout(t).ok(),
            None => rx.recv().ok(),
        };
        let status = match waited {
            Some(Ok(status)) => status,
            Some(Err(source)) => {
                return Err(CoreError::CommandSpawn {
                    program: cmd.program.clone(),
                    source,
                })
            }
            None => {
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
                let _ = rx.recv();
                return Err(CoreError::CommandTimeout {
                    program: cmd.program.clone(),
                    secs: cmd.timeout.map(|t| t.as_secs()).unwrap_or(0),
                });
            }
        };
        let stdout = out_t.join().unwrap_or_default();
        let stderr = err_t.join().unwrap_or_default();
        Ok(Ran {
            argv: cmd.argv(),
            status: status.code(),
            skipped: false,
            reason: String::new(),
            stdout,
            stderr: tail(&stderr, 2000),
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }
}

fn read_all(pipe: Option<&mut impl Read>) -> String {
    let mut buf = Vec::new();
    if let Some(p) = pipe {
        let _ = p.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.trim_end().to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].trim_end().to_string()
}

/// A scripted answer for [`RecordingRunner`].
#[derive(Clone, Debug)]
pub struct Scripted {
    /// Matches when the argv, joined by spaces, contains this text.
    pub matches: String,
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Records every command and answers from a script (success by default).
/// For tests of privileged sequences: restart order, failure handling.
#[derive(Default)]
pub struct RecordingRunner {
    ran: Mutex<Vec<Vec<String>>>,
    script: Mutex<VecDeque<Scripted>>,
}

impl RecordingRunner {
    pub fn new() -> RecordingRunner {
        RecordingRunner::default()
    }

    /// The next command whose argv contains `matches` gets this answer.
    pub fn answer(&self, matches: &str, status: i32, stdout: &str, stderr: &str) {
        if let Ok(mut s) = self.script.lock() {
            s.push_back(Scripted {
                matches: matches.into(),
                status,
                stdout: stdout.into(),
                stderr: stderr.into(),
            });
        }
    }

    pub fn ran(&self) -> Vec<Vec<String>> {
        self.ran.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The commands that ran, each joined by spaces.
    pub fn ran_lines(&self) -> Vec<String> {
        self.ran().iter().map(|a| a.join(" ")).collect()
    }
}

impl Runner for RecordingRunner {
    fn run(&self, cmd: &Cmd) -> Result<Ran> {
        let argv = cmd.argv();
        let line = argv.join(" ");
        if let Ok(mut r) = self.ran.lock() {
            r.push(argv.clone());
        }
        let scripted = self.script.lock().ok().and_then(|mut s| {
            let pos = s.iter().position(|a| line.contains(&a.matches))?;
            s.remove(pos)
        });
        let (status, stdout, stderr) = match scripted {
            Some(a) => (a.status, a.stdout, a.stderr),
            None => (0, String::new(), String::new()),
        };
        Ok(Ran {
            argv,
            status: Some(status),
            skipped: false,
            reason: String::new(),
            stdout,
            stderr,
            duration_ms: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_argv_without_a_shell_and_captures_output() {
        let dir = tempfile::tempdir().unwrap();
        let runner = SystemRunner::new(&crate::Root::new(dir.path()).unwrap());
        // With a shell, `$HOME; false` would expand and run `false`.
        let ran = runner.run(&Cmd::new("echo").arg("$HOME; false")).unwrap();
        assert!(ran.success());
        assert_eq!(ran.stdout, "$HOME; false\n");
        let ran = runner
            .run(&Cmd::new("sh").args(["-c", "echo oops >&2; exit 3"]))
            .unwrap();
        assert_eq!(ran.status, Some(3));
        assert_eq!(ran.stderr, "oops");
    }

    #[test]
    fn host_commands_are_skipped_under_a_sandbox_root() {
        let dir = tempfile::tempdir().unwrap();
        let runner = SystemRunner::new(&crate::Root::new(dir.path()).unwrap());
        let marker = dir.path().join("touched");
        let ran = runner
            .run(&Cmd::new("touch").arg(marker.to_string_lossy()).host())
            .unwrap();
        assert!(ran.skipped);
        assert!(!marker.exists());
    }

    #[test]
    fn a_hanging_command_is_killed_at_its_timeout() {
        let runner = SystemRunner { live: false };
        let err = runner
            .run(
                &Cmd::new("sleep")
                    .arg("5")
                    .timeout(Duration::from_millis(200)),
            )
            .unwrap_err();
        assert!(matches!(err, CoreError::CommandTimeout { .. }));
    }

    #[test]
    fn stdin_is_fed_to_the_command() {
        let runner = SystemRunner { live: false };
        let ran = runner.run(&Cmd::new("cat").stdin("secret-ish\n")).unwrap();
        assert_eq!(ran.stdout, "secret-ish\n");
        assert!(!ran.argv.join(" ").contains("secret"));
    }

    #[test]
    fn recording_runner_records_and_answers_from_its_script() {
        let r = RecordingRunner::new();
        r.answer("restart chrony", 1, "", "failed");
        assert!(r
            .run(&Cmd::new("systemctl").args(["stop", "jobs"]))
            .unwrap()
            .success());
        assert_eq!(
            r.run(&Cmd::new("systemctl").args(["restart", "chrony"]))
                .unwrap()
                .status,
            Some(1)
        );
        assert_eq!(
            r.ran_lines(),
            vec!["systemctl stop jobs", "systemctl restart chrony"]
        );
    }
}
