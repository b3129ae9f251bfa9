#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Trees on a real file system, as root: owners, modes, ACLs, and what the
//! walker must never do (follow a symlink, re-own a hard link).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::*;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn apply_creates_the_trees_and_a_second_apply_changes_nothing() {
    let sb = Sandbox::new(TREES_ONLY);
    let first = sb.run(&["apply"]);
    assert_eq!(first.code, 0, "{:?}", first.records);
    for sub in [
        "/srv/high_privacy/workspaces",
        "/srv/high_privacy/volumes",
        "/srv/medium_privacy/requests",
    ] {
        let meta = std::fs::metadata(sb.p(sub)).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), mode(&sb.p(sub))),
            (OPENSAFELY, OPENSAFELY, 0o750),
            "{sub}"
        );
    }
    let facl = Command::new("getfacl")
        .args(["-cpn"])
        .arg(sb.p("/srv/medium_privacy/workspaces"))
        .output()
        .unwrap();
    let text = String::from_utf8(facl.stdout).unwrap();
    assert!(text.contains(&format!("group:{REVIEWERS}:r-x")), "{text}");
    assert!(
        text.contains(&format!("default:group:{REVIEWERS}:r-x")),
        "{text}"
    );
    assert!(text.contains("default:mask::r-x"), "{text}");

    std::fs::write(sb.p("/srv/high_privacy/workspaces/out.csv"), "a,b\n").unwrap();
    assert_eq!(sb.run(&["apply"]).code, 0);
    let second = sb.run(&["apply"]);
    assert_eq!(second.code, 0);
    assert_eq!(second.summary()["changed"], 0, "{:?}", second.records);
    assert_eq!(second.summary()["paths_differing"], 0);
    assert!(second.of_type("path").is_empty());
}

#[test]
fn check_exits_3_on_drift_names_what_differs_and_0_when_clean() {
    let sb = Sandbox::new(TREES_ONLY);
    assert_eq!(sb.run(&["apply"]).code, 0);
    assert_eq!(sb.run(&["check"]).code, 0);
    let f = sb.p("/srv/medium_privacy/workspaces/report.html");
    std::fs::write(&f, "<p>").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    let check = sb.run(&["check"]);
    assert_eq!(check.code, 3);
    let rec = check
        .path("/srv/medium_privacy/workspaces/report.html")
        .expect("a path record");
    assert_eq!(
        rec["differs"],
        serde_json::json!(["owner", "group", "mode", "acl", "mask"])
    );
    assert_eq!(
        rec["have"]["effective"],
        serde_json::json!(["group::---", "group:reviewers:---"])
    );
    assert_eq!(
        rec["want"]["effective"],
        serde_json::json!(["group::r--", "group:reviewers:r--"])
    );
    assert_eq!(rec["mode"], "check");
    // check changed nothing
    assert_eq!(mode(&f), 0o600);
    // --summary: counts only, same exit code
    let summary = sb.run(&["check", "--summary"]);
    assert_eq!(summary.code, 3);
    assert!(summary.of_type("path").is_empty());
    let tree = summary
        .of_type("tree")
        .into_iter()
        .find(|t| t["target"] == "/srv/medium_privacy")
        .unwrap();
    assert_eq!(tree["differing"], 1);
    assert_eq!(tree["changed"], true);
}

