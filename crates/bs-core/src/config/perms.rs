//! `[perms]`: the settings of bs-perms (see docs/bs-perms.md).
//!
//! * `[[perms.tree]]`: a directory tree with owner, group, modes and POSIX
//!   ACLs. Every key but `path` is optional: what is not configured is not
//!   enforced.
//! * `[[perms.sudoers]]`: one `/etc/sudoers.d/<name>` file a rule.
//! * `[perms.sudo]`: global `Defaults` and the service group's systemctl rule.
//! * `[perms.login]`: the sshd hardening drop-in, login.defs UMASK, the
//!   shell timeout and the login banner.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::layers::Layers;
use super::users::valid_unix_name;
use crate::error::Result;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PermsConfig {
    pub tree: Vec<TreeConfig>,
    pub sudoers: Vec<SudoRule>,
    pub sudo: SudoSettings,
    pub login: LoginSettings,
    pub pam: super::pam::PamSettings,
}

/// One managed directory tree.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TreeConfig {
    /// Absolute path of the tree's top directory (joined under the root).
    pub path: PathBuf,
    /// User name that owns every entry.
    pub owner: Option<String>,
    /// Group name of every entry.
    pub group: Option<String>,
    /// Octal permission bits of directories, as a string (`"0750"`).
    pub dir_mode: Option<String>,
    /// Octal permission bits of every other regular file (`"0640"`).
    pub file_mode: Option<String>,
    /// The setgid bit on directories (new files inherit the group).
    pub setgid: Option<bool>,
    /// Named access ACL entries, setfacl syntax: `group:reviewers:r-X`.
    /// When set, these are exactly the named entries (others are removed).
    pub acl: Option<Vec<String>>,
    /// Named default ACL entries of directories (inherited by new files).
    pub default_acl: Option<Vec<String>>,
    /// Subdirectories of the top directory to create (`workspaces`).
    pub subdirs: Vec<String>,
}

/// One sudoers.d file holding one rule.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SudoRule {
    /// File name in /etc/sudoers.d.
    pub name: String,
    /// A user name or `%group`.
    pub principal: String,
    /// Run-as spec: `root`, `ALL`, `ALL:ALL`, `user:group`.
    pub run_as: String,
    pub nopasswd: bool,
    /// Commands with their exact arguments, split on white space; the
    /// first word an absolute path (or `ALL`, which needs `allow_wildcards`).
    pub commands: Vec<String>,
    /// Allow `*`, `?`, `[` and `ALL`, which widen what the rule permits.
    pub allow_wildcards: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SudoSettings {
    /// `Defaults` lines of the bs-defaults file (`use_pty`, `logfile=...`).
    pub defaults: Vec<String>,
    /// The group that may run exactly `systemctl start|stop|restart|status`
    /// of `service_units` without a password; empty: no such rule.
    pub service_group: String,
    pub service_units: Vec<String>,
    pub systemctl: String,
}

