//! bs-host: the host baseline the original install scripts kept. See
//! docs/bs-host.md.
//!
//! One module a concern: [`dpkg`] (the package database, read from its
//! status file), [`apt`] (apt-get and apt-mark from argv, locks and output),
//! [`packages`] (present, purged, held), [`upgrades`] (the unattended-upgrades
//! drop-in and the `upgrade` verb), [`hosts`] (the managed block of
//! /etc/hosts and of cloud-init's template), [`motd`], [`services`],
//! [`files`] (managed whole files, written atomically).

pub mod apt;
pub mod cli;
pub mod dpkg;
mod error;
pub mod files;
pub mod hosts;
pub mod motd;
pub mod packages;
pub mod services;
pub mod upgrades;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use bs_core::cmd::{Runner, SystemRunner};
use bs_core::config::Config;
use bs_core::plan::{Change, Mode};
use bs_core::{Output, Root};

pub use error::HostError;

use cli::{Cli, Command};

/// The changes bs-host makes, as they appear in records (`action` tag).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum HostChange {
    /// `apt-get install` a configured package that is not installed.
    Install { target: String },
    /// `apt-get purge` a package the config says must not be there.
    Purge { target: String },
    /// `apt-mark hold` an installed package the config holds.
    Hold { target: String },
    /// A whole file written, or a managed block within one.
    Write { target: String, sha256: String },
    /// A motd script made non-executable.
    Silence { target: String },
    /// A systemd unit disabled.
    Disable { target: String },
}

impl Change for HostChange {
    fn record_type(&self) -> &'static str {
        match self {
            HostChange::Install { .. } | HostChange::Purge { .. } | HostChange::Hold { .. } => {
                "package"
            }
            HostChange::Write { .. } => "file",
            HostChange::Silence { .. } => "motd_script",
            HostChange::Disable { .. } => "service",
        }
    }
    fn target(&self) -> String {
        match self {
            HostChange::Install { target }
            | HostChange::Purge { target }
            | HostChange::Hold { target }
            | HostChange::Write { target, .. }
            | HostChange::Silence { target }
            | HostChange::Disable { target } => target.clone(),
        }
    }
}

/// Which changes this run may make: all, or (with `apply --plan`) only those
/// of the given plan that a fresh look still finds needed.
pub struct Selection {
    given: Option<Vec<(HostChange, bool)>>,
}

impl Selection {
    pub fn all() -> Selection {
        Selection { given: None }
    }

    pub fn only(given: Vec<HostChange>) -> Selection {
        Selection {
            given: Some(given.into_iter().map(|c| (c, false)).collect()),
        }
    }

    /// Whether `change`, found needed now, may be made.
    pub fn allows(&mut self, change: &HostChange) -> bool {
        match &mut self.given {
            None => true,
            Some(given) => match given.iter_mut().find(|(c, seen)| c == change && !*seen) {
                Some((_, seen)) => {
                    *seen = true;
                    true
                }
                None => false,
            },
        }
    }

    /// Given changes that are no longer needed or no longer match.
    pub fn stale(&self) -> Vec<HostChange> {
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

/// What every part of a run needs.
pub struct RunCtx<'a> {
    pub root: &'a Root,
    pub config: &'a Config,
    pub mode: Mode,
    pub runner: &'a dyn Runner,
}

impl RunCtx<'_> {
    pub fn applying(&self) -> bool {
        self.mode == Mode::Apply
    }
}

/// One item of the plan: record it, and say whether to make it now.
/// Unchanged items are recorded as such; a needed change is recorded (as a
/// plan entry, as drift, or as done) unless `apply --plan` left it out.
pub fn decide(
    ctx: &RunCtx<'_>,
    out: &mut Output,
    sel: &mut Selection,
    change: &HostChange,
    needed: bool,
    mut record: Value,
) -> bool {
    let mut body = serde_json::to_value(change).unwrap_or(Value::Null);
    if let (Value::Object(b), Value::Object(extra)) = (&mut body, record.take()) {
        for (k, v) in extra {
            b.entry(k).or_insert(v);
        }
    }
    if !needed {
        out.item(change.record_type(), false, &body);
        return false;
    }
    if ctx.applying() && !sel.allows(change) {
        return false;
    }
    out.item(change.record_type(), true, &body);
    ctx.applying()
}

