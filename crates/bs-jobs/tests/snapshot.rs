//! The units read the config snapshot under /var/lib/bs/repo, never the
//! operator's checkout, which may be deleted or moved after `just manage`.
//! No engine needed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{of_type, parse, repo, Sandbox};
use serde_json::Value;

/// A checkout of its own (outside the root) holding the layers the loader
/// reads, so a test can change, move and delete it.
fn checkout(dir: &Path) -> PathBuf {
    let co = dir.join("checkout");
    std::fs::create_dir_all(co.join("backends/test")).unwrap();
    for rel in ["backends/defaults.toml", "backends/test/backend.toml"] {
        std::fs::copy(repo().join(rel), co.join(rel)).unwrap();
    }
    co
}

fn bs_jobs(sb: &Sandbox, repo: &Path, args: &[&str]) -> (i32, Vec<Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bs-jobs"))
        .arg("--root")
        .arg(sb.root())
        .arg("--repo")
        .arg(repo)
        .args(["--backend", "test"])
        .args(args)
        .env_remove("BS_ROOT")
        .env_remove("BS_REPO")
        .env_remove("BS_BACKEND")
        .output()
        .unwrap();
    parse(out)
}

/// The `BS_REPO` a unit under the sandbox root sets, joined under the root
/// (the unit names a system path of that root).
fn unit_repo(sb: &Sandbox, unit: &str) -> (String, PathBuf) {
    let text = std::fs::read_to_string(sb.root().join("etc/systemd/system").join(unit)).unwrap();
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("Environment=BS_REPO="))
        .unwrap_or_else(|| panic!("{unit} sets no BS_REPO:\n{text}"))
        .to_string();
    let joined = sb.root().join(value.trim_start_matches('/'));
    (value, joined)
}

fn snapshot_changes(recs: &[Value]) -> Vec<(String, bool)> {
    of_type(recs, "snapshot")
        .iter()
        .map(|r| {
            (
                r["target"].as_str().unwrap().to_string(),
                r["changed"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn units_point_at_the_snapshot_and_the_config_still_loads_once_the_checkout_is_gone() {
    let sb = Sandbox::new("snapshot-gone", "");
    let tmp = tempfile::tempdir().unwrap();
    let co = checkout(tmp.path());
    let (code, recs, err) = bs_jobs(&sb, &co, &["apply"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        snapshot_changes(&recs),
        [
            ("/var/lib/bs/repo/backends/defaults.toml".to_string(), true),
            (
                "/var/lib/bs/repo/backends/test/backend.toml".to_string(),
                true
            )
        ]
    );
    let backend = of_type(&recs, "snapshot")[1];
    assert_eq!(backend["action"], "write_snapshot");
    assert_eq!(
        backend["source"],
        co.join("backends/test/backend.toml").display().to_string()
    );
    for unit in ["bs-jobs-poller.service", "bs-jobs-worker.service"] {
        let (value, joined) = unit_repo(&sb, unit);
        assert_eq!(value, "/var/lib/bs/repo", "{unit}");
        let text =
            std::fs::read_to_string(sb.root().join("etc/systemd/system").join(unit)).unwrap();
        assert!(!text.contains(&co.display().to_string()), "{text}");
        assert_eq!(
            std::fs::read(joined.join("backends/test/backend.toml")).unwrap(),
            std::fs::read(co.join("backends/test/backend.toml")).unwrap()
        );
    }

    // The operator's checkout goes away: what the units read still loads.
    let moved = tmp.path().join("moved");
    std::fs::rename(&co, &moved).unwrap();
    let (code, _, err) = bs_jobs(&sb, &co, &["ls"]);
    assert_eq!(code, 2, "the checkout really is gone: {err}");
    let (_, snapshot) = unit_repo(&sb, "bs-jobs-worker.service");
    let (code, recs, err) = bs_jobs(&sb, &snapshot, &["ls"]);
    assert_eq!(code, 0, "bs-jobs ls with the units' BS_REPO: {err}");
    assert_eq!(recs.last().unwrap()["ok"], true);

    // Back where it was, unchanged: a second apply changes nothing.
    std::fs::rename(&moved, &co).unwrap();
    let (code, recs, err) = bs_jobs(&sb, &co, &["apply"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(recs.last().unwrap()["changed"], 0, "{recs:#?}");
    assert!(snapshot_changes(&recs).iter().all(|(_, c)| !c));
    assert!(of_type(&recs, "note").is_empty(), "{recs:#?}");
}

#[test]
fn a_changed_backend_toml_is_drift_and_reaches_the_snapshot_at_the_next_apply() {
    let sb = Sandbox::new("snapshot-changed", "");
    let tmp = tempfile::tempdir().unwrap();
    let co = checkout(tmp.path());
    assert_eq!(bs_jobs(&sb, &co, &["apply"]).0, 0);
    assert_eq!(bs_jobs(&sb, &co, &["check"]).0, 0);

    let layer = co.join("backends/test/backend.toml");
    let text = std::fs::read_to_string(&layer).unwrap().replacen(
        "description = \"",
        "description = \"merged change: ",
        1,
    );
    std::fs::write(&layer, &text).unwrap();
    let (code, recs, _) = bs_jobs(&sb, &co, &["check"]);
    assert_eq!(
        code, 3,
        "a snapshot behind the checkout is drift: {recs:#?}"
    );

    // A plan taken now is stale once the checkout moves on again.
    let (_, plan, _) = bs_jobs(&sb, &co, &["plan"]);
    assert_eq!(
        snapshot_changes(&plan),
        [
            ("/var/lib/bs/repo/backends/defaults.toml".to_string(), false),
            (
                "/var/lib/bs/repo/backends/test/backend.toml".to_string(),
                true
            )
        ]
    );

    let (code, recs, err) = bs_jobs(&sb, &co, &["apply"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(recs.last().unwrap()["changed"], 1, "{recs:#?}");
    let snap = sb.root().join("var/lib/bs/repo/backends/test/backend.toml");
    assert_eq!(std::fs::read_to_string(&snap).unwrap(), text);
    assert!(of_type(&recs, "unit").iter().all(|u| u["changed"] == false));
    let notes = of_type(&recs, "note");
    assert_eq!(notes.len(), 1, "{recs:#?}");
    assert!(notes[0]["message"].as_str().unwrap().contains("next start"));
    // The poller is restarted to read it (skipped and said so under a
    // sandbox root); the worker, which would re-run its jobs, is not.
    let commands: Vec<(String, bool)> = of_type(&recs, "command")
        .iter()
        .map(|c| {
            let argv: Vec<&str> = c["argv"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            (argv.join(" "), c["skipped"] == true)
        })
        .collect();
    assert_eq!(
        commands,
        [(
            "systemctl try-restart bs-jobs-poller.service".to_string(),
            true
        )],
        "{recs:#?}"
    );

    // The stale plan: its content is not what the checkout says now.
    std::fs::write(&layer, text.replacen("merged change: ", "", 1)).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_bs-jobs"));
    c.arg("--root")
        .arg(sb.root())
        .arg("--repo")
        .arg(&co)
        .args(["--backend", "test", "apply", "--plan", "-"])
        .env_remove("BS_ROOT")
        .env_remove("BS_REPO")
        .env_remove("BS_BACKEND")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for r in &plan {
            writeln!(stdin, "{r}").unwrap();
        }
    }
    let (code, recs, err) = parse(child.wait_with_output().unwrap());
    assert_eq!(code, 0, "{err}");
    assert_eq!(of_type(&recs, "skipped").len(), 1, "{recs:#?}");
    assert_eq!(std::fs::read_to_string(&snap).unwrap(), text);
}
