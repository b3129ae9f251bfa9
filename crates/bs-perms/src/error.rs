//! The error type of bs-perms: what ends a run before any item is done.

use bs_core::cli::Report;
use bs_core::{CoreError, Exit};

#[derive(Debug, thiserror::Error)]
pub enum PermsError {
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl Report for PermsError {
    fn exit(&self) -> Exit {
        match self {
            PermsError::Core(e) => e.exit(),
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            PermsError::Core(e) => e.kind(),
        }
    }
    fn target(&self) -> String {
        match self {
            PermsError::Core(e) => e.target(),
        }
    }
}
