//! bs-users against a sandbox root: the behaviours the issue names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{fingerprint, keypair, Answer, Env, KeyServer};

fn dev_env() -> Env {
    let env = Env::new("");
    env.list(
        "developers",
        "# team\nAlice   # lead, capitals on GitHub\nbob\n",
    );
    env.key_file("Alice", &keypair("alice"));
    env.key_file("bob", &keypair("bob"));
    env
}

#[test]
fn capitals_in_a_login_become_a_lower_case_account_with_the_login_in_gecos() {
    let env = dev_env();
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 0, "{}", run.dump());
    let pw = env.passwd("alice");
    assert_eq!(pw[4], "GitHub Alice");
    assert_eq!(pw[6], "/bin/bash");
    assert!(env.passwd("Alice").is_empty());
    // empty, expired password: set at first login
    let sh = env.shadow("alice");
    assert_eq!((sh[1].as_str(), sh[2].as_str()), ("", "0"));
    let home = std::fs::metadata(env.path("/home/alice")).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(home.permissions().mode() & 0o7777, 0o750);
    assert_eq!(home.uid().to_string(), pw[2]);
    let keys = env.read("/etc/ssh/authorized_keys.d/alice");
    assert!(keys.contains("# source: keys/Alice"), "{keys}");
    let mut groups = env.groups_of("alice");
    groups.sort();
    assert_eq!(
        groups,
        ["developers", "docker", "researchers", "reviewers", "sudo"]
    );
    assert_eq!(env.shadow("opensafely")[1], "!");
    assert_eq!(env.passwd("opensafely")[2], "10000");
    assert!(env.members("docker").contains(&"opensafely".to_string()));
    assert!(env.read("/etc/group").contains("reviewers:x:10010:"));
    assert!(env
        .read("/etc/ssh/sshd_config.d/00-bs-authorized-keys.conf")
        .contains("AuthorizedKeysFile /etc/ssh/authorized_keys.d/%u"));
    assert!(env
        .read("/etc/cron.d/bs-users-keys")
        .contains("bs-users keys refresh"));
}

#[test]
fn a_second_apply_changes_nothing() {
    let env = dev_env();
    assert_eq!(env.run(&["apply"]).code, 0);
    let before = env.snapshot();
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 0, "{}", run.dump());
    assert_eq!(run.changed(), 0, "{}", run.dump());
    assert!(run.summary()["unchanged"].as_u64().unwrap() > 0);
    assert_eq!(before, env.snapshot(), "a no-op apply rewrote files");
    let check = env.run(&["check"]);
    assert_eq!(check.code, 0, "{}", check.dump());
}

#[test]
fn a_malformed_list_line_exits_2_and_changes_nothing() {
    let env = dev_env();
    env.list("researchers", "carol\nnot a login!\n");
    let before = env.snapshot();
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 2, "{}", run.dump());
    let err = &run.errors()[0];
    assert!(
        err["target"].as_str().unwrap().ends_with("researchers:2"),
        "{err}"
    );
    assert_eq!(before, env.snapshot());
}

#[test]
fn an_unknown_config_key_exits_2_naming_file_and_key() {
    let env = Env::new("[users.oops]\nx = 1\n");
    let run = env.run(&["plan"]);
    assert_eq!(run.code, 2, "{}", run.dump());
    let msg = run.errors()[0]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("backend.toml") && msg.contains("users.oops"),
        "{msg}"
    );
}

#[test]
fn moving_between_lists_gives_exactly_the_new_groups() {
    let env = dev_env();
    assert_eq!(env.run(&["apply"]).code, 0);
    // someone outside bs added an unmanaged member: it must stay
    let group = env
        .read("/etc/group")
        .replace("sudo:x:27:", "sudo:x:27:outsider,");
    std::fs::write(env.path("/etc/group"), group).unwrap();
    env.list("developers", "Alice\n");
    env.list("researchers", "bob\n");
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 0, "{}", run.dump());
    let mut groups = env.groups_of("bob");
    groups.sort();
    assert_eq!(groups, ["docker", "researchers", "reviewers"]);
    assert!(env.members("sudo").contains(&"outsider".to_string()));
    assert!(!env.members("sudo").contains(&"bob".to_string()));
    assert!(!env.members("developers").contains(&"bob".to_string()));
}

