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

#[test]
fn the_release_body_is_what_job_servers_serializers_require() {
    let (sb, server) = setup();
    let id = sb.approved("ws1", &["output/table.csv"]);
    sb.run("rita", &["publish", &id]).ok();
    let create = server
        .seen()
        .into_iter()
        .find(|s| s.url == "/releases/workspace/ws1")
        .unwrap();
    assert_eq!(create.status, 201);
    let body: serde_json::Value = serde_json::from_slice(&create.body).unwrap();
    common::validate_release_body(&body).unwrap();
    let airlock_id = sb.request_json(&id)["airlock_id"].clone();
    let f = &body["files"][0];
    assert_eq!(f["url"], "output/table.csv");
    assert!(f["review"].is_null());
    assert_eq!(
        f["metadata"],
        json!({"tool": "bs-release", "airlock_id": airlock_id})
    );
    assert_eq!(
        body["metadata"],
        json!({"tool": "bs-release", "airlock_id": airlock_id})
    );
    assert!(body.as_object().unwrap().contains_key("review"));

    // The fake refuses what job-server refuses: the body bs-release sent
    // before (no url, no review) would not make a release.
    let mut old = body.clone();
    old["files"][0].as_object_mut().unwrap().remove("url");
    old["files"][0].as_object_mut().unwrap().remove("review");
    old.as_object_mut().unwrap().remove("review");
    let errors = common::validate_release_body(&old).unwrap_err();
    assert_eq!(errors["review"][0], "This field is required.");
    assert_eq!(errors["files[0]"]["url"][0], "This field is required.");
    let mut bad_date = body.clone();
    bad_date["files"][0]["date"] = json!(1795334400.0);
    assert!(common::validate_release_body(&bad_date).is_err());
}

#[test]
fn a_create_whose_answer_was_lost_is_retried_into_the_same_release() {
    let (sb, server) = setup();
    let id = sb.approved("ws1", &["output/table.csv"]);
    // The server makes the release, then its answer never arrives in time.
    server.set(|b| b.lose_create_answers = 1);
    let r = sb.run("rita", &["publish", &id]);
    r.ok();
    assert_eq!(server.creates(), 2, "the create was sent again");
    assert_eq!(
        server.release_count(),
        1,
        "one release, found by its airlock_id"
    );
    assert_eq!(sb.request_json(&id)["state"], "released");
}

#[test]
fn os_user_is_the_github_login_as_listed_with_its_capitals() {
    let (sb, server) = setup();
    let id = sb.approved("ws1", &["output/table.csv"]);
    let r = sb.run("testcapitals", &["publish", &id]);
    r.ok();
    let users: Vec<String> = server
        .seen()
        .iter()
        .map(|s| s.headers["os-user"].clone())
        .collect();
    assert!(users.iter().all(|u| u == "TestCapitals"), "{users:?}");
    assert_eq!(sb.request_json(&id)["state"], "released");
}

