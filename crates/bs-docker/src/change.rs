//! The changes bs-docker makes, as data: the plan, the records, and the
//! input of `apply --plan`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Change {
    /// Merge the managed keys into daemon.json.
    UpdateDaemonJson {
        target: String,
        keys: Vec<String>,
    },
    /// Restart the engine so it reads daemon.json (kills running containers).
    RestartEngine {
        target: String,
    },
    CreateNetwork {
        target: String,
        internal: bool,
        icc: bool,
        subnet: Option<String>,
        /// Absent in plans written before networks had labels.
        #[serde(default)]
        labels: BTreeMap<String, String>,
    },
    /// The network differs from its declaration.
    RecreateNetwork {
        target: String,
        differences: Vec<String>,
    },
    /// Insert the missing DOCKER-USER rules of a database network and
    /// delete its extra ones (iptables -S spellings).
    UpdateFirewall {
        target: String,
        bridge: String,
        missing: Vec<String>,
        extra: Vec<String>,
    },
    /// Write the unit that re-applies the firewall after the engine starts.
    WriteUnit {
        target: String,
        content: String,
    },
    CreateService {
        target: String,
        image: String,
        spec_hash: String,
    },
    /// The declared spec changed (or the container is dead): replace it.
    RecreateService {
        target: String,
        image: String,
        spec_hash: String,
        previous_hash: String,
    },
    StartService {
        target: String,
        spec_hash: String,
    },
}

impl bs_core::plan::Change for Change {
    fn record_type(&self) -> &'static str {
        match self {
            Change::UpdateDaemonJson { .. } => "daemon_json",
            Change::RestartEngine { .. } => "engine",
            Change::CreateNetwork { .. } | Change::RecreateNetwork { .. } => "network",
            Change::UpdateFirewall { .. } => "firewall",
            Change::WriteUnit { .. } => "unit",
            Change::CreateService { .. }
            | Change::RecreateService { .. }
            | Change::StartService { .. } => "service",
        }
    }

    fn target(&self) -> String {
        match self {
            Change::UpdateDaemonJson { target, .. }
            | Change::RestartEngine { target }
            | Change::CreateNetwork { target, .. }
            | Change::RecreateNetwork { target, .. }
            | Change::UpdateFirewall { target, .. }
            | Change::WriteUnit { target, .. }
            | Change::CreateService { target, .. }
            | Change::RecreateService { target, .. }
            | Change::StartService { target, .. } => target.clone(),
        }
    }
}
