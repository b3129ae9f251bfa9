#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! sudoers.d files (visudo before they go live, ledger, removal) and the
//! sshd / login hardening files, against a sandbox root with the real
//! visudo and sshd.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::*;

const RULE_OK: &str = r#"
[[perms.sudoers]]
name = "bs-developers"
principal = "%developers"
run_as = "ALL:ALL"
commands = ["ALL"]
allow_wildcards = true

[[perms.sudoers]]
name = "backup"
principal = "opensafely"
run_as = "root"
nopasswd = true
commands = ["/usr/bin/rsync -a /srv/high_privacy/ /backup/", "/usr/bin/true"]
"#;

#[test]
fn sudoers_files_are_rendered_validated_installed_0440_and_idempotent() {
    let sb = Sandbox::new(RULE_OK);
    let apply = sb.run(&["apply"]);
    assert_eq!(apply.code, 0, "{:?} {}", apply.records, apply.stderr);
    let backup = sb.p("/etc/sudoers.d/backup");
    let text = std::fs::read_to_string(&backup).unwrap();
    assert!(
        text.contains("opensafely ALL=(root) NOPASSWD: /usr/bin/rsync -a /srv/high_privacy/ /backup/, /usr/bin/true \"\"\n"),
        "{text}"
    );
    let meta = std::fs::metadata(&backup).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.permissions().mode() & 0o7777),
        (0, 0, 0o440)
    );
    let defaults = std::fs::read_to_string(sb.p("/etc/sudoers.d/bs-defaults")).unwrap();
    assert!(
        defaults.contains("Defaults use_pty\nDefaults logfile=/var/log/sudo.log\n"),
        "{defaults}"
    );
    let services = std::fs::read_to_string(sb.p("/etc/sudoers.d/bs-services")).unwrap();
    assert!(services.contains("%opensafely ALL=(root) NOPASSWD: /usr/bin/systemctl start bs-jobs-poller.service, /usr/bin/systemctl stop bs-jobs-poller.service,"), "{services}");
    assert!(!services.contains('*'));
    // Every installed file passes visudo as installed.
    for name in ["backup", "bs-defaults", "bs-developers", "bs-services"] {
        let ok = std::process::Command::new("visudo")
            .args(["-c", "-f"])
            .arg(sb.p(&format!("/etc/sudoers.d/{name}")))
            .output()
            .unwrap();
        assert!(ok.status.success(), "{name}: {ok:?}");
    }
    let again = sb.run(&["apply"]);
    assert_eq!(again.summary()["changed"], 0, "{:?}", again.records);
    assert_eq!(sb.run(&["check"]).code, 0);
}

