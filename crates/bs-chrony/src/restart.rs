//! The ordered restart: stop the dependent services in order, restart
//! chrony, wait (bounded) until chronyd answers, start the services again
//! in reverse order. Whatever happens to chrony, the services that were
//! stopped are started again: a failed clock restart must not leave the
//! job runner down. Each step is a `restart_step` record.
//!
//! How services are driven is a [`ServiceManager`]: systemd, or argv
//! templates from the config for hosts without systemd (the system-test
//! containers). Both go through the bs-core [`Runner`] and are marked
//! `.host()`, so under a sandbox root they are reported as skipped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use bs_core::cmd::{Cmd, Ran, Runner};
use bs_core::config::{ChronyConfig, ServiceManagerKind};
use bs_core::Output;

pub enum ServiceManager {
    Systemd,
    Commands(BTreeMap<String, Vec<String>>),
}

impl ServiceManager {
    pub fn from_config(cfg: &ChronyConfig) -> ServiceManager {
        match cfg.service_manager {
            ServiceManagerKind::Systemd => ServiceManager::Systemd,
            ServiceManagerKind::Commands => ServiceManager::Commands(cfg.service_commands.clone()),
        }
    }

    /// `verb` (start, stop, restart) for `unit`, as a host-changing command.
    pub fn command(&self, verb: &str, unit: &str) -> Cmd {
        match self {
            ServiceManager::Systemd => Cmd::new("systemctl").args([verb, unit]).host(),
            ServiceManager::Commands(templates) => {
                let argv: Vec<String> = templates
                    .get(verb)
                    .map(|t| t.iter().map(|a| a.replace("{service}", unit)).collect())
                    .unwrap_or_default();
                let mut it = argv.into_iter();
                Cmd::new(it.next().unwrap_or_default()).args(it).host()
            }
        }
        .timeout(Duration::from_secs(120))
    }

    /// Whether `unit` runs now; only systemd can say (others: assumed running).
    /// Marked `.host()` so that under a sandbox root it is not the live
    /// host's answer that decides.
    pub fn is_active(&self, unit: &str) -> Option<Cmd> {
        match self {
            ServiceManager::Systemd => Some(
                Cmd::new("systemctl")
                    .args(["is-active", "--quiet", unit])
                    .host(),
            ),
            ServiceManager::Commands(_) => None,
        }
    }
}

/// Why the services cannot be driven here, if they cannot: systemd is the
/// configured manager on a live host whose init is not systemd. There
/// `systemctl is-active` fails for every unit, which would read as "not
/// running": the job runner would be left running while chrony steps the
/// clock under it. (A sandbox root drives nothing: every command is skipped.)
pub fn cannot_drive_services(
    cfg: &ChronyConfig,
    live: bool,
    systemd_is_init: bool,
) -> Option<String> {
    let systemd = matches!(ServiceManager::from_config(cfg), ServiceManager::Systemd);
    (live && systemd && !systemd_is_init).then(|| {
        format!(
            "systemd is not the init on this host, so systemctl cannot stop {} around the restart of {}: \
             set [chrony] service_manager = \"commands\" with start, stop and restart commands; \
             the restart stays owed",
            if cfg.dependent_services.is_empty() {
                "the dependent services".to_string()
            } else {
                cfg.dependent_services.join(", ")
            },
            cfg.service
        )
    })
}

/// One step of the restart, as its record.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub step: &'static str,
    pub target: String,
    pub argv: Vec<String>,
    pub status: Option<i32>,
    pub skipped: bool,
    pub ok: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// How the restart went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// chrony was restarted and answered (or, under a sandbox root, the
    /// restart was skipped): nothing is pending any more.
    pub chrony_ok: bool,
    /// Every stopped service was started again.
    pub services_ok: bool,
    pub skipped: bool,
}

/// The `chronyc` command for a subcommand, honouring `chronyc_host`.
pub fn chronyc(cfg: &ChronyConfig, args: &[&str]) -> Cmd {
    let mut cmd = Cmd::new(cfg.chronyc.display().to_string());
    if !cfg.chronyc_host.is_empty() {
        cmd = cmd.args(["-h", cfg.chronyc_host.as_str()]);
    }
    cmd.args(["-n", "-c"])
        .args(args.iter().copied())
        .timeout(Duration::from_secs(10))
}

fn run(runner: &dyn Runner, cmd: &Cmd) -> Result<Ran, String> {
    runner.run(cmd).map_err(|e| e.to_string())
}

