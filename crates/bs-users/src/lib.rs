//! bs-users: groups, the service account, people from the lists, their
//! memberships and SSH keys; disabling people who left; the key refresh.
//!
//! Flow of `plan`/`apply`/`check`: read the config and lists (a bad line
//! stops everything with exit 2 before any change), fetch keys, compute the
//! changes ([`planner`]), print them or apply them ([`apply`]).

pub mod apply;
pub mod changes;
pub mod cli;
pub mod error;
pub mod fetch;
pub mod files;
pub mod guard;
pub mod keys;
pub mod keyset;
pub mod people;
pub mod planner;
pub mod refresh;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Map, Value};

use bs_core::accounts::{self, AccountDb, PwLock, UidRange};
use bs_core::cli::Global;
use bs_core::cmd::SystemRunner;
use bs_core::config::Config;
use bs_core::http::Http;
use bs_core::plan::{still_needed, Change, Mode, PlanInput};
use bs_core::{CoreError, Output, Root};

use crate::cli::UsersArgs;
use crate::error::UsersError;
use crate::fetch::{Fetched, Fetcher};
use crate::files::{KeyHome, Placement};
use crate::people::Person;
use crate::state::{Ledger, SnapshotUser};

/// How long to wait for a shadow-utils tool holding /etc/.pwd.lock.
const PWLOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the planner and the applier need to know about one run.
pub struct Run<'a> {
    pub root: &'a Root,
    pub config: &'a Config,
    pub people: BTreeMap<String, Person>,
    /// keys/<login> text per login, where the file exists.
    pub repo_keys: BTreeMap<String, String>,
    /// keys/<login> files that could not be read (a symlink, a FIFO, too
    /// big), by login: an error of that person alone.
    pub repo_key_errors: BTreeMap<String, String>,
    /// People's uids: login.defs' UID_MIN..=UID_MAX of this root.
    pub uid_range: UidRange,
    /// Existing accounts the operator said bs may take over.
    pub adopt: BTreeSet<String>,
    /// Fetch outcome per login (empty when fetching is off).
    pub fetched: BTreeMap<String, Fetched>,
    pub placement: Placement,
    pub runner: SystemRunner,
}

impl<'a> Run<'a> {
    pub fn prepare(root: &'a Root, config: &'a Config) -> Result<Run<'a>, UsersError> {
        let people = people::load(&config.repo, &config.users)?;
        let (repo_keys, repo_key_errors) = read_repo_keys(config, people.values())?;
        Ok(Run {
            root,
            config,
            people,
            repo_keys,
            repo_key_errors,
            uid_range: accounts::people_uid_range(root)?,
            adopt: config.users.adopt.iter().cloned().collect(),
            fetched: BTreeMap::new(),
            placement: Placement {
                mode: config.users.authorized_keys,
                central_dir: config.users.central_keys_dir.clone(),
            },
            runner: SystemRunner::new(root),
        })
    }

    pub fn fetch(&mut self) -> Result<(), UsersError> {
        if !self.config.users.fetch_keys || self.people.is_empty() {
            return Ok(());
        }
        let http =
            Http::new(&self.config.http).map_err(|e| CoreError::Usage(format!("[http]: {e}")))?;
        let logins: Vec<String> = self.people.values().map(|p| p.login.clone()).collect();
        let fetcher = Fetcher {
            http: &http,
            source: &self.config.users.key_source,
            concurrency: self.config.users.fetch_concurrency,
            retries: self.config.users.fetch_retries,
        };
        self.fetched = fetcher.fetch_all(&logins);
        Ok(())
    }
}

type RepoKeys = (BTreeMap<String, String>, BTreeMap<String, String>);

