//! `status` and `check` against a real chronyd started by the test: `-x`
//! (the clock is never touched), its own config, command socket and files
//! in a temp dir. A `refclock SOCK ... refid PHC0` fed by the test stands in
//! for the Hyper-V PTP clock, so the selected-refclock path is real too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;

fn selected(_: &str, sources: &str) -> bool {
    sources.lines().any(|l| l.starts_with("#,*,PHC0,"))
}

/// A sandbox for the tpp backend whose refclock line is the test's SOCK
/// refclock and whose chronyc talks to the test's chronyd; applied, so only
/// the clock is left for `check` to judge.
fn sandbox_for(chronyd: &Chronyd, refclock: bool) -> Sandbox {
    let sb = Sandbox::new(DEBIAN_CONF);
    sb.hyperv_clock(true);
    sb.local_toml(&format!(
        "[chrony]\nrefclock = {refclock}\nchronyc_host = \"{}\"\nrefclock_line = \"refclock SOCK {} refid PHC0 poll 0 dpoll -2\"\n",
        chronyd.socket(),
        chronyd.refclock_socket()
    ));
    let (code, recs) = sb.run("tpp", &["apply"]);
    assert_eq!(code, 0, "{recs:#?}");
    sb
}

fn clock(recs: &[serde_json::Value]) -> &serde_json::Value {
    let c = of_type(recs, "clock");
    assert_eq!(c.len(), 1, "{recs:#?}");
    c[0]
}

#[test]
fn status_parses_real_chronyc_output_of_a_local_reference() {
    let chronyd = Chronyd::start("local stratum 3");
    let sb = Sandbox::new(DEBIAN_CONF);
    sb.local_toml(&format!(
        "[chrony]\nchronyc_host = \"{}\"\n",
        chronyd.socket()
    ));
    let (code, recs) = sb.run("test", &["status"]);
    assert_eq!(code, 0, "{recs:#?}");
    let c = clock(&recs);
    assert_eq!(c["reference_id"], "7F7F0101");
    assert_eq!(c["stratum"], 3);
    assert_eq!(c["leap_status"], "Normal");
    assert_eq!(c["synchronised"], true);
    assert_eq!(c["selected_source"], serde_json::Value::Null);
    assert_eq!(c["system_time_offset_secs"], 0.0);
    for key in [
        "last_offset_secs",
        "rms_offset_secs",
        "frequency_ppm",
        "skew_ppm",
        "root_delay_secs",
        "root_dispersion_secs",
    ] {
        assert!(c[key].is_f64(), "{key}: {c}");
    }
    assert!(of_type(&recs, "source").is_empty());
}

#[test]
fn check_passes_with_the_refclock_selected_and_within_the_bound() {
    let mut chronyd = start_with_refclock();
    chronyd.feed(0.0);
    chronyd.wait_until(Duration::from_secs(20), selected);
    let sb = sandbox_for(&chronyd, true);
    let (code, recs) = sb.run("tpp", &["check"]);
    assert_eq!(code, 0, "{recs:#?}");
    let c = clock(&recs);
    assert_eq!(c["refclock_selected"], true);
    assert_eq!(c["selected_source"], "PHC0");
    assert_eq!(c["reference_name"], "PHC0");
    assert_eq!(c["stratum"], 1);
    assert_eq!(c["problems"], serde_json::json!([]));
    let sources = of_type(&recs, "source");
    assert_eq!(
        (sources[0]["mode"].as_str(), sources[0]["state"].as_str()),
        (Some("#"), Some("*"))
    );
}

