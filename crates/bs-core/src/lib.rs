//! bs-core: what every bs tool must do the same way.
//!
//! Each concern is one module:
//!
//! | module      | concern |
//! |-------------|---------|
//! | [`root`]    | every system path joined under `--root` (a sandbox tree or `/`) |
//! | [`config`]  | layered TOML config, unknown keys refused, errors naming file and key |
//! | [`secrets`] | the secrets env file (0600, never printed) |
//! | [`output`]  | JSON Lines records on stdout, the summary line, exit codes |
//! | [`plan`]    | plan / apply / `apply --plan` / check over a tool's change type |
//! | [`lock`]    | the run lock every mutating run holds |
//! | [`safefs`]  | fd-based, no-follow file operations and atomic writes |
//! | [`cmd`]     | the argv command runner that records what ran |
//! | [`http`]    | the one HTTP agent with timeouts, a body limit and proxy support |
//! | [`accounts`]| reading and writing passwd/group/shadow/gshadow under a root |
//! | [`cli`]     | the flags every tool shares and the `main` wrapper |
//! | [`validate`]| generated config checked by its reader (`visudo -cf`, `sshd -t`) before it goes live |
//!
//! # Exit codes
//!
//! Written down once, here, and used by every tool (see [`exit::Exit`]):
//!
//! * `0` ok (whether or not something changed)
//! * `1` some item failed; the other items were still done
//! * `2` usage or config error; nothing was changed
//! * `3` drift found by `check`

pub mod accounts;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod error;
pub mod exit;
pub mod http;
pub mod lock;
pub mod output;
pub mod plan;
pub mod root;
pub mod safefs;
pub mod secrets;
pub mod validate;

pub use error::CoreError;
pub use exit::Exit;
pub use output::Output;
pub use root::Root;
