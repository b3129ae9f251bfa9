#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! bs-host against a sandbox root: the plan comes from the root's own dpkg
//! database, apt and dpkg are skipped and reported (never run on the machine
//! running the test), files are written under the root and a second apply
//! changes no file.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Sandbox {
    dir: tempfile::TempDir,
}

struct Run {
    code: i32,
    records: Vec<Value>,
}

impl Run {
    fn find(&self, t: &str, target: &str) -> &Value {
        self.records
            .iter()
            .find(|r| r["type"] == t && r["target"] == target)
            .unwrap_or_else(|| panic!("no {t} record for {target}: {:#?}", self.records))
    }
    fn summary(&self) -> &Value {
        self.records.last().unwrap()
    }
}

const STATUS: &str = "Package: curl\nStatus: install ok installed\nVersion: 7.88\n\n\
Package: docker.io\nStatus: install ok installed\nVersion: 20.10\n\n\
Package: apport\nStatus: install ok installed\nVersion: 2.20\n\n\
Package: bolt\nStatus: deinstall ok config-files\nVersion: 0.9\n";

const LOCAL: &str = r#"
[host]
packages = ["curl", "unattended-upgrades"]
purge = ["apport", "bolt", "fwupd"]
hold = ["docker.io"]
motd_silence = ["50-motd-news", "10-help-text"]
disable_services = ["rsync.service"]
"#;

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let sb = Sandbox { dir };
        sb.write("/var/lib/dpkg/status", STATUS);
        sb.write("/etc/bs/local.toml", LOCAL);
        sb.write("/etc/hosts", "127.0.0.1\tlocalhost\n");
        sb.write("/etc/update-motd.d/50-motd-news", "#!/bin/sh\necho news\n");
        std::fs::set_permissions(
            sb.p("/etc/update-motd.d/50-motd-news"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::fs::create_dir_all(sb.p("/etc/systemd/system/multi-user.target.wants")).unwrap();
        std::os::unix::fs::symlink(
            "/lib/systemd/system/rsync.service",
            sb.p("/etc/systemd/system/multi-user.target.wants/rsync.service"),
        )
        .unwrap();
        sb
    }

    fn p(&self, system: &str) -> PathBuf {
        self.dir.path().join(system.trim_start_matches('/'))
    }

    fn write(&self, system: &str, text: &str) {
        let p = self.p(system);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn run(&self, args: &[&str]) -> Run {
        let out = assert_cmd::Command::cargo_bin("bs-host")
            .unwrap()
            .args(["--root", self.dir.path().to_str().unwrap()])
            .args(["--repo", repo().to_str().unwrap(), "--backend", "test"])
            .args(args)
            .output()
            .unwrap();
        let records = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        Run {
            code: out.status.code().unwrap_or(-1),
            records,
        }
    }
}

#[test]
fn the_plan_comes_from_the_roots_dpkg_database() {
    let sb = Sandbox::new();
    let plan = sb.run(&["plan"]);
    assert_eq!(plan.code, 0, "{:#?}", plan.records);
    assert_eq!(plan.find("package", "curl")["changed"], false);
    let uu = plan.find("package", "unattended-upgrades");
    assert_eq!(
        (uu["action"].as_str(), uu["changed"].as_bool()),
        (Some("install"), Some(true))
    );
    assert_eq!(
        plan.find("package", "apport")["changed"],
        true,
        "installed: purge"
    );
    assert_eq!(
        plan.find("package", "bolt")["changed"],
        true,
        "config files left: purge"
    );
    assert_eq!(
        plan.find("package", "fwupd")["changed"],
        false,
        "absent: nothing to purge"
    );
    let hold = plan.find("package", "docker.io");
    assert_eq!(
        (hold["action"].as_str(), hold["changed"].as_bool()),
        (Some("hold"), Some(true))
    );
    assert_eq!(plan.find("service", "rsync.service")["changed"], true);
    assert_eq!(
        plan.find("motd_script", "/etc/update-motd.d/50-motd-news")["changed"],
        true
    );
    assert_eq!(
        plan.find("motd_script", "/etc/update-motd.d/10-help-text")["changed"],
        false
    );
    assert!(
        !plan.records.iter().any(|r| r["type"] == "command"),
        "plan runs nothing"
    );
    assert_eq!(
        std::fs::read_to_string(sb.p("/etc/hosts")).unwrap(),
        "127.0.0.1\tlocalhost\n",
        "plan writes nothing"
    );
}

#[test]
fn apply_skips_apt_writes_the_files_and_a_second_apply_changes_no_file() {
    let sb = Sandbox::new();
    let apply = sb.run(&["apply"]);
    assert_eq!(apply.code, 0, "{:#?}", apply.records);
    let commands: Vec<&Value> = apply
        .records
        .iter()
        .filter(|r| r["type"] == "command")
        .collect();
    assert!(!commands.is_empty());
    for c in &commands {
        assert_eq!(
            c["skipped"], true,
            "apt never runs under a sandbox root: {c}"
        );
    }
    assert!(commands.iter().any(|c| c["argv"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "--no-install-recommends")));
    let hosts = std::fs::read_to_string(sb.p("/etc/hosts")).unwrap();
    assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"), "{hosts}");
    assert!(hosts.contains("192.0.2.10\tdb.test.invalid\n"), "{hosts}");
    assert!(hosts.contains("release.opensafely.org"), "{hosts}");
    let profile = std::fs::read_to_string(sb.p("/etc/profile.d/bs-backend.sh")).unwrap();
    assert!(profile.contains("BACKEND=test\nexport BACKEND\n"));
    let banner = sb.p("/etc/update-motd.d/00-bs-banner");
    let out = std::process::Command::new("sh")
        .arg(&banner)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("This is the TEST OpenSAFELY backend"));
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&sb.p("/etc/update-motd.d/50-motd-news")), 0o644);
    assert!(std::fs::symlink_metadata(
        sb.p("/etc/systemd/system/multi-user.target.wants/rsync.service")
    )
    .is_err());
    let uu = std::fs::read_to_string(sb.p("/etc/apt/apt.conf.d/51bs-unattended-upgrades")).unwrap();
    assert!(uu.contains("\"^docker[.]io$\";"), "{uu}");

    let again = sb.run(&["apply"]);
    let file_changes: Vec<&Value> = again
        .records
        .iter()
        .filter(|r| r["changed"] == true && r["type"] != "package")
        .collect();
    assert!(file_changes.is_empty(), "{file_changes:#?}");
    // The packages still differ (apt was skipped): check says so.
    let check = sb.run(&["check"]);
    assert_eq!(check.code, 3);
    assert_eq!(check.summary()["changed"], 4, "{:#?}", check.records);
}

