//! The worker against the real Docker engine and the bs-busybox job image.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn work_once(sb: &Sandbox) -> Vec<Value> {
    let (code, recs, err) = sb.run(&["work", "--once"]);
    assert!(code == 0 || code == 1, "work exit {code}: {err}");
    recs
}

#[test]
fn happy_path_files_outputs_in_both_trees_with_a_right_manifest() {
    require_engine();
    let sb = Sandbox::new("happy", "");
    let script = "mkdir -p output && printf 'age,count\\n30,5\\n40,7\\n' > output/summary.csv \
        && printf 'patient_id,age\\n1,30\\n' > output/rows.csv \
        && printf 'secret\\n' > output/cohort.csv && echo FINISHED && printf 'x' > stray.bin";
    let mut job = sb.job("generate", &["sh", "-c", script]);
    job["outputs"] = json!({"highly_sensitive": ["output/cohort.csv"], "moderately_sensitive": ["output/summary.csv", "output/rows.csv"]});
    job["env"] = json!({"API_KEY": "sup3rs3cret"});
    let (code, _, err) = sb.submit(&job);
    assert_eq!(code, 0, "{err}");
    let recs = work_once(&sb);
    let (state, entry) = sb.finished("generate");
    assert_eq!(state, "done", "{entry:#}\n{recs:?}");
    assert_eq!(of_type(&recs, "job")[0]["status"], "succeeded");

    for f in ["output/summary.csv", "output/rows.csv", "output/cohort.csv"] {
        let p = sb.high().join(f);
        let meta = std::fs::metadata(&p).unwrap_or_else(|_| panic!("{} missing", p.display()));
        assert_eq!(
            (meta.uid(), meta.gid(), meta.permissions().mode() & 0o7777),
            (10000, 10000, 0o640),
            "{f}"
        );
    }
    assert!(
        !sb.high().join("stray.bin").exists(),
        "an unmatched file was copied"
    );
    let dmeta = std::fs::metadata(sb.high().join("output")).unwrap();
    assert_eq!(
        (dmeta.uid(), dmeta.permissions().mode() & 0o7777),
        (10000, 0o750)
    );
    // Medium: the clean CSV, a note instead of the one with patient_id, no high file.
    assert_eq!(
        std::fs::read_to_string(sb.medium().join("output/summary.csv")).unwrap(),
        "age,count\n30,5\n40,7\n"
    );
    assert!(!sb.medium().join("output/rows.csv").exists());
    assert!(
        std::fs::read_to_string(sb.medium().join("output/rows.csv.txt"))
            .unwrap()
            .contains("patient_id")
    );
    assert!(!sb.medium().join("output/cohort.csv").exists());

    let manifest: Value =
        serde_json::from_slice(&std::fs::read(sb.high().join("metadata/manifest.json")).unwrap())
            .unwrap();
    let summary = &manifest["outputs"]["output/summary.csv"];
    let bytes = std::fs::read(sb.high().join("output/summary.csv")).unwrap();
    assert_eq!(summary["content_hash"], sha256_hex(&bytes));
    // job-runner's keys only: no `sha256` beside `content_hash`.
    assert!(summary.get("sha256").is_none(), "{summary}");
    // The file's mtime as a number: Airlock calls int() on it.
    let mtime = std::fs::metadata(sb.high().join("output/summary.csv"))
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (summary["timestamp"].as_f64().unwrap() - mtime).abs() < 0.001,
        "{summary}"
    );
    assert_eq!(summary["size"], bytes.len());
    assert_eq!(summary["level"], "moderately_sensitive");
    assert_eq!(summary["job_id"], sb.id("generate"));
    assert_eq!(summary["action"], "generate");
    assert_eq!(summary["commit"], "abc123");
    assert_eq!(
        (summary["row_count"].as_u64(), summary["col_count"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(summary["excluded"], false);
    assert_eq!(manifest["outputs"]["output/rows.csv"]["excluded"], true);
    assert_eq!(
        manifest["outputs"]["output/cohort.csv"]["level"],
        "highly_sensitive"
    );
    let medium_manifest: Value =
        serde_json::from_slice(&std::fs::read(sb.medium().join("metadata/manifest.json")).unwrap())
            .unwrap();
    // job-runner's medium manifest lists every output, with its level.
    assert_eq!(
        medium_manifest["outputs"]["output/cohort.csv"]["level"],
        "highly_sensitive"
    );
    assert_eq!(
        medium_manifest["outputs"]["output/summary.csv"]["content_hash"],
        summary["content_hash"]
    );

    for tree in [sb.high(), sb.medium()] {
        let log = std::fs::read_to_string(tree.join("metadata/generate.log")).unwrap();
        assert!(log.contains("FINISHED"), "{log}");
        assert!(
            !log.contains("sup3rs3cret"),
            "an env value leaked into the log"
        );
        assert!(log.contains("API_KEY=xxxx-REDACTED-xxxx"));
    }
    // job-runner's log directory: <high>/logs/YYYY-MM/os-job-<id>/.
    let logs = sb.root().join("srv/high_privacy/logs");
    let month = std::fs::read_dir(&logs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let dir = month.join(format!("os-job-{}", sb.id("generate")));
    let text = std::fs::read_to_string(dir.join("logs.txt")).unwrap();
    assert!(
        text.contains("FINISHED") && !text.contains("sup3rs3cret"),
        "{text}"
    );
    let meta_text = std::fs::read_to_string(dir.join("metadata.json")).unwrap();
    assert!(!meta_text.contains("sup3rs3cret"), "{meta_text}");
    let meta: Value = serde_json::from_str(&meta_text).unwrap();
    assert_eq!(meta["job_definition_id"], sb.id("generate"));
    assert_eq!(
        meta["container_metadata"]["Config"]["Labels"]["job-runner"],
        ""
    );
    assert!(meta["container_metadata"]["Image"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert!(sb.containers().is_empty(), "container left behind");
    assert!(
        !sb.root()
            .join("srv/high_privacy/volumes")
            .join(sb.id("generate"))
            .exists(),
        "volume left behind"
    );
}

#[test]
fn dependencies_outputs_are_the_next_jobs_inputs() {
    require_engine();
    let sb = Sandbox::new("deps", "");
    let mut first = sb.job(
        "first",
        &["sh", "-c", "mkdir -p output && echo 42 > output/n.txt"],
    );
    first["outputs"] = json!({"highly_sensitive": ["output/n.txt"]});
    let mut second = sb.job(
        "second",
        &[
            "sh",
            "-c",
            "mkdir -p output && cat output/n.txt > output/copy.txt",
        ],
    );
    second["outputs"] = json!({"highly_sensitive": ["output/copy.txt"]});
    second["dependencies"] = json!(["first"]);
    assert_eq!(sb.submit(&first).0, 0);
    assert_eq!(sb.submit(&second).0, 0);
    work_once(&sb);
    assert_eq!(
        sb.finished("second").0,
        "done",
        "{:#}",
        sb.finished("second").1
    );
    assert_eq!(
        std::fs::read_to_string(sb.high().join("output/copy.txt")).unwrap(),
        "42\n"
    );
}

#[test]
fn nonzero_exit_fails_the_job_with_the_code() {
    require_engine();
    let sb = Sandbox::new("nonzero", "");
    sb.submit(&sb.job("boom", &["sh", "-c", "echo about to fail; exit 3"]));
    work_once(&sb);
    let (state, e) = sb.finished("boom");
    assert_eq!(state, "failed");
    assert_eq!(e["outcome"]["code"], "nonzero_exit");
    assert_eq!(e["outcome"]["exit_code"], 3);
    assert!(std::fs::read_to_string(sb.high().join("metadata/boom.log"))
        .unwrap()
        .contains("about to fail"));
    assert!(sb.containers().is_empty());
}

#[test]
fn a_job_over_its_memory_limit_ran_out_of_memory() {
    require_engine();
    let sb = Sandbox::new("oom", "");
    let mut job = sb.job(
        "hog",
        &[
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}",
        ],
    );
    job["memory"] = json!("16m");
    sb.submit(&job);
    work_once(&sb);
    let (state, e) = sb.finished("hog");
    assert_eq!(state, "failed", "{e:#}");
    assert_eq!(e["outcome"]["exit_code"], 137, "{e:#}");
    assert!(
        e["outcome"]["message"]
            .as_str()
            .unwrap()
            .contains("ran out of memory"),
        "{e:#}"
    );
}

#[test]
fn a_job_over_the_time_limit_is_killed_and_failed() {
    require_engine();
    let sb = Sandbox::new("timeout", "time_limit_secs = 2");
    sb.submit(&sb.job("slow", &["sleep", "60"]));
    let start = Instant::now();
    work_once(&sb);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    let (state, e) = sb.finished("slow");
    assert_eq!(state, "failed");
    assert!(
        e["outcome"]["message"]
            .as_str()
            .unwrap()
            .contains("time limit"),
        "{e:#}"
    );
    assert!(sb.containers().is_empty());
}

#[test]
fn the_container_sees_only_lo_runs_as_10000_without_capabilities() {
    require_engine();
    let sb = Sandbox::new("isolation", "");
    let script = "mkdir -p output && ls /sys/class/net > output/net.txt && id -u > output/uid.txt \
        && id -g >> output/uid.txt && grep -E '^(CapEff|NoNewPrivs)' /proc/self/status > output/caps.txt \
        && echo $HOME > output/home.txt && (wget -T 2 -q -O- http://127.0.0.1:1/ 2>&1 || true) > output/net-try.txt";
    let mut job = sb.job("probe", &["sh", "-c", script]);
    job["outputs"] = json!({"highly_sensitive": ["output/*.txt"]});
    sb.submit(&job);
    work_once(&sb);
    assert_eq!(
        sb.finished("probe").0,
        "done",
        "{:#}",
        sb.finished("probe").1
    );
    let read = |f: &str| std::fs::read_to_string(sb.high().join("output").join(f)).unwrap();
    assert_eq!(
        read("net.txt").split_whitespace().collect::<Vec<_>>(),
        vec!["lo"]
    );
    assert_eq!(read("uid.txt"), "10000\n10000\n");
    let caps = read("caps.txt");
    assert!(caps.contains("CapEff:\t0000000000000000"), "{caps}");
    assert!(caps.contains("NoNewPrivs:\t1"), "{caps}");
    assert_eq!(read("home.txt"), "/tmp\n");
}

#[test]
fn cancel_kills_a_running_job() {
    require_engine();
    let sb = Sandbox::new("cancel", "");
    sb.submit(&sb.job("long", &["sleep", "120"]));
    let worker = sb
        .cmd()
        .args(["work", "--once"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        sb.wait_for_container(Duration::from_secs(30)),
        "the job never started"
    );
    let start = Instant::now();
    let (code, recs, err) = sb.run(&["cancel", &sb.id("long")]);
    assert_eq!(code, 0, "{err} {recs:?}");
    let out = worker.wait_with_output().unwrap();
    assert!(start.elapsed() < Duration::from_secs(30));
    let (state, e) = sb.finished("long");
    assert_eq!(state, "failed");
    assert_eq!(
        e["outcome"]["code"],
        "cancelled_by_user",
        "{e:#} {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(sb.containers().is_empty());
}

#[test]
fn cancel_of_a_queued_job_fails_it_before_it_runs() {
    require_engine();
    let sb = Sandbox::new("cancelq", "");
    sb.submit(&sb.job("later", &["true"]));
    assert_eq!(sb.run(&["cancel", &sb.id("later")]).0, 0);
    let (state, e) = sb.finished("later");
    assert_eq!(
        (state.as_str(), e["outcome"]["code"].as_str()),
        ("failed", Some("cancelled_by_user"))
    );
    assert_eq!(
        sb.run(&["cancel", &sb.id("later")]).0,
        1,
        "cancelling a finished job is an error"
    );
}

#[test]
fn a_worker_killed_mid_job_is_recovered_and_the_job_ends_exactly_once() {
    require_engine();
    let sb = Sandbox::new("sigkill", "");
    // The output names the container it ran in (its hostname) and counts
    // the starts in the volume: one start, in the original container.
    let mut job = sb.job(
        "survivor",
        &[
            "sh",
            "-c",
            "echo start >> starts; sleep 4; mkdir -p output; hostname > output/a.txt; cat starts >> output/a.txt",
        ],
    );
    job["outputs"] = json!({"highly_sensitive": ["output/a.txt"]});
    sb.submit(&job);
    let mut worker = sb
        .cmd()
        .args(["work", "--once"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        sb.wait_for_container(Duration::from_secs(30)),
        "the job never started"
    );
    let original = sb.containers();
    assert_eq!(original.len(), 1);
    // SIGKILL: no clean-up runs in the worker.
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert_eq!(
        sb.entries("running").len(),
        1,
        "the entry stays in running/"
    );
    assert_eq!(sb.containers(), original, "the job's container still runs");
    let (code, recs, err) = sb.run(&["work", "--once"]);
    assert_eq!(code, 0, "{err} {recs:?}");
    let rec = of_type(&recs, "recovered");
    assert_eq!(rec.len(), 1, "{recs:?}");
    assert_eq!(rec[0]["container_removed"], false);
    assert_eq!(rec[0]["to"], "queued");
    let (state, e) = sb.finished("survivor");
    assert_eq!(state, "done", "{e:#}");
    assert_eq!(e["attempts"], 1, "the job was started again");
    let out = std::fs::read_to_string(sb.high().join("output/a.txt")).unwrap();
    assert_eq!(
        out,
        format!("{}\nstart\n", original[0]),
        "not one run in the original container"
    );
    let all: Vec<String> = ["queue", "running", "done", "failed"]
        .iter()
        .flat_map(|s| sb.entries(s))
        .collect();
    assert_eq!(all.len(), 1, "exactly one entry for the job: {all:?}");
    assert!(sb.containers().is_empty(), "container left behind");
}

/// Every `.bs-tmp` file below a directory.
fn temps_below(dir: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new("find")
        .arg(dir)
        .args(["-name", "*.bs-tmp"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn temps_a_killed_worker_left_in_both_trees_are_swept() {
    require_engine();
    let sb = Sandbox::new("temps", "");
    let mut job = sb.job(
        "tmp",
        &[
            "sh",
            "-c",
            "mkdir -p output; printf 'a,b\\n1,2\\n' > output/t.csv",
        ],
    );
    job["outputs"] = json!({"moderately_sensitive": ["output/t.csv"]});
    sb.submit(&job);
    // Killed with its temps written and not renamed: first in the high
    // tree; the next worker sweeps that and is killed in the medium tree.
    let temps = || -> Vec<String> {
        [sb.high(), sb.medium()]
            .iter()
            .flat_map(|t| temps_below(t))
            .collect()
    };
    for (nth, tree) in [
        ("before_rename:1", "/high_privacy/"),
        ("before_rename:2", "/medium_privacy/"),
    ] {
        let out = sb
            .cmd()
            .args(["work", "--once"])
            .env("BS_JOBS_CRASH_AT", nth)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            None,
            "{nth}: the crash point did not kill the worker"
        );
        let left = temps();
        assert!(
            left.len() == 1 && left[0].contains(tree),
            "after {nth}: want one temp in {tree}: {left:?}"
        );
    }
    let (code, recs, err) = sb.run(&["work", "--once"]);
    assert_eq!(code, 0, "{err} {recs:?}");
    let (state, e) = sb.finished("tmp");
    assert_eq!(state, "done", "{e:#}");
    // Killed while finalizing, twice: the run was finalized from its exited
    // container each time, never started again.
    assert_eq!(e["attempts"], 1, "{e:#}");
    let left = temps();
    assert!(left.is_empty(), "temps left behind: {left:?}");
    assert!(sb.medium().join("output/t.csv").is_file());
}

#[test]
fn job_containers_carry_job_runners_labels() {
    require_engine();
    let sb = Sandbox::new("labels", "");
    sb.submit(&sb.job("labelled", &["sleep", "3"]));
    let mut worker = sb
        .cmd()
        .args(["work", "--once"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(sb.wait_for_container(Duration::from_secs(30)));
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            "label=job-runner",
            "--filter",
            &format!("label=workspace={}", sb.ws),
            "--filter",
            "label=action=labelled",
        ])
        .output()
        .unwrap();
    let found = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(worker.wait().unwrap().success());
    assert_eq!(
        found.len(),
        12,
        "no container with job-runner's labels: {found:?}"
    );
}

#[test]
fn a_malformed_entry_goes_to_failed_and_the_next_job_still_runs() {
    require_engine();
    let sb = Sandbox::new("malformed", "");
    sb.submit(&sb.job("fine", &["true"]));
    // A temp file a killed submit left: swept at worker start, never run.
    std::fs::write(
        sb.jobs_dir("queue")
            .join(".00000000000000000001-x.json.99.bs-tmp"),
        b"{",
    )
    .unwrap();
    // Sorts before the real entry, so the worker meets it first.
    std::fs::write(
        sb.jobs_dir("queue")
            .join("00000000000000000000-garbage.json"),
        b"{not json",
    )
    .unwrap();
    let recs = work_once(&sb);
    assert_eq!(of_type(&recs, "malformed").len(), 1, "{recs:?}");
    let failed = sb.entries("failed");
    assert_eq!(failed, vec!["00000000000000000000-garbage.json"]);
    let wrapped: Value =
        serde_json::from_slice(&std::fs::read(sb.jobs_dir("failed").join(&failed[0])).unwrap())
            .unwrap();
    assert_eq!(wrapped["malformed"], true);
    assert!(
        wrapped["error"]
            .as_str()
            .unwrap()
            .contains("key must be a string"),
        "{wrapped:#}"
    );
    assert_eq!(sb.finished("fine").0, "done");
    assert!(!sb
        .jobs_dir("queue")
        .join(".00000000000000000001-x.json.99.bs-tmp")
        .exists());
    let (_, ls, _) = sb.run(&["ls", "--state", "failed"]);
    assert_eq!(of_type(&ls, "job")[0]["malformed"], true);
}

#[test]
fn an_unmatched_pattern_fails_the_job() {
    require_engine();
    let sb = Sandbox::new("unmatched", "");
    let mut job = sb.job("lazy", &["true"]);
    job["outputs"] = json!({"moderately_sensitive": ["output/*.csv"]});
    sb.submit(&job);
    work_once(&sb);
    let (state, e) = sb.finished("lazy");
    assert_eq!(state, "failed");
    assert_eq!(e["outcome"]["code"], "unmatched_patterns");
    assert!(e["outcome"]["message"]
        .as_str()
        .unwrap()
        .contains("output/*.csv"));
    // Retry puts it back in the queue in its old place.
    assert_eq!(sb.run(&["retry", &sb.id("lazy")]).0, 0);
    assert_eq!(sb.entries("queue").len(), 1);
}
