//! Deterministic crash points for the tests of crash safety.
//!
//! `BS_JOBS_CRASH_AT=<point>` makes the process SIGKILL itself when it
//! reaches that point: the kernel ends it exactly as `kill -9` would (no
//! unwinding, no destructors, no flush), so a test can prove what a
//! killed worker leaves behind and that the next start repairs it. Unset
//! (always, outside tests), a crash point is one environment lookup.

/// Die here if the environment names this point.
pub fn crash_point(point: &str) {
    if std::env::var_os("BS_JOBS_CRASH_AT").is_some_and(|p| p == point) {
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}
