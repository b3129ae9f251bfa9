//! The shared engine module against the real Docker engine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use bs_engine::{labels, BindMount, ContainerSpec, Engine, EngineError, PortSpec};
use common::*;

#[test]
fn connects_negotiates_and_reports_version_and_storage_driver() {
    let engine = engine();
    engine.ping().unwrap();
    let info = engine.info().unwrap();
    assert!(!info.version.is_empty());
    assert!(!info.storage_driver.is_empty());
    assert!(info.client_api_version.starts_with("1."));
}

#[test]
fn an_unreachable_socket_is_engine_unreachable_with_the_socket_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("docker.sock");
    let err = Engine::connect(sock.to_str().unwrap()).err().unwrap();
    assert_eq!(err.kind(), "engine_unreachable");
    assert_eq!(err.target(), sock.display().to_string());
    assert!(err.to_string().contains("No such file"), "{err}");

    // A socket file with nobody listening: refused.
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    drop(listener);
    let err = Engine::connect(sock.to_str().unwrap()).err().unwrap();
    assert!(matches!(err, EngineError::Unreachable { .. }), "{err}");
    assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
}

#[test]
fn a_container_runs_and_a_non_zero_exit_is_an_exit_code_not_an_error() {
    let engine = engine();
    let image = ensure_test_image(&engine);
    let mut clean = Cleanup::new();
    let name = unique("wait");
    clean.containers.push(name.clone());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "hello from the host\n").unwrap();
    let mut spec = ContainerSpec {
        name: name.clone(),
        image,
        command: vec![
            "sh".into(),
            "-c".into(),
            "cat /data/in.txt; id -u; exit 7".into(),
        ],
        user: Some("10000:10000".into()),
        labels: test_labels(),
        mounts: vec![BindMount {
            source: dir.path().display().to_string(),
            target: "/data".into(),
            read_only: true,
        }],
        network: Some("none".into()),
        init: true,
        cap_drop: vec!["ALL".into()],
        no_new_privileges: true,
        memory_bytes: Some(64 * 1024 * 1024),
        nano_cpus: Some(500_000_000),
        pids_limit: Some(64),
        ..Default::default()
    };
    spec.labels.insert(labels::JOB_ID.into(), name.clone());
    let id = engine.create_container(&spec).unwrap();
    let inspected = engine.inspect(&id).unwrap().unwrap();
    assert_eq!(spec.mismatches(&inspected), Vec::<String>::new());
    engine.start(&id).unwrap();
    assert_eq!(engine.wait(&id).unwrap(), 7);
    let log = dir.path().join("out.log");
    let n = engine.logs_to_file(&id, &log, false).unwrap();
    assert!(n > 0);
    assert_eq!(read(&log), "hello from the host\n10000\n");

    let found = engine
        .list_by_label(&format!("{}={name}", labels::JOB_ID), true)
        .unwrap();
    assert_eq!(found.len(), 1);
    assert!(engine.remove(&id).unwrap());
    assert!(!engine.remove(&id).unwrap(), "already gone is not an error");
    assert!(engine.inspect(&id).unwrap().is_none());
}

#[test]
fn wait_with_a_limit_returns_none_while_running_and_stats_read_usage() {
    let engine = engine();
    let image = ensure_test_image(&engine);
    let mut clean = Cleanup::new();
    let name = unique("sleep");
    clean.containers.push(name.clone());
    let spec = ContainerSpec {
        name: name.clone(),
        image,
        command: vec!["sleep".into(), "30".into()],
        labels: test_labels(),
        memory_bytes: Some(32 * 1024 * 1024),
        ..Default::default()
    };
    let id = engine.create_container(&spec).unwrap();
    engine.start(&id).unwrap();
    assert_eq!(
        engine
            .wait_timeout(&id, Duration::from_millis(300))
            .unwrap(),
        None
    );
    let usage = engine.stats_once(&id).unwrap();
    assert_eq!(usage.memory_limit_bytes, 32 * 1024 * 1024);
    engine.kill(&id, "KILL").unwrap();
    assert_eq!(engine.wait(&id).unwrap(), 137);
}

#[test]
fn a_mismatch_between_spec_and_container_is_reported() {
    let engine = engine();
    let image = ensure_test_image(&engine);
    let mut clean = Cleanup::new();
    let name = unique("mismatch");
    clean.containers.push(name.clone());
    let spec = ContainerSpec {
        name: name.clone(),
        image,
        command: vec!["true".into()],
        user: Some("10000:10000".into()),
        labels: test_labels(),
        ..Default::default()
    };
    let spec = ContainerSpec {
        ports: vec![PortSpec {
            host_ip: "127.0.0.1".into(),
            host_port: 18099,
            container_port: 8000,
            protocol: "tcp".into(),
        }],
        ..spec
    };
    let id = engine.create_container(&spec).unwrap();
    let inspected = engine.inspect(&id).unwrap().unwrap();
    assert_eq!(
        spec.mismatches(&inspected),
        Vec::<String>::new(),
        "as created"
    );
    let mut other = spec.clone();
    other.user = Some("0:0".into());
    other.pids_limit = Some(10);
    other.ports[0].host_ip = "0.0.0.0".into();
    let m = other.mismatches(&inspected);
    assert!(m.iter().any(|s| s.starts_with("user")), "{m:?}");
    assert!(m.iter().any(|s| s.starts_with("pids_limit")), "{m:?}");
    assert!(m.iter().any(|s| s.starts_with("ports")), "{m:?}");
}

#[test]
fn an_engine_that_accepts_but_never_answers_is_unreachable_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("stalled.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    // Accept and hold connections without a word.
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        if let Ok((c, _)) = listener.accept() {
            conns.push(c);
            std::thread::sleep(Duration::from_secs(3));
        }
    });
    let started = std::time::Instant::now();
    let err = Engine::connect_with_timeout(sock.to_str().unwrap(), 1)
        .err()
        .unwrap();
    assert_eq!(err.kind(), "engine_unreachable", "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    held.join().unwrap();
}

#[test]
fn an_engine_can_be_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Engine>();
    let engine = std::sync::Arc::new(engine());
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let e = engine.clone();
            std::thread::spawn(move || e.ping().unwrap())
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
