//! Deterministic crash points for the tests of crash safety.
//!
//! `BS_JOBS_CRASH_AT=<point>` makes the process SIGKILL itself when it
//! reaches that point: the kernel ends it exactly as `kill -9` would (no
//! unwinding, no destructors, no flush), so a test can prove what a
//! killed worker leaves behind and that the next start repairs it. Unset
//! (always, outside tests), a crash point is one environment lookup.

use std::sync::atomic::{AtomicU64, Ordering};

static REACHED: AtomicU64 = AtomicU64::new(0);

/// Die here if the environment names this point: `<point>` dies the first
/// time it is reached, `<point>:N` the N-th time (counted per process over
/// all points of that name).
pub fn crash_point(point: &str) {
    let Some(wanted) = std::env::var_os("BS_JOBS_CRASH_AT") else {
        return;
    };
    let wanted = wanted.to_string_lossy();
    let (name, nth) = match wanted.split_once(':') {
        Some((n, k)) => (n, k.parse::<u64>().unwrap_or(1)),
        None => (wanted.as_ref(), 1),
    };
    if name != point {
        return;
    }
    if REACHED.fetch_add(1, Ordering::SeqCst) + 1 == nth {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}
