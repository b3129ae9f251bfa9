//! The faults of issue 12 that belong to bs-users, one test each; every
//! one of them failed on the code before the fix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{keypair, Answer, Env, KeyServer};

fn fetch_env(server: &KeyServer) -> Env {
    let env = Env::new("");
    std::fs::create_dir_all(env.path("/etc/bs")).unwrap();
    std::fs::write(
        env.path("/etc/bs/local.toml"),
        format!(
            "[users]\nfetch_keys = true\nkey_source = \"{}\"\nfetch_retries = 0\n\n[http]\ntimeout_secs = 10\n",
            server.url
        ),
    )
    .unwrap();
    env
}

fn lines_named(text: &str, name: &str) -> usize {
    text.lines()
        .filter(|l| l.split(':').next() == Some(name))
        .count()
}

/// Item 1: the service account and `nobody` on a list are refused; the
/// rest converges, and dropping the lines disables neither.
#[test]
fn a_list_line_naming_the_service_account_or_nobody_takes_over_nothing() {
    let env = Env::new("");
    env.list("researchers", "carol\n");
    assert_eq!(env.run(&["apply"]).code, 0);
    assert_eq!(env.passwd("opensafely")[2], "10000");
    env.list("developers", "opensafely\nnobody\ndave\n");
    env.key_file("opensafely", &keypair("planted"));
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_eq!(
        run.errors_of("service_account", "opensafely").len(),
        1,
        "{}",
        run.dump()
    );
    assert_eq!(
        run.errors_of("system_account", "nobody").len(),
        1,
        "{}",
        run.dump()
    );
    for system in ["opensafely", "nobody"] {
        assert!(
            !env.groups_of(system).contains(&"sudo".to_string()),
            "{system} got sudo"
        );
        assert!(!env.groups_of(system).contains(&"developers".to_string()));
        assert!(!env
            .path(&format!("/etc/ssh/authorized_keys.d/{system}"))
            .exists());
    }
    assert!(!env.path("/nonexistent").exists());
    assert!(
        env.groups_of("dave").contains(&"sudo".to_string()),
        "the rest converges"
    );
    // The lines go: nothing happens to the service account.
    env.list("developers", "dave\n");
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 0, "{}", run.dump());
    assert_eq!(env.passwd("opensafely")[6], "/bin/bash");
    assert!(env.groups_of("opensafely").contains(&"docker".to_string()));
}

/// Item 1, hosts where today's code already took the service account
/// over: its ledger entry never leads to disabling it.
#[test]
fn a_service_account_in_the_ledger_from_an_old_takeover_is_never_disabled() {
    let env = Env::new("");
    env.list("researchers", "carol\n");
    assert_eq!(env.run(&["apply"]).code, 0);
    let ledger = env.read("/var/lib/bs/users/ledger.json");
    let ledger = ledger.replacen(
        "\"users\": {",
        "\"users\": {\n    \"opensafely\": {\"login\": \"opensafely\", \"uid\": 10000, \"disabled\": false, \"adopted\": true},",
        1,
    );
    std::fs::write(env.path("/var/lib/bs/users/ledger.json"), ledger).unwrap();
    let run = env.run(&["apply"]);
    assert_eq!(
        run.errors_of("system_account", "opensafely").len(),
        1,
        "{}",
        run.dump()
    );
    assert!(
        run.find("user", "disable_user", "opensafely").is_none(),
        "{}",
        run.dump()
    );
    assert_eq!(env.passwd("opensafely")[6], "/bin/bash");
    assert!(env.shadow("opensafely")[7].is_empty(), "expired");
    let snapshot = env.read("/var/lib/bs/users/snapshot.json");
    assert!(
        !snapshot.contains("\"opensafely\""),
        "the refresh would give it keys: {snapshot}"
    );
}

