//! Compute the changes that would converge the accounts to the lists.
//! Reads only; per-item problems (a gid taken by another group, a listed
//! name that is a system account, a keys file planted as a symlink) become
//! error records and that item is left alone while the rest converge.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use bs_core::accounts::AccountDb;
use bs_core::Output;

use crate::changes::UserChange;
use crate::error::UsersError;
use crate::files::{self, KeyHome};
use crate::keys;
use crate::keyset::{self, Resolved};
use crate::state::{self, Ledger};
use crate::Run;

pub struct Planned {
    pub changes: Vec<UserChange>,
    /// The keys each active person should have, by Unix name.
    pub keys: BTreeMap<String, Resolved>,
    /// Files to write, by system path.
    pub files: BTreeMap<String, String>,
    /// Items that need nothing, for the unchanged records.
    unchanged: Vec<(&'static str, String)>,
    /// Active people who hold fetched keys now, and those of them this run
    /// would leave with none (for the mass-change guard).
    pub fetched_holders: usize,
    pub fetched_dropped: Vec<String>,
}

impl Planned {
    pub fn report_unchanged(&self, out: &mut Output) {
        for (kind, target) in &self.unchanged {
            out.item(kind, false, &json!({"action": "none", "target": target}));
        }
    }
}

pub fn plan(
    run: &Run,
    db: &AccountDb,
    ledger: &Ledger,
    out: &mut Output,
) -> Result<Planned, UsersError> {
    let cfg = &run.config.users;
    let mut p = Planned {
        changes: Vec::new(),
        keys: BTreeMap::new(),
        files: BTreeMap::new(),
        unchanged: Vec::new(),
        fetched_holders: 0,
        fetched_dropped: Vec::new(),
    };
    let range = run.uid_range;
    let sa_name = &run.config.service_account.name;

    // Groups. A pinned gid held by another group is an error, never a
    // silent renumbering: files on disk carry gids, not names.
    let mut usable: BTreeSet<String> = BTreeSet::new();
    for (name, spec) in &cfg.groups {
        match (db.group(name), spec.gid) {
            (Some(g), Some(pinned)) if g.gid != pinned => {
                out.error(
                    "gid_mismatch",
                    name,
                    &format!(
                        "group {name} has gid {} but the config pins {pinned}; not renumbering it",
                        g.gid
                    ),
                );
                usable.insert(name.clone());
            }
            (Some(_), _) => {
                usable.insert(name.clone());
                p.unchanged.push(("group", name.clone()));
            }
            (None, Some(pinned)) if db.group_by_gid(pinned).is_some() => {
                let other = db
                    .group_by_gid(pinned)
                    .map(|g| g.name.clone())
                    .unwrap_or_default();
                out.error(
                    "gid_taken",
                    name,
                    &format!("gid {pinned} pinned for group {name} belongs to group {other}"),
                );
            }
            (None, gid) => {
                usable.insert(name.clone());
                p.changes.push(UserChange::CreateGroup {
                    target: name.clone(),
                    gid,
                });
            }
        }
    }

    plan_service_account(run, db, &mut p, out);

    // People on the lists.
    let mut handled: BTreeSet<String> = BTreeSet::new();
    for person in run.people.values() {
        let name = &person.name;
        let account = db.user(name);
        let mut touched = false;
        // System accounts are never people (issue 12, item 1): a list line
        // naming one must not give it sudo, keys or a home, nor disable it
        // when the line goes.
        if name == sa_name {
            out.error(
                "service_account",
                name,
                &format!("{name} is the service account, not a person; remove it from the list"),
            );
            handled.insert(name.clone());
            continue;
        }
        match account {
            Some(u) if !range.contains(u.uid) => {
                out.error(
                    "system_account",
                    name,
                    &format!(
                        "{name} is a system account (uid {}, outside the people's range {range} of login.defs); bs never touches it",
                        u.uid
                    ),
                );
                handled.insert(name.clone());
                continue;
            }
            Some(u) => match ledger.users.get(name) {
                None if run.adopt.contains(name) => {
                    touched = true;
                    p.changes.push(UserChange::AdoptUser {
                        target: name.clone(),
                        login: person.login.clone(),
                        uid: u.uid,
                    });
                }
                None => {
                    out.error(
                        "not_managed",
                        name,
                        &format!(
                            "an account {name} (uid {}) exists that bs did not create; refusing to take it over. \
                             If it is this person's (a host migrated from backend-server), adopt it with \
                             `bs-users apply --adopt {name}` or `[users] adopt`",
                            u.uid
                        ),
                    );
                    handled.insert(name.clone());
                    continue;
                }
                Some(e) if e.disabled => {
                    touched = true;
                    p.changes.push(UserChange::EnableUser {
                        target: name.clone(),
                        login: person.login.clone(),
                    });
                }
                Some(_) => {}
            },
            None => {
                if db.group(name).is_some() {
                    out.error(
                        "group_exists",
                        name,
                        &format!("a group named {name} already exists; not creating the account"),
                    );
                    handled.insert(name.clone());
                    continue;
                }
                touched = true;
                p.changes.push(UserChange::CreateUser {
                    target: name.clone(),
                    login: person.login.clone(),
                });
            }
        }
        handled.insert(name.clone());

        let home = match account {
            Some(u) => u.home.clone(),
            None => cfg.home_base.join(name).to_string_lossy().into_owned(),
        };
        if run.root.join(&home).symlink_metadata().is_err() {
            touched = true;
            p.changes.push(UserChange::CreateHome {
                target: name.clone(),
                path: home,
            });
        }

        // Exact membership of managed groups.
        let want: BTreeSet<&str> = person
            .groups
            .iter()
            .filter(|g| usable.contains(*g))
            .map(String::as_str)
            .collect();
        let have: BTreeSet<&str> = db
            .groups_of(name)
            .into_iter()
            .filter(|g| cfg.groups.contains_key(*g))
            .collect();
        if want != have {
            touched = true;
            p.changes.push(UserChange::SetGroups {
                target: name.clone(),
                add: want.difference(&have).map(|s| s.to_string()).collect(),
                remove: have.difference(&want).map(|s| s.to_string()).collect(),
            });
        }

        // Keys. An unreadable keys/<login> is this person's error alone:
        // their installed keys stay as they are.
        if let Some(why) = run.repo_key_errors.get(&person.login) {
            out.error(
                "keys_file_refused",
                name,
                &format!(
                    "keys/{}: {why}; their installed keys are left as they are",
                    person.login
                ),
            );
            if !touched {
                p.unchanged.push(("user", name.clone()));
            }
            continue;
        }
        let last_good = state::last_good(run.root, &person.login)?;
        let resolved = keyset::resolve(
            &person.login,
            run.repo_keys.get(&person.login).map(String::as_str),
            run.fetched.get(&person.login),
            last_good.as_deref(),
        );
        report_key_problems(&person.login, name, &resolved, out);
        let content = resolved.content();
        let current = match account {
            Some(u) => {
                let home = KeyHome {
                    name,
                    uid: u.uid,
                    gid: u.gid,
                    home: &u.home,
                };
                match run.placement.read(run.root, &home) {
                    Ok(c) => c,
                    Err(e) => {
                        out.error("keys_refused", name, &e.to_string());
                        p.keys.insert(name.clone(), resolved);
                        continue;
                    }
                }
            }
            None => None,
        };
        let had_fetched = current
            .as_deref()
            .map(|c| {
                keys::read_installed(c)
                    .iter()
                    .any(|k| is_fetched(&k.source))
            })
            .unwrap_or(false);
        if had_fetched {
            p.fetched_holders += 1;
            if !resolved.keys.iter().any(|k| is_fetched(&k.source)) {
                p.fetched_dropped.push(name.clone());
            }
        }
        if current.as_deref() != Some(content.as_str()) {
            touched = true;
            let (added, removed) = resolved.diff(current.as_deref());
            p.changes.push(UserChange::WriteKeys {
                target: name.clone(),
                fingerprints: resolved.fingerprints(),
                added,
                removed,
            });
        }
        p.keys.insert(name.clone(), resolved);
        if !touched {
            p.unchanged.push(("user", name.clone()));
        }
    }

    // Managed users on no list: disabled, never deleted.
    for (name, entry) in &ledger.users {
        if handled.contains(name) {
            continue;
        }
        let Some(u) = db.user(name) else {
            out.error(
                "account_missing",
                name,
                &format!("{name} is in bs's ledger but has no account any more"),
            );
            continue;
        };
        // Taken over before bs refused system accounts: never disabled.
        if name == sa_name || !range.contains(u.uid) {
            out.error(
                "system_account",
                name,
                &format!(
                    "{name} (uid {}) is in bs's ledger but is the service account or outside the people's range {range}; \
                     not disabling it. Remove it from /var/lib/bs/users/ledger.json",
                    u.uid
                ),
            );
            continue;
        }
        let mut touched = false;
        if !entry.disabled || !is_locked_out(db, name, &cfg.disabled_shell.to_string_lossy()) {
            touched = true;
            p.changes.push(UserChange::DisableUser {
                target: name.clone(),
                login: entry.login.clone(),
            });
        }
        let have: Vec<String> = db
            .groups_of(name)
            .into_iter()
            .filter(|g| cfg.groups.contains_key(*g))
            .map(String::from)
            .collect();
        if !have.is_empty() {
            touched = true;
            p.changes.push(UserChange::SetGroups {
                target: name.clone(),
                add: vec![],
                remove: have,
            });
        }
        let home = KeyHome {
            name,
            uid: u.uid,
            gid: u.gid,
            home: &u.home,
        };
        if run.placement.any_exists(run.root, &home)? {
            touched = true;
            p.changes.push(UserChange::RemoveKeys {
                target: name.clone(),
            });
        }
        if !touched {
            p.unchanged.push(("user", name.clone()));
        }
    }

    plan_files(run, &mut p)?;
    Ok(p)
}

/// A key fetched from the key server, not one from keys/<login>.
fn is_fetched(source: &str) -> bool {
    !source.starts_with("keys/")
}

/// Locked, expired and without a login shell: what disabling leaves.
fn is_locked_out(db: &AccountDb, name: &str, nologin: &str) -> bool {
    let shell_off = db.user(name).map(|u| u.shell == nologin).unwrap_or(false);
    let shadow_off = db
        .shadow(name)
        .map(|s| s.hash.starts_with('!') && s.expire == "1")
        .unwrap_or(false);
    shell_off && shadow_off
}

fn plan_service_account(run: &Run, db: &AccountDb, p: &mut Planned, out: &mut Output) {
    let sa = &run.config.service_account;
    match db.user(&sa.name) {
        Some(u) if u.uid != sa.uid => {
            out.error(
                "uid_mismatch",
                &sa.name,
                &format!(
                    "{} has uid {} but the config says {}; not renumbering it",
                    sa.name, u.uid, sa.uid
                ),
            );
        }
        Some(u) => {
            if run.root.join(&u.home).symlink_metadata().is_err() {
                p.changes.push(UserChange::CreateHome {
                    target: sa.name.clone(),
                    path: u.home.clone(),
                });
            } else {
                p.unchanged.push(("user", sa.name.clone()));
            }
        }
        None => {
            if let Some(other) = db.user_by_uid(sa.uid) {
                out.error(
                    "uid_taken",
                    &sa.name,
                    &format!("uid {} belongs to {}", sa.uid, other.name),
                );
                return;
            }
            if let Some(g) = db.group_by_gid(sa.gid).filter(|g| g.name != sa.name) {
                out.error(
                    "gid_taken",
                    &sa.name,
                    &format!("gid {} belongs to group {}", sa.gid, g.name),
                );
                return;
            }
            p.changes.push(UserChange::CreateServiceAccount {
                target: sa.name.clone(),
                uid: sa.uid,
                gid: sa.gid,
            });
            if run.root.join(&sa.home).symlink_metadata().is_err() {
                p.changes.push(UserChange::CreateHome {
                    target: sa.name.clone(),
                    path: sa.home.to_string_lossy().into_owned(),
                });
            }
        }
    }
    // Its groups are added, never removed: people may add it elsewhere.
    let have = db.groups_of(&sa.name);
    let add: Vec<String> = sa
        .groups
        .iter()
        .filter(|g| !have.contains(&g.as_str()))
        .filter(|g| db.group(g).is_some() || run.config.users.groups.contains_key(*g))
        .cloned()
        .collect();
    if !add.is_empty() {
        p.changes.push(UserChange::SetGroups {
            target: sa.name.clone(),
            add,
            remove: vec![],
        });
    }
}

fn report_key_problems(login: &str, name: &str, r: &Resolved, out: &mut Output) {
    for bad in &r.bad {
        out.error(
            "bad_key_line",
            name,
            &format!(
                "{} line {}: {}; line dropped",
                bad.source, bad.line, bad.reason
            ),
        );
    }
    if let Some(reason) = &r.fetch_error {
        out.error(
            "fetch_failed",
            name,
            &format!(
                "fetching keys of {login} failed ({reason}); keeping the last good fetched keys"
            ),
        );
    }
}

fn plan_files(run: &Run, p: &mut Planned) -> Result<(), UsersError> {
    let root = run.root;
    let mut want: Vec<(&str, String, &str)> = Vec::new();
    let mut gone: Vec<(&str, &str)> = Vec::new();
    match run.placement.mode {
        bs_core::config::AuthorizedKeysMode::Central => want.push((
            files::SSHD_DROPIN,
            files::sshd_dropin(&run.placement.central_dir),
            "sshd reads keys from the root-owned files",
        )),
        bs_core::config::AuthorizedKeysMode::Home => {
            gone.push((files::SSHD_DROPIN, "sshd reads keys from ~/.ssh again"))
        }
    }
    let (schedule, other) = files::schedule_files(run.config.users.refresh);
    for (path, content) in schedule {
        want.push((path, content, "schedule keys refresh"));
    }
    for path in other {
        gone.push((path, "another refresh schedule is configured"));
    }
    for (path, content, purpose) in want {
        let current = std::fs::read_to_string(root.join(path)).ok();
        if current.as_deref() != Some(content.as_str()) {
            p.changes.push(UserChange::WriteFile {
                target: path.to_string(),
                purpose: purpose.to_string(),
            });
        } else {
            p.unchanged.push(("file", path.to_string()));
        }
        p.files.insert(path.to_string(), content);
    }
    for (path, purpose) in gone {
        if root.join(path).symlink_metadata().is_ok() {
            p.changes.push(UserChange::RemoveFile {
                target: path.to_string(),
                purpose: purpose.to_string(),
            });
        }
    }
    Ok(())
}
