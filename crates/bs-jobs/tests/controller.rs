//! The poller and worker against a fake job-runner controller that reads
//! every answer as the real one does (tests/fake_controller): tasks with
//! whole definitions, results read as `JobTaskResults.from_dict` reads
//! them, agent errors re-issued as `<job>-00N`, cancels with the full
//! definition, and a controller that errors, stalls and sends garbage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod fake_controller;

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;
use fake_controller::{definition, FakeController, Reply, FROM_DICT};
use serde_json::{json, Value};

fn sandbox_for(ctl: &FakeController, test: &str) -> Sandbox {
    let sb = Sandbox::new(test, &format!("controller = \"{}\"\nhttp_attempts = 2\n\n[http]\ntimeout_secs = 1\nconnect_timeout_secs = 1\n", ctl.url));
    let secrets = sb.root().join("etc/bs/secrets.env");
    std::fs::write(&secrets, "JOB_SERVER_TOKEN=tok-123\n").unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    sb
}

fn def(sb: &Sandbox, short: &str, args: &[&str], outputs: Value) -> Value {
    definition(&sb.id(short), &sb.ws, short, IMAGE, args, outputs)
}

fn no_failures(ctl: &FakeController) {
    let f = ctl.failures();
    assert!(
        f.is_empty(),
        "the real controller would have failed: {f:#?}"
    );
}

/// poll, work, poll until the controller has no active task left (or the
/// rounds run out).
fn drive(sb: &Sandbox, ctl: &FakeController, executor: &str, rounds: usize) {
    for _ in 0..rounds {
        sb.run(&["poll", "--once"]);
        let (code, _, err) = sb.run(&["work", "--once", "--executor", executor]);
        assert_eq!(code, 0, "{err}");
        sb.run(&["poll", "--once"]);
        let active = {
            let s = ctl.state.lock().unwrap();
            s.tasks.values().filter(|t| t.active).count()
        };
        if active == 0 {
            return;
        }
    }
}