#[test]
fn a_file_created_0640_under_the_default_acl_is_not_drift() {
    let sb = Sandbox::new(TREES_ONLY);
    assert_eq!(sb.run(&["apply"]).code, 0);
    // As a job writes its outputs: owned by the service account, 0640. It
    // inherits group:reviewers:r-x from the default ACL, masked to r--.
    let f = sb.p("/srv/medium_privacy/workspaces/table.csv");
    let f_str = f.to_str().unwrap();
    let wrote = as_user(
        OPENSAFELY,
        OPENSAFELY,
        &[],
        &["sh", "-c", "umask 027 && echo a,b > \"$0\"", f_str],
    );
    assert!(wrote.status.success(), "{wrote:?}");
    let facl = Command::new("getfacl")
        .args(["-cpn"])
        .arg(&f)
        .output()
        .unwrap();
    let text = String::from_utf8(facl.stdout).unwrap();
    assert!(text.contains(&format!("group:{REVIEWERS}:r-x")), "{text}");
    assert!(text.contains("mask::r--"), "{text}");
    let check = sb.run(&["check"]);
    assert_eq!(check.code, 0, "{:?}", check.records);
    // A mask that lets the inherited x through is drift.
    let chmod = Command::new("chmod").arg("0650").arg(&f).status().unwrap();
    assert!(chmod.success());
    let check = sb.run(&["check"]);
    assert_eq!(check.code, 3, "{:?}", check.records);
    let rec = check
        .path("/srv/medium_privacy/workspaces/table.csv")
        .unwrap();
    assert!(
        rec["differs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "mask"),
        "{rec}"
    );
}

#[test]
fn a_private_file_a_container_wrote_is_readable_by_a_reviewer_after_apply() {
    let sb = Sandbox::new(TREES_ONLY);
    assert_eq!(sb.run(&["apply"]).code, 0);
    let f = sb.p("/srv/medium_privacy/workspaces/output.csv");
    let f_str = f.to_str().unwrap();
    // Written by the job's uid, 0600 (chmod rewrites the inherited mask to ---).
    let wrote = as_user(
        OPENSAFELY,
        OPENSAFELY,
        &[],
        &[
            "sh",
            "-c",
            "echo secret > \"$0\" && chmod 600 \"$0\"",
            f_str,
        ],
    );
    assert!(wrote.status.success(), "{wrote:?}");
    assert_eq!(std::fs::metadata(&f).unwrap().uid(), OPENSAFELY);
    let before = as_user(REVIEWER_UID, REVIEWER_UID, &[REVIEWERS], &["cat", f_str]);
    assert!(
        !before.status.success(),
        "readable before apply: the test proves nothing"
    );
    let apply = sb.run(&["apply"]);
    assert_eq!(apply.code, 0, "{:?}", apply.records);
    let after = as_user(REVIEWER_UID, REVIEWER_UID, &[REVIEWERS], &["cat", f_str]);
    assert!(after.status.success(), "{after:?}");
    assert_eq!(String::from_utf8_lossy(&after.stdout), "secret\n");
    // Someone outside reviewers still cannot.
    let other = as_user(REVIEWER_UID, REVIEWER_UID, &[], &["cat", f_str]);
    assert!(!other.status.success());
    // And nobody can read high privacy but the service account.
    std::fs::write(sb.p("/srv/high_privacy/workspaces/x"), "x").unwrap();
    assert_eq!(sb.run(&["apply"]).code, 0);
    let hp = sb.p("/srv/high_privacy/workspaces/x");
    assert!(!as_user(
        REVIEWER_UID,
        REVIEWER_UID,
        &[REVIEWERS, RESEARCHERS],
        &["cat", hp.to_str().unwrap()]
    )
    .status
    .success());
    assert!(
        as_user(OPENSAFELY, OPENSAFELY, &[], &["cat", hp.to_str().unwrap()])
            .status
            .success()
    );
}

#[test]
fn a_symlink_to_a_file_outside_the_tree_is_neither_followed_nor_changed() {
    let sb = Sandbox::new(TREES_ONLY);
    assert_eq!(sb.run(&["apply"]).code, 0);
    let outside = sb.dir.path().join("shadow-copy");
    std::fs::copy("/etc/shadow", &outside).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = std::fs::metadata(&outside).unwrap();
    let link = sb.p("/srv/medium_privacy/workspaces/shadow");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let dirlink = sb.p("/srv/medium_privacy/workspaces/etc");
    std::os::unix::fs::symlink(sb.dir.path(), &dirlink).unwrap();

    let apply = sb.run(&["apply"]);
    assert_eq!(apply.code, 0, "{:?}", apply.records);
    let after = std::fs::metadata(&outside).unwrap();
    assert_eq!(
        (after.uid(), after.gid(), after.mode() & 0o7777),
        (before.uid(), before.gid(), 0o600)
    );
    let facl = Command::new("getfacl")
        .args(["-cpn"])
        .arg(&outside)
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&facl.stdout).contains(&format!("group:{REVIEWERS}")),
        "ACL written through the link"
    );
    // The link itself is not re-owned either.
    assert_eq!(std::fs::symlink_metadata(&link).unwrap().uid(), 0);
    let skipped = apply.of_type("skipped");
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped.iter().all(|s| s["reason"] == "symlink"));
    let tree = apply
        .of_type("tree")
        .into_iter()
        .find(|t| t["target"] == "/srv/medium_privacy")
        .unwrap();
    assert_eq!(tree["symlinks"], 2);
    // Nothing below the directory the link points at was visited.
    assert_eq!(mode(sb.dir.path()), 0o755);
}

#[test]
fn a_hard_link_to_a_root_file_planted_in_the_tree_is_not_re_owned() {
    let sb = Sandbox::new(TREES_ONLY);
    assert_eq!(sb.run(&["apply"]).code, 0);
    let secret = sb.p("/srv/root-secret");
    std::fs::write(&secret, "root only").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let planted = sb.p("/srv/high_privacy/workspaces/planted");
    std::fs::hard_link(&secret, &planted).unwrap();
    let apply = sb.run(&["apply"]);
    assert_eq!(apply.code, 1, "an error record for the hard link");
    let errs = apply.errors("hard_linked");
    assert_eq!(errs.len(), 1, "{:?}", apply.records);
    assert_eq!(errs[0]["target"], "/srv/high_privacy/workspaces/planted");
    let meta = std::fs::metadata(&secret).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, 0, 0o600)
    );
    // The rest of the tree was still converged.
    assert_eq!(apply.summary()["failed"], 1);
}

