//! Command-line flags of bs-jobs (clap derive only; no syscalls here).

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "bs-jobs",
    version,
    about = "A crash-safe job queue and a runner of actions in locked-down containers"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: bs_core::cli::Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Queue jobs: one JSON object, or JSON Lines (one job a line), from a file or - (stdin).
    Submit {
        #[arg(default_value = "-", value_name = "FILE|-")]
        file: String,
    },
    /// Fetch tasks from the controller, queue and cancel jobs, send status updates.
    Poll {
        /// One round, then exit.
        #[arg(long, conflicts_with = "every")]
        once: bool,
        /// A round every SECS seconds, forever.
        #[arg(long, value_name = "SECS")]
        every: Option<u64>,
    },
    /// Run queued jobs: recover after a crash, then claim and run.
    Work {
        /// Run until the queue is empty, then exit.
        #[arg(long, conflicts_with = "forever")]
        once: bool,
        /// Keep waiting for jobs.
        #[arg(long)]
        forever: bool,
        /// Jobs run at the same time ([jobs] max_workers when not given).
        #[arg(long, value_name = "N")]
        max_workers: Option<usize>,
        /// What runs a job: the Docker engine, or nothing (measures the queue's overhead).
        #[arg(long, value_enum, default_value_t = ExecutorKind::Docker, hide = true)]
        executor: ExecutorKind,
    },
    /// Cancel a job: a queued one is failed at once, a running one is killed.
    Cancel { id: String },
    /// List jobs: queued, running, done and failed, with stage and age.
    Ls {
        /// Only jobs in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
    },
    /// Show one job's entry.
    Show { id: String },
    /// Put a failed (or done) job back in the queue.
    Retry { id: String },
    /// What `apply` would change: the queue directories and the systemd units.
    Plan,
    /// Create the queue directories and install the poller and worker units.
    Apply(bs_core::cli::ApplyArgs),
    /// Like plan; exit 3 on drift.
    Check,
    /// Time create + start + wait + remove of a container (bench/bs-jobs.sh).
    #[command(hide = true)]
    BenchLaunch {
        #[arg(long, default_value = "bs-busybox:latest")]
        image: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutorKind {
    Docker,
    Noop,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateArg {
    Queued,
    Running,
    Done,
    Failed,
}
