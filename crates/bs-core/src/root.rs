//! `Root`: the tree a tool converges. `/` on a real host; a sandbox
//! directory in tests and demos. Every system path goes through
//! [`Root::join`], so nothing special-cases the sandbox except the command
//! runner, which skips commands that would touch the live host.

use std::path::{Component, Path, PathBuf};

use crate::error::{CoreError, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    base: PathBuf,
}

impl Root {
    /// The live host.
    pub fn live() -> Self {
        Root {
            base: PathBuf::from("/"),
        }
    }

    /// A root at `dir`, which must be an absolute path to an existing
    /// directory (a relative root would change meaning with the cwd).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let base: PathBuf = dir.into();
        if !base.is_absolute() {
            return Err(CoreError::Usage(format!(
                "--root {}: must be an absolute path",
                base.display()
            )));
        }
        let meta = std::fs::metadata(&base).map_err(|e| CoreError::io(&base, e))?;
        if !meta.is_dir() {
            return Err(CoreError::Usage(format!(
                "--root {}: not a directory",
                base.display()
            )));
        }
        let base = normalise(&base);
        Ok(Root { base })
    }

    /// True when this root is the running host (`/`): only then may
    /// commands that touch the host (service restarts, cache flushes) run.
    pub fn is_live(&self) -> bool {
        self.base == Path::new("/")
    }

    pub fn path(&self) -> &Path {
        &self.base
    }

    /// Join a system path (`/etc/passwd`) under the root. Resolution is
    /// lexical and behaves like a chroot: `..` never climbs above the root,
    /// so a config value cannot point outside the sandbox.
    pub fn join(&self, system_path: impl AsRef<Path>) -> PathBuf {
        let mut inside = PathBuf::new();
        for comp in system_path.as_ref().components() {
            match comp {
                Component::Normal(part) => inside.push(part),
                Component::ParentDir => {
                    inside.pop();
                }
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
        if inside.as_os_str().is_empty() {
            self.base.clone()
        } else {
            self.base.join(inside)
        }
    }

    /// The part of `path` below the root, as the system path it stands for
    /// (for records: operators think in `/etc/...`, not in sandbox paths).
    pub fn display_path(&self, path: &Path) -> String {
        match path.strip_prefix(&self.base) {
            Ok(rest) => format!("/{}", rest.display()),
            Err(_) => path.display().to_string(),
        }
    }
}

fn normalise(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for comp in p.components() {
        match comp {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_places_system_paths_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path()).unwrap();
        assert_eq!(root.join("/etc/passwd"), dir.path().join("etc/passwd"));
        assert!(!root.is_live());
        assert!(Root::live().is_live());
        assert_eq!(
            Root::live().join("/etc/shadow"),
            PathBuf::from("/etc/shadow")
        );
    }

    #[test]
    fn dot_dot_cannot_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path()).unwrap();
        assert_eq!(
            root.join("/srv/../../../etc/shadow"),
            dir.path().join("etc/shadow")
        );
        assert_eq!(root.join("/.."), dir.path().to_path_buf());
    }

    #[test]
    fn relative_or_missing_roots_are_usage_errors() {
        assert!(matches!(Root::new("rel/dir"), Err(CoreError::Usage(_))));
        assert!(Root::new("/nonexistent/bs-root-test").is_err());
    }

    #[test]
    fn display_path_shows_the_system_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path()).unwrap();
        assert_eq!(
            root.display_path(&root.join("/etc/sudoers.d/x")),
            "/etc/sudoers.d/x"
        );
    }
}
