//! The whole release flow against a sandbox root and a fake release server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{sha256, FakeServer, Sandbox};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;

const TABLE: &[u8] = b"group,count\nA,120\nB,45\n";
const FIGURE: &[u8] = b"<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>\n";

fn setup() -> (Sandbox, FakeServer) {
    let sb = Sandbox::new();
    let server = FakeServer::start();
    sb.server(&server.url);
    sb.outputs(
        "ws1",
        &[("output/table.csv", TABLE), ("output/figure.svg", FIGURE)],
    );
    (sb, server)
}

fn actions(sb: &Sandbox) -> Vec<String> {
    sb.audit()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_author_and_two_reviewers_take_a_request_to_released_and_the_audit_log_holds_every_step() {
    let (sb, server) = setup();
    let files = sb.run("alice", &["files", "ws1"]);
    files.ok();
    let listed = files.of_type("file");
    assert_eq!(listed.len(), 2);
    std::fs::rename(
        sb.ws("ws1").join("output/figure.svg"),
        sb.dir.path().join("away.svg"),
    )
    .unwrap();
    let missing = sb.run("alice", &["files", "ws1"]);
    let fig = missing
        .of_type("file")
        .into_iter()
        .find(|f| f["path"] == "output/figure.svg")
        .unwrap()
        .clone();
    assert_eq!(fig["releasable"], false);
    assert_eq!(fig["reasons"][0], "missing from the workspace");
    std::fs::rename(
        sb.dir.path().join("away.svg"),
        sb.ws("ws1").join("output/figure.svg"),
    )
    .unwrap();
    let table = listed
        .iter()
        .find(|f| f["path"] == "output/table.csv")
        .unwrap();
    assert_eq!(table["sha256"], sha256(TABLE));
    assert_eq!(table["releasable"], true);
    assert_eq!(table["manifest"]["job_id"], "job-1");

    let created = sb.run("alice", &["request", "create", "ws1"]);
    created.ok();
    let id = created.summary()["id"].as_str().unwrap().to_string();
    let added = sb.run(
        "alice",
        &[
            "request",
            "add",
            &id,
            "output/table.csv",
            "output/figure.svg",
        ],
    );
    added.ok();
    assert_eq!(added.summary()["changed"], 2);
    // The copies are addressed by their sha256 and owned by the service account.
    let copy = sb
        .medium()
        .join("requests")
        .join(&id)
        .join("files")
        .join(sha256(TABLE));
    assert_eq!(std::fs::read(&copy).unwrap(), TABLE);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&copy).unwrap().uid(), 10000);

    let early = sb.run("alice", &["request", "submit", &id]);
    assert_eq!(early.code, 1, "a group without context and controls");
    assert!(early.of_type("error")[0]["message"]
        .as_str()
        .unwrap()
        .contains("context"));
    sb.describe("alice", &id, "default");
    sb.run("alice", &["request", "submit", &id]).ok();
    assert_eq!(sb.request_json(&id)["state"], "submitted");

    // One submitted review is not enough.
    for p in ["output/table.csv", "output/figure.svg"] {
        sb.run("rita", &["review", &id, p, "--approve"]).ok();
    }
    assert_eq!(
        sb.request_json(&id)["state"],
        "submitted",
        "votes alone move nothing"
    );
    sb.run("rita", &["request", "submit-review", &id]).ok();
    assert_eq!(sb.request_json(&id)["state"], "partially_reviewed");
    let early = sb.run("victor", &["request", "approve", &id]);
    assert_eq!(early.code, 1);
    assert_eq!(early.error_kinds(), vec!["wrong_state"]);
    let early_publish = sb.run("rita", &["publish", &id]);
    assert_eq!(early_publish.code, 1, "{:?}", early_publish.records);
    assert_eq!(server.creates(), 0);

    for p in ["output/table.csv", "output/figure.svg"] {
        sb.run(
            "victor",
            &["review", &id, p, "--approve", "--comment", "fine"],
        )
        .ok();
    }
    sb.run("victor", &["request", "submit-review", &id]).ok();
    assert_eq!(sb.request_json(&id)["state"], "reviewed");
    sb.run("victor", &["request", "approve", &id]).ok();
    assert_eq!(sb.request_json(&id)["state"], "approved");

    let published = sb.run("rita", &["publish", &id]);
    published.ok();
    assert_eq!(published.of_type("upload").len(), 2);
    assert_eq!(sb.request_json(&id)["state"], "released");

    // The server saw the real contract.
    let seen = server.seen();
    let create = &seen[0];
    assert_eq!(create.url, "/releases/workspace/ws1");
    assert_eq!(create.headers["authorization"], "sekrit-token-123");
    assert_eq!(create.headers["os-user"], "rita");
    let body: Value = serde_json::from_slice(&create.body).unwrap();
    let names: Vec<&str> = body["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["output/figure.svg", "output/table.csv"]);
    let t = body["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "output/table.csv")
        .unwrap();
    assert_eq!(t["sha256"], sha256(TABLE));
    assert_eq!(t["size"], TABLE.len());
    assert!(t["date"].as_str().unwrap().starts_with("2026-11-22"));
    assert!(body["metadata"].is_object());
    // The release is the request's airlock_id, as Airlock's are.
    let airlock_id = sb.request_json(&id)["airlock_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(airlock_id.len(), 26);
    assert_eq!(body["metadata"]["airlock_id"], airlock_id.as_str());
    let uploads: Vec<_> = seen
        .iter()
        .filter(|s| s.url == format!("/releases/release/{airlock_id}"))
        .collect();
    assert_eq!(uploads.len(), 2);
    assert_eq!(
        uploads[1].headers["content-disposition"],
        "attachment; filename=\"output/table.csv\""
    );
    assert_eq!(server.uploads.lock().unwrap()["output/table.csv"], TABLE);

    // The token never reaches stdout or stderr.
    assert!(!format!("{:?}{}", published.records, published.stderr).contains("sekrit"));

    let log = actions(&sb);
    for want in [
        "view_files",
        "create",
        "add",
        "submit",
        "vote",
        "submit_review",
        "approve",
        "release_created",
        "upload",
        "publish",
        "refused",
    ] {
        assert!(log.iter().any(|a| a == want), "no {want} in {log:?}");
    }
    assert_eq!(log.iter().filter(|a| *a == "vote").count(), 4);
    let vote = sb
        .audit()
        .into_iter()
        .find(|e| e["action"] == "vote")
        .unwrap();
    assert_eq!(vote["user"], "rita");
    assert_eq!(vote["request"], id.as_str());
    assert!(vote["time"].as_str().unwrap().ends_with('Z'));
    assert!(vote["sha256"].as_str().unwrap().len() == 64);

    // The audit command shows it to checkers, and not to authors.
    let audit = sb.run("rita", &["audit", "--since", "2000-01-01"]);
    audit.ok();
    assert!(audit.of_type("audit").len() >= 15);
    assert_eq!(sb.run("alice", &["audit"]).code, 1);
    let none = sb.run("rita", &["audit", "--since", "2999-01-01"]);
    assert_eq!(none.of_type("audit").len(), 0);
}

#[test]
fn nobody_reviews_their_own_request_and_a_refusal_changes_nothing() {
    let (sb, _server) = setup();
    // dev is an author and a reviewer.
    let r = sb.run("dev", &["request", "create", "ws1"]);
    r.ok();
    let id = r.summary()["id"].as_str().unwrap().to_string();
    sb.run("dev", &["request", "add", &id, "output/table.csv"])
        .ok();
    sb.describe("dev", &id, "default");
    sb.run("dev", &["request", "submit", &id]).ok();
    let before = sb.request_bytes(&id);
    let own = sb.run("dev", &["review", &id, "output/table.csv", "--approve"]);
    assert_eq!(own.code, 1);
    assert_eq!(own.error_kinds(), vec!["not_permitted"]);
    assert!(own.of_type("error")[0]["message"]
        .as_str()
        .unwrap()
        .contains("own request"));
    assert_eq!(sb.request_bytes(&id), before);
    // Authors who are not checkers cannot review either; a review needs every file voted.
    assert_eq!(
        sb.run("alice", &["review", &id, "output/table.csv", "--approve"])
            .code,
        1
    );
    assert_eq!(sb.run("rita", &["request", "submit-review", &id]).code, 1);
    assert_eq!(sb.request_bytes(&id), before);
    sb.run(
        "rita",
        &["review", &id, "output/table.csv", "--request-changes"],
    )
    .ok();
    let refused: Vec<_> = sb
        .audit()
        .into_iter()
        .filter(|e| e["action"] == "refused")
        .collect();
    // Every refusal is on record.
    assert_eq!(refused.len(), 3);
    assert_eq!(refused[0]["request"], id.as_str());
    assert_eq!(refused[0]["user"], "dev");
    assert_eq!(refused[0]["detail"]["kind"], "not_permitted");
    assert_eq!(refused[2]["user"], "rita");
}

#[test]
fn wrong_transitions_exit_1_with_a_clear_message_and_change_nothing() {
    let (sb, _server) = setup();
    let id = sb.submitted("ws1", &["output/table.csv"]);
    let before = sb.request_bytes(&id);
    for (user, args) in [
        ("alice", vec!["request", "submit", id.as_str()]),
        (
            "alice",
            vec!["request", "add", id.as_str(), "output/figure.svg"],
        ),
        (
            "rita",
            vec!["request", "reject", id.as_str(), "--comment", "no"],
        ),
        ("rita", vec!["request", "withdraw", id.as_str()]),
        ("alice", vec!["request", "return", id.as_str()]),
    ] {
        let r = sb.run(user, &args);
        assert_eq!(r.code, 1, "{user} {args:?}: {:?}", r.records);
        assert_eq!(
            sb.request_bytes(&id),
            before,
            "{args:?} changed the request"
        );
    }
    let r = sb.run("alice", &["request", "submit", &id]);
    assert!(r.of_type("error")[0]["message"]
        .as_str()
        .unwrap()
        .contains("is submitted: cannot submit"));
    // Return, fix, resubmit: a new turn, from submitted.
    sb.run("rita", &["review", &id, "output/table.csv", "--approve"])
        .ok();
    sb.run(
        "victor",
        &["request", "return", &id, "--comment", "add the figure"],
    )
    .ok();
    sb.run("alice", &["request", "add", &id, "output/figure.svg"])
        .ok();
    sb.run("alice", &["request", "submit", &id]).ok();
    assert_eq!(sb.request_json(&id)["state"], "submitted");
    // The checkers own it now: the author cannot withdraw it.
    assert_eq!(sb.run("alice", &["request", "withdraw", &id]).code, 1);
    sb.run("rita", &["request", "return", &id]).ok();
    sb.run("alice", &["request", "withdraw", &id]).ok();
    assert_eq!(
        sb.run("rita", &["review", &id, "output/table.csv", "--approve"])
            .code,
        1
    );
    assert_eq!(sb.request_json(&id)["state"], "withdrawn");
}

#[test]
fn a_file_changed_after_approval_is_refused_at_publish() {
    let (sb, server) = setup();
    let id = sb.approved("ws1", &["output/table.csv"]);
    // Someone edits the request's copy.
    let copy = sb
        .medium()
        .join("requests")
        .join(&id)
        .join("files")
        .join(sha256(TABLE));
    std::fs::remove_file(&copy).unwrap();
    std::fs::write(&copy, b"group,count\nA,120\nB,3\n").unwrap();
    let r = sb.run("rita", &["publish", &id]);
    assert_eq!(r.code, 1);
    assert_eq!(r.error_kinds(), vec!["file_changed"]);
    assert_eq!(server.seen().len(), 0, "nothing may be sent");
    assert_eq!(sb.request_json(&id)["state"], "approved");
    std::fs::remove_file(&copy).unwrap();
    std::fs::write(&copy, TABLE).unwrap();

    // The job re-ran and the workspace output (and manifest) changed since approval.
    sb.outputs("ws1", &[("output/table.csv", b"group,count\nA,121\n")]);
    let r = sb.run("rita", &["publish", &id]);
    assert_eq!(r.code, 1);
    assert_eq!(r.error_kinds(), vec!["file_changed"]);
    assert_eq!(server.seen().len(), 0);
}

#[test]
fn adding_checks_the_manifest_the_level_links_and_the_size_limit() {
    let (sb, _server) = setup();
    let big = vec![b'1'; 16 * 1024 * 1024 + 1];
    sb.outputs(
        "ws1",
        &[("output/big.csv", &big), ("output/ok.csv", b"a\n100\n")],
    );
    std::fs::write(sb.ws("ws1").join("output/table.csv"), b"group,count\nA,1\n").unwrap();
    let mut m = sb.manifest("ws1");
    m["outputs"]["output/ok.csv"]["level"] = "highly_sensitive".into();
    sb.write_manifest("ws1", &m);
    std::os::unix::fs::symlink("/etc/passwd", sb.ws("ws1").join("output/link.csv")).unwrap();
    m["outputs"]["output/link.csv"] = m["outputs"]["output/figure.svg"].clone();
    sb.write_manifest("ws1", &m);

    let r = sb.run("alice", &["request", "create", "ws1"]);
    let id = r.summary()["id"].as_str().unwrap().to_string();
    let r = sb.run(
        "alice",
        &[
            "request",
            "add",
            &id,
            "output/big.csv",
            "output/ok.csv",
            "output/table.csv",
            "output/link.csv",
            "output/missing.csv",
            "../../etc/shadow",
            "output/figure.svg",
        ],
    );
    assert_eq!(r.code, 1);
    let mut kinds = r.error_kinds();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            "file_changed",
            "not_releasable",
            "not_releasable",
            "not_releasable",
            "too_large",
            "usage"
        ]
    );
    assert_eq!(r.summary()["changed"], 1, "the good file was still added");
    let req = sb.request_json(&id);
    assert_eq!(
        req["files"].as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["output/figure.svg"]
    );
    assert!(sb.audit().iter().any(|e| e["action"] == "add_refused"));
}

