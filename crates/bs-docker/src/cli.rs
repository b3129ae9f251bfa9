//! Command-line flags (clap derive only; no syscalls here).

use std::path::PathBuf;

use bs_core::cli::{ApplyArgs, Global};
use clap::{Parser, Subcommand};

/// The Docker engine, its daemon.json, networks and service containers.
#[derive(Parser, Debug)]
#[command(name = "bs-docker", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// What apply would change.
    Plan,
    /// Converge daemon.json, networks and services.
    Apply {
        #[command(flatten)]
        apply: ApplyArgs,
        /// Restart the engine even while job containers run; recreate a
        /// drifted network even with containers attached.
        #[arg(long)]
        force: bool,
    },
    /// Like plan; exit 3 when something differs.
    Check,
    /// Converge only the DOCKER-USER rules of the database networks (what
    /// the bs-docker-firewall unit runs each time the engine starts).
    Firewall {
        /// Report drift (exit 3) instead of changing anything.
        #[arg(long)]
        check: bool,
    },
    /// The engine and one record per declared service.
    Status,
    /// Running job containers with workspace, action, start time and usage.
    Ps,
    /// List, import, load and prune images.
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImagesCommand {
    /// Every image with its tags, size and the containers using it.
    List,
    /// Import a root-file-system tarball as an image (`docker import`).
    Import {
        tarball: PathBuf,
        /// repo:tag of the new image.
        #[arg(long)]
        tag: String,
        /// KEY=VALUE labels to set on the image (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Load a `docker save` archive (for backends with no registry).
    Load { archive: PathBuf },
    /// Pull a job image through the registry proxy (by digest when one is
    /// given, verified), tag it as job-runner does, then remove the old
    /// untagged images of that action that no container uses.
    Update {
        /// NAME[:TAG][@sha256:DIGEST], NAME without the registry (`ehrql:v1`).
        image: String,
    },
    /// Remove images carrying a label, keeping the newest N and any image
    /// a container (running or not) uses.
    Prune {
        /// KEY or KEY=VALUE.
        #[arg(long)]
        label: String,
        #[arg(long, default_value_t = 0)]
        keep: usize,
    },
}
