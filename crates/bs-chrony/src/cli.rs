//! The command line: clap types only, no system calls.

use bs_core::cli::{ApplyArgs, Global};
use clap::{Parser, Subcommand};

/// Hyper-V PTP clock sync for chrony: the refclock config, ordered restarts
/// of the services that depend on the clock, and clock status as JSON Lines.
#[derive(Parser, Debug)]
#[command(name = "bs-chrony", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Show what apply would change (config files, restart).
    Plan,
    /// Write the refclock config (validated with `chronyd -p` first) and,
    /// when it changed, restart chrony with the dependent services stopped.
    Apply(ApplyArgs),
    /// Like plan, plus the clock's health; exit 3 on drift or an unhealthy clock.
    Check,
    /// The clock as chronyd tracks it: reference, offsets, sources.
    Status,
}
