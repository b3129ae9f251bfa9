//! PAM: `pam_umask` in the session stacks and the `pam_pwquality` policy,
//! the Debian way: pam-auth-update profiles in /usr/share/pam-configs, never
//! hand edits of /etc/pam.d/common-* (pam-auth-update would then refuse to
//! touch them again, and a later package's profile would be lost).
//!
//! Why: on Debian no PAM module applies login.defs' `UMASK` (Ubuntu loads
//! pam_umask by default), so a `UMASK 027` there alone left SSH sessions at
//! 0022 and users' files world-readable (pen-test 2.21); and with no
//! password policy the password set at first login could be `password1`
//! (pen-test 2.24).
//!
//! Validated before anything goes live: every module a stack would load
//! must be installed (a `requisite` line naming a missing module fails every
//! password change), and a policy with the dictionary check needs cracklib's
//! dictionary (without it pam_pwquality refuses every password). After
//! pam-auth-update, the stacks are read back: the run fails if a module is
//! still not there (pam-auth-update leaves common-* files alone that were
//! edited by hand).

use std::path::PathBuf;

use serde_json::json;

use bs_core::cmd::Cmd;
use bs_core::safefs::FileSpec;
use bs_core::Output;

use crate::files::{self, ManagedFile, Outcome};
use crate::{PermsChange, RunCtx, Selection};

/// Our profile's name in the profile directory.
pub const UMASK_PROFILE: &str = "bs-umask";
/// The profile libpam-pwquality ships (Debian, Ubuntu).
pub const PWQUALITY_PROFILE: &str = "pwquality";
pub const COMMON_SESSION: &str = "/etc/pam.d/common-session";
pub const COMMON_PASSWORD: &str = "/etc/pam.d/common-password";

/// The bs-umask profile. `nousergroups`: with Debian's `USERGROUPS_ENAB
/// yes`, pam_umask would otherwise copy the owner bits to the group bits
/// for users with a private group, turning 027 into 007.
pub fn umask_profile(backend: &str) -> String {
    format!(
        "Name: UMASK from /etc/login.defs for every session (bs-perms, backends/{backend})\n\
         Default: yes\n\
         Priority: 0\n\
         Session-Type: Additional\n\
         Session:\n\
         \toptional\t\t\tpam_umask.so nousergroups\n"
    )
}

/// Whether a PAM stack file has an active `kind` line loading `module`.
pub fn stack_has(text: &str, kind: &str, module: &str) -> bool {
    text.lines().any(|line| {
        let mut words = line.split_whitespace();
        let first = words.next();
        first == Some(kind) && words.any(|w| w == module)
    })
}

/// The directories a PAM module may live in under `root`: the multiarch
/// ones (`/usr/lib/x86_64-linux-gnu/security`) and the plain ones.
fn module_dirs(root: &bs_core::Root) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for base in ["/usr/lib", "/lib"] {
        let host = root.join(base);
        dirs.push(host.join("security"));
        if let Ok(entries) = std::fs::read_dir(&host) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().contains("-linux-") {
                    dirs.push(e.path().join("security"));
                }
            }
        }
    }
    dirs
}

pub fn module_installed(root: &bs_core::Root, module: &str) -> bool {
    module_dirs(root).iter().any(|d| d.join(module).is_file())
}

/// One module that must be in one stack.
struct Wanted {
    profile: &'static str,
    stack: &'static str,
    kind: &'static str,
    module: &'static str,
}