#[test]
fn removal_disables_without_deleting_and_re_adding_enables() {
    let env = dev_env();
    assert_eq!(env.run(&["apply"]).code, 0);
    std::fs::write(env.path("/home/bob/thesis.txt"), "years of work").unwrap();
    env.list("developers", "Alice\n");
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 0, "{}", run.dump());
    assert!(
        run.find("user", "disable_user", "bob").is_some(),
        "{}",
        run.dump()
    );
    assert!(
        env.groups_of("bob").is_empty(),
        "{:?}",
        env.groups_of("bob")
    );
    assert!(!env.path("/etc/ssh/authorized_keys.d/bob").exists());
    let sh = env.shadow("bob");
    assert!(sh[1].starts_with('!'), "{sh:?}");
    assert_eq!(sh[7], "1", "expiry date must be in the past: {sh:?}");
    assert_eq!(env.passwd("bob")[6], "/usr/sbin/nologin");
    assert_eq!(
        std::fs::read_to_string(env.path("/home/bob/thesis.txt")).unwrap(),
        "years of work"
    );
    assert_eq!(env.run(&["apply"]).changed(), 0);

    env.list("developers", "Alice\nbob\n");
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 0, "{}", run.dump());
    assert!(
        run.find("user", "enable_user", "bob").is_some(),
        "{}",
        run.dump()
    );
    let sh = env.shadow("bob");
    assert!(!sh[1].starts_with('!') && sh[7].is_empty(), "{sh:?}");
    assert_eq!(env.passwd("bob")[6], "/bin/bash");
    assert!(env.path("/etc/ssh/authorized_keys.d/bob").exists());
    assert_eq!(env.groups_of("bob").len(), 5);
}

#[test]
fn disable_on_demand_refuses_a_listed_login_by_exact_match() {
    let env = dev_env();
    env.list("researchers", "bobby\n");
    assert_eq!(env.run(&["apply"]).code, 0);
    // "bob" is a substring of "bobby" but is itself listed: refused
    let run = env.run(&["disable", "bob"]);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert!(run.errors()[0]["message"]
        .as_str()
        .unwrap()
        .contains("still listed"));
    env.list("researchers", "");
    // bobby is off every list; "bob" is still listed and must not be hit
    let run = env.run(&["disable", "bobby"]);
    assert_eq!(run.code, 0, "{}", run.dump());
    assert_eq!(env.shadow("bobby")[7], "1");
    assert_eq!(env.shadow("bob")[7], "");
    // an account bs does not manage is refused
    let run = env.run(&["disable", "daemon"]);
    assert_eq!(run.code, 1);
}

#[test]
fn a_system_account_and_a_taken_gid_are_error_records_and_nothing_is_renumbered() {
    let env = dev_env();
    env.list("researchers", "daemon\ncarol\n");
    let group = env.read("/etc/group") + "oldreviewers:x:10010:\n";
    std::fs::write(env.path("/etc/group"), group).unwrap();
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_eq!(
        run.errors_of("system_account", "daemon").len(),
        1,
        "{}",
        run.dump()
    );
    assert_eq!(
        run.errors_of("gid_taken", "reviewers").len(),
        1,
        "{}",
        run.dump()
    );
    assert_eq!(env.passwd("daemon")[6], "/usr/sbin/nologin");
    assert!(!env.read("/etc/group").contains("\nreviewers:"));
    // everyone else still converged
    assert!(!env.passwd("carol").is_empty());
    assert!(env.members("researchers").contains(&"carol".to_string()));
}

