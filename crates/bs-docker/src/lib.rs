//! bs-docker: the Docker engine, its config, networks and service
//! containers, through the engine's API (bollard).
//!
//! The engine client itself is the bs-engine crate, shared with bs-jobs.
//! Records and exit codes: docs/bs-docker.md.

pub mod change;
pub mod cli;
pub mod daemon;
pub mod error;
pub mod firewall;
pub mod images;
pub mod network;
pub mod ps;
pub mod service;
pub mod unit;

use serde_json::{json, Map, Value};

use bs_core::accounts::AccountDb;
use bs_core::cmd::{Cmd, Runner, SystemRunner};
use bs_core::config::Config;
use bs_core::plan::{still_needed, Mode};
use bs_core::{Output, Root};

use crate::change::Change;
use crate::cli::{Cli, Command};
use crate::error::{DockerError, Result};
use bs_engine::{labels, Engine};

/// The whole run of one command.
pub fn run(cli: Cli, out: &mut Output) -> Result<Map<String, Value>> {
    let root = cli.global.root()?;
    let config = cli.global.config(&root)?;
    match cli.command {
        Command::Plan => converge(&cli.global, &root, &config, out, Mode::Plan, None, false),
        Command::Check => converge(&cli.global, &root, &config, out, Mode::Check, None, false),
        Command::Apply { apply, force } => {
            let given = match apply.plan_input() {
                Some(input) => Some(input.read::<Change>(out.tool())?),
                None => None,
            };
            converge(&cli.global, &root, &config, out, Mode::Apply, given, force)
        }
        Command::Firewall { check } => {
            let mode = if check { Mode::Check } else { Mode::Apply };
            out.set_mode(mode);
            let _lock = if check {
                None
            } else {
                Some(cli.global.lock(&root)?)
            };
            let runner = SystemRunner::new(&root);
            let mut planned = Vec::new();
            plan_firewall(&runner, &config, out, &mut planned);
            for p in planned {
                if let Planned::Firewall { change, wanted } = p {
                    if mode == Mode::Apply {
                        apply_firewall(&runner, &wanted, change, out);
                    } else {
                        out.item("firewall", true, &change);
                    }
                }
            }
            Ok(Map::new())
        }
        Command::Status => status(&root, &config, out),
        Command::Ps => {
            let engine = connect(&root, &config)?;
            ps::ps(&engine, out)?;
            Ok(Map::new())
        }
        Command::Images {
            command: cli::ImagesCommand::Update { image },
        } => {
            let wanted =
                bs_engine::registry::Wanted::parse(&image).map_err(|e| DockerError::Invalid {
                    target: e.target(),
                    message: e.to_string(),
                })?;
            let engine = connect(&root, &config)?;
            let _lock = cli.global.lock(&root)?;
            images::update(&engine, &config, &wanted, out)?;
            Ok(Map::new())
        }
        Command::Images { command } => {
            let engine = connect(&root, &config)?;
            let _lock = match command {
                cli::ImagesCommand::List => None,
                _ => Some(cli.global.lock(&root)?),
            };
            images::run(&engine, command, out)?;
            Ok(Map::new())
        }
    }
}

/// The engine at the configured socket, joined under the root: a sandbox
/// root reaches an engine only through `<root>/var/run/docker.sock`.
pub fn connect(root: &Root, config: &Config) -> Result<Engine> {
    let socket = root.join(&config.docker.socket);
    Ok(Engine::connect(&socket.to_string_lossy())?)
}

/// A change and what is needed to carry it out.
enum Planned {
    Daemon {
        change: Change,
        doc: Vec<u8>,
    },
    Restart {
        change: Change,
    },
    Network {
        change: Change,
        name: String,
    },
    Firewall {
        change: Change,
        wanted: firewall::Wanted,
    },
    Unit {
        change: Change,
    },
    Service {
        change: Change,
        desired: Box<service::Desired>,
        old: Option<String>,
    },
}

impl Planned {
    fn change(&self) -> &Change {
        match self {
            Planned::Daemon { change, .. }
            | Planned::Restart { change }
            | Planned::Network { change, .. }
            | Planned::Firewall { change, .. }
            | Planned::Unit { change }
            | Planned::Service { change, .. } => change,
        }
    }
}

