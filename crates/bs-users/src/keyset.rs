//! Which keys a user ends up with: the repository's keys/<login> plus the
//! fetched ones, or, when the fetch failed, the last good fetched ones.

use std::collections::BTreeSet;

use crate::fetch::Fetched;
use crate::keys::{self, BadLine, Key};

#[derive(Debug, Default)]
pub struct Resolved {
    pub keys: Vec<Key>,
    /// Lines that were not keys, with their source, for error records.
    pub bad: Vec<BadLine>,
    /// Why the fetch failed, when it did (the last good keys were used).
    pub fetch_error: Option<String>,
    /// The fetched keys to remember as the last good ones.
    pub new_last_good: Option<String>,
}

impl Resolved {
    pub fn content(&self) -> String {
        keys::render(&self.keys)
    }

    pub fn fingerprints(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.fingerprint.clone()).collect()
    }

    /// What writing these keys over the installed keys file `current`
    /// changes: the fingerprints (added, removed), for the records.
    pub fn diff(&self, current: Option<&str>) -> (Vec<String>, Vec<String>) {
        let before: BTreeSet<String> = current
            .map(keys::read_installed)
            .unwrap_or_default()
            .into_iter()
            .map(|k| k.fingerprint)
            .collect();
        let after: BTreeSet<String> = self.fingerprints().into_iter().collect();
        (
            after.difference(&before).cloned().collect(),
            before.difference(&after).cloned().collect(),
        )
    }
}

pub fn resolve(
    login: &str,
    repo_text: Option<&str>,
    fetched: Option<&Fetched>,
    last_good: Option<&str>,
) -> Resolved {
    let mut r = Resolved::default();
    if let Some(text) = repo_text {
        let (k, bad) = keys::parse(text, &format!("keys/{login}"));
        r.keys.extend(k);
        r.bad.extend(bad);
    }
    match fetched {
        None => {}
        Some(Fetched::Keys { keys: k, bad }) => {
            r.new_last_good = Some(keys::render(k));
            r.keys.extend(k.iter().cloned());
            r.bad.extend(bad.iter().cloned());
        }
        Some(Fetched::Failed { reason }) => {
            r.fetch_error = Some(reason.clone());
            if let Some(text) = last_good {
                r.keys.extend(keys::read_installed(text));
            }
        }
    }
    r.keys = keys::dedup(std::mem::take(&mut r.keys));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::tests::{ED1, ED2};

    #[test]
    fn the_diff_names_the_keys_added_and_removed_by_fingerprint() {
        let only = |text: &str| resolve("alice", Some(text), None, None);
        let (one, two) = (only(ED1), only(ED2));
        let installed = one.content();
        assert_eq!(
            one.diff(Some(&installed)),
            (vec![], vec![]),
            "nothing changes"
        );
        assert_eq!(
            one.diff(None),
            (one.fingerprints(), vec![]),
            "a first keys file"
        );
        assert_eq!(
            two.diff(Some(&installed)),
            (two.fingerprints(), one.fingerprints()),
            "one key replaced by another"
        );
    }

    #[test]
    fn a_failed_fetch_keeps_the_last_good_keys() {
        let (good, _) = keys::parse(ED2, "https://proxy/alice.keys");
        let last = keys::render(&good);
        let r = resolve(
            "alice",
            Some(ED1),
            Some(&Fetched::Failed {
                reason: "HTTP 500".into(),
            }),
            Some(&last),
        );
        assert_eq!(r.keys.len(), 2);
        assert_eq!(r.keys[1].source, "https://proxy/alice.keys");
        assert_eq!(r.fetch_error.as_deref(), Some("HTTP 500"));
        assert!(r.new_last_good.is_none());
    }

    #[test]
    fn an_empty_successful_fetch_leaves_only_repo_keys() {
        let r = resolve(
            "alice",
            Some(ED1),
            Some(&Fetched::Keys {
                keys: vec![],
                bad: vec![],
            }),
            Some("ignored"),
        );
        assert_eq!(r.keys.len(), 1);
        assert_eq!(r.new_last_good.as_deref(), Some(keys::HEADER));
    }
}
