//! bs-perms: privacy trees with owners, modes and POSIX ACLs; least-privilege
//! sudoers.d rules; sshd and login hardening. See docs/bs-perms.md.
//!
//! One module a concern: [`acl`] (the xattr codec), [`walk`] (the fd-based
//! parallel walker), [`trees`] (config -> policy -> records), [`sudoers`],
//! [`login`] (sshd drop-in, login.defs, TMOUT, banner), [`pam`] (pam_umask and
//! pam_pwquality through pam-auth-update profiles), [`files`] (managed
//! whole files with validation before they go live).

pub mod acl;
pub mod cli;
mod error;
pub mod files;
pub mod login;
pub mod pam;
pub mod sudoers;
pub mod trees;
pub mod walk;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use bs_core::cmd::SystemRunner;
use bs_core::plan::{Change, Mode};
use bs_core::Output;

pub use error::PermsError;

use cli::{Cli, Command, WalkArgs};

/// The changes bs-perms makes, as they appear in records (`action` tag).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum PermsChange {
    /// Walk a tree and fix what differs (the `tree` record).
    Walk { target: String },
    /// One path that differs (the `path` record); covered by its tree's walk.
    Fix { target: String },
    /// A directory created (tree top or configured subdirectory).
    Create { target: String },
    /// A whole file written (sudoers.d, sshd drop-in, login.defs, ...).
    Write { target: String, sha256: String },
    /// A file bs installed that the config no longer names.
    Remove { target: String },
    /// A PAM module put into its stack by `pam-auth-update --enable PROFILE`
    /// (the `pam` record; target `STACK:MODULE`).
    PamEnable { target: String, profile: String },
    /// A PAM module taken out of its stack by `pam-auth-update --disable
    /// PROFILE` (a package's profile the config turned off; same record).
    PamDisable { target: String, profile: String },
}

impl Change for PermsChange {
    fn record_type(&self) -> &'static str {
        match self {
            PermsChange::Walk { .. } => "tree",
            PermsChange::Fix { .. } | PermsChange::Create { .. } => "path",
            PermsChange::Write { .. } | PermsChange::Remove { .. } => "file",
            PermsChange::PamEnable { .. } | PermsChange::PamDisable { .. } => "pam",
        }
    }
    fn target(&self) -> String {
        match self {
            PermsChange::Walk { target }
            | PermsChange::Fix { target }
            | PermsChange::Create { target }
            | PermsChange::Write { target, .. }
            | PermsChange::Remove { target }
            | PermsChange::PamEnable { target, .. }
            | PermsChange::PamDisable { target, .. } => target.clone(),
        }
    }
}

/// Which changes this run may make: all of them, or (with `apply --plan`)
/// only those of the given plan that a fresh look still finds needed.
pub struct Selection {
    given: Option<Vec<(PermsChange, bool)>>,
}

impl Selection {
    pub fn all() -> Selection {
        Selection { given: None }
    }

    pub fn only(given: Vec<PermsChange>) -> Selection {
        let given = given
            .into_iter()
            // Per-path records are covered by their tree's `walk`.
            .filter(|c| !matches!(c, PermsChange::Fix { .. } | PermsChange::Create { .. }))
            .map(|c| (c, false))
            .collect();
        Selection { given: Some(given) }
    }

    /// Whether `change`, found needed now, may be made.
    pub fn allows(&mut self, change: &PermsChange) -> bool {
        match &mut self.given {
            None => true,
            Some(given) => match given.iter_mut().find(|(c, _)| c == change) {
                Some((_, seen)) => {
                    *seen = true;
                    true
                }
                None => false,
            },
        }
    }

    /// For a tree: whether the plan asked for its walk.
    pub fn allows_walk(&mut self, target: &str) -> bool {
        self.allows(&PermsChange::Walk {
            target: target.to_string(),
        })
    }

    /// Given changes that are no longer needed or no longer match.
    pub fn stale(&self) -> Vec<PermsChange> {
        match &self.given {
            None => Vec::new(),
            Some(given) => given
                .iter()
                .filter(|(_, seen)| !seen)
                .map(|(c, _)| c.clone())
                .collect(),
        }
    }
}

/// Run one command line; the caller prints the summary.
pub fn run(cli: Cli, out: &mut Output) -> Result<Map<String, Value>, PermsError> {
    let root = cli.global.root()?;
    let config = cli.global.config(&root)?;
    let (mode, walk_args, plan) = match &cli.command {
        Command::Plan(w) => (Mode::Plan, w.clone(), None),
        Command::Check(w) => (Mode::Check, w.clone(), None),
        Command::Apply { apply, walk } => (Mode::Apply, walk.clone(), apply.plan_input()),
        Command::List => return Ok(list(&root, &config, out)),
    };
    out.set_mode(mode);
    let _lock = if mode.mutates() {
        Some(cli.global.lock(&root)?)
    } else {
        None
    };
    let mut selection = match plan {
        Some(input) => Selection::only(input.read::<PermsChange>(out.tool())?),
        None => Selection::all(),
    };
    let runner = SystemRunner::new(&root);
    let mut extra = Map::new();
    let ctx = RunCtx {
        root: &root,
        config: &config,
        mode,
        walk: &walk_args,
        runner: &runner,
    };
    trees::run(&ctx, out, &mut selection, &mut extra);
    sudoers::run(&ctx, out, &mut selection);
    login::run(&ctx, out, &mut selection);
    // After login.defs: pam_umask applies the UMASK written there.
    pam::run(&ctx, out, &mut selection);
    for change in selection.stale() {
        out.emit(
            "skipped",
            &serde_json::json!({
                "target": change.target(),
                "change": change,
                "reason": "in the given plan but not needed (or different) now",
            }),
        );
    }
    Ok(extra)
}

/// What every part of a run needs.
pub struct RunCtx<'a> {
    pub root: &'a bs_core::Root,
    pub config: &'a bs_core::config::Config,
    pub mode: Mode,
    pub walk: &'a WalkArgs,
    pub runner: &'a dyn bs_core::cmd::Runner,
}

impl RunCtx<'_> {
    pub fn applying(&self) -> bool {
        self.mode == Mode::Apply
    }
}

fn list(
    root: &bs_core::Root,
    config: &bs_core::config::Config,
    out: &mut Output,
) -> Map<String, Value> {
    for tree in &config.perms.tree {
        let exists = root.join(&tree.path).is_dir();
        out.emit(
            "tree",
            &serde_json::json!({"target": tree.path, "exists": exists, "config": tree}),
        );
    }
    for name in sudoers::ledger(root).unwrap_or_default() {
        out.emit(
            "sudoers",
            &serde_json::json!({"target": format!("{}/{name}", sudoers::SUDOERS_D), "installed_by": "bs-perms"}),
        );
    }
    Map::new()
}
