//! Who is calling, and in which roles.
//!
//! People run bs-release through sudo as the service account, so the
//! process's own uid says nothing about them: their identity is the user sudo
//! reports in `SUDO_USER`/`SUDO_UID`, cross-checked against the passwd file
//! under the root (never getpwnam, which reads the host's files under a
//! sandbox root). Those variables are trusted only because sudo sets them
//! itself and only the service account or root can run us with them: a
//! process running as anyone else is refused before it gets here. Root (tests,
//! administrators) says whom it acts for with `--as USER`, which is audited.
//! Roles come from group membership: authors and output checkers.

use bs_core::accounts::AccountDb;
use bs_core::config::ReleaseConfig;
use serde::Serialize;

use crate::error::{Error, Result};

/// What sudo (or the environment of a test) reported.
#[derive(Clone, Debug, Default)]
pub struct SudoEnv {
    pub user: Option<String>,
    pub uid: Option<String>,
}

impl SudoEnv {
    pub fn from_env() -> SudoEnv {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        SudoEnv {
            user: get("SUDO_USER"),
            uid: get("SUDO_UID"),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Caller {
    pub user: String,
    /// The GitHub login as listed (bs-users writes `GitHub <login>` in the
    /// GECOS field): what job-server knows the person by, case and all. The
    /// Unix name where there is none.
    pub github: String,
    pub groups: Vec<String>,
    /// `sudo` or `root --as`.
    pub via: &'static str,
    pub author: bool,
    pub checker: bool,
}

/// Establish the calling person. `ruid` is the real uid of this process.
pub fn resolve(
    db: &AccountDb,
    config: &ReleaseConfig,
    ruid: u32,
    as_user: Option<&str>,
    sudo: &SudoEnv,
) -> Result<Caller> {
    let (name, via) = if let Some(name) = as_user {
        if ruid != 0 {
            return Err(Error::Identity(
                "--as is for root only (tests and administrators)".into(),
            ));
        }
        (name.to_string(), "root --as")
    } else if let Some(name) = &sudo.user {
        let Some(uid) = sudo.uid.as_deref().and_then(|u| u.parse::<u32>().ok()) else {
            return Err(Error::Identity(format!(
                "sudo reported user {name:?} without a valid SUDO_UID: refusing to guess who is calling"
            )));
        };
        match db.user(name) {
            Some(entry) if entry.uid == uid => {}
            Some(entry) => {
                return Err(Error::Identity(format!(
                    "sudo reported user {name:?} with uid {uid}, but the passwd entry says uid {}",
                    entry.uid
                )))
            }
            None => {
                return Err(Error::Identity(format!(
                    "sudo reported user {name:?}, who has no passwd entry"
                )))
            }
        }
        if uid == 0 {
            return Err(Error::Identity(
                "root has no release role: as root, say whom you act for with --as USER".into(),
            ));
        }
        (name.clone(), "sudo")
    } else if ruid == 0 {
        return Err(Error::Identity(
            "running as root without sudo: say whom you act for with --as USER".into(),
        ));
    } else {
        return Err(Error::Identity(
            "cannot tell who is calling: run bs-release through sudo as the service account".into(),
        ));
    };
    named(db, config, name, via)
}

/// The person connected to `serve`'s socket: the uid the kernel reports
/// for the connecting process (SO_PEERCRED), mapped to its passwd entry
/// under the root and so to the GitHub login bs-users listed. Root and the
/// service account have no release role through the web.
pub fn from_peer(
    db: &AccountDb,
    config: &ReleaseConfig,
    uid: u32,
    service_uid: u32,
) -> Result<Caller> {
    if uid == 0 || uid == service_uid {
        return Err(Error::Identity(format!(
            "uid {uid} (root or the service account) has no release role in the web UI"
        )));
    }
    let Some(entry) = db.user_by_uid(uid) else {
        return Err(Error::Identity(format!(
            "the connecting process runs as uid {uid}, which has no passwd entry"
        )));
    };
    let name = entry.name.clone();
    named(db, config, name, "web")
}

/// The caller `name` (reached by `via`), with roles from their groups.
fn named(
    db: &AccountDb,
    config: &ReleaseConfig,
    name: String,
    via: &'static str,
) -> Result<Caller> {
    let Some(entry) = db.user(&name) else {
        return Err(Error::Identity(format!(
            "--as {name}: no such user in the passwd file"
        )));
    };
    let mut groups: Vec<String> = db.groups_of(&name).iter().map(|g| g.to_string()).collect();
    if let Some(primary) = db.group_by_gid(entry.gid) {
        if !groups.iter().any(|g| g == &primary.name) {
            groups.push(primary.name.clone());
        }
    }
    groups.sort();
    let in_any = |wanted: &[String]| groups.iter().any(|g| wanted.contains(g));
    Ok(Caller {
        github: github_login(&name, &entry.gecos),
        author: in_any(&config.author_groups),
        checker: in_any(&config.checker_groups),
        user: name,
        groups,
        via,
    })
}

/// The GitHub login of Unix user `name` from its GECOS field, when that
/// names one that lower-cases to `name` (bs-users' mapping); else `name`.
pub fn github_login(name: &str, gecos: &str) -> String {
    match gecos.strip_prefix("GitHub ").map(str::trim) {
        Some(login)
            if !login.is_empty()
                && login.len() <= 39
                && login
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && login.to_ascii_lowercase() == name =>
        {
            login.to_string()
        }
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bs_core::Root;

    fn db() -> (tempfile::TempDir, AccountDb) {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0::/root:/bin/bash\nalice:x:1001:1001::/home/alice:/bin/bash\nrita:x:1002:1002::/home/rita:/bin/bash\n",
        )
        .unwrap();
        std::fs::write(
            etc.join("group"),
            "root:x:0:\nalice:x:1001:\nrita:x:1002:\nresearchers:x:10011:alice\nreviewers:x:10010:rita\n",
        )
        .unwrap();
        std::fs::write(etc.join("shadow"), "").unwrap();
        std::fs::write(etc.join("gshadow"), "").unwrap();
        let root = Root::new(dir.path()).unwrap();
        let db = AccountDb::load(&root).unwrap();
        (dir, db)
    }

    fn sudo(user: &str, uid: &str) -> SudoEnv {
        SudoEnv {
            user: Some(user.into()),
            uid: Some(uid.into()),
        }
    }

    #[test]
    fn the_sudo_user_is_the_caller_with_roles_from_groups() {
        let (_d, db) = db();
        let c = resolve(
            &db,
            &ReleaseConfig::default(),
            10000,
            None,
            &sudo("alice", "1001"),
        )
        .unwrap();
        assert_eq!(c.user, "alice");
        assert!(c.author && !c.checker);
        let r = resolve(
            &db,
            &ReleaseConfig::default(),
            10000,
            None,
            &sudo("rita", "1002"),
        )
        .unwrap();
        assert!(r.checker && !r.author);
    }

    #[test]
    fn a_sudo_uid_that_does_not_match_passwd_is_refused() {
        let (_d, db) = db();
        let err = resolve(
            &db,
            &ReleaseConfig::default(),
            10000,
            None,
            &sudo("rita", "1001"),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Identity(_)), "{err}");
        let err = resolve(
            &db,
            &ReleaseConfig::default(),
            10000,
            None,
            &SudoEnv {
                user: Some("rita".into()),
                uid: None,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("SUDO_UID"), "{err}");
        assert!(resolve(
            &db,
            &ReleaseConfig::default(),
            10000,
            None,
            &sudo("mallory", "1003")
        )
        .is_err());
    }

    #[test]
    fn without_sudo_only_root_may_say_whom_it_acts_for() {
        let (_d, db) = db();
        let cfg = ReleaseConfig::default();
        assert!(resolve(&db, &cfg, 0, None, &SudoEnv::default()).is_err());
        assert!(resolve(&db, &cfg, 10000, None, &SudoEnv::default()).is_err());
        assert!(resolve(&db, &cfg, 10000, Some("alice"), &SudoEnv::default()).is_err());
        let c = resolve(&db, &cfg, 0, Some("alice"), &SudoEnv::default()).unwrap();
        assert_eq!((c.user.as_str(), c.via), ("alice", "root --as"));
        assert!(resolve(&db, &cfg, 0, None, &sudo("root", "0")).is_err());
    }
}
