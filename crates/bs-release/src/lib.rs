//! bs-release: release requests for medium-privacy outputs, independent
//! reviews, publication to the release server with checksums, and an
//! append-only audit log. See docs/bs-release.md.
//!
//! The flow of one run: find the root and config (pinned by root in
//! `/etc/bs/release.toml` when a person runs us through sudo, so nobody can
//! point us at a config or root of their own), establish who is calling,
//! then do one command. Commands that change a request hold the request
//! store's lock from reading the request to writing it back, and decide
//! everything (roles, state, file checks) before writing anything.

mod approval;
pub mod audit;
pub mod checks;
pub mod cli;
mod content;
mod disclosure;
mod dispatch;
pub mod error;
mod events;
pub mod hash;
pub mod identity;
pub mod manifest;
mod publish;
pub mod request;
mod requests;
mod reviews;
mod session;
mod setup;
pub mod store;
mod sync;
pub mod timefmt;
mod ulid;
mod views;
mod visibility;
mod web;
mod workspace_files;

use std::path::{Path, PathBuf};

use bs_core::cli::Global;
use bs_core::config::{Config, Source};
use bs_core::plan::Mode;
use bs_core::safefs::DirFd;
use bs_core::{Output, Root};
use serde::Deserialize;
use serde_json::{Map, Value};

pub use error::{Error, Result};

use cli::{Cli, Command};

/// Written by `bs-release apply` (root): the config snapshot
/// (`/var/lib/bs/repo`, never the operator's checkout) and backend that runs
/// through sudo use, whatever the caller passes or sets.
pub const HOST_FILE: &str = "/etc/bs/release.toml";

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostPin {
    pub repo: PathBuf,
    pub backend: String,
}

/// Run one command.
pub fn run(cli: Cli, out: &mut Output) -> Result<Map<String, Value>> {
    let ruid = rustix::process::getuid().as_raw();
    let (root, config) = load_config(&cli.global, ruid)?;
    let svc = &config.service_account;
    if ruid != 0 && ruid != svc.uid {
        return Err(Error::Identity(format!(
            "bs-release runs as the service account: use `sudo -u {} bs-release ...`",
            svc.name
        )));
    }
    match &cli.command {
        Command::Plan => return setup::run(&root, &config, out, Mode::Plan, None),
        Command::Check => return setup::run(&root, &config, out, Mode::Check, None),
        Command::Apply(args) => {
            if ruid != 0 {
                return Err(Error::Denied("bs-release apply must run as root".into()));
            }
            let _lock = cli.global.lock(&root)?;
            let given = match args.plan_input() {
                Some(p) => Some(p.read::<setup::SetupChange>("bs-release")?),
                None => None,
            };
            return setup::run(&root, &config, out, Mode::Apply, given);
        }
        Command::Serve { socket, status } => {
            let socket = socket
                .clone()
                .unwrap_or_else(|| root.join(&config.release.web_socket));
            if *status {
                return web::status(&socket, out);
            }
            // The server is the service account's own (its systemd unit) or
            // root's: a person through sudo could otherwise put a server of
            // theirs on a socket others trust.
            if identity::SudoEnv::from_env().user.is_some() {
                return Err(Error::Denied(
                    "bs-release serve runs from its systemd unit, not through sudo (serve --status is fine)".into(),
                ));
            }
            return web::serve(root, config, &socket, cli.global.lock_timeout, out);
        }
        _ => {}
    }
    dispatch::run(cli, root, config, ruid, out)
}

/// The root and config: from the flags when root runs us; from the pinned
/// host file when the service account does (a person through sudo).
fn load_config(global: &Global, ruid: u32) -> Result<(Root, Config)> {
    if ruid == 0 {
        let root = global.root()?;
        let config = global.config(&root)?;
        return Ok((root, config));
    }
    if global.root != Path::new("/") {
        return Err(Error::Usage(
            "--root is for root only: through sudo bs-release always works on this host".into(),
        ));
    }
    let root = Root::live();
    let pin = read_pin(&root)?;
    if let Some(b) = &global.backend {
        if *b != pin.backend {
            return Err(Error::Usage(format!(
                "--backend {b}: this host's backend is {} ({HOST_FILE})",
                pin.backend
            )));
        }
    }
    if global.repo != Path::new(".") && global.repo != pin.repo {
        return Err(Error::Usage(format!(
            "--repo is fixed by {HOST_FILE} for runs through sudo"
        )));
    }
    let config = Config::load(
        &Source {
            repo: pin.repo,
            backend: pin.backend,
        },
        &root,
    )?;
    Ok((root, config))
}

/// Read the pin, refusing one that someone other than root could have written.
pub fn read_pin(root: &Root) -> Result<HostPin> {
    let path = root.join(HOST_FILE);
    let (dir, name) = bs_core::safefs::split(&path)?;
    let dir = DirFd::open(dir)?;
    let Some((bytes, st)) = dir.read_file(name, 64 * 1024)? else {
        return Err(Error::Usage(format!(
            "{HOST_FILE} is missing: root must run `bs-release apply` first"
        )));
    };
    if st.st_uid != 0 || st.st_mode & 0o022 != 0 {
        return Err(Error::Usage(format!(
            "{HOST_FILE} must be owned by root and writable only by root"
        )));
    }
    let text = String::from_utf8_lossy(&bytes);
    toml::from_str(&text).map_err(|e| Error::Usage(format!("{HOST_FILE}: {e}")))
}
