//! `bs-users keys refresh`: the timer's job. Keys only, never accounts:
//! works from the snapshot the last `apply` left, fetches every active
//! user's keys concurrently, and installs what changed. A failed fetch
//! keeps that user's last good keys (error record, exit 1) while every
//! other user is still refreshed.

use std::time::Duration;

use serde_json::{json, Map, Value};

use bs_core::cli::Global;
use bs_core::http::Http;
use bs_core::plan::Mode;
use bs_core::{CoreError, Output, Root};

use crate::error::UsersError;
use crate::fetch::Fetcher;
use crate::files::{KeyHome, Placement};
use crate::state::{self, RefreshResult, Snapshot};
use crate::{guard, keys, keyset};

pub fn run(
    global: &Global,
    root: &Root,
    random_delay: u64,
    allow_mass_change: bool,
    out: &mut Output,
) -> Result<Map<String, Value>, UsersError> {
    out.set_mode(Mode::Apply);
    if random_delay > 0 {
        std::thread::sleep(Duration::from_millis(random_millis(random_delay * 1000)));
    }
    let Some(snapshot) = Snapshot::load(root)? else {
        return Err(UsersError::Refused(
            "no snapshot under /var/lib/bs/users: run `bs-users apply` first".into(),
        ));
    };
    let _lock = global.lock(root)?;
    let placement = Placement {
        mode: snapshot
            .authorized_keys
            .unwrap_or(bs_core::config::AuthorizedKeysMode::Central),
        central_dir: snapshot.central_keys_dir.clone(),
    };
    let fetched = if snapshot.fetch_keys && !snapshot.users.is_empty() {
        let settings = snapshot.http.clone().unwrap_or_default();
        let http = Http::new(&settings).map_err(|e| CoreError::Usage(format!("[http]: {e}")))?;
        let logins: Vec<String> = snapshot.users.iter().map(|u| u.login.clone()).collect();
        Fetcher {
            http: &http,
            source: &snapshot.key_source,
            concurrency: snapshot.fetch_concurrency.max(1),
            retries: snapshot.fetch_retries,
        }
        .fetch_all(&logins)
    } else {
        Default::default()
    };
    let mut results = state::load_refresh(root)?;
    let mut failed = 0u64;
    // First what every user would get, then the mass-change check, then
    // the writes: an empty answer for everyone must stop before anyone's
    // keys go (issue 12, item 7).
    let mut planned = Vec::new();
    let (mut holders, mut dropped) = (0usize, Vec::new());
    for user in &snapshot.users {
        let last_good = state::last_good(root, &user.login)?;
        let resolved = keyset::resolve(
            &user.login,
            Some(user.repo_keys.as_str()).filter(|t| !t.is_empty()),
            fetched.get(&user.login),
            last_good.as_deref(),
        );
        let home = KeyHome {
            name: &user.name,
            uid: user.uid,
            gid: user.gid,
            home: &user.home,
        };
        let current = placement.read(root, &home);
        if let Ok(Some(c)) = &current {
            let fetched_source = |s: &str| !s.starts_with("keys/");
            if keys::read_installed(c)
                .iter()
                .any(|k| fetched_source(&k.source))
            {
                holders += 1;
                if !resolved.keys.iter().any(|k| fetched_source(&k.source)) {
                    dropped.push(user.name.clone());
                }
            }
        }
        planned.push((user, resolved, current));
    }
    let guard = snapshot.guard.clone().unwrap_or_default();
    if let Some(why) = guard::key_drops(dropped.len(), holders, &guard) {
        if !allow_mass_change {
            return Err(UsersError::MassChange(guard::message(&format!(
                "mass change: {why} ({})",
                guard::names(&dropped.iter().map(String::as_str).collect::<Vec<_>>())
            ))));
        }
    }
    for (user, resolved, current) in planned {
        for bad in &resolved.bad {
            out.error(
                "bad_key_line",
                &user.name,
                &format!(
                    "{} line {}: {}; line dropped",
                    bad.source, bad.line, bad.reason
                ),
            );
        }
        if let Some(reason) = &resolved.fetch_error {
            failed += 1;
            out.error(
                "fetch_failed",
                &user.name,
                &format!(
                    "fetching keys of {} failed ({reason}); keeping the last good fetched keys",
                    user.login
                ),
            );
        }
        let home = KeyHome {
            name: &user.name,
            uid: user.uid,
            gid: user.gid,
            home: &user.home,
        };
        let current = match current {
            Ok(c) => c,
            Err(e) => {
                out.error("keys_refused", &user.name, &e.to_string());
                continue;
            }
        };
        let content = resolved.content();
        if current.as_deref() == Some(content.as_str()) {
            out.item(
                "keys",
                false,
                &json!({"action": "none", "target": user.name}),
            );
        } else {
            let (added, removed) = resolved.diff(current.as_deref());
            match placement.write(root, &home, &content) {
                Ok(_) => out.item(
                    "keys",
                    true,
                    &json!({"action": "write_keys", "target": user.name,
                            "fingerprints": resolved.fingerprints(),
                            "added": added, "removed": removed}),
                ),
                Err(e) => out.error("keys_refused", &user.name, &e.to_string()),
            }
        }
        if let Some(text) = &resolved.new_last_good {
            state::save_last_good(root, &user.login, text)?;
        }
        if snapshot.fetch_keys {
            results.insert(
                user.login.clone(),
                RefreshResult {
                    ok: resolved.fetch_error.is_none(),
                    at: state::now(),
                    message: resolved.fetch_error.clone().unwrap_or_default(),
                },
            );
        }
    }
    state::save_refresh(root, &results)?;
    let mut extra = Map::new();
    extra.insert("users".into(), json!(snapshot.users.len()));
    extra.insert("fetch_failed".into(), json!(failed));
    Ok(extra)
}

/// A random number below `max`, from the kernel (no rand crate needed for
/// a jitter).
fn random_millis(max: u64) -> u64 {
    let mut buf = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut buf, rustix::rand::GetRandomFlags::empty());
    u64::from_le_bytes(buf) % max.max(1)
}
