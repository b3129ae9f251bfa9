//! sshd and login hardening: the sshd drop-in (validated with `sshd -t`
//! before it goes live), `UMASK` in /etc/login.defs, a readonly `TMOUT`
//! profile snippet and the login banner.
//!
//! sshd keeps the FIRST value it reads for most keywords, so an earlier
//! drop-in (cloud-init's `50-cloud-init.conf` says `PasswordAuthentication
//! yes`) silently beats a later one: ours is named to sort first.

use std::path::Path;

use serde_json::json;

use bs_core::cmd::{Cmd, Ran};
use bs_core::config::LoginSettings;
use bs_core::safefs::FileSpec;
use bs_core::validate::Checked;
use bs_core::Output;

use crate::files::{self, ManagedFile, Outcome};
use crate::{RunCtx, Selection};

pub const ISSUE_NET: &str = "/etc/issue.net";
pub const LOGIN_DEFS: &str = "/etc/login.defs";
pub const TMOUT_SNIPPET: &str = "/etc/profile.d/bs-timeout.sh";

pub fn render_dropin(login: &LoginSettings, backend: &str) -> String {
    let mut text = format!(
        "# Managed by bs-perms (backends/{backend}); local edits are overwritten.\n\
         # sshd keeps the first value it reads: this file sorts before the other drop-ins.\n"
    );
    for line in &login.sshd {
        text.push_str(line.trim());
        text.push('\n');
    }
    if !login.banner.trim().is_empty() {
        text.push_str(&format!("Banner {ISSUE_NET}\n"));
    }
    text
}

/// Replace the active `UMASK` line in place (keeping everything else), or
/// append one when there is none.
pub fn edit_login_defs(current: &str, umask: &str) -> String {
    let wanted = format!("UMASK\t\t{umask}");
    let mut done = false;
    let mut out = String::with_capacity(current.len() + 16);
    for line in current.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let is_umask = body.split_whitespace().next() == Some("UMASK");
        if is_umask && !done {
            out.push_str(&wanted);
            out.push('\n');
            done = true;
        } else if is_umask {
            // A second active UMASK line: login.defs readers take one of
            // them; keep it visible but inert.
            out.push_str("# (disabled by bs-perms: duplicate) ");
            out.push_str(line);
        } else {
            out.push_str(line);
        }
    }
    if !done {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&wanted);
        out.push('\n');
    }
    out
}

pub fn tmout_snippet(secs: u32) -> String {
    format!("# Managed by bs-perms: idle shells end after {secs} s.\nreadonly TMOUT={secs}; export TMOUT\n")
}

/// `sshd -t` on the drop-in as sshd will read it (bs_core::validate). Under
/// a sandbox root on a machine without sshd (a laptop running the demo) the
/// check is reported as not done; on the live host it is never skipped.
fn sshd_check(
    ctx: &RunCtx<'_>,
    log: &mut Vec<Ran>,
    notes: &mut Vec<String>,
    contents: &[u8],
) -> Result<(), (&'static str, String)> {
    match bs_core::validate::sshd_dropin(ctx.root, ctx.runner, "bs-perms", contents, log) {
        Ok(Checked::Passed) => Ok(()),
        Ok(Checked::Skipped(note)) => {
            notes.push(note);
            Ok(())
        }
        Err(e) => Err(files::invalid(e, "sshd_validate", "sshd_rejected")),
    }
}

/// Tell a running sshd to re-read its config (live host only: `.host()`).
fn reload_sshd(ctx: &RunCtx<'_>, out: &mut Output) {
    let pid_file = ctx.root.join("/run/sshd.pid");
    let cmd = match std::fs::read_to_string(&pid_file) {
        Ok(pid) if pid.trim().parse::<u32>().is_ok() => {
            Cmd::new("kill").args(["-HUP", pid.trim()]).host()
        }
        _ => Cmd::new("systemctl").args(["reload", "ssh"]).host(),
    };
    match ctx.runner.run(&cmd) {
        Ok(ran) => {
            let ok = ran.success() || ran.skipped;
            out.emit("command", &ran);
            if !ok {
                out.error(
                    "sshd_reload",
                    "sshd",
                    &format!("{}: {}", ran.argv.join(" "), ran.stderr),
                );
            }
        }
        Err(e) => out.error(e.kind(), "sshd", &e.to_string()),
    }
}

