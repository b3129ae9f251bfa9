//! `plan` / `apply` / `check`: the queue directories and the systemd units
//! of the poller and the worker (templates in `crates/bs-jobs/units/`).

use std::ffi::OsStr;
use std::path::Path;

use bs_core::cmd::{Cmd, Runner};
use bs_core::config::Config;
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
    /// Write a unit file (new or different).
    WriteUnit { target: String, content: String },
}

impl Change for UnitChange {
    fn record_type(&self) -> &'static str {
        "unit"
    }
    fn target(&self) -> String {
        match self {
            UnitChange::WriteUnit { target, .. } => target.clone(),
        }
    }
}

/// The units as they must be on this backend.
pub fn wanted(config: &Config) -> Vec<(String, String)> {
    let repo = std::fs::canonicalize(&config.repo).unwrap_or_else(|_| config.repo.clone());
    let fill = |t: &str| {
        t.replace("@REPO@", &repo.display().to_string())
            .replace("@BACKEND@", &config.backend.name)
            .replace("@BIN@", "/usr/local/bin/bs-jobs")
            .replace("@INTERVAL@", &config.jobs.poll_interval_secs.to_string())
    };
    vec![
        ("bs-jobs-poller.service".to_string(), fill(POLLER)),
        ("bs-jobs-worker.service".to_string(), fill(WORKER)),
    ]
}

pub fn plan(root: &Root, config: &Config) -> Result<Vec<UnitChange>> {
    let dir = root.join(UNIT_DIR);
    let mut changes = Vec::new();
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
    let fresh = plan(root, config)?;
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
    for change in &changes {
        let UnitChange::WriteUnit { target, content } = change;
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
    // sd_booted(3): without /run/systemd/system systemd is not the init
    // (a container, a chroot); the units are in place for when it is.
    if mode == Mode::Apply && wrote && root.is_live() && !Path::new("/run/systemd/system").exists()
    {
        out.emit(
            "note",
            &serde_json::json!({"target": "systemd", "message": "systemd is not running here: units written, not enabled"}),
        );
    } else if mode == Mode::Apply && wrote {
        let cmds = [
            Cmd::new("systemctl").arg("daemon-reload").host(),
            Cmd::new("systemctl")
                .args([
                    "enable",
                    "--now",
                    "bs-jobs-poller.service",
                    "bs-jobs-worker.service",
                ])
                .host(),
        ];
        for c in cmds {
            let ran = runner.run(&c)?;
            out.emit("command", &ran);
            if !ran.skipped && !ran.success() {
                out.error("command_failed", &c.argv().join(" "), &ran.stderr);
            }
        }
    }
    let _ = Path::new(OsStr::new(""));
    Ok(())
}