fn converge(
    global: &bs_core::cli::Global,
    root: &Root,
    config: &Config,
    out: &mut Output,
    mode: Mode,
    given: Option<Vec<Change>>,
    force: bool,
) -> Result<Map<String, Value>> {
    out.set_mode(mode);
    let _lock = if mode.mutates() {
        Some(global.lock(root)?)
    } else {
        None
    };
    let runner = SystemRunner::new(root);
    let d = &config.docker;
    let mut planned: Vec<Planned> = Vec::new();

    // ---- daemon.json ---------------------------------------------------------
    let managed = daemon::managed_json(&d.daemon);
    let problems = daemon::type_check(&managed);
    if !problems.is_empty() {
        // A config error: nothing is changed (exit 2).
        return Err(DockerError::Invalid {
            target: "docker.daemon".into(),
            message: problems.join("; "),
        });
    }
    let dj_path = root.join(&d.daemon_json);
    let dj_target = root.display_path(&dj_path);
    let mut daemon_changes = false;
    if !managed.is_empty() {
        match daemon::read_current(&dj_path) {
            Err(message) => out.error("daemon_json_unreadable", &dj_target, &message),
            Ok(current) => {
                let keys = daemon::differing_keys(&current, &managed);
                let merged = daemon::merge(&current, &managed);
                let bad = daemon::type_check(&merged);
                if !bad.is_empty() {
                    out.error(
                        "daemon_json_invalid",
                        &dj_target,
                        &format!("keys kept from the file are invalid: {}", bad.join("; ")),
                    );
                } else if keys.is_empty() {
                    out.item(
                        "daemon_json",
                        false,
                        &json!({"action": "none", "target": dj_target}),
                    );
                } else {
                    daemon_changes = true;
                    planned.push(Planned::Daemon {
                        change: Change::UpdateDaemonJson {
                            target: dj_target.clone(),
                            keys,
                        },
                        doc: daemon::render(&merged),
                    });
                }
            }
        }
    }

    // ---- the docker group -----------------------------------------------------
    check_group(root, config, out)?;

    // ---- the engine ------------------------------------------------------------
    let engine = match connect(root, config) {
        Ok(e) => Some(e),
        Err(DockerError::Engine(e)) => {
            if d.require_engine {
                out.error(e.kind(), &e.target(), &e.to_string());
            } else {
                out.emit("engine", &json!({"target": e.target(), "reachable": false, "required": false, "reason": e.to_string()}));
            }
            None
        }
        Err(other) => return Err(other),
    };
    if let Some(engine) = &engine {
        match engine.info() {
            Ok(info) => {
                let mut v = serde_json::to_value(&info).unwrap_or_default();
                if let Some(m) = v.as_object_mut() {
                    m.insert("target".into(), Value::from(info.socket.clone()));
                    m.insert("reachable".into(), Value::from(true));
                }
                out.emit("engine", &v);
            }
            Err(e) => out.error(e.kind(), &e.target(), &e.to_string()),
        }
    }
    let marker = daemon::restart_marker(root);
    let mut restart_owed = daemon_changes || marker.exists();
    if restart_owed && !daemon_changes && daemon::restarted_since(root, &marker) {
        restart_owed = false;
        if mode == Mode::Apply {
            // Bookkeeping only: the engine already reads the new file.
            match bs_core::safefs::remove_file(&marker) {
                Ok(_) => out.emit("engine_restart", &json!({"target": d.socket, "needed": false, "done": true, "reason": "the engine restarted since daemon.json changed"})),
                Err(e) => out.core_error(&e),
            }
        }
    }
    if restart_owed {
        if d.allow_restart {
            planned.push(Planned::Restart {
                change: Change::RestartEngine {
                    target: root.display_path(&root.join(&d.socket)),
                },
            });
        } else {
            let owed = json!({"target": d.socket, "needed": true, "done": false, "reason": "docker.allow_restart is false: restart the engine in a quiet moment"});
            if mode == Mode::Check {
                // The engine runs with an older daemon.json than the one on
                // disk: the host is not as described until someone restarts it.
                out.item("engine_restart", true, &owed);
            } else {
                out.emit("engine_restart", &owed);
            }
        }
    }

    // ---- networks and services -------------------------------------------------
    // Before the networks: a database network never exists without the
    // rules that confine it. They need no engine.
    plan_firewall(&runner, config, out, &mut planned);
    if let Some(content) = unit::wanted(config) {
        // The unit reads the snapshot: it must be there first.
        let snap = bs_core::config::Snapshot::capture(&config.source(), root)?;
        snap.converge(root, mode, &snap.stale(root)?, out)?;
        let target = root.display_path(&unit::path(root));
        if unit::stale(root, &content) {
            planned.push(Planned::Unit {
                change: Change::WriteUnit { target, content },
            });
        } else {
            out.item("unit", false, &json!({"action": "none", "target": target}));
        }
    }
    if let Some(engine) = &engine {
        plan_networks(engine, config, out, &mut planned);
        plan_services(engine, root, config, out, &mut planned);
    }

    // ---- apply --plan: only what was given and is still needed ----------------
    if let Some(given) = given {
        let fresh: Vec<Change> = planned.iter().map(|p| p.change().clone()).collect();
        let (keep, stale) = still_needed(fresh, given);
        for s in stale {
            out.emit("plan_skipped", &json!({"target": bs_core::plan::Change::target(&s), "change": s, "reason": "no longer needed or no longer matches the live system"}));
        }
        planned.retain(|p| keep.contains(p.change()));
    }

    if mode != Mode::Apply {
        for p in &planned {
            let c = p.change();
            out.item(bs_core::plan::Change::record_type(c), true, c);
        }
        return Ok(Map::new());
    }

    // ---- apply ---------------------------------------------------------------------
    let mut engine = engine;
    for p in planned {
        match p {
            Planned::Daemon { change, doc } => {
                apply_daemon(&runner, &dj_path, &marker, change, &doc, out)
            }
            Planned::Restart { change } => {
                if let Some(e) = restart_engine(
                    &runner,
                    root,
                    config,
                    engine.as_ref(),
                    &marker,
                    force,
                    change,
                    out,
                ) {
                    engine = Some(e);
                }
            }
            Planned::Firewall { change, wanted } => apply_firewall(&runner, &wanted, change, out),
            Planned::Unit { change } => apply_unit(&runner, root, change, out),
            Planned::Network { change, name } => {
                if let Some(engine) = &engine {
                    apply_network(engine, config, &name, change, force, out);
                }
            }
            Planned::Service {
                change,
                desired,
                old,
            } => {
                if let Some(engine) = &engine {
                    apply_service(engine, change, &desired, old.as_deref(), out);
                }
            }
        }
    }
    Ok(Map::new())
}