impl Default for SudoSettings {
    fn default() -> Self {
        SudoSettings {
            defaults: Vec::new(),
            service_group: String::new(),
            service_units: Vec::new(),
            systemctl: "/usr/bin/systemctl".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LoginSettings {
    /// Manage the sshd drop-in, login.defs, the profile snippet and banner.
    pub enabled: bool,
    /// The sshd drop-in; its name must sort before any other drop-in.
    pub sshd_dropin: PathBuf,
    /// sshd settings, one `Keyword value` a line, first in the drop-in.
    pub sshd: Vec<String>,
    pub login_defs_umask: String,
    pub tmout_secs: u32,
    /// The login banner text (`/etc/issue.net`, and `Banner` in the drop-in).
    pub banner: String,
}

impl Default for LoginSettings {
    fn default() -> Self {
        LoginSettings {
            enabled: false,
            sshd_dropin: PathBuf::from("/etc/ssh/sshd_config.d/00-bs-hardening.conf"),
            sshd: Vec::new(),
            login_defs_umask: "027".into(),
            tmout_secs: 900,
            banner: String::new(),
        }
    }
}

/// Parse an octal mode string (`"0750"`, `"750"`). Strings only: a TOML
/// integer 750 would silently be decimal 750 = 0o1356.
pub fn parse_mode(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}

/// sudo silently skips files in sudoers.d whose name contains `.` or ends
/// in `~`: a rule that would never apply must not look installed.
pub fn valid_sudoers_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('.')
        && !name.ends_with('~')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A named ACL entry in setfacl syntax, checked without resolving names.
pub fn split_acl_entry(s: &str) -> Option<(bool, &str, &str)> {
    let mut parts = s.split(':');
    let tag = parts.next()?;
    let name = parts.next()?;
    let perms = parts.next()?;
    if parts.next().is_some() || name.is_empty() {
        return None;
    }
    let is_user = match tag {
        "u" | "user" => true,
        "g" | "group" => false,
        _ => return None,
    };
    let ok_perms = !perms.is_empty()
        && perms.len() <= 3
        && perms
            .chars()
            .all(|c| matches!(c, 'r' | 'w' | 'x' | 'X' | '-'));
    if !ok_perms {
        return None;
    }
    Some((is_user, name, perms))
}

impl PermsConfig {
    pub(super) fn validate(&self, layers: &Layers) -> Result<()> {
        for (i, tree) in self.tree.iter().enumerate() {
            tree.validate(layers, &format!("perms.tree[{i}]"))?;
            for (j, other) in self.tree.iter().enumerate() {
                if i != j && nested(&other.path, &tree.path) {
                    return Err(layers.error(
                        "perms.tree",
                        format!(
                            "{} lies inside {}: one path, one policy (nested trees would fight)",
                            tree.path.display(),
                            other.path.display()
                        ),
                    ));
                }
            }
        }
        for (i, rule) in self.sudoers.iter().enumerate() {
            rule.validate(layers, &format!("perms.sudoers[{i}]"))?;
            if self.sudoers[..i].iter().any(|r| r.name == rule.name)
                || rule.name == "bs-defaults"
                || rule.name == "bs-services"
            {
                return Err(layers.error(
                    "perms.sudoers",
                    format!("sudoers file name {:?} is used twice (bs-defaults and bs-services are bs-perms' own)", rule.name),
                ));
            }
        }
        self.sudo.validate(layers)?;
        self.login.validate(layers)?;
        self.pam.validate(layers)?;
        Ok(())
    }
}

/// `inner` equals or lies below `outer`.
fn nested(outer: &Path, inner: &Path) -> bool {
    inner.starts_with(outer)
}

impl TreeConfig {
    fn validate(&self, layers: &Layers, key: &str) -> Result<()> {
        let plain = self.path.is_absolute()
            && self
                .path
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
            && self.path.components().count() >= 2;
        if !plain {
            return Err(layers.error(
                &format!("{key}.path"),
                format!(
                    "{:?}: must be an absolute path below / without . or ..",
                    self.path
                ),
            ));
        }
        for (field, value) in [("owner", &self.owner), ("group", &self.group)] {
            if let Some(name) = value {
                if !valid_unix_name(name) {
                    return Err(layers.error(
                        &format!("{key}.{field}"),
                        format!("{name:?} is not a valid name"),
                    ));
                }
            }
        }
        for (field, value) in [("dir_mode", &self.dir_mode), ("file_mode", &self.file_mode)] {
            if let Some(m) = value {
                if parse_mode(m).is_none() {
                    return Err(layers.error(
                        &format!("{key}.{field}"),
                        format!("{m:?} is not an octal mode string like \"0750\""),
                    ));
                }
            }
        }
        for (field, value) in [("acl", &self.acl), ("default_acl", &self.default_acl)] {
            for entry in value.iter().flatten() {
                match split_acl_entry(entry) {
                    Some((_, name, _)) if valid_unix_name(name) => {}
                    _ => {
                        return Err(layers.error(
                            &format!("{key}.{field}"),
                            format!("{entry:?}: expected user:NAME:PERMS or group:NAME:PERMS (PERMS from r w x X -); the mask is computed"),
                        ))
                    }
                }
            }
        }
        for sub in &self.subdirs {
            let ok = !sub.is_empty() && sub != "." && sub != ".." && !sub.contains('/');
            if !ok {
                return Err(layers.error(
                    &format!("{key}.subdirs"),
                    format!("{sub:?}: one plain directory name"),
                ));
            }
        }
        Ok(())
    }
}

const WILDCARDS: [char; 3] = ['*', '?', '['];

impl SudoRule {
    fn validate(&self, layers: &Layers, key: &str) -> Result<()> {
        if !valid_sudoers_name(&self.name) {
            return Err(layers.error(
                &format!("{key}.name"),
                format!(
                    "{:?}: sudo silently skips sudoers.d files whose name contains '.' or ends in '~'; use letters, digits, - and _",
                    self.name
                ),
            ));
        }
        let principal = self.principal.strip_prefix('%').unwrap_or(&self.principal);
        if !valid_unix_name(principal) {
            return Err(layers.error(
                &format!("{key}.principal"),
                format!("{:?}: a user name or %group", self.principal),
            ));
        }
        let run_as_ok = !self.run_as.is_empty()
            && self
                .run_as
                .split(':')
                .all(|p| p == "ALL" || valid_unix_name(p))
            && self.run_as.split(':').count() <= 2;
        if !run_as_ok {
            return Err(layers.error(
                &format!("{key}.run_as"),
                format!("{:?}: user, user:group or ALL:ALL", self.run_as),
            ));
        }
        if self.commands.is_empty() {
            return Err(layers.error(&format!("{key}.commands"), "at least one command"));
        }
        for cmd in &self.commands {
            let mut words = cmd.split_whitespace();
            let program = words.next().unwrap_or("");
            if program == "ALL" {
                if !self.allow_wildcards || words.next().is_some() {
                    return Err(layers.error(
                        &format!("{key}.commands"),
                        "ALL permits every command: set allow_wildcards = true if that is meant",
                    ));
                }
                continue;
            }
            if !program.starts_with('/') {
                return Err(layers.error(
                    &format!("{key}.commands"),
                    format!("{cmd:?}: the command must be an absolute path"),
                ));
            }
            if !self.allow_wildcards && cmd.contains(WILDCARDS) {
                return Err(layers.error(
                    &format!("{key}.commands"),
                    format!("{cmd:?}: wildcards widen the rule to commands nobody reviewed; set allow_wildcards = true if that is meant"),
                ));
            }
        }
        Ok(())
    }
}

impl SudoSettings {
    fn validate(&self, layers: &Layers) -> Result<()> {
        for d in &self.defaults {
            if d.is_empty() || d.contains('\n') {
                return Err(layers.error(
                    "perms.sudo.defaults",
                    format!("{d:?}: one Defaults setting"),
                ));
            }
        }
        if !self.service_group.is_empty() && !valid_unix_name(&self.service_group) {
            return Err(layers.error("perms.sudo.service_group", "not a valid group name"));
        }
        for unit in &self.service_units {
            let ok = !unit.is_empty()
                && unit
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
            if !ok {
                return Err(layers.error(
                    "perms.sudo.service_units",
                    format!("{unit:?}: not a unit name"),
                ));
            }
        }
        if !self.systemctl.starts_with('/') {
            return Err(layers.error("perms.sudo.systemctl", "must be an absolute path"));
        }
        Ok(())
    }
}

impl LoginSettings {
    fn validate(&self, layers: &Layers) -> Result<()> {
        for line in &self.sshd {
            let ok = !line.trim().is_empty()
                && !line.contains('\n')
                && line.split_whitespace().count() >= 2;
            if !ok {
                return Err(layers.error(
                    "perms.login.sshd",
                    format!("{line:?}: one `Keyword value` line"),
                ));
            }
        }
        if parse_mode(&self.login_defs_umask).is_none() {
            return Err(layers.error(
                "perms.login.login_defs_umask",
                "an octal umask like \"027\"",
            ));
        }
        let dropin_ok = self.sshd_dropin.is_absolute()
            && self
                .sshd_dropin
                .file_name()
                .map(|n| n.to_string_lossy().ends_with(".conf"))
                .unwrap_or(false);
        if !dropin_ok {
            return Err(layers.error(
                "perms.login.sshd_dropin",
                "an absolute path ending in .conf",
            ));
        }
        Ok(())
    }
}