#[test]
fn a_file_job_server_already_has_counts_as_uploaded_and_a_crash_resumes() {
    let (sb, server) = setup();
    sb.outputs("ws1", &[("output/figure.svg", b"<svg/>\n")]);
    let id = sb.approved("ws1", &["output/figure.svg", "output/table.csv"]);
    // table.csv fails every try: the run stops with figure.svg up.
    server.set(|b| {
        b.fail_upload.insert("output/table.csv".into(), 3);
    });
    assert_eq!(sb.run("rita", &["publish", &id]).code, 1);
    // As after a crash between the upload and its record: forget figure's.
    let path = sb.medium().join("requests").join(&id).join("request.json");
    let mut req = sb.request_json(&id);
    req["files"]["output/figure.svg"]
        .as_object_mut()
        .unwrap()
        .remove("upload");
    std::fs::write(&path, serde_json::to_vec_pretty(&req).unwrap()).unwrap();
    let r = sb.run("rita", &["publish", &id]);
    r.ok();
    let status: Vec<(String, String)> = r
        .of_type("upload")
        .iter()
        .map(|u| {
            (
                u["path"].as_str().unwrap().into(),
                u["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        status,
        vec![
            ("output/figure.svg".into(), "already_uploaded".into()),
            ("output/table.csv".into(), "uploaded".into())
        ]
    );
    assert_eq!(server.release_count(), 1);
}

#[test]
fn status_changes_are_posted_to_the_airlock_events_endpoint_when_configured() {
    let (sb, server) = setup();
    sb.local_toml(&format!("server = {:?}\nevents = true", server.url));
    let id = sb.approved("ws1", &["output/table.csv"]);
    sb.run("testcapitals", &["publish", &id]).ok();
    let events = server.events.lock().unwrap().clone();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        vec![
            "request_submitted",
            "request_partially_reviewed",
            "request_reviewed",
            "request_approved",
            "request_released"
        ]
    );
    let last = events.last().unwrap();
    assert_eq!(last["user"], "TestCapitals");
    assert_eq!(last["request_author"], "alice");
    assert_eq!(last["workspace"], "ws1");
    assert_eq!(last["request"], sb.request_json(&id)["airlock_id"]);
    // A server that refuses the event does not undo or fail the change.
    let (sb, server) = setup();
    sb.local_toml(&format!("server = {:?}\nevents = true", server.url));
    std::fs::write(
        sb.root.join("etc/bs/release.env"),
        "RELEASE_TOKEN=wrong-token\n",
    )
    .unwrap();
    let id = sb.submitted("ws1", &["output/table.csv"]);
    assert_eq!(sb.request_json(&id)["state"], "submitted");
    assert!(sb.audit().iter().any(|e| e["action"] == "event_failed"));
}

fn show(sb: &Sandbox, user: &str, id: &str) -> serde_json::Value {
    let r = sb.run(user, &["show", id]);
    r.ok();
    r.of_type("request")[0].clone()
}

#[test]
fn until_both_reviews_are_in_a_checker_sees_only_their_own_votes_and_the_author_none() {
    let (sb, _server) = setup();
    let id = sb.submitted("ws1", &["output/table.csv"]);
    sb.run(
        "rita",
        &["review", &id, "output/table.csv", "--request-changes"],
    )
    .ok();
    // Changes asked for: a comment on the group first (for checkers only, by default).
    assert_eq!(sb.run("rita", &["request", "submit-review", &id]).code, 1);
    sb.run(
        "rita",
        &["request", "comment", &id, "default", "B is small"],
    )
    .ok();
    sb.run("rita", &["request", "submit-review", &id]).ok();
    // Someone with no role cannot comment.
    assert_eq!(
        sb.run("eve", &["request", "comment", &id, "default", "hello"])
            .code,
        1
    );
    // Victor, reviewing independently, sees nothing of rita's.
    let v = show(&sb, "victor", &id);
    assert_eq!(v["files"]["output/table.csv"]["reviews"], json!([]));
    assert!(v["files"]["output/table.csv"].get("decision").is_none());
    assert_eq!(v["submitted_reviews"], json!({}));
    let audit = sb.run("victor", &["audit"]);
    audit.ok();
    assert!(
        !audit
            .of_type("audit")
            .iter()
            .any(|e| e["action"] == "vote" && e["user"] == "rita"),
        "rita's vote is hidden from victor in the audit log too"
    );
    assert!(!format!("{:?}", audit.records).contains("B is small"));
    // The author sees no votes and no decision.
    let a = show(&sb, "alice", &id);
    assert!(a["files"]["output/table.csv"].get("reviews").is_none());
    assert!(a["files"]["output/table.csv"].get("decision").is_none());
    assert!(!a.to_string().contains("B is small"));

    sb.review_all("victor", &id, &["output/table.csv"], "--approve");
    assert_eq!(sb.request_json(&id)["state"], "reviewed");
    // Both in: the checkers see each other's votes and the decision.
    let v = show(&sb, "victor", &id);
    assert_eq!(
        v["files"]["output/table.csv"]["reviews"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(v["files"]["output/table.csv"]["decision"], "conflicted");
    let audit = sb.run("victor", &["audit"]);
    assert!(audit
        .of_type("audit")
        .iter()
        .any(|e| e["action"] == "vote" && e["user"] == "rita"));
    // Still nothing for the author until the request comes back to them.
    assert!(show(&sb, "alice", &id)["files"]["output/table.csv"]
        .get("decision")
        .is_none());
    // Returning with changes requested needs a public word to the author.
    assert_eq!(sb.run("victor", &["request", "return", &id]).code, 1);
    sb.run(
        "victor",
        &[
            "request",
            "comment",
            &id,
            "default",
            "please round B",
            "--public",
        ],
    )
    .ok();
    sb.run("victor", &["request", "return", &id]).ok();
    let a = show(&sb, "alice", &id);
    assert_eq!(a["files"]["output/table.csv"]["decision"], "conflicted");
    assert!(
        !a.to_string().contains("B is small"),
        "a checker's private comment is never the author's"
    );
    assert!(
        a.to_string().contains("please round B"),
        "the public one is"
    );
    // The author answers before resubmitting.
    assert_eq!(sb.run("alice", &["request", "submit", &id]).code, 1);
    sb.run(
        "alice",
        &["request", "comment", &id, "default", "rounded now"],
    )
    .ok();
    sb.run("alice", &["request", "submit", &id]).ok();
    assert_eq!(sb.request_json(&id)["state"], "submitted");
}

#[test]
fn an_author_holds_one_active_request_per_workspace() {
    let (sb, _server) = setup();
    let id = new_request(&sb);
    let second = sb.run("alice", &["request", "create", "ws1"]);
    assert_eq!(second.code, 1);
    assert_eq!(second.error_kinds(), vec!["not_permitted"]);
    assert!(second.of_type("error")[0]["message"]
        .as_str()
        .unwrap()
        .contains(&format!("request {id}")));
    // Another author may; and once alice's is withdrawn, she may again.
    let dev = sb.run("dev", &["request", "create", "ws1"]);
    dev.ok();
    sb.run("alice", &["request", "withdraw", &id]).ok();
    sb.run("alice", &["request", "create", "ws1"]).ok();
}

#[test]
fn an_approved_request_whose_job_ran_again_is_returned_resubmitted_reviewed_again_and_released() {
    let (sb, server) = setup();
    let id = sb.approved("ws1", &["output/table.csv"]);
    let first_id = sb.request_json(&id)["airlock_id"].clone();
    // The job runs again and writes other numbers.
    let new_table: &[u8] = b"group,count\nA,121\nB,46\n";
    sb.outputs("ws1", &[("output/table.csv", new_table)]);
    let publish = sb.run("rita", &["publish", &id]);
    assert_eq!(publish.code, 1);
    assert_eq!(publish.error_kinds(), vec!["file_changed"]);
    // Not stuck: a checker returns it, and the next release gets a new id.
    sb.run(
        "rita",
        &["request", "return", &id, "--comment", "the job ran again"],
    )
    .ok();
    let req = sb.request_json(&id);
    assert_eq!(req["state"], "returned");
    assert_ne!(req["airlock_id"], first_id);
    sb.run("alice", &["request", "add", &id, "output/table.csv"])
        .ok();
    sb.run("alice", &["request", "submit", &id]).ok();
    let req = sb.request_json(&id);
    assert_eq!(
        req["state"], "submitted",
        "old votes do not count in the new turn"
    );
    assert_eq!(req["turn"], 4);
    for reviewer in ["rita", "victor"] {
        sb.review_all(reviewer, &id, &["output/table.csv"], "--approve");
    }
    sb.run("victor", &["request", "approve", &id]).ok();
    sb.run("rita", &["publish", &id]).ok();
    assert_eq!(
        server.uploads.lock().unwrap()["output/table.csv"],
        new_table
    );
    assert_eq!(server.release_count(), 1);
}

#[test]
fn files_in_named_groups_with_supporting_files_reviewed_but_never_released() {
    let (sb, server) = setup();
    sb.outputs(
        "ws1",
        &[("output/codelist.csv", b"code,term\n123,asthma\n")],
    );
    let id = new_request(&sb);
    sb.run(
        "alice",
        &[
            "request",
            "add",
            &id,
            "output/table.csv",
            "--group",
            "table 1",
        ],
    )
    .ok();
    sb.run(
        "alice",
        &[
            "request",
            "add",
            &id,
            "output/codelist.csv",
            "--group",
            "table 1",
            "--supporting",
        ],
    )
    .ok();
    // The group needs its context and controls before the request can go.
    let r = sb.run("alice", &["request", "submit", &id]);
    assert_eq!(r.code, 1);
    assert!(r.of_type("error")[0]["message"]
        .as_str()
        .unwrap()
        .contains("table 1"));
    assert_eq!(
        sb.run(
            "rita",
            &["request", "group", &id, "table 1", "--context", "x"]
        )
        .code,
        1,
        "only the author describes groups"
    );
    sb.describe("alice", &id, "table 1");
    sb.run("alice", &["request", "submit", &id]).ok();
    let r = sb.run("rita", &["review", &id, "output/codelist.csv", "--approve"]);
    assert_eq!(r.code, 1, "supporting files are not voted on");
    for reviewer in ["rita", "victor"] {
        sb.review_all(reviewer, &id, &["output/table.csv"], "--approve");
    }
    sb.run("rita", &["request", "approve", &id]).ok();
    sb.run("victor", &["publish", &id]).ok();
    assert_eq!(sb.request_json(&id)["state"], "released");
    let uploads = server.uploads.lock().unwrap();
    assert!(uploads.contains_key("output/table.csv"));
    assert!(
        !uploads.contains_key("output/codelist.csv"),
        "supporting files never leave"
    );
    let log = sb.audit();
    assert!(log
        .iter()
        .any(|e| e["action"] == "group_edit" && e["detail"]["group"] == "table 1"));
}

#[test]
fn bad_input_is_refused_clearly_and_leaves_the_request_unchanged() {
    let (sb, _server) = setup();
    let id = sb.submitted("ws1", &["output/table.csv"]);
    let before = sb.request_bytes(&id);
    for (user, args, kind) in [
        (
            "rita",
            vec!["review", id.as_str(), "output/nope.csv", "--approve"],
            "not_found",
        ),
        (
            "eve",
            vec!["request", "comment", id.as_str(), "default", "hi"],
            "not_permitted",
        ),
        (
            "rita",
            vec!["request", "comment", id.as_str(), "no-such-group", "hi"],
            "not_found",
        ),
        (
            "rita",
            vec!["review", id.as_str(), "output/table.csv", "--reset"],
            "not_found",
        ),
        (
            "alice",
            vec!["request", "group", id.as_str(), "default", "--context", "x"],
            "wrong_state",
        ),
    ] {
        let r = sb.run(user, &args);
        assert_eq!(r.code, 1, "{args:?}: {:?}", r.records);
        assert_eq!(r.error_kinds(), vec![kind], "{args:?}");
        assert!(!r.of_type("error")[0]["message"]
            .as_str()
            .unwrap()
            .is_empty());
        assert_eq!(
            sb.request_bytes(&id),
            before,
            "{args:?} changed the request"
        );
    }
    let refused = sb
        .audit()
        .into_iter()
        .filter(|e| e["action"] == "refused")
        .count();
    assert_eq!(refused, 5, "every refusal is audited");
}
