//! Command-line flags of bs-perms (clap derive only; no syscalls here).

use clap::{Args, Parser, Subcommand};

use bs_core::cli::{ApplyArgs, Global};

/// Directory trees with owners, modes and POSIX ACLs; sudoers rules; sshd
/// and login hardening. JSON Lines on stdout (docs/bs-perms.md).
#[derive(Parser, Debug)]
#[command(name = "bs-perms", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show what apply would change (exit 0).
    Plan(WalkArgs),
    /// Converge trees, sudoers.d files and login hardening.
    Apply {
        #[command(flatten)]
        apply: ApplyArgs,
        #[command(flatten)]
        walk: WalkArgs,
    },
    /// Like plan, but exit 3 when anything differs (drift).
    Check(WalkArgs),
    /// The managed trees and the sudoers.d files bs installed.
    List,
}

#[derive(Args, Debug, Clone, Default)]
pub struct WalkArgs {
    /// Print only counts per tree, no record per path (for huge trees).
    #[arg(long)]
    pub summary: bool,
    /// Walker threads (default: the number of CPUs, at most 8).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}
