//! Exit codes shared by every tool. See the crate docs for the table.

/// How a run ended. The numeric values are the process exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    /// Everything converged (changed or not).
    Ok = 0,
    /// At least one item failed; every other item was still done.
    Failed = 1,
    /// Usage or config error: nothing was changed.
    Usage = 2,
    /// `check` found drift.
    Drift = 3,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The more serious of two outcomes. Usage errors win over failures,
    /// failures over drift: an operator must see the worst thing first.
    pub fn worst(self, other: Exit) -> Exit {
        fn rank(e: Exit) -> u8 {
            match e {
                Exit::Ok => 0,
                Exit::Drift => 1,
                Exit::Failed => 2,
                Exit::Usage => 3,
            }
        }
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_prefers_usage_then_failure_then_drift() {
        assert_eq!(Exit::Ok.worst(Exit::Drift), Exit::Drift);
        assert_eq!(Exit::Drift.worst(Exit::Failed), Exit::Failed);
        assert_eq!(Exit::Failed.worst(Exit::Usage), Exit::Usage);
        assert_eq!(Exit::Usage.worst(Exit::Ok), Exit::Usage);
        assert_eq!(Exit::Failed.code(), 1);
        assert_eq!(Exit::Drift.code(), 3);
    }
}