#[test]
fn errors_stalls_and_garbage_lose_no_task_and_run_none_twice() {
    let ctl = FakeController::start();
    let sb = sandbox_for(&ctl, "controller");
    let one = ctl.add_job(def(&sb, "one", &["true"], json!({})));
    let two = ctl.add_job(def(&sb, "two", &[], json!({})));
    {
        let mut s = ctl.state.lock().unwrap();
        // Round 1: a 500 then a stall (both retried), and nothing queued.
        s.fetch_script = VecDeque::from([Reply::Error500, Reply::Stall]);
    }
    let (code, recs, _) = sb.run(&["poll", "--once"]);
    assert_eq!(code, 1, "{recs:?}");
    assert!(
        of_type(&recs, "error")[0]["message"]
            .as_str()
            .unwrap()
            .contains("gave up after 2"),
        "{recs:?}"
    );
    assert!(sb.entries("queue").is_empty());

    ctl.state.lock().unwrap().fetch_script = VecDeque::from([Reply::Garbage]);
    let (code, recs, _) = sb.run(&["poll", "--once"]);
    assert_eq!(code, 1);
    assert!(
        of_type(&recs, "error")[0]["message"]
            .as_str()
            .unwrap()
            .contains("not a task list"),
        "{recs:?}"
    );
    assert!(sb.entries("queue").is_empty());

    // Now it answers, but updates fail for a while: they wait in the outbox.
    ctl.state.lock().unwrap().update_script =
        VecDeque::from([Reply::Error500, Reply::Error500, Reply::Stall]);
    let (_, recs, _) = sb.run(&["poll", "--once"]);
    let queued: Vec<_> = of_type(&recs, "task")
        .iter()
        .filter(|t| t["action"] == "queued")
        .map(|t| t["target"].clone())
        .collect();
    assert_eq!(
        queued,
        vec![json!(format!("{one}-001")), json!(format!("{two}-001"))],
        "{recs:?}"
    );
    assert_eq!(sb.entries("queue").len(), 2);
    // The same tasks again: nothing new is queued.
    let (_, recs, _) = sb.run(&["poll", "--once"]);
    assert!(
        of_type(&recs, "task")
            .iter()
            .all(|t| t["action"] != "queued"),
        "{recs:?}"
    );
    drive(&sb, &ctl, "noop", 3);
    assert!(
        sb.entries("outbox").is_empty(),
        "the outbox was not emptied"
    );
    assert_eq!(sb.entries("done").len(), 2);
    no_failures(&ctl);
    for job in [&one, &two] {
        let j = ctl.job(job);
        assert_eq!(
            (j.state.as_str(), j.code.as_str()),
            ("succeeded", "succeeded")
        );
        let task = format!("{job}-001");
        assert_eq!(ctl.finals(&task).len(), 1, "{:?}", ctl.updates(&task));
        let stages: Vec<String> = ctl
            .updates(&task)
            .iter()
            .map(|u| u["stage"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(stages.first().map(String::as_str), Some("preparing"));
        assert_eq!(stages.last().map(String::as_str), Some("finalized"));
        assert_eq!(
            ctl.task_ids()
                .iter()
                .filter(|t| t.starts_with(job.as_str()))
                .count(),
            1
        );
    }
    let s = ctl.state.lock().unwrap();
    assert!(s.auth.iter().all(|a| a == "tok-123"), "{:?}", s.auth);
}

#[test]
fn every_task_is_answered_as_job_runners_agent_answers_it() {
    require_engine();
    let ctl = FakeController::start();
    let sb = sandbox_for(&ctl, "answers");
    let script = "mkdir -p output && printf 'a,b\\n1,2\\n' > output/table.csv \
                  && printf 'patient_id,x\\n1,2\\n' > output/rows.csv \
                  && printf 'x' > output/model.rds";
    let ok = ctl.add_job(def(
        &sb,
        "ok",
        &["sh", "-c", script],
        json!({"output/table.csv": "moderately_sensitive", "output/rows.csv": "moderately_sensitive",
               "output/model.rds": "moderately_sensitive"}),
    ));
    let exit3 = ctl.add_job(def(&sb, "exit3", &["sh", "-c", "exit 3"], json!({})));
    let unmatched = ctl.add_job(def(
        &sb,
        "unmatched",
        &[
            "sh",
            "-c",
            "mkdir -p output && echo x > output/secret-name.csv",
        ],
        json!({"output/expected-name.csv": "moderately_sensitive"}),
    ));
    let mut bad = def(
        &sb,
        "bad",
        &["true"],
        json!({"../../etc/passwd": "highly_sensitive"}),
    );
    bad["memory_limit"] = json!("lots");
    let bad = ctl.add_job(bad);
    let status = ctl.add_simple(
        "dbstatus",
        json!({"database_name": "default", "image": IMAGE, "image_sha": "sha256:00"}),
    );
    let check = ctl.add_simple(
        "dbdatacheck",
        json!({"hes_expected_activity_month": "2026-01", "image": IMAGE, "image_sha": "sha256:00"}),
    );
    let bad_check = ctl.add_simple(
        "dbdatacheck",
        json!({"image": IMAGE, "image_sha": "sha256:00"}),
    );

    drive(&sb, &ctl, "docker", 3);
    no_failures(&ctl);
    let j = ctl.job(&ok);
    assert_eq!(
        (j.state.as_str(), j.code.as_str()),
        ("succeeded", "succeeded"),
        "{j:?}"
    );
    assert!(j.message.contains("excluded"), "{j:?}");
    let j = ctl.job(&exit3);
    assert_eq!(
        (j.state.as_str(), j.code.as_str()),
        ("failed", "nonzero_exit")
    );
    let j = ctl.job(&unmatched);
    assert_eq!(
        (j.state.as_str(), j.code.as_str()),
        ("failed", "unmatched_patterns")
    );
    // A definition bs-jobs refuses fails once; it is not re-issued forever.
    let j = ctl.job(&bad);
    assert_eq!(j.state, "failed", "{j:?}");
    assert_eq!(
        ctl.task_ids()
            .iter()
            .filter(|t| t.starts_with(bad.as_str()))
            .count(),
        1
    );
    assert_eq!(ctl.finals(&format!("{bad}-001")).len(), 1);
    // Simple tasks: one answer each, from the backend's configured check.
    let answer = |t: &str| {
        let f = ctl.finals(t);
        assert_eq!(f.len(), 1, "{t}: {f:?}");
        f[0]["results"].clone()
    };
    assert_eq!(
        answer(&status),
        json!({"results": {"status": ""}, "error": null})
    );
    assert_eq!(
        answer(&check),
        json!({"results": {"status": "OK"}, "error": null})
    );
    let bad = answer(&bad_check);
    assert_eq!(
        (bad["results"].clone(), bad["error"]["type"].clone()),
        (Value::Null, json!("ValueError"))
    );

    // Results carry the image and every from_dict key; names stay home.
    let r = &ctl.finals(&format!("{ok}-001"))[0]["results"];
    for k in FROM_DICT {
        assert!(r.get(*k).is_some(), "{k}: {r}");
    }
    assert!(
        r["docker_image_id"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{r}"
    );
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["has_level4_excluded_files"], true);
    let r = ctl.finals(&format!("{unmatched}-001"))[0]["results"].to_string();
    assert!(
        !r.contains("secret-name") && !r.contains("expected-name"),
        "{r}"
    );

    // Outputs as job-runner files them: the task's level-4 rules (.rds is
    // not among its types; a patient_id column never goes to medium).
    let medium = sb.medium();
    assert!(medium.join("output/table.csv").is_file());
    assert!(!medium.join("output/rows.csv").exists());
    assert!(medium.join("output/rows.csv.txt").is_file());
    assert!(!medium.join("output/model.rds").exists());
    assert!(medium.join("output/model.rds.txt").is_file());
    assert!(sb.high().join("output/rows.csv").is_file());
    assert!(medium.join("metadata/ok.log").is_file());
    // exit 3's matched outputs (none) and unmatched's file: persisted as
    // job-runner persists them (unmatched runs keep their matches).
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(medium.join("metadata/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["workspace"], sb.ws.as_str());
    assert_eq!(manifest["repo"], "https://github.com/opensafely/test-study");
    let table = &manifest["outputs"]["output/table.csv"];
    let bytes = std::fs::read(sb.high().join("output/table.csv")).unwrap();
    assert_eq!(table["content_hash"], sha256_hex(&bytes));
    assert!(
        table["timestamp"].is_f64() || table["timestamp"].is_u64(),
        "{table}"
    );
    for (k, v) in [
        ("level", json!("moderately_sensitive")),
        ("job_id", json!(ok)),
        ("job_request", json!("rap0001")),
        ("action", json!("ok")),
        ("repo", json!("https://github.com/opensafely/test-study")),
        ("commit", json!("0123456789abcdef0123456789abcdef01234567")),
        ("user", json!("alice")),
        ("excluded", json!(false)),
        ("message", Value::Null),
        ("row_count", json!(1)),
        ("col_count", json!(2)),
    ] {
        assert_eq!(table[k], v, "{k}: {table}");
    }
    assert_eq!(manifest["outputs"]["output/rows.csv"]["excluded"], true);
}

#[test]
fn an_agent_error_is_reissued_as_a_new_task_and_that_task_runs_the_job() {
    require_engine();
    let ctl = FakeController::start();
    let sb = sandbox_for(&ctl, "reissue");
    // An image that is not on the server yet: the agent fails, not the job.
    let image = format!("bs-jobs-reissue-{}:latest", std::process::id());
    let mut d = def(&sb, "late", &["true"], json!({}));
    d["image"] = json!(image);
    let job = ctl.add_job(d);
    drive(&sb, &ctl, "docker", 1);
    no_failures(&ctl);
    let first = ctl.finals(&format!("{job}-001"));
    assert_eq!(first.len(), 1);
    assert!(first[0]["results"]["error"].is_object(), "{first:?}");
    assert!(
        ctl.task_ids().contains(&format!("{job}-002")),
        "{:?}",
        ctl.task_ids()
    );
    // The image arrives; the re-issued task runs the job to its end.
    let tagged = Command::new("docker")
        .args(["tag", IMAGE, &image])
        .status()
        .unwrap();
    assert!(tagged.success());
    drive(&sb, &ctl, "docker", 3);
    let _ = Command::new("docker").args(["rmi", &image]).output();
    no_failures(&ctl);
    let j = ctl.job(&job);
    assert_eq!(
        (j.state.as_str(), j.code.as_str()),
        ("succeeded", "succeeded"),
        "{j:?}"
    );
    assert_eq!(ctl.finals(&format!("{job}-002")).len(), 1);
}

#[test]
fn canceljob_is_answered_for_unknown_queued_and_finished_jobs() {
    let ctl = FakeController::start();
    let sb = sandbox_for(&ctl, "canceltask");
    // Unknown: the controller cancels a job this backend never saw.
    let unseen = ctl.cancel_unseen(def(&sb, "unseen", &["true"], json!({})));
    // Queued: cancelled before it runs.
    let victim = ctl.add_job(def(&sb, "victim", &["true"], json!({})));
    // Finished: cancelled after it ended.
    let done = ctl.add_job(def(&sb, "done", &["true"], json!({})));
    assert_eq!(sb.run(&["poll", "--once"]).0, 0);
    let cancel_victim = ctl.cancel(&victim);
    // Only `done` is left to run... run it, then cancel it.
    let (code, recs, _) = sb.run(&["poll", "--once"]);
    assert_eq!(code, 0, "{recs:?}");
    let (state, e) = sb.finished("victim");
    assert_eq!(
        (state.as_str(), e["outcome"]["code"].as_str()),
        ("failed", Some("cancelled_by_user"))
    );
    assert_eq!(sb.run(&["work", "--once", "--executor", "noop"]).0, 0);
    let cancel_done = ctl.cancel(&done);
    for _ in 0..2 {
        assert_eq!(sb.run(&["poll", "--once"]).0, 0);
    }
    no_failures(&ctl);
    for task in [&unseen, &cancel_victim, &cancel_done] {
        let finals = ctl.finals(task);
        assert_eq!(finals.len(), 1, "{task}: {:?}", ctl.updates(task));
        assert_eq!(finals[0]["stage"], "finalized");
        assert_eq!(finals[0]["results"]["error"], false, "{finals:?}");
    }
    // Nothing is left for the controller to offer.
    let s = ctl.state.lock().unwrap();
    assert!(s.tasks.values().all(|t| !t.active), "{:?}", s.tasks);
}

#[test]
fn a_final_update_lost_to_a_worker_killed_after_done_is_sent_again() {
    let ctl = FakeController::start();
    let sb = sandbox_for(&ctl, "lostfinal");
    let job = ctl.add_job(def(&sb, "lost", &["true"], json!({})));
    assert_eq!(sb.run(&["poll", "--once"]).0, 0);
    // The worker dies right after the job's done/ entry, before its update.
    let out = sb
        .cmd()
        .args(["work", "--once", "--executor", "noop"])
        .env("BS_JOBS_CRASH_AT", "after_finish")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        None,
        "the crash point did not kill the worker"
    );
    assert_eq!(sb.entries("done").len(), 1);
    for _ in 0..2 {
        assert_eq!(sb.run(&["poll", "--once"]).0, 0);
    }
    no_failures(&ctl);
    let task = format!("{job}-001");
    assert_eq!(ctl.finals(&task).len(), 1, "{:?}", ctl.updates(&task));
    let j = ctl.job(&job);
    assert_eq!(j.state, "succeeded", "{j:?}");
}

#[test]
fn a_long_bad_input_is_cut_in_the_error_record() {
    let sb = Sandbox::new("longinput", "");
    let mut job = sb.job("long", &["true"]);
    let key = "k".repeat(1 << 20);
    job[key.as_str()] = json!(1);
    let (code, recs, _) = sb.submit(&job);
    assert_eq!(code, 2);
    let line = serde_json::to_string(&of_type(&recs, "error")[0]).unwrap();
    assert!(line.len() < 2000, "an error record of {} bytes", line.len());
    assert!(line.contains("more bytes"), "{line}");
}

#[test]
fn a_job_of_an_archived_workspace_is_refused_once() {
    let ctl = FakeController::start();
    let sb = sandbox_for(&ctl, "archived");
    let archives = sb.root().join("srv/high_privacy/archives");
    std::fs::create_dir_all(&archives).unwrap();
    std::fs::write(archives.join(format!("{}.tar.xz", sb.ws)), b"x").unwrap();
    let job = ctl.add_job(def(&sb, "late", &["true"], json!({})));
    drive(&sb, &ctl, "noop", 2);
    no_failures(&ctl);
    let j = ctl.job(&job);
    assert_eq!(
        (j.state.as_str(), j.code.as_str()),
        ("failed", "nonzero_exit"),
        "{j:?}"
    );
    assert!(j.message.contains("archived"), "{j:?}");
    assert_eq!(ctl.task_ids().len(), 1, "re-issued: {:?}", ctl.task_ids());
    assert!(
        !sb.high().exists(),
        "a fresh workspace was started over the archived one"
    );
}

#[test]
fn a_database_job_gets_its_database_url_on_the_database_network_and_no_log_holds_it() {
    require_engine();
    let ctl = FakeController::start();
    let net = format!("bs-jobs-test-db-{}", std::process::id());
    let made = Command::new("docker")
        .args(["network", "create", "--internal", &net])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let sb = Sandbox::new(
        "database",
        &format!("controller = \"{}\"\nhttp_attempts = 2\ndatabase_network = \"{net}\"\n\n[http]\ntimeout_secs = 1\nconnect_timeout_secs = 1\n", ctl.url),
    );
    let secrets = sb.root().join("etc/bs/secrets.env");
    let url = "mssql://user:pw-s3cr3t-42@127.0.0.1:1433/db";
    std::fs::write(
        &secrets,
        format!(
            "JOB_SERVER_TOKEN=tok-123\nDEFAULT_DATABASE_URL={url}\nTEMP_DATABASE_NAME=tempdb-xyz\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The argv holds no secret: the URL is matched by its shape.
    let check = "case \"$DATABASE_URL\" in mssql://user:*@127.0.0.1:1433/db) ;; *) exit 9;; esac \
                 && test \"$TEMP_DATABASE_NAME\" = tempdb-xyz \
                 && echo \"url $DATABASE_URL\" && ls /sys/class/net";
    let mut d = def(&sb, "db", &["sh", "-c", check], json!({}));
    d["allow_database_access"] = json!(true);
    d["database_name"] = json!("default");
    let db = ctl.add_job(d);
    let mut d = def(&sb, "nodb", &["true"], json!({}));
    d["allow_database_access"] = json!(true);
    d["database_name"] = json!("include_t1oo");
    let nodb = ctl.add_job(d);
    drive(&sb, &ctl, "docker", 3);
    let _ = Command::new("docker")
        .args(["network", "rm", &net])
        .output();
    no_failures(&ctl);
    let j = ctl.job(&db);
    assert_eq!(
        (j.state.as_str(), j.code.as_str()),
        ("succeeded", "succeeded"),
        "{j:?}"
    );
    // An unknown database is an error of that job alone, answered once.
    let j = ctl.job(&nodb);
    assert_eq!(j.state, "failed", "{j:?}");
    assert!(j.message.contains("include_t1oo"), "{j:?}");
    assert_eq!(
        ctl.task_ids()
            .iter()
            .filter(|t| t.starts_with(nodb.as_str()))
            .count(),
        1
    );
    // The secret is in no log, no entry, no record.
    let log = std::fs::read_to_string(sb.high().join("metadata/db.log")).unwrap();
    assert!(log.contains("url xxxx-REDACTED-xxxx"), "{log}");
    assert!(log.contains("DATABASE_URL=xxxx-REDACTED-xxxx"), "{log}");
    // On a network of its own: an interface besides lo.
    assert!(log.contains("eth0"), "{log}");
    let out = Command::new("grep")
        .args(["-rl", "pw-s3cr3t-42"])
        .arg(sb.root().join("srv"))
        .arg(sb.root().join("var/lib/bs"))
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "the secret leaked into {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let s = ctl.state.lock().unwrap();
    assert!(!serde_json::to_string(&s.received)
        .unwrap()
        .contains("pw-s3cr3t"));
}
