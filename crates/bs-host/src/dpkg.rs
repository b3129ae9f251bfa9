//! The dpkg database, read from its status file (deb822 stanzas). The same
//! parser serves the live host and a sandbox root, so a plan under `--root`
//! comes from that root's database, never the machine's.

use std::collections::BTreeMap;

use bs_core::{CoreError, Root};

pub const STATUS: &str = "/var/lib/dpkg/status";

/// One package as dpkg knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    /// The wanted selection: `install`, `hold`, `deinstall`, `purge`.
    pub want: String,
    /// The state: `installed`, `config-files`, `half-configured`, ...
    pub state: String,
    pub version: String,
}

impl Package {
    /// Unpacked and configured (what `apt-get install` leaves).
    pub fn installed(&self) -> bool {
        self.state == "installed"
    }

    /// Held (`apt-mark hold`): apt's upgrades leave it at its version.
    pub fn held(&self) -> bool {
        self.want == "hold"
    }

    /// Anything of it on disk, config files included (what a purge removes).
    pub fn present(&self) -> bool {
        self.state != "not-installed"
    }
}

#[derive(Clone, Debug, Default)]
pub struct Database {
    packages: BTreeMap<String, Package>,
}

impl Database {
    /// The database under `root`; `None` when the root has none (a sandbox).
    pub fn read(root: &Root) -> Result<Option<Database>, CoreError> {
        let path = root.join(STATUS);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(Database::parse(&text))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CoreError::io(path, e)),
        }
    }

    pub fn parse(text: &str) -> Database {
        let mut packages = BTreeMap::new();
        for stanza in text.split("\n\n") {
            let mut name = None;
            let mut status = None;
            let mut version = String::new();
            for line in stanza.lines() {
                if let Some(v) = line.strip_prefix("Package:") {
                    name = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("Status:") {
                    status = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("Version:") {
                    version = v.trim().to_string();
                }
            }
            let (Some(name), Some(status)) = (name, status) else {
                continue;
            };
            let words: Vec<&str> = status.split_whitespace().collect();
            let [want, _flag, state] = words[..] else {
                continue;
            };
            let pkg = Package {
                want: want.to_string(),
                state: state.to_string(),
                version,
            };
            // A Multi-Arch: same package may appear once per architecture:
            // installed wins over anything else.
            match packages.get(&name) {
                Some(Package { state, .. }) if state == "installed" => {}
                _ => {
                    packages.insert(name, pkg);
                }
            }
        }
        Database { packages }
    }

    pub fn get(&self, name: &str) -> Option<&Package> {
        self.packages.get(name)
    }

    pub fn installed(&self, name: &str) -> bool {
        self.get(name).is_some_and(Package::installed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS_TEXT: &str = "Package: curl\nStatus: install ok installed\nVersion: 7.88.1-10\n\n\
Package: docker.io\nStatus: hold ok installed\nVersion: 20.10.24\n\n\
Package: apport\nStatus: deinstall ok config-files\nVersion: 2.20\n\n\
Package: gone\nStatus: purge ok not-installed\n\n\
Package: libc6\nStatus: install ok installed\nMulti-Arch: same\nArchitecture: amd64\nVersion: 2.36\n\n\
Package: libc6\nStatus: purge ok not-installed\nMulti-Arch: same\nArchitecture: i386\n";

    #[test]
    fn reads_selection_state_and_version() {
        let db = Database::parse(STATUS_TEXT);
        assert!(db.installed("curl"));
        assert!(!db.get("curl").unwrap().held());
        let docker = db.get("docker.io").unwrap();
        assert!(docker.installed() && docker.held());
        assert_eq!(docker.version, "20.10.24");
        let apport = db.get("apport").unwrap();
        assert!(!apport.installed() && apport.present());
        assert!(!db.get("gone").unwrap().present());
        assert!(db.installed("libc6"), "an installed architecture wins");
        assert!(db.get("nosuch").is_none());
    }
}
