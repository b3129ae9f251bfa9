//! chrony's configuration text: where our directives go and what the
//! files must say. Pure functions over strings, so every case is a unit test.
//!
//! Two placements:
//! * a drop-in `<conf_d>/bs-hyperv-ptp.conf` when chrony.conf reads conf_d
//!   (`confdir DIR...` naming it, or `include DIR/PATTERN` matching the
//!   drop-in's name). `sourcedir` does not count: chronyd accepts only
//!   `server`/`pool`/`peer` in `.sources` files, never `refclock`.
//! * otherwise a marked block (`# BEGIN bs-chrony` ... `# END bs-chrony`)
//!   at the end of chrony.conf.
//!
//! `makestep` is a setting where the last directive read wins, and a
//! confdir is read where its directive stands: Debian's stock chrony.conf
//! has `confdir` near the top and `makestep 1 3` further down, which would
//! silently override the drop-in's `makestep 1.0 -1`. So in the drop-in
//! placement each `makestep` line after the including directive is
//! commented out with a marker (and restored when the refclock is turned
//! off). The block placement needs no such edit: it comes last.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use bs_core::config::ChronyConfig;

pub const DROPIN_NAME: &str = "bs-hyperv-ptp.conf";
pub const BEGIN: &str = "# BEGIN bs-chrony";
pub const END: &str = "# END bs-chrony";
/// Prefix of a `makestep` line of chrony.conf that bs-chrony commented out.
pub const DISABLED: &str = "#bs-chrony-disabled: ";

const HEADER: &str = "# Managed by bs-chrony: the Hyper-V PTP clock as chronyd's reference.\n\
                      # Rewritten on every run; change [chrony] in the backend's config instead.\n";

/// Where our directives live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    Dropin,
    Block,
    /// The refclock is not wanted: nothing of ours anywhere.
    Absent,
}

/// The files as they must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub main: String,
    pub dropin: Option<String>,
    pub placement: Placement,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfError {
    #[error("line {0}: `{BEGIN}` without a matching `{END}`: fix chrony.conf by hand")]
    UnterminatedBlock(usize),
    #[error("line {0}: `{END}` without a `{BEGIN}` before it: fix chrony.conf by hand")]
    StrayEnd(usize),
}

/// The directive of a config line (lower-cased, as chronyd compares them
/// case-insensitively) and its arguments; `None` for blanks and comments.
pub fn directive(line: &str) -> Option<(String, Vec<&str>)> {
    let t = line.trim();
    if t.is_empty() || t.starts_with(['#', '%', ';', '!']) {
        return None;
    }
    let mut words = t.split_whitespace();
    let name = words.next()?.to_ascii_lowercase();
    Some((name, words.collect()))
}

/// The directives bs-chrony manages, one a line.
pub fn managed_lines(cfg: &ChronyConfig) -> Vec<String> {
    let mut lines = vec![normalise(&cfg.refclock_line)];
    if !cfg.makestep.trim().is_empty() {
        lines.push(format!("makestep {}", normalise(&cfg.makestep)));
    }
    lines
}