/// The service account must be in the docker group. bs-users owns group
/// membership, so a missing member is reported, not fixed, here.
fn check_group(root: &Root, config: &Config, out: &mut Output) -> Result<()> {
    let db = AccountDb::load(root)?;
    let group = &config.docker.group;
    let member = &config.service_account.name;
    match db.group(group) {
        None => out.error(
            "docker_group_missing",
            group,
            &format!("group {group} does not exist: install docker.io or run bs-users apply"),
        ),
        Some(g) => {
            let primary = db.user(member).is_some_and(|u| u.gid == g.gid);
            if g.members.iter().any(|m| m == member) || primary {
                out.item(
                    "group",
                    false,
                    &json!({"action": "none", "target": group, "member": member}),
                );
            } else {
                out.error(
                    "docker_group_member_missing",
                    group,
                    &format!("{member} is not a member of {group} (drift): bs-users manages membership; run bs-users apply"),
                );
            }
        }
    }
    Ok(())
}

fn apply_daemon(
    runner: &dyn Runner,
    path: &std::path::Path,
    marker: &std::path::Path,
    change: Change,
    doc: &[u8],
    out: &mut Output,
) {
    let target = bs_core::plan::Change::target(&change);
    match daemon::validate_with_dockerd(runner, doc) {
        daemon::Validation::Failed(msg) => {
            out.error(
                "daemon_json_invalid",
                &target,
                &format!("dockerd --validate refused the merged file; not written: {msg}"),
            );
            return;
        }
        daemon::Validation::Unavailable(why) => {
            out.emit("validation", &json!({"target": target, "validator": "dockerd --validate", "available": false, "reason": why}));
        }
        daemon::Validation::Passed => {
            out.emit("validation", &json!({"target": target, "validator": "dockerd --validate", "available": true, "passed": true}));
        }
    }
    match daemon::write(path, doc) {
        Ok(_) => {
            // Owed until the engine has restarted and read it.
            if let Err(e) = write_marker(marker) {
                out.core_error(&e);
            }
            out.item("daemon_json", true, &change);
        }
        Err(e) => out.core_error(&e),
    }
}