#[test]
fn a_rule_visudo_rejects_is_not_installed_and_the_old_file_stays() {
    let sb = Sandbox::new(RULE_OK);
    assert_eq!(sb.run(&["apply"]).code, 0);
    let backup = sb.p("/etc/sudoers.d/backup");
    let old = std::fs::read(&backup).unwrap();
    // A trailing backslash: our checks let it through, visudo does not.
    sb.set_local(&RULE_OK.replace("/usr/bin/true", "/usr/bin/echo \\\\"));
    let apply = sb.run(&["apply"]);
    assert_eq!(apply.code, 1, "{:?}", apply.records);
    let errs = apply.errors("visudo_rejected");
    assert_eq!(errs.len(), 1, "{:?}", apply.records);
    assert_eq!(errs[0]["target"], "/etc/sudoers.d/backup");
    assert_eq!(std::fs::read(&backup).unwrap(), old, "the old file stays");
    let leftovers: Vec<_> = std::fs::read_dir(sb.p("/etc/sudoers.d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        4,
        "no temp file left in sudoers.d: {leftovers:?}"
    );
    // The other rules were still converged, and the failed one stays ours.
    let ledger = std::fs::read_to_string(sb.p("/var/lib/bs/perms/sudoers.json")).unwrap();
    assert!(ledger.contains("\"backup\""), "{ledger}");
}

#[test]
fn a_file_name_with_a_dot_or_a_wildcard_without_consent_is_a_config_error_and_nothing_changes() {
    for (bad, key) in [
        ("name = \"bs.rules\"\nprincipal = \"opensafely\"\nrun_as = \"root\"\ncommands = [\"/usr/bin/true\"]", "name"),
        ("name = \"rules~\"\nprincipal = \"opensafely\"\nrun_as = \"root\"\ncommands = [\"/usr/bin/true\"]", "name"),
        ("name = \"wild\"\nprincipal = \"opensafely\"\nrun_as = \"root\"\ncommands = [\"/usr/bin/systemctl restart *\"]", "commands"),
        ("name = \"all\"\nprincipal = \"opensafely\"\nrun_as = \"root\"\ncommands = [\"ALL\"]", "commands"),
    ] {
        let sb = Sandbox::new(&format!("[[perms.sudoers]]\n{bad}\n"));
        let run = sb.run(&["apply"]);
        assert_eq!(run.code, 2, "{bad}: {:?}", run.records);
        let err = &run.records[0];
        assert_eq!(err["kind"], "config");
        assert!(err["message"].as_str().unwrap().contains(&format!("perms.sudoers[0].{key}")), "{err}");
        assert!(!sb.p("/etc/sudoers.d").exists());
        assert!(!sb.p("/srv").exists(), "nothing changed");
    }
}

#[test]
fn a_rule_dropped_from_the_config_is_removed_and_files_bs_did_not_install_are_kept() {
    let sb = Sandbox::new(RULE_OK);
    assert_eq!(sb.run(&["apply"]).code, 0);
    let foreign = sb.p("/etc/sudoers.d/README");
    std::fs::write(&foreign, "# someone else's\n").unwrap();
    sb.set_local(&RULE_OK.replace("name = \"backup\"", "name = \"backup2\""));
    let apply = sb.run(&["apply"]);
    assert_eq!(apply.code, 0, "{:?}", apply.records);
    assert!(!sb.p("/etc/sudoers.d/backup").exists());
    assert!(sb.p("/etc/sudoers.d/backup2").exists());
    assert!(foreign.exists());
    assert!(apply
        .records
        .iter()
        .any(|r| r["action"] == "remove" && r["target"] == "/etc/sudoers.d/backup"));
    let check = sb.run(&["check"]);
    assert_eq!(check.code, 0, "{:?}", check.records);
}

#[test]
fn login_hardening_files_are_written_and_login_defs_keeps_its_other_lines() {
    let sb = Sandbox::new("");
    std::fs::write(
        sb.p("/etc/login.defs"),
        "# login.defs\nMAIL_DIR /var/mail\nUMASK\t\t022\nENCRYPT_METHOD SHA512\n",
    )
    .unwrap();
    let apply = sb.run(&["apply"]);
    assert_eq!(apply.code, 0, "{:?} {}", apply.records, apply.stderr);
    assert_eq!(
        std::fs::read_to_string(sb.p("/etc/login.defs")).unwrap(),
        "# login.defs\nMAIL_DIR /var/mail\nUMASK\t\t027\nENCRYPT_METHOD SHA512\n"
    );
    let dropin =
        std::fs::read_to_string(sb.p("/etc/ssh/sshd_config.d/00-bs-hardening.conf")).unwrap();
    for line in [
        "PermitRootLogin no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "MaxAuthTries 4",
        "X11Forwarding no",
        "ClientAliveInterval 300",
        "MaxStartups 10:30:60",
        "Banner /etc/issue.net",
    ] {
        assert!(dropin.contains(&format!("{line}\n")), "{line}: {dropin}");
    }
    assert!(dropin.contains("MACs hmac-sha2-512-etm@openssh.com,"));
    assert!(!dropin.contains("sha1"));
    assert_eq!(
        std::fs::read_to_string(sb.p("/etc/profile.d/bs-timeout.sh"))
            .unwrap()
            .lines()
            .last(),
        Some("readonly TMOUT=900; export TMOUT")
    );
    assert!(std::fs::read_to_string(sb.p("/etc/issue.net"))
        .unwrap()
        .contains("authorised use only"));
    // sshd -t ran on the drop-in; the reload of a sandbox is skipped, never run.
    let cmds = apply.of_type("command");
    assert!(
        cmds.iter()
            .any(|c| c["argv"][0] == "sshd" && c["status"] == 0),
        "{cmds:?}"
    );
    assert!(cmds
        .iter()
        .all(|c| c["argv"][0] != "kill" && c["argv"][0] != "systemctl" || c["skipped"] == true));
    assert_eq!(sb.run(&["apply"]).summary()["changed"], 0);
}

#[test]
fn an_sshd_setting_sshd_rejects_never_goes_live() {
    let sb = Sandbox::new("");
    assert_eq!(sb.run(&["apply"]).code, 0);
    let dropin = sb.p("/etc/ssh/sshd_config.d/00-bs-hardening.conf");
    let old = std::fs::read(&dropin).unwrap();
    sb.set_local("[perms.login]\nsshd = [\"PermitRootLogin sometimes\"]\n");
    let apply = sb.run(&["apply"]);
    assert_eq!(apply.code, 1);
    assert_eq!(
        apply.errors("sshd_rejected").len(),
        1,
        "{:?}",
        apply.records
    );
    assert_eq!(std::fs::read(&dropin).unwrap(), old);
}

#[test]
fn apply_with_a_plan_writes_only_files_whose_planned_content_is_still_what_the_config_says() {
    let sb = Sandbox::new(RULE_OK);
    let plan = sb.run(&["plan"]);
    let file_changes: Vec<String> = plan
        .records
        .iter()
        .filter(|r| r["type"] == "file" && r["changed"] == true && r["kind"] == "sudoers")
        .map(|r| r.to_string())
        .collect();
    assert_eq!(file_changes.len(), 4, "{:?}", plan.records);
    let plan_file = sb.dir.path().join("plan.jsonl");
    std::fs::write(&plan_file, file_changes.join("\n")).unwrap();
    // The config moves on after the plan was made: the backup rule changes.
    sb.set_local(&RULE_OK.replace("/usr/bin/true", "/usr/bin/false"));
    let apply = sb.run(&["apply", "--plan", plan_file.to_str().unwrap()]);
    assert_eq!(apply.code, 0, "{:?}", apply.records);
    assert!(sb.p("/etc/sudoers.d/bs-developers").exists());
    assert!(
        !sb.p("/etc/sudoers.d/backup").exists(),
        "planned content is stale: not written"
    );
    assert!(!sb.p("/etc/issue.net").exists(), "not in the plan");
    let skipped = apply.of_type("skipped");
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0]["target"], "/etc/sudoers.d/backup");
}

