//! Upgrades that never surprise a running job: the unattended-upgrades
//! drop-in that keeps the held packages out of its runs, and the `upgrade`
//! verb. An engine upgrade restarts dockerd and kills every running job
//! (backend-server #283, #335): the engine package is held, `upgrade` leaves
//! it out unless `--engine` is given, and even then refuses while a job
//! container runs.

use serde_json::json;

use bs_core::cmd::Cmd;
use bs_core::validate::Scratch;
use bs_core::Output;

use crate::dpkg::Database;
use crate::files::{self, ManagedFile};
use crate::{apt, RunCtx, Selection};

/// The drop-in: every held package on unattended-upgrades' blacklist (it
/// matches names as regular expressions from the start: the dot is made
/// literal and the end anchored, so `docker.io` does not also match
/// `docker-io-extra`).
pub fn unattended_conf(backend: &str, held: &[String]) -> String {
    let mut text = format!(
        "// Managed by bs-host (backends/{backend}, host.hold): unattended-upgrades\n\
         // leaves these packages alone, as apt's holds do.\n\
         Unattended-Upgrade::Package-Blacklist {{\n"
    );
    for name in held {
        let pattern: String = name
            .chars()
            .map(|c| match c {
                '.' => "[.]".to_string(),
                '+' => "[+]".to_string(),
                c => c.to_string(),
            })
            .collect();
        text.push_str(&format!("    \"^{pattern}$\";\n"));
    }
    text.push_str("};\n");
    text
}

/// `apt-config -c FILE dump`: apt parses the candidate as it would parse
/// the drop-in (a syntax error there would break every apt command).
fn validate(ctx: &RunCtx<'_>, contents: &[u8]) -> files::Validation {
    let scratch = Scratch::new("bs-host").map_err(|e| ("apt_config_validate", e))?;
    let path = scratch
        .write("candidate.conf", contents)
        .map_err(|e| ("apt_config_validate", e.to_string()))?;
    let cmd = Cmd::new("apt-config").args([
        "-c".to_string(),
        path.display().to_string(),
        "dump".to_string(),
    ]);
    match ctx.runner.run(&cmd) {
        Ok(ran) if ran.success() => Ok(()),
        Ok(ran) => Err((
            "apt_config_rejected",
            format!("apt-config refused it: {}", ran.stderr),
        )),
        Err(e) if !ctx.root.is_live() => {
            // A sandbox on a machine without apt: nothing goes live.
            let _ = e;
            Ok(())
        }
        Err(e) => Err(("apt_config_validate", e.to_string())),
    }
}

pub fn converge_conf(ctx: &RunCtx<'_>, out: &mut Output, sel: &mut Selection) {
    let host = &ctx.config.host;
    let file = ManagedFile {
        target: host.unattended_upgrades_conf.display().to_string(),
        contents: unattended_conf(&ctx.config.backend_dir, &host.hold).into_bytes(),
        mode: 0o644,
        kind: "unattended_upgrades",
    };
    files::converge_validated(ctx, out, sel, &file, &mut |b| validate(ctx, b));
}

