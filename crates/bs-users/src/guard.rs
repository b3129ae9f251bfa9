//! The mass-change guard: changes no single list edit or key server answer
//! should make without a human looking. A truncated `developers` (a bad
//! merge, a failed checkout) once meant the whole platform team disabled at
//! the next `just manage`; an empty 200 for every login meant everyone's
//! GitHub keys gone in one refresh (issue 12, items 6 and 7; the failure
//! class of backend-server #201). Past a limit the run stops with exit 2
//! before anything changes; `--allow-mass-change` lets it through.

use std::collections::BTreeSet;

use bs_core::accounts::AccountDb;
use bs_core::config::GuardConfig;

use crate::changes::UserChange;
use crate::planner::Planned;
use crate::state::Ledger;
use crate::Run;

/// Why `apply` must stop, or `None` when the plan is within the limits.
pub fn check(
    run: &Run,
    db: &AccountDb,
    ledger: &Ledger,
    planned: &Planned,
    changes: &[UserChange],
) -> Option<String> {
    let guard = &run.config.users.guard;
    let mut why = Vec::new();

    let active = ledger
        .users
        .iter()
        .filter(|(name, e)| !e.disabled && db.user(name).is_some())
        .count();
    let disabling: Vec<&str> = changes
        .iter()
        .filter_map(|c| match c {
            UserChange::DisableUser { target, .. }
                if ledger.users.get(target).is_some_and(|e| !e.disabled) =>
            {
                Some(target.as_str())
            }
            _ => None,
        })
        .collect();
    if disabling.len() > 1 && too_many(disabling.len(), active, guard.max_disable_share) {
        why.push(format!(
            "it would disable {} of the {active} active people bs manages (more than {}): {}",
            disabling.len(),
            percent(guard.max_disable_share),
            names(&disabling)
        ));
    }

    for group in &guard.sudo_groups {
        let Some(g) = db.group(group) else { continue };
        let mut members: BTreeSet<&str> = g.members.iter().map(String::as_str).collect();
        if members.is_empty() {
            continue;
        }
        for c in changes {
            if let UserChange::SetGroups {
                target,
                add,
                remove,
            } = c
            {
                if add.contains(group) {
                    members.insert(target);
                }
                if remove.contains(group) {
                    members.remove(target.as_str());
                }
            }
        }
        if members.is_empty() {
            why.push(format!(
                "it would leave group {group}, which grants sudo, without members ({} now)",
                names(&g.members.iter().map(String::as_str).collect::<Vec<_>>())
            ));
        }
    }

    let writing: BTreeSet<&str> = changes
        .iter()
        .filter_map(|c| match c {
            UserChange::WriteKeys { target, .. } => Some(target.as_str()),
            _ => None,
        })
        .collect();
    let dropped: Vec<&str> = planned
        .fetched_dropped
        .iter()
        .map(String::as_str)
        .filter(|n| writing.contains(n))
        .collect();
    if let Some(drop) = key_drops(dropped.len(), planned.fetched_holders, guard) {
        why.push(format!("{drop}: {}", names(&dropped)));
    }
    (!why.is_empty()).then(|| format!("mass change: {}", why.join("; ")))
}

/// The error message of a stopped run.
pub fn message(tripped: &str) -> String {
    format!(
        "{tripped}; nothing was changed. If this is intended, run again with --allow-mass-change"
    )
}

/// The key-drop limit, shared with `keys refresh`: `dropped` of the
/// `holders` of fetched keys would have none left.
pub fn key_drops(dropped: usize, holders: usize, guard: &GuardConfig) -> Option<String> {
    (dropped > 0 && too_many(dropped, holders, guard.max_key_drop_share)).then(|| {
        format!(
            "{dropped} of the {holders} people holding keys from the key server would lose every one of them (more than {})",
            percent(guard.max_key_drop_share)
        )
    })
}

fn too_many(count: usize, of: usize, share: f64) -> bool {
    count as f64 > share * of as f64
}

fn percent(share: f64) -> String {
    format!("{}%", (share * 100.0).round())
}

/// A readable list: the first few names and how many more.
pub(crate) fn names(list: &[&str]) -> String {
    const SHOWN: usize = 10;
    let mut s = list
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if list.len() > SHOWN {
        s.push_str(&format!(" and {} more", list.len() - SHOWN));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_drop_limit_is_a_share_of_the_holders() {
        let g = GuardConfig::default();
        assert!(key_drops(1, 10, &g).is_none());
        assert!(key_drops(3, 10, &g).is_some());
        assert!(
            key_drops(1, 1, &g).is_some(),
            "one holder losing all is everyone"
        );
        assert!(key_drops(0, 0, &g).is_none());
    }

    #[test]
    fn long_name_lists_are_cut() {
        let many: Vec<String> = (0..30).map(|i| format!("u{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(names(&refs).ends_with("and 20 more"));
    }
}