#[test]
fn an_unknown_owner_is_an_error_for_that_tree_and_the_others_are_still_done() {
    let local = format!(
        "{TREES_ONLY}\n[[perms.tree]]\npath = \"/srv/a\"\nowner = \"nosuchuser\"\n\n[[perms.tree]]\npath = \"/srv/b\"\nowner = \"opensafely\"\ndir_mode = \"0700\"\n"
    );
    let sb = Sandbox::new(&local);
    let apply = sb.run(&["apply"]);
    assert_eq!(apply.code, 1);
    let errs = apply.errors("unknown_name");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0]["target"], "/srv/a");
    assert!(!sb.p("/srv/a").exists());
    assert_eq!(std::fs::metadata(sb.p("/srv/b")).unwrap().uid(), OPENSAFELY);
    assert_eq!(mode(&sb.p("/srv/b")), 0o700);
}

#[test]
fn unconfigured_attributes_are_left_alone_and_setgid_is_enforced_when_asked() {
    let local = format!(
        "{TREES_ONLY}\n[[perms.tree]]\npath = \"/srv/g\"\ngroup = \"reviewers\"\nsetgid = true\n"
    );
    let sb = Sandbox::new(&local);
    std::fs::create_dir_all(sb.p("/srv/g/sub")).unwrap();
    std::fs::set_permissions(sb.p("/srv/g/sub"), std::fs::Permissions::from_mode(0o751)).unwrap();
    std::fs::write(sb.p("/srv/g/sub/f"), "").unwrap();
    std::fs::set_permissions(sb.p("/srv/g/sub/f"), std::fs::Permissions::from_mode(0o604)).unwrap();
    let apply = sb.run(&["apply"]);
    assert_eq!(apply.code, 0, "{:?}", apply.records);
    assert_eq!(mode(&sb.p("/srv/g/sub")), 0o2751);
    assert_eq!(
        mode(&sb.p("/srv/g/sub/f")),
        0o604,
        "file mode not configured: kept"
    );
    let f = std::fs::metadata(sb.p("/srv/g/sub/f")).unwrap();
    assert_eq!(
        (f.uid(), f.gid()),
        (0, REVIEWERS),
        "owner not configured: kept"
    );
}

#[test]
fn apply_with_a_plan_walks_only_the_trees_in_it() {
    let sb = Sandbox::new(TREES_ONLY);
    assert_eq!(sb.run(&["apply"]).code, 0);
    std::fs::write(sb.p("/srv/high_privacy/h"), "").unwrap();
    std::fs::write(sb.p("/srv/medium_privacy/m"), "").unwrap();
    let plan = sb.run(&["plan"]);
    let high: Vec<String> = plan
        .records
        .iter()
        .filter(|r| r["tree"] == "/srv/high_privacy" || r["target"] == "/srv/high_privacy")
        .map(|r| r.to_string())
        .collect();
    let plan_file = sb.dir.path().join("plan.jsonl");
    std::fs::write(&plan_file, high.join("\n")).unwrap();
    let apply = sb.run(&["apply", "--plan", plan_file.to_str().unwrap()]);
    assert_eq!(apply.code, 0, "{:?}", apply.records);
    assert_eq!(
        std::fs::metadata(sb.p("/srv/high_privacy/h"))
            .unwrap()
            .uid(),
        OPENSAFELY
    );
    assert_eq!(
        std::fs::metadata(sb.p("/srv/medium_privacy/m"))
            .unwrap()
            .uid(),
        0,
        "not in the plan"
    );
}

#[test]
fn another_file_system_is_not_entered_and_fifos_are_left_alone() {
    let sb = Sandbox::new(TREES_ONLY);
    assert_eq!(sb.run(&["apply"]).code, 0);
    let mnt = sb.p("/srv/high_privacy/volumes/mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0755", "bs-perms-test"])
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        mounted.status.success(),
        "mount a tmpfs (the tests run as root): {mounted:?}"
    );
    std::fs::write(mnt.join("inside"), "x").unwrap();
    let fifo = sb.p("/srv/high_privacy/workspaces/pipe");
    let made = Command::new("mkfifo").arg(&fifo).output().unwrap();
    assert!(made.status.success());
    let apply = sb.run(&["apply"]);
    let umounted = Command::new("umount").arg(&mnt).output().unwrap();
    assert_eq!(apply.code, 0, "{:?}", apply.records);
    assert!(umounted.status.success());
    let reasons: Vec<(&str, &str)> = apply
        .of_type("skipped")
        .iter()
        .map(|s| (s["target"].as_str().unwrap(), s["reason"].as_str().unwrap()))
        .collect();
    assert!(
        reasons.contains(&("/srv/high_privacy/volumes/mnt", "other_file_system")),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("/srv/high_privacy/workspaces/pipe", "special_file")),
        "{reasons:?}"
    );
    assert_eq!(
        std::fs::symlink_metadata(&fifo).unwrap().uid(),
        0,
        "the FIFO was not re-owned"
    );
    // The mount point's own inode (under the tmpfs) kept its owner while mounted:
    // nothing in the tree reported a fix below it.
    assert!(apply
        .of_type("path")
        .iter()
        .all(|p| !p["target"].as_str().unwrap().contains("/mnt")));
}