pub fn run(ctx: &RunCtx<'_>, out: &mut Output, sel: &mut Selection) {
    let pam = &ctx.config.perms.pam;
    if !pam.enabled {
        return;
    }
    let backend = &ctx.config.backend.name;
    let mut wanted = Vec::new();
    let mut refresh = false;

    if !pam.umask {
        retire_umask_profile(ctx, out, sel, &pam.profile_dir.join(UMASK_PROFILE));
    } else {
        let w = Wanted {
            profile: UMASK_PROFILE,
            stack: COMMON_SESSION,
            kind: "session",
            module: "pam_umask.so",
        };
        if prerequisites(ctx, out, &w, &[]) {
            let file = ManagedFile {
                target: pam.profile_dir.join(UMASK_PROFILE).display().to_string(),
                contents: umask_profile(backend).into_bytes(),
                spec: FileSpec::root(0o644),
                kind: "pam_profile",
            };
            match files::converge(ctx, out, sel, &file, &mut |_| Ok(())) {
                Outcome::Changed => {
                    refresh = true;
                    wanted.push(w);
                }
                Outcome::Unchanged => wanted.push(w),
                Outcome::Failed | Outcome::NotSelected => {}
            }
        }
    }

    if !pam.pwquality {
        retire_pwquality(ctx, out, sel);
    } else {
        let w = Wanted {
            profile: PWQUALITY_PROFILE,
            stack: COMMON_PASSWORD,
            kind: "password",
            module: "pam_pwquality.so",
        };
        let profile = pam.profile_dir.join(PWQUALITY_PROFILE);
        let mut needs: Vec<(PathBuf, String)> = vec![(
            profile,
            "libpam-pwquality's pam-auth-update profile".to_string(),
        )];
        if pam.dictcheck() {
            needs.push((
                pam.cracklib_dict.clone(),
                "cracklib's dictionary (cracklib-runtime): with dictcheck on and no dictionary, pam_pwquality refuses every password; install it or set dictcheck = 0".to_string(),
            ));
        }
        if prerequisites(ctx, out, &w, &needs) {
            let file = ManagedFile {
                target: pam.pwquality_conf.display().to_string(),
                contents: pam.render_pwquality(backend).into_bytes(),
                spec: FileSpec::root(0o644),
                kind: "pwquality_conf",
            };
            // The drop-in is read at every password change: no stack change.
            if !matches!(
                files::converge(ctx, out, sel, &file, &mut |_| Ok(())),
                Outcome::Failed
            ) {
                wanted.push(w);
            }
        }
    }

    converge_stacks(ctx, out, sel, &wanted, refresh);
}

