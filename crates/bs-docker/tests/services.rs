//! Services, networks, daemon.json, the engine restart guard, status, ps
//! and images, through the binary against the real engine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bs_engine::{labels, ContainerSpec};
use common::*;

fn service_toml(name: &str, image: &str, extra: &str) -> String {
    format!(
        "[docker.services.{name}]\nimage = \"{image}\"\ncommand = [\"sleep\", \"300\"]\nuser = \"10000:10000\"\nlabels = {{ \"bs.test\" = \"1\" }}\n{extra}\n"
    )
}

fn container_id(name: &str) -> Option<String> {
    engine().inspect(name).unwrap().and_then(|c| c.id)
}

#[test]
fn a_service_is_created_and_a_second_apply_leaves_it_alone() {
    let e = engine();
    let image = ensure_test_image(&e);
    let sb = Sandbox::new(true);
    let name = unique("svc");
    let mut clean = Cleanup::new();
    clean.containers.push(name.clone());
    sb.backend(&service_toml(&name, &image, ""));

    let (code, recs) = sb.run(&["check"]);
    assert_eq!(code, 3, "{recs:#?}");
    assert_eq!(find(&recs, "service", &name)["action"], "create_service");

    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 0, "{recs:#?}");
    let r = find(&recs, "service", &name);
    assert_eq!(
        (r["action"].as_str(), r["changed"].as_bool()),
        (Some("create_service"), Some(true))
    );
    let id = container_id(&name).unwrap();

    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 0, "{recs:#?}");
    let r = find(&recs, "service", &name);
    assert_eq!(r["changed"], false);
    assert_eq!(
        container_id(&name).unwrap(),
        id,
        "an unchanged service keeps its container"
    );
    sb.engine_restarted_by_hand();
    let (code, recs) = sb.run(&["check"]);
    assert_eq!(code, 0, "{recs:#?}");

    let (code, recs) = sb.run(&["status"]);
    assert_eq!(code, 0);
    let s = find(&recs, "service", &name);
    assert_eq!(s["state"], "active", "{s}");
    assert_eq!(s["current"], true);
    let eng = &of_type(&recs, "engine")[0];
    assert!(!eng["storage_driver"].as_str().unwrap().is_empty());
}

#[test]
fn a_spec_change_recreates_and_a_stopped_service_is_started() {
    let e = engine();
    let image = ensure_test_image(&e);
    let sb = Sandbox::new(true);
    let name = unique("svc");
    let mut clean = Cleanup::new();
    clean.containers.push(name.clone());
    sb.backend(&service_toml(&name, &image, ""));
    assert_eq!(sb.run(&["apply"]).0, 0);
    let first = container_id(&name).unwrap();

    // An env change (from a layered env file) changes the spec hash.
    std::fs::write(sb.repo.path().join("svc.env"), "GREETING=hello\n").unwrap();
    sb.backend(&service_toml(
        &name,
        &image,
        "env_files = [\"svc.env\"]\nenv = { EXTRA = \"1\" }",
    ));
    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 0, "{recs:#?}");
    assert_eq!(find(&recs, "service", &name)["action"], "recreate_service");
    let second = container_id(&name).unwrap();
    assert_ne!(first, second);
    let env = e
        .inspect(&second)
        .unwrap()
        .unwrap()
        .config
        .unwrap()
        .env
        .unwrap();
    assert!(
        env.contains(&"GREETING=hello".to_string()) && env.contains(&"EXTRA=1".to_string()),
        "{env:?}"
    );
    // A secret-like env file under the root must be 0600.
    std::fs::write(sb.path("/etc/bs/svc.env"), "TOKEN=s3cret\n").unwrap();
    sb.backend(&service_toml(
        &name,
        &image,
        "env_files = [\"svc.env\", \"/etc/bs/svc.env\"]",
    ));
    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(
        code, 1,
        "a world-readable secrets file is refused: {recs:#?}"
    );
    assert!(!serde_json::to_string(&recs).unwrap().contains("s3cret"));

    sb.backend(&service_toml(
        &name,
        &image,
        "env_files = [\"svc.env\"]\nenv = { EXTRA = \"1\" }",
    ));
    e.stop(&second, 1).unwrap();
    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 0, "{recs:#?}");
    assert_eq!(find(&recs, "service", &name)["action"], "start_service");
    let c = e.inspect(&name).unwrap().unwrap();
    assert_eq!(c.id.unwrap(), second, "started, not recreated");
    assert_eq!(c.state.unwrap().running, Some(true));
}

