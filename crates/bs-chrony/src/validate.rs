//! `chronyd -p -f FILE` on the complete resulting config before any of it
//! goes live. chronyd only parses (it opens no device, binds nothing and
//! leaves the clock alone) and prints the directives it read, includes
//! expanded, which tells us which `makestep` wins.
//!
//! For the drop-in placement the live drop-in must not be the one checked:
//! a scratch directory gets a copy of conf.d with the new drop-in in place
//! of the live one, and a copy of the new chrony.conf whose including
//! directive points there.

use std::path::Path;

use bs_core::cmd::Cmd;

use crate::conf::{self, Desired, DROPIN_NAME};
use crate::Ctx;

/// The lines chronyd printed, or why the config does not parse.
pub fn check(ctx: &Ctx, desired: &Desired) -> Result<String, String> {
    let scratch = bs_core::validate::Scratch::new("bs-chrony-check")
        .map_err(|e| format!("cannot make a scratch directory: {e}"))?;
    let scratch_conf_d = scratch.path().join("conf.d");
    std::fs::create_dir(&scratch_conf_d)
        .map_err(|e| format!("{}: {e}", scratch_conf_d.display()))?;
    let live_conf_d = ctx.root.join(&ctx.cfg.conf_d);
    if let Ok(entries) = std::fs::read_dir(&live_conf_d) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name == DROPIN_NAME || bs_core::safefs::is_temp_name(&name) {
                continue;
            }
            // conf.d is root's: what chronyd would read, links followed.
            if entry.path().is_file() {
                std::fs::copy(entry.path(), scratch_conf_d.join(&name))
                    .map_err(|e| format!("{}: {e}", entry.path().display()))?;
            }
        }
    }
    if let Some(dropin) = &desired.dropin {
        std::fs::write(scratch_conf_d.join(DROPIN_NAME), dropin)
            .map_err(|e| format!("scratch drop-in: {e}"))?;
    }
    let root = ctx.root.clone();
    let under_root = move |p: &Path| root.join(p);
    let main = conf::for_validation(&desired.main, &ctx.cfg.conf_d, &scratch_conf_d, &under_root);
    let main_path = scratch.path().join("chrony.conf");
    std::fs::write(&main_path, main).map_err(|e| format!("scratch chrony.conf: {e}"))?;

    let cmd = Cmd::new(ctx.cfg.chronyd.display().to_string())
        .args(["-p", "-f"])
        .arg(main_path.display().to_string());
    match ctx.runner.run(&cmd) {
        Ok(r) if r.success() => Ok(r.stdout),
        Ok(r) => {
            // Name the files the operator knows, not the scratch copies.
            let said = r
                .stderr
                .replace(
                    &scratch_conf_d.display().to_string(),
                    &ctx.cfg.conf_d.display().to_string(),
                )
                .replace(
                    &main_path.display().to_string(),
                    &ctx.cfg.conf.display().to_string(),
                );
            Err(format!(
                "chronyd rejects the config (exit {:?}): {said}",
                r.status
            ))
        }
        Err(e) => Err(format!("cannot validate the config: {e}")),
    }
}