/// Copies are written with direct I/O in whole 4 KiB blocks and then cut to
/// length: every size around a block boundary must come out byte for byte.
#[test]
fn copies_are_byte_identical_at_every_block_boundary_and_leave_no_temp() {
    let (sb, _server) = setup();
    let sizes = [0usize, 1, 511, 4095, 4096, 4097, 8192 + 100, (1 << 20) + 3];
    let files: Vec<(String, Vec<u8>)> = sizes
        .iter()
        .map(|&n| {
            let bytes = (0..n).map(|i| b'a' + (i * 7 % 26) as u8).collect();
            (format!("output/f{n}.txt"), bytes)
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    sb.outputs("ws1", &refs);
    // One output is changed after its job: hashed, found wrong, its copy discarded.
    std::fs::write(sb.ws("ws1").join("output/f1.txt"), b"Z").unwrap();

    let r = sb.run("alice", &["request", "create", "ws1"]);
    let id = r.summary()["id"].as_str().unwrap().to_string();
    let mut args = vec!["request", "add", id.as_str()];
    args.extend(refs.iter().map(|(p, _)| *p));
    let r = sb.run("alice", &args);
    assert_eq!(r.code, 1, "one output no longer matches its manifest");
    assert_eq!(r.error_kinds(), vec!["file_changed"]);
    assert_eq!(r.summary()["changed"], sizes.len() as u64 - 1);

    let store = sb.medium().join("requests").join(&id).join("files");
    let req = sb.request_json(&id);
    for (path, bytes) in &files {
        if path == "output/f1.txt" {
            assert!(req["files"].get(path).is_none());
            continue;
        }
        let sha = req["files"][path]["sha256"].as_str().unwrap();
        assert_eq!(sha, sha256(bytes), "{path}");
        let copy = store.join(sha);
        assert_eq!(
            &std::fs::read(&copy).unwrap(),
            bytes,
            "{path}: the copy's bytes"
        );
        let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640, "{path}");
    }
    let names: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.len(),
        sizes.len() - 1,
        "one copy per kept output, nothing else: {names:?}"
    );
    assert!(
        names.iter().all(|n| !n.starts_with('.')),
        "no temp left: {names:?}"
    );
}

