//! The firewall of a database network: in the DOCKER-USER chain (which the
//! engine's FORWARD chain jumps to before its own rules), one ACCEPT per
//! database address for traffic in from the network's bridge, above one
//! REJECT of everything else from that bridge.
//!
//! Rules are only ever added when missing (checked with `iptables -C`
//! first) and removed when extra: re-inserting rules that already held broke
//! the connections of running database jobs (backend-server #252). A
//! missing ACCEPT goes in at the top; a missing REJECT goes in just below
//! the network's last ACCEPT, so no running job loses its database while the
//! rules change. Rules of other interfaces are never touched.
//!
//! `iptables` runs from argv (on Debian 12 it is the nf_tables backend, as
//! is the engine's); every call is a live-host command, skipped and
//! reported under a sandbox root.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use bs_core::cmd::{Cmd, Ran, Runner};
use bs_core::config::{canonical_ipv4, Config};

pub const CHAIN: &str = "DOCKER-USER";

/// One network whose firewall bs-docker keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub network: String,
    pub bridge: String,
    /// Canonical (`A.B.C.D/N`), in the declared order.
    pub addresses: Vec<String>,
}

/// The networks with `database_addresses` (the config loader has checked
/// that each has a bridge name and valid addresses).
pub fn wanted(config: &Config) -> Vec<Wanted> {
    let mut out = Vec::new();
    for (name, n) in &config.docker.networks {
        let (Some(bridge), Some(addrs)) = (&n.bridge_name, &n.database_addresses) else {
            continue;
        };
        let mut addresses: Vec<String> = Vec::new();
        for a in addrs.iter().filter_map(|a| canonical_ipv4(a).ok()) {
            if !addresses.contains(&a) {
                addresses.push(a);
            }
        }
        out.push(Wanted {
            network: name.clone(),
            bridge: bridge.clone(),
            addresses,
        });
    }
    out
}

/// A rule of ours, for one bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Accept(String),
    Reject,
}

impl Rule {
    /// The rule's match and target, as given to `-C`, `-I`.
    pub fn args(&self, bridge: &str) -> Vec<String> {
        let mut a = vec!["-i".to_string(), bridge.to_string()];
        match self {
            Rule::Accept(addr) => {
                a.extend(["-d".into(), addr.clone(), "-j".into(), "ACCEPT".into()])
            }
            Rule::Reject => a.extend(["-j".into(), "REJECT".into()]),
        }
        a
    }

    pub fn text(&self, bridge: &str) -> String {
        self.args(bridge).join(" ")
    }
}

/// One rule of the chain as `iptables -S` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// 1-based, as `-I`/`-D` number them.
    pub pos: usize,
    /// The rule without `-A DOCKER-USER`.
    pub spec: String,
    /// Whether it matches packets in from our bridge.
    pub ours: bool,
    /// What it is, when it is exactly one of our rules.
    pub rule: Option<Rule>,
}

/// Parse `iptables -S DOCKER-USER`, marking the rules of `bridge`.
pub fn parse_listing(text: &str, bridge: &str) -> Vec<Listed> {
    let prefix = format!("-A {CHAIN} ");
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(spec) = line.trim_end().strip_prefix(&prefix) else {
            continue;
        };
        let tokens: Vec<&str> = spec.split_whitespace().collect();
        let ours = tokens
            .windows(2)
            .enumerate()
            .any(|(i, w)| w == ["-i", bridge] && (i == 0 || tokens[i - 1] != "!"));
        let rule = if ours { classify(&tokens) } else { None };
        out.push(Listed {
            pos: out.len() + 1,
            spec: spec.to_string(),
            ours,
            rule,
        });
    }
    out
}

/// Exactly `-d ADDR -i BR -j ACCEPT` or `-i BR -j REJECT [--reject-with
/// icmp-port-unreachable]` (iptables' default), in any order; anything
/// more (a port, a protocol) is not one of ours.
fn classify(tokens: &[&str]) -> Option<Rule> {
    if tokens.len() % 2 != 0 {
        return None;
    }
    let mut dest = None;
    let mut target = None;
    let mut reject_with = None;
    for pair in tokens.chunks(2) {
        match pair {
            ["-i", _] => {}
            ["-d", d] => dest = Some(d.to_string()),
            ["-j", t] => target = Some(*t),
            ["--reject-with", w] => reject_with = Some(*w),
            _ => return None,
        }
    }
    match (target, dest, reject_with) {
        (Some("ACCEPT"), Some(d), None) => Some(Rule::Accept(d)),
        (Some("REJECT"), None, None | Some("icmp-port-unreachable")) => Some(Rule::Reject),
        _ => None,
    }
}