fn step(
    out: &mut Output,
    name: &'static str,
    target: &str,
    cmd: &Cmd,
    result: &Result<Ran, String>,
) -> bool {
    let (status, skipped, ok, detail) = match result {
        Ok(ran) => (
            ran.status,
            ran.skipped,
            ran.success() || ran.skipped,
            ran.stderr.clone(),
        ),
        Err(e) => (None, false, false, e.clone()),
    };
    out.emit(
        "restart_step",
        &Step {
            step: name,
            target: target.to_string(),
            argv: cmd.argv(),
            status,
            skipped,
            ok,
            detail,
        },
    );
    ok
}

/// Stop, restart, wait, start again. Errors become error records; the
/// outcome says what is still pending.
pub fn ordered_restart(runner: &dyn Runner, cfg: &ChronyConfig, out: &mut Output) -> Outcome {
    ordered_restart_with(runner, cfg, out, Duration::from_millis(250))
}

pub fn ordered_restart_with(
    runner: &dyn Runner,
    cfg: &ChronyConfig,
    out: &mut Output,
    poll: Duration,
) -> Outcome {
    let mgr = ServiceManager::from_config(cfg);
    let mut stopped: Vec<&str> = Vec::new();
    let mut outcome = Outcome {
        services_ok: true,
        ..Outcome::default()
    };
    let mut stop_failed = false;
    for unit in &cfg.dependent_services {
        if let Some(cmd) = mgr.is_active(unit) {
            let result = run(runner, &cmd);
            let running = matches!(&result, Ok(r) if r.success() || r.skipped);
            if !running {
                // Not running (or not installed): nothing to stop, and it
                // must not be started afterwards either.
                out.emit(
                    "restart_step",
                    &Step {
                        step: "not_running",
                        target: unit.clone(),
                        argv: cmd.argv(),
                        status: result.as_ref().ok().and_then(|r| r.status),
                        skipped: false,
                        ok: true,
                        detail: "left as it is".into(),
                    },
                );
                continue;
            }
        }
        let cmd = mgr.command("stop", unit);
        let result = run(runner, &cmd);
        if step(out, "stop", unit, &cmd, &result) {
            stopped.push(unit);
        } else {
            out.error(
                "stop_failed",
                unit,
                &format!("could not stop {unit}: chrony is not restarted while it runs; the services already stopped are started again"),
            );
            stop_failed = true;
            break;
        }
    }

    if !stop_failed {
        let cmd = mgr.command("restart", &cfg.service);
        let result = run(runner, &cmd);
        outcome.skipped = matches!(&result, Ok(r) if r.skipped);
        if !step(out, "restart", &cfg.service, &cmd, &result) {
            let why = match &result {
                Ok(r) => format!("exit {:?}: {}", r.status, r.stderr),
                Err(e) => e.clone(),
            };
            out.error(
                "restart_failed",
                &cfg.service,
                &format!(
                    "restarting {} failed ({why}); the services are started again",
                    cfg.service
                ),
            );
        } else if outcome.skipped {
            let wait = chronyc(cfg, &["tracking"]);
            out.emit(
                "restart_step",
                &Step {
                    step: "wait",
                    target: cfg.service.clone(),
                    argv: wait.argv(),
                    status: None,
                    skipped: true,
                    ok: true,
                    detail: "chrony was not restarted: nothing to wait for".into(),
                },
            );
            outcome.chrony_ok = true;
        } else {
            outcome.chrony_ok = wait_ready(runner, cfg, out, poll);
        }
    }

    for unit in stopped.iter().rev() {
        let cmd = mgr.command("start", unit);
        let result = run(runner, &cmd);
        if !step(out, "start", unit, &cmd, &result) {
            out.error(
                "start_failed",
                unit,
                &format!("could not start {unit} again"),
            );
            outcome.services_ok = false;
        }
    }
    outcome
}