/// Unmounts what it mounted, also when the test fails.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// ramfs has no direct I/O (open with O_DIRECT is EINVAL there, as on some
/// FUSE and network file systems): the copies are then written plainly.
#[test]
fn copies_on_a_file_system_without_direct_io_are_written_plainly() {
    let (sb, _server) = setup();
    let requests = sb.medium().join("requests");
    std::fs::create_dir_all(&requests).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "ramfs", "bs-test-ramfs"])
        .arg(&requests)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "mounting a ramfs needs root (the tests run as root)"
    );
    let _mounted = Mounted(requests.clone());
    let odd = vec![b'7'; 3 * 4096 + 5];
    sb.outputs("ws1", &[("output/odd.txt", &odd)]);

    let r = sb.run("alice", &["request", "create", "ws1"]);
    let id = r.summary()["id"].as_str().unwrap().to_string();
    sb.run("alice", &["request", "add", &id, "output/odd.txt"])
        .ok();
    let sha = sha256(&odd);
    let copy = requests.join(&id).join("files").join(&sha);
    assert_eq!(std::fs::read(&copy).unwrap(), odd);
    assert_eq!(
        sb.request_json(&id)["files"]["output/odd.txt"]["sha256"],
        sha.as_str()
    );
}

#[test]
fn a_publish_that_fails_mid_upload_resumes_where_it_stopped() {
    let (sb, server) = setup();
    let id = sb.approved("ws1", &["output/table.csv", "output/figure.svg"]);
    // figure.svg is uploaded first (sorted); table.csv fails on every attempt.
    server.set(|b| {
        b.fail_upload.insert("output/table.csv".into(), 3);
    });
    let r = sb.run("rita", &["publish", &id]);
    assert_eq!(r.code, 1, "{:?}", r.records);
    assert_eq!(r.error_kinds(), vec!["upload_failed"]);
    let req = sb.request_json(&id);
    assert_eq!(req["state"], "approved");
    assert_eq!(req["release"]["release_id"], req["airlock_id"]);
    assert_eq!(
        req["files"]["output/figure.svg"]["upload"]["status"],
        "uploaded"
    );
    assert!(req["files"]["output/table.csv"].get("upload").is_none());

    // Again: no second release, only the missing file goes up.
    let r = sb.run("victor", &["publish", &id]);
    r.ok();
    assert_eq!(server.creates(), 1);
    let uploads: Vec<_> = r
        .of_type("upload")
        .iter()
        .map(|u| u["path"].clone())
        .collect();
    assert_eq!(uploads, vec!["output/table.csv"]);
    assert_eq!(sb.request_json(&id)["state"], "released");
    assert_eq!(server.uploads.lock().unwrap()["output/table.csv"], TABLE);
    assert!(sb.audit().iter().any(|e| e["action"] == "upload_failed"));
    // A released request does not publish twice.
    assert_eq!(sb.run("rita", &["publish", &id]).code, 1);
}