/// Run one command line; the caller prints the summary.
pub fn run(cli: Cli, out: &mut Output) -> Result<Map<String, Value>, HostError> {
    let root = cli.global.root()?;
    let config = cli.global.config(&root)?;
    let runner = SystemRunner::new(&root);
    let (mode, plan) = match &cli.command {
        Command::Plan => (Mode::Plan, None),
        Command::Check => (Mode::Check, None),
        Command::Apply(a) => (Mode::Apply, a.plan_input()),
        Command::Status => return Ok(status(&root, &config, out)),
        Command::Whereami => return Ok(whereami(&config, out)),
        Command::Upgrade { engine } => {
            let _lock = cli.global.lock(&root)?;
            let ctx = RunCtx {
                root: &root,
                config: &config,
                mode: Mode::Apply,
                runner: &runner,
            };
            upgrades::upgrade(&ctx, out, *engine);
            return Ok(Map::new());
        }
    };
    out.set_mode(mode);
    let _lock = if mode.mutates() {
        Some(cli.global.lock(&root)?)
    } else {
        None
    };
    let mut selection = match plan {
        Some(input) => Selection::only(input.read::<HostChange>(out.tool())?),
        None => Selection::all(),
    };
    let ctx = RunCtx {
        root: &root,
        config: &config,
        mode,
        runner: &runner,
    };
    converge(&ctx, out, &mut selection);
    for change in selection.stale() {
        out.emit(
            "skipped",
            &json!({
                "target": change.target(),
                "change": change,
                "reason": "in the given plan but not needed (or different) now",
            }),
        );
    }
    Ok(Map::new())
}

/// Every part, in order: packages first (later parts may need them), then
/// the files, the motd and the services.
pub fn converge(ctx: &RunCtx<'_>, out: &mut Output, sel: &mut Selection) {
    if !ctx.config.host.enabled {
        out.emit(
            "note",
            &json!({"target": "host", "message": "host.enabled is false: nothing managed"}),
        );
        return;
    }
    packages::run(ctx, out, sel);
    upgrades::converge_conf(ctx, out, sel);
    hosts::run(ctx, out, sel);
    motd::run(ctx, out, sel);
    services::run(ctx, out, sel);
    backend_profile(ctx, out, sel);
}

/// The snippet that gives every login shell `BACKEND` (the backend's
/// directory name, what `just manage` takes); safe to source: the name is
/// checked to be `[a-z0-9_-]+` when the config loads.
pub fn profile_text(backend: &str) -> String {
    format!("# Managed by bs-host: the backend this host is.\nBACKEND={backend}\nexport BACKEND\n")
}

fn backend_profile(ctx: &RunCtx<'_>, out: &mut Output, sel: &mut Selection) {
    let file = files::ManagedFile {
        target: ctx.config.host.backend_profile.display().to_string(),
        contents: profile_text(&ctx.config.backend_dir).into_bytes(),
        mode: 0o644,
        kind: "backend_profile",
    };
    files::converge(ctx, out, sel, &file);
}

fn whereami(config: &Config, out: &mut Output) -> Map<String, Value> {
    out.emit(
        "whereami",
        &json!({
            "target": config.backend_dir,
            "backend": config.backend_dir,
            "name": config.backend.name,
            "description": config.backend.description,
        }),
    );
    Map::new()
}

fn status(root: &Root, config: &Config, out: &mut Output) -> Map<String, Value> {
    let host = &config.host;
    match dpkg::Database::read(root) {
        Ok(Some(db)) => {
            let mut names: Vec<&String> = host
                .packages
                .iter()
                .chain(&host.purge)
                .chain(&host.hold)
                .collect();
            names.sort();
            names.dedup();
            for name in names {
                let pkg = db.get(name);
                out.emit(
                    "package",
                    &json!({
                        "target": name,
                        "installed": pkg.is_some_and(|p| p.installed()),
                        "held": pkg.is_some_and(|p| p.held()),
                        "version": pkg.map(|p| p.version.clone()).unwrap_or_default(),
                    }),
                );
            }
        }
        Ok(None) => out.emit(
            "note",
            &json!({"target": dpkg::STATUS, "message": "no dpkg database under this root"}),
        ),
        Err(e) => out.core_error(&e),
    }
    for unit in &host.disable_services {
        let links = services::enabling_links(root, unit);
        out.emit(
            "service",
            &json!({"target": unit, "enabled": !links.is_empty(), "links": links}),
        );
    }
    for path in [&host.hosts_file, &host.cloud_hosts_template] {
        let text = std::fs::read_to_string(root.join(path)).ok();
        out.emit(
            "hosts",
            &json!({
                "target": path,
                "exists": text.is_some(),
                "block": text.as_deref().map(hosts::has_block).unwrap_or(false),
            }),
        );
    }
    Map::new()
}
