//! `plan` / `apply` / `check`: the queue directories, the config snapshot
//! and the systemd units of the poller and the worker (templates in
//! `crates/bs-jobs/units/`).
//!
//! The units run long after `just manage` and must not read the operator's
//! checkout (deleted, moved, or in a home the service account cannot read):
//! their `BS_REPO` is the config snapshot under `/var/lib/bs/repo`
//! ([`bs_core::config::snapshot`]), which every apply refreshes first.

use bs_core::cmd::{Cmd, Runner};
use bs_core::config::{Config, Snapshot, SNAPSHOT_DIR};
use bs_core::plan::{Change, Mode};
use bs_core::safefs::{self, FileSpec};
use bs_core::{Output, Root};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::queue::Queue;

pub const UNIT_DIR: &str = "/etc/systemd/system";
const POLLER: &str = include_str!("../units/bs-jobs-poller.service");
const WORKER: &str = include_str!("../units/bs-jobs-worker.service");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum UnitChange {
    /// Write a file of the config snapshot (new or different). The content
    /// is part of the change, so `apply --plan` skips it when the checkout
    /// changed since the plan.
    WriteSnapshot {
        target: String,
        source: String,
        content: String,
    },
    /// Write a unit file (new or different).
    WriteUnit { target: String, content: String },
}

impl Change for UnitChange {
    fn record_type(&self) -> &'static str {
        match self {
            UnitChange::WriteSnapshot { .. } => "snapshot",
            UnitChange::WriteUnit { .. } => "unit",
        }
    }
    fn target(&self) -> String {
        match self {
            UnitChange::WriteSnapshot { target, .. } | UnitChange::WriteUnit { target, .. } => {
                target.clone()
            }
        }
    }
}

/// The units as they must be on this backend: they read the snapshot (a
/// system path: the units are the root's, like `@BIN@`), never the checkout.
pub fn wanted(config: &Config) -> Vec<(String, String)> {
    let fill = |t: &str| {
        t.replace("@REPO@", SNAPSHOT_DIR)
            .replace("@BACKEND@", &config.backend_dir)
            .replace("@BIN@", "/usr/local/bin/bs-jobs")
            .replace("@INTERVAL@", &config.jobs.poll_interval_secs.to_string())
    };
    vec![
        ("bs-jobs-poller.service".to_string(), fill(POLLER)),
        ("bs-jobs-worker.service".to_string(), fill(WORKER)),
    ]
}

/// Snapshot files first: the units must never point at a snapshot that is
/// not there yet.
pub fn plan(root: &Root, config: &Config, snapshot: &Snapshot) -> Result<Vec<UnitChange>> {
    let mut changes = Vec::new();
    for file in snapshot.stale(root)? {
        changes.push(UnitChange::WriteSnapshot {
            target: file.target(),
            source: file.source.display().to_string(),
            content: file.content.clone(),
        });
    }
    let dir = root.join(UNIT_DIR);
    for (name, content) in wanted(config) {
        let path = dir.join(&name);
        let have = std::fs::read_to_string(&path).ok();
        if have.as_deref() != Some(content.as_str()) {
            changes.push(UnitChange::WriteUnit {
                target: root.display_path(&path),
                content,
            });
        }
    }
    Ok(changes)
}

/// plan / apply / check of the units; apply also creates the queue.
pub fn converge(
    root: &Root,
    config: &Config,
    out: &mut Output,
    mode: Mode,
    given: Option<Vec<UnitChange>>,
    runner: &dyn Runner,
) -> Result<()> {
    out.set_mode(mode);
    let snap = Snapshot::capture(&config.source(), root)?;
    let fresh = plan(root, config, &snap)?;
    let changes = match given {
        Some(g) => {
            let (apply, stale) = bs_core::plan::still_needed(fresh, g);
            for s in stale {
                out.emit("skipped", &serde_json::json!({"target": s.target(), "reason": "no longer needed or changed since the plan"}));
            }
            apply
        }
        None => fresh,
    };
    if mode == Mode::Apply {
        let queue = Queue::open(root, &config.jobs.state_dir)?;
        out.item(
            "queue",
            false,
            &serde_json::json!({"action": "none", "target": root.display_path(queue.path())}),
        );
    }
    let mut wrote = false;
    // Only the snapshot files the (possibly given) plan still names.
    let stale: Vec<_> = snap
        .files()
        .iter()
        .filter(|f| {
            changes
                .iter()
                .any(|c| matches!(c, UnitChange::WriteSnapshot { .. }) && c.target() == f.target())
        })
        .collect();
    let snapshot_wrote = snap.converge(root, mode, &stale, out)?;
    for change in &changes {
        let UnitChange::WriteUnit { target, content } = change else {
            continue;
        };
        if mode == Mode::Apply {
            let path = root.join(target);
            if let Some(parent) = path.parent() {
                safefs::ensure_dir_all(parent, &FileSpec::root(0o755))?;
            }
            let (dir, name) = safefs::split(&path)?;
            safefs::DirFd::open(dir)?.write_file(
                name,
                content.as_bytes(),
                &FileSpec::root(0o644),
            )?;
            wrote = true;
        }
        out.item(
            change.record_type(),
            true,
            &serde_json::json!({"action": "write_unit", "target": target, "content": content}),
        );
    }
    for (name, _) in wanted(config) {
        let target = root.display_path(&root.join(UNIT_DIR).join(&name));
        if !changes.iter().any(|c| c.target() == target) {
            out.item(
                "unit",
                false,
                &serde_json::json!({"action": "none", "target": target}),
            );
        }
    }
    // The services read their config (the snapshot, their unit) once, at
    // start. The poller is restarted to pick a change up: it only talks to
    // the job server and the queue on disk, so nothing is lost. The worker
    // is not: restarting it re-runs every job it is running; it takes the
    // change at its next start.
    let config_changed = snapshot_wrote || wrote;
    if config_changed {
        out.emit(
            "note",
            &serde_json::json!({"target": "bs-jobs-worker.service",
                "message": "the config changed: a worker already running uses it from its next start (restarting it now would re-run its running jobs)"}),
        );
    }
    // Not systemd's machine (a container, a chroot): the units are in
    // place for when it is.
    let no_systemd = root.is_live() && !bs_core::cmd::systemd_is_init();
    if mode == Mode::Apply && no_systemd {
        if wrote {
            out.emit(
                "note",
                &serde_json::json!({"target": "systemd", "message": "systemd is not running here: units written, not enabled"}),
            );
        }
    } else if mode == Mode::Apply && config_changed {
        let mut cmds = Vec::new();
        if wrote {
            cmds.push(Cmd::new("systemctl").arg("daemon-reload").host());
            cmds.push(
                Cmd::new("systemctl")
                    .args([
                        "enable",
                        "--now",
                        "bs-jobs-poller.service",
                        "bs-jobs-worker.service",
                    ])
                    .host(),
            );
        }
        // try-restart: only if it runs (enable --now just started it if not).
        cmds.push(
            Cmd::new("systemctl")
                .args(["try-restart", "bs-jobs-poller.service"])
                .host(),
        );
        for c in cmds {
            let ran = runner.run(&c)?;
            out.emit("command", &ran);
            if !ran.skipped && !ran.success() {
                out.error("command_failed", &c.argv().join(" "), &ran.stderr);
            }
        }
    }
    Ok(())
}
