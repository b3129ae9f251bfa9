//! Command-line flags of bs-host (clap derive only; no syscalls here).

use clap::{Parser, Subcommand};

use bs_core::cli::{ApplyArgs, Global};

/// The host baseline: Debian packages present, purged and held, a guarded
/// upgrade, the managed block of /etc/hosts, the motd, disabled services and
/// the backend's name on the host. JSON Lines on stdout (docs/bs-host.md).
#[derive(Parser, Debug)]
#[command(name = "bs-host", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show what apply would change (exit 0).
    Plan,
    /// Converge packages, holds, /etc/hosts, motd, services and the profile.
    Apply(ApplyArgs),
    /// Like plan, but exit 3 when anything differs (drift).
    Check,
    /// The configured packages' state, holds and the managed files as they are.
    Status,
    /// apt-get update and upgrade of everything but the held packages; with
    /// --engine, then the engine package too, unless a job container runs.
    Upgrade {
        /// Also upgrade the engine package (restarts the engine: only when
        /// no job container runs, else refused).
        #[arg(long)]
        engine: bool,
    },
    /// Which backend this host is.
    Whereami,
}