#[test]
fn a_crashing_service_shows_error_with_its_exit_code() {
    let e = engine();
    let image = ensure_test_image(&e);
    let sb = Sandbox::new(true);
    let name = unique("crash");
    let mut clean = Cleanup::new();
    clean.containers.push(name.clone());
    sb.backend(&format!(
        "[docker.services.{name}]\nimage = \"{image}\"\ncommand = [\"sh\", \"-c\", \"exit 3\"]\nrestart = \"no\"\nlabels = {{ \"bs.test\" = \"1\" }}\n"
    ));
    assert_eq!(sb.run(&["apply"]).0, 0);
    assert_eq!(e.wait(&name).unwrap(), 3);
    let (code, recs) = sb.run(&["status"]);
    assert_eq!(code, 0);
    let s = find(&recs, "service", &name);
    assert_eq!(s["state"], "error", "{s}");
    assert_eq!(s["exit_code"], 3);
    assert!(s["reason"].as_str().unwrap().contains("code 3"));
}

#[test]
fn limits_user_mounts_and_hardening_read_back_from_the_engine() {
    let e = engine();
    let image = ensure_test_image(&e);
    let sb = Sandbox::new(true);
    let name = unique("limits");
    let net = unique("net");
    let mut clean = Cleanup::new();
    clean.containers.push(name.clone());
    clean.networks.push(net.clone());
    let data = tempfile::tempdir().unwrap();
    sb.backend(&format!(
        "[docker.networks.{net}]\ninternal = true\n\n{}",
        service_toml(
            &name,
            &image,
            &format!(
                "memory = \"48m\"\ncpus = 0.5\npids_limit = 40\nread_only = true\nnetwork = \"{net}\"\nports = [\"127.0.0.1:0:8000\"]\nmounts = [\"{}:/data:ro\"]",
                data.path().display()
            )
        )
    ));
    // Port 0 is refused by the config check: a port must be a real one.
    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 2, "{recs:#?}");
    sb.backend(&format!(
        "[docker.networks.{net}]\ninternal = true\n\n{}",
        service_toml(
            &name,
            &image,
            &format!(
                "memory = \"48m\"\ncpus = 0.5\npids_limit = 40\nread_only = true\nnetwork = \"{net}\"\nmounts = [\"{}:/data:ro\"]",
                data.path().display()
            )
        )
    ));
    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 0, "{recs:#?}");
    assert_eq!(find(&recs, "network", &net)["action"], "create_network");
    let c = e.inspect(&name).unwrap().unwrap();
    let h = c.host_config.clone().unwrap();
    assert_eq!(h.memory, Some(48 << 20));
    assert_eq!(h.nano_cpus, Some(500_000_000));
    assert_eq!(h.pids_limit, Some(40));
    assert_eq!(h.readonly_rootfs, Some(true));
    assert_eq!(h.init, Some(true));
    assert_eq!(h.cap_drop, Some(vec!["ALL".to_string()]));
    assert!(h
        .security_opt
        .unwrap()
        .iter()
        .any(|s| s.starts_with("no-new-privileges")));
    assert_eq!(h.network_mode.as_deref(), Some(net.as_str()));
    assert_eq!(
        c.config.clone().unwrap().user.as_deref(),
        Some("10000:10000")
    );
    let m = &c.mounts.clone().unwrap()[0];
    assert_eq!(
        (m.destination.as_deref(), m.rw),
        (Some("/data"), Some(false))
    );
    // The spec check itself agrees, and catches a difference.
    let spec = ContainerSpec {
        user: Some("0".into()),
        ..Default::default()
    };
    assert!(!spec.mismatches(&c).is_empty());
}

