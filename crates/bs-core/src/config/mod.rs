//! Layered TOML configuration.
//!
//! Layers, later ones winning: `<repo>/backends/defaults.toml` (required) ->
//! `<repo>/backends/<backend>/backend.toml` (required) -> `<root>/etc/bs/local.toml`
//! (optional, host-local overrides). Tables merge key by key; any other value,
//! lists included, replaces what an earlier layer said. Unknown keys are an
//! error, and every error names the layer file that set the offending key and
//! the key's dotted path. A missing required layer is an error: silently
//! skipping one once deployed a backend with the wrong policy (TESS).
//!
//! The schema of every tool's section lives here, one module a section, so a
//! typo in any section stops every tool before it changes anything (exit 2),
//! not just the tool that reads it.

mod chrony;
mod docker;
mod host;
mod jobs;
mod layers;
mod pam;
mod perms;
mod release;
pub mod snapshot;
mod users;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use chrony::{ChronyConfig, ServiceManagerKind};
pub use docker::{
    canonical_ipv4, parse_mount, parse_port, parse_size, valid_interface_name, DockerConfig,
    MountEntry, NetworkSpec, PortEntry, ServiceSpec,
};
pub use host::{parse_hosts_line, valid_package_name, HostConfig};
pub use jobs::{parse_memory, JobsConfig};
pub use layers::Layers;
pub use pam::{PamSettings, PwqualityValue};
pub use perms::{
    parse_mode, split_acl_entry, valid_sudoers_name, LoginSettings, PermsConfig, SudoRule,
    SudoSettings, TreeConfig,
};
pub use release::ReleaseConfig;
pub use snapshot::{Snapshot, SnapshotFile, SNAPSHOT_DIR};
pub use users::{
    valid_unix_name, AuthorizedKeysMode, GroupSpec, GuardConfig, ListSpec, RefreshMode, UsersConfig,
};

use crate::error::{CoreError, Result};
use crate::root::Root;

/// The whole, merged configuration of one backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub backend: BackendInfo,
    pub service_account: ServiceAccount,
    pub paths: Paths,
    #[serde(default)]
    pub http: HttpSettings,
    #[serde(default)]
    pub host: HostConfig,
    #[serde(default)]
    pub users: UsersConfig,
    #[serde(default)]
    pub perms: PermsConfig,
    #[serde(default)]
    pub docker: DockerConfig,
    #[serde(default)]
    pub chrony: ChronyConfig,
    #[serde(default)]
    pub jobs: JobsConfig,
    #[serde(default)]
    pub release: ReleaseConfig,
    /// The repository checkout the config came from: list files and `keys/`
    /// are read relative to it. Not a TOML key.
    #[serde(skip)]
    pub repo: PathBuf,
    /// The backend's directory under `backends/` (`--backend`), which is
    /// what a service is given as `BS_BACKEND`; `[backend] name` may differ.
    /// Not a TOML key.
    #[serde(skip)]
    pub backend_dir: String,
    /// The layer files that were read, in order. Not a TOML key.
    #[serde(skip)]
    pub sources: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendInfo {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// The account the services and jobs run as (`opensafely`, uid/gid 10000).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccount {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paths {
    pub high_privacy: PathBuf,
    pub medium_privacy: PathBuf,
}

/// Settings of the one HTTP agent (see [`crate::http`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    pub connect_timeout_secs: u64,
    pub timeout_secs: u64,
    pub max_body_bytes: u64,
    /// An explicit proxy URL; when absent, `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`
    /// from the environment are honoured.
    pub proxy: Option<String>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            connect_timeout_secs: 5,
            timeout_secs: 20,
            max_body_bytes: 1024 * 1024,
            proxy: None,
        }
    }
}

/// Where to find the config.
#[derive(Debug, Clone)]
pub struct Source {
    /// The repository checkout (holds `backends/`, `developers`, `keys/`).
    pub repo: PathBuf,
    /// The backend's name (`tpp`, `test`).
    pub backend: String,
}

impl Config {
    /// Where this config was loaded from (the repository and `--backend`).
    pub fn source(&self) -> Source {
        Source {
            repo: self.repo.clone(),
            backend: self.backend_dir.clone(),
        }
    }

    /// Read, merge and check every layer.
    pub fn load(source: &Source, root: &Root) -> Result<Config> {
        validate_backend_name(&source.backend)?;
        let mut layers = Layers::default();
        for rel in repo_layers(&source.backend) {
            layers.add_required(&source.repo.join(rel))?;
        }
        Config::from_repo_layers(layers, source, root)
    }

    /// Finish a load whose repository layers are in `layers`: add the
    /// host's local layer, deserialize and check.
    fn from_repo_layers(mut layers: Layers, source: &Source, root: &Root) -> Result<Config> {
        layers.add_optional(&root.join("/etc/bs/local.toml"))?;
        let mut config: Config = layers.deserialize()?;
        config.repo = source.repo.clone();
        config.backend_dir = source.backend.clone();
        config.sources = layers.files().to_vec();
        config.validate(&layers)?;
        Ok(config)
    }

    /// Checks serde cannot express: cross-references between sections.
    fn validate(&self, layers: &Layers) -> Result<()> {
        self.host.validate(layers)?;
        self.users.validate(layers)?;
        self.perms.validate(layers)?;
        self.docker.validate(layers)?;
        self.jobs.validate(layers)?;
        self.chrony.validate(layers)?;
        self.release.validate(layers, &self.users)?;
        Ok(())
    }

    /// A path in the repository checkout (list files, `keys/`).
    pub fn repo_path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.repo.join(rel)
    }
}

/// The files [`Config::load`] reads from the repository, relative to it, in
/// layer order. The one list of them: the snapshot copies exactly these.
pub fn repo_layers(backend: &str) -> [PathBuf; 2] {
    [
        Path::new("backends").join("defaults.toml"),
        Path::new("backends").join(backend).join("backend.toml"),
    ]
}

/// An `http://` or `https://` URL with something after the scheme and no
/// white space: the one check for every configured server (the key source,
/// the job server, the release server).
fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|r| {
        !r.is_empty() && !r.starts_with('/') && !r.chars().any(char::is_whitespace)
    })
}

fn validate_backend_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(CoreError::Usage(format!(
            "backend name {name:?}: use lower-case letters, digits, - and _"
        )))
    }
}

#[cfg(test)]
mod tests;