fn write_marker(marker: &std::path::Path) -> bs_core::error::Result<()> {
    if let Some(dir) = marker.parent() {
        bs_core::safefs::ensure_dir_all(dir, &bs_core::safefs::FileSpec::root(0o755))?;
    }
    bs_core::safefs::write_atomic(
        marker,
        b"daemon.json changed; the engine has not restarted since\n",
        &bs_core::safefs::FileSpec::root(0o644),
    )?;
    Ok(())
}

/// Restart the engine, unless job containers run (a restart kills them)
/// and the run is not forced. Returns a fresh connection after a restart.
#[allow(clippy::too_many_arguments)]
fn restart_engine(
    runner: &dyn Runner,
    root: &Root,
    config: &Config,
    engine: Option<&Engine>,
    marker: &std::path::Path,
    force: bool,
    change: Change,
    out: &mut Output,
) -> Option<Engine> {
    let target = bs_core::plan::Change::target(&change);
    if !force {
        let Some(engine) = engine else {
            out.error("restart_refused", &target, "the engine is unreachable, so running jobs cannot be counted; rerun with --force to restart anyway");
            return None;
        };
        match engine.running_jobs() {
            Ok(jobs) if !jobs.is_empty() => {
                let names: Vec<String> = jobs
                    .iter()
                    .filter_map(|j| {
                        j.names
                            .as_ref()
                            .and_then(|n| n.first())
                            .map(|n| n.trim_start_matches('/').to_string())
                    })
                    .collect();
                out.error(
                    "restart_refused",
                    &target,
                    &format!("{} job container(s) running ({}); a restart would kill them; the restart stays owed; rerun with --force to restart anyway", jobs.len(), names.join(", ")),
                );
                return None;
            }
            Ok(_) => {}
            Err(e) => {
                out.error(e.kind(), &e.target(), &e.to_string());
                return None;
            }
        }
    }
    let cmd = Cmd::new("systemctl")
        .args(["restart", "docker.service"])
        .host();
    match runner.run(&cmd) {
        Ok(ran) => {
            out.emit("command", &ran);
            if ran.skipped {
                return None;
            }
            if !ran.success() {
                out.error(
                    "restart_failed",
                    &target,
                    &format!("systemctl restart docker failed: {}", ran.stderr),
                );
                return None;
            }
        }
        Err(e) => {
            out.core_error(&e);
            return None;
        }
    }
    // Back when it answers again; containers with a restart policy return.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match connect(root, config) {
            Ok(e) => {
                let _ = bs_core::safefs::remove_file(marker);
                out.item("engine", true, &change);
                return Some(e);
            }
            Err(err) if std::time::Instant::now() > deadline => {
                out.error(
                    "engine_unreachable",
                    &target,
                    &format!("not back 60 s after the restart: {err}"),
                );
                return None;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
        }
    }
}

/// Read the DOCKER-USER rules of each database network; what differs is
/// planned. Under a sandbox root iptables is not run (reported as skipped).
fn plan_firewall(
    runner: &dyn Runner,
    config: &Config,
    out: &mut Output,
    planned: &mut Vec<Planned>,
) {
    for w in firewall::wanted(config) {
        let base = json!({"target": w.network, "bridge": w.bridge, "chain": firewall::CHAIN,
                          "addresses": w.addresses, "fails_closed": w.addresses.is_empty()});
        if !config.docker.manage_firewall {
            let mut v = base;
            v["action"] = json!("none");
            v["inspected"] = json!(false);
            v["reason"] = json!("docker.manage_firewall is false on this machine");
            out.item("firewall", false, &v);
            continue;
        }
        let mut ran = Vec::new();
        let result = firewall::inspect(runner, &w, &mut ran);
        for r in ran.iter().filter(|r| r.skipped) {
            out.emit("command", r);
        }
        match result {
            Err(f) => out.error(f.kind, &w.network, &f.message),
            Ok(rep) if rep.skipped => {
                let mut v = base;
                v["action"] = json!("none");
                v["inspected"] = json!(false);
                v["reason"] = json!("sandbox root: iptables on the live host not run");
                out.item("firewall", false, &v);
            }
            Ok(rep) if rep.missing.is_empty() && rep.extra.is_empty() => {
                let mut v = base;
                v["action"] = json!("none");
                v["inspected"] = json!(true);
                out.item("firewall", false, &v);
            }
            Ok(rep) => planned.push(Planned::Firewall {
                change: Change::UpdateFirewall {
                    target: w.network.clone(),
                    bridge: w.bridge.clone(),
                    missing: rep.missing,
                    extra: rep.extra,
                },
                wanted: w,
            }),
        }
    }
}