#[test]
fn a_network_is_created_and_drift_is_reported_and_recreated_only_when_free() {
    let e = engine();
    let image = ensure_test_image(&e);
    let sb = Sandbox::new(true);
    let net = unique("net");
    let user = unique("attached");
    let mut clean = Cleanup::new();
    clean.containers.push(user.clone());
    clean.networks.push(net.clone());
    sb.backend(&format!(
        "[docker.networks.{net}]\ninternal = true\nsubnet = \"10.231.{}.0/24\"\n",
        std::process::id() % 250
    ));
    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 0, "{recs:#?}");
    assert_eq!(find(&recs, "network", &net)["action"], "create_network");
    let n = e
        .block_on(e.docker().inspect_network(
            &net,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        ))
        .unwrap();
    assert_eq!(
        n.options
            .unwrap()
            .get("com.docker.network.bridge.enable_icc")
            .map(String::as_str),
        Some("false")
    );
    assert_eq!(n.internal, Some(true));
    sb.engine_restarted_by_hand();
    assert_eq!(sb.run(&["check"]).0, 0);

    // Declared no longer internal: drift.
    sb.backend(&format!(
        "[docker.networks.{net}]\ninternal = false\nsubnet = \"10.231.{}.0/24\"\n",
        std::process::id() % 250
    ));
    let (code, recs) = sb.run(&["check"]);
    assert_eq!(code, 3);
    let r = find(&recs, "network", &net);
    assert_eq!(r["action"], "recreate_network");
    assert!(r["differences"][0].as_str().unwrap().contains("internal"));

    // A container attached: reported, not recreated.
    let spec = ContainerSpec {
        name: user.clone(),
        image,
        command: vec!["sleep".into(), "60".into()],
        network: Some(net.clone()),
        labels: test_labels(),
        ..Default::default()
    };
    let id = e.create_container(&spec).unwrap();
    e.start(&id).unwrap();
    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 1, "{recs:#?}");
    let err = errors(&recs)[0];
    assert_eq!(err["kind"], "network_drift");
    assert!(err["message"].as_str().unwrap().contains(&user));

    e.remove(&id).unwrap();
    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 0, "{recs:#?}");
    assert_eq!(find(&recs, "network", &net)["changed"], true);
    assert_eq!(sb.run(&["check"]).0, 0);
}

#[test]
fn declared_network_labels_are_set_at_creation_and_a_changed_one_is_drift() {
    let e = engine();
    let sb = Sandbox::new(true);
    let net = unique("labelled");
    let mut clean = Cleanup::new();
    clean.networks.push(net.clone());
    let declare = |run: &str| {
        sb.backend(&format!(
            "[docker.networks.{net}]\ninternal = true\n\n[docker.networks.{net}.labels]\n\"bs.test\" = \"1\"\n\"run\" = \"{run}\"\n"
        ))
    };
    declare("one");
    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 0, "{recs:#?}");
    assert_eq!(find(&recs, "network", &net)["labels"]["run"], "one");
    let labels = |e: &bs_engine::Engine| {
        e.block_on(e.docker().inspect_network(
            &net,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        ))
        .unwrap()
        .labels
        .unwrap()
    };
    let have = labels(&e);
    assert_eq!(have.get("run").map(String::as_str), Some("one"));
    assert_eq!(
        have.get("bs.managed-by").map(String::as_str),
        Some("bs-docker")
    );
    sb.engine_restarted_by_hand();
    assert_eq!(sb.run(&["check"]).0, 0, "the labels it set are not drift");

    declare("two");
    let (code, recs) = sb.run(&["check"]);
    assert_eq!(code, 3, "{recs:#?}");
    let r = find(&recs, "network", &net);
    assert_eq!(r["action"], "recreate_network");
    assert_eq!(
        r["differences"][0],
        "label run is \"one\", declared \"two\""
    );
    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 0, "{recs:#?}");
    assert_eq!(labels(&e).get("run").map(String::as_str), Some("two"));
}

#[test]
fn an_unreachable_socket_is_a_clear_error_naming_the_socket() {
    let sb = Sandbox::new(false);
    let (code, recs) = sb.run(&["status"]);
    assert_eq!(code, 1);
    let err = errors(&recs)[0];
    assert_eq!(err["kind"], "engine_unreachable");
    let sock = sb.path("/var/run/docker.sock").display().to_string();
    assert_eq!(err["target"], sock);
    assert!(
        err["message"].as_str().unwrap().contains("No such file"),
        "{err}"
    );

    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 1);
    assert_eq!(errors(&recs)[0]["kind"], "engine_unreachable");

    // A backend that does not require the engine reports and carries on.
    sb.backend("[docker]\nrequire_engine = false\n");
    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 0, "{recs:#?}");
    assert_eq!(of_type(&recs, "engine")[0]["reachable"], false);
}