#[test]
fn a_transient_failure_is_retried_and_already_uploaded_counts_as_done() {
    let (sb, server) = setup();
    let id = sb.approved("ws1", &["output/table.csv", "output/figure.svg"]);
    server.set(|b| {
        b.fail_upload.insert("output/table.csv".into(), 2);
        b.already.push("output/figure.svg".into());
    });
    let r = sb.run("rita", &["publish", &id]);
    r.ok();
    let req = sb.request_json(&id);
    assert_eq!(req["state"], "released");
    assert_eq!(
        req["files"]["output/figure.svg"]["upload"]["status"],
        "already_uploaded"
    );
    assert_eq!(
        req["files"]["output/table.csv"]["upload"]["status"],
        "uploaded"
    );
}

#[test]
fn a_stalled_or_lying_server_fails_the_publish_and_leaves_it_approved() {
    let (sb, server) = setup();
    sb.local_toml(&format!(
        "server = {:?}\nupload_timeout_secs = 1\nupload_attempts = 2",
        server.url
    ));
    let id = sb.approved("ws1", &["output/table.csv"]);
    server.set(|b| b.stall = Some(std::time::Duration::from_secs(3)));
    let started = std::time::Instant::now();
    let r = sb.run("rita", &["publish", &id]);
    assert_eq!(r.code, 1);
    assert_eq!(r.error_kinds(), vec!["publish"]);
    assert!(r.of_type("error")[0]["message"]
        .as_str()
        .unwrap()
        .contains("after 2 attempts"));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(sb.request_json(&id)["state"], "approved");

    server.set(|b| {
        b.stall = None;
        b.no_release_id = true;
    });
    let r = sb.run("rita", &["publish", &id]);
    assert_eq!(r.code, 1);
    assert!(r.of_type("error")[0]["message"]
        .as_str()
        .unwrap()
        .contains("Release-Id"));
    assert!(sb.request_json(&id)["release"].get("release_id").is_none());

    // Garbage instead of HTTP.
    let garbage = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = garbage.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for s in garbage.incoming().take(4) {
            let mut s = s.unwrap();
            let mut buf = [0u8; 65536];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"\x00\x01garbage not http\r\n\r\n");
        }
    });
    sb.local_toml(&format!(
        "server = \"http://{addr}\"\nupload_timeout_secs = 2\nupload_attempts = 2"
    ));
    let r = sb.run("rita", &["publish", &id]);
    assert_eq!(r.code, 1, "{:?}", r.records);
    assert_eq!(sb.request_json(&id)["state"], "approved");

    // Back to a good server: it goes through.
    sb.server(&server.url);
    server.set(|b| b.no_release_id = false);
    sb.run("rita", &["publish", &id]).ok();
    assert_eq!(sb.request_json(&id)["state"], "released");
}

