//! bs-chrony: the Hyper-V PTP refclock for chrony, ordered restarts of the
//! services that depend on the clock, and the clock's status as JSON Lines.
//! Records, config keys and exit codes: docs/bs-chrony.md.

pub mod cli;
pub mod conf;
pub mod detect;
pub mod packages;
pub mod restart;
pub mod status;
mod validate;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use bs_core::cli::Report;
use bs_core::cmd::{Runner, SystemRunner};
use bs_core::config::ChronyConfig;
use bs_core::plan::{still_needed, Change, Mode};
use bs_core::safefs::{self, FileSpec};
use bs_core::{CoreError, Exit, Output, Root};

use cli::{Cli, Verb};
use conf::{Desired, Placement, DROPIN_NAME};

pub const TOOL: &str = "bs-chrony";

/// Set while a config change has not yet been followed by a successful
/// chrony restart (live root only): a run that wrote the config but could
/// not restart chrony leaves it, and the next run restarts chrony even
/// though the files are already right.
pub const PENDING: &str = "/var/lib/bs/chrony/restart-pending";

/// An error that ends a run (item failures are error records instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl Report for Error {
    fn exit(&self) -> Exit {
        match self {
            Error::Core(e) => e.exit(),
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            Error::Core(e) => e.kind(),
        }
    }
    fn target(&self) -> String {
        match self {
            Error::Core(e) => e.target(),
        }
    }
}

/// One change bs-chrony makes: the same data is the record, the plan and
/// the input of `apply --plan`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ChronyChange {
    /// Write a config file (chrony.conf or the drop-in) with the content
    /// whose sha256 is given.
    Write {
        target: String,
        placement: Placement,
        sha256: String,
    },
    /// Remove our drop-in (the refclock is no longer wanted, or it moved
    /// into a marked block).
    Remove { target: String },
    /// The ordered restart of chrony.
    Restart { target: String, reason: String },
}

impl Change for ChronyChange {
    fn record_type(&self) -> &'static str {
        match self {
            ChronyChange::Restart { .. } => "restart",
            _ => "chrony_conf",
        }
    }
    fn target(&self) -> String {
        match self {
            ChronyChange::Write { target, .. }
            | ChronyChange::Remove { target }
            | ChronyChange::Restart { target, .. } => target.clone(),
        }
    }
}

/// What a run works with; tests build one with a recording runner.
pub struct Ctx<'a> {
    pub root: &'a Root,
    pub cfg: &'a ChronyConfig,
    pub runner: &'a dyn Runner,
    /// Whether the root is the running host, whose chronyd is restarted
    /// after a change (`root.is_live()`; tests of the restart bookkeeping
    /// set it on a sandbox with a recording runner).
    pub live: bool,
    /// Whether systemd is this machine's init (`bs_core::cmd::systemd_is_init`;
    /// tests of the systemd path on a machine without it set it).
    pub systemd_is_init: bool,
}

impl Ctx<'_> {
    fn conf_path(&self) -> PathBuf {
        self.root.join(&self.cfg.conf)
    }
    fn dropin_path(&self) -> PathBuf {
        self.root.join(self.cfg.conf_d.join(DROPIN_NAME))
    }
    fn dropin_target(&self) -> String {
        self.cfg.conf_d.join(DROPIN_NAME).display().to_string()
    }
    fn pending_path(&self) -> PathBuf {
        self.root.join(PENDING)
    }
}

pub fn run(cli: Cli, out: &mut Output) -> Result<Map<String, Value>, Error> {
    let root = cli.global.root()?;
    let config = cli.global.config(&root)?;
    let runner = SystemRunner::new(&root);
    let ctx = Ctx {
        root: &root,
        cfg: &config.chrony,
        runner: &runner,
        live: root.is_live(),
        systemd_is_init: bs_core::cmd::systemd_is_init(),
    };
    match cli.verb {
        Verb::Plan => {
            out.set_mode(Mode::Plan);
            converge(&ctx, Mode::Plan, None, out)?;
        }
        Verb::Apply(args) => {
            out.set_mode(Mode::Apply);
            let given = args
                .plan_input()
                .map(|p| p.read::<ChronyChange>(TOOL))
                .transpose()?;
            let _lock = cli.global.lock(&root)?;
            converge(&ctx, Mode::Apply, given, out)?;
        }
        Verb::Check => {
            out.set_mode(Mode::Check);
            converge(&ctx, Mode::Check, None, out)?;
            // Under a sandbox root the only chronyd around is the host's,
            // which is not what the sandbox is about, unless a chronyd to
            // ask was named explicitly.
            if !ctx.cfg.check_clock {
                out.emit(
                    "clock_skipped",
                    &serde_json::json!({"target": ctx.cfg.service,
                        "reason": "[chrony] check_clock = false: chrony is not this host's clock service"}),
                );
            } else if !ctx.live && ctx.cfg.chronyc_host.is_empty() {
                out.emit(
                    "clock_skipped",
                    &serde_json::json!({"target": ctx.cfg.service,
                        "reason": "sandbox root: the clock is the live host's (set chronyc_host to ask a chronyd)"}),
                );
            } else if let Some(clock) = clock(&ctx, out) {
                if !clock.problems.is_empty() {
                    out.raise(Exit::Drift);
                }
            }
        }
        Verb::Status => {
            clock(&ctx, out);
        }
    }
    Ok(Map::new())
}

