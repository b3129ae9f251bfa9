//! `bs-chrony plan|apply` against sandbox roots, with the host's real
//! chronyd validating every config (`chronyd -p`, parse only).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

const DROPIN: &str = "/etc/chrony/conf.d/bs-hyperv-ptp.conf";
const CONF: &str = "/etc/chrony/chrony.conf";

#[test]
fn refclock_wanted_without_the_device_is_an_error_and_nothing_changes() {
    let sb = Sandbox::new(DEBIAN_CONF);
    // A PTP clock that is not Hyper-V's does not count.
    sb.write("/sys/class/ptp/ptp0/clock_name", "KVM virtual PTP\n");
    let (code, recs) = sb.run("tpp", &["apply"]);
    assert_eq!(code, 1, "{recs:#?}");
    assert_eq!(error_kinds(&recs), vec!["device_missing"]);
    assert_eq!(of_type(&recs, "device")[0]["found"], false);
    assert_eq!(summary(&recs)["changed"], 0);
    assert_eq!(sb.read(CONF).unwrap(), DEBIAN_CONF);
    assert!(sb.read(DROPIN).is_none());
    assert!(of_type(&recs, "restart_step").is_empty());
}

#[test]
fn debian_config_gets_the_dropin_and_a_second_apply_changes_nothing() {
    let sb = Sandbox::new(DEBIAN_CONF);
    sb.hyperv_clock(false); // sysfs only: found through clock_name
    let (code, recs) = sb.run("tpp", &["apply"]);
    assert_eq!(code, 0, "{recs:#?}");
    let dev = of_type(&recs, "device")[0];
    assert_eq!(
        (dev["found"].as_bool(), dev["device_present"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(dev["hyperv_clocks"], serde_json::json!(["ptp0"]));

    let dropin = sb.read(DROPIN).unwrap();
    assert!(dropin.contains(
        "\nrefclock PHC /dev/ptp_hyperv poll 3 dpoll -2 offset 0 stratum 2\nmakestep 1.0 -1\n"
    ));
    let conf = sb.read(CONF).unwrap();
    assert!(
        conf.contains("\n#bs-chrony-disabled: makestep 1 3\n"),
        "Debian's later makestep would override ours"
    );
    assert!(!conf.contains("BEGIN bs-chrony"));
    let writes: Vec<_> = of_type(&recs, "chrony_conf")
        .iter()
        .map(|r| {
            (
                r["target"].as_str().unwrap(),
                r["placement"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(writes, vec![(DROPIN, "dropin"), (CONF, "dropin")]);
    // Sandbox: the restart is reported, its steps skipped, in order.
    let steps: Vec<_> = of_type(&recs, "restart_step")
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["step"].as_str().unwrap(),
                r["target"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        steps,
        vec![
            "stop bs-jobs-poller.service",
            "stop bs-jobs-worker.service",
            "restart chrony.service",
            "wait chrony.service",
            "start bs-jobs-worker.service",
            "start bs-jobs-poller.service"
        ]
    );
    assert!(of_type(&recs, "restart_step")
        .iter()
        .all(|r| r["skipped"] == true));

    let (code, recs) = sb.run("tpp", &["apply"]);
    assert_eq!(code, 0);
    assert_eq!(summary(&recs)["changed"], 0, "{recs:#?}");
    assert_eq!(summary(&recs)["unchanged"], 2);
    assert!(
        of_type(&recs, "restart").is_empty(),
        "no restart without a change"
    );
    assert_eq!(sb.read(DROPIN).unwrap(), dropin);
}

#[test]
fn without_confdir_the_directives_go_in_a_marked_block_once() {
    let plain =
        "pool 2.debian.pool.ntp.org iburst\nmakestep 1 3\ndriftfile /var/lib/chrony/chrony.drift\n";
    let sb = Sandbox::new(plain);
    sb.hyperv_clock(true);
    let (code, recs) = sb.run("tpp", &["apply"]);
    assert_eq!(code, 0, "{recs:#?}");
    let conf = sb.read(CONF).unwrap();
    assert!(
        conf.starts_with(plain),
        "the operator's lines stay as they were"
    );
    assert!(conf.ends_with("refclock PHC /dev/ptp_hyperv poll 3 dpoll -2 offset 0 stratum 2\nmakestep 1.0 -1\n# END bs-chrony\n"));
    assert_eq!(conf.matches("# BEGIN bs-chrony").count(), 1);
    assert!(sb.read(DROPIN).is_none());
    let (_, recs) = sb.run("tpp", &["apply"]);
    assert_eq!(summary(&recs)["changed"], 0);
    assert_eq!(sb.read(CONF).unwrap(), conf);
}

#[test]
fn a_config_chronyd_rejects_is_not_installed_and_the_old_one_stays() {
    let sb = Sandbox::new(DEBIAN_CONF);
    sb.hyperv_clock(true);
    assert_eq!(sb.run("tpp", &["apply"]).0, 0);
    let (good_dropin, good_conf) = (sb.read(DROPIN).unwrap(), sb.read(CONF).unwrap());

    sb.local_toml(
        "[chrony]\nrefclock_line = \"refclock PHC /dev/ptp_hyperv poll 3 frobnicate 2\"\n",
    );
    let (code, recs) = sb.run("tpp", &["apply"]);
    assert_eq!(code, 1, "{recs:#?}");
    assert_eq!(error_kinds(&recs), vec!["config_invalid"]);
    let msg = of_type(&recs, "error")[0]["message"].as_str().unwrap();
    assert!(
        msg.contains(
            "Invalid refclock option at line 3 in file /etc/chrony/conf.d/bs-hyperv-ptp.conf"
        ),
        "{msg}"
    );
    assert_eq!(sb.read(DROPIN).unwrap(), good_dropin);
    assert_eq!(sb.read(CONF).unwrap(), good_conf);
    assert!(of_type(&recs, "restart").is_empty());
}

#[test]
fn a_broken_neighbour_in_conf_d_fails_validation_too() {
    // The whole resulting config is checked, not just our file.
    let sb = Sandbox::new(DEBIAN_CONF);
    sb.hyperv_clock(true);
    sb.write("/etc/chrony/conf.d/other.conf", "makesteppp 1 1\n");
    let (code, recs) = sb.run("tpp", &["apply"]);
    assert_eq!(code, 1);
    assert_eq!(error_kinds(&recs), vec!["config_invalid"]);
    assert!(sb.read(DROPIN).is_none());
    assert_eq!(sb.read(CONF).unwrap(), DEBIAN_CONF);
}

#[test]
fn a_later_makestep_in_conf_d_is_reported() {
    let sb = Sandbox::new(DEBIAN_CONF);
    sb.hyperv_clock(true);
    sb.write("/etc/chrony/conf.d/zz-site.conf", "makestep 0.5 3\n");
    let (code, recs) = sb.run("tpp", &["apply"]);
    assert_eq!(code, 1, "{recs:#?}");
    assert_eq!(error_kinds(&recs), vec!["effective_config"]);
    assert!(of_type(&recs, "error")[0]["message"]
        .as_str()
        .unwrap()
        .contains("`makestep 0.5 3` is read after"));
    assert!(
        sb.read(DROPIN).is_some(),
        "the refclock itself is still installed"
    );
}

#[test]
fn turning_the_refclock_off_removes_ours_and_restores_chrony_conf() {
    let sb = Sandbox::new(DEBIAN_CONF);
    sb.hyperv_clock(true);
    assert_eq!(sb.run("tpp", &["apply"]).0, 0);
    sb.local_toml("[chrony]\nrefclock = false\n");
    let (code, recs) = sb.run("tpp", &["apply"]);
    assert_eq!(code, 0, "{recs:#?}");
    assert!(sb.read(DROPIN).is_none());
    assert_eq!(sb.read(CONF).unwrap(), DEBIAN_CONF);
    assert_eq!(of_type(&recs, "chrony_conf")[0]["action"], "remove");
    assert_eq!(of_type(&recs, "restart").len(), 1);
}

#[test]
fn apply_plan_applies_the_plan_given_back_and_skips_stale_changes() {
    let sb = Sandbox::new(DEBIAN_CONF);
    sb.hyperv_clock(true);
    let plan = sb.cmd("tpp").arg("plan").output().unwrap();
    assert!(plan.status.success());
    assert!(sb.read(DROPIN).is_none(), "plan changes nothing");
    let recs = parse(&plan.stdout);
    assert_eq!(summary(&recs)["changed"], 3);
    // Keep only the drop-in write: chrony.conf and the restart are left out.
    let only_dropin: String = String::from_utf8_lossy(&plan.stdout)
        .lines()
        .filter(|l| l.contains("bs-hyperv-ptp.conf"))
        .map(|l| format!("{l}\n"))
        .collect();
    let out = sb
        .cmd("tpp")
        .args(["apply", "--plan", "-"])
        .write_stdin(only_dropin)
        .output()
        .unwrap();
    let recs = parse(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{recs:#?}");
    assert!(sb.read(DROPIN).is_some());
    assert_eq!(
        sb.read(CONF).unwrap(),
        DEBIAN_CONF,
        "not in the plan given: not done"
    );
    assert!(of_type(&recs, "restart").is_empty());
    // Given back again, the same plan is stale: nothing is done twice.
    let stale: String = String::from_utf8_lossy(&plan.stdout)
        .lines()
        .filter(|l| l.contains("bs-hyperv-ptp.conf"))
        .collect();
    let out = sb
        .cmd("tpp")
        .args(["apply", "--plan", "-"])
        .write_stdin(stale)
        .output()
        .unwrap();
    let recs = parse(&out.stdout);
    assert_eq!(of_type(&recs, "stale").len(), 1, "{recs:#?}");
    assert_eq!(summary(&recs)["changed"], 0);
}

#[test]
fn a_typo_in_the_chrony_section_stops_with_exit_2() {
    let sb = Sandbox::new(DEBIAN_CONF);
    sb.local_toml("[chrony]\nrefclok = true\n");
    let (code, recs) = sb.run("tpp", &["apply"]);
    assert_eq!(code, 2);
    assert!(of_type(&recs, "error")[0]["message"]
        .as_str()
        .unwrap()
        .contains("refclok"));
    sb.local_toml("[chrony]\nservice_manager = \"commands\"\n");
    let (code, recs) = sb.run("tpp", &["plan"]);
    assert_eq!(code, 2, "{recs:#?}");
    assert!(of_type(&recs, "error")[0]["message"]
        .as_str()
        .unwrap()
        .contains("service_commands"));
    // A PHC line that reads another device than the one detected.
    sb.local_toml("[chrony]\nrefclock_line = \"refclock PHC /dev/ptp1 poll 3\"\n");
    let (code, recs) = sb.run("tpp", &["plan"]);
    assert_eq!(code, 2, "{recs:#?}");
    let msg = of_type(&recs, "error")[0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("chrony.device is /dev/ptp_hyperv"), "{msg}");
}

#[test]
fn the_test_backend_wants_no_refclock_and_changes_nothing() {
    let sb = Sandbox::new(DEBIAN_CONF);
    let (code, recs) = sb.run("test", &["apply"]);
    assert_eq!(code, 0, "{recs:#?}");
    assert_eq!(summary(&recs)["changed"], 0);
    assert_eq!(sb.read(CONF).unwrap(), DEBIAN_CONF);
}

#[test]
fn check_on_a_sandbox_reports_config_drift_and_leaves_the_hosts_clock_alone() {
    let sb = Sandbox::new(DEBIAN_CONF);
    sb.hyperv_clock(true);
    let (code, recs) = sb.run("tpp", &["check"]);
    assert_eq!(code, 3, "{recs:#?}");
    assert_eq!(summary(&recs)["changed"], 3);
    assert_eq!(of_type(&recs, "clock_skipped").len(), 1);
    assert!(sb.read(DROPIN).is_none(), "check changes nothing");
    assert_eq!(sb.run("tpp", &["apply"]).0, 0);
    assert_eq!(sb.run("tpp", &["check"]).0, 0);
}