fn apply_firewall(runner: &dyn Runner, w: &firewall::Wanted, change: Change, out: &mut Output) {
    let mut ran = Vec::new();
    let result = firewall::converge(runner, w, &mut ran);
    // The changes, not the listings and checks around them.
    for r in ran
        .iter()
        .filter(|r| r.argv.iter().any(|a| a == "-I" || a == "-D"))
    {
        out.emit("command", r);
    }
    match result {
        Ok(_) => out.item("firewall", true, &change),
        Err(f) => out.error(f.kind, &w.network, &f.message),
    }
}

/// Write the unit, then have systemd load and enable it (where systemd is
/// the init: in a container the file is in place for when it is).
fn apply_unit(runner: &dyn Runner, root: &Root, change: Change, out: &mut Output) {
    let Change::WriteUnit { content, .. } = &change else {
        return;
    };
    let path = unit::path(root);
    let spec = bs_core::safefs::FileSpec::root(0o644);
    let written = path
        .parent()
        .map_or(Ok(()), |dir| {
            bs_core::safefs::ensure_dir_all(dir, &bs_core::safefs::FileSpec::root(0o755))
        })
        .and_then(|_| bs_core::safefs::write_atomic(&path, content.as_bytes(), &spec));
    if let Err(e) = written {
        out.core_error(&e);
        return;
    }
    out.item("unit", true, &change);
    if root.is_live() && !bs_core::cmd::systemd_is_init() {
        out.emit("note", &json!({"target": "systemd", "message": "systemd is not running here: the unit is written, not enabled"}));
        return;
    }
    for cmd in [
        Cmd::new("systemctl").arg("daemon-reload").host(),
        Cmd::new("systemctl").args(["enable", unit::NAME]).host(),
    ] {
        match runner.run(&cmd) {
            Ok(ran) => {
                out.emit("command", &ran);
                if !ran.skipped && !ran.success() {
                    out.error("command_failed", &cmd.argv().join(" "), &ran.stderr);
                }
            }
            Err(e) => out.core_error(&e),
        }
    }
}

fn plan_networks(engine: &Engine, config: &Config, out: &mut Output, planned: &mut Vec<Planned>) {
    for (name, spec) in &config.docker.networks {
        match network::inspect(engine, name) {
            Err(e) => out.error(e.kind(), name, &e.to_string()),
            Ok(None) => planned.push(Planned::Network {
                change: Change::CreateNetwork {
                    target: name.clone(),
                    internal: spec.internal,
                    icc: spec.icc,
                    subnet: spec.subnet.clone(),
                    labels: spec.labels.clone(),
                },
                name: name.clone(),
            }),
            Ok(Some(n)) => {
                let differences = network::differences(spec, &n);
                if differences.is_empty() {
                    out.item("network", false, &json!({"action": "none", "target": name, "attached": network::attached(&n)}));
                } else {
                    planned.push(Planned::Network {
                        change: Change::RecreateNetwork {
                            target: name.clone(),
                            differences,
                        },
                        name: name.clone(),
                    });
                }
            }
        }
    }
}

fn apply_network(
    engine: &Engine,
    config: &Config,
    name: &str,
    change: Change,
    force: bool,
    out: &mut Output,
) {
    let Some(spec) = config.docker.networks.get(name) else {
        return;
    };
    let result = match &change {
        Change::CreateNetwork { .. } => network::create(engine, name, spec),
        Change::RecreateNetwork { differences, .. } => match network::inspect(engine, name) {
            Ok(Some(n)) => {
                let attached = network::attached(&n);
                if !attached.is_empty() && !force {
                    out.error(
                        "network_drift",
                        name,
                        &format!("differs from its declaration ({}) but containers are attached ({}); not recreated: rerun with --force", differences.join("; "), attached.join(", ")),
                    );
                    return;
                }
                network::recreate(engine, name, spec, &n)
            }
            Ok(None) => network::create(engine, name, spec),
            Err(e) => Err(e),
        },
        _ => return,
    };
    match result {
        Ok(()) => out.item("network", true, &change),
        Err(e) => out.error(e.kind(), name, &e.to_string()),
    }
}

