//! A sandbox root for bs-perms' integration tests: the account files of a
//! fresh Debian system (bin/sandbox-root) plus the service account and the
//! groups the trees name, and a way to run the binary against it.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub const OPENSAFELY: u32 = 10000;
pub const REVIEWERS: u32 = 10010;
pub const RESEARCHERS: u32 = 10020;
/// A reviewer: a uid that exists only in the sandbox's files.
pub const REVIEWER_UID: u32 = 20001;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub records: Vec<Value>,
    pub stderr: String,
}

impl Run {
    pub fn of_type(&self, t: &str) -> Vec<&Value> {
        self.records.iter().filter(|r| r["type"] == t).collect()
    }

    pub fn summary(&self) -> &Value {
        self.records.last().expect("a summary line")
    }

    pub fn path(&self, target: &str) -> Option<&Value> {
        self.records
            .iter()
            .find(|r| r["type"] == "path" && r["target"] == target)
    }

    pub fn errors(&self, kind: &str) -> Vec<&Value> {
        self.records
            .iter()
            .filter(|r| r["type"] == "error" && r["kind"] == kind)
            .collect()
    }
}

impl Sandbox {
    /// A sandbox root; `local` is written to etc/bs/local.toml (host overrides).
    pub fn new(local: &str) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        // Others must be able to reach the tree to test access as them.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path().join("root");
        let status = Command::new(repo().join("bin/sandbox-root"))
            .arg(&root)
            .output()
            .unwrap();
        assert!(status.status.success(), "{status:?}");
        let append = |file: &str, text: &str| {
            let p = root.join(file);
            let mut s = std::fs::read_to_string(&p).unwrap();
            s.push_str(text);
            std::fs::write(&p, s).unwrap();
        };
        append(
            "etc/passwd",
            &format!(
                "opensafely:x:{OPENSAFELY}:{OPENSAFELY}::/home/opensafely:/bin/bash\n\
                 rita:x:{REVIEWER_UID}:{REVIEWER_UID}::/home/rita:/bin/bash\n"
            ),
        );
        append(
            "etc/group",
            &format!(
                "opensafely:x:{OPENSAFELY}:\nreviewers:x:{REVIEWERS}:rita\nresearchers:x:{RESEARCHERS}:\n\
                 developers:x:10030:\nrita:x:{REVIEWER_UID}:\n"
            ),
        );
        std::fs::create_dir_all(root.join("etc/bs")).unwrap();
        std::fs::write(root.join("etc/bs/local.toml"), local).unwrap();
        // sshd -t insists on its privilege separation directory, even to
        // check a config; the system-test image and real hosts have it.
        std::fs::create_dir_all("/run/sshd").unwrap();
        Sandbox { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A system path inside the sandbox.
    pub fn p(&self, system: &str) -> PathBuf {
        self.root().join(system.trim_start_matches('/'))
    }

    pub fn set_local(&self, local: &str) {
        std::fs::write(self.p("/etc/bs/local.toml"), local).unwrap();
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = assert_cmd::Command::cargo_bin("bs-perms")
            .unwrap()
            .args([
                "--root",
                self.root().to_str().unwrap(),
                "--repo",
                repo().to_str().unwrap(),
                "--backend",
                "test",
            ])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let records = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        Run {
            code: out.status.code().unwrap_or(-1),
            records,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Only the trees (no sudoers, no login hardening): faster tree tests.
pub const TREES_ONLY: &str = "[perms]\nsudoers = []\n[perms.sudo]\ndefaults = []\nservice_group = \"\"\n[perms.login]\nenabled = false\n";

/// Run argv as uid:gid with exactly these supplementary groups.
pub fn as_user(uid: u32, gid: u32, groups: &[u32], argv: &[&str]) -> std::process::Output {
    let groups = if groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        format!(
            "--groups={}",
            groups
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    Command::new("setpriv")
        .args([format!("--reuid={uid}"), format!("--regid={gid}"), groups])
        .args(argv)
        .output()
        .unwrap()
}
