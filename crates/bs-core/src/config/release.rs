//! `[release]`: the settings of bs-release. Filled in as the tool lands.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReleaseConfig {}
