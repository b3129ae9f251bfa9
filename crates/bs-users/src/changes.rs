//! The changes bs-users makes, as data: the JSON record, the dry run and
//! the `apply --plan` input are all this enum.

use serde::{Deserialize, Serialize};

use bs_core::plan::Change;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum UserChange {
    /// A managed group is missing. `gid` is the pinned one, if any.
    CreateGroup { target: String, gid: Option<u32> },
    /// The service account (and its group) is missing.
    CreateServiceAccount { target: String, uid: u32, gid: u32 },
    /// A listed person has no account: create it (home 0750, empty expired
    /// password, login in GECOS).
    CreateUser { target: String, login: String },
    /// A managed account has no home directory (a new one, or a run that
    /// was killed before it made it): create it (0750) from /etc/skel.
    CreateHome { target: String, path: String },
    /// A listed person already has a regular account bs did not create.
    AdoptUser {
        target: String,
        login: String,
        uid: u32,
    },
    /// A disabled user is back on a list.
    EnableUser { target: String, login: String },
    /// A managed user is on no list any more.
    DisableUser { target: String, login: String },
    /// Make the user's managed groups exactly right.
    SetGroups {
        target: String,
        add: Vec<String>,
        remove: Vec<String>,
    },
    /// Install the user's keys file.
    WriteKeys {
        target: String,
        fingerprints: Vec<String>,
        added: Vec<String>,
        removed: Vec<String>,
    },
    /// Remove the user's keys (a disabled user).
    RemoveKeys { target: String },
    /// Install a file bs-users owns (sshd drop-in, refresh schedule).
    WriteFile { target: String, purpose: String },
    /// Remove a file bs-users installed and no longer needs.
    RemoveFile { target: String, purpose: String },
}

impl Change for UserChange {
    fn record_type(&self) -> &'static str {
        match self {
            UserChange::CreateGroup { .. } => "group",
            UserChange::CreateServiceAccount { .. }
            | UserChange::CreateUser { .. }
            | UserChange::AdoptUser { .. }
            | UserChange::EnableUser { .. }
            | UserChange::DisableUser { .. } => "user",
            UserChange::SetGroups { .. } => "membership",
            UserChange::CreateHome { .. } => "home",
            UserChange::WriteKeys { .. } | UserChange::RemoveKeys { .. } => "keys",
            UserChange::WriteFile { .. } | UserChange::RemoveFile { .. } => "file",
        }
    }

    fn target(&self) -> String {
        match self {
            UserChange::CreateGroup { target, .. }
            | UserChange::CreateServiceAccount { target, .. }
            | UserChange::CreateUser { target, .. }
            | UserChange::CreateHome { target, .. }
            | UserChange::AdoptUser { target, .. }
            | UserChange::EnableUser { target, .. }
            | UserChange::DisableUser { target, .. }
            | UserChange::SetGroups { target, .. }
            | UserChange::WriteKeys { target, .. }
            | UserChange::RemoveKeys { target }
            | UserChange::WriteFile { target, .. }
            | UserChange::RemoveFile { target, .. } => target.clone(),
        }
    }
}