#[test]
fn check_exits_3_when_the_offset_is_above_the_bound() {
    let mut chronyd = start_with_refclock();
    chronyd.feed(0.3);
    chronyd.wait_until(Duration::from_secs(20), |t, s| {
        selected(t, s) && t.split(',').nth(4).is_some_and(|o| o.starts_with("0.3"))
    });
    let sb = sandbox_for(&chronyd, true);
    let (code, recs) = sb.run("tpp", &["check"]);
    assert_eq!(code, 3, "{recs:#?}");
    let c = clock(&recs);
    assert!((c["system_time_offset_secs"].as_f64().unwrap() - 0.3).abs() < 0.01);
    assert_eq!(c["refclock_selected"], true);
    let problems = c["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1);
    assert!(problems[0]
        .as_str()
        .unwrap()
        .contains("more than the bound of 0.1 s"));
    // A wider bound from the host's local.toml makes the same clock fine.
    let local = sb.read("/etc/bs/local.toml").unwrap() + "max_offset_secs = 0.5\n";
    sb.local_toml(&local);
    assert_eq!(sb.run("tpp", &["check"]).0, 0);
}

#[test]
fn check_exits_3_when_the_refclock_is_configured_but_not_selected() {
    // No samples: PHC0 stays unreachable and the local reference wins.
    let chronyd = start_with_refclock();
    chronyd.wait_until(Duration::from_secs(10), |_, s| s.starts_with("#,?,PHC0,"));
    let sb = sandbox_for(&chronyd, true);
    let (code, recs) = sb.run("tpp", &["check"]);
    assert_eq!(code, 3, "{recs:#?}");
    let c = clock(&recs);
    assert_eq!(c["synchronised"], true);
    assert_eq!(c["refclock_selected"], false);
    assert!(c["problems"][0]
        .as_str()
        .unwrap()
        .contains("refclock PHC0 is configured but not the selected source"));
    // The same clock is healthy for a backend that wants no refclock.
    let sb = sandbox_for(&chronyd, false);
    assert_eq!(sb.run("tpp", &["check"]).0, 0);
}

#[test]
fn check_exits_3_when_chronyd_is_not_synchronised() {
    let chronyd = Chronyd::start("");
    let sb = Sandbox::new(DEBIAN_CONF);
    // The test backend leaves the clock alone; this host asks for it.
    sb.local_toml(&format!(
        "[chrony]\ncheck_clock = true\nchronyc_host = \"{}\"\n",
        chronyd.socket()
    ));
    let (code, recs) = sb.run("test", &["check"]);
    assert_eq!(code, 3, "{recs:#?}");
    let c = clock(&recs);
    assert_eq!(c["leap_status"], "Not synchronised");
    assert_eq!(c["synchronised"], false);
}

#[test]
fn check_clock_off_skips_the_clock_but_still_checks_the_config() {
    let chronyd = Chronyd::start("");
    let sb = Sandbox::new(DEBIAN_CONF);
    sb.local_toml(&format!(
        "[chrony]\ncheck_clock = false\nchronyc_host = \"{}\"\n",
        chronyd.socket()
    ));
    let (code, recs) = sb.run("test", &["check"]);
    assert_eq!(code, 0, "{recs:#?}");
    assert!(
        recs.iter().any(|r| r["type"] == "clock_skipped"),
        "{recs:#?}"
    );
    assert!(recs.iter().any(|r| r["type"] == "chrony_conf"), "{recs:#?}");
}

#[test]
fn a_chronyd_that_does_not_answer_is_an_error_not_a_healthy_clock() {
    let chronyd = Chronyd::start("local stratum 3");
    let sb = Sandbox::new(DEBIAN_CONF);
    sb.local_toml(&format!(
        "[chrony]\ncheck_clock = true\nchronyc_host = \"{}/gone.sock\"\n",
        chronyd.dir.path().display()
    ));
    let (code, recs) = sb.run("test", &["check"]);
    assert_eq!(code, 1, "{recs:#?}");
    assert_eq!(error_kinds(&recs), vec!["chronyc_failed"]);
    assert!(of_type(&recs, "clock").is_empty());
}

/// chronyd with `local stratum 3` and a SOCK refclock named PHC0 in its dir.
fn start_with_refclock() -> Chronyd {
    Chronyd::start_with(|dir| {
        format!("local stratum 3\nrefclock SOCK {dir}/refclock.sock refid PHC0 poll 0 dpoll -2")
    })
}
