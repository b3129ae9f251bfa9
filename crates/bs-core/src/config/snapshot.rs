//! The config snapshot: the repository files the config loader reads, copied
//! to `/var/lib/bs/repo/` for what runs after `just manage` has finished.
//!
//! Operators run `sudo just manage <backend>` from wherever their checkout is
//! (the original's README: "the checkout is ephemeral ... your home dir is
//! fine"). The bs-jobs units and bs-release through sudo run later, as root
//! or as the service account, and used to read that checkout: deleted or
//! moved, it stopped them; in a developer's home (0750) the service account
//! could never read it. So every manage run copies exactly the files
//! [`Config::load`] reads from the repository ([`super::repo_layers`]) here,
//! with the same relative layout, and those services get this directory as
//! their `BS_REPO`. The host's `/etc/bs/local.toml` is not copied: it is not
//! in the checkout and is read where it is.
//!
//! Owned by root, files 0644 and directories 0755: config holds no secrets
//! (they live in secrets files), the service account must read it, and
//! nobody but root may change what the services load. Only what the loader
//! reads is here (no people lists, no `keys/`), so tools that read those
//! (bs-users) cannot use it as their repository.
//!
//! Files of another backend a host used before are left alone: while a
//! manage chain switches backends, bs-jobs rewrites the snapshot before
//! bs-release re-pins, and people using bs-release in between still load the
//! old backend's file. They hold no secrets and nothing reads them once
//! nothing names that backend.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use serde_json::{json, Value};

use super::{repo_layers, validate_backend_name, Config, Layers, Source};
use crate::error::{CoreError, Result};
use crate::output::Output;
use crate::plan::Mode;
use crate::root::Root;
use crate::safefs::{self, DirFd, FileSpec};

/// Where the snapshot lives (a system path, joined under the root).
pub const SNAPSHOT_DIR: &str = "/var/lib/bs/repo";

const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// One repository file, as read from the checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// Relative to the repository, and so to the snapshot.
    pub rel: PathBuf,
    /// Where it was read from (for records: which checkout file it copies).
    pub source: PathBuf,
    pub content: String,
}

impl SnapshotFile {
    /// Its place in the snapshot, as a system path (`/var/lib/bs/repo/...`).
    pub fn target(&self) -> String {
        Path::new(SNAPSHOT_DIR)
            .join(&self.rel)
            .display()
            .to_string()
    }
}

/// The repository files one backend's config is loaded from, read once.
#[derive(Debug, Clone)]
pub struct Snapshot {
    backend: String,
    files: Vec<SnapshotFile>,
}

impl Snapshot {
    /// Read the repository layers of `source` and check that exactly these
    /// bytes load (with `root`'s local layer) before anything is written: a
    /// broken file must never replace a snapshot that works, and a layer file
    /// that is a symlink to something else must not get copied out 0644
    /// unless it is a valid config layer.
    pub fn capture(source: &Source, root: &Root) -> Result<Snapshot> {
        validate_backend_name(&source.backend)?;
        // Records name the checkout absolutely: a relative `.` says nothing
        // once the run is over.
        let repo = std::fs::canonicalize(&source.repo).unwrap_or_else(|_| source.repo.clone());
        let mut layers = Layers::default();
        let mut files = Vec::new();
        for rel in repo_layers(&source.backend) {
            let path = repo.join(&rel);
            let content = super::layers::read_required(&path)?;
            layers.add_text(&path, &content)?;
            files.push(SnapshotFile {
                rel,
                source: path,
                content,
            });
        }
        Config::from_repo_layers(
            layers,
            &Source {
                repo,
                backend: source.backend.clone(),
            },
            root,
        )?;
        Ok(Snapshot {
            backend: source.backend.clone(),
            files,
        })
    }

    pub fn files(&self) -> &[SnapshotFile] {
        &self.files
    }

    /// The file of this snapshot whose target is `target`.
    pub fn file(&self, target: &str) -> Option<&SnapshotFile> {
        self.files.iter().find(|f| f.target() == target)
    }

    /// The snapshot's source: what the services are given as `BS_REPO` and
    /// `BS_BACKEND` (the directory as a system path, not joined under the root).
    pub fn source(&self) -> Source {
        Source {
            repo: PathBuf::from(SNAPSHOT_DIR),
            backend: self.backend.clone(),
        }
    }