#[test]
fn an_existing_regular_account_is_adopted_when_named_in_the_config_and_reported() {
    let env = dev_env();
    std::fs::create_dir_all(env.path("/etc/bs")).unwrap();
    std::fs::write(
        env.path("/etc/bs/local.toml"),
        "[users]\nadopt = [\"bob\"]\n",
    )
    .unwrap();
    let pw = env.read("/etc/passwd") + "bob:x:2000:2000:Bob:/home/bob:/bin/zsh\n";
    std::fs::write(env.path("/etc/passwd"), pw).unwrap();
    let sh = env.read("/etc/shadow") + "bob:$6$hash:19000:0:99999:7:::\n";
    std::fs::write(env.path("/etc/shadow"), sh).unwrap();
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 0, "{}", run.dump());
    let adopted = run.find("user", "adopt_user", "bob").unwrap();
    assert_eq!(adopted["uid"], 2000);
    assert_eq!(env.passwd("bob")[2], "2000");
    assert_eq!(env.shadow("bob")[1], "$6$hash");
}

#[test]
fn home_mode_refuses_a_symlinked_ssh_dir_and_writes_nothing_through_it() {
    // A host-local override (the backend's [users] table is already set).
    let env = Env::new("");
    std::fs::create_dir_all(env.path("/etc/bs")).unwrap();
    std::fs::write(
        env.path("/etc/bs/local.toml"),
        "[users]\nauthorized_keys = \"home\"\n",
    )
    .unwrap();
    env.list("developers", "bob\nalice\n");
    env.key_file("bob", &keypair("bob"));
    env.key_file("alice", &keypair("alice"));
    assert_eq!(env.run(&["apply"]).code, 0);
    assert!(env.path("/home/alice/.ssh/authorized_keys").exists());
    // bob replaces ~/.ssh with a symlink to a root-owned directory
    let target = env.path("/etc/victim");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("authorized_keys"), "precious").unwrap();
    std::fs::remove_dir_all(env.path("/home/bob/.ssh")).unwrap();
    std::os::unix::fs::symlink(&target, env.path("/home/bob/.ssh")).unwrap();
    env.key_file("bob", &keypair("bob-new"));
    env.key_file("alice", &keypair("alice-new"));
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_eq!(
        run.errors_of("keys_refused", "bob").len(),
        1,
        "{}",
        run.dump()
    );
    assert_eq!(
        std::fs::read_to_string(target.join("authorized_keys")).unwrap(),
        "precious"
    );
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 1);
    // alice still got her new key
    assert!(env
        .read("/home/alice/.ssh/authorized_keys")
        .contains("alice-new"));
    // the drop-in is not installed in home mode
    assert!(!env
        .path("/etc/ssh/sshd_config.d/00-bs-authorized-keys.conf")
        .exists());
}

fn fetch_env(server: &KeyServer) -> Env {
    let env = Env::new("");
    std::fs::create_dir_all(env.path("/etc/bs")).unwrap();
    std::fs::write(
        env.path("/etc/bs/local.toml"),
        format!(
            "[users]\nfetch_keys = true\nkey_source = \"{}\"\nfetch_retries = 1\n\n[http]\ntimeout_secs = 2\nmax_body_bytes = 4096\n",
            server.url
        ),
    )
    .unwrap();
    env
}