/// The PAM part under a sandbox root: profiles are written, the modules'
/// absence is a note (nothing there goes live), the stack is planned from
/// the root's own common-session, and pam-auth-update is skipped.
#[test]
fn pam_umask_is_planned_from_the_roots_stack_and_enabled_by_pam_auth_update() {
    let sb = Sandbox::new("[perms.pam]\nenabled = true\numask = true\n");
    std::fs::create_dir_all(sb.p("/etc/pam.d")).unwrap();
    std::fs::write(
        sb.p("/etc/pam.d/common-session"),
        "session\trequired\tpam_unix.so\n",
    )
    .unwrap();
    let plan = sb.run(&["plan"]);
    let pam: Vec<_> = plan.of_type("pam");
    assert_eq!(pam.len(), 1, "{:#?}", plan.records);
    assert_eq!(pam[0]["target"], "/etc/pam.d/common-session:pam_umask.so");
    assert_eq!(pam[0]["changed"], true);
    let apply = sb.run(&["apply"]);
    assert_eq!(apply.code, 0, "{:#?}", apply.records);
    let profile = std::fs::read_to_string(sb.p("/usr/share/pam-configs/bs-umask")).unwrap();
    assert!(profile.contains("pam_umask.so nousergroups"), "{profile}");
    let ran = apply
        .of_type("command")
        .into_iter()
        .find(|c| c["argv"].to_string().contains("pam-auth-update"))
        .expect("a pam-auth-update record");
    assert_eq!(ran["skipped"], true, "never run under a sandbox root");
    assert!(ran["argv"].to_string().contains("bs-umask"));
    // With the module in the stack (as pam-auth-update writes it), nothing to do.
    std::fs::write(
        sb.p("/etc/pam.d/common-session"),
        "session\trequired\tpam_unix.so\nsession\toptional\t\t\tpam_umask.so nousergroups\n",
    )
    .unwrap();
    let check = sb.run(&["check"]);
    assert_eq!(
        check.of_type("pam")[0]["changed"],
        false,
        "{:#?}",
        check.records
    );
}

