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
    /// The mass-change guard: nothing was changed.
    #[error("{0}")]
    MassChange(String),
}

/// Input echoed in a message, cut to a readable prefix: a 50 MB list line
/// must not become a 50 MB error record (issue 12, item 10). Every error
/// record is also capped whole (`bs_core::output::ERROR_TEXT_MAX`); this
/// shorter cut keeps what the message says after the input readable.
pub fn shown(input: &str) -> String {
    const MAX: usize = 64;
    if input.len() <= MAX {
        return format!("{input:?}");
    }
    let mut end = MAX;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &input[..end], input.len())
}

impl Report for UsersError {
    fn exit(&self) -> Exit {
        match self {
            UsersError::Core(e) => e.exit(),
            UsersError::List { .. } => Exit::Usage,
            UsersError::Refused(_) => Exit::Failed,
            UsersError::MassChange(_) => Exit::Usage,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            UsersError::Core(e) => e.kind(),
            UsersError::List { .. } => "list",
            UsersError::Refused(_) => "refused",
            UsersError::MassChange(_) => "mass_change",
        }
    }

    fn target(&self) -> String {
        match self {
            UsersError::Core(e) => e.target(),
            UsersError::List { file, line, .. } => format!("{}:{line}", file.display()),
            UsersError::Refused(_) | UsersError::MassChange(_) => String::new(),
        }
    }
}
