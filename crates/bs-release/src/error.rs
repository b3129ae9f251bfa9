//! The error type of bs-release: each variant says what an operator or a
//! user needs to know, and maps to an exit code and an error-record kind.

use bs_core::cli::Report;
use bs_core::{CoreError, Exit};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] CoreError),
    /// Who is calling could not be established: nothing was done.
    #[error("{0}")]
    Identity(String),
    /// The caller may not do this (role, self-review, not the author).
    #[error("{0}")]
    Denied(String),
    /// The request is not in a state that allows this action.
    #[error("request {id} is {state}: cannot {action} it (allowed when {allowed})")]
    WrongState {
        id: String,
        state: String,
        action: String,
        allowed: String,
    },
    #[error("{what}: not found")]
    NotFound { what: String },
    /// A file's content is not what was recorded: refused.
    #[error("{path}: content changed: expected sha256 {expected}, found {actual}")]
    Changed {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("{path}: {size} bytes is over the release limit of {max} bytes")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("{path}: {message}")]
    NotReleasable { path: String, message: String },
    #[error("{path}: bad job manifest: {message}")]
    Manifest { path: String, message: String },
    #[error("release server: {0}")]
    Publish(String),
    #[error("{0}")]
    Usage(String),
    /// The audit log is not what bs-release wrote: each break was reported.
    #[error("the audit log has {0} break(s): it was changed outside bs-release")]
    AuditBroken(usize),
    /// Several items failed; each already has its own error record.
    #[error("{0} item(s) failed")]
    Items(usize),
}

impl Error {
    pub fn io(path: impl Into<std::path::PathBuf>, e: std::io::Error) -> Error {
        Error::Core(CoreError::io(path, e))
    }
}

impl Report for Error {
    fn exit(&self) -> Exit {
        match self {
            Error::Core(e) => e.exit(),
            Error::Identity(_) | Error::Usage(_) => Exit::Usage,
            _ => Exit::Failed,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Error::Core(e) => e.kind(),
            Error::Identity(_) => "identity",
            Error::Denied(_) => "not_permitted",
            Error::WrongState { .. } => "wrong_state",
            Error::NotFound { .. } => "not_found",
            Error::Changed { .. } => "file_changed",
            Error::TooLarge { .. } => "too_large",
            Error::NotReleasable { .. } => "not_releasable",
            Error::Manifest { .. } => "manifest",
            Error::Publish(_) => "publish",
            Error::Usage(_) => "usage",
            Error::AuditBroken(_) => "audit_tampered",
            Error::Items(_) => "items_failed",
        }
    }

    fn target(&self) -> String {
        match self {
            Error::Core(e) => e.target(),
            Error::WrongState { id, .. } => id.clone(),
            Error::NotFound { what } => what.clone(),
            Error::Changed { path, .. }
            | Error::TooLarge { path, .. }
            | Error::NotReleasable { path, .. }
            | Error::Manifest { path, .. } => path.clone(),
            _ => String::new(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