pub fn run(ctx: &RunCtx<'_>, out: &mut Output, sel: &mut Selection) {
    let login = &ctx.config.perms.login;
    if !login.enabled {
        return;
    }
    let backend = &ctx.config.backend.name;
    let no_check = &mut |_: &[u8]| Ok(());

    if !login.banner.trim().is_empty() {
        let text = login.banner.trim_start_matches('\n').to_string();
        let file = ManagedFile {
            target: ISSUE_NET.into(),
            contents: text.into_bytes(),
            spec: FileSpec::root(0o644),
            kind: "banner",
        };
        files::converge(ctx, out, sel, &file, no_check);
    }

    let dropin = ManagedFile {
        target: login.sshd_dropin.display().to_string(),
        contents: render_dropin(login, backend).into_bytes(),
        spec: FileSpec::root(0o644),
        kind: "sshd_dropin",
    };
    let mut log = Vec::new();
    let mut notes = Vec::new();
    let outcome = files::converge(ctx, out, sel, &dropin, &mut |b| {
        sshd_check(ctx, &mut log, &mut notes, b)
    });
    for ran in &log {
        out.emit("command", ran);
    }
    for note in &notes {
        out.emit("note", &json!({"target": dropin.target, "message": note}));
    }
    if outcome == Outcome::Changed && ctx.applying() {
        reload_sshd(ctx, out);
    }
    warn_earlier_dropins(ctx, out, &login.sshd_dropin);

    let defs_host = ctx.root.join(LOGIN_DEFS);
    match files::read_existing(&defs_host, 1024 * 1024) {
        Ok(existing) => {
            let (text, spec) = match &existing {
                Some((bytes, st)) => (
                    String::from_utf8_lossy(bytes).into_owned(),
                    FileSpec {
                        mode: st.st_mode & 0o7777,
                        uid: st.st_uid,
                        gid: st.st_gid,
                    },
                ),
                None => (String::new(), FileSpec::root(0o644)),
            };
            let file = ManagedFile {
                target: LOGIN_DEFS.into(),
                contents: edit_login_defs(&text, &login.login_defs_umask).into_bytes(),
                spec,
                kind: "login_defs",
            };
            files::converge(ctx, out, sel, &file, no_check);
        }
        Err(e) => out.error(e.kind(), LOGIN_DEFS, &e.to_string()),
    }

    let file = ManagedFile {
        target: TMOUT_SNIPPET.into(),
        contents: tmout_snippet(login.tmout_secs).into_bytes(),
        spec: FileSpec::root(0o644),
        kind: "profile",
    };
    files::converge(ctx, out, sel, &file, no_check);
}

/// A drop-in that sorts before ours wins for every keyword it sets: say so.
/// (bs-users' `00-bs-authorized-keys.conf` sets only AuthorizedKeysFile.)
fn warn_earlier_dropins(ctx: &RunCtx<'_>, out: &mut Output, dropin: &Path) {
    let (Some(dir), Some(ours)) = (dropin.parent(), dropin.file_name()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(ctx.root.join(dir)) else {
        return;
    };
    let mut earlier: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".conf") && n.as_str() < ours.to_string_lossy().as_ref())
        .filter(|n| n != "00-bs-authorized-keys.conf")
        .collect();
    earlier.sort();
    if !earlier.is_empty() {
        out.emit(
            "warning",
            &json!({
                "target": dir.display().to_string(),
                "message": "these sshd drop-ins sort before ours and win for any keyword they set",
                "files": earlier,
            }),
        );
    }
}
