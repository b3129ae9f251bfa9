//! `[perms.pam]`: the PAM part of bs-perms' login hardening (see
//! docs/bs-perms.md): `pam_umask` in the session stack, so the `UMASK` of
//! /etc/login.defs reaches SSH, su and `sudo -i` sessions (Debian, unlike
//! Ubuntu, loads no pam_umask by default), and the `pam_pwquality` policy.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::layers::Layers;
use crate::error::Result;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PamSettings {
    /// Manage the PAM profiles at all.
    pub enabled: bool,
    /// pam_umask in the session stacks (a `bs-umask` pam-auth-update profile).
    pub umask: bool,
    /// pam_pwquality in the password stack (libpam-pwquality's profile),
    /// with `pwquality_policy`.
    pub pwquality: bool,
    /// The pwquality.conf(5) policy (`minlen = 14`, `minclass = 4`,
    /// `enforce_for_root = true`, ...).
    pub pwquality_policy: BTreeMap<String, PwqualityValue>,
    /// Where the policy goes (a pwquality.conf.d drop-in, so the packaged
    /// pwquality.conf stays as shipped).
    pub pwquality_conf: PathBuf,
    /// pam-auth-update's profile directory.
    pub profile_dir: PathBuf,
    /// The cracklib dictionary pam_pwquality reads when `dictcheck` is on
    /// (its default): without it every password is refused.
    pub cracklib_dict: PathBuf,
}

impl Default for PamSettings {
    fn default() -> Self {
        PamSettings {
            enabled: false,
            umask: true,
            pwquality: false,
            pwquality_policy: BTreeMap::new(),
            pwquality_conf: PathBuf::from("/etc/security/pwquality.conf.d/bs.conf"),
            profile_dir: PathBuf::from("/usr/share/pam-configs"),
            cracklib_dict: PathBuf::from("/var/cache/cracklib/cracklib_dict.pwd"),
        }
    }
}

/// A pwquality.conf value: a number, a flag (written bare when true,
/// left out when false) or a word list / path.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum PwqualityValue {
    Number(i64),
    Flag(bool),
    Text(String),
}

/// pwquality.conf(5) keys (libpwquality 1.4) and the kind of value each takes.
const PWQUALITY_KEYS: &[(&str, &str)] = &[
    ("difok", "number"),
    ("minlen", "number"),
    ("dcredit", "number"),
    ("ucredit", "number"),
    ("lcredit", "number"),
    ("ocredit", "number"),
    ("minclass", "number"),
    ("maxrepeat", "number"),
    ("maxsequence", "number"),
    ("maxclassrepeat", "number"),
    ("gecoscheck", "number"),
    ("dictcheck", "number"),
    ("usercheck", "number"),
    ("usersubstr", "number"),
    ("enforcing", "number"),
    ("retry", "number"),
    ("badwords", "text"),
    ("dictpath", "text"),
    ("enforce_for_root", "flag"),
    ("local_users_only", "flag"),
];

impl PamSettings {
    pub(super) fn validate(&self, layers: &Layers) -> Result<()> {
        for (key, value) in &self.pwquality_policy {
            let dotted = format!("perms.pam.pwquality_policy.{key}");
            let Some((_, kind)) = PWQUALITY_KEYS.iter().find(|(k, _)| k == key) else {
                return Err(layers.error(&dotted, "not a pwquality.conf setting"));
            };
            let ok = match (kind, value) {
                (&"number", PwqualityValue::Number(_)) | (&"flag", PwqualityValue::Flag(_)) => true,
                (&"text", PwqualityValue::Text(t)) => {
                    !t.is_empty() && !t.contains(['\n', '#', '='])
                }
                _ => false,
            };
            if !ok {
                return Err(layers.error(&dotted, format!("expects a {kind}")));
            }
        }
        for (key, path) in [
            ("pwquality_conf", &self.pwquality_conf),
            ("profile_dir", &self.profile_dir),
            ("cracklib_dict", &self.cracklib_dict),
        ] {
            if !path.is_absolute() {
                return Err(layers.error(&format!("perms.pam.{key}"), "must be an absolute path"));
            }
        }
        let conf_ok = self
            .pwquality_conf
            .parent()
            .is_some_and(|d| d.to_string_lossy().ends_with(".conf.d"))
            && self.pwquality_conf.to_string_lossy().ends_with(".conf");
        if !conf_ok {
            return Err(layers.error(
                "perms.pam.pwquality_conf",
                "libpwquality reads only pwquality.conf.d/*.conf: name a .conf file there",
            ));
        }
        Ok(())
    }

    /// Whether the policy asks pam_pwquality for the cracklib dictionary check.
    pub fn dictcheck(&self) -> bool {
        !matches!(
            self.pwquality_policy.get("dictcheck"),
            Some(PwqualityValue::Number(0))
        )
    }

    /// The drop-in's text: one `key = value` a line, flags bare.
    pub fn render_pwquality(&self, backend: &str) -> String {
        let mut text = format!(
            "# Managed by bs-perms (backends/{backend}, perms.pam.pwquality_policy); local edits are overwritten.\n"
        );
        for (key, value) in &self.pwquality_policy {
            match value {
                PwqualityValue::Number(n) => text.push_str(&format!("{key} = {n}\n")),
                PwqualityValue::Text(t) => text.push_str(&format!("{key} = {t}\n")),
                PwqualityValue::Flag(true) => text.push_str(&format!("{key}\n")),
                PwqualityValue::Flag(false) => {}
            }
        }
        text
    }
}
