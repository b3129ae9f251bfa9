//! Carry out planned changes, in the order that keeps the system usable:
//! account databases (one transaction), homes, keys, files, then bs's own
//! state. A failed item is an error record; the others still happen.

use std::collections::BTreeSet;

use serde_json::json;

use bs_core::accounts::{AccountDb, NewUser, PwLock};
use bs_core::cmd::{Cmd, Runner};
use bs_core::plan::Change;
use bs_core::safefs::{self, FileSpec};
use bs_core::validate::{self, Checked};
use bs_core::Output;

use crate::changes::UserChange;
use crate::error::UsersError;
use crate::files::{self, KeyHome};
use crate::planner::Planned;
use crate::state::{self, Ledger, LedgerEntry, RefreshResult, Snapshot};
use crate::Run;

/// The highest uid/gid bs allocates (Debian's UID_MAX).
const ID_MAX: u32 = 60000;

pub fn apply(
    run: &Run,
    mut db: AccountDb,
    mut ledger: Ledger,
    pw: Option<PwLock>,
    planned: &Planned,
    changes: &[UserChange],
    out: &mut Output,
) -> Result<(), UsersError> {
    let cfg = &run.config.users;
    let sa = &run.config.service_account;
    let shell = cfg.shell.to_string_lossy().into_owned();
    let nologin = cfg.disabled_shell.to_string_lossy().into_owned();

    // 1. The account databases, in memory, then saved once.
    let mut done_db: Vec<&UserChange> = Vec::new();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    for change in changes {
        match change {
            UserChange::CreateGroup { target, gid } => {
                let gid = match gid {
                    Some(g) => Some(*g),
                    None => db.free_id(1000, ID_MAX),
                };
                match gid {
                    Some(gid) if db.group_by_gid(gid).is_none() => {
                        db.add_group(target, gid);
                        done_db.push(change);
                    }
                    _ => {
                        out.error(
                            "gid_taken",
                            target,
                            "no free gid, or the gid was taken meanwhile",
                        );
                        failed.insert(target.clone());
                    }
                }
            }
            UserChange::CreateServiceAccount { target, uid, gid } => {
                if db.group(target).is_none() {
                    db.add_group(target, *gid);
                }
                db.add_user(&NewUser {
                    name: target.clone(),
                    uid: *uid,
                    gid: *gid,
                    gecos: "bs service account".into(),
                    home: sa.home.to_string_lossy().into_owned(),
                    shell: shell.clone(),
                });
                // No password login, never expires: reached through sudo only.
                if let Some(s) = db.shadow_mut(target) {
                    s.hash = "!".into();
                    s.last_change = String::new();
                }
                done_db.push(change);
            }
            UserChange::CreateUser { target, login } => {
                let range = run.uid_range;
                let Some(id) = db.free_id(range.min, range.max.saturating_add(1)) else {
                    out.error("no_free_uid", target, "no free uid left");
                    failed.insert(target.clone());
                    continue;
                };
                let home = cfg.home_base.join(target).to_string_lossy().into_owned();
                db.add_group(target, id);
                db.add_user(&NewUser {
                    name: target.clone(),
                    uid: id,
                    gid: id,
                    gecos: format!("GitHub {login}"),
                    home: home.clone(),
                    shell: shell.clone(),
                });
                ledger.users.insert(
                    target.clone(),
                    LedgerEntry {
                        login: login.clone(),
                        uid: id,
                        disabled: false,
                        adopted: false,
                    },
                );
                done_db.push(change);
            }
            UserChange::AdoptUser { target, login, uid } => {
                ledger.users.insert(
                    target.clone(),
                    LedgerEntry {
                        login: login.clone(),
                        uid: *uid,
                        disabled: false,
                        adopted: true,
                    },
                );
                done_db.push(change);
            }
            UserChange::EnableUser { target, .. } => {
                if let Some(s) = db.shadow_mut(target) {
                    s.hash = s.hash.trim_start_matches('!').to_string();
                    s.expire = String::new();
                }
                if let Some(u) = db.user_mut(target) {
                    u.shell = shell.clone();
                }
                if let Some(e) = ledger.users.get_mut(target) {
                    e.disabled = false;
                }
                done_db.push(change);
            }
            UserChange::DisableUser { target, .. } => {
                // Equivalent of `usermod --lock --expiredate 1 --shell
                // /usr/sbin/nologin`. Locking alone only blocks passwords;
                // with UsePAM a key still logs in. The past expiry date
                // blocks every method.
                if let Some(s) = db.shadow_mut(target) {
                    if !s.hash.starts_with('!') {
                        s.hash = format!("!{}", s.hash);
                    }
                    s.expire = "1".into();
                }
                if let Some(u) = db.user_mut(target) {
                    u.shell = nologin.clone();
                }
                if let Some(e) = ledger.users.get_mut(target) {
                    e.disabled = true;
                }
                done_db.push(change);
            }
            UserChange::SetGroups {
                target,
                add,
                remove,
            } => {
                if db.user(target).is_none() && !changes.iter().any(|c| creates(c, target)) {
                    out.error("no_account", target, "no such account");
                    failed.insert(target.clone());
                    continue;
                }
                for g in add {
                    if db.group(g).is_none() {
                        out.error(
                            "group_missing",
                            target,
                            &format!("group {g} does not exist"),
                        );
                        continue;
                    }
                    db.set_member(g, target, true);
                }
                for g in remove {
                    db.set_member(g, target, false);
                }
                done_db.push(change);
            }
            _ => {}
        }
    }
    // The ledger first: after a crash between the two, the next run still
    // knows these accounts are bs's own (and not someone else's to adopt).
    ledger.save(run.root)?;
    let saved = db.save();
    // The account files are written: `useradd` and `passwd` may go on
    // while we make homes and keys.
    drop(pw);
    match saved {
        Ok(_) => {
            for change in done_db {
                out.item(change.record_type(), true, change);
            }
        }
        Err(e) => {
            // Nothing of the account changes happened; keys and files
            // below still converge for the accounts that exist.
            for change in done_db {
                out.error("accounts_not_saved", &change.target(), &e.to_string());
                failed.insert(change.target());
            }
            return finish_state(run, &db, &ledger, out).and(Err(e.into()));
        }
    }
    if run.root.is_live() && std::path::Path::new("/usr/sbin/nscd").exists() {
        if let Ok(ran) = run.runner.run(
            &Cmd::new("nscd")
                .args(["-i", "passwd", "-i", "group"])
                .host(),
        ) {
            out.emit("command", &ran);
        }
    }

    // 2. Homes.
    for change in changes {
        let UserChange::CreateHome { target, path } = change else {
            continue;
        };
        if failed.contains(target) {
            continue;
        }
        let Some(u) = db.user(target) else {
            out.error("no_account", target, "no such account; home not created");
            continue;
        };
        match files::create_home(run.root, path, u.uid, u.gid) {
            Ok(_) => out.item("home", true, change),
            Err(e) => out.error("home", target, &e.to_string()),
        }
    }

    // 3. Keys.
    for change in changes {
        match change {
            UserChange::WriteKeys { target, .. } if !failed.contains(target) => {
                let (Some(u), Some(resolved)) = (db.user(target), planned.keys.get(target)) else {
                    out.error("no_account", target, "no such account; keys not written");
                    continue;
                };
                let home = KeyHome {
                    name: target,
                    uid: u.uid,
                    gid: u.gid,
                    home: &u.home,
                };
                match run.placement.write(run.root, &home, &resolved.content()) {
                    Ok(_) => out.item("keys", true, change),
                    Err(e) => out.error("keys_refused", target, &e.to_string()),
                }
            }
            UserChange::RemoveKeys { target } => {
                let Some(u) = db.user(target) else { continue };
                let home = KeyHome {
                    name: target,
                    uid: u.uid,
                    gid: u.gid,
                    home: &u.home,
                };
                match run.placement.remove(run.root, &home) {
                    Ok(_) => out.item("keys", true, change),
                    Err(e) => out.error("keys_not_removed", target, &e.to_string()),
                }
            }
            _ => {}
        }
    }

    // 4. Files: the sshd drop-in (validated first) and the refresh schedule.
    let mut systemd_changed = false;
    for change in changes {
        match change {
            UserChange::WriteFile { target, .. } => {
                let Some(content) = planned.files.get(target) else {
                    continue;
                };
                if target == files::SSHD_DROPIN {
                    let mut ran = Vec::new();
                    let checked = validate::sshd_dropin(
                        run.root,
                        &run.runner,
                        "bs-users",
                        content.as_bytes(),
                        &mut ran,
                    );
                    for r in &ran {
                        out.emit("command", r);
                    }
                    match checked {
                        Ok(Checked::Passed) => {}
                        Ok(Checked::Skipped(note)) => {
                            out.emit("note", &json!({"target": target, "message": note}));
                        }
                        Err(why) => {
                            out.error(
                                "sshd_config_invalid",
                                target,
                                &format!("{why}; the old file stays"),
                            );
                            continue;
                        }
                    }
                }
                let path = run.root.join(target);
                let written = path
                    .parent()
                    .map(|d| safefs::ensure_dir_all(d, &FileSpec::root(0o755)))
                    .transpose()
                    .and_then(|_| {
                        safefs::write_atomic(&path, content.as_bytes(), &FileSpec::root(0o644))
                    });
                match written {
                    Ok(_) => {
                        out.item("file", true, change);
                        if target == files::SSHD_DROPIN {
                            if let Some(note) = files::reload_sshd(run.root) {
                                out.emit("note", &json!({"target": target, "message": note}));
                            }
                        }
                        systemd_changed |= target.starts_with("/etc/systemd/");
                    }
                    Err(e) => out.error("file", target, &e.to_string()),
                }
            }
            UserChange::RemoveFile { target, .. } => {
                match safefs::remove_file(&run.root.join(target)) {
                    Ok(_) => {
                        out.item("file", true, change);
                        systemd_changed |= target.starts_with("/etc/systemd/");
                    }
                    Err(e) => out.error("file", target, &e.to_string()),
                }
            }
            _ => {}
        }
    }
    // Not systemd's machine (a container, a chroot): the units are in
    // place for when it is.
    if systemd_changed && run.root.is_live() && !bs_core::cmd::systemd_is_init() {
        out.emit(
            "note",
            &json!({"target": "systemd", "message": "systemd is not running here: units written, not enabled"}),
        );
    } else if systemd_changed {
        let enable = run.config.users.refresh == bs_core::config::RefreshMode::Systemd;
        let mut cmds = vec![Cmd::new("systemctl").arg("daemon-reload").host()];
        if enable {
            cmds.push(
                Cmd::new("systemctl")
                    .args(["enable", "--now", "bs-users-refresh.timer"])
                    .host(),
            );
        }
        for cmd in cmds {
            match run.runner.run(&cmd) {
                Ok(ran) => {
                    if !ran.success() && !ran.skipped {
                        out.error(
                            "command_failed",
                            &cmd.program,
                            &format!("{}: {}", ran.argv.join(" "), ran.stderr),
                        );
                    }
                    out.emit("command", &ran);
                }
                Err(e) => out.core_error(&e),
            }
        }
    }

    // 5. bs's own state: remembered fetched keys, ledger, snapshot.
    let mut refresh = state::load_refresh(run.root)?;
    for (name, resolved) in &planned.keys {
        let Some(person) = run.people.get(name) else {
            continue;
        };
        if let Some(text) = &resolved.new_last_good {
            state::save_last_good(run.root, &person.login, text)?;
        }
        if run.config.users.fetch_keys {
            refresh.insert(
                person.login.clone(),
                RefreshResult {
                    ok: resolved.fetch_error.is_none(),
                    at: state::now(),
                    message: resolved.fetch_error.clone().unwrap_or_default(),
                },
            );
        }
    }
    state::save_refresh(run.root, &refresh)?;
    finish_state(run, &db, &ledger, out)
}

fn creates(change: &UserChange, name: &str) -> bool {
    matches!(change, UserChange::CreateUser { target, .. } | UserChange::CreateServiceAccount { target, .. } if target == name)
}

fn finish_state(
    run: &Run,
    db: &AccountDb,
    ledger: &Ledger,
    _out: &mut Output,
) -> Result<(), UsersError> {
    ledger.save(run.root)?;
    let previous = Snapshot::load(run.root)?.unwrap_or_default();
    let cfg = &run.config.users;
    let snapshot = Snapshot {
        fetch_keys: cfg.fetch_keys,
        key_source: cfg.key_source.clone(),
        fetch_concurrency: cfg.fetch_concurrency,
        fetch_retries: cfg.fetch_retries,
        authorized_keys: Some(cfg.authorized_keys),
        central_keys_dir: cfg.central_keys_dir.clone(),
        http: Some(run.config.http.clone()),
        guard: Some(cfg.guard.clone()),
        users: crate::snapshot_users(run, db, ledger, &previous.users),
    };
    snapshot.save(run.root)?;
    Ok(())
}