/// Item 1: an existing account bs did not create is refused with a clear
/// error; `--adopt` (or `[users] adopt`) takes it over, but only within
/// login.defs' range, whose bounds also place new accounts.
#[test]
fn an_account_bs_did_not_create_is_adopted_only_when_the_operator_says_so() {
    let env = Env::new("");
    std::fs::write(env.path("/etc/login.defs"), "UID_MIN 2000\nUID_MAX 29999\n").unwrap();
    let pw = env.read("/etc/passwd")
        + "bob:x:2100:2100:Bob:/home/bob:/bin/zsh\nold:x:1500:1500::/home/old:/bin/sh\n";
    std::fs::write(env.path("/etc/passwd"), pw).unwrap();
    let sh = env.read("/etc/shadow") + "bob:$6$hash:19000:0:99999:7:::\nold:!:19000::::::\n";
    std::fs::write(env.path("/etc/shadow"), sh).unwrap();
    env.list("researchers", "bob\nold\ncarol\n");
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 1, "{}", run.dump());
    let refused = run.errors_of("not_managed", "bob");
    assert_eq!(refused.len(), 1, "{}", run.dump());
    assert!(refused[0]["message"]
        .as_str()
        .unwrap()
        .contains("--adopt bob"));
    assert!(env.groups_of("bob").is_empty(), "touched before adoption");
    assert_eq!(
        run.errors_of("system_account", "old").len(),
        1,
        "{}",
        run.dump()
    );
    assert_eq!(env.passwd("carol")[2], "2000", "new uids start at UID_MIN");

    let run = env.run(&["apply", "--adopt", "bob", "--adopt", "old"]);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_eq!(run.find("user", "adopt_user", "bob").unwrap()["uid"], 2100);
    assert_eq!(
        run.errors_of("system_account", "old").len(),
        1,
        "outside the range even adopted"
    );
    assert!(env.groups_of("bob").contains(&"researchers".to_string()));
    assert_eq!(env.shadow("bob")[1], "$6$hash");
    // Adopted for good: the next run needs no flag.
    std::fs::write(env.repo.path().join("researchers"), "bob\ncarol\n").unwrap();
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 0, "{}", run.dump());
}

/// Item 6: an emptied list stops with exit 2, naming the override, and
/// changes nothing; with the override it goes ahead.
#[test]
fn an_emptied_list_stops_before_disabling_everyone() {
    let env = Env::new("");
    env.list("researchers", "ann\nben\ncid\ndee\neve\n");
    assert_eq!(env.run(&["apply"]).code, 0);
    // One person leaving is no mass change.
    env.list("researchers", "ann\nben\ncid\ndee\n");
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 0, "{}", run.dump());
    assert_eq!(env.passwd("eve")[6], "/usr/sbin/nologin");

    env.list("researchers", "");
    let before = env.snapshot();
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 2, "{}", run.dump());
    let err = &run.errors()[0];
    assert_eq!(err["kind"], "mass_change");
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains("--allow-mass-change") && msg.contains("4 of the 4"),
        "{msg}"
    );
    assert_eq!(env.snapshot(), before, "a stopped run changed files");
    let plan = env.run(&["plan"]);
    assert!(
        plan.records
            .iter()
            .any(|r| r["type"] == "note" && r["target"] == "guard"),
        "{}",
        plan.dump()
    );
    // A plan filtered down to one person is judged on what is left of it.
    let plan = env.run(&["plan"]);
    let ann: String = plan
        .records
        .iter()
        .filter(|r| r["target"] == "ann" && r["changed"] == true)
        .map(|r| format!("{r}\n"))
        .collect();
    let run = common::Run::from(
        env.cmd()
            .args(["apply", "--plan", "-"])
            .write_stdin(ann)
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{}", run.dump());
    assert_eq!(env.passwd("ann")[6], "/usr/sbin/nologin");
    assert_eq!(env.passwd("ben")[6], "/bin/bash");
    let run = env.run(&["apply", "--allow-mass-change"]);
    assert_eq!(run.code, 0, "{}", run.dump());
    assert_eq!(env.passwd("ben")[6], "/usr/sbin/nologin");
}

/// Item 6: the last member of a group that grants sudo is not removed
/// without a human.
#[test]
fn emptying_a_group_that_grants_sudo_needs_the_override() {
    let env = Env::new("");
    env.list("developers", "alice\n");
    env.list("researchers", "ann\nben\ncid\ndee\neve\n");
    assert_eq!(env.run(&["apply"]).code, 0);
    env.list("developers", "# truncated by a bad merge\n");
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 2, "{}", run.dump());
    let msg = run.errors()[0]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("group sudo") && msg.contains("--allow-mass-change"),
        "{msg}"
    );
    assert!(env.members("sudo").contains(&"alice".to_string()));
    assert_eq!(env.run(&["apply", "--allow-mass-change"]).code, 0);
    assert!(env.members("sudo").is_empty());
}

fn five_with_github_keys(server: &KeyServer) -> (Env, Vec<String>) {
    let env = fetch_env(server);
    let logins: Vec<String> = ["ann", "ben", "cid", "dee", "eve"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    env.list("researchers", &logins.join("\n"));
    for l in &logins {
        server.set(l, Answer::Keys(format!("{}\n", keypair(l))));
    }
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 0, "{}", run.dump());
    (env, logins)
}

