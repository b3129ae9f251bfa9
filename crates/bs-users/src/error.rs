//! The error type of bs-users: what ends a run. Per-item failures are
//! error records instead, so every other user still converges.

use std::path::PathBuf;

use bs_core::cli::Report;
use bs_core::{CoreError, Exit};

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("{file}:{line}: {message}")]
    List {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Refused(String),
}

impl Report for UsersError {
    fn exit(&self) -> Exit {
        match self {
            UsersError::Core(e) => e.exit(),
            UsersError::List { .. } => Exit::Usage,
            UsersError::Refused(_) => Exit::Failed,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            UsersError::Core(e) => e.kind(),
            UsersError::List { .. } => "list",
            UsersError::Refused(_) => "refused",
        }
    }

    fn target(&self) -> String {
        match self {
            UsersError::Core(e) => e.target(),
            UsersError::List { file, line, .. } => format!("{}:{line}", file.display()),
            UsersError::Refused(_) => String::new(),
        }
    }
}