/// Read the clock from chronyd and emit `source` records and the `clock`
/// record. `None` (after an error record) when chronyd cannot be asked.
pub fn clock(ctx: &Ctx, out: &mut Output) -> Option<status::Clock> {
    let mut ask = |what: &str| -> Option<String> {
        let cmd = restart::chronyc(ctx.cfg, &[what]);
        match ctx.runner.run(&cmd) {
            Ok(r) if r.success() => Some(r.stdout),
            Ok(r) => {
                let msg = format!(
                    "`{}` failed (exit {:?}): {}",
                    cmd.argv().join(" "),
                    r.status,
                    r.stderr
                );
                out.error("chronyc_failed", &ctx.cfg.service, &msg);
                None
            }
            Err(e) => {
                out.error("chronyc_failed", &ctx.cfg.service, &e.to_string());
                None
            }
        }
    };
    let tracking = ask("tracking")?;
    let sources = ask("sources")?;
    let parsed =
        status::parse_tracking(&tracking).and_then(|t| Ok((t, status::parse_sources(&sources)?)));
    match parsed {
        Ok((tracking, sources)) => {
            for s in &sources {
                out.emit("source", s);
            }
            let clock = status::evaluate(ctx.cfg, tracking, &sources);
            out.emit("clock", &clock);
            Some(clock)
        }
        Err(e) => {
            out.error(
                "chronyc_output",
                &ctx.cfg.service,
                &format!("cannot read chronyc's output: {e}"),
            );
            None
        }
    }
}

fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn read_optional(path: &Path) -> Result<Option<String>, CoreError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CoreError::io(path, e)),
    }
}

/// The plan: the changes, and the contents they would write.
struct Planned {
    changes: Vec<ChronyChange>,
    desired: Desired,
}

#[derive(Serialize)]
struct Unchanged<'a> {
    action: &'static str,
    target: String,
    placement: &'a Placement,
}

/// Packages, detection, the config files and the restart. Item failures are
/// error records (exit 1); only a broken run returns `Err`.
pub fn converge(
    ctx: &Ctx,
    mode: Mode,
    given: Option<Vec<ChronyChange>>,
    out: &mut Output,
) -> Result<(), Error> {
    let chronyd_present = packages::report(ctx, out);
    let Some(planned) = plan(ctx, chronyd_present, out)? else {
        return Ok(());
    };
    let mut changes = planned.changes;
    if let Some(given) = given {
        let (apply, stale) = still_needed(changes, given);
        for change in stale {
            out.emit(
                "stale",
                &serde_json::json!({"target": change.target(), "change": change,
                    "message": "in the plan given, but not needed any more: skipped"}),
            );
        }
        changes = apply;
    }
    if mode != Mode::Apply {
        for change in &changes {
            out.item(change.record_type(), true, change);
        }
        return Ok(());
    }
    apply(ctx, &changes, &planned.desired, out)
}

fn plan(ctx: &Ctx, chronyd_present: bool, out: &mut Output) -> Result<Option<Planned>, Error> {
    let cfg = ctx.cfg;
    if cfg.refclock {
        let det = detect::detect(ctx.root, &cfg.device);
        out.emit("device", &det);
        if !det.found {
            out.error(
                "device_missing",
                &det.target,
                &format!(
                    "the refclock is wanted but there is no {} and no PTP clock named hyperv in /sys/class/ptp: nothing changed",
                    det.target
                ),
            );
            return Ok(None);
        }
        if !chronyd_present {
            out.error(
                "chrony_missing",
                &cfg.chronyd.display().to_string(),
                "chronyd is not installed, so the config cannot be validated: nothing changed (install chrony first)",
            );
            return Ok(None);
        }
    }
    let conf_path = ctx.conf_path();
    let conf_target = cfg.conf.display().to_string();
    let Some(main) = read_optional(&conf_path)? else {
        if cfg.refclock {
            out.error(
                "chrony_conf_missing",
                &conf_target,
                "chrony.conf does not exist (is chrony installed?): nothing changed",
            );
        }
        return Ok(None);
    };
    let desired = match conf::desired(cfg, &main) {
        Ok(d) => d,
        Err(e) => {
            out.error(
                "chrony_conf_block",
                &conf_target,
                &format!("{e}; nothing changed"),
            );
            return Ok(None);
        }
    };
    let dropin_target = ctx.dropin_target();
    let current_dropin = read_optional(&ctx.dropin_path())?;
    let mut changes = Vec::new();
    match (&desired.dropin, &current_dropin) {
        (Some(want), have) if have.as_ref() != Some(want) => changes.push(ChronyChange::Write {
            target: dropin_target,
            placement: Placement::Dropin,
            sha256: sha256(want),
        }),
        (None, Some(_)) => changes.push(ChronyChange::Remove {
            target: dropin_target,
        }),
        (Some(_), _) => out.item(
            "chrony_conf",
            false,
            &Unchanged {
                action: "none",
                target: dropin_target,
                placement: &Placement::Dropin,
            },
        ),
        (None, None) => {}
    }
    if desired.main != main {
        changes.push(ChronyChange::Write {
            target: conf_target,
            placement: desired.placement,
            sha256: sha256(&desired.main),
        });
    } else {
        out.item(
            "chrony_conf",
            false,
            &Unchanged {
                action: "none",
                target: conf_target,
                placement: &desired.placement,
            },
        );
    }
    let pending = ctx.live && ctx.pending_path().exists();
    if !changes.is_empty() || pending {
        let reason = if changes.is_empty() {
            "an earlier run changed the config but did not restart chrony"
        } else {
            "the config changes"
        };
        changes.push(ChronyChange::Restart {
            target: cfg.service.clone(),
            reason: reason.into(),
        });
    }
    Ok(Some(Planned { changes, desired }))
}