/// Item 7: an empty 200 for every login stops apply and the refresh
/// before anyone's GitHub keys go.
#[test]
fn an_empty_answer_for_everyone_removes_no_keys_without_a_human() {
    let server = KeyServer::start();
    let (env, logins) = five_with_github_keys(&server);
    let installed: Vec<String> = logins
        .iter()
        .map(|l| env.read(&format!("/etc/ssh/authorized_keys.d/{l}")))
        .collect();
    for l in &logins {
        server.set(l, Answer::Keys(String::new()));
    }
    for args in [&["apply"][..], &["keys", "refresh"][..]] {
        let run = env.run(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.dump());
        let msg = run.errors()[0]["message"].as_str().unwrap();
        assert!(
            msg.contains("5 of the 5") && msg.contains("--allow-mass-change"),
            "{msg}"
        );
        for (l, before) in logins.iter().zip(&installed) {
            assert_eq!(
                &env.read(&format!("/etc/ssh/authorized_keys.d/{l}")),
                before,
                "{args:?}"
            );
        }
    }
    // One person clearing their keys on GitHub is no mass change.
    for l in &logins[1..] {
        server.set(l, Answer::Keys(format!("{}\n", keypair(l))));
    }
    let run = env.run(&["keys", "refresh"]);
    assert_eq!(run.code, 0, "{}", run.dump());
    assert!(run.find("keys", "write_keys", "ann").is_some());
    // Everyone clearing them at once, with a human's word.
    for l in &logins {
        server.set(l, Answer::Keys(String::new()));
    }
    let run = env.run(&["keys", "refresh", "--allow-mass-change"]);
    assert_eq!(run.code, 0, "{}", run.dump());
    assert!(!env
        .read("/etc/ssh/authorized_keys.d/eve")
        .contains("ssh-ed25519"));
}

type Plant = Box<dyn Fn(&std::path::Path)>;

/// Item 8: a symlink, a FIFO, a directory or an oversized file at
/// keys/<login> is that person's error; everyone else converges, and the
/// person keeps the keys they had.
#[test]
fn one_bad_keys_file_is_an_error_of_that_person_alone() {
    let env = Env::new("");
    env.list("researchers", "ann\nbob\n");
    let bob_key = keypair("bob");
    env.key_file("bob", &bob_key);
    assert_eq!(env.run(&["apply"]).code, 0);
    let bob_keys = env.read("/etc/ssh/authorized_keys.d/bob");
    assert!(bob_keys.contains("ssh-ed25519"));
    let keys = env.repo.path().join("keys");
    let plants: Vec<(&str, Plant)> = vec![
        (
            "symlink",
            Box::new(|p| std::os::unix::fs::symlink("/etc/shadow", p).unwrap()),
        ),
        (
            "fifo",
            Box::new(|p| {
                assert!(std::process::Command::new("mkfifo")
                    .arg(p)
                    .status()
                    .unwrap()
                    .success())
            }),
        ),
        ("directory", Box::new(|p| std::fs::create_dir(p).unwrap())),
        (
            "too big",
            Box::new(|p| std::fs::write(p, "#".repeat(2 * 1024 * 1024)).unwrap()),
        ),
    ];
    for (i, (what, plant)) in plants.iter().enumerate() {
        let path = keys.join("bob");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&path);
        plant(&path);
        let newcomer = format!("new{i}");
        env.list("researchers", &format!("ann\nbob\n{newcomer}\n"));
        let run = env.run(&["apply"]);
        assert_eq!(run.code, 1, "{what}: {}", run.dump());
        assert_eq!(
            run.errors_of("keys_file_refused", "bob").len(),
            1,
            "{what}: {}",
            run.dump()
        );
        assert_eq!(run.errors().len(), 1, "{what}: {}", run.dump());
        assert!(
            !env.passwd(&newcomer).is_empty(),
            "{what}: the others were not done"
        );
        assert_eq!(
            env.read("/etc/ssh/authorized_keys.d/bob"),
            bob_keys,
            "{what}"
        );
        // The refresh works from the snapshot: bob's keys stay there too.
        let run = env.run(&["keys", "refresh"]);
        assert_eq!(run.code, 0, "{what}: {}", run.dump());
        assert_eq!(
            env.read("/etc/ssh/authorized_keys.d/bob"),
            bob_keys,
            "{what}"
        );
    }
}

