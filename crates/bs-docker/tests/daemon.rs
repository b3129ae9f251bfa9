//! daemon.json under a sandbox root, and the engine restart guard.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bs_engine::{labels, ContainerSpec};
use common::*;

#[test]
fn the_merge_keeps_unknown_keys_and_a_second_run_changes_nothing() {
    let sb = Sandbox::new(false);
    sb.backend("[docker]\nrequire_engine = false\n");
    std::fs::create_dir_all(sb.path("/etc/docker")).unwrap();
    std::fs::write(
        sb.path("/etc/docker/daemon.json"),
        r#"{"data-root": "/var/lib/docker", "storage-driver": "fuse-overlayfs", "mtu": 1400, "log-driver": "local"}"#,
    )
    .unwrap();
    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 0, "{recs:#?}");
    let r = find(&recs, "daemon_json", "/etc/docker/daemon.json");
    assert_eq!(r["changed"], true);
    let doc: serde_json::Value =
        serde_json::from_str(&read(&sb.path("/etc/docker/daemon.json"))).unwrap();
    assert_eq!(doc["data-root"], "/var/lib/docker");
    assert_eq!(doc["storage-driver"], "fuse-overlayfs");
    assert_eq!(doc["mtu"], 1400);
    assert_eq!(doc["log-driver"], "json-file");
    assert_eq!(doc["log-opts"]["max-file"], "3");
    assert_eq!(doc["icc"], false);
    // Validation was tried and, on this 20.10 engine, said unavailable.
    assert!(!of_type(&recs, "validation").is_empty());
    // The restart is owed but not allowed.
    assert_eq!(of_type(&recs, "engine_restart")[0]["needed"], true);

    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 0);
    assert_eq!(
        find(&recs, "daemon_json", "/etc/docker/daemon.json")["changed"],
        false
    );

    // The engine still runs the old daemon.json: check calls that drift
    // until the owed restart happened (the marker is gone).
    let (code, recs) = sb.run(&["check"]);
    assert_eq!(code, 3, "{recs:#?}");
    assert_eq!(of_type(&recs, "engine_restart")[0]["changed"], true);

    // Restarted by hand: dockerd rewrote its pid file after the change (a
    // pid file of this live test process, made newer than the marker).
    let marker = sb.path("/var/lib/bs/docker/restart-pending");
    sb.engine_restarted_by_hand();
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&marker)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    let (code, recs) = sb.run(&["check"]);
    assert_eq!(code, 0, "{recs:#?}");
    assert!(of_type(&recs, "engine_restart").is_empty());
    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 0, "{recs:#?}");
    assert_eq!(of_type(&recs, "engine_restart")[0]["done"], true);
    assert!(!marker.exists(), "the owed restart is settled");
}

#[test]
fn a_log_opts_value_that_is_not_a_string_is_refused_and_nothing_is_written() {
    let sb = Sandbox::new(false);
    sb.backend("[docker]\nrequire_engine = false\n");
    sb.local("[docker.daemon.log-opts]\nmax-file = 3\n");
    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 2, "{recs:#?}");
    let err = errors(&recs)[0];
    assert_eq!(err["kind"], "config");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("log-opts.max-file"),
        "{err}"
    );
    assert!(
        err["target"].as_str().unwrap().ends_with("local.toml"),
        "{err}"
    );
    assert!(!sb.path("/etc/docker/daemon.json").exists());

    // A bad value already in the file (not ours) is not written over blindly.
    sb.local("");
    std::fs::create_dir_all(sb.path("/etc/docker")).unwrap();
    std::fs::write(
        sb.path("/etc/docker/daemon.json"),
        r#"{"live-restore": "yes"}"#,
    )
    .unwrap();
    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 1);
    assert_eq!(errors(&recs)[0]["kind"], "daemon_json_invalid");
    assert_eq!(
        read(&sb.path("/etc/docker/daemon.json")),
        r#"{"live-restore": "yes"}"#
    );
}

#[test]
fn the_engine_restart_is_refused_while_a_job_container_runs_unless_forced() {
    let e = engine();
    let image = ensure_test_image(&e);
    let sb = Sandbox::new(true);
    sb.backend("[docker]\nallow_restart = true\n");
    let name = unique("job");
    let mut clean = Cleanup::new();
    clean.containers.push(name.clone());
    let mut spec = ContainerSpec {
        name: name.clone(),
        image,
        command: vec!["sleep".into(), "60".into()],
        labels: test_labels(),
        ..Default::default()
    };
    spec.labels.insert(labels::JOB_ID.into(), name.clone());
    let id = e.create_container(&spec).unwrap();
    e.start(&id).unwrap();

    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 1, "{recs:#?}");
    let err = errors(&recs)[0];
    assert_eq!(err["kind"], "restart_refused");
    assert!(err["message"].as_str().unwrap().contains(&name), "{err}");
    // The file was written; the restart stays owed for the next run.
    assert!(sb.path("/etc/docker/daemon.json").exists());
    assert!(sb.path("/var/lib/bs/docker/restart-pending").exists());
    let (_, recs) = sb.run(&["plan"]);
    assert_eq!(
        of_type(&recs, "engine")[1]["action"],
        "restart_engine",
        "{recs:#?}"
    );

    // Forced: the restart command runs, here skipped (sandbox root).
    let (code, recs) = sb.run(&["apply", "--force"]);
    assert_eq!(code, 0, "{recs:#?}");
    let cmd = of_type(&recs, "command")[0];
    assert_eq!(cmd["skipped"], true);
    assert_eq!(cmd["argv"][0], "systemctl");
    assert!(
        e.inspect(&id)
            .unwrap()
            .unwrap()
            .state
            .unwrap()
            .running
            .unwrap(),
        "the job still runs"
    );
}

#[test]
fn the_service_account_missing_from_the_docker_group_is_reported_not_fixed() {
    let sb = Sandbox::new(false);
    sb.backend("[docker]\nrequire_engine = false\n");
    std::fs::write(sb.path("/etc/group"), "root:x:0:\ndocker:x:990:\n").unwrap();
    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 1);
    let err = errors(&recs)[0];
    assert_eq!(err["kind"], "docker_group_member_missing");
    assert!(err["message"].as_str().unwrap().contains("bs-users"));
    assert_eq!(read(&sb.path("/etc/group")), "root:x:0:\ndocker:x:990:\n");
}