#[test]
fn failed_fetches_keep_the_last_good_keys_while_everyone_else_converges() {
    let server = KeyServer::start();
    let env = fetch_env(&server);
    let logins = ["e500", "stall", "html", "big", "garbage", "fine"];
    env.list("developers", &logins.join("\n"));
    let mut good = std::collections::HashMap::new();
    for l in logins {
        let k = keypair(l);
        server.set(l, Answer::Keys(format!("{k}\n")));
        good.insert(l, k);
    }
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 0, "{}", run.dump());
    for l in logins {
        assert!(env
            .read(&format!("/etc/ssh/authorized_keys.d/{l}"))
            .contains(&fingerprint_free(&good[l])));
    }
    // now the proxy misbehaves in every way at once
    server.set("e500", Answer::Status(500));
    server.set("stall", Answer::Stall(Duration::from_secs(5)));
    server.set("html", Answer::Html);
    server.set("big", Answer::Big(100_000));
    let fresh = keypair("fine-new");
    server.set(
        "garbage",
        Answer::Keys(format!("{}\nthis is not a key\n", good["garbage"])),
    );
    server.set("fine", Answer::Keys(format!("{fresh}\n")));
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 1, "{}", run.dump());
    for l in ["e500", "stall", "html", "big"] {
        assert_eq!(
            run.errors_of("fetch_failed", l).len(),
            1,
            "{l}: {}",
            run.dump()
        );
        let keys = env.read(&format!("/etc/ssh/authorized_keys.d/{l}"));
        assert!(
            keys.contains(&fingerprint_free(&good[l])),
            "{l} lost its keys: {keys}"
        );
        assert!(
            !keys.contains("<html>") && !keys.contains("Bad Gateway"),
            "{keys}"
        );
    }
    assert_eq!(
        run.errors_of("bad_key_line", "garbage").len(),
        1,
        "{}",
        run.dump()
    );
    assert!(env
        .read("/etc/ssh/authorized_keys.d/garbage")
        .contains(&fingerprint_free(&good["garbage"])));
    let fine = env.read("/etc/ssh/authorized_keys.d/fine");
    assert!(
        fine.contains(&fingerprint_free(&fresh))
            && !fine.contains(&fingerprint_free(&good["fine"]))
    );
    // a 500 is retried; a 404 or garbage is not
    let hits = server.hits.lock().unwrap().clone();
    assert!(
        hits.iter().filter(|h| *h == "e500").count() >= 3,
        "{hits:?}"
    );
}

/// The base64 part of a public key line: what must survive in a keys file.
fn fingerprint_free(pubkey: &str) -> String {
    pubkey.split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn an_empty_answer_means_no_github_keys_and_the_disappearance_is_reported() {
    let server = KeyServer::start();
    let env = fetch_env(&server);
    env.list("developers", "alice\n");
    let k = keypair("alice-gh");
    server.set("alice", Answer::Keys(format!("{k}\n")));
    assert_eq!(env.run(&["apply"]).code, 0);
    server.set("alice", Answer::Keys(String::new()));
    // alice is everyone holding fetched keys here: the guard wants a human.
    assert_eq!(env.run(&["apply"]).code, 2);
    let run = env.run(&["apply", "--allow-mass-change"]);
    assert_eq!(run.code, 0, "{}", run.dump());
    let rec = run.find("keys", "write_keys", "alice").unwrap();
    assert_eq!(rec["removed"][0], fingerprint(&k));
    assert!(!env
        .read("/etc/ssh/authorized_keys.d/alice")
        .contains(&fingerprint_free(&k)));
}

#[test]
fn keys_refresh_works_from_the_snapshot_and_keeps_last_good_keys_on_failure() {
    let server = KeyServer::start();
    let env = fetch_env(&server);
    env.list("developers", "alice\nbob\n");
    let (ka, kb) = (keypair("alice"), keypair("bob"));
    server.set("alice", Answer::Keys(ka.clone()));
    server.set("bob", Answer::Keys(kb.clone()));
    assert_eq!(env.run(&["apply"]).code, 0);
    // the checkout is gone: refresh must not need it
    let repo = env.repo.path().to_path_buf();
    std::fs::rename(&repo, repo.with_extension("gone")).unwrap();
    let kb2 = keypair("bob-2");
    server.set("alice", Answer::Status(503));
    server.set("bob", Answer::Keys(kb2.clone()));
    let before_passwd = env.read("/etc/passwd");
    let run = env.run(&["keys", "refresh"]);
    std::fs::rename(repo.with_extension("gone"), &repo).unwrap();
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_eq!(run.errors_of("fetch_failed", "alice").len(), 1);
    assert!(env
        .read("/etc/ssh/authorized_keys.d/alice")
        .contains(&fingerprint_free(&ka)));
    assert!(env
        .read("/etc/ssh/authorized_keys.d/bob")
        .contains(&fingerprint_free(&kb2)));
    assert_eq!(
        before_passwd,
        env.read("/etc/passwd"),
        "refresh touched accounts"
    );
    let list = env.run(&["list"]);
    let alice = list
        .records
        .iter()
        .find(|r| r["target"] == "alice")
        .unwrap();
    assert_eq!(alice["last_refresh"]["ok"], false);
    assert_eq!(alice["state"], "active");
}

#[test]
fn plan_filtered_then_applied_does_only_what_is_left() {
    let env = dev_env();
    // The operator's pipeline, for real: plan | jq filter | apply --plan -
    let bin = assert_cmd::cargo::cargo_bin("bs-users");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{bin} plan | jq -c 'select(.target != \"bob\")' | {bin} apply --plan -",
            bin = bin.display()
        ))
        .env("BS_ROOT", env.root())
        .env("BS_REPO", env.repo.path())
        .env("BS_BACKEND", "t")
        .output()
        .unwrap();
    let run: common::Run = out.into();
    assert_eq!(run.code, 0, "{}", run.dump());
    assert!(!env.passwd("alice").is_empty());
    assert!(env.passwd("bob").is_empty(), "bob was not in the plan");
    // a stale entry (already done) is skipped, not redone
    let again: common::Run = env
        .cmd()
        .args(["apply", "--plan", "-"])
        .write_stdin(r#"{"tool":"bs-users","type":"user","action":"create_user","target":"alice","login":"Alice","changed":true}"#)
        .output()
        .unwrap()
        .into();
    assert_eq!(again.code, 0, "{}", again.dump());
    assert_eq!(again.changed(), 0, "{}", again.dump());
    assert!(again.records.iter().any(|r| r["type"] == "skipped"));
    // garbage as a plan is a usage error and changes nothing
    let before = env.snapshot();
    let bad: common::Run = env
        .cmd()
        .args(["apply", "--plan", "-"])
        .write_stdin("not json\n")
        .output()
        .unwrap()
        .into();
    assert_eq!(bad.code, 2, "{}", bad.dump());
    assert_eq!(before, env.snapshot());
}

