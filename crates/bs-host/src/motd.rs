//! The message of the day: a banner naming the backend (a script in
//! /etc/update-motd.d, which pam_motd runs at every SSH login on Debian and
//! Ubuntu), and the noisy scripts silenced: run-parts skips a script that is
//! not executable, and a package upgrade keeps the mode an admin gave it.

use std::ffi::OsStr;

use serde_json::json;

use bs_core::safefs::DirFd;
use bs_core::{CoreError, Output};

use crate::files::{self, ManagedFile};
use crate::{decide, HostChange, RunCtx, Selection};

pub const BANNER_SCRIPT: &str = "00-bs-banner";

/// A POSIX shell single-quoted word: nothing inside is expanded.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The banner script: prints the banner, `{BACKEND}` replaced by the
/// backend's name in capitals. Printed with printf from quoted words, so no
/// text in the banner can run as a command.
pub fn banner_script(banner: &str, backend: &str) -> String {
    let text = banner
        .trim_matches('\n')
        .replace("{BACKEND}", &backend.to_uppercase());
    let mut script = format!(
        "#!/bin/sh\n# Managed by bs-host (backends/{backend}, host.motd_banner); local edits are overwritten.\n"
    );
    for line in text.lines() {
        script.push_str(&format!("printf '%s\\n' {}\n", quote(line)));
    }
    script
}

pub fn run(ctx: &RunCtx<'_>, out: &mut Output, sel: &mut Selection) {
    let host = &ctx.config.host;
    if !host.motd_banner.trim().is_empty() {
        let file = ManagedFile {
            target: host.motd_dir.join(BANNER_SCRIPT).display().to_string(),
            contents: banner_script(&host.motd_banner, &ctx.config.backend_dir).into_bytes(),
            mode: 0o755,
            kind: "motd_banner",
        };
        files::converge(ctx, out, sel, &file);
    }
    if host.motd_silence.is_empty() {
        return;
    }
    let dir = match DirFd::open(&ctx.root.join(&host.motd_dir)) {
        Ok(d) => d,
        Err(CoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return;
        }
        Err(e) => {
            out.core_error(&e);
            return;
        }
    };
    for name in &host.motd_silence {
        let target = host.motd_dir.join(name).display().to_string();
        let st = match dir.stat_at(OsStr::new(name)) {
            Ok(st) => st,
            Err(e) => {
                out.error(e.kind(), &target, &e.to_string());
                continue;
            }
        };
        let change = HostChange::Silence {
            target: target.clone(),
        };
        let Some(st) = st else {
            decide(ctx, out, sel, &change, false, json!({"exists": false}));
            continue;
        };
        let is_file = st.st_mode & libc_s_ifmt() == libc_s_ifreg();
        let mode = st.st_mode & 0o7777;
        let needed = is_file && mode & 0o111 != 0;
        let record = json!({"exists": true, "mode": format!("{mode:04o}")});
        if decide(ctx, out, sel, &change, needed, record) {
            if let Err(e) = chmod_no_follow(&dir, name, mode & !0o111) {
                out.error(e.kind(), &target, &e.to_string());
            }
        }
    }
}

fn libc_s_ifmt() -> u32 {
    rustix::fs::FileType::from_raw_mode(0o170000).as_raw_mode()
}

fn libc_s_ifreg() -> u32 {
    rustix::fs::FileType::RegularFile.as_raw_mode()
}

/// chmod through a descriptor opened without following a link.
fn chmod_no_follow(dir: &DirFd, name: &str, mode: u32) -> Result<(), CoreError> {
    use rustix::fs::{Mode, OFlags};
    let path = dir.path().join(name);
    let fd = rustix::fs::openat(
        dir.fd(),
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| CoreError::io(&path, e.into()))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| CoreError::io(&path, e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_names_the_backend_and_cannot_run_its_text() {
        let s = banner_script("\nThis is the {BACKEND} backend\nIt's $(reboot)\n", "tpp");
        assert!(
            s.contains("printf '%s\\n' 'This is the TPP backend'\n"),
            "{s}"
        );
        assert!(s.contains("printf '%s\\n' 'It'\\''s $(reboot)'\n"), "{s}");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&s)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "This is the TPP backend\nIt's $(reboot)\n"
        );
    }
}
