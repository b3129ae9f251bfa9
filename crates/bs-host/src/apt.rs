//! apt-get and apt-mark, always from argv (through `env` for the
//! non-interactive frontend, never a shell), waiting a bounded time for the
//! dpkg lock another process holds, with their output kept in the records.
//! All of them are host commands: under a sandbox root they are skipped and
//! reported.

use std::time::Duration;

use serde_json::json;

use bs_core::cmd::{Cmd, Ran};
use bs_core::Output;

use crate::RunCtx;

/// How long one apt-get run may take before it is killed.
const APT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// `apt-get ARGS` with no prompts and a bounded wait for the dpkg lock.
pub fn apt_get(ctx: &RunCtx<'_>, args: &[&str]) -> Cmd {
    let lock = format!(
        "DPkg::Lock::Timeout={}",
        ctx.config.host.apt_lock_timeout_secs
    );
    Cmd::new("env")
        .args([
            "DEBIAN_FRONTEND=noninteractive",
            "apt-get",
            "-q",
            "-o",
            lock.as_str(),
        ])
        .args(args.iter().copied())
        .timeout(APT_TIMEOUT)
        .host()
}

pub fn apt_mark(args: &[&str]) -> Cmd {
    Cmd::new("apt-mark").args(args.iter().copied()).host()
}

/// The end of a command's output, for its record.
pub fn tail(text: &str, max: usize) -> String {
    let text = text.trim_end();
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

/// Why an apt command failed, as an error kind an operator can act on.
pub fn failure_kind(ran: &Ran) -> &'static str {
    let text = format!("{}\n{}", ran.stderr, ran.stdout);
    if text.contains("Could not get lock") || text.contains("Unable to acquire the dpkg") {
        "dpkg_locked"
    } else if text.contains("Unable to locate package")
        || text.contains("has no installation candidate")
    {
        "package_not_found"
    } else {
        "apt_failed"
    }
}

/// Run `cmd`, write its `command` record (with the end of its output), and
/// on failure an error record about `target`. `Some(ran)` when it ran (or
/// was skipped under a sandbox root) and succeeded.
pub fn run(ctx: &RunCtx<'_>, out: &mut Output, cmd: &Cmd, target: &str) -> Option<Ran> {
    match ctx.runner.run(cmd) {
        Ok(ran) => {
            out.emit(
                "command",
                &json!({
                    "target": target,
                    "argv": ran.argv,
                    "status": ran.status,
                    "skipped": ran.skipped,
                    "reason": ran.reason,
                    "duration_ms": ran.duration_ms,
                    "output": tail(&ran.stdout, 4000),
                    "stderr": ran.stderr,
                }),
            );
            if ran.success() || ran.skipped {
                return Some(ran);
            }
            let kind = failure_kind(&ran);
            let why = match kind {
                "dpkg_locked" => format!(
                    "another process holds the dpkg lock and did not release it within {} s; try again when it is done",
                    ctx.config.host.apt_lock_timeout_secs
                ),
                "package_not_found" => {
                    "apt knows no such package (not in any configured source)".to_string()
                }
                _ => "apt failed".to_string(),
            };
            out.error(
                kind,
                target,
                &format!("{}: {why}: {}", ran.argv.join(" "), tail(&ran.stderr, 1000)),
            );
            None
        }
        Err(e) => {
            out.error(e.kind(), target, &e.to_string());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(stderr: &str) -> Ran {
        Ran {
            argv: vec!["apt-get".into()],
            status: Some(100),
            skipped: false,
            reason: String::new(),
            stdout: String::new(),
            stderr: stderr.into(),
            duration_ms: 0,
        }
    }

    #[test]
    fn failures_are_told_apart_by_apt_messages() {
        assert_eq!(
            failure_kind(&ran("E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 42 (apt-get)")),
            "dpkg_locked"
        );
        assert_eq!(
            failure_kind(&ran("E: Unable to locate package nosuch")),
            "package_not_found"
        );
        assert_eq!(
            failure_kind(&ran("E: Package 'x' has no installation candidate")),
            "package_not_found"
        );
        assert_eq!(
            failure_kind(&ran(
                "E: Sub-process /usr/bin/dpkg returned an error code (1)"
            )),
            "apt_failed"
        );
    }
}