/// Check that the module (and whatever else it needs) is installed: an
/// error record, and `false`, if not. Under a sandbox root, which has no
/// PAM, the check is a note instead (nothing there goes live).
fn prerequisites(
    ctx: &RunCtx<'_>,
    out: &mut Output,
    w: &Wanted,
    needs: &[(PathBuf, String)],
) -> bool {
    let mut missing = Vec::new();
    if !module_installed(ctx.root, w.module) {
        missing.push(format!("the PAM module {} is not installed", w.module));
    }
    for (path, what) in needs {
        if !ctx.root.join(path).exists() {
            missing.push(format!("{} is missing: {what}", path.display()));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "{}; not adding {} to {} (a stack naming a missing module fails every login or password change)",
        missing.join("; "),
        w.module,
        w.stack
    );
    if ctx.root.is_live() {
        out.error("pam_prerequisite", w.module, &message);
        false
    } else {
        out.emit(
            "note",
            &json!({"target": w.module, "message": format!("sandbox root: {message}")}),
        );
        true
    }
}

/// A stack file's text; `None` only under a sandbox root without it (on the
/// live host a missing stack reads as empty: every wanted module is missing).
fn read_stack(ctx: &RunCtx<'_>, stack: &str) -> Option<String> {
    match std::fs::read_to_string(ctx.root.join(stack)) {
        Ok(text) => Some(text),
        Err(_) if !ctx.root.is_live() => None,
        Err(_) => Some(String::new()),
    }
}

/// Each wanted module in its stack, through `pam-auth-update --enable`.
fn converge_stacks(
    ctx: &RunCtx<'_>,
    out: &mut Output,
    sel: &mut Selection,
    wanted: &[Wanted],
    profile_changed: bool,
) {
    let mut enable: Vec<&Wanted> = Vec::new();
    for w in wanted {
        let Some(stack) = read_stack(ctx, w.stack) else {
            // A sandbox root without PAM: there is no stack to plan for.
            out.emit(
                "note",
                &json!({"target": w.stack, "message": "no such PAM stack under this root: not planned"}),
            );
            continue;
        };
        let present = stack_has(&stack, w.kind, w.module);
        // A changed profile (new module options) needs pam-auth-update too.
        let needed = !present || (profile_changed && w.profile == UMASK_PROFILE);
        let change = PermsChange::PamEnable {
            target: change_target(w),
            profile: w.profile.to_string(),
        };
        let record = json!({
            "action": "pam_enable",
            "target": change_target(w),
            "profile": w.profile,
            "in_stack": present,
        });
        if !needed {
            out.item("pam", false, &record);
            continue;
        }
        if ctx.applying() && !sel.allows(&change) {
            continue;
        }
        out.item("pam", true, &record);
        enable.push(w);
    }
    if enable.is_empty() || !ctx.applying() {
        return;
    }
    let profiles: Vec<&str> = enable.iter().map(|w| w.profile).collect();
    let cmd = Cmd::new("env")
        .args([
            "DEBIAN_FRONTEND=noninteractive",
            "pam-auth-update",
            "--package",
            "--enable",
        ])
        .args(profiles.iter().copied())
        .host();
    match ctx.runner.run(&cmd) {
        Ok(ran) => {
            out.emit("command", &ran);
            if ran.skipped {
                return;
            }
            if !ran.success() {
                out.error(
                    "pam_auth_update",
                    "pam-auth-update",
                    &format!("{}: {}", ran.argv.join(" "), ran.stderr),
                );
                return;
            }
        }
        Err(e) => {
            out.error(e.kind(), "pam-auth-update", &e.to_string());
            return;
        }
    }
    for w in enable {
        if !stack_has(
            &read_stack(ctx, w.stack).unwrap_or_default(),
            w.kind,
            w.module,
        ) {
            out.error(
                "pam_stack",
                &change_target(w),
                &format!(
                    "pam-auth-update ran but {} still lacks {}: the file was probably edited by hand, and pam-auth-update leaves such files alone; review it, then run `pam-auth-update --force`",
                    w.stack, w.module
                ),
            );
        }
    }
}

/// `umask = false` after it was on: take pam_umask out of the stacks
/// (`pam-auth-update --remove`), then delete our profile.
fn retire_umask_profile(
    ctx: &RunCtx<'_>,
    out: &mut Output,
    sel: &mut Selection,
    profile: &std::path::Path,
) {
    let target = profile.display().to_string();
    if !ctx.root.join(profile).exists() {
        return;
    }
    let change = PermsChange::Remove {
        target: target.clone(),
    };
    let record = json!({"action": "remove", "target": target, "kind": "pam_profile"});
    if ctx.applying() && !sel.allows(&change) {
        return;
    }
    out.item("file", true, &record);
    if !ctx.applying() {
        return;
    }
    let cmd = Cmd::new("env")
        .args([
            "DEBIAN_FRONTEND=noninteractive",
            "pam-auth-update",
            "--package",
            "--remove",
            UMASK_PROFILE,
        ])
        .host();
    match ctx.runner.run(&cmd) {
        Ok(ran) => {
            out.emit("command", &ran);
            if !ran.success() && !ran.skipped {
                out.error(
                    "pam_auth_update",
                    "pam-auth-update",
                    &format!("{}: {}", ran.argv.join(" "), ran.stderr),
                );
                return;
            }
        }
        Err(e) => {
            out.error(e.kind(), "pam-auth-update", &e.to_string());
            return;
        }
    }
    if let Err(e) = bs_core::safefs::remove_file(&ctx.root.join(profile)) {
        out.error(e.kind(), &target, &e.to_string());
    }
}

/// `pwquality = false`: libpam-pwquality's own profile is taken out of the
/// password stack with `pam-auth-update --disable` (remembered: a later
/// package's pam-auth-update run does not bring it back, as it would after
/// `--remove` of a profile that is still installed), then our policy drop-in
/// is deleted. The drop-in stays while the module may still be in the stack:
/// a failed disable keeps the stricter policy, not pwquality's defaults.
fn retire_pwquality(ctx: &RunCtx<'_>, out: &mut Output, sel: &mut Selection) {
    if !disable_pwquality(ctx, out, sel) {
        return;
    }
    let conf = &ctx.config.perms.pam.pwquality_conf;
    if !ctx.root.join(conf).exists() {
        return;
    }
    let target = conf.display().to_string();
    let change = PermsChange::Remove {
        target: target.clone(),
    };
    if ctx.applying() && !sel.allows(&change) {
        return;
    }
    out.item(
        "file",
        true,
        &json!({"action": "remove", "target": target, "kind": "pwquality_conf"}),
    );
    if ctx.applying() {
        if let Err(e) = bs_core::safefs::remove_file(&ctx.root.join(conf)) {
            out.error(e.kind(), &target, &e.to_string());
        }
    }
}

/// pam_pwquality out of common-password; `false` if it may still be there.
fn disable_pwquality(ctx: &RunCtx<'_>, out: &mut Output, sel: &mut Selection) -> bool {
    let w = Wanted {
        profile: PWQUALITY_PROFILE,
        stack: COMMON_PASSWORD,
        kind: "password",
        module: "pam_pwquality.so",
    };
    let Some(stack) = read_stack(ctx, w.stack) else {
        return true;
    };
    if !stack_has(&stack, w.kind, w.module) {
        return true;
    }
    let target = change_target(&w);
    let change = PermsChange::PamDisable {
        target: target.clone(),
        profile: w.profile.to_string(),
    };
    if ctx.applying() && !sel.allows(&change) {
        return false;
    }
    out.item(
        "pam",
        true,
        &json!({"action": "pam_disable", "target": target, "profile": w.profile, "in_stack": true}),
    );
    if !ctx.applying() {
        return true;
    }
    let cmd = Cmd::new("env")
        .args([
            "DEBIAN_FRONTEND=noninteractive",
            "pam-auth-update",
            "--package",
            "--disable",
            PWQUALITY_PROFILE,
        ])
        .host();
    match ctx.runner.run(&cmd) {
        Ok(ran) => {
            out.emit("command", &ran);
            if ran.skipped {
                return true;
            }
            if !ran.success() {
                out.error(
                    "pam_auth_update",
                    "pam-auth-update",
                    &format!("{}: {}", ran.argv.join(" "), ran.stderr),
                );
                return false;
            }
        }
        Err(e) => {
            out.error(e.kind(), "pam-auth-update", &e.to_string());
            return false;
        }
    }
    if stack_has(
        &read_stack(ctx, w.stack).unwrap_or_default(),
        w.kind,
        w.module,
    ) {
        out.error(
            "pam_stack",
            &target,
            &format!(
                "pam-auth-update ran but {} still has {}: the file was probably edited by hand, and pam-auth-update leaves such files alone; review it, then run `pam-auth-update --force`",
                w.stack, w.module
            ),
        );
        return false;
    }
    true
}

fn change_target(w: &Wanted) -> String {
    format!("{}:{}", w.stack, w.module)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_has_sees_only_active_lines_of_the_kind() {
        let text = "# session optional pam_umask.so\nsession\trequired\tpam_unix.so\npassword requisite pam_pwquality.so retry=3\n";
        assert!(!stack_has(text, "session", "pam_umask.so"));
        assert!(stack_has(text, "password", "pam_pwquality.so"));
        assert!(!stack_has(text, "session", "pam_pwquality.so"));
        assert!(stack_has(
            "session optional\t\t\tpam_umask.so nousergroups\n",
            "session",
            "pam_umask.so"
        ));
    }

    #[test]
    fn the_umask_profile_keeps_027_for_users_with_a_private_group() {
        let p = umask_profile("test");
        assert!(p.contains("Session-Type: Additional\n"));
        assert!(p.contains("pam_umask.so nousergroups\n"));
        assert!(p.starts_with("Name: "));
    }
}
