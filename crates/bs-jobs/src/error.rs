//! The error type of bs-jobs: each variant carries what an operator needs
//! to act on it (which field of a job, which entry, which container).

use bs_core::{CoreError, Exit};
use bs_engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A job definition that does not validate: `field` is the dotted path.
    #[error("invalid job: {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("job {id}: already submitted")]
    Duplicate { id: String },
    #[error("job {id}: no such job")]
    NoSuchJob { id: String },
    #[error("job {id}: {message}")]
    State { id: String, message: String },
    #[error("{url}: {message}")]
    Controller { url: String, message: String },
    #[error("{0}")]
    Usage(String),
}

impl JobsError {
    /// Field paths and messages can carry the input itself (an unknown
    /// key, a bad value): both are cut to a readable prefix, so a 50 MB
    /// line never lands whole in an error record.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> JobsError {
        JobsError::Invalid {
            field: clip(&field.into(), MAX_FIELD),
            message: clip(&message.into(), MAX_MESSAGE),
        }
    }
}

const MAX_FIELD: usize = 200;
const MAX_MESSAGE: usize = 500;

/// At most `max` bytes of `s` (on a character boundary), with how much
/// was left out when anything was.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} more bytes)", &s[..end], s.len() - end)
}

impl bs_core::cli::Report for JobsError {
    fn exit(&self) -> Exit {
        match self {
            JobsError::Core(e) => e.exit(),
            JobsError::Engine(e) => e.exit(),
            JobsError::Invalid { .. } | JobsError::Usage(_) => Exit::Usage,
            JobsError::Duplicate { .. }
            | JobsError::NoSuchJob { .. }
            | JobsError::State { .. }
            | JobsError::Controller { .. } => Exit::Failed,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            JobsError::Core(e) => e.kind(),
            JobsError::Engine(e) => e.kind(),
            JobsError::Invalid { .. } => "invalid_job",
            JobsError::Duplicate { .. } => "duplicate_job",
            JobsError::NoSuchJob { .. } => "no_such_job",
            JobsError::State { .. } => "job_state",
            JobsError::Controller { .. } => "controller",
            JobsError::Usage(_) => "usage",
        }
    }

    fn target(&self) -> String {
        match self {
            JobsError::Core(e) => e.target(),
            JobsError::Engine(e) => e.target(),
            JobsError::Invalid { field, .. } => field.clone(),
            JobsError::Duplicate { id }
            | JobsError::NoSuchJob { id }
            | JobsError::State { id, .. } => id.clone(),
            JobsError::Controller { url, .. } => url.clone(),
            JobsError::Usage(_) => String::new(),
        }
    }
}

pub type Result<T, E = JobsError> = std::result::Result<T, E>;
