//! The people's uid range of a root: `UID_MIN`..=`UID_MAX` from its
//! `/etc/login.defs`, the range `useradd` itself gives people. Outside it
//! are system accounts (below) and `nobody` (65534, above Debian's 60000),
//! which bs must never take for a person (issue 12, item 1).

use crate::error::{CoreError, Result};
use crate::root::Root;
use crate::safefs;

pub const LOGIN_DEFS: &str = "/etc/login.defs";

/// Debian's defaults, used when login.defs does not set them.
const DEFAULT_MIN: u32 = 1000;
const DEFAULT_MAX: u32 = 60000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UidRange {
    pub min: u32,
    pub max: u32,
}

impl UidRange {
    pub fn contains(&self, uid: u32) -> bool {
        (self.min..=self.max).contains(&uid)
    }
}

impl std::fmt::Display for UidRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// Read the range from `<root>/etc/login.defs` (absent file or keys:
/// Debian's 1000-60000). A value that is not a number, or a range that is
/// empty, is an error: guessing would misclassify accounts.
pub fn people_uid_range(root: &Root) -> Result<UidRange> {
    let path = root.join(LOGIN_DEFS);
    let (dir, name) = safefs::split(&path)?;
    let text = match safefs::DirFd::open(dir) {
        Ok(d) => d
            .read_file(name, 1024 * 1024)?
            .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default(),
        Err(CoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            String::new()
        }
        Err(e) => return Err(e),
    };
    let range = parse(&text).map_err(|reason| CoreError::Unsafe {
        path: path.clone(),
        reason,
    })?;
    Ok(range)
}

fn parse(text: &str) -> std::result::Result<UidRange, String> {
    let mut range = UidRange {
        min: DEFAULT_MIN,
        max: DEFAULT_MAX,
    };
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(key), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let slot = match key {
            "UID_MIN" => &mut range.min,
            "UID_MAX" => &mut range.max,
            _ => continue,
        };
        *slot = value
            .parse()
            .map_err(|_| format!("{key} {value:?} is not a number"))?;
    }
    if range.min == 0 || range.min > range.max {
        return Err(format!(
            "UID_MIN {} and UID_MAX {} make no people's range",
            range.min, range.max
        ));
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_bounds_come_from_login_defs_with_debians_defaults() {
        assert_eq!(
            parse("").unwrap(),
            UidRange {
                min: 1000,
                max: 60000
            }
        );
        let r = parse("# UID_MIN 5\nUID_MIN\t\t 2000\nUID_MAX   29999\nSYS_UID_MAX 999\n").unwrap();
        assert_eq!(
            r,
            UidRange {
                min: 2000,
                max: 29999
            }
        );
        assert!(r.contains(2000) && r.contains(29999) && !r.contains(1999) && !r.contains(30000));
        assert!(parse("UID_MIN 0x10\n").is_err());
        assert!(parse("UID_MIN 5000\nUID_MAX 4000\n").is_err());
    }
}
