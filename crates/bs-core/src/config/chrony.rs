//! `[chrony]`: the settings of bs-chrony (see docs/bs-chrony.md).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::layers::Layers;
use crate::error::Result;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChronyConfig {
    /// Whether this backend wants the PTP refclock. Off: bs-chrony removes
    /// what it wrote earlier and only reports.
    pub refclock: bool,
    /// The PTP device the refclock reads (a udev link on Hyper-V guests).
    pub device: PathBuf,
    /// The `refclock` directive written for chronyd.
    pub refclock_line: String,
    /// Arguments of the `makestep` directive; empty: not managed.
    pub makestep: String,
    /// chrony's main config file.
    pub conf: PathBuf,
    /// The drop-in directory; used when `conf` includes it.
    pub conf_d: PathBuf,
    /// chronyd, for `chronyd -p` (parse only) validation.
    pub chronyd: PathBuf,
    /// chronyc, for the readiness wait and `status`.
    pub chronyc: PathBuf,
    /// `chronyc -h` value (a host or a Unix socket path); empty: chronyc's default.
    pub chronyc_host: String,
    /// chrony's own unit.
    pub service: String,
    /// Services stopped (in this order) before chrony restarts and started
    /// again (in reverse order) afterwards.
    pub dependent_services: Vec<String>,
    /// How services are stopped, started and restarted.
    pub service_manager: ServiceManagerKind,
    /// argv templates for `service_manager = "commands"`; `{service}` is
    /// replaced by the unit name. Keys: `start`, `stop`, `restart`.
    pub service_commands: BTreeMap<String, Vec<String>>,
    /// `check` reports drift above this system-time offset, in seconds.
    pub max_offset_secs: f64,
    /// How long to wait for chronyd to answer after its restart, in seconds.
    pub ready_timeout_secs: u64,
    /// Whether `check` asks chronyd about the clock. Off where chrony is not
    /// this host's clock service (the test backend's containers have no
    /// init to run it); the config is still checked.
    pub check_clock: bool,
}

impl Default for ChronyConfig {
    fn default() -> Self {
        ChronyConfig {
            refclock: false,
            device: PathBuf::from("/dev/ptp_hyperv"),
            refclock_line: "refclock PHC /dev/ptp_hyperv poll 3 dpoll -2 offset 0 stratum 2".into(),
            makestep: "1.0 -1".into(),
            conf: PathBuf::from("/etc/chrony/chrony.conf"),
            conf_d: PathBuf::from("/etc/chrony/conf.d"),
            chronyd: PathBuf::from("/usr/sbin/chronyd"),
            chronyc: PathBuf::from("/usr/bin/chronyc"),
            chronyc_host: String::new(),
            service: "chrony.service".into(),
            dependent_services: Vec::new(),
            service_manager: ServiceManagerKind::Systemd,
            service_commands: BTreeMap::new(),
            max_offset_secs: 0.1,
            ready_timeout_secs: 30,
            check_clock: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ServiceManagerKind {
    /// `systemctl stop|start|restart UNIT`, `systemctl is-active UNIT`.
    Systemd,
    /// The argv templates in `service_commands` (hosts without systemd,
    /// such as the system-test containers).
    Commands,
}

const SERVICE_VERBS: [&str; 3] = ["start", "stop", "restart"];

impl ChronyConfig {
    pub(super) fn validate(&self, layers: &Layers) -> Result<()> {
        let line = self.refclock_line.trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        if line.contains('\n') || words.first() != Some(&"refclock") || words.len() < 3 {
            return Err(layers.error(
                "chrony.refclock_line",
                "must be one `refclock DRIVER PARAMETER [OPTIONS]` directive",
            ));
        }
        if words.get(1) == Some(&"PHC")
            && words.get(2).map(PathBuf::from) != Some(self.device.clone())
        {
            return Err(layers.error(
                "chrony.refclock_line",
                format!(
                    "the PHC refclock reads {}, but chrony.device is {}",
                    words[2],
                    self.device.display()
                ),
            ));
        }
        if self.makestep.contains('\n') || self.makestep.split_whitespace().count() > 2 {
            return Err(layers.error(
                "chrony.makestep",
                "must be `THRESHOLD LIMIT`, e.g. \"1.0 -1\"",
            ));
        }
        for (key, path) in [
            ("conf", &self.conf),
            ("conf_d", &self.conf_d),
            ("device", &self.device),
        ] {
            if !path.is_absolute() {
                return Err(layers.error(&format!("chrony.{key}"), "must be an absolute path"));
            }
        }
        if !(self.max_offset_secs.is_finite() && self.max_offset_secs > 0.0) {
            return Err(layers.error(
                "chrony.max_offset_secs",
                "must be a positive number of seconds",
            ));
        }
        if self.ready_timeout_secs == 0 {
            return Err(layers.error("chrony.ready_timeout_secs", "must be at least 1"));
        }
        for unit in std::iter::once(&self.service).chain(&self.dependent_services) {
            if unit.is_empty() || unit.starts_with('-') || unit.contains(char::is_whitespace) {
                return Err(layers.error(
                    "chrony.dependent_services",
                    format!("{unit:?} is not a service name"),
                ));
            }
        }
        for verb in self.service_commands.keys() {
            if !SERVICE_VERBS.contains(&verb.as_str()) {
                return Err(layers.error(
                    &format!("chrony.service_commands.{verb}"),
                    "unknown verb: use start, stop and restart",
                ));
            }
        }
        if self.service_manager == ServiceManagerKind::Commands {
            for verb in SERVICE_VERBS {
                if !matches!(self.service_commands.get(verb), Some(argv) if !argv.is_empty()) {
                    return Err(layers.error(
                        &format!("chrony.service_commands.{verb}"),
                        "service_manager is \"commands\": give an argv list for start, stop and restart",
                    ));
                }
            }
        }
        Ok(())
    }
}