/// Item 9: the account lock is free while the key server stalls, so a
/// `useradd` beside the run is not made to wait.
#[test]
fn the_account_lock_is_free_while_the_key_server_stalls() {
    let server = KeyServer::start();
    let env = fetch_env(&server);
    env.list("researchers", "ann\n");
    server.set("ann", Answer::Stall(Duration::from_secs(4)));
    let mut apply = env.std_cmd("apply").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // lckpwdf's lock is a POSIX record lock: probe it from another process.
    let started = Instant::now();
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import fcntl,sys,time\nf=open(sys.argv[1],'w')\nfor _ in range(50):\n try:\n  fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB); sys.exit(0)\n except OSError:\n  time.sleep(0.02)\nsys.exit(7)\n",
        ])
        .arg(env.path("/etc/.pwd.lock"))
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "the account lock was held during the fetch"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        apply.try_wait().unwrap().is_none(),
        "the run was not waiting on the key server"
    );
    assert!(apply.wait().unwrap().success());
    assert!(!env.passwd("ann").is_empty());
}

/// Item 10: a 50 MB list line is cut to a readable prefix in the record.
#[test]
fn a_huge_list_line_is_not_echoed_whole() {
    let env = Env::new("");
    env.list(
        "researchers",
        &format!("ann\n{}\n", "y".repeat(50 * 1024 * 1024)),
    );
    let run = env.run(&["apply"]);
    assert_eq!(run.code, 2);
    let err = &run.errors()[0];
    assert_eq!(err["kind"], "list");
    assert!(
        err.to_string().len() < 1024,
        "{} bytes",
        err.to_string().len()
    );
}

fn strace_apply(env: &Env, nth_rename: u32) {
    let status = std::process::Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=renameat"])
        .arg("-e")
        .arg(format!("inject=renameat:signal=KILL:when={nth_rename}"))
        .arg("--")
        .arg(assert_cmd::cargo::cargo_bin("bs-users"))
        .arg("apply")
        .env("BS_ROOT", env.root())
        .env("BS_REPO", env.repo.path())
        .env("BS_BACKEND", "t")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("strace is installed (bin/bootstrap)");
    assert!(
        !status.success(),
        "rename {nth_rename}: the run was not killed"
    );
}

fn account_files_are_clean(env: &Env, what: &str) {
    // Inside the root, so members and homes are looked up there.
    for (tool, args) in [
        ("pwck", &["-q", "-r", "-R"][..]),
        ("grpck", &["-r", "-R"][..]),
    ] {
        let out = std::process::Command::new(tool)
            .args(args)
            .arg(env.root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: {tool} -r: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // pwck checks primary groups against the host's database, so here by hand.
    let group = env.read("/etc/group");
    for line in env.read("/etc/passwd").lines() {
        let f: Vec<&str> = line.split(':').collect();
        assert!(
            group.lines().any(|g| g.split(':').nth(2) == Some(f[3])),
            "{what}: {} has no group {}",
            f[0],
            f[3]
        );
    }
}

/// Item 4: a kill at each of the first renames of an apply (the account
/// files' among them), then a normal run: one line per account in every
/// file, every private group there, pwck and grpck clean, and converged.
#[test]
fn a_kill_at_any_rename_leaves_account_files_the_next_run_makes_whole() {
    let people = ["ann", "ben", "cid"];
    let mut torn = 0;
    for n in 1..=12 {
        let env = Env::new("");
        env.list("researchers", &people.join("\n"));
        strace_apply(&env, n);
        if env.path("/etc/.bs-accounts.journal").exists() {
            torn += 1;
            assert_eq!(
                env.run(&["check"]).code,
                3,
                "rename {n}: a pending transaction is drift"
            );
        }
        let run = env.run(&["apply"]);
        assert_eq!(run.code, 0, "rename {n}: {}", run.dump());
        let what = format!("after a kill at rename {n}");
        account_files_are_clean(&env, &what);
        for name in people.iter().chain(&["opensafely"]) {
            for file in ["/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow"] {
                assert_eq!(
                    lines_named(&env.read(file), name),
                    1,
                    "{what}: {name} in {file}"
                );
            }
        }
        assert!(!env.path("/etc/.bs-accounts.journal").exists(), "{what}");
        let again = env.run(&["apply"]);
        assert_eq!(again.changed(), 0, "{what}: {}", again.dump());
        assert!(env.members("researchers").len() == 3, "{what}");
    }
    // Kills between the four account-file renames were among them.
    assert!(torn >= 3, "only {torn} kills left a transaction open");
}