#[test]
fn two_applies_at_once_the_second_waits_for_the_lock_or_fails_cleanly() {
    let env = dev_env();
    // hold the run lock as another run would
    std::fs::create_dir_all(env.path("/run/lock")).unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(env.path("/run/lock/bs.lock"))
        .unwrap();
    let status = std::process::Command::new("flock")
        .args(["-x", "-n"])
        .arg(env.path("/run/lock/bs.lock"))
        .arg("true")
        .status()
        .unwrap();
    assert!(status.success());
    drop(lock);
    let mut holder = std::process::Command::new("flock")
        .arg(env.path("/run/lock/bs.lock"))
        .args(["sleep", "3"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let run = env.run(&["apply", "--lock-timeout", "1"]);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_eq!(run.errors()[0]["kind"], "lock_timeout");
    assert!(env.passwd("alice").is_empty(), "changed without the lock");
    // a patient run waits and then converges
    let run = env.run(&["apply", "--lock-timeout", "20"]);
    assert_eq!(run.code, 0, "{}", run.dump());
    assert!(!env.passwd("alice").is_empty());
    holder.wait().unwrap();
}

#[test]
fn a_run_killed_mid_apply_converges_on_the_next_run_without_stray_temp_files() {
    let env = Env::new("");
    let mut list = String::new();
    for i in 0..300 {
        list.push_str(&format!("user{i}\n"));
        env.key_file(&format!("user{i}"), &keypair(&format!("u{i}")));
    }
    env.list("developers", &list);
    for delay_ms in [30u64, 80, 150, 250] {
        let mut child = env.std_cmd("apply");
        let mut proc = child.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = proc.kill(); // SIGKILL
        let _ = proc.wait();
    }
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 0, "{}", run.dump());
    let run = env.run(&["apply"]);
    assert_eq!(run.changed(), 0, "{}", run.dump());
    assert!(env.temp_files().is_empty(), "{:?}", env.temp_files());
    assert_eq!(env.members("developers").len(), 300);
}

#[test]
fn a_broken_pipe_does_not_stop_the_run() {
    let env = dev_env();
    let mut child = env
        .std_cmd("apply")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before the first record
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!env.passwd("bob").is_empty());
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains("\"type\":\"summary\""),
        "summary not kept on stderr: {err}"
    );
}
