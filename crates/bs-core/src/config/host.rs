//! `[host]`: the settings of bs-host (see docs/bs-host.md): Debian packages
//! present, purged and held, the guarded upgrade, the managed block of
//! /etc/hosts, the motd, disabled services and the backend's name on the host.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::layers::Layers;
use crate::error::Result;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Manage the host baseline at all.
    pub enabled: bool,
    /// Debian packages that must be installed (with their dependencies,
    /// never their recommendations).
    pub packages: Vec<String>,
    /// Packages that must not be installed: purged when found, config too.
    pub purge: Vec<String>,
    /// Packages held at their version (`apt-mark hold`): upgrades skip them.
    pub hold: Vec<String>,
    /// The container engine's package: `upgrade` leaves it out unless asked,
    /// and never upgrades it while a job container runs (an engine upgrade
    /// restarts dockerd and kills every running job).
    pub engine_package: String,
    /// How long apt waits for the dpkg lock another process holds.
    pub apt_lock_timeout_secs: u64,
    /// The apt.conf drop-in telling unattended-upgrades to leave the held
    /// packages alone.
    pub unattended_upgrades_conf: PathBuf,
    /// `ADDRESS NAME...` lines every backend needs (the core hosts).
    pub hosts: Vec<String>,
    /// `ADDRESS NAME...` lines of this backend only.
    pub backend_hosts: Vec<String>,
    pub hosts_file: PathBuf,
    /// cloud-init's template of /etc/hosts: when it exists, cloud-init
    /// rewrites /etc/hosts from it, so the block goes there too.
    pub cloud_hosts_template: PathBuf,
    /// The motd banner; `{BACKEND}` becomes the backend's name in capitals.
    /// Empty: no banner.
    pub motd_banner: String,
    pub motd_dir: PathBuf,
    /// Scripts in `motd_dir` made non-executable (run-parts skips them).
    pub motd_silence: Vec<String>,
    /// systemd units that must not start at boot.
    pub disable_services: Vec<String>,
    /// The profile snippet that gives login shells `BACKEND`.
    pub backend_profile: PathBuf,
    /// The label every job container carries (`upgrade --engine` waits for none).
    pub job_container_label: String,
    pub docker: PathBuf,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            enabled: false,
            packages: Vec::new(),
            purge: Vec::new(),
            hold: Vec::new(),
            engine_package: "docker.io".into(),
            apt_lock_timeout_secs: 120,
            unattended_upgrades_conf: PathBuf::from("/etc/apt/apt.conf.d/51bs-unattended-upgrades"),
            hosts: Vec::new(),
            backend_hosts: Vec::new(),
            hosts_file: PathBuf::from("/etc/hosts"),
            cloud_hosts_template: PathBuf::from("/etc/cloud/templates/hosts.debian.tmpl"),
            motd_banner: String::new(),
            motd_dir: PathBuf::from("/etc/update-motd.d"),
            motd_silence: Vec::new(),
            disable_services: Vec::new(),
            backend_profile: PathBuf::from("/etc/profile.d/bs-backend.sh"),
            job_container_label: "job-runner".into(),
            docker: PathBuf::from("/usr/bin/docker"),
        }
    }
}

/// A Debian package name (policy 5.6.1): lower-case letters, digits, `+ - .`,
/// at least two characters, starting with a letter or digit. Anything else
/// must never reach apt's argv (a leading `-` would be an option).
pub fn valid_package_name(name: &str) -> bool {
    name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
}

/// `ADDRESS NAME...` -> the address and the names, or why not.
pub fn parse_hosts_line(line: &str) -> std::result::Result<(IpAddr, Vec<String>), String> {
    let mut words = line.split_whitespace();
    let addr = words
        .next()
        .ok_or_else(|| "empty line".to_string())?
        .parse::<IpAddr>()
        .map_err(|_| format!("{line:?}: the first word is not an IP address"))?;
    let names: Vec<String> = words.map(str::to_string).collect();
    if names.is_empty() {
        return Err(format!("{line:?}: no host name after the address"));
    }
    for name in &names {
        let ok = name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !ok {
            return Err(format!("{line:?}: {name:?} is not a host name"));
        }
    }
    Ok((addr, names))
}

fn valid_unit(unit: &str) -> bool {
    !unit.is_empty()
        && !unit.starts_with('-')
        && unit.contains('.')
        && unit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '\\'))
}

impl HostConfig {
    pub(super) fn validate(&self, layers: &Layers) -> Result<()> {
        for (key, list) in [
            ("packages", &self.packages),
            ("purge", &self.purge),
            ("hold", &self.hold),
        ] {
            for name in list {
                if !valid_package_name(name) {
                    return Err(layers.error(
                        &format!("host.{key}"),
                        format!("{name:?} is not a Debian package name"),
                    ));
                }
            }
        }
        if !self.engine_package.is_empty() && !valid_package_name(&self.engine_package) {
            return Err(layers.error("host.engine_package", "not a Debian package name"));
        }
        for name in &self.purge {
            if self.packages.contains(name) || self.hold.contains(name) {
                return Err(layers.error(
                    "host.purge",
                    format!("{name:?} is also to be installed or held: one package, one policy"),
                ));
            }
        }
        for (key, list) in [
            ("hosts", &self.hosts),
            ("backend_hosts", &self.backend_hosts),
        ] {
            for line in list {
                parse_hosts_line(line).map_err(|e| layers.error(&format!("host.{key}"), e))?;
            }
        }
        for name in &self.motd_silence {
            let ok = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
            if !ok {
                return Err(layers.error(
                    "host.motd_silence",
                    format!("{name:?}: a script name in motd_dir"),
                ));
            }
        }
        for unit in &self.disable_services {
            if !valid_unit(unit) {
                return Err(layers.error(
                    "host.disable_services",
                    format!("{unit:?}: a unit name with its suffix (rsync.service)"),
                ));
            }
        }
        for (key, path) in [
            ("unattended_upgrades_conf", &self.unattended_upgrades_conf),
            ("hosts_file", &self.hosts_file),
            ("cloud_hosts_template", &self.cloud_hosts_template),
            ("motd_dir", &self.motd_dir),
            ("backend_profile", &self.backend_profile),
            ("docker", &self.docker),
        ] {
            if !path.is_absolute() {
                return Err(layers.error(&format!("host.{key}"), "must be an absolute path"));
            }
        }
        if self.apt_lock_timeout_secs == 0 {
            return Err(layers.error("host.apt_lock_timeout_secs", "must be at least 1"));
        }
        let label_ok = !self.job_container_label.is_empty()
            && !self.job_container_label.starts_with('-')
            && !self.job_container_label.contains(char::is_whitespace);
        if !label_ok {
            return Err(layers.error("host.job_container_label", "a Docker label key"));
        }
        Ok(())
    }
}