#[test]
fn two_reviewers_voting_at_once_both_count() {
    let (sb, _server) = setup();
    let id = sb.submitted("ws1", &["output/table.csv"]);
    for _ in 0..3 {
        let mut a = sb.cmd();
        a.env("SUDO_USER", "rita").env("SUDO_UID", "2002").args([
            "review",
            &id,
            "output/table.csv",
            "--approve",
        ]);
        let mut b = sb.cmd();
        b.env("SUDO_USER", "victor").env("SUDO_UID", "2003").args([
            "review",
            &id,
            "output/table.csv",
            "--approve",
        ]);
        let (ca, cb) = (a.spawn().unwrap(), b.spawn().unwrap());
        assert!(ca.wait_with_output().unwrap().status.success());
        assert!(cb.wait_with_output().unwrap().status.success());
    }
    // And both submit their reviews at once: the second makes it reviewed.
    let mut a = sb.cmd();
    a.env("SUDO_USER", "rita")
        .env("SUDO_UID", "2002")
        .args(["request", "submit-review", &id]);
    let mut b = sb.cmd();
    b.env("SUDO_USER", "victor")
        .env("SUDO_UID", "2003")
        .args(["request", "submit-review", &id]);
    let (ca, cb) = (a.spawn().unwrap(), b.spawn().unwrap());
    assert!(ca.wait_with_output().unwrap().status.success());
    assert!(cb.wait_with_output().unwrap().status.success());
    let req = sb.request_json(&id);
    assert_eq!(
        req["files"]["output/table.csv"]["reviews"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(req["state"], "reviewed");
}

#[test]
fn the_caller_must_be_known_and_have_a_role() {
    let (sb, _server) = setup();
    // Root without sudo must say whom it acts for.
    let r = Run_of(sb.cmd().args(["ls"]));
    assert_eq!(r.code, 2);
    assert_eq!(r.error_kinds(), vec!["identity"]);
    let mut c = sb.cmd();
    c.args(["--as", "alice", "request", "create", "ws1"]);
    let r = Run_of(&mut c);
    r.ok();
    assert!(sb.audit().iter().any(|e| e["action"] == "create"
        && e["user"] == "alice"
        && e["detail"]["via"] == "root --as"));
    // A SUDO_UID that is not the user's.
    let mut c = sb.cmd();
    c.env("SUDO_USER", "rita").env("SUDO_UID", "2001").arg("ls");
    assert_eq!(Run_of(&mut c).code, 2);
    // No role.
    let r = sb.run("eve", &["request", "create", "ws1"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.error_kinds(), vec!["not_permitted"]);
    // A request directory without its file (a create killed half-way) is skipped.
    std::fs::create_dir_all(sb.medium().join("requests/77/files")).unwrap();
    sb.run("rita", &["ls"]).ok();
    // Authors see their own requests, checkers all.
    assert_eq!(sb.run("rita", &["ls"]).of_type("request").len(), 1);
    assert_eq!(
        sb.run("dev", &["ls", "--state", "pending"])
            .of_type("request")
            .len(),
        1
    );
    assert_eq!(sb.run("alice", &["show", "1"]).code, 0);
    assert_eq!(sb.run("eve", &["show", "1"]).code, 1);
}

#[allow(non_snake_case)]
fn Run_of(c: &mut std::process::Command) -> common::Run {
    let c2 = std::mem::replace(c, std::process::Command::new("true"));
    common::Run::of(c2)
}

#[test]
fn disclosure_checks_find_small_counts_patient_ids_long_tables_and_bad_types() {
    let (sb, _server) = setup();
    let mut long = b"year,value\n".to_vec();
    for i in 0..5001 {
        long.extend_from_slice(format!("{},{}\n", 2000 + i % 20, 100 + i).as_bytes());
    }
    sb.outputs(
        "ws1",
        &[
            (
                "output/small.csv",
                b"group,count\nA,120\nB,5\nC,\"7\"\nD,0\n",
            ),
            ("output/rows.csv", b"patient_id,age\n1001,54\n"),
            ("output/long.csv", &long),
            ("output/model.pkl", b"\x80\x04binary"),
        ],
    );
    let ws = sb.ws("ws1");
    let args: Vec<String> = [
        "small.csv",
        "rows.csv",
        "long.csv",
        "model.pkl",
        "table.csv",
    ]
    .iter()
    .map(|f| {
        ws.join("output")
            .join(f)
            .strip_prefix(&sb.root)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    })
    .map(|p| format!("/{p}"))
    .collect();
    let mut a = vec!["disclosure"];
    a.extend(args.iter().map(String::as_str));
    let r = sb.run("alice", &a);
    r.ok();
    let f = r.of_type("finding");
    let find = |path: &str, check: &str| {
        f.iter()
            .find(|x| x["path"].as_str().unwrap().ends_with(path) && x["check"] == check)
            .copied()
    };
    let low = find("small.csv", "low_count").unwrap();
    assert_eq!(low["column"], "count");
    assert_eq!(low["rows"], serde_json::json!([2, 3]));
    assert!(find("rows.csv", "patient_id_column").is_some());
    assert_eq!(find("long.csv", "too_many_rows").unwrap()["count"], 5001);
    assert!(find("long.csv", "low_count").is_none());
    assert!(find("model.pkl", "type_not_allowed").is_some());
    assert_eq!(r.of_type("checked").len(), 5);
    assert_eq!(
        r.of_type("checked")
            .iter()
            .find(|c| c["path"].as_str().unwrap().ends_with("table.csv"))
            .unwrap()["findings"],
        0
    );
    // Outside the workspaces: refused.
    let r = sb.run("alice", &["disclosure", "/etc/shadow"]);
    assert_eq!(r.code, 1);

    // A type outside the level-4 list is not only a finding: it cannot be added.
    let r = sb.run("alice", &["request", "create", "ws1"]);
    let pkl_id = r.summary()["id"].as_str().unwrap().to_string();
    let pkl = sb.run("alice", &["request", "add", &pkl_id, "output/model.pkl"]);
    assert_eq!(pkl.code, 1);
    assert_eq!(pkl.error_kinds(), vec!["not_releasable"]);
    sb.run("alice", &["request", "withdraw", &pkl_id]).ok();

    // Findings travel with the request to the reviewers, and do not block.
    let id = sb.submitted("ws1", &["output/small.csv"]);
    let shown = sb.run("rita", &["show", &id]);
    shown.ok();
    let req = &shown.of_type("request")[0];
    assert_eq!(
        req["files"]["output/small.csv"]["findings"][0]["check"],
        "low_count"
    );
    assert!(req["files"]["output/small.csv"]["copy"]
        .as_str()
        .unwrap()
        .starts_with("/srv/medium_privacy/requests/"));
    assert!(sb
        .audit()
        .iter()
        .any(|e| e["action"] == "view" && e["user"] == "rita"));
}

#[test]
fn sync_level4_copies_released_files_and_deletes_only_when_asked() {
    let (sb, _server) = setup();
    let id = sb.approved("ws1", &["output/table.csv", "output/figure.svg"]);
    sb.run("rita", &["publish", &id]).ok();
    let dest = sb.dir.path().join("level4");
    std::fs::create_dir_all(dest.join("ws1/old")).unwrap();
    std::fs::write(dest.join("ws1/old/stale.csv"), b"x").unwrap();
    std::fs::write(dest.join("keep.txt"), b"not ours").unwrap();
    let mut c = sb.cmd();
    c.args(["sync-level4", "--to", dest.to_str().unwrap()]);
    let r = Run_of(&mut c);
    r.ok();
    assert_eq!(r.summary()["changed"], 2);
    assert_eq!(
        std::fs::read(dest.join("ws1/output/table.csv")).unwrap(),
        TABLE
    );
    assert!(dest.join("ws1/old/stale.csv").exists());
    let mut c = sb.cmd();
    c.args(["sync-level4", "--to", dest.to_str().unwrap()]);
    let r = Run_of(&mut c);
    assert_eq!(r.summary()["changed"], 0, "{:?}", r.records);
    let mut c = sb.cmd();
    c.args(["sync-level4", "--to", dest.to_str().unwrap(), "--delete"]);
    let r = Run_of(&mut c);
    r.ok();
    assert!(!dest.join("ws1/old/stale.csv").exists());
    assert!(
        dest.join("ws1/old").is_dir(),
        "directories are never removed"
    );
    assert!(
        dest.join("keep.txt").exists(),
        "outside the pushed workspaces nothing is touched"
    );
    assert!(dest.join("ws1/output/figure.svg").exists());
    // Unreleased requests are not pushed.
    sb.outputs("ws1", &[("output/new.csv", b"a,b\n1000,2000\n")]);
    let other = sb.submitted("ws1", &["output/new.csv"]);
    assert_eq!(sb.request_json(&other)["state"], "submitted");
    assert!(sb.audit().iter().any(|e| e["action"] == "sync_copy"));
}

#[test]
fn apply_creates_the_state_directories_and_pins_the_host_config() {
    let sb = Sandbox::new();
    let mut c = sb.cmd();
    c.arg("plan");
    let r = Run_of(&mut c);
    r.ok();
    // requests, audit dir, the two snapshot files, pin, the web unit; the token file exists already
    assert_eq!(r.summary()["changed"], 6);
    std::fs::remove_file(sb.root.join("etc/bs/release.env")).unwrap();
    assert!(!sb.root.join("etc/bs/release.toml").exists());
    let mut c = sb.cmd();
    c.arg("check");
    let r = Run_of(&mut c);
    assert_eq!(
        r.code, 3,
        "check without paths reports drift: {:?}",
        r.records
    );
    let mut c = sb.cmd();
    c.arg("apply");
    Run_of(&mut c).ok();
    let mut c = sb.cmd();
    c.arg("check");
    Run_of(&mut c).ok();
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(sb.root.join("var/lib/bs/release")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (10000, 0o750));
    let m = std::fs::metadata(sb.medium().join("requests")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (10000, 10000, 0o750));
    let m = std::fs::metadata(sb.root.join("etc/bs/release.env")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (10000, 0o600));
    let pin = std::fs::read_to_string(sb.root.join("etc/bs/release.toml")).unwrap();
    assert!(pin.contains("backend = \"test\""), "{pin}");
    let unit =
        std::fs::read_to_string(sb.root.join("etc/systemd/system/bs-release-web.service")).unwrap();
    assert!(
        unit.contains("User=opensafely\n")
            && unit.contains("ExecStart=/usr/local/bin/bs-release serve\n")
            && unit.contains("RuntimeDirectory=bs-release\n"),
        "{unit}"
    );
    let mut c = sb.cmd();
    c.arg("plan");
    let r = Run_of(&mut c);
    assert_eq!(r.summary()["changed"], 0, "{:?}", r.records);
}

#[test]
fn apply_with_a_plan_given_back_applies_only_what_is_still_needed() {
    let sb = Sandbox::new();
    let mut c = sb.cmd();
    c.arg("plan");
    let plan = c.output().unwrap();
    assert!(plan.status.success());
    let text = String::from_utf8(plan.stdout).unwrap();
    // Keep only the request store from the plan.
    let only_store: String = text
        .lines()
        .filter(|l| l.contains("\"type\":\"dir\"") && l.contains("/requests"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(only_store.lines().count(), 1, "{text}");
    let plan_file = sb.dir.path().join("plan.jsonl");
    std::fs::write(&plan_file, &only_store).unwrap();
    let mut c = sb.cmd();
    c.args(["apply", "--plan", plan_file.to_str().unwrap()]);
    let r = Run_of(&mut c);
    r.ok();
    assert_eq!(r.summary()["changed"], 1, "{:?}", r.records);
    assert!(sb.medium().join("requests").is_dir());
    assert!(
        !sb.root.join("etc/bs/release.toml").exists(),
        "not in the plan given"
    );
    // Given back again, the same change is no longer needed: skipped, nothing done.
    let mut c = sb.cmd();
    c.args(["apply", "--plan", plan_file.to_str().unwrap()]);
    let r = Run_of(&mut c);
    r.ok();
    assert_eq!(r.summary()["changed"], 0);
    assert_eq!(r.of_type("skipped").len(), 1);
}

/// A checkout of its own holding the layers the loader reads, so the test
/// can change and delete it.
fn checkout(dir: &std::path::Path) -> std::path::PathBuf {
    let co = dir.join("checkout");
    std::fs::create_dir_all(co.join("backends/test")).unwrap();
    for rel in ["backends/defaults.toml", "backends/test/backend.toml"] {
        std::fs::copy(common::repo().join(rel), co.join(rel)).unwrap();
    }
    co
}

#[test]
fn the_pin_names_the_snapshot_which_outlives_the_checkout_and_follows_its_changes() {
    let (sb, _server) = setup();
    let co = checkout(sb.dir.path());
    let apply = |repo: &std::path::Path| {
        let mut c = sb.cmd();
        c.env("BS_REPO", repo).arg("apply");
        let r = Run_of(&mut c);
        r.ok();
        r
    };
    let r = apply(&co);
    let snaps = r.of_type("snapshot");
    assert_eq!(snaps.len(), 2);
    assert!(snaps.iter().all(|s| s["changed"] == true), "{snaps:#?}");
    let pin: toml::Table =
        toml::from_str(&std::fs::read_to_string(sb.root.join("etc/bs/release.toml")).unwrap())
            .unwrap();
    assert_eq!(pin["repo"].as_str(), Some("/var/lib/bs/repo"), "{pin}");
    assert_eq!(pin["backend"].as_str(), Some("test"));
    // The pin is a path of the host (here: of the sandbox root).
    let pinned = sb.root.join("var/lib/bs/repo");

    // The checkout is deleted: bs-release with the pinned repo still works.
    std::fs::remove_dir_all(&co).unwrap();
    let mut c = sb.cmd();
    c.env("BS_REPO", &co).args(["ls"]);
    assert_eq!(Run_of(&mut c).code, 2, "the checkout really is gone");
    let mut c = sb.cmd();
    c.env("BS_REPO", &pinned)
        .env("SUDO_USER", "alice")
        .env("SUDO_UID", "2001")
        .args(["request", "create", "ws1"]);
    Run_of(&mut c).ok();

    // A new checkout with a merged change: the next apply copies it, and
    // only it; a second apply changes nothing.
    let co = checkout(sb.dir.path());
    let layer = co.join("backends/test/backend.toml");
    let text = std::fs::read_to_string(&layer).unwrap().replacen(
        "description = \"",
        "description = \"merged change: ",
        1,
    );
    std::fs::write(&layer, &text).unwrap();
    let r = apply(&co);
    let changed: Vec<_> = r
        .of_type("snapshot")
        .iter()
        .map(|s| {
            (
                s["target"].as_str().unwrap().to_string(),
                s["changed"].clone(),
            )
        })
        .collect();
    assert_eq!(
        changed,
        [
            (
                "/var/lib/bs/repo/backends/defaults.toml".to_string(),
                Value::Bool(false)
            ),
            (
                "/var/lib/bs/repo/backends/test/backend.toml".to_string(),
                Value::Bool(true)
            )
        ]
    );
    assert_eq!(
        std::fs::read_to_string(pinned.join("backends/test/backend.toml")).unwrap(),
        text
    );
    let r = apply(&co);
    assert_eq!(r.summary()["changed"], 0, "{:#?}", r.records);
}

#[test]
fn a_snapshot_another_tool_of_the_chain_wrote_is_left_as_it_is() {
    // bs-jobs runs before bs-release in `just manage` and writes the same
    // snapshot through the same bs-core code.
    let sb = Sandbox::new();
    let co = checkout(sb.dir.path());
    let root = bs_core::Root::new(&sb.root).unwrap();
    let source = bs_core::config::Source {
        repo: co.clone(),
        backend: "test".into(),
    };
    let snap = bs_core::config::Snapshot::capture(&source, &root).unwrap();
    for f in snap.files() {
        assert!(snap.write(&root, f).unwrap());
    }
    let mut c = sb.cmd();
    c.env("BS_REPO", &co).arg("apply");
    let r = Run_of(&mut c);
    r.ok();
    let snaps = r.of_type("snapshot");
    assert_eq!(snaps.len(), 2);
    assert!(
        snaps
            .iter()
            .all(|s| s["changed"] == false && s["action"] == "none"),
        "{snaps:#?}"
    );
}
