//! Issue 12's faults in bs-release, each a test that failed before the fix:
//! a rewritten, reordered and truncated audit log, a failed audit write, a
//! refusal left out of the log, a hard-linked output and a forged request
//! state at publish.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{sha256, FakeServer, Run, Sandbox};
use serde_json::Value;

const TABLE: &[u8] = b"group,count\nA,120\nB,45\n";

fn setup() -> (Sandbox, FakeServer) {
    let sb = Sandbox::new();
    let server = FakeServer::start();
    sb.server(&server.url);
    sb.outputs("ws1", &[("output/table.csv", TABLE)]);
    (sb, server)
}

fn log_path(sb: &Sandbox) -> std::path::PathBuf {
    sb.root.join("var/lib/bs/release/audit.jsonl")
}

fn lines(sb: &Sandbox) -> Vec<String> {
    std::fs::read_to_string(log_path(sb))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(sb: &Sandbox, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(log_path(sb), text).unwrap();
}

fn tamper_targets(run: &Run) -> Vec<String> {
    run.of_type("error")
        .iter()
        .filter(|e| e["kind"] == "audit_tampered" && e["target"] != "")
        .map(|e| e["target"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_intact_audit_log_verifies_and_every_line_is_chained() {
    let (sb, _server) = setup();
    sb.submitted("ws1", &["output/table.csv"]);
    let audit = sb.run("rita", &["audit"]);
    audit.ok();
    assert!(tamper_targets(&audit).is_empty());
    let log = sb.audit();
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e["seq"], i as u64, "{e}");
        assert_eq!(e["prev"].as_str().unwrap().len(), 64);
    }
    assert_eq!(log[0]["prev"], "0".repeat(64));
}

#[test]
fn a_rewritten_line_of_the_audit_log_is_reported_by_audit() {
    let (sb, _server) = setup();
    let id = sb.submitted("ws1", &["output/table.csv"]);
    sb.run("rita", &["review", &id, "output/table.csv", "--approve"])
        .ok();
    sb.run("victor", &["show", &id]).ok();
    // Someone with the service account's rights makes rita's vote victor's.
    let mut log = lines(&sb);
    let i = log
        .iter()
        .position(|l| l.contains("\"action\":\"vote\""))
        .unwrap();
    log[i] = log[i].replace("\"user\":\"rita\"", "\"user\":\"victor\"");
    write_lines(&sb, &log);
    let audit = sb.run("rita", &["audit"]);
    assert_eq!(audit.code, 1, "{:?}", audit.records);
    assert_eq!(
        tamper_targets(&audit),
        vec![format!("audit.jsonl:{}", i + 2)],
        "the line after the rewritten one no longer follows it"
    );
    assert_eq!(audit.summary()["ok"], false);
}

#[test]
fn reordered_lines_and_a_rewritten_last_line_are_reported() {
    let (sb, _server) = setup();
    sb.submitted("ws1", &["output/table.csv"]);
    let mut log = lines(&sb);
    log.swap(1, 2);
    write_lines(&sb, &log);
    let audit = sb.run("rita", &["audit"]);
    assert_eq!(audit.code, 1);
    assert!(!tamper_targets(&audit).is_empty());

    let (sb, _server) = setup();
    sb.submitted("ws1", &["output/table.csv"]);
    let mut log = lines(&sb);
    let last = log.len() - 1;
    log[last] = log[last].replace("\"action\":\"submit\"", "\"action\":\"withdraw\"");
    write_lines(&sb, &log);
    let audit = sb.run("rita", &["audit"]);
    assert_eq!(audit.code, 1);
    assert_eq!(
        tamper_targets(&audit),
        vec![format!("audit.jsonl:{}", last + 1)]
    );
}

#[test]
fn a_truncated_audit_log_is_reported_and_stays_reported_after_later_appends() {
    let (sb, _server) = setup();
    let id = sb.submitted("ws1", &["output/table.csv"]);
    sb.run("rita", &["review", &id, "output/table.csv", "--approve"])
        .ok();
    let log = lines(&sb);
    write_lines(&sb, &log[..log.len() - 2]);
    let audit = sb.run("rita", &["audit"]);
    assert_eq!(audit.code, 1, "{:?}", audit.records);
    assert_eq!(tamper_targets(&audit), vec!["audit.jsonl".to_string()]);
    let e = audit
        .of_type("error")
        .into_iter()
        .find(|e| e["kind"] == "audit_tampered")
        .unwrap();
    assert!(e["message"].as_str().unwrap().contains("truncated"), "{e}");
    // The next append records the break in the log itself.
    sb.run("victor", &["ls"]).ok();
    let breaks: Vec<Value> = sb
        .audit()
        .into_iter()
        .filter(|e| e["action"] == "chain_break")
        .collect();
    assert_eq!(breaks.len(), 1, "{breaks:?}");
    let again = sb.run("rita", &["audit"]);
    assert_eq!(again.code, 1);
    assert!(!tamper_targets(&again).is_empty());
    // Emptying the log is a truncation too.
    std::fs::write(log_path(&sb), "").unwrap();
    let empty = sb.run("rita", &["audit"]);
    assert_eq!(empty.code, 1);
}

/// Run `args` as `user` with writes limited to `limit` bytes per file
/// (SIGXFSZ ignored, so the write fails with EFBIG): the disk-full case.
fn run_with_file_limit(sb: &Sandbox, user: &str, uid: u32, limit: u64, args: &[&str]) -> Run {
    let mut c = std::process::Command::new("bash");
    c.arg("-c")
        .arg("trap '' XFSZ; exec prlimit --fsize=\"$0\" -- \"$@\"")
        .arg(limit.to_string())
        .arg(assert_cmd::cargo::cargo_bin("bs-release"))
        .args(args);
    let base = sb.cmd();
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.env("SUDO_USER", user).env("SUDO_UID", uid.to_string());
    Run::of(c)
}

#[test]
fn a_failed_audit_write_leaves_the_request_unchanged() {
    let (sb, _server) = setup();
    let id = sb.submitted("ws1", &["output/table.csv"]);
    // Grow the log past the size of request.json, so that the limit below
    // stops the audit write and would let the request be written.
    for _ in 0..10 {
        sb.run("rita", &["ls"]).ok();
    }
    let before = sb.request_bytes(&id);
    let size = std::fs::metadata(log_path(&sb)).unwrap().len();
    assert!(size > 2 * before.len() as u64);
    let vote = run_with_file_limit(
        &sb,
        "rita",
        2002,
        size,
        &["review", &id, "output/table.csv", "--approve"],
    );
    assert_ne!(vote.code, 0, "{:?} {}", vote.records, vote.stderr);
    assert_eq!(
        sb.request_bytes(&id),
        before,
        "no saved vote without its entry"
    );
    assert!(!sb.audit().iter().any(|e| e["action"] == "vote"));
    // With room again, the same vote goes through, and the log is intact.
    sb.run("rita", &["review", &id, "output/table.csv", "--approve"])
        .ok();
    sb.run("rita", &["audit"]).ok();
}

#[test]
fn every_refusal_is_in_the_audit_log_an_unsafe_path_and_a_forged_sudo_user_too() {
    let (sb, _server) = setup();
    let id = sb.submitted("ws1", &["output/table.csv"]);
    let bad = sb.run("alice", &["request", "create", "../../etc"]);
    assert_eq!(bad.code, 2);
    let show = sb.run("rita", &["show", "../1"]);
    assert_ne!(show.code, 0);
    let add = sb.run("alice", &["request", "add", &id, "../../../etc/passwd"]);
    assert_ne!(add.code, 0);
    let mut forged = sb.cmd();
    forged
        .env("SUDO_USER", "rita")
        .env("SUDO_UID", "2003")
        .args(["ls"]);
    assert_eq!(Run::of(forged).code, 2);
    let refused: Vec<Value> = sb
        .audit()
        .into_iter()
        .filter(|e| e["action"] == "refused" || e["action"] == "add_refused")
        .collect();
    let users: Vec<&str> = refused
        .iter()
        .map(|e| e["user"].as_str().unwrap())
        .collect();
    assert_eq!(
        users,
        vec!["alice", "rita", "alice", "rita"],
        "{refused:#?}"
    );
    assert_eq!(refused[0]["detail"]["kind"], "usage");
    assert_eq!(refused[3]["detail"]["kind"], "identity");
    assert!(refused[0]["detail"]["error"]
        .as_str()
        .unwrap()
        .contains("../../etc"));
}

#[test]
fn a_medium_output_hard_linked_to_a_high_privacy_file_is_refused() {
    let (sb, _server) = setup();
    let high = sb.root.join("srv/high_privacy/workspaces/ws1/output");
    std::fs::create_dir_all(&high).unwrap();
    let secret = b"patient_id,value\n1,42\n";
    std::fs::write(high.join("cohort.csv"), secret).unwrap();
    let medium = sb.ws("ws1").join("output/summary.csv");
    std::fs::hard_link(high.join("cohort.csv"), &medium).unwrap();
    // The manifest lists it as a medium output with the right hash.
    let mut m = sb.manifest("ws1");
    m["outputs"]["output/summary.csv"] = serde_json::json!({
        "level": "moderately_sensitive", "job_id": "job-1", "action": "generate",
        "commit": "abc123", "size": secret.len(), "timestamp": 1795334400.0,
        "sha256": sha256(secret), "excluded": false, "message": null,
    });
    sb.write_manifest("ws1", &m);

    let files = sb.run("alice", &["files", "ws1"]);
    files.ok();
    let listed = files
        .of_type("file")
        .into_iter()
        .find(|f| f["path"] == "output/summary.csv")
        .unwrap()
        .clone();
    assert_eq!(listed["releasable"], false);
    assert!(listed["reasons"][0].as_str().unwrap().contains("hard link"));

    let r = sb.run("alice", &["request", "create", "ws1"]);
    let id = r.summary()["id"].as_str().unwrap().to_string();
    let add = sb.run("alice", &["request", "add", &id, "output/summary.csv"]);
    assert_eq!(add.code, 1);
    assert_eq!(add.error_kinds(), vec!["not_releasable"]);
    assert!(sb.request_json(&id)["files"]
        .as_object()
        .unwrap()
        .is_empty());
    assert!(sb
        .audit()
        .iter()
        .any(|e| e["action"] == "add_refused" && e["file"] == "output/summary.csv"));
}

#[test]
fn publish_refuses_a_request_json_edited_to_approved() {
    let (sb, server) = setup();
    let id = sb.submitted("ws1", &["output/table.csv"]);
    let path = sb.medium().join("requests").join(&id).join("request.json");
    let mut req = sb.request_json(&id);
    req["state"] = "approved".into();
    std::fs::write(&path, serde_json::to_vec_pretty(&req).unwrap()).unwrap();
    let publish = sb.run("rita", &["publish", &id]);
    assert_eq!(publish.code, 1, "{:?}", publish.records);
    assert_eq!(publish.error_kinds(), vec!["not_permitted"]);
    assert!(publish.of_type("error")[0]["message"]
        .as_str()
        .unwrap()
        .contains("not approved"));
    assert_eq!(server.creates(), 0);
    assert_eq!(server.seen().len(), 0);

    // Forged votes too: two approvals written into the request, none on record.
    let sha = sha256(TABLE);
    req["files"]["output/table.csv"]["reviews"] = serde_json::json!([
        {"reviewer": "rita", "vote": "approve", "sha256": sha, "at": "2026-11-22T06:00:00.000Z"},
        {"reviewer": "victor", "vote": "approve", "sha256": sha, "at": "2026-11-22T06:00:00.000Z"},
    ]);
    std::fs::write(&path, serde_json::to_vec_pretty(&req).unwrap()).unwrap();
    let publish = sb.run("rita", &["publish", &id]);
    assert_eq!(publish.code, 1);
    assert_eq!(server.seen().len(), 0);
    let refused = sb
        .audit()
        .into_iter()
        .filter(|e| e["action"] == "refused" && e["request"] == id.as_str())
        .count();
    assert_eq!(refused, 2);

    // A request approved for real publishes.
    let ok = sb.approved("ws1", &["output/table.csv"]);
    sb.run("rita", &["publish", &ok]).ok();
    assert_eq!(server.creates(), 1);
}