fn plan_services(
    engine: &Engine,
    root: &Root,
    config: &Config,
    out: &mut Output,
    planned: &mut Vec<Planned>,
) {
    for (name, s) in &config.docker.services {
        let image_id = match engine.image_id(&s.image) {
            Ok(Some(id)) => id,
            Ok(None) => {
                out.error("image_missing", name, &format!("image {} is not on this host (bs-docker never pulls): load or import it with bs-docker images", s.image));
                continue;
            }
            Err(e) => {
                out.error(e.kind(), name, &e.to_string());
                continue;
            }
        };
        let desired = match service::desired(root, config, name, s, &image_id) {
            Ok(d) => d,
            Err(e) => {
                use bs_core::cli::Report;
                out.error(e.kind(), name, &e.to_string());
                continue;
            }
        };
        let existing = match engine.inspect(name) {
            Ok(c) => c,
            Err(e) => {
                out.error(e.kind(), name, &e.to_string());
                continue;
            }
        };
        let image = s.image.clone();
        let hash = desired.hash.clone();
        let Some(c) = existing else {
            planned.push(Planned::Service {
                change: Change::CreateService {
                    target: name.clone(),
                    image,
                    spec_hash: hash,
                },
                desired: Box::new(desired),
                old: None,
            });
            continue;
        };
        let container_labels = c
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        if container_labels.get(labels::SERVICE).map(String::as_str) != Some(name.as_str()) {
            out.error(
                "service_conflict",
                name,
                "a container of this name exists that bs-docker did not create; not touching it (rename or remove it)",
            );
            continue;
        }
        let old_hash = container_labels
            .get(labels::SPEC_HASH)
            .cloned()
            .unwrap_or_default();
        let state = c.state.clone().unwrap_or_default();
        use bollard::models::ContainerStateStatusEnum as S;
        let id = c.id.clone().unwrap_or_default();
        if old_hash != hash || state.status == Some(S::DEAD) {
            planned.push(Planned::Service {
                change: Change::RecreateService {
                    target: name.clone(),
                    image,
                    spec_hash: hash,
                    previous_hash: old_hash,
                },
                desired: Box::new(desired),
                old: Some(id),
            });
        } else if matches!(
            state.status,
            Some(S::CREATED) | Some(S::EXITED) | Some(S::PAUSED)
        ) {
            planned.push(Planned::Service {
                change: Change::StartService {
                    target: name.clone(),
                    spec_hash: hash,
                },
                desired: Box::new(desired),
                old: Some(id),
            });
        } else {
            out.item("service", false, &json!({"action": "none", "target": name, "container": id.chars().take(12).collect::<String>(), "spec_hash": hash}));
        }
    }
}

fn apply_service(
    engine: &Engine,
    change: Change,
    desired: &service::Desired,
    old: Option<&str>,
    out: &mut Output,
) {
    let name = desired.name.as_str();
    let fail =
        |out: &mut Output, e: bs_engine::EngineError| out.error(e.kind(), name, &e.to_string());
    match &change {
        Change::StartService { .. } => {
            let id = old.unwrap_or(name);
            let result = if engine
                .inspect(id)
                .ok()
                .flatten()
                .and_then(|c| c.state)
                .and_then(|s| s.status)
                == Some(bollard::models::ContainerStateStatusEnum::PAUSED)
            {
                engine
                    .block_on(engine.docker().unpause_container(id))
                    .map_err(|e| engine.error("unpause", id, e))
            } else {
                engine.start(id)
            };
            match result {
                Ok(()) => out.item("service", true, &change),
                Err(e) => fail(out, e),
            }
        }
        Change::CreateService { .. } | Change::RecreateService { .. } => {
            if let Some(old) = old {
                let _ = engine.stop(old, 10);
                if let Err(e) = engine.remove(old) {
                    fail(out, e);
                    return;
                }
            }
            let id = match engine.create_container_raw(name, desired.create_body()) {
                Ok(id) => id,
                Err(e) => return fail(out, e),
            };
            // Read it back: an engine can accept a setting and not apply it
            // (no swap accounting, an older API dropping a field).
            match engine.inspect(&id) {
                Ok(Some(c)) => {
                    let mismatches = desired.spec.mismatches(&c);
                    if !mismatches.is_empty() {
                        let _ = engine.remove(&id);
                        out.error(
                            "service_mismatch",
                            name,
                            &format!(
                                "the created container does not match its spec, removed it: {}",
                                mismatches.join("; ")
                            ),
                        );
                        return;
                    }
                }
                Ok(None) => {
                    out.error(
                        "not_found",
                        name,
                        "the container vanished right after it was created",
                    );
                    return;
                }
                Err(e) => return fail(out, e),
            }
            match engine.start(&id) {
                Ok(()) => out.item("service", true, &change),
                Err(e) => fail(out, e),
            }
        }
        _ => {}
    }
}

