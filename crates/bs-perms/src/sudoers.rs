//! Least-privilege sudoers.d files: one file a rule, each checked with
//! `visudo -cf` before it is renamed into place (0440 root). A file that
//! visudo refuses is not installed and the old one stays. bs keeps a ledger
//! of the files it installed, so a rule dropped from the config is removed
//! and a file someone else put there is never touched.

use std::collections::BTreeSet;

use serde_json::json;

use bs_core::cmd::Ran;
use bs_core::config::{SudoRule, SudoSettings};
use bs_core::safefs::{self, FileSpec};
use bs_core::{CoreError, Output, Root};

use crate::files::{self, ManagedFile, Outcome};
use crate::{PermsChange, RunCtx, Selection};

pub const SUDOERS_D: &str = "/etc/sudoers.d";
const LEDGER: &str = "/var/lib/bs/perms/sudoers.json";

fn header(backend: &str) -> String {
    format!("# Managed by bs-perms (backends/{backend}); local edits are overwritten.\n")
}

/// sudoers treats these as syntax inside a command's arguments.
fn escape_arg(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len());
    for c in arg.chars() {
        if matches!(c, ',' | ':' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One command: exact arguments. A command given without arguments gets
/// `""`, which sudo reads as "no arguments allowed" (a bare path would allow any).
fn render_command(cmd: &str) -> String {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    match words.as_slice() {
        ["ALL"] => "ALL".into(),
        [program] => format!("{program} \"\""),
        [program, args @ ..] => {
            let args: Vec<String> = args.iter().map(|a| escape_arg(a)).collect();
            format!("{program} {}", args.join(" "))
        }
        [] => String::new(),
    }
}

pub fn render_rule(rule: &SudoRule, backend: &str) -> String {
    let commands: Vec<String> = rule.commands.iter().map(|c| render_command(c)).collect();
    format!(
        "{}{} ALL=({}) {}{}\n",
        header(backend),
        rule.principal,
        rule.run_as,
        if rule.nopasswd { "NOPASSWD: " } else { "" },
        commands.join(", ")
    )
}

pub fn render_defaults(settings: &SudoSettings, backend: &str) -> Option<String> {
    if settings.defaults.is_empty() {
        return None;
    }
    let mut text = header(backend);
    for d in &settings.defaults {
        text.push_str(&format!("Defaults {d}\n"));
    }
    Some(text)
}

/// The service group's rule: exactly start, stop, restart and status of
/// its own units, nothing else, no password.
pub fn service_rule(settings: &SudoSettings) -> Option<SudoRule> {
    if settings.service_group.is_empty() || settings.service_units.is_empty() {
        return None;
    }
    let mut commands = Vec::new();
    for unit in &settings.service_units {
        for verb in ["start", "stop", "restart", "status"] {
            commands.push(format!("{} {verb} {unit}", settings.systemctl));
        }
    }
    Some(SudoRule {
        name: "bs-services".into(),
        principal: format!("%{}", settings.service_group),
        run_as: "root".into(),
        nopasswd: true,
        commands,
        allow_wildcards: false,
    })
}

/// Every file the config wants, by name, in a stable order.
pub fn desired(ctx: &RunCtx<'_>) -> Vec<(String, String)> {
    let backend = &ctx.config.backend.name;
    let perms = &ctx.config.perms;
    let mut files = Vec::new();
    if let Some(text) = render_defaults(&perms.sudo, backend) {
        files.push(("bs-defaults".to_string(), text));
    }
    for rule in perms
        .sudoers
        .iter()
        .cloned()
        .chain(service_rule(&perms.sudo))
    {
        files.push((rule.name.clone(), render_rule(&rule, backend)));
    }
    files
}

/// The names of the sudoers.d files bs-perms installed.
pub fn ledger(root: &Root) -> Result<BTreeSet<String>, CoreError> {
    let path = root.join(LEDGER);
    match files::read_existing(&path, 1024 * 1024)? {
        None => Ok(BTreeSet::new()),
        Some((bytes, _)) => {
            let value: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| CoreError::Unsafe {
                    path: path.clone(),
                    reason: format!("not a ledger: {e}"),
                })?;
            Ok(value["files"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str())
                        .filter(|n| bs_core::config::valid_sudoers_name(n))
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default())
        }
    }
}

fn save_ledger(root: &Root, names: &BTreeSet<String>) -> Result<(), CoreError> {
    let path = root.join(LEDGER);
    if let Some(dir) = path.parent() {
        safefs::ensure_dir_all(dir, &FileSpec::root(0o755))?;
    }
    let text = serde_json::to_string_pretty(&json!({"files": names})).unwrap_or_default() + "\n";
    safefs::write_atomic(&path, text.as_bytes(), &FileSpec::root(0o644))?;
    Ok(())
}

/// `visudo -cf` on the exact bytes.
fn visudo_check(
    ctx: &RunCtx<'_>,
    log: &mut Vec<Ran>,
    contents: &[u8],
) -> Result<(), (&'static str, String)> {
    bs_core::validate::sudoers(ctx.runner, "bs-perms", contents, log)
        .map_err(|e| files::invalid(e, "visudo", "visudo_rejected"))
}

pub fn run(ctx: &RunCtx<'_>, out: &mut Output, sel: &mut Selection) {
    let old = match ledger(ctx.root) {
        Ok(l) => l,
        Err(e) => {
            out.error(e.kind(), LEDGER, &e.to_string());
            return;
        }
    };
    let mut installed = BTreeSet::new();
    let wanted = desired(ctx);
    for (name, text) in &wanted {
        let file = ManagedFile {
            target: format!("{SUDOERS_D}/{name}"),
            contents: text.clone().into_bytes(),
            spec: FileSpec::root(0o440),
            kind: "sudoers",
        };
        let mut log = Vec::new();
        let outcome = files::converge(ctx, out, sel, &file, &mut |bytes| {
            visudo_check(ctx, &mut log, bytes)
        });
        for ran in &log {
            out.emit("command", ran);
        }
        // Ours if we wrote it now or it was ours before (a refused update
        // keeps the old file, which stays ours to remove later).
        if outcome == Outcome::Changed || outcome == Outcome::Unchanged || old.contains(name) {
            installed.insert(name.clone());
        }
    }
    for name in old.iter().filter(|n| !wanted.iter().any(|(w, _)| w == *n)) {
        let target = format!("{SUDOERS_D}/{name}");
        let host = ctx.root.join(&target);
        if std::fs::symlink_metadata(&host).is_err() {
            continue;
        }
        let change = PermsChange::Remove {
            target: target.clone(),
        };
        if ctx.applying() {
            if !sel.allows(&change) {
                installed.insert(name.clone());
                continue;
            }
            if let Err(e) = safefs::remove_file(&host) {
                out.error(e.kind(), &target, &e.to_string());
                installed.insert(name.clone());
                continue;
            }
        }
        out.item(
            "file",
            true,
            &json!({"action": "remove", "target": target, "kind": "sudoers"}),
        );
    }
    if ctx.applying() && installed != old {
        if let Err(e) = save_ledger(ctx.root, &installed) {
            out.error(e.kind(), LEDGER, &e.to_string());
        }
    }
}
