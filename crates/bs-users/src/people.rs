//! The people lists: one GitHub login a line, `#` comments (also after a
//! login), blank lines skipped. Each list maps to a set of groups; a login
//! on several lists gets the union.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use bs_core::config::{valid_unix_name, UsersConfig};

use crate::error::{shown, UsersError};

/// A person who should have an active account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Person {
    /// The GitHub login as listed (keys are fetched for it).
    pub login: String,
    /// The Unix name: the login in lower case (useradd rejects capitals).
    pub name: String,
    pub groups: BTreeSet<String>,
    pub lists: BTreeSet<String>,
}

/// Everyone on every configured list, by Unix name.
pub fn load(repo: &Path, users: &UsersConfig) -> Result<BTreeMap<String, Person>, UsersError> {
    let mut people: BTreeMap<String, Person> = BTreeMap::new();
    // Where each Unix name was first seen, to name both places on a clash.
    let mut seen_at: BTreeMap<String, (String, PathBuf, usize)> = BTreeMap::new();
    for (list_name, spec) in &users.lists {
        let file = repo.join(&spec.file);
        let text = std::fs::read_to_string(&file).map_err(|e| UsersError::List {
            file: file.clone(),
            line: 0,
            message: format!("cannot read the list: {e}"),
        })?;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let login = raw.split('#').next().unwrap_or("").trim();
            if login.is_empty() {
                continue;
            }
            let err = |message: String| UsersError::List {
                file: file.clone(),
                line,
                message,
            };
            if !valid_github_login(login) {
                return Err(err(format!(
                    "{} is not a GitHub login (letters, digits and single hyphens, 39 at most)",
                    shown(login)
                )));
            }
            let name = login.to_ascii_lowercase();
            if !valid_unix_name(&name) {
                return Err(err(format!(
                    "{login:?} cannot be a Unix user name (it must start with a letter)"
                )));
            }
            if let Some((other, other_file, other_line)) = seen_at.get(&name) {
                if other != login {
                    return Err(err(format!(
                        "{login:?} and {other:?} ({}:{other_line}) would both be the Unix user {name:?}; \
                         write the login the same way on every list",
                        other_file.display()
                    )));
                }
            } else {
                seen_at.insert(name.clone(), (login.to_string(), file.clone(), line));
            }
            let person = people.entry(name.clone()).or_insert_with(|| Person {
                login: login.to_string(),
                name,
                groups: BTreeSet::new(),
                lists: BTreeSet::new(),
            });
            person.groups.extend(spec.groups.iter().cloned());
            person.lists.insert(list_name.clone());
        }
    }
    Ok(people)
}

/// GitHub's rule: alphanumerics and single hyphens, no leading or trailing
/// hyphen, at most 39 characters.
pub fn valid_github_login(login: &str) -> bool {
    !login.is_empty()
        && login.len() <= 39
        && !login.starts_with('-')
        && !login.ends_with('-')
        && !login.contains("--")
        && login.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use bs_core::config::ListSpec;

    fn config(lists: &[(&str, &str, &[&str])]) -> UsersConfig {
        let mut c = UsersConfig::default();
        for (name, file, groups) in lists {
            c.lists.insert(
                name.to_string(),
                ListSpec {
                    file: file.into(),
                    groups: groups.iter().map(|g| g.to_string()).collect(),
                },
            );
        }
        c
    }

    #[test]
    fn comments_blanks_capitals_and_the_union_of_lists() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("developers"),
            "# team\nAlice  # lead\n\nbob\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("reviewers"), "Alice\ncarol\n").unwrap();
        let c = config(&[
            ("developers", "developers", &["developers", "sudo"]),
            ("reviewers", "reviewers", &["reviewers"]),
        ]);
        let people = load(dir.path(), &c).unwrap();
        assert_eq!(people.len(), 3);
        let alice = &people["alice"];
        assert_eq!(alice.login, "Alice");
        let groups: Vec<&str> = alice.groups.iter().map(String::as_str).collect();
        assert_eq!(groups, vec!["developers", "reviewers", "sudo"]);
        assert_eq!(people["carol"].groups.len(), 1);
    }

    #[test]
    fn a_malformed_login_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("developers"), "alice\nbad login\n").unwrap();
        let c = config(&[("developers", "developers", &["developers"])]);
        match load(dir.path(), &c).unwrap_err() {
            UsersError::List {
                file,
                line,
                message,
            } => {
                assert!(file.ends_with("developers"));
                assert_eq!(line, 2);
                assert!(message.contains("bad login"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_huge_line_is_cut_to_a_readable_prefix_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let line = "x".repeat(5_000_000) + " y";
        std::fs::write(dir.path().join("developers"), format!("alice\n{line}\n")).unwrap();
        let c = config(&[("developers", "developers", &["developers"])]);
        let msg = load(dir.path(), &c).unwrap_err().to_string();
        assert!(msg.len() < 300, "{} bytes", msg.len());
        assert!(
            msg.contains("xxxxxxxx") && msg.contains("5000002 bytes"),
            "{msg}"
        );
    }

    #[test]
    fn two_logins_mapping_to_one_name_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "CarolineMorton\n").unwrap();
        std::fs::write(dir.path().join("b"), "carolinemorton\n").unwrap();
        let c = config(&[("a", "a", &["x"]), ("b", "b", &["y"])]);
        let msg = load(dir.path(), &c).unwrap_err().to_string();
        assert!(
            msg.contains("carolinemorton") && msg.contains("CarolineMorton"),
            "{msg}"
        );
    }

    #[test]
    fn logins_that_cannot_be_unix_names_are_refused() {
        assert!(valid_github_login("a-b1"));
        assert!(!valid_github_login("-ab"));
        assert!(!valid_github_login("a--b"));
        assert!(!valid_github_login("a_b"));
        assert!(!valid_github_login(&"a".repeat(40)));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("l"), "1password\n").unwrap();
        let c = config(&[("l", "l", &["x"])]);
        assert!(load(dir.path(), &c).is_err());
    }
}