/// `bs-host upgrade [--engine]`.
pub fn upgrade(ctx: &RunCtx<'_>, out: &mut Output, engine: bool) {
    let host = &ctx.config.host;
    if apt::run(ctx, out, &apt::apt_get(ctx, &["update"]), "apt-get update").is_none() {
        return;
    }
    // Held packages (the engine among them) are kept back by apt itself.
    let done = apt::run(
        ctx,
        out,
        &apt::apt_get(ctx, &["upgrade", "-y", "--no-remove"]),
        "apt-get upgrade",
    );
    // apt's own count: "N upgraded, M newly installed, ...".
    let upgraded = done
        .as_ref()
        .is_some_and(|ran| !ran.skipped && !ran.stdout.contains("0 upgraded, 0 newly installed"));
    out.item(
        "upgrade",
        upgraded,
        &json!({"action": "upgrade", "target": "packages", "ok": done.is_some(), "held_back": host.hold}),
    );
    let name = host.engine_package.as_str();
    if name.is_empty() {
        return;
    }
    let installed = Database::read(ctx.root)
        .ok()
        .flatten()
        .is_some_and(|db| db.installed(name));
    if !installed {
        out.emit(
            "note",
            &json!({"target": name, "message": "the engine package is not installed"}),
        );
        return;
    }
    let pending = engine_upgrade_pending(ctx, out, name);
    if !engine {
        out.item(
            "upgrade",
            false,
            &json!({
                "action": "upgrade_engine",
                "target": name,
                "pending": pending,
                "message": if pending == Some(true) {
                    "an engine upgrade is pending: it restarts the engine and kills every running job; drain the jobs (prepare_for_reboot on the controller), then run `bs-host upgrade --engine`"
                } else {
                    "left out (held); pass --engine to upgrade it"
                },
            }),
        );
        return;
    }
    if pending == Some(false) {
        out.item(
            "upgrade",
            false,
            &json!({"action": "upgrade_engine", "target": name, "pending": false}),
        );
        return;
    }
    match running_jobs(ctx, out) {
        Some(jobs) if jobs.is_empty() => {}
        Some(jobs) => {
            out.error(
                "jobs_running",
                name,
                &format!(
                    "{} job container(s) run ({}): an engine upgrade would kill them; not upgrading {name}",
                    jobs.len(),
                    jobs.join(", ")
                ),
            );
            return;
        }
        None => return,
    }
    let cmd = apt::apt_get(
        ctx,
        &[
            "install",
            "-y",
            "--only-upgrade",
            "--no-remove",
            "--allow-change-held-packages",
            "--",
            name,
        ],
    );
    let ok = apt::run(ctx, out, &cmd, name).is_some();
    // Held again whatever happened: the next automatic upgrade must skip it.
    apt::run(ctx, out, &apt::apt_mark(&["hold", "--", name]), name);
    out.item(
        "upgrade",
        ok,
        &json!({"action": "upgrade_engine", "target": name, "pending": true}),
    );
}

/// Whether apt has a newer candidate than the installed version
/// (`apt-cache policy`); `None` when that could not be told.
fn engine_upgrade_pending(ctx: &RunCtx<'_>, out: &mut Output, name: &str) -> Option<bool> {
    let cmd = Cmd::new("apt-cache").args(["policy", "--", name]).host();
    let ran = apt::run(ctx, out, &cmd, name)?;
    if ran.skipped {
        return None;
    }
    let field = |key: &str| {
        ran.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().to_string()))
    };
    match (field("Installed:"), field("Candidate:")) {
        (Some(i), Some(c)) if c != "(none)" => Some(i != c),
        _ => None,
    }
}

/// The names of running job containers; `None` (with an error record) when
/// the engine cannot be asked: then nothing is upgraded.
fn running_jobs(ctx: &RunCtx<'_>, out: &mut Output) -> Option<Vec<String>> {
    let host = &ctx.config.host;
    let filter = format!("label={}", host.job_container_label);
    let cmd = Cmd::new(host.docker.display().to_string())
        .args(["ps", "--filter", filter.as_str(), "--format", "{{.Names}}"])
        .host();
    match ctx.runner.run(&cmd) {
        Ok(ran) if ran.success() => Some(
            ran.stdout
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect(),
        ),
        Ok(ran) if ran.skipped => Some(Vec::new()),
        Ok(ran) => {
            out.error(
                "engine_unreachable",
                "docker ps",
                &format!(
                    "cannot tell whether job containers run ({}); not upgrading the engine",
                    ran.stderr
                ),
            );
            None
        }
        Err(e) => {
            out.error(
                e.kind(),
                "docker ps",
                &format!("{e}; cannot tell whether job containers run: not upgrading the engine"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blacklist_matches_exactly_the_held_names() {
        let text = unattended_conf("tpp", &["docker.io".into(), "libstdc++6".into()]);
        assert!(text.contains("\"^docker[.]io$\";\n"), "{text}");
        assert!(text.contains("\"^libstdc[+][+]6$\";\n"), "{text}");
        assert!(text.starts_with("// Managed by bs-host"));
    }
}