#[test]
fn turning_pam_umask_off_takes_it_out_of_the_stack_and_removes_our_profile() {
    let sb = Sandbox::new("[perms.pam]\nenabled = true\numask = true\n");
    assert_eq!(sb.run(&["apply"]).code, 0);
    let profile = sb.p("/usr/share/pam-configs/bs-umask");
    assert!(profile.exists());
    sb.set_local("[perms.pam]\nenabled = true\numask = false\n");
    let check = sb.run(&["check"]);
    assert_eq!(check.code, 3, "{:#?}", check.records);
    let apply = sb.run(&["apply"]);
    assert_eq!(apply.code, 0, "{:#?}", apply.records);
    assert!(!profile.exists());
    let removed = apply
        .of_type("command")
        .into_iter()
        .any(|c| c["argv"].to_string().contains("\"--remove\",\"bs-umask\""));
    assert!(removed, "{:#?}", apply.records);
    assert_eq!(sb.run(&["check"]).code, 0);
}

#[test]
fn turning_pwquality_off_disables_its_profile_and_removes_our_policy() {
    let sb = Sandbox::new("[perms.pam]\nenabled = true\numask = false\npwquality = true\n");
    std::fs::create_dir_all(sb.p("/etc/pam.d")).unwrap();
    // The stack as libpam-pwquality's postinst leaves it.
    let with = "password\trequisite\t\t\tpam_pwquality.so retry=3\npassword\t[success=1 default=ignore]\tpam_unix.so obscure use_authtok try_first_pass yescrypt\n";
    std::fs::write(sb.p("/etc/pam.d/common-password"), with).unwrap();
    assert_eq!(sb.run(&["apply"]).code, 0);
    let dropin = sb.p("/etc/security/pwquality.conf.d/bs.conf");
    assert!(dropin.exists());

    sb.set_local("[perms.pam]\nenabled = true\numask = false\npwquality = false\n");
    let check = sb.run(&["check"]);
    assert_eq!(check.code, 3, "{:#?}", check.records);
    let pam = check.of_type("pam");
    assert_eq!(pam.len(), 1, "{:#?}", check.records);
    assert_eq!(pam[0]["action"], "pam_disable");
    assert_eq!(
        pam[0]["target"],
        "/etc/pam.d/common-password:pam_pwquality.so"
    );
    assert!(dropin.exists(), "check changes nothing");

    let apply = sb.run(&["apply"]);
    assert_eq!(apply.code, 0, "{:#?}", apply.records);
    assert!(!dropin.exists(), "our policy drop-in is deleted");
    let ran = apply
        .of_type("command")
        .into_iter()
        .find(|c| c["argv"].to_string().contains("pam-auth-update"))
        .expect("a pam-auth-update record");
    assert!(
        ran["argv"]
            .to_string()
            .contains("\"--disable\",\"pwquality\""),
        "{ran}"
    );
    assert_eq!(ran["skipped"], true, "never run under a sandbox root");

    // Once pam-auth-update has taken the module out, nothing is left to do.
    std::fs::write(
        sb.p("/etc/pam.d/common-password"),
        "password\t[success=1 default=ignore]\tpam_unix.so obscure yescrypt\n",
    )
    .unwrap();
    let check = sb.run(&["check"]);
    assert_eq!(check.code, 0, "{:#?}", check.records);
    assert!(check.of_type("pam").is_empty(), "{:#?}", check.records);
}
