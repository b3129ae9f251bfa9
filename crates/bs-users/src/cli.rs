//! Command-line interface: the clap types and the dispatch to the library.
//! No syscalls here.

use clap::{Args, Parser, Subcommand};
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
    Plan(UsersArgs),
    /// Converge groups, accounts, memberships and keys.
    Apply {
        #[command(flatten)]
        apply: ApplyArgs,
        #[command(flatten)]
        users: UsersArgs,
    },
    /// Like plan, but exit 3 when anything differs.
    Check(UsersArgs),
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

/// What an operator decides that bs must not decide alone.
#[derive(Args, Debug, Default, Clone)]
pub struct UsersArgs {
    /// Take over the existing account NAME for the listed person of that
    /// name (a host migrated from the bash backend-server). Only accounts in
    /// login.defs' UID_MIN..UID_MAX, never the service account. Repeatable;
    /// `[users] adopt` in the config does the same for good.
    #[arg(long, value_name = "NAME")]
    pub adopt: Vec<String>,
    /// Go ahead with a run the mass-change guard stopped (disabling many
    /// people, emptying a group that grants sudo, dropping many people's
    /// fetched keys), after checking it is intended.
    #[arg(long)]
    pub allow_mass_change: bool,
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
        /// Install keys even when many people would lose every fetched key
        /// at once (the key server answering empty for everyone looks so).
        #[arg(long)]
        allow_mass_change: bool,
    },
}

pub fn run(cli: Cli, out: &mut Output) -> Result<Map<String, serde_json::Value>, UsersError> {
    let root = cli.global.root()?;
    match cli.command {
        Command::Plan(users) => crate::converge(&cli.global, &root, Mode::Plan, None, &users, out),
        Command::Check(users) => {
            crate::converge(&cli.global, &root, Mode::Check, None, &users, out)
        }
        Command::Apply { apply, users } => crate::converge(
            &cli.global,
            &root,
            Mode::Apply,
            apply.plan_input(),
            &users,
            out,
        ),
        Command::List => crate::list(&root, out),
        Command::Disable { login } => crate::disable(&cli.global, &root, &login, out),
        Command::Keys(KeysCommand::Refresh {
            random_delay,
            allow_mass_change,
        }) => crate::refresh::run(&cli.global, &root, random_delay, allow_mass_change, out),
    }
}
