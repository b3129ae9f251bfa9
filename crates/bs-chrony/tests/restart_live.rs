//! The restart bookkeeping of a live root, driven through the library with
//! a runner that records service commands (and can fail them) while the
//! real chronyd still validates the config.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bs_chrony::{converge, Ctx, PENDING};
use bs_core::cmd::{Cmd, Ran, RecordingRunner, Runner, SystemRunner};
use bs_core::config::{Config, Source};
use bs_core::plan::Mode;
use bs_core::{Output, Root};
use common::*;

/// chronyd -p runs for real; everything else is recorded and scripted.
struct Mixed {
    real: SystemRunner,
    rec: RecordingRunner,
}

impl Runner for Mixed {
    fn run(&self, cmd: &Cmd) -> bs_core::error::Result<Ran> {
        if cmd.program.ends_with("chronyd") {
            self.real.run(cmd)
        } else {
            self.rec.run(cmd)
        }
    }
}

/// A tpp sandbox with the device, its config, and a mixed runner whose
/// timesyncd answer is `timesyncd`.
fn setup(timesyncd: &str) -> (Sandbox, Root, Config, Mixed) {
    let sb = Sandbox::new(DEBIAN_CONF);
    sb.hyperv_clock(true);
    let root = Root::new(sb.dir.path()).unwrap();
    let source = Source {
        repo: repo(),
        backend: "tpp".into(),
    };
    let config = Config::load(&source, &root).unwrap();
    let runner = Mixed {
        real: SystemRunner::new(&root),
        rec: RecordingRunner::new(),
    };
    runner.rec.answer(
        "is-active systemd-timesyncd",
        i32::from(timesyncd != "active") * 3,
        timesyncd,
        "",
    );
    (sb, root, config, runner)
}

/// The service commands that ran (the timesyncd query aside).
fn service_commands(runner: &Mixed) -> Vec<String> {
    runner
        .rec
        .ran_lines()
        .into_iter()
        .filter(|l| !l.contains("timesyncd"))
        .collect()
}

/// One converge on a root treated as live; its records.
fn converge_live(
    root: &Root,
    config: &Config,
    runner: &Mixed,
    mode: Mode,
) -> Vec<serde_json::Value> {
    // The recording runner plays systemd, whatever this machine's init.
    converge_live_on(root, config, runner, mode, true)
}

fn converge_live_on(
    root: &Root,
    config: &Config,
    runner: &Mixed,
    mode: Mode,
    systemd_is_init: bool,
) -> Vec<serde_json::Value> {
    let ctx = Ctx {
        root,
        cfg: &config.chrony,
        runner,
        live: true,
        systemd_is_init,
    };
    let (mut out, cap) = Output::capture("bs-chrony");
    out.set_mode(mode);
    converge(&ctx, mode, None, &mut out).unwrap();
    cap.records()
}

#[test]
fn a_failed_restart_is_retried_by_the_next_run_and_services_always_come_back() {
    let (sb, root, config, runner) = setup("inactive\n");
    runner.rec.answer(
        "restart chrony.service",
        1,
        "",
        "Job for chrony.service failed.",
    );

    // First run: the config goes live, chrony's restart fails.
    let recs = converge_live(&root, &config, &runner, Mode::Apply);
    assert_eq!(error_kinds(&recs), vec!["restart_failed"], "{recs:#?}");
    assert!(sb.read("/etc/chrony/conf.d/bs-hyperv-ptp.conf").is_some());
    assert!(sb.path(PENDING).exists(), "the restart is still owed");
    let services = service_commands(&runner);
    assert_eq!(
        services,
        vec![
            "systemctl is-active --quiet bs-jobs-poller.service",
            "systemctl stop bs-jobs-poller.service",
            "systemctl is-active --quiet bs-jobs-worker.service",
            "systemctl stop bs-jobs-worker.service",
            "systemctl restart chrony.service",
            "systemctl start bs-jobs-worker.service",
            "systemctl start bs-jobs-poller.service",
        ]
    );
    assert_eq!(of_type(&recs, "restart")[0]["ok"], false);

    // Second run: the files are right, but the restart is still owed.
    runner
        .rec
        .answer("is-active systemd-timesyncd", 3, "inactive\n", "");
    let recs = converge_live(&root, &config, &runner, Mode::Apply);
    assert!(error_kinds(&recs).is_empty(), "{recs:#?}");
    assert!(of_type(&recs, "chrony_conf")
        .iter()
        .all(|r| r["changed"] == false));
    let restart = of_type(&recs, "restart");
    assert_eq!(
        restart[0]["reason"],
        "an earlier run changed the config but did not restart chrony"
    );
    assert_eq!(restart[0]["ok"], true);
    assert!(!sb.path(PENDING).exists());
    assert!(
        runner
            .rec
            .ran_lines()
            .iter()
            .any(|l| l.ends_with("-n -c tracking")),
        "waited for chronyd"
    );

    // Third run: nothing to do.
    runner
        .rec
        .answer("is-active systemd-timesyncd", 3, "inactive\n", "");
    assert!(of_type(
        &converge_live(&root, &config, &runner, Mode::Apply),
        "restart"
    )
    .is_empty());
}

#[test]
fn an_active_timesyncd_on_a_live_host_is_reported() {
    let (_sb, root, config, runner) = setup("active\n");
    let recs = converge_live(&root, &config, &runner, Mode::Plan);
    let pkg = of_type(&recs, "package");
    assert_eq!(pkg[1]["target"], "systemd-timesyncd");
    assert_eq!(pkg[1]["state"], "active");
    assert_eq!(error_kinds(&recs), vec!["timesyncd_active"]);
}

#[test]
fn without_systemd_as_init_no_service_is_touched_and_the_restart_stays_owed() {
    let (sb, root, config, runner) = setup("inactive\n");
    let recs = converge_live_on(&root, &config, &runner, Mode::Apply, false);
    assert_eq!(error_kinds(&recs), vec!["no_systemd"], "{recs:#?}");
    assert!(sb.read("/etc/chrony/conf.d/bs-hyperv-ptp.conf").is_some());
    assert!(sb.path(PENDING).exists(), "the restart is still owed");
    let services = service_commands(&runner);
    assert_eq!(services, Vec::<String>::new(), "no service command ran");
    assert!(of_type(&recs, "restart_step").is_empty());
}