    /// Whether `file` is in the snapshot with exactly this content, owner
    /// and mode, and every directory on its way is root's and 0755.
    pub fn is_current(&self, root: &Root, file: &SnapshotFile) -> Result<bool> {
        let (top, _) = safefs::split(Path::new(SNAPSHOT_DIR))?;
        let mut dir = match DirFd::open(&root.join(top)) {
            Ok(d) => d,
            Err(e) if not_there(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        let (dirs, name) = parts(file)?;
        for part in &dirs {
            dir = match dir.open_subdir(part) {
                Ok(d) => d,
                Err(e) if not_there(&e) => return Ok(false),
                Err(e) => return Err(e),
            };
            let st = dir.stat()?;
            if st.st_uid != 0 || st.st_gid != 0 || st.st_mode & 0o7777 != DIR_MODE {
                return Ok(false);
            }
        }
        dir.file_is(name, file.content.as_bytes(), &FileSpec::root(FILE_MODE))
    }

    /// Write `file` into the snapshot atomically (the caller holds the run
    /// lock). False when it already was exactly that (another tool of the
    /// same manage chain wrote it).
    pub fn write(&self, root: &Root, file: &SnapshotFile) -> Result<bool> {
        let (top, _) = safefs::split(Path::new(SNAPSHOT_DIR))?;
        let top = root.join(top);
        // /var/lib/bs is shared by every tool and some run as the service
        // account: traversable, as bs-users makes it.
        safefs::ensure_dir_all(&top, &FileSpec::root(DIR_MODE))?;
        let mut dir = DirFd::open(&top)?;
        let mut changed = false;
        let (dirs, name) = parts(file)?;
        for part in &dirs {
            let (sub, made) = dir.ensure_subdir(part, &FileSpec::root(DIR_MODE))?;
            dir = sub;
            changed |= made;
        }
        changed |= dir.write_file(name, file.content.as_bytes(), &FileSpec::root(FILE_MODE))?;
        Ok(changed)
    }

    /// The files that are not in the snapshot as captured: what a plan
    /// writes.
    pub fn stale(&self, root: &Root) -> Result<Vec<&SnapshotFile>> {
        let mut out = Vec::new();
        for file in &self.files {
            if !self.is_current(root, file)? {
                out.push(file);
            }
        }
        Ok(out)
    }

    /// One `snapshot` item a file, the same in every tool that keeps the
    /// snapshot: the `stale` ones (from [`Snapshot::stale`], or what a plan
    /// given back still names) are written under `Mode::Apply` and reported
    /// as changes otherwise. Under `Mode::Apply` the snapshot is then loaded,
    /// whether or not this run wrote it: the caller points services at it
    /// next. Whether a file was written.
    pub fn converge(
        &self,
        root: &Root,
        mode: Mode,
        stale: &[&SnapshotFile],
        out: &mut Output,
    ) -> Result<bool> {
        let apply = mode == Mode::Apply;
        let mut wrote = false;
        for file in &self.files {
            let changed = match (stale.iter().any(|f| f.rel == file.rel), apply) {
                (false, _) => false,
                (true, true) => self.write(root, file)?,
                (true, false) => true,
            };
            wrote |= changed && apply;
            out.item("snapshot", changed, &Snapshot::record(file, changed));
        }
        if apply {
            self.load(root)?;
        }
        Ok(wrote)
    }

    /// Load the config from the snapshot as written: what the services will
    /// load. Call it before pointing anything at the snapshot. A failure here
    /// comes after files were written, so it is a failed item (exit 1), not
    /// a config error ("nothing changed").
    pub fn load(&self, root: &Root) -> Result<Config> {
        let source = Source {
            repo: root.join(SNAPSHOT_DIR),
            backend: self.backend.clone(),
        };
        Config::load(&source, root).map_err(|e| CoreError::Unsafe {
            path: source.repo,
            reason: format!("the config snapshot does not load: {e}"),
        })
    }

    /// The record fields of `file` (`"type": "snapshot"`), the same in every
    /// tool that writes the snapshot; the content only when it changes.
    pub fn record(file: &SnapshotFile, changed: bool) -> Value {
        if changed {
            json!({"action": "write_snapshot", "target": file.target(),
                   "source": file.source, "content": file.content})
        } else {
            json!({"action": "none", "target": file.target(), "source": file.source})
        }
    }
}

/// The directories below `/var/lib/bs` (`repo`, `backends`, ...) and the file
/// name of `file`. Only plain components: `rel` comes from
/// [`super::repo_layers`] with a checked backend name, but the walk must not
/// climb out whatever it is given.
fn parts(file: &SnapshotFile) -> Result<(Vec<&OsStr>, &OsStr)> {
    let (_, top_name) = safefs::split(Path::new(SNAPSHOT_DIR))?;
    let (rel_dir, name) = safefs::split(&file.rel)?;
    let mut dirs = vec![top_name];
    for comp in rel_dir.components() {
        match comp {
            Component::Normal(part) => dirs.push(part),
            _ => {
                return Err(CoreError::Unsafe {
                    path: file.rel.clone(),
                    reason: "a snapshot path must be plain and relative".into(),
                })
            }
        }
    }
    Ok((dirs, name))
}

/// A directory missing, or something other than a directory where one should
/// be: either way the file is not current, and `write` repairs or refuses.
fn not_there(e: &CoreError) -> bool {
    match e {
        CoreError::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        CoreError::Unsafe { .. } => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// A checkout with the workspace's real defaults.toml and test backend,
    /// and a sandbox root.
    fn setup() -> (tempfile::TempDir, PathBuf, Root) {
        let dir = tempfile::tempdir().unwrap();
        let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../backends");
        let repo = dir.path().join("checkout");
        std::fs::create_dir_all(repo.join("backends/test")).unwrap();
        std::fs::copy(
            real.join("defaults.toml"),
            repo.join("backends/defaults.toml"),
        )
        .unwrap();
        std::fs::copy(
            real.join("test/backend.toml"),
            repo.join("backends/test/backend.toml"),
        )
        .unwrap();
        // Not read by the loader: must not be copied.
        std::fs::write(repo.join("backends/test/researchers"), "someone\n").unwrap();
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        let root = Root::new(dir.path().join("root")).unwrap();
        (dir, repo, root)
    }

    fn source(repo: &Path) -> Source {
        Source {
            repo: repo.to_path_buf(),
            backend: "test".into(),
        }
    }

    fn write_all(snap: &Snapshot, root: &Root) -> Vec<bool> {
        snap.files()
            .iter()
            .map(|f| snap.write(root, f).unwrap())
            .collect()
    }

    #[test]
    fn copies_exactly_the_loaded_layers_root_owned_and_readable() {
        let (_dir, repo, root) = setup();
        let snap = Snapshot::capture(&source(&repo), &root).unwrap();
        assert_eq!(write_all(&snap, &root), [true, true]);
        let base = root.join(SNAPSHOT_DIR);
        let mut found: Vec<String> = Vec::new();
        for entry in walk(&base) {
            found.push(entry.strip_prefix(&base).unwrap().display().to_string());
        }
        found.sort();
        assert_eq!(
            found,
            [
                "backends",
                "backends/defaults.toml",
                "backends/test",
                "backends/test/backend.toml"
            ]
        );
        for (rel, mode) in [
            ("", 0o755),
            ("backends", 0o755),
            ("backends/test", 0o755),
            ("backends/defaults.toml", 0o644),
        ] {
            let m = std::fs::metadata(base.join(rel)).unwrap();
            assert_eq!((m.uid(), m.mode() & 0o7777), (0, mode), "{rel}");
        }
        assert_eq!(
            std::fs::read(base.join("backends/test/backend.toml")).unwrap(),
            std::fs::read(repo.join("backends/test/backend.toml")).unwrap()
        );
        let config = snap.load(&root).unwrap();
        assert_eq!(config.backend.name, "test");
        assert_eq!(config.repo, base);
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
        out
    }

    #[test]
    fn a_second_capture_of_the_same_checkout_writes_nothing() {
        // Two tools of one manage chain: each captures and writes.
        let (_dir, repo, root) = setup();
        let first = Snapshot::capture(&source(&repo), &root).unwrap();
        write_all(&first, &root);
        let second = Snapshot::capture(&source(&repo), &root).unwrap();
        for f in second.files() {
            assert!(second.is_current(&root, f).unwrap(), "{}", f.target());
        }
        assert_eq!(write_all(&second, &root), [false, false]);
    }

    #[test]
    fn a_changed_layer_or_a_loosened_directory_is_not_current_and_is_rewritten() {
        let (_dir, repo, root) = setup();
        let snap = Snapshot::capture(&source(&repo), &root).unwrap();
        write_all(&snap, &root);
        let layer = repo.join("backends/test/backend.toml");
        let mut text = std::fs::read_to_string(&layer).unwrap();
        text = text.replacen("description = \"", "description = \"changed: ", 1);
        std::fs::write(&layer, &text).unwrap();
        let snap = Snapshot::capture(&source(&repo), &root).unwrap();
        let current: Vec<bool> = snap
            .files()
            .iter()
            .map(|f| snap.is_current(&root, f).unwrap())
            .collect();
        assert_eq!(current, [true, false]);
        assert_eq!(write_all(&snap, &root), [false, true]);
        assert!(snap
            .load(&root)
            .unwrap()
            .backend
            .description
            .starts_with("changed: "));

        let backends = root.join(SNAPSHOT_DIR).join("backends");
        std::fs::set_permissions(&backends, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!snap.is_current(&root, &snap.files()[0]).unwrap());
        assert!(snap.write(&root, &snap.files()[0]).unwrap());
        let m = std::fs::metadata(&backends).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o755);
    }

    #[test]
    fn a_broken_layer_is_refused_before_anything_is_written() {
        let (_dir, repo, root) = setup();
        std::fs::write(
            repo.join("backends/test/backend.toml"),
            "[backend]\nnme = \"x\"\n",
        )
        .unwrap();
        let err = Snapshot::capture(&source(&repo), &root).unwrap_err();
        assert_eq!(err.kind(), "config", "{err}");
        assert!(!root.join(SNAPSHOT_DIR).exists());
    }

    #[test]
    fn a_symlinked_snapshot_directory_is_refused_not_followed() {
        let (dir, repo, root) = setup();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::create_dir_all(root.join("/var/lib/bs")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join(SNAPSHOT_DIR)).unwrap();
        let snap = Snapshot::capture(&source(&repo), &root).unwrap();
        assert!(!snap.is_current(&root, &snap.files()[0]).unwrap());
        assert!(snap.write(&root, &snap.files()[0]).is_err());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }
}