/// Words joined by single spaces: how lines are compared with `chronyd -p`.
pub fn normalise(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The index of the line of `main` through which chronyd reads the drop-in
/// `<conf_d>/<DROPIN_NAME>`, if any.
pub fn including_line(main: &str, conf_d: &Path) -> Option<usize> {
    main.lines().position(|line| match directive(line) {
        Some((name, args)) if name == "confdir" => {
            args.iter().any(|a| same_dir(Path::new(a), conf_d))
        }
        Some((name, args)) if name == "include" => args.first().is_some_and(|pattern| {
            let p = Path::new(pattern);
            match (p.parent(), p.file_name().and_then(|f| f.to_str())) {
                (Some(dir), Some(file)) => same_dir(dir, conf_d) && glob_match(file, DROPIN_NAME),
                _ => false,
            }
        }),
        _ => false,
    })
}

fn same_dir(a: &Path, b: &Path) -> bool {
    let clean = |p: &Path| p.components().collect::<PathBuf>();
    clean(a) == clean(b)
}

/// Shell-style matching of a file name with `*` and `?` (what chronyd's
/// `include` takes through glob(3); bracket classes are not needed here and
/// never match).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => false,
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// chrony.conf without anything of ours: the marked block removed and the
/// `makestep` lines we commented out restored.
pub fn without_ours(main: &str) -> Result<String, ConfError> {
    let mut out = String::with_capacity(main.len());
    let mut in_block: Option<usize> = None;
    for (i, line) in main.lines().enumerate() {
        let t = line.trim();
        if t == BEGIN {
            if let Some(start) = in_block {
                return Err(ConfError::UnterminatedBlock(start + 1));
            }
            in_block = Some(i);
            continue;
        }
        if t == END {
            if in_block.is_none() {
                return Err(ConfError::StrayEnd(i + 1));
            }
            in_block = None;
            continue;
        }
        if in_block.is_some() {
            continue;
        }
        out.push_str(line.strip_prefix(DISABLED).unwrap_or(line));
        out.push('\n');
    }
    match in_block {
        Some(start) => Err(ConfError::UnterminatedBlock(start + 1)),
        None => Ok(out),
    }
}

/// What chrony.conf and the drop-in must say for this config.
pub fn desired(cfg: &ChronyConfig, current_main: &str) -> Result<Desired, ConfError> {
    let base = without_ours(current_main)?;
    if !cfg.refclock {
        return Ok(Desired {
            main: base,
            dropin: None,
            placement: Placement::Absent,
        });
    }
    let mut body = String::from(HEADER);
    for line in managed_lines(cfg) {
        body.push_str(&line);
        body.push('\n');
    }
    match including_line(&base, &cfg.conf_d) {
        Some(at) => {
            let manage_makestep = !cfg.makestep.trim().is_empty();
            let mut main = String::with_capacity(base.len());
            for (i, line) in base.lines().enumerate() {
                let overrides =
                    i > at && matches!(directive(line), Some((name, _)) if name == "makestep");
                if manage_makestep && overrides {
                    main.push_str(DISABLED);
                }
                main.push_str(line);
                main.push('\n');
            }
            Ok(Desired {
                main,
                dropin: Some(body),
                placement: Placement::Dropin,
            })
        }
        None => {
            let mut main = base;
            main.push_str(BEGIN);
            main.push('\n');
            main.push_str(&body);
            main.push_str(END);
            main.push('\n');
            Ok(Desired {
                main,
                dropin: None,
                placement: Placement::Block,
            })
        }
    }
}

/// chrony.conf rewritten for a parse-only check in a scratch directory:
/// the directive that reads conf_d points at `scratch_conf_d` (a copy of
/// conf_d holding the new drop-in instead of the live one), and every other
/// `confdir`/`include` path is taken under the root.
pub fn for_validation(
    main: &str,
    conf_d: &Path,
    scratch_conf_d: &Path,
    under_root: &dyn Fn(&Path) -> PathBuf,
) -> String {
    let mut out = String::with_capacity(main.len() + 64);
    for line in main.lines() {
        match directive(line) {
            Some((name, args)) if name == "confdir" => {
                let dirs: Vec<String> = args
                    .iter()
                    .map(|a| {
                        let p = Path::new(a);
                        if same_dir(p, conf_d) {
                            scratch_conf_d.display().to_string()
                        } else {
                            under_root(p).display().to_string()
                        }
                    })
                    .collect();
                out.push_str(&format!("confdir {}", dirs.join(" ")));
            }
            Some((name, args)) if name == "include" && !args.is_empty() => {
                let p = Path::new(args[0]);
                let moved = match (p.parent(), p.file_name()) {
                    (Some(dir), Some(file)) if same_dir(dir, conf_d) => scratch_conf_d.join(file),
                    _ => under_root(p),
                };
                out.push_str(&format!("include {}", moved.display()));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// What is wrong with the configuration chronyd would run, from the lines
/// `chronyd -p` printed: our refclock must be there and our `makestep` must
/// be the last one.
pub fn effective_problems(cfg: &ChronyConfig, printed: &str) -> Vec<String> {
    if !cfg.refclock {
        return Vec::new();
    }
    let lines: Vec<String> = printed.lines().map(normalise).collect();
    let mut problems = Vec::new();
    let refclock = normalise(&cfg.refclock_line);
    if !lines.contains(&refclock) {
        problems.push(format!(
            "`{refclock}` is not in the configuration chronyd reads"
        ));
    }
    if !cfg.makestep.trim().is_empty() {
        let ours = format!("makestep {}", normalise(&cfg.makestep));
        let last = lines
            .iter()
            .rev()
            .find(|l| matches!(directive(l), Some((name, _)) if name == "makestep"));
        if last != Some(&ours) {
            problems.push(format!(
                "`{}` is read after `{ours}` and overrides it",
                last.map(String::as_str).unwrap_or("(no makestep)")
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str =
        "# Welcome\nconfdir /etc/chrony/conf.d\npool 2.debian.pool.ntp.org iburst\n\
                          sourcedir /etc/chrony/sources.d\ndriftfile /var/lib/chrony/chrony.drift\n\
                          makestep 1 3\nleapsectz right/UTC\n";

    fn cfg() -> ChronyConfig {
        ChronyConfig {
            refclock: true,
            ..ChronyConfig::default()
        }
    }

    #[test]
    fn debian_stock_config_gets_a_dropin_and_its_later_makestep_is_disabled() {
        let d = desired(&cfg(), DEBIAN).unwrap();
        assert_eq!(d.placement, Placement::Dropin);
        let dropin = d.dropin.unwrap();
        assert!(
            dropin.contains("\nrefclock PHC /dev/ptp_hyperv poll 3 dpoll -2 offset 0 stratum 2\n")
        );
        assert!(dropin.ends_with("\nmakestep 1.0 -1\n"));
        assert!(
            d.main.contains("\n#bs-chrony-disabled: makestep 1 3\n"),
            "{}",
            d.main
        );
        assert!(!d.main.contains("BEGIN"));
        // Turning the refclock off restores the distribution's line.
        let off = desired(&ChronyConfig::default(), &d.main).unwrap();
        assert_eq!(off.main, DEBIAN);
        assert_eq!(off.placement, Placement::Absent);
    }

    #[test]
    fn makestep_before_the_confdir_is_left_alone() {
        let main = "makestep 1 3\nconfdir /etc/chrony/conf.d\n";
        let d = desired(&cfg(), main).unwrap();
        assert_eq!(d.main, main);
    }

    #[test]
    fn without_an_include_the_directives_go_in_a_marked_block_at_the_end() {
        let main = "pool x iburst\nmakestep 1 3";
        let d = desired(&cfg(), main).unwrap();
        assert_eq!(d.placement, Placement::Block);
        assert!(d.dropin.is_none());
        assert!(d
            .main
            .starts_with("pool x iburst\nmakestep 1 3\n# BEGIN bs-chrony\n"));
        assert!(d.main.ends_with("makestep 1.0 -1\n# END bs-chrony\n"));
    }

    #[test]
    fn desired_is_idempotent_in_both_placements() {
        for main in [
            DEBIAN,
            "pool x\n",
            "pool x",
            "include /etc/chrony/conf.d/*.conf\nmakestep 1 3\n",
        ] {
            let once = desired(&cfg(), main).unwrap();
            let twice = desired(&cfg(), &once.main).unwrap();
            assert_eq!(once, twice, "{main:?}");
        }
    }

    #[test]
    fn a_changed_refclock_line_replaces_the_old_block() {
        let first = desired(&cfg(), "pool x\n").unwrap();
        let mut other = cfg();
        other.refclock_line = "refclock PHC /dev/ptp_hyperv poll 2".into();
        let second = desired(&other, &first.main).unwrap();
        assert_eq!(second.main.matches("refclock").count(), 1);
        assert!(second
            .main
            .contains("refclock PHC /dev/ptp_hyperv poll 2\n"));
    }

    #[test]
    fn which_directives_read_the_dropin() {
        let d = Path::new("/etc/chrony/conf.d");
        assert_eq!(including_line("confdir /etc/chrony/conf.d\n", d), Some(0));
        assert_eq!(
            including_line("x\nCONFDIR /usr/lib/chrony /etc/chrony/conf.d/\n", d),
            Some(1)
        );
        assert_eq!(
            including_line("include /etc/chrony/conf.d/*.conf\n", d),
            Some(0)
        );
        assert_eq!(
            including_line("include /etc/chrony/conf.d/bs-*\n", d),
            Some(0)
        );
        assert_eq!(
            including_line("include /etc/chrony/conf.d/*.sources\n", d),
            None
        );
        assert_eq!(including_line("sourcedir /etc/chrony/conf.d\n", d), None);
        assert_eq!(including_line("# confdir /etc/chrony/conf.d\n", d), None);
        assert_eq!(including_line("confdir /etc/chrony/other\n", d), None);
    }

    #[test]
    fn a_broken_block_is_refused_not_guessed() {
        assert_eq!(
            desired(&cfg(), "a\n# BEGIN bs-chrony\nrefclock x\n").unwrap_err(),
            ConfError::UnterminatedBlock(2)
        );
        assert_eq!(
            desired(&cfg(), "# END bs-chrony\n").unwrap_err(),
            ConfError::StrayEnd(1)
        );
    }

    #[test]
    fn validation_copy_points_the_include_at_the_scratch_dir() {
        let main = "confdir /usr/lib/x /etc/chrony/conf.d\ninclude /etc/chrony/conf.d/*.conf\ninclude /etc/other.conf\npool x\n";
        let under = |p: &Path| Path::new("/sandbox").join(p.strip_prefix("/").unwrap_or(p));
        let v = for_validation(
            main,
            Path::new("/etc/chrony/conf.d"),
            Path::new("/tmp/s/conf.d"),
            &under,
        );
        assert_eq!(
            v,
            "confdir /sandbox/usr/lib/x /tmp/s/conf.d\ninclude /tmp/s/conf.d/*.conf\ninclude /sandbox/etc/other.conf\npool x\n"
        );
    }

    #[test]
    fn effective_config_must_end_with_our_makestep() {
        let printed = "refclock PHC /dev/ptp_hyperv  poll 3 dpoll -2 offset 0 stratum 2\nmakestep 1.0 -1\nmakestep 1 3\n";
        let problems = effective_problems(&cfg(), printed);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("`makestep 1 3` is read after"));
        let good = "makestep 1 3\nrefclock PHC /dev/ptp_hyperv poll 3 dpoll -2 offset 0 stratum 2\nmakestep 1.0 -1\n";
        assert!(effective_problems(&cfg(), good).is_empty());
    }

    #[test]
    fn glob_matches_like_the_shell() {
        assert!(glob_match("*.conf", "bs-hyperv-ptp.conf"));
        assert!(glob_match("bs-?yperv-ptp.conf", "bs-hyperv-ptp.conf"));
        assert!(!glob_match("*.sources", "bs-hyperv-ptp.conf"));
        assert!(!glob_match("[a-z]*", "bs"));
    }
}