/// How the chain differs from what the network needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    /// Rules to insert: ACCEPTs absent, or present only below the REJECT
    /// (where they never match), and the REJECT when absent.
    pub missing: Vec<Rule>,
    /// Rules of our bridge that must go: other addresses, other matches,
    /// duplicates, ACCEPTs stranded below the REJECT, extra REJECTs.
    pub extra: Vec<Listed>,
}

impl Drift {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty()
    }
}

/// Compare the listed chain with the rules `w` needs. The kept REJECT is
/// the last one; a kept ACCEPT is the first of its address above it.
pub fn analyse(listed: &[Listed], w: &Wanted) -> Drift {
    let ours: Vec<&Listed> = listed.iter().filter(|l| l.ours).collect();
    let reject = ours
        .iter()
        .rev()
        .find(|l| l.rule == Some(Rule::Reject))
        .map(|l| l.pos);
    let mut keep: Vec<usize> = reject.into_iter().collect();
    let mut missing = Vec::new();
    for addr in &w.addresses {
        let want = Rule::Accept(addr.clone());
        let found = ours
            .iter()
            .find(|l| l.rule.as_ref() == Some(&want) && reject.map_or(true, |r| l.pos < r));
        match found {
            Some(l) => keep.push(l.pos),
            None => missing.push(want),
        }
    }
    if reject.is_none() {
        missing.push(Rule::Reject);
    }
    let extra = ours
        .iter()
        .filter(|l| !keep.contains(&l.pos))
        .map(|l| (*l).clone())
        .collect();
    Drift { missing, extra }
}

/// What a look at (or a convergence of) one network's rules found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub network: String,
    pub bridge: String,
    /// `iptables` did not run (sandbox root).
    pub skipped: bool,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
}

/// Why the firewall could not be read or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: &'static str,
    pub message: String,
}

fn iptables(args: Vec<String>) -> Cmd {
    Cmd::new("iptables")
        // Wait for the xtables lock (the engine also holds it) rather than
        // fail at once.
        .args(["-w", "10"])
        .args(args)
        .host()
        .timeout(Duration::from_secs(30))
}

/// Run a command, keeping its record for the output.
fn run(runner: &dyn Runner, cmd: Cmd, ran: &mut Vec<Ran>) -> Result<Ran, Failure> {
    match runner.run(&cmd) {
        Ok(r) => {
            ran.push(r.clone());
            Ok(r)
        }
        Err(e) => Err(Failure {
            kind: "firewall_failed",
            message: e.to_string(),
        }),
    }
}

/// List the chain; `None` when skipped (sandbox root).
fn list(
    runner: &dyn Runner,
    w: &Wanted,
    ran: &mut Vec<Ran>,
) -> Result<Option<Vec<Listed>>, Failure> {
    let r = run(runner, iptables(vec!["-S".into(), CHAIN.into()]), ran)?;
    if r.skipped {
        return Ok(None);
    }
    if !r.success() {
        return Err(Failure {
            kind: "firewall_chain_missing",
            message: format!(
                "iptables -S {CHAIN} failed ({}): the engine creates the chain when it starts with its iptables rules on; start the engine first",
                r.stderr
            ),
        });
    }
    Ok(Some(parse_listing(&r.stdout, &w.bridge)))
}

fn report(w: &Wanted, drift: &Drift, skipped: bool) -> Report {
    Report {
        network: w.network.clone(),
        bridge: w.bridge.clone(),
        skipped,
        missing: drift.missing.iter().map(|r| r.text(&w.bridge)).collect(),
        extra: drift.extra.iter().map(|l| l.spec.clone()).collect(),
    }
}

/// Read the rules and say how they differ (reads only).
pub fn inspect(runner: &dyn Runner, w: &Wanted, ran: &mut Vec<Ran>) -> Result<Report, Failure> {
    match list(runner, w, ran)? {
        None => Ok(report(w, &Drift::default(), true)),
        Some(listed) => Ok(report(w, &analyse(&listed, w), false)),
    }
}

