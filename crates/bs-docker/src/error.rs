//! The error type of bs-docker: bs-core's errors, the engine's, and our own.

use bs_core::{CoreError, Exit};

use bs_engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{target}: {message}")]
    Invalid { target: String, message: String },
}

impl bs_core::cli::Report for DockerError {
    fn exit(&self) -> Exit {
        match self {
            DockerError::Core(e) => e.exit(),
            DockerError::Engine(e) => e.exit(),
            DockerError::Invalid { .. } => Exit::Usage,
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            DockerError::Core(e) => e.kind(),
            DockerError::Engine(e) => e.kind(),
            DockerError::Invalid { .. } => "invalid",
        }
    }
    fn target(&self) -> String {
        match self {
            DockerError::Core(e) => e.target(),
            DockerError::Engine(e) => e.target(),
            DockerError::Invalid { target, .. } => target.clone(),
        }
    }
}

pub type Result<T, E = DockerError> = std::result::Result<T, E>;