/// The repository's keys/<login> files, and the ones refused. A symlink
/// there is refused: the checkout is trusted, but not to point us at other
/// files. A refused file is that person's error alone (issue 12, item 8).
fn read_repo_keys<'p>(
    config: &Config,
    people: impl Iterator<Item = &'p Person>,
) -> Result<RepoKeys, UsersError> {
    let dir = config.repo_path(&config.users.keys_dir);
    let mut out = BTreeMap::new();
    let mut refused = BTreeMap::new();
    let dirfd = match bs_core::safefs::DirFd::open(&dir) {
        Ok(d) => d,
        Err(CoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok((out, refused))
        }
        Err(e) => return Err(e.into()),
    };
    for p in people {
        match dirfd.read_file(std::ffi::OsStr::new(&p.login), 1024 * 1024) {
            Ok(Some((bytes, _))) => {
                out.insert(
                    p.login.clone(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                );
            }
            Ok(None) => {}
            Err(e) => {
                refused.insert(p.login.clone(), e.to_string());
            }
        }
    }
    Ok((out, refused))
}

/// `plan`, `check` and `apply [--plan FILE|-]`.
pub fn converge(
    global: &Global,
    root: &Root,
    mode: Mode,
    plan_input: Option<PlanInput>,
    args: &UsersArgs,
    out: &mut Output,
) -> Result<Map<String, Value>, UsersError> {
    out.set_mode(mode);
    let config = global.config(root)?;
    let mut run = Run::prepare(root, &config)?;
    run.adopt.extend(args.adopt.iter().cloned());
    // A plan given back is read before anything is locked or changed, so a
    // bad one is a usage error with nothing touched.
    let given = match &plan_input {
        Some(input) => Some(input.read::<changes::UserChange>(out.tool())?),
        None => None,
    };
    let _lock = if mode.mutates() {
        Some(global.lock(root)?)
    } else {
        None
    };
    // The network first: the account lock is held only while the account
    // files are read and written, never while a key server stalls, or
    // `useradd` and `passwd` beside us give up (issue 12, item 9).
    run.fetch()?;
    let pw = if mode.mutates() {
        Some(PwLock::acquire(root, PWLOCK_TIMEOUT)?)
    } else {
        None
    };
    if pw.is_none() && root.join(accounts::JOURNAL).exists() {
        // plan/check: a killed run's transaction is pending until the next apply.
        out.item(
            "account_file",
            true,
            &json!({"action": "recover", "target": accounts::JOURNAL}),
        );
    }
    if let Some(held) = &pw {
        for recovered in accounts::recover(root, held)? {
            out.item(
                "account_file",
                recovered.outcome != accounts::Outcome::ChangedSince,
                &json!({"action": "recover", "target": recovered.path, "outcome": recovered.outcome}),
            );
        }
    }
    // After recovery no transaction is pending; plan and check reported
    // it above and read the files as they are.
    let mut db = AccountDb::load_as_is(root)?;
    let ledger = Ledger::load(root)?;
    let sa_name = &config.service_account.name;
    for repair in db.repair(&|u| &u.name == sa_name || ledger.users.contains_key(&u.name)) {
        out.item(
            "account_file",
            true,
            &json!({"action": "repair", "target": repair.name, "file": repair.file,
                    "problem": repair.problem, "fix": repair.fix}),
        );
    }
    let planned = planner::plan(&run, &db, &ledger, out)?;
    if mode != Mode::Apply {
        if let Some(tripped) = guard::check(&run, &db, &ledger, &planned, &planned.changes) {
            let message = format!("apply would stop: {}", guard::message(&tripped));
            out.emit("note", &json!({"target": "guard", "message": message}));
        }
        for change in &planned.changes {
            out.item(change.record_type(), true, change);
        }
        planned.report_unchanged(out);
        return Ok(summary_extra(&run));
    }
    let changes = match given {
        Some(given) => {
            let (apply, stale) = still_needed(planned.changes.clone(), given);
            for change in stale {
                out.emit(
                    "skipped",
                    &json!({"target": change.target(), "change": change,
                            "reason": "not needed any more, or no longer what the system needs"}),
                );
            }
            apply
        }
        None => planned.changes.clone(),
    };
    // Judged on what will be applied: a plan given back may hold less.
    if let Some(tripped) = guard::check(&run, &db, &ledger, &planned, &changes) {
        if !args.allow_mass_change {
            return Err(UsersError::MassChange(guard::message(&tripped)));
        }
    }
    apply::apply(&run, db, ledger, pw, &planned, &changes, out)?;
    planned.report_unchanged(out);
    Ok(summary_extra(&run))
}

fn summary_extra(run: &Run) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("people".into(), json!(run.people.len()));
    let failed = run
        .fetched
        .values()
        .filter(|f| matches!(f, Fetched::Failed { .. }))
        .count();
    if run.config.users.fetch_keys {
        m.insert("fetch_failed".into(), json!(failed));
    }
    m
}