/// `status`: the engine, then one record per declared service.
fn status(root: &Root, config: &Config, out: &mut Output) -> Result<Map<String, Value>> {
    let engine = connect(root, config)?;
    let info = engine.info()?;
    let mut v = serde_json::to_value(&info).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.insert("target".into(), Value::from(info.socket.clone()));
        m.insert("reachable".into(), Value::from(true));
    }
    out.emit("engine", &v);
    let mut counts: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for (name, s) in &config.docker.services {
        let c = engine.inspect(name)?;
        let want = match engine.image_id(&s.image)? {
            Some(id) => service::desired(root, config, name, s, &id)
                .ok()
                .map(|d| d.hash),
            None => None,
        };
        let st = service::status_of(name, &s.image, c.as_ref(), want.as_deref());
        *counts.entry(st.state.clone()).or_default() += 1;
        out.emit("service", &st);
    }
    let mut extra = Map::new();
    extra.insert(
        "services".into(),
        serde_json::to_value(counts).unwrap_or_default(),
    );
    Ok(extra)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bs_core::cmd::RecordingRunner;

    /// A sandbox root linked to the real engine and a config with restarts allowed.
    fn setup() -> (tempfile::TempDir, tempfile::TempDir, Root, Config) {
        let repo = tempfile::tempdir().unwrap();
        let root_dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(repo.path().join("backends/t")).unwrap();
        std::fs::copy(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../backends/defaults.toml"),
            repo.path().join("backends/defaults.toml"),
        )
        .unwrap();
        std::fs::write(
            repo.path().join("backends/t/backend.toml"),
            "[backend]\nname = \"t\"\n[docker]\nallow_restart = true\n",
        )
        .unwrap();
        std::fs::create_dir_all(root_dir.path().join("var/run")).unwrap();
        std::os::unix::fs::symlink(
            "/var/run/docker.sock",
            root_dir.path().join("var/run/docker.sock"),
        )
        .unwrap();
        let root = Root::new(root_dir.path()).unwrap();
        let config = Config::load(
            &bs_core::config::Source {
                repo: repo.path().to_path_buf(),
                backend: "t".into(),
            },
            &root,
        )
        .unwrap();
        (repo, root_dir, root, config)
    }

    #[test]
    fn a_successful_restart_reconnects_and_clears_the_owed_marker() {
        let (_repo, _dir, root, config) = setup();
        let marker = daemon::restart_marker(&root);
        write_marker(&marker).unwrap();
        let runner = RecordingRunner::new();
        let (mut out, cap) = Output::capture("bs-docker");
        let engine = connect(&root, &config).unwrap();
        // Forced, so running job containers on this machine do not matter.
        let change = Change::RestartEngine {
            target: "/var/run/docker.sock".into(),
        };
        let again = restart_engine(
            &runner,
            &root,
            &config,
            Some(&engine),
            &marker,
            true,
            change,
            &mut out,
        );
        assert!(again.is_some());
        assert_eq!(runner.ran_lines(), vec!["systemctl restart docker.service"]);
        assert!(!marker.exists());
        let recs = cap.records();
        assert!(recs.iter().any(|r| r["type"] == "engine"
            && r["action"] == "restart_engine"
            && r["changed"] == true));
    }

    #[test]
    fn a_failed_restart_is_an_error_and_stays_owed() {
        let (_repo, _dir, root, config) = setup();
        let marker = daemon::restart_marker(&root);
        write_marker(&marker).unwrap();
        let runner = RecordingRunner::new();
        runner.answer("restart docker", 1, "", "Job for docker.service failed");
        let (mut out, cap) = Output::capture("bs-docker");
        let change = Change::RestartEngine {
            target: "/var/run/docker.sock".into(),
        };
        let again = restart_engine(
            &runner, &root, &config, None, &marker, true, change, &mut out,
        );
        assert!(again.is_none());
        assert!(marker.exists());
        let recs = cap.records();
        assert!(
            recs.iter().any(|r| r["kind"] == "restart_failed"),
            "{recs:?}"
        );
    }
}
