//! The queue through its library API and the CLI, without an engine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use bs_core::config::JobsConfig;
use bs_core::Root;
use bs_jobs::clock::Clock;
use bs_jobs::queue::{Queue, State};
use bs_jobs::spec;
use common::*;
use serde_json::json;

/// A clock an operator's chrony steps backwards between every reading.
struct SteppingBack(AtomicI64);

impl Clock for SteppingBack {
    fn now_ns(&self) -> i128 {
        i128::from(self.0.fetch_sub(3_600_000_000_000, Ordering::SeqCst))
    }
}

fn job(id: &str) -> spec::JobSpec {
    spec::parse(
        &json!({"id": id, "workspace": "w", "action": id, "image": "bs-busybox:latest", "command": ["true"]}),
        &JobsConfig::default(),
    )
    .unwrap()
}

#[test]
fn order_is_kept_when_the_clock_steps_back_between_submissions() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path()).unwrap();
    let q = Queue::open(&root, std::path::Path::new("/var/lib/bs/jobs")).unwrap();
    let clock = SteppingBack(AtomicI64::new(1_800_000_000_000_000_000));
    let ids = ["first", "second", "third", "fourth"];
    let mut stamps = Vec::new();
    for id in ids {
        stamps.push(q.submit(job(id), &clock).unwrap().submitted_at_ns);
    }
    assert!(
        stamps.windows(2).all(|w| w[0] > w[1]),
        "the clock did not step back: {stamps:?}"
    );
    let mut claimed = Vec::new();
    while let Some(e) = q.claim("w1", &clock, &mut Vec::new()).unwrap() {
        claimed.push(e.job.id.clone());
    }
    assert_eq!(claimed, ids);
}

#[test]
fn a_job_id_is_never_queued_twice_even_after_it_finished() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path()).unwrap();
    let q = Queue::open(&root, std::path::Path::new("/var/lib/bs/jobs")).unwrap();
    let clock = bs_jobs::clock::SystemClock;
    q.submit(job("once"), &clock).unwrap();
    assert!(matches!(
        q.submit(job("once"), &clock),
        Err(bs_jobs::JobsError::Duplicate { .. })
    ));
    let e = q.claim("w", &clock, &mut Vec::new()).unwrap().unwrap();
    q.finish(e, bs_jobs::queue::Outcome::succeeded("ok", vec![], 0))
        .unwrap();
    assert!(matches!(
        q.submit(job("once"), &clock),
        Err(bs_jobs::JobsError::Duplicate { .. })
    ));
    assert_eq!(q.names(State::Done).unwrap().len(), 1);
}

#[test]
fn concurrent_claimers_never_get_the_same_entry() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path()).unwrap();
    let q = Queue::open(&root, std::path::Path::new("/var/lib/bs/jobs")).unwrap();
    let clock = bs_jobs::clock::SystemClock;
    for i in 0..200 {
        q.submit(job(&format!("j{i}")), &clock).unwrap();
    }
    let got = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for w in 0..4 {
            let (q, got, clock) = (&q, &got, &clock);
            s.spawn(move || {
                // Each thread opens its own view, like a separate process.
                while let Some(e) = q.claim(&format!("w{w}"), clock, &mut Vec::new()).unwrap() {
                    got.lock().unwrap().push(e.job.id);
                }
            });
        }
    });
    let mut got = got.into_inner().unwrap();
    assert_eq!(got.len(), 200);
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 200, "an entry was claimed twice");
}

#[test]
fn bad_submissions_exit_2_naming_the_field_and_queue_nothing() {
    let sb = Sandbox::new("invalid", "");
    let mut j = sb.job("bad", &["true"]);
    j["memory"] = json!("a lot");
    let (code, recs, _) = sb.submit(&j);
    assert_eq!(code, 2);
    let err = of_type(&recs, "error");
    assert_eq!(
        (err[0]["kind"].as_str(), err[0]["target"].as_str()),
        (Some("invalid_job"), Some("memory"))
    );
    let mut j = sb.job("bad", &["true"]);
    j["command"] = json!("rm -rf /");
    assert_eq!(of_type(&sb.submit(&j).1, "error")[0]["target"], "command");
    assert!(sb.entries("queue").is_empty());
    // JSON Lines: one bad line queues none of them.
    let lines = format!("{}\n{}\n", sb.job("a", &["true"]), json!({"id": "b"}));
    let mut child = sb
        .cmd()
        .arg("submit")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let (code, recs, _) = parse(child.wait_with_output().unwrap());
    assert_eq!(code, 2);
    assert_eq!(of_type(&recs, "error")[0]["target"], "(line 2).workspace");
    assert!(sb.entries("queue").is_empty());
}

#[test]
fn submit_ls_show_and_a_duplicate_through_the_cli() {
    let sb = Sandbox::new("cli", "");
    let j = sb.job("one", &["true"]);
    let (code, recs, err) = sb.submit(&j);
    assert_eq!(code, 0, "{err}");
    assert_eq!(of_type(&recs, "job")[0]["action"], "submit");
    let (code, recs, _) = sb.submit(&j);
    assert_eq!(code, 1);
    assert_eq!(of_type(&recs, "error")[0]["kind"], "duplicate_job");
    let (_, ls, _) = sb.run(&["ls"]);
    let jobs = of_type(&ls, "job");
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0]["state"].as_str(), jobs[0]["stage"].as_str()),
        (Some("queued"), Some("pending"))
    );
    let (code, show, _) = sb.run(&["show", &sb.id("one")]);
    assert_eq!(code, 0);
    assert_eq!(
        of_type(&show, "job")[0]["entry"]["job"]["command"],
        json!(["true"])
    );
    assert_eq!(sb.run(&["show", "nope"]).0, 1);
}

#[test]
fn apply_installs_the_units_and_check_is_then_clean() {
    let sb = Sandbox::new("units", "");
    assert_eq!(sb.run(&["check"]).0, 3, "missing units are drift");
    let (code, recs, err) = sb.run(&["apply"]);
    assert_eq!(code, 0, "{err}");
    let unit = std::fs::read_to_string(sb.root().join("etc/systemd/system/bs-jobs-worker.service"))
        .unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/bs-jobs work --forever"),
        "{unit}"
    );
    assert!(unit.contains("Environment=BS_BACKEND=test"));
    assert!(
        of_type(&recs, "command")
            .iter()
            .all(|c| c["skipped"] == true),
        "host commands ran under a sandbox root"
    );
    let (code, recs, _) = sb.run(&["check"]);
    assert_eq!(code, 0, "{recs:?}");
}

#[test]
fn jobs_of_one_action_finishing_together_all_succeed() {
    // Same workspace, same action: their logs and manifests are written
    // at the same moments by different worker threads.
    let sb = Sandbox::new("together", "");
    let lines: String = (0..40)
        .map(|i| {
            let mut j = sb.job(&format!("n{i}"), &["true"]);
            j["action"] = json!("same");
            format!("{j}\n")
        })
        .collect();
    let file = sb.root().join("jobs.jsonl");
    std::fs::write(&file, lines).unwrap();
    let (code, _, err) = sb.run(&["submit", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, recs, err) = sb.run(&["work", "--once", "--executor", "noop", "--max-workers", "4"]);
    assert_eq!(code, 0, "{err} {recs:?}");
    assert_eq!(
        sb.entries("done").len(),
        40,
        "failed: {:?}",
        sb.entries("failed")
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sb.high().join("metadata/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["workspace"], sb.ws.as_str());
    assert!(manifest["outputs"].as_object().unwrap().is_empty());
}