/// `list`: one record per managed user.
pub fn list(root: &Root, out: &mut Output) -> Result<Map<String, Value>, UsersError> {
    let db = AccountDb::load(root)?;
    let ledger = Ledger::load(root)?;
    let refresh = state::load_refresh(root)?;
    let snapshot = state::Snapshot::load(root)?.unwrap_or_default();
    let placement = Placement {
        mode: snapshot
            .authorized_keys
            .unwrap_or(bs_core::config::AuthorizedKeysMode::Central),
        central_dir: if snapshot.central_keys_dir.as_os_str().is_empty() {
            "/etc/ssh/authorized_keys.d".into()
        } else {
            snapshot.central_keys_dir.clone()
        },
    };
    for (name, entry) in &ledger.users {
        let account = db.user(name);
        let keys = match account {
            Some(u) => placement
                .read(
                    root,
                    &KeyHome {
                        name,
                        uid: u.uid,
                        gid: u.gid,
                        home: &u.home,
                    },
                )
                .ok()
                .flatten()
                .map(|t| keys::read_installed(&t))
                .unwrap_or_default(),
            None => Vec::new(),
        };
        out.emit(
            "user",
            &json!({
                "target": name,
                "login": entry.login,
                "name": name,
                "uid": account.map(|u| u.uid),
                "groups": db.groups_of(name),
                "keys": keys.iter().map(|k| json!({"fingerprint": k.fingerprint, "source": k.source})).collect::<Vec<_>>(),
                "state": if entry.disabled { "disabled" } else { "active" },
                "account_exists": account.is_some(),
                "last_refresh": refresh.get(&entry.login),
            }),
        );
    }
    Ok(Map::new())
}

/// `disable LOGIN`: refused while the login is listed; otherwise the
/// changes a converge would make for that user, and only those.
pub fn disable(
    global: &Global,
    root: &Root,
    login: &str,
    out: &mut Output,
) -> Result<Map<String, Value>, UsersError> {
    out.set_mode(Mode::Apply);
    let config = global.config(root)?;
    let run = Run::prepare(root, &config)?;
    let name = login.to_ascii_lowercase();
    if let Some(p) = run.people.get(&name) {
        let lists: Vec<&str> = p.lists.iter().map(String::as_str).collect();
        return Err(UsersError::Refused(format!(
            "{login} is still listed ({}); remove them from the list and run apply",
            lists.join(", ")
        )));
    }
    let _lock = global.lock(root)?;
    let pw = PwLock::acquire(root, PWLOCK_TIMEOUT)?;
    accounts::recover(root, &pw)?;
    let db = AccountDb::load(root)?;
    let ledger = Ledger::load(root)?;
    if !ledger.users.contains_key(&name) {
        return Err(UsersError::Refused(format!(
            "{login} is not an account bs manages; refusing to touch it"
        )));
    }
    let mut quiet = Output::to_writer(out.tool(), Box::new(std::io::sink()));
    let planned = planner::plan(&run, &db, &ledger, &mut quiet)?;
    let mine: Vec<_> = planned
        .changes
        .iter()
        .filter(|c| c.target() == name)
        .cloned()
        .collect();
    if mine.is_empty() {
        out.item(
            "user",
            false,
            &json!({"action": "none", "target": name, "login": login, "state": "disabled"}),
        );
    }
    apply::apply(&run, db, ledger, Some(pw), &planned, &mine, out)?;
    Ok(Map::new())
}

/// The snapshot `keys refresh` works from: every active managed user. A
/// person whose keys/<login> could not be read keeps the repository keys
/// of the previous snapshot, so the refresh does not drop them either.
pub fn snapshot_users(
    run: &Run,
    db: &AccountDb,
    ledger: &Ledger,
    previous: &[SnapshotUser],
) -> Vec<SnapshotUser> {
    ledger
        .users
        .iter()
        .filter(|(_, e)| !e.disabled)
        .filter_map(|(name, e)| {
            let u = db.user(name)?;
            // Never keys for a system account an old version took over.
            if name == &run.config.service_account.name || !run.uid_range.contains(u.uid) {
                return None;
            }
            let repo_keys = if run.repo_key_errors.contains_key(&e.login) {
                previous
                    .iter()
                    .find(|p| p.login == e.login)
                    .map(|p| p.repo_keys.clone())
                    .unwrap_or_default()
            } else {
                run.repo_keys.get(&e.login).cloned().unwrap_or_default()
            };
            Some(SnapshotUser {
                name: name.clone(),
                login: e.login.clone(),
                uid: u.uid,
                gid: u.gid,
                home: u.home.clone(),
                repo_keys,
            })
        })
        .collect()
}