fn apply(
    ctx: &Ctx,
    changes: &[ChronyChange],
    desired: &Desired,
    out: &mut Output,
) -> Result<(), Error> {
    let cfg = ctx.cfg;
    let live = ctx.live;
    let files: Vec<&ChronyChange> = changes
        .iter()
        .filter(|c| !matches!(c, ChronyChange::Restart { .. }))
        .collect();
    if !files.is_empty() {
        // The complete resulting config must parse before any of it goes live.
        match validate::check(ctx, desired) {
            Ok(printed) => {
                for problem in conf::effective_problems(cfg, &printed) {
                    out.error(
                        "effective_config",
                        &cfg.conf.display().to_string(),
                        &problem,
                    );
                }
            }
            Err(message) => {
                out.error(
                    "config_invalid",
                    &cfg.conf.display().to_string(),
                    &format!("{message}; nothing was installed"),
                );
                return Ok(());
            }
        }
        if live {
            let pending = ctx.pending_path();
            if let Some(dir) = pending.parent() {
                safefs::ensure_dir_all(dir, &FileSpec::root(0o755))?;
            }
            safefs::write_atomic(
                &pending,
                b"the chrony config changed; chrony has not been restarted since\n",
                &FileSpec::root(0o644),
            )?;
        }
        for change in &files {
            if let Err(e) = write_one(ctx, change, desired) {
                out.core_error(&e);
                // The rest waits for the next run; the restart below still
                // makes chronyd read what did change.
                break;
            }
            out.item(change.record_type(), true, change);
        }
    }
    if let Some(change) = changes
        .iter()
        .find(|c| matches!(c, ChronyChange::Restart { .. }))
    {
        if let Some(why) = restart::cannot_drive_services(cfg, live, ctx.systemd_is_init) {
            // Nothing is stopped or restarted; the restart stays owed (the
            // pending marker is kept) until the config says how.
            out.error("no_systemd", &cfg.service, &why);
            return Ok(());
        }
        let outcome = restart::ordered_restart(ctx.runner, cfg, out);
        #[derive(Serialize)]
        struct Done<'a> {
            #[serde(flatten)]
            change: &'a ChronyChange,
            ok: bool,
            skipped: bool,
        }
        out.item(
            "restart",
            true,
            &Done {
                change,
                ok: outcome.chrony_ok && outcome.services_ok,
                skipped: outcome.skipped,
            },
        );
        if live && outcome.chrony_ok {
            safefs::remove_file(&ctx.pending_path())?;
        }
    }
    Ok(())
}

fn write_one(ctx: &Ctx, change: &ChronyChange, desired: &Desired) -> Result<(), CoreError> {
    match change {
        ChronyChange::Write { target, .. } if *target == ctx.dropin_target() => {
            let dir = ctx.root.join(&ctx.cfg.conf_d);
            safefs::ensure_dir_all(&dir, &FileSpec::root(0o755))?;
            let text = desired.dropin.as_deref().unwrap_or_default();
            safefs::write_atomic(&ctx.dropin_path(), text.as_bytes(), &FileSpec::root(0o644))?;
        }
        ChronyChange::Write { .. } => {
            let path = ctx.conf_path();
            // Keep chrony.conf's owner and mode as the package made them.
            let spec = match std::fs::metadata(&path) {
                Ok(m) => {
                    use std::os::unix::fs::MetadataExt;
                    FileSpec {
                        mode: m.mode() & 0o7777,
                        uid: m.uid(),
                        gid: m.gid(),
                    }
                }
                Err(_) => FileSpec::root(0o644),
            };
            safefs::write_atomic(&path, desired.main.as_bytes(), &spec)?;
        }
        ChronyChange::Remove { .. } => {
            safefs::remove_file(&ctx.dropin_path())?;
        }
        ChronyChange::Restart { .. } => {}
    }
    Ok(())
}
