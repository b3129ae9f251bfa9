//! Command-line interface: the clap types and the dispatch to the library.
//! No syscalls here.

use clap::{Parser, Subcommand};
use serde_json::Map;

use bs_core::cli::{ApplyArgs, Global};
use bs_core::plan::Mode;
use bs_core::Output;

use crate::error::UsersError;

/// Accounts, groups and SSH keys of the people who may log in.
///
/// People come from the list files the backend config names (one GitHub
/// login a line); keys from the repository's keys/<login> and, when the
/// backend fetches them, <key_source>/<login>.keys. A person dropped from
/// every list is disabled, never deleted. Prints JSON Lines on stdout
/// (docs/json.md); exit 0 ok, 1 an item failed, 2 usage or config error
/// (nothing changed), 3 drift (check).
#[derive(Parser, Debug)]
#[command(name = "bs-users", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the changes apply would make, without making them.
    Plan,
    /// Converge groups, accounts, memberships and keys.
    Apply(ApplyArgs),
    /// Like plan, but exit 3 when anything differs.
    Check,
    /// One record per managed user: groups, keys, active or disabled.
    List,
    /// Disable a user now: keys removed, out of every managed group,
    /// locked, expired, shell nologin; the home is kept. Refused while the
    /// login is still on a list.
    Disable {
        /// The GitHub login (or Unix name) to disable.
        login: String,
    },
    /// SSH keys only (the 15-minute timer's job).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Fetch and install every managed user's keys; no account changes.
    /// Works from the snapshot the last apply left under /var/lib/bs, so it
    /// needs no repository checkout.
    Refresh {
        /// Sleep a random 0..SECS seconds first, so many hosts do not fetch at once.
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        random_delay: u64,
    },
}

pub fn run(cli: Cli, out: &mut Output) -> Result<Map<String, serde_json::Value>, UsersError> {
    let root = cli.global.root()?;
    match cli.command {
        Command::Plan => crate::converge(&cli.global, &root, Mode::Plan, None, out),
        Command::Check => crate::converge(&cli.global, &root, Mode::Check, None, out),
        Command::Apply(args) => {
            crate::converge(&cli.global, &root, Mode::Apply, args.plan_input(), out)
        }
        Command::List => crate::list(&root, out),
        Command::Disable { login } => crate::disable(&cli.global, &root, &login, out),
        Command::Keys(KeysCommand::Refresh { random_delay }) => {
            crate::refresh::run(&cli.global, &root, random_delay, out)
        }
    }
}