/// Bring the rules to what `w` needs, touching only what differs; returns
/// what was changed. Rules that already hold are never re-inserted.
pub fn converge(runner: &dyn Runner, w: &Wanted, ran: &mut Vec<Ran>) -> Result<Report, Failure> {
    let Some(listed) = list(runner, w, ran)? else {
        return Ok(report(w, &Drift::default(), true));
    };
    let drift = analyse(&listed, w);
    if drift.is_empty() {
        return Ok(report(w, &drift, false));
    }
    let failed = |what: &str, r: &Ran| Failure {
        kind: "firewall_failed",
        message: format!("iptables {what} failed: {}", r.stderr),
    };
    // ACCEPTs first, each on top: the network gains access before anything
    // is taken away.
    for rule in drift.missing.iter().filter(|r| **r != Rule::Reject) {
        let stranded = listed
            .iter()
            .any(|l| l.ours && l.rule.as_ref() == Some(rule));
        if !stranded {
            let mut check = vec!["-C".to_string(), CHAIN.to_string()];
            check.extend(rule.args(&w.bridge));
            let c = run(runner, iptables(check), ran)?;
            match c.status {
                Some(0) => continue,
                Some(1) => {}
                _ => return Err(failed("-C", &c)),
            }
        }
        let mut insert = vec!["-I".to_string(), CHAIN.to_string(), "1".to_string()];
        insert.extend(rule.args(&w.bridge));
        let r = run(runner, iptables(insert), ran)?;
        if !r.success() {
            return Err(failed("-I", &r));
        }
    }
    if drift.missing.contains(&Rule::Reject) {
        let mut check = vec!["-C".to_string(), CHAIN.to_string()];
        check.extend(Rule::Reject.args(&w.bridge));
        let c = run(runner, iptables(check), ran)?;
        match c.status {
            Some(0) => {}
            Some(1) => {
                // Just below our last ACCEPT (or at the top).
                let now = list(runner, w, ran)?.unwrap_or_default();
                let below = now
                    .iter()
                    .filter(|l| l.ours && matches!(l.rule, Some(Rule::Accept(_))))
                    .map(|l| l.pos)
                    .max()
                    .unwrap_or(0)
                    + 1;
                let mut insert = vec!["-I".to_string(), CHAIN.to_string(), below.to_string()];
                insert.extend(Rule::Reject.args(&w.bridge));
                let r = run(runner, iptables(insert), ran)?;
                if !r.success() {
                    return Err(failed("-I", &r));
                }
            }
            _ => return Err(failed("-C", &c)),
        }
    }
    // Then what must go, by number from the bottom up (a duplicate by its
    // spec would take the first copy, the one that is kept).
    let now = list(runner, w, ran)?.unwrap_or_default();
    let mut extra: Vec<usize> = analyse(&now, w).extra.iter().map(|l| l.pos).collect();
    extra.sort_unstable_by(|a, b| b.cmp(a));
    for pos in extra {
        let r = run(
            runner,
            iptables(vec!["-D".into(), CHAIN.into(), pos.to_string()]),
            ran,
        )?;
        if !r.success() {
            return Err(failed("-D", &r));
        }
    }
    let after = list(runner, w, ran)?.unwrap_or_default();
    let left = analyse(&after, w);
    if !left.is_empty() {
        let r = report(w, &left, false);
        return Err(Failure {
            kind: "firewall_failed",
            message: format!(
                "the rules still differ after the change (missing: {:?}; extra: {:?})",
                r.missing, r.extra
            ),
        });
    }
    Ok(report(w, &drift, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bs_core::cmd::RecordingRunner;

    fn wanted(addrs: &[&str]) -> Wanted {
        Wanted {
            network: "jobs-db".into(),
            bridge: "jobrunner-db".into(),
            addresses: addrs.iter().map(|a| a.to_string()).collect(),
        }
    }

    const HOLDS: &str = "-N DOCKER-USER\n\
        -A DOCKER-USER -d 10.0.0.5/32 -i jobrunner-db -j ACCEPT\n\
        -A DOCKER-USER -d 10.0.0.6/32 -i jobrunner-db -j ACCEPT\n\
        -A DOCKER-USER -i jobrunner-db -j REJECT --reject-with icmp-port-unreachable\n\
        -A DOCKER-USER -i other -j REJECT --reject-with icmp-port-unreachable\n\
        -A DOCKER-USER -j RETURN\n";

    #[test]
    fn rules_that_hold_are_no_drift_and_other_bridges_are_not_ours() {
        let listed = parse_listing(HOLDS, "jobrunner-db");
        assert_eq!(listed.len(), 5);
        assert_eq!(listed.iter().filter(|l| l.ours).count(), 3);
        assert!(analyse(&listed, &wanted(&["10.0.0.5/32", "10.0.0.6/32"])).is_empty());
    }

    #[test]
    fn a_missing_or_extra_address_is_drift() {
        let listed = parse_listing(HOLDS, "jobrunner-db");
        let d = analyse(&listed, &wanted(&["10.0.0.5/32", "10.0.0.7/32"]));
        assert_eq!(d.missing, vec![Rule::Accept("10.0.0.7/32".into())]);
        assert_eq!(d.extra.len(), 1);
        assert_eq!(d.extra[0].spec, "-d 10.0.0.6/32 -i jobrunner-db -j ACCEPT");
        assert_eq!(d.extra[0].pos, 2);
    }

    #[test]
    fn an_empty_list_fails_closed_with_the_reject_alone() {
        let d = analyse(
            &parse_listing("-N DOCKER-USER\n-A DOCKER-USER -j RETURN\n", "jobrunner-db"),
            &wanted(&[]),
        );
        assert_eq!(d.missing, vec![Rule::Reject]);
        let d = analyse(&parse_listing(HOLDS, "jobrunner-db"), &wanted(&[]));
        assert!(d.missing.is_empty());
        assert_eq!(d.extra.len(), 2, "both ACCEPTs must go");
    }

    #[test]
    fn an_accept_below_the_reject_never_matches_so_it_is_missing_and_extra() {
        let text = "-A DOCKER-USER -i jobrunner-db -j REJECT\n\
                    -A DOCKER-USER -d 10.0.0.5/32 -i jobrunner-db -j ACCEPT\n";
        let d = analyse(
            &parse_listing(text, "jobrunner-db"),
            &wanted(&["10.0.0.5/32"]),
        );
        assert_eq!(d.missing, vec![Rule::Accept("10.0.0.5/32".into())]);
        assert_eq!(d.extra.iter().map(|l| l.pos).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn a_rule_with_more_matches_or_a_negated_interface_is_not_one_of_ours() {
        let text =
            "-A DOCKER-USER -d 10.0.0.5/32 -i jobrunner-db -p tcp -m tcp --dport 5432 -j ACCEPT\n\
                    -A DOCKER-USER ! -i jobrunner-db -j ACCEPT\n";
        let listed = parse_listing(text, "jobrunner-db");
        assert!(listed[0].ours && listed[0].rule.is_none());
        assert!(!listed[1].ours);
        let d = analyse(&listed, &wanted(&["10.0.0.5/32"]));
        assert_eq!(d.extra.len(), 1, "the port-limited rule is extra");
    }

    #[test]
    fn converging_rules_that_hold_only_lists_them() {
        let runner = RecordingRunner::new();
        runner.answer("-S DOCKER-USER", 0, HOLDS, "");
        let mut ran = Vec::new();
        let r = converge(&runner, &wanted(&["10.0.0.5/32", "10.0.0.6/32"]), &mut ran).unwrap();
        assert!(r.missing.is_empty() && r.extra.is_empty());
        assert_eq!(runner.ran_lines(), vec!["iptables -w 10 -S DOCKER-USER"]);
    }

    #[test]
    fn a_fresh_chain_gets_the_accepts_checked_then_inserted_on_top_and_the_reject_below() {
        let runner = RecordingRunner::new();
        runner.answer(
            "-S DOCKER-USER",
            0,
            "-N DOCKER-USER\n-A DOCKER-USER -j RETURN\n",
            "",
        );
        runner.answer(
            "-C DOCKER-USER -i jobrunner-db -d 10.0.0.5/32",
            1,
            "",
            "Bad rule",
        );
        runner.answer(
            "-C DOCKER-USER -i jobrunner-db -j REJECT",
            1,
            "",
            "Bad rule",
        );
        runner.answer(
            "-S DOCKER-USER",
            0,
            "-A DOCKER-USER -d 10.0.0.5/32 -i jobrunner-db -j ACCEPT\n-A DOCKER-USER -j RETURN\n",
            "",
        );
        let after = "-A DOCKER-USER -d 10.0.0.5/32 -i jobrunner-db -j ACCEPT\n\
                     -A DOCKER-USER -i jobrunner-db -j REJECT --reject-with icmp-port-unreachable\n\
                     -A DOCKER-USER -j RETURN\n";
        runner.answer("-S DOCKER-USER", 0, after, "");
        runner.answer("-S DOCKER-USER", 0, after, "");
        let mut ran = Vec::new();
        let r = converge(&runner, &wanted(&["10.0.0.5/32"]), &mut ran).unwrap();
        assert_eq!(r.missing.len(), 2);
        assert_eq!(
            runner.ran_lines(),
            vec![
                "iptables -w 10 -S DOCKER-USER",
                "iptables -w 10 -C DOCKER-USER -i jobrunner-db -d 10.0.0.5/32 -j ACCEPT",
                "iptables -w 10 -I DOCKER-USER 1 -i jobrunner-db -d 10.0.0.5/32 -j ACCEPT",
                "iptables -w 10 -C DOCKER-USER -i jobrunner-db -j REJECT",
                "iptables -w 10 -S DOCKER-USER",
                "iptables -w 10 -I DOCKER-USER 2 -i jobrunner-db -j REJECT",
                "iptables -w 10 -S DOCKER-USER",
                "iptables -w 10 -S DOCKER-USER",
            ]
        );
    }

    #[test]
    fn a_missing_chain_is_a_clear_failure() {
        let runner = RecordingRunner::new();
        runner.answer(
            "-S DOCKER-USER",
            1,
            "",
            "iptables: No chain/target/match by that name.",
        );
        let mut ran = Vec::new();
        let e = converge(&runner, &wanted(&["10.0.0.5/32"]), &mut ran).unwrap_err();
        assert_eq!(e.kind, "firewall_chain_missing");
        assert_eq!(runner.ran_lines().len(), 1, "nothing inserted");
    }
}
