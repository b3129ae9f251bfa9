//! systemd units that must not start at boot (rsync's daemon, which Debian
//! and Ubuntu enable on install). A unit is enabled by the links to it in
//! the `*.wants/` and `*.requires/` directories of /etc/systemd/system; on a
//! host where systemd is the init, `systemctl disable --now` removes them
//! (and stops the unit); elsewhere (a sandbox root, a container) bs-host
//! removes the links itself, which is what `systemctl disable` does.

use std::ffi::OsStr;
use std::path::PathBuf;

use serde_json::json;

use bs_core::cmd::{systemd_is_init, Cmd};
use bs_core::safefs::{DirFd, Kind};
use bs_core::{Output, Root};

use crate::{decide, HostChange, RunCtx, Selection};

pub const UNIT_DIR: &str = "/etc/systemd/system";

/// The links that enable `unit` (system paths).
pub fn enabling_links(root: &Root, unit: &str) -> Vec<String> {
    let mut links = Vec::new();
    let Ok(dir) = DirFd::open(&root.join(UNIT_DIR)) else {
        return links;
    };
    let Ok(entries) = dir.entries() else {
        return links;
    };
    let mut names: Vec<_> = entries
        .into_iter()
        .filter(|(name, kind)| {
            let n = name.to_string_lossy();
            *kind == Kind::Dir && (n.ends_with(".wants") || n.ends_with(".requires"))
        })
        .map(|(name, _)| name)
        .collect();
    names.sort();
    for sub in names {
        let Ok(d) = dir.open_subdir(&sub) else {
            continue;
        };
        if let Ok(Some(st)) = d.stat_at(OsStr::new(unit)) {
            if Kind::of(&st) == Kind::Symlink {
                links.push(
                    PathBuf::from(UNIT_DIR)
                        .join(&sub)
                        .join(unit)
                        .display()
                        .to_string(),
                );
            }
        }
    }
    links
}

pub fn run(ctx: &RunCtx<'_>, out: &mut Output, sel: &mut Selection) {
    for unit in &ctx.config.host.disable_services {
        let links = enabling_links(ctx.root, unit);
        let change = HostChange::Disable {
            target: unit.clone(),
        };
        let record = json!({"links": links});
        if !decide(ctx, out, sel, &change, !links.is_empty(), record) {
            continue;
        }
        if ctx.root.is_live() && systemd_is_init() {
            let cmd = Cmd::new("systemctl")
                .args(["disable", "--now", "--", unit.as_str()])
                .host();
            match ctx.runner.run(&cmd) {
                Ok(ran) => {
                    out.emit("command", &ran);
                    if !ran.success() {
                        out.error(
                            "systemctl",
                            unit,
                            &format!("{}: {}", ran.argv.join(" "), ran.stderr),
                        );
                    }
                }
                Err(e) => out.error(e.kind(), unit, &e.to_string()),
            }
            continue;
        }
        for link in &links {
            let host = ctx.root.join(link);
            if let Err(e) = bs_core::safefs::remove_file(&host) {
                out.error(e.kind(), link, &e.to_string());
            }
        }
    }
}
