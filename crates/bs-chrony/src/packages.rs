//! What the host has: chronyd (needed to validate the config) and whether
//! systemd-timesyncd still runs beside chrony (both would steer the clock).
//!
//! Under a sandbox root the answers are the live host's: the config is
//! validated with the host's chronyd, and systemd knows only the host. The
//! records say so (`seen_on`).

use serde::Serialize;

use bs_core::cmd::Cmd;
use bs_core::config::ServiceManagerKind;
use bs_core::Output;

use crate::Ctx;

#[derive(Serialize)]
struct Package {
    target: &'static str,
    state: String,
    path: String,
    seen_on: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    note: String,
}

/// Emit the `package` records; returns whether chronyd is there.
pub fn report(ctx: &Ctx, out: &mut Output) -> bool {
    let live = ctx.live;
    let seen_on = if live { "root" } else { "live_host" };
    // On a live root the two are the same path; under a sandbox the host's
    // chronyd is the one that validates.
    let chronyd_present = ctx.cfg.chronyd.is_file();
    out.emit(
        "package",
        &Package {
            target: "chrony",
            state: if chronyd_present {
                "installed"
            } else {
                "missing"
            }
            .into(),
            path: ctx.cfg.chronyd.display().to_string(),
            seen_on,
            note: if live {
                String::new()
            } else {
                "sandbox root: the live host's chronyd, which validates the config".into()
            },
        },
    );

    let (state, note) = match ctx.cfg.service_manager {
        ServiceManagerKind::Commands => (
            "unknown".to_string(),
            "service_manager is \"commands\": no systemd to ask".to_string(),
        ),
        ServiceManagerKind::Systemd => {
            let cmd = Cmd::new("systemctl").args(["is-active", "systemd-timesyncd.service"]);
            match ctx.runner.run(&cmd) {
                Ok(r) => {
                    let said = r.stdout.trim();
                    let state = match (said.is_empty(), r.success()) {
                        (false, _) => said.to_string(),
                        (true, true) => "active".to_string(),
                        (true, false) => "unknown".to_string(),
                    };
                    (state, String::new())
                }
                Err(e) => ("unknown".to_string(), format!("cannot ask systemd: {e}")),
            }
        }
    };
    let active = state == "active";
    out.emit(
        "package",
        &Package {
            target: "systemd-timesyncd",
            state,
            path: String::new(),
            seen_on: "live_host",
            note,
        },
    );
    if active && live && ctx.cfg.refclock {
        out.error(
            "timesyncd_active",
            "systemd-timesyncd.service",
            "systemd-timesyncd is active beside chrony and both steer the clock: disable it (installing Debian's chrony package removes it)",
        );
    }
    chronyd_present
}
