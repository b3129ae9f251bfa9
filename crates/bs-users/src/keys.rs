//! SSH public keys: every line parsed as an OpenSSH public key, bad lines
//! reported with their source and dropped, duplicates removed by
//! fingerprint, each key annotated with where it came from.
//!
//! A proxy's 502 page once landed in an authorized_keys file and locked
//! people out: nothing is installed that does not parse as a key.

use std::collections::BTreeSet;

use ssh_key::{HashAlg, PublicKey};

/// The header of every keys file bs-users writes.
pub const HEADER: &str = "# Managed by bs-users: do not edit, changes are overwritten.\n";
const SOURCE_PREFIX: &str = "# source: ";

/// Algorithms sshd accepts by default (DSA is gone since OpenSSH 9.8 and
/// off by default long before).
const ALLOWED: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    /// The key as one authorized_keys line (algorithm, base64, comment).
    pub line: String,
    pub fingerprint: String,
    pub source: String,
}

/// A line that is not a usable public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    pub source: String,
    pub line: usize,
    pub reason: String,
}

/// Parse a keys text (a keys/<login> file or a fetched .keys body).
pub fn parse(text: &str, source: &str) -> (Vec<Key>, Vec<BadLine>) {
    let mut keys = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok((line, fingerprint)) => keys.push(Key {
                line,
                fingerprint,
                source: source.to_string(),
            }),
            Err(reason) => bad.push(BadLine {
                source: source.to_string(),
                line: i + 1,
                reason,
            }),
        }
    }
    (keys, bad)
}

fn parse_line(line: &str) -> Result<(String, String), String> {
    let algorithm = line.split_whitespace().next().unwrap_or("");
    if !ALLOWED.contains(&algorithm) {
        // Also catches authorized_keys options (from=..., command=...):
        // keys in the repo or from GitHub must not carry any.
        let shown: String = algorithm.chars().take(40).collect();
        return Err(format!("not a public key line (starts with {shown:?})"));
    }
    let key =
        PublicKey::from_openssh(line).map_err(|e| format!("not a valid {algorithm} key: {e}"))?;
    let text = key
        .to_openssh()
        .map_err(|e| format!("cannot re-encode the key: {e}"))?;
    if text.contains('\n') || text.contains('\r') {
        return Err("a key line may not hold a line break".into());
    }
    Ok((text, key.fingerprint(HashAlg::Sha256).to_string()))
}

/// Keep the first of each fingerprint, in order.
pub fn dedup(keys: Vec<Key>) -> Vec<Key> {
    let mut seen = BTreeSet::new();
    keys.into_iter()
        .filter(|k| seen.insert(k.fingerprint.clone()))
        .collect()
}

/// The keys file for a user.
pub fn render(keys: &[Key]) -> String {
    let mut out = String::from(HEADER);
    for k in keys {
        out.push_str(SOURCE_PREFIX);
        out.push_str(&k.source);
        out.push('\n');
        out.push_str(&k.line);
        out.push('\n');
    }
    out
}

/// Read back a keys file bs-users wrote: the keys with their sources.
pub fn read_installed(text: &str) -> Vec<Key> {
    let mut source = String::from("unknown");
    let mut keys = Vec::new();
    for line in text.lines() {
        if let Some(s) = line.strip_prefix(SOURCE_PREFIX) {
            source = s.to_string();
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            if let Ok((line, fingerprint)) = parse_line(line.trim()) {
                keys.push(Key {
                    line,
                    fingerprint,
                    source: source.clone(),
                });
            }
        }
    }
    keys
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const ED1: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHy3PRJsqgFLCh+Y93jdVWpHbE7r8aSbMR8OAL1Qq2Ec alice@laptop";
    pub const ED2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGuu/I3dSiqSxb3HCGfe5+syQT6BzIuacADV1hXGoBvx";

    #[test]
    fn valid_keys_parse_and_garbage_is_reported_with_its_source() {
        let text = format!("# comment\n{ED1}\n<html>502 Bad Gateway</html>\n\nssh-dss AAAAB3NzaC1kc3MAAACBAP\n{ED2}\n");
        let (keys, bad) = parse(&text, "keys/alice");
        assert_eq!(keys.len(), 2);
        assert!(keys[0].fingerprint.starts_with("SHA256:"));
        assert_eq!(keys[0].source, "keys/alice");
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].line, 3);
        assert_eq!(bad[1].line, 5);
        assert_eq!(bad[0].source, "keys/alice");
    }

    #[test]
    fn options_and_truncated_keys_are_refused() {
        let (keys, bad) = parse(
            &format!("command=\"/bin/sh\" {ED1}\nssh-ed25519 AAAAC3Nza\n"),
            "s",
        );
        assert!(keys.is_empty());
        assert_eq!(bad.len(), 2);
    }

    #[test]
    fn duplicates_are_removed_by_fingerprint_keeping_the_first_source() {
        let (a, _) = parse(ED1, "keys/alice");
        let (b, _) = parse(&format!("{ED1} other-comment\n{ED2}"), "github");
        let all = dedup(a.into_iter().chain(b).collect());
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].source, "keys/alice");
    }

    #[test]
    fn rendered_files_read_back_with_their_sources() {
        let (keys, _) = parse(&format!("{ED1}\n{ED2}"), "keys/alice");
        let text = render(&keys);
        assert!(text.starts_with(HEADER));
        let back = read_installed(&text);
        assert_eq!(back, keys);
    }
}
