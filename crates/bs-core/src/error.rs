//! The error type of bs-core. Each variant carries the context an operator
//! needs to act on it (which file, which key, which command).

use std::path::PathBuf;

use crate::exit::Exit;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{file}: {key}: {message}")]
    Config {
        file: PathBuf,
        key: String,
        message: String,
    },
    #[error("{file}: required config layer is missing")]
    ConfigLayerMissing { file: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: refusing to use it: {reason}")]
    Unsafe { path: PathBuf, reason: String },
    #[error("{path}: another bs run holds the lock{holder} and it was not released within {waited_secs} s")]
    LockTimeout {
        path: PathBuf,
        holder: String,
        waited_secs: u64,
    },
    #[error("{file}: {message}")]
    Secrets { file: PathBuf, message: String },
    #[error("could not run {program}: {source}")]
    CommandSpawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {secs} s and was killed")]
    CommandTimeout { program: String, secs: u64 },
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("plan input line {line}: {message}")]
    PlanInput { line: usize, message: String },
    #[error("{0}")]
    Usage(String),
}

impl CoreError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }

    /// The exit code this error leads to when it ends a run.
    pub fn exit(&self) -> Exit {
        match self {
            CoreError::Config { .. }
            | CoreError::ConfigLayerMissing { .. }
            | CoreError::Secrets { .. }
            | CoreError::PlanInput { .. }
            | CoreError::Usage(_) => Exit::Usage,
            _ => Exit::Failed,
        }
    }

    /// The `kind` of the error record this error becomes.
    pub fn kind(&self) -> &'static str {
        match self {
            CoreError::Config { .. } => "config",
            CoreError::ConfigLayerMissing { .. } => "config_layer_missing",
            CoreError::Io { .. } => "io",
            CoreError::Unsafe { .. } => "unsafe_path",
            CoreError::LockTimeout { .. } => "lock_timeout",
            CoreError::Secrets { .. } => "secrets",
            CoreError::CommandSpawn { .. } => "command_spawn",
            CoreError::CommandTimeout { .. } => "command_timeout",
            CoreError::Http { .. } => "http",
            CoreError::PlanInput { .. } => "plan_input",
            CoreError::Usage(_) => "usage",
        }
    }

    /// What the error is about, for the record's `target`.
    pub fn target(&self) -> String {
        match self {
            CoreError::Config { file, .. }
            | CoreError::ConfigLayerMissing { file }
            | CoreError::Secrets { file, .. } => file.display().to_string(),
            CoreError::Io { path, .. }
            | CoreError::Unsafe { path, .. }
            | CoreError::LockTimeout { path, .. } => path.display().to_string(),
            CoreError::CommandSpawn { program, .. } | CoreError::CommandTimeout { program, .. } => {
                program.clone()
            }
            CoreError::Http { url, .. } => url.clone(),
            CoreError::PlanInput { .. } | CoreError::Usage(_) => String::new(),
        }
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
