//! The error type of bs-host: what ends a run before any item is done.

use bs_core::cli::Report;
use bs_core::{CoreError, Exit};

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl Report for HostError {
    fn exit(&self) -> Exit {
        match self {
            HostError::Core(e) => e.exit(),
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            HostError::Core(e) => e.kind(),
        }
    }
    fn target(&self) -> String {
        match self {
            HostError::Core(e) => e.target(),
        }
    }
}
