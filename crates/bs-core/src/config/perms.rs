//! `[perms]`: the settings of bs-perms. Filled in as the tool lands.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PermsConfig {}

impl PermsConfig {
    pub(super) fn validate(&self, _layers: &super::Layers) -> crate::error::Result<()> {
        Ok(())
    }
}
