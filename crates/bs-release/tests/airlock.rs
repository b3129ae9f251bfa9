//! Issue 15: what Airlock and job-runner do, done by bs-release: the
//! manifest job-runner writes, Airlock's rules for adding files, and
//! releases job-server accepts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{FakeServer, Sandbox};
use serde_json::json;

const TABLE: &[u8] = b"group,count\nA,120\nB,45\n";

fn setup() -> (Sandbox, FakeServer) {
    let sb = Sandbox::new();
    let server = FakeServer::start();
    sb.server(&server.url);
    sb.outputs("ws1", &[("output/table.csv", TABLE)]);
    (sb, server)
}

fn new_request(sb: &Sandbox) -> String {
    let r = sb.run("alice", &["request", "create", "ws1"]);
    r.ok();
    r.summary()["id"].as_str().unwrap().to_string()
}

fn refused_reason(sb: &Sandbox, id: &str, path: &str) -> String {
    let r = sb.run("alice", &["request", "add", id, path]);
    assert_eq!(r.code, 1, "{path}: {:?}", r.records);
    assert_eq!(r.error_kinds(), vec!["not_releasable"], "{path}");
    r.of_type("error")[0]["message"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn outputs_of_a_real_job_runner_manifest_are_read_by_content_hash() {
    let (sb, _server) = setup();
    let m = sb.manifest("ws1");
    let meta = &m["outputs"]["output/table.csv"];
    assert!(
        meta.get("sha256").is_none(),
        "job-runner writes content_hash only"
    );
    assert!(meta["timestamp"].is_number());
    let files = sb.run("alice", &["files", "ws1"]);
    files.ok();
    assert_eq!(files.of_type("file")[0]["releasable"], true);
    let id = new_request(&sb);
    sb.run("alice", &["request", "add", &id, "output/table.csv"])
        .ok();
    assert_eq!(
        sb.request_json(&id)["files"]["output/table.csv"]["sha256"],
        common::sha256(TABLE)
    );
}

#[test]
fn out_of_date_excluded_dotfiles_and_other_types_cannot_be_added() {
    let (sb, _server) = setup();
    sb.outputs(
        "ws1",
        &[
            ("output/old.csv", b"a,b\n100,200\n"),
            ("output/gone.csv", b"a,b\n300,400\n"),
            ("output/report.docx", b"PK\x03\x04"),
            ("output/.secret.csv", b"a,b\n500,600\n"),
        ],
    );
    let mut m = sb.manifest("ws1");
    m["outputs"]["output/old.csv"]["out_of_date_output"] = json!(true);
    m["outputs"]["output/gone.csv"]["out_of_date_action"] = json!(true);
    // An excluded output: job-runner leaves only its note, `<file>.txt`.
    m["outputs"]["output/cohort.csv"] = json!({
        "level": "moderately_sensitive", "action": "generate", "excluded": true,
        "message": "File has patient_id column", "content_hash": "a".repeat(64),
        "size": 10, "timestamp": 1795334400.0,
    });
    sb.write_manifest("ws1", &m);
    std::fs::write(
        sb.ws("ws1").join("output/cohort.csv.txt"),
        b"excluded: patient_id",
    )
    .unwrap();

    let id = new_request(&sb);
    assert!(refused_reason(&sb, &id, "output/old.csv").contains("out of date"));
    assert!(refused_reason(&sb, &id, "output/gone.csv").contains("project.yaml"));
    assert!(refused_reason(&sb, &id, "output/report.docx").contains(".docx"));
    assert!(refused_reason(&sb, &id, "output/.secret.csv").contains("dotfile"));
    assert!(refused_reason(&sb, &id, "output/cohort.csv").contains("patient_id"));
    assert!(refused_reason(&sb, &id, "output/cohort.csv.txt").contains("excluded"));
    assert!(sb.request_json(&id)["files"]
        .as_object()
        .unwrap()
        .is_empty());
    let files = sb.run("alice", &["files", "ws1"]);
    let docx = files
        .of_type("file")
        .into_iter()
        .find(|f| f["path"] == "output/report.docx")
        .unwrap()
        .clone();
    assert_eq!(docx["releasable"], false);
}

#[test]
fn a_released_file_cannot_be_added_again_but_its_new_content_can() {
    let (sb, _server) = setup();
    let id = sb.approved("ws1", &["output/table.csv"]);
    sb.run("rita", &["publish", &id]).ok();
    let again = new_request(&sb);
    assert!(refused_reason(&sb, &again, "output/table.csv").contains("already released"));
    // The job ran again and wrote new numbers: that is a new output.
    sb.outputs(
        "ws1",
        &[("output/table.csv", b"group,count\nA,130\nB,50\n")],
    );
    sb.run("alice", &["request", "add", &again, "output/table.csv"])
        .ok();
}

#[test]
fn the_file_type_rule_is_enforced_again_before_release() {
    let (sb, server) = setup();
    let id = sb.approved("ws1", &["output/table.csv"]);
    // The level-4 list changed since: csv is no longer on it.
    sb.local_toml(&format!(
        "server = {:?}\nallowed_extensions = [\"txt\"]",
        server.url
    ));
    let publish = sb.run("rita", &["publish", &id]);
    assert_eq!(publish.code, 1);
    assert_eq!(publish.error_kinds(), vec!["not_releasable"]);
    assert_eq!(server.seen().len(), 0);
}
