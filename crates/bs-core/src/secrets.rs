//! The secrets env file, `<root>/etc/bs/secrets.env`: `KEY=value` lines.
//!
//! Secrets never reach stdout, argv or a record: [`Secret`] prints as
//! `***`, is not `Serialize`, and only [`Secret::expose`] gives the value,
//! to be put straight into an HTTP header or an env file. The file must be
//! a regular file (not a symlink), owned by root or the running user, and
//! unreadable by group and others (0600), or it is refused.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::error::{CoreError, Result};
use crate::root::Root;

pub const SECRETS_PATH: &str = "/etc/bs/secrets.env";

#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Default)]
pub struct Secrets {
    file: PathBuf,
    values: BTreeMap<String, Secret>,
}

impl Secrets {
    /// Load the secrets file under `root`. A missing file gives an empty set:
    /// [`Secrets::require`] then names the file and key that is missing.
    pub fn load(root: &Root) -> Result<Secrets> {
        Self::load_file(&root.join(SECRETS_PATH))
    }

    pub fn load_file(file: &Path) -> Result<Secrets> {
        Self::load_file_owned(file, None)
    }

    /// Like [`Secrets::load_file`], also accepting a file owned by
    /// `also_owner`: a service account's own secrets (bs-release runs as
    /// the service account and cannot read root's 0600 file; root can still
    /// read the service account's).
    pub fn load_file_owned(file: &Path, also_owner: Option<u32>) -> Result<Secrets> {
        let fd = match rustix::fs::open(
            file,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                return Ok(Secrets {
                    file: file.to_path_buf(),
                    values: BTreeMap::new(),
                })
            }
            Err(rustix::io::Errno::LOOP) => {
                return Err(CoreError::Secrets {
                    file: file.to_path_buf(),
                    message: "is a symlink; refusing to read secrets through it".into(),
                })
            }
            Err(e) => return Err(CoreError::io(file, e.into())),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| CoreError::io(file, e.into()))?;
        let refuse = |message: String| CoreError::Secrets {
            file: file.to_path_buf(),
            message,
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(refuse("is not a regular file".into()));
        }
        if st.st_mode & 0o077 != 0 {
            return Err(refuse(format!(
                "mode {:04o} lets others read it; it must be 0600",
                st.st_mode & 0o7777
            )));
        }
        let me = rustix::process::geteuid().as_raw();
        if st.st_uid != 0 && st.st_uid != me && Some(st.st_uid) != also_owner {
            return Err(refuse(format!(
                "owned by uid {}; it must be owned by root",
                st.st_uid
            )));
        }
        let mut text = String::new();
        std::fs::File::from(fd)
            .read_to_string(&mut text)
            .map_err(|e| CoreError::io(file, e))?;
        let values =
            parse(&text).map_err(|(line, message)| refuse(format!("line {line}: {message}")))?;
        Ok(Secrets {
            file: file.to_path_buf(),
            values,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Secret> {
        self.values.get(key)
    }

    /// The secret `key`, or an error naming the file and the key (never a value).
    pub fn require(&self, key: &str) -> Result<&Secret> {
        self.values.get(key).ok_or_else(|| CoreError::Secrets {
            file: self.file.clone(),
            message: format!("{key} is not set"),
        })
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }
}

fn parse(text: &str) -> std::result::Result<BTreeMap<String, Secret>, (usize, String)> {
    let mut values = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            // Do not echo the line: it may be a secret pasted without a key.
            return Err((i + 1, "expected KEY=value".into()));
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err((i + 1, "a key may hold only letters, digits and _".into()));
        }
        let value = value.trim();
        let value = strip_quotes(value);
        values.insert(key.to_string(), Secret(value.to_string()));
    }
    Ok(values)
}

fn strip_quotes(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let p = dir.join("secrets.env");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn reads_keys_and_never_prints_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "# comment\nJOB_SERVER_TOKEN=abc123\nexport RELEASE_TOKEN=\"q w\"\n\n",
            0o600,
        );
        let s = Secrets::load_file(&p).unwrap();
        assert_eq!(s.require("JOB_SERVER_TOKEN").unwrap().expose(), "abc123");
        assert_eq!(s.get("RELEASE_TOKEN").unwrap().expose(), "q w");
        let shown = format!("{:?} {}", s, s.get("RELEASE_TOKEN").unwrap());
        assert!(!shown.contains("abc123"), "{shown}");
        assert!(!shown.contains("q w"), "{shown}");
    }

    #[test]
    fn group_or_world_readable_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "A=b\n", 0o640);
        let err = Secrets::load_file(&p).unwrap_err();
        assert!(err.to_string().contains("0600"), "{err}");
        assert_eq!(err.exit(), crate::Exit::Usage);
    }

    #[test]
    fn a_file_of_the_named_owner_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "RELEASE_TOKEN=t\n", 0o600);
        let me = rustix::process::geteuid().as_raw();
        if me == 0 {
            rustix::fs::chown(&p, Some(rustix::fs::Uid::from_raw(10000)), None).unwrap();
            assert!(Secrets::load_file(&p).is_err());
        }
        let s = Secrets::load_file_owned(&p, Some(10000)).unwrap();
        assert_eq!(s.require("RELEASE_TOKEN").unwrap().expose(), "t");
    }

    #[test]
    fn symlinked_secrets_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = write(dir.path(), "A=b\n", 0o600);
        let link = dir.path().join("link.env");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = Secrets::load_file(&link).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
    }

    #[test]
    fn missing_key_error_names_file_and_key_not_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "OTHER=topsecret\n", 0o600);
        let s = Secrets::load_file(&p).unwrap();
        let msg = s.require("JOB_SERVER_TOKEN").unwrap_err().to_string();
        assert!(
            msg.contains("JOB_SERVER_TOKEN") && msg.contains("secrets.env"),
            "{msg}"
        );
        assert!(!msg.contains("topsecret"));
    }

    #[test]
    fn malformed_line_error_does_not_echo_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "ghp_verysecretvalue\n", 0o600);
        let msg = Secrets::load_file(&p).unwrap_err().to_string();
        assert!(msg.contains("line 1"), "{msg}");
        assert!(!msg.contains("verysecret"), "{msg}");
    }
}