/// Poll `chronyc -c tracking` until chronyd answers, at most
/// `ready_timeout_secs` (no fixed sleep: a fixed sleep is either too long or
/// too short).
fn wait_ready(runner: &dyn Runner, cfg: &ChronyConfig, out: &mut Output, poll: Duration) -> bool {
    let cmd = chronyc(cfg, &["tracking"]);
    let started = Instant::now();
    let deadline = Duration::from_secs(cfg.ready_timeout_secs);
    let mut attempts = 0u32;
    let mut last;
    loop {
        attempts += 1;
        match runner.run(&cmd) {
            Ok(r) if r.success() => {
                out.emit(
                    "restart_step",
                    &Step {
                        step: "wait",
                        target: cfg.service.clone(),
                        argv: cmd.argv(),
                        status: r.status,
                        skipped: false,
                        ok: true,
                        detail: format!(
                            "chronyd answered after {attempts} attempt(s), {} ms",
                            started.elapsed().as_millis()
                        ),
                    },
                );
                return true;
            }
            Ok(r) => last = format!("exit {:?}: {}", r.status, r.stderr),
            Err(e) => last = e.to_string(),
        }
        if started.elapsed() + poll > deadline {
            break;
        }
        std::thread::sleep(poll);
    }
    out.emit(
        "restart_step",
        &Step {
            step: "wait",
            target: cfg.service.clone(),
            argv: cmd.argv(),
            status: None,
            skipped: false,
            ok: false,
            detail: format!("no answer after {attempts} attempt(s): {last}"),
        },
    );
    out.error(
        "not_ready",
        &cfg.service,
        &format!(
            "chronyd did not answer within {} s after its restart",
            cfg.ready_timeout_secs
        ),
    );
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use bs_core::cmd::RecordingRunner;

    fn cfg() -> ChronyConfig {
        ChronyConfig {
            refclock: true,
            dependent_services: vec![
                "bs-jobs-poller.service".into(),
                "bs-jobs-worker.service".into(),
            ],
            ready_timeout_secs: 1,
            ..ChronyConfig::default()
        }
    }

    fn steps(cap: &bs_core::output::Captured) -> Vec<String> {
        cap.records()
            .iter()
            .filter(|r| r["type"] == "restart_step")
            .map(|r| {
                format!(
                    "{} {} {}",
                    r["step"].as_str().unwrap(),
                    r["target"].as_str().unwrap(),
                    r["ok"]
                )
            })
            .collect()
    }

    #[test]
    fn services_stop_in_order_chrony_restarts_and_they_start_in_reverse() {
        let runner = RecordingRunner::new();
        let (mut out, cap) = Output::capture("bs-chrony");
        let outcome = ordered_restart(&runner, &cfg(), &mut out);
        assert!(outcome.chrony_ok && outcome.services_ok);
        assert_eq!(
            runner.ran_lines(),
            vec![
                "systemctl is-active --quiet bs-jobs-poller.service",
                "systemctl stop bs-jobs-poller.service",
                "systemctl is-active --quiet bs-jobs-worker.service",
                "systemctl stop bs-jobs-worker.service",
                "systemctl restart chrony.service",
                "/usr/bin/chronyc -n -c tracking",
                "systemctl start bs-jobs-worker.service",
                "systemctl start bs-jobs-poller.service",
            ]
        );
        assert_eq!(
            steps(&cap),
            vec![
                "stop bs-jobs-poller.service true",
                "stop bs-jobs-worker.service true",
                "restart chrony.service true",
                "wait chrony.service true",
                "start bs-jobs-worker.service true",
                "start bs-jobs-poller.service true",
            ]
        );
    }

    #[test]
    fn a_failed_chrony_restart_still_starts_the_services_and_is_reported() {
        let runner = RecordingRunner::new();
        runner.answer("restart chrony", 1, "", "Job for chrony.service failed");
        let (mut out, cap) = Output::capture("bs-chrony");
        let outcome = ordered_restart(&runner, &cfg(), &mut out);
        assert!(!outcome.chrony_ok);
        assert!(outcome.services_ok);
        let lines = runner.ran_lines();
        assert_eq!(
            &lines[lines.len() - 2..],
            [
                "systemctl start bs-jobs-worker.service",
                "systemctl start bs-jobs-poller.service"
            ]
        );
        assert!(
            !lines.iter().any(|l| l.contains("chronyc")),
            "no wait after a failed restart"
        );
        let errors: Vec<_> = cap
            .records()
            .into_iter()
            .filter(|r| r["type"] == "error")
            .collect();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0]["kind"], "restart_failed");
        assert!(errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("Job for chrony.service failed"));
    }

    #[test]
    fn chronyd_that_never_answers_ends_the_wait_at_its_bound_and_services_still_start() {
        let runner = RecordingRunner::new();
        for _ in 0..100 {
            runner.answer("tracking", 1, "", "506 Cannot talk to daemon");
        }
        let (mut out, cap) = Output::capture("bs-chrony");
        let started = Instant::now();
        let outcome = ordered_restart_with(&runner, &cfg(), &mut out, Duration::from_millis(50));
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(!outcome.chrony_ok && outcome.services_ok);
        assert!(
            runner
                .ran_lines()
                .iter()
                .filter(|l| l.contains("tracking"))
                .count()
                >= 5
        );
        assert!(steps(&cap).contains(&"wait chrony.service false".to_string()));
        assert!(cap.records().iter().any(|r| r["kind"] == "not_ready"));
        assert_eq!(
            runner.ran_lines().last().unwrap(),
            "systemctl start bs-jobs-poller.service"
        );
    }

    #[test]
    fn a_failed_stop_skips_the_restart_and_restarts_what_was_stopped() {
        let runner = RecordingRunner::new();
        runner.answer("stop bs-jobs-worker", 1, "", "timeout");
        let (mut out, cap) = Output::capture("bs-chrony");
        let outcome = ordered_restart(&runner, &cfg(), &mut out);
        assert!(!outcome.chrony_ok);
        let lines = runner.ran_lines();
        assert!(!lines.iter().any(|l| l.contains("restart")));
        assert_eq!(
            lines.last().unwrap(),
            "systemctl start bs-jobs-poller.service"
        );
        assert!(!lines.contains(&"systemctl start bs-jobs-worker.service".to_string()));
        assert!(cap.records().iter().any(|r| r["kind"] == "stop_failed"));
    }

    #[test]
    fn a_service_that_is_not_running_is_neither_stopped_nor_started() {
        let runner = RecordingRunner::new();
        runner.answer("is-active --quiet bs-jobs-poller", 3, "", "");
        let (mut out, _cap) = Output::capture("bs-chrony");
        ordered_restart(&runner, &cfg(), &mut out);
        let lines = runner.ran_lines();
        assert!(!lines
            .iter()
            .any(|l| l.contains("stop bs-jobs-poller") || l.contains("start bs-jobs-poller")));
        assert!(lines.contains(&"systemctl start bs-jobs-worker.service".to_string()));
    }

    #[test]
    fn a_failed_start_is_reported_and_the_other_services_still_start() {
        let runner = RecordingRunner::new();
        runner.answer("start bs-jobs-worker", 1, "", "");
        let (mut out, cap) = Output::capture("bs-chrony");
        let outcome = ordered_restart(&runner, &cfg(), &mut out);
        assert!(outcome.chrony_ok && !outcome.services_ok);
        assert_eq!(
            runner.ran_lines().last().unwrap(),
            "systemctl start bs-jobs-poller.service"
        );
        assert!(cap
            .records()
            .iter()
            .any(|r| r["kind"] == "start_failed" && r["target"] == "bs-jobs-worker.service"));
    }

    #[test]
    fn systemd_as_manager_on_a_live_host_without_systemd_drives_nothing() {
        let c = cfg();
        let why = cannot_drive_services(&c, true, false).unwrap();
        assert!(why.contains("service_manager = \"commands\""), "{why}");
        assert!(why.contains("bs-jobs-poller.service"), "{why}");
        assert_eq!(
            cannot_drive_services(&c, true, true),
            None,
            "systemd is the init"
        );
        assert_eq!(
            cannot_drive_services(&c, false, false),
            None,
            "a sandbox root skips every command"
        );
        let mut commands = cfg();
        commands.service_manager = bs_core::config::ServiceManagerKind::Commands;
        assert_eq!(
            cannot_drive_services(&commands, true, false),
            None,
            "configured commands need no systemd"
        );
    }

    #[test]
    fn configured_commands_replace_systemctl() {
        let mut c = cfg();
        c.service_manager = ServiceManagerKind::Commands;
        for verb in ["start", "stop", "restart"] {
            c.service_commands.insert(
                verb.into(),
                vec![
                    "/usr/local/sbin/svc".into(),
                    verb.into(),
                    "{service}".into(),
                ],
            );
        }
        c.chronyc_host = "/run/chrony/chronyd.sock".into();
        let runner = RecordingRunner::new();
        let (mut out, _cap) = Output::capture("bs-chrony");
        ordered_restart(&runner, &c, &mut out);
        assert_eq!(
            runner.ran_lines(),
            vec![
                "/usr/local/sbin/svc stop bs-jobs-poller.service",
                "/usr/local/sbin/svc stop bs-jobs-worker.service",
                "/usr/local/sbin/svc restart chrony.service",
                "/usr/bin/chronyc -h /run/chrony/chronyd.sock -n -c tracking",
                "/usr/local/sbin/svc start bs-jobs-worker.service",
                "/usr/local/sbin/svc start bs-jobs-poller.service",
            ]
        );
    }
}