#[test]
fn apply_plan_makes_only_the_given_changes() {
    let sb = Sandbox::new();
    let plan = sb.run(&["plan"]);
    let hosts_only: String = plan
        .records
        .iter()
        .filter(|r| r["target"] == "/etc/hosts")
        .map(|r| format!("{r}\n"))
        .collect();
    let file = sb.dir.path().join("plan.jsonl");
    std::fs::write(&file, hosts_only).unwrap();
    let apply = sb.run(&["apply", "--plan", file.to_str().unwrap()]);
    assert_eq!(apply.code, 0, "{:#?}", apply.records);
    assert!(std::fs::read_to_string(sb.p("/etc/hosts"))
        .unwrap()
        .contains("db.test.invalid"));
    assert!(
        !sb.p("/etc/profile.d/bs-backend.sh").exists(),
        "not in the plan"
    );
    assert!(!apply.records.iter().any(|r| r["type"] == "command"));
}

#[test]
fn a_hosts_block_without_its_end_is_refused_and_the_rest_converges() {
    let sb = Sandbox::new();
    sb.write(
        "/etc/hosts",
        "127.0.0.1 localhost\n# BEGIN bs-host managed hosts: edits inside this block are overwritten\n10.1.1.1 mine\n",
    );
    let apply = sb.run(&["apply"]);
    assert_eq!(apply.code, 1);
    let err = apply.find("error", "/etc/hosts");
    assert_eq!(err["kind"], "hosts_block");
    assert!(std::fs::read_to_string(sb.p("/etc/hosts"))
        .unwrap()
        .contains("10.1.1.1 mine"));
    assert!(
        sb.p("/etc/profile.d/bs-backend.sh").exists(),
        "the other items converged"
    );
}

#[test]
fn whereami_names_the_backend() {
    let sb = Sandbox::new();
    let run = sb.run(&["whereami"]);
    assert_eq!(run.code, 0);
    let rec = run.find("whereami", "test");
    assert_eq!(rec["backend"], "test");
}

#[test]
fn a_bad_package_name_is_a_config_error_and_nothing_changes() {
    let sb = Sandbox::new();
    sb.write(
        "/etc/bs/local.toml",
        "[host]\npackages = [\"-oAPT::Foo=1\"]\n",
    );
    let run = sb.run(&["apply"]);
    assert_eq!(run.code, 2, "{:#?}", run.records);
    assert!(!sb.p("/etc/profile.d/bs-backend.sh").exists());
}

#[test]
fn status_reports_the_configured_packages_services_and_hosts_block() {
    let sb = Sandbox::new();
    let run = sb.run(&["status"]);
    assert_eq!(run.code, 0, "{:#?}", run.records);
    let docker = run.find("package", "docker.io");
    assert_eq!(
        (docker["installed"].as_bool(), docker["held"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(run.find("package", "fwupd")["installed"], false);
    assert_eq!(run.find("service", "rsync.service")["enabled"], true);
    assert_eq!(run.find("hosts", "/etc/hosts")["block"], false);
    assert!(!run
        .records
        .iter()
        .any(|r| r.get("changed").is_some() && r["type"] != "summary"));
}
