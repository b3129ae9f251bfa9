//! The unit that puts the database networks' firewall back after the
//! engine starts (template in `crates/bs-docker/units/`). It reads the
//! config snapshot under `/var/lib/bs/repo`, never the operator's checkout.

use bs_core::config::{Config, SNAPSHOT_DIR};
use bs_core::Root;

pub const UNIT_DIR: &str = "/etc/systemd/system";
pub const NAME: &str = "bs-docker-firewall.service";
const TEMPLATE: &str = include_str!("../units/bs-docker-firewall.service");

/// The unit as this backend needs it; `None` when no network has a
/// firewall to keep.
pub fn wanted(config: &Config) -> Option<String> {
    if !config.docker.manage_firewall || crate::firewall::wanted(config).is_empty() {
        return None;
    }
    Some(
        TEMPLATE
            .replace("@REPO@", SNAPSHOT_DIR)
            .replace("@BACKEND@", &config.backend_dir)
            .replace("@BIN@", "/usr/local/bin/bs-docker"),
    )
}

/// The unit's path under the root.
pub fn path(root: &Root) -> std::path::PathBuf {
    root.join(UNIT_DIR).join(NAME)
}

/// Whether the file on disk differs from `content`.
pub fn stale(root: &Root, content: &str) -> bool {
    std::fs::read_to_string(path(root)).ok().as_deref() != Some(content)
}
