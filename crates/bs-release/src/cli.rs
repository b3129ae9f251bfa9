//! Command-line flags (clap derive). No syscalls here.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Release requests for medium-privacy outputs: independent reviews,
/// publication to the release server with checksums, an append-only audit log.
///
/// People run it through sudo as the service account
/// (`sudo -u opensafely bs-release ...`); who they are comes from sudo.
#[derive(Parser, Debug)]
#[command(name = "bs-release", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: bs_core::cli::Global,
    /// Act for USER. Only when running as root (tests, administrators); audited.
    #[arg(long = "as", global = true, value_name = "USER")]
    pub as_user: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The releasable outputs of a workspace, with size, sha256 and manifest data.
    Files { workspace: String },
    /// Create, fill, submit, withdraw, return, approve or reject a request.
    #[command(subcommand)]
    Request(RequestCommand),
    /// Vote on one output file of a request: --approve, --request-changes,
    /// or --reset (take your vote back, until your review is submitted).
    /// Then `request submit-review ID`.
    #[command(group = clap::ArgGroup::new("vote").required(true))]
    Review {
        id: String,
        path: String,
        #[arg(long, group = "vote")]
        approve: bool,
        #[arg(long, group = "vote", visible_alias = "reject")]
        request_changes: bool,
        #[arg(long, group = "vote")]
        reset: bool,
        /// A note kept with your vote (checkers only, blinded like the vote).
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
    },
    /// Upload an approved request to the release server (resumes a failed publish).
    Publish { id: String },
    /// List requests.
    Ls {
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
    },
    /// Show one request: files, findings, reviews, history.
    Show { id: String },
    /// The audit log, optionally from a time on (UTC, `YYYY-MM-DD[THH[:MM[:SS]]]`).
    Audit {
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
    },
    /// Like `plan`, exiting 3 when `apply` has something to do (drift; the
    /// `check` verb of `bin/converge --verb check`).
    Check,
    /// The disclosure checks of workspace outputs (paths under the
    /// medium-privacy workspaces): small counts, patient ids, long tables, types.
    Disclosure {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Copy released files one way to DIR/<workspace>/<path> (TPP's level-4 share).
    #[command(name = "sync-level4")]
    SyncLevel4 {
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Also remove files under DIR/<workspace>/ that are not released files.
        #[arg(long)]
        delete: bool,
    },
    /// The review web UI on a Unix socket (`[release] web_socket`, or the
    /// socket systemd passes): people reach it with `ssh -L`, and are known
    /// by the kernel's peer credentials. Runs as the service account (or root).
    Serve {
        /// Listen here instead of `[release] web_socket`.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Say who is connected to the running server, and exit.
        #[arg(long)]
        status: bool,
    },
    /// What `apply` would do: the state directories and the sudo host file.
    Plan,
    /// Create the request store, the audit directory and /etc/bs/release.toml (root only).
    Apply(bs_core::cli::ApplyArgs),
}

#[derive(Subcommand, Debug)]
pub enum RequestCommand {
    /// Start a request for a workspace's outputs.
    Create { workspace: String },
    /// Copy outputs (paths relative to the workspace) into the request.
    Add {
        id: String,
        #[arg(required = true)]
        paths: Vec<String>,
        /// The group the files go in (default: `default`; a replaced file keeps its group).
        #[arg(long, value_name = "NAME")]
        group: Option<String>,
        /// Supporting files: reviewed as context for the outputs, never released.
        #[arg(long)]
        supporting: bool,
    },
    /// Describe a group: the context of its files and the disclosure controls
    /// applied (both needed before submitting).
    Group {
        id: String,
        name: String,
        #[arg(long, value_name = "TEXT")]
        context: Option<String>,
        #[arg(long, value_name = "TEXT")]
        controls: Option<String>,
    },
    /// Comment on a group: the author publicly; a checker for checkers only
    /// (default) or, with --public, for the author too.
    Comment {
        id: String,
        group: String,
        text: String,
        #[arg(long)]
        public: bool,
    },
    /// Take files out of a pending or returned request.
    Remove {
        id: String,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Hand the request to the output checkers.
    Submit { id: String },
    /// Withdraw your own request.
    Withdraw { id: String },
    /// Submit your review (every output voted on): the first review makes
    /// the request partially reviewed, the second reviewed.
    #[command(name = "submit-review")]
    SubmitReview { id: String },
    /// Send the request back to its author for changes.
    Return {
        id: String,
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
    },
    /// Approve a reviewed request whose files all have enough approvals.
    Approve { id: String },
    /// Reject a reviewed request (a comment is required).
    Reject {
        id: String,
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
    },
}
