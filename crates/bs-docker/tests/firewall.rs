//! The database network's DOCKER-USER rules with real iptables, in a
//! network namespace of the test's own (`ip netns`), so the host's firewall
//! is never touched: bs-docker runs there with the live root `/` (the
//! `firewall` verb touches nothing but iptables). Under a sandbox root
//! iptables is skipped and reported.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;

const BRIDGE: &str = "bsfw-db";

fn backend(addresses: &str) -> String {
    format!(
        "[docker]\nrequire_engine = false\n\n[docker.networks.jobs-db]\nbridge_name = \"{BRIDGE}\"\ndatabase_addresses = {addresses}\n"
    )
}

/// A network namespace, deleted when dropped.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = unique("fw");
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("iproute2 (ip) must be installed")
            .success();
        assert!(ok, "ip netns add {name} failed (the tests run as root)");
        Netns(name)
    }

    fn sh(&self, script: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "sh", "-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The chain as the engine leaves it when it starts.
    fn engine_chain(&self) {
        self.sh("iptables -N DOCKER-USER && iptables -A DOCKER-USER -j RETURN");
    }

    fn rules(&self) -> Vec<String> {
        self.sh("iptables -S DOCKER-USER")
            .lines()
            .filter(|l| l.starts_with("-A "))
            .map(String::from)
            .collect()
    }

    /// bs-docker on the live root, inside the namespace.
    fn bs_docker(&self, sb: &Sandbox, args: &[&str]) -> (i32, Vec<serde_json::Value>) {
        let bin = assert_cmd::cargo::cargo_bin("bs-docker");
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .arg(bin)
            .args(["--root", "/", "--repo"])
            .arg(sb.repo.path())
            .args(["--backend", BACKEND])
            .args(args)
            .env_remove("BS_ROOT")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
            .collect();
        assert_eq!(
            records.last().map(|r| r["type"].clone()),
            Some("summary".into()),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), records)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn inserted(records: &[serde_json::Value]) -> Vec<String> {
    of_type(records, "command")
        .iter()
        .map(|r| {
            r["argv"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn rules_are_inserted_once_never_again_and_drift_is_reported_and_mended() {
    let ns = Netns::new();
    let sb = Sandbox::new(false);
    sb.backend(&backend("[\"198.18.40.5\", \"198.18.41.0/24\"]"));

    // No engine has made the chain: a clear failure, nothing created.
    let (code, recs) = ns.bs_docker(&sb, &["firewall"]);
    assert_eq!(code, 1, "{recs:#?}");
    assert_eq!(errors(&recs)[0]["kind"], "firewall_chain_missing");

    ns.engine_chain();
    // Another interface's rule is never ours to touch.
    ns.sh("iptables -I DOCKER-USER -i other0 -j ACCEPT");
    let (code, recs) = ns.bs_docker(&sb, &["firewall", "--check"]);
    assert_eq!(code, 3, "missing rules are drift: {recs:#?}");
    let fw = find(&recs, "firewall", "jobs-db");
    assert_eq!(fw["missing"].as_array().unwrap().len(), 3, "{fw}");
    assert_eq!(ns.rules().len(), 2, "check changed nothing");

    let (code, recs) = ns.bs_docker(&sb, &["firewall"]);
    assert_eq!(code, 0, "{recs:#?}");
    assert_eq!(find(&recs, "firewall", "jobs-db")["changed"], true);
    assert_eq!(
        ns.rules(),
        vec![
            format!("-A DOCKER-USER -d 198.18.41.0/24 -i {BRIDGE} -j ACCEPT"),
            format!("-A DOCKER-USER -d 198.18.40.5/32 -i {BRIDGE} -j ACCEPT"),
            format!("-A DOCKER-USER -i {BRIDGE} -j REJECT --reject-with icmp-port-unreachable"),
            "-A DOCKER-USER -i other0 -j ACCEPT".to_string(),
            "-A DOCKER-USER -j RETURN".to_string(),
        ]
    );

    // Again: the rules hold, so nothing is inserted (backend-server #252).
    // The packet counters would be reset by a re-insert; they are not.
    ns.sh(&format!(
        "iptables -Z DOCKER-USER && iptables -I DOCKER-USER 1 -i {BRIDGE} -d 198.18.40.5/32 -j ACCEPT -c 7 700 && iptables -D DOCKER-USER 3"
    ));
    let before = ns.sh("iptables -S DOCKER-USER -v");
    assert!(before.contains("-c 7 700"), "{before}");
    let (code, recs) = ns.bs_docker(&sb, &["firewall"]);
    assert_eq!(code, 0, "{recs:#?}");
    assert_eq!(find(&recs, "firewall", "jobs-db")["changed"], false);
    assert!(inserted(&recs).is_empty(), "{recs:#?}");
    assert_eq!(ns.sh("iptables -S DOCKER-USER -v"), before);
    let (code, _) = ns.bs_docker(&sb, &["firewall", "--check"]);
    assert_eq!(code, 0);

    // An extra address by hand and a needed rule deleted: drift, mended
    // without touching the rules that hold.
    ns.sh(&format!(
        "iptables -I DOCKER-USER 1 -i {BRIDGE} -d 198.18.99.9/32 -j ACCEPT && iptables -D DOCKER-USER -i {BRIDGE} -d 198.18.41.0/24 -j ACCEPT"
    ));
    let (code, recs) = ns.bs_docker(&sb, &["firewall", "--check"]);
    assert_eq!(code, 3);
    let fw = find(&recs, "firewall", "jobs-db");
    assert_eq!(
        fw["missing"],
        serde_json::json!([format!("-i {BRIDGE} -d 198.18.41.0/24 -j ACCEPT")])
    );
    assert_eq!(
        fw["extra"],
        serde_json::json!([format!("-d 198.18.99.9/32 -i {BRIDGE} -j ACCEPT")])
    );
    let (code, recs) = ns.bs_docker(&sb, &["firewall"]);
    assert_eq!(code, 0, "{recs:#?}");
    assert!(
        ns.sh("iptables -S DOCKER-USER -v").contains("-c 7 700"),
        "the held rule was kept"
    );
    let rules = ns.rules();
    assert!(
        !rules.iter().any(|r| r.contains("198.18.99.9")),
        "{rules:?}"
    );
    assert!(rules.contains(&"-A DOCKER-USER -i other0 -j ACCEPT".to_string()));
    let reject = rules.iter().position(|r| r.contains("REJECT")).unwrap();
    assert_eq!(reject, 2, "both ACCEPTs above the REJECT: {rules:?}");

    // What an engine restart on a rebooted host leaves: the bare chain. The
    // unit that runs `bs-docker firewall` after the engine puts them back.
    ns.sh("iptables -F DOCKER-USER && iptables -A DOCKER-USER -j RETURN");
    let (code, _) = ns.bs_docker(&sb, &["firewall", "--check"]);
    assert_eq!(code, 3, "lost rules are drift");
    let (code, _) = ns.bs_docker(&sb, &["firewall"]);
    assert_eq!(code, 0);
    assert_eq!(ns.rules().len(), 4);
}

#[test]
fn an_empty_address_list_fails_closed_and_removes_what_was_allowed() {
    let ns = Netns::new();
    ns.engine_chain();
    let sb = Sandbox::new(false);
    sb.backend(&backend("[\"198.18.40.5\"]"));
    let (code, _) = ns.bs_docker(&sb, &["firewall"]);
    assert_eq!(code, 0);
    sb.backend(&backend("[]"));
    let (code, recs) = ns.bs_docker(&sb, &["firewall"]);
    assert_eq!(code, 0, "{recs:#?}");
    let fw = find(&recs, "firewall", "jobs-db");
    assert_eq!(fw["extra"].as_array().unwrap().len(), 1, "{fw}");
    assert_eq!(
        ns.rules(),
        vec![
            format!("-A DOCKER-USER -i {BRIDGE} -j REJECT --reject-with icmp-port-unreachable"),
            "-A DOCKER-USER -j RETURN".to_string(),
        ]
    );
    let (code, recs) = ns.bs_docker(&sb, &["firewall", "--check"]);
    assert_eq!(code, 0);
    assert_eq!(find(&recs, "firewall", "jobs-db")["fails_closed"], true);
}

#[test]
fn under_a_sandbox_root_iptables_is_skipped_and_reported() {
    let sb = Sandbox::new(false);
    sb.backend(&backend("[\"198.18.40.5\"]"));
    for args in [&["firewall"][..], &["firewall", "--check"], &["plan"]] {
        let (code, recs) = sb.run(args);
        assert_eq!(code, 0, "{args:?}: {recs:#?}");
        let fw = find(&recs, "firewall", "jobs-db");
        assert_eq!(fw["inspected"], false, "{fw}");
        assert_eq!(fw["changed"], false);
        let cmd = of_type(&recs, "command");
        assert!(
            cmd.iter()
                .any(|c| c["skipped"] == true && c["argv"][0] == "iptables"),
            "{recs:#?}"
        );
    }
}

#[test]
fn database_addresses_need_a_bridge_name_and_ipv4() {
    let sb = Sandbox::new(false);
    sb.backend("[docker]\nrequire_engine = false\n[docker.networks.jobs-db]\ndatabase_addresses = [\"198.18.40.5\"]\n");
    let (code, recs) = sb.run(&["firewall", "--check"]);
    assert_eq!(code, 2, "{recs:#?}");
    sb.backend(&backend("[\"db.example\"]"));
    let (code, _) = sb.run(&["firewall", "--check"]);
    assert_eq!(code, 2);
}

#[test]
fn apply_installs_the_unit_that_reapplies_the_rules_after_the_engine_starts() {
    let sb = Sandbox::new(false);
    sb.backend(&backend("[\"198.18.40.5\"]"));
    let (code, recs) = sb.run(&["check"]);
    assert_eq!(code, 3, "a missing unit is drift: {recs:#?}");
    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 0, "{recs:#?}");
    let unit = read(&sb.path("/etc/systemd/system/bs-docker-firewall.service"));
    for line in [
        "After=docker.service",
        "PartOf=docker.service",
        "WantedBy=docker.service",
        "Before=bs-jobs-worker.service",
        "Environment=BS_REPO=/var/lib/bs/repo",
        &format!("Environment=BS_BACKEND={BACKEND}"),
        "ExecStart=/usr/local/bin/bs-docker firewall",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "{line} missing from {unit}"
        );
    }
    // The unit loads the config from the snapshot apply wrote.
    assert!(sb
        .path(&format!("/var/lib/bs/repo/backends/{BACKEND}/backend.toml"))
        .exists());
    let cmds: Vec<_> = of_type(&recs, "command")
        .into_iter()
        .filter(|c| c["argv"][0] == "systemctl")
        .collect();
    assert_eq!(cmds.len(), 2, "{recs:#?}");
    assert!(cmds.iter().all(|c| c["skipped"] == true));
    // apply also wrote daemon.json: the restart it owes is settled by hand.
    sb.engine_restarted_by_hand();
    let (code, recs) = sb.run(&["check"]);
    assert_eq!(code, 0, "{recs:#?}");
    assert_eq!(
        find(
            &recs,
            "unit",
            "/etc/systemd/system/bs-docker-firewall.service"
        )["changed"],
        false
    );
}