#[test]
fn ps_lists_running_job_containers_with_workspace_and_action() {
    let e = engine();
    let image = ensure_test_image(&e);
    let sb = Sandbox::new(true);
    let name = unique("job");
    let mut clean = Cleanup::new();
    clean.containers.push(name.clone());
    let mut spec = ContainerSpec {
        name: name.clone(),
        image,
        command: vec!["sleep".into(), "60".into()],
        labels: test_labels(),
        memory_bytes: Some(64 << 20),
        ..Default::default()
    };
    spec.labels.insert(labels::JOB_ID.into(), name.clone());
    spec.labels
        .insert(labels::JOB_WORKSPACE.into(), "ws1".into());
    spec.labels
        .insert(labels::JOB_ACTION.into(), "generate_dataset".into());
    let id = e.create_container(&spec).unwrap();
    e.start(&id).unwrap();
    let (code, recs) = sb.run(&["ps"]);
    assert_eq!(code, 0);
    let j = find(&recs, "job", &name);
    assert_eq!(j["workspace"], "ws1");
    assert_eq!(j["action"], "generate_dataset");
    assert_eq!(j["memory_limit_bytes"], 64 << 20);
    assert!(j["created"].as_i64().unwrap() > 0);
    assert!(j["started_at"].as_str().unwrap().starts_with("20"), "{j}");
}

#[test]
fn a_health_check_shows_starting_then_active_and_ports_bind_to_the_given_address() {
    let e = engine();
    let image = ensure_test_image(&e);
    let sb = Sandbox::new(true);
    let name = unique("health");
    let mut clean = Cleanup::new();
    clean.containers.push(name.clone());
    // A free port on loopback: bind, note, release.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    sb.backend(&service_toml(
        &name,
        &image,
        &format!("healthcheck = [\"true\"]\nhealthcheck_interval_secs = 1\nhealthcheck_timeout_secs = 2\nhealthcheck_retries = 4\nhealthcheck_start_period_secs = 5\nports = [\"127.0.0.1:{port}:8000\"]\nrestart = \"always\""),
    ));
    let (code, recs) = sb.run(&["apply"]);
    assert_eq!(code, 0, "{recs:#?}");
    let inspected = e.inspect(&name).unwrap().unwrap();
    let hc = inspected.config.unwrap().healthcheck.unwrap();
    let s = 1_000_000_000;
    assert_eq!(
        (hc.interval, hc.timeout, hc.retries, hc.start_period),
        (Some(s), Some(2 * s), Some(4), Some(5 * s)),
        "the engine holds the health check timing as configured"
    );
    let h = inspected.host_config.unwrap();
    let b = &h.port_bindings.unwrap()["8000/tcp"].clone().unwrap()[0];
    assert_eq!(
        (b.host_ip.as_deref(), b.host_port.clone()),
        (Some("127.0.0.1"), Some(port.to_string()))
    );
    assert_eq!(
        h.restart_policy.unwrap().name.unwrap().to_string(),
        "always"
    );

    let (_, recs) = sb.run(&["status"]);
    let first = find(&recs, "service", &name).clone();
    assert!(
        first["state"] == "starting" || first["health"] == "healthy",
        "{first}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, recs) = sb.run(&["status"]);
        let s = find(&recs, "service", &name).clone();
        if s["state"] == "active" {
            assert_eq!(s["health"], "healthy");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never became healthy: {s}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

#[test]
fn apply_with_a_plan_applies_only_what_is_still_needed() {
    let e = engine();
    let image = ensure_test_image(&e);
    let sb = Sandbox::new(true);
    let a = unique("plan-a");
    let b = unique("plan-b");
    let mut clean = Cleanup::new();
    clean.containers.push(a.clone());
    clean.containers.push(b.clone());
    sb.backend(&format!(
        "{}{}",
        service_toml(&a, &image, ""),
        service_toml(&b, &image, "")
    ));
    let (code, recs) = sb.run(&["plan"]);
    assert_eq!(code, 0);
    // Keep only service a's change in the plan given back.
    let plan: String = recs
        .iter()
        .filter(|r| r["type"] == "service" && r["target"] == a.as_str())
        .map(|r| format!("{r}\n"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plan.jsonl");
    std::fs::write(&file, &plan).unwrap();
    let (code, recs) = sb.run(&["apply", "--plan", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{recs:#?}");
    assert!(container_id(&a).is_some());
    assert!(container_id(&b).is_none(), "b was not in the plan given");
    // Given again, it is no longer needed.
    let (code, recs) = sb.run(&["apply", "--plan", file.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(of_type(&recs, "plan_skipped").len(), 1);
}
