//! Shared test kit: a tiny image made from Debian's static busybox (no
//! registry needed), unique names, and cleanup of everything a test made.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use bs_engine::{labels, Engine, DEFAULT_SOCKET};

pub const TEST_IMAGE_REPO: &str = "bs-docker-test";
pub const TEST_IMAGE_TAG: &str = "busybox";

pub fn test_image() -> String {
    format!("{TEST_IMAGE_REPO}:{TEST_IMAGE_TAG}")
}

/// The engine the tests use: the real one. Missing is a failure, not a skip.
pub fn engine() -> Engine {
    Engine::connect(DEFAULT_SOCKET).expect("the Docker engine must be reachable for these tests")
}

/// A root-file-system tarball holding busybox, `sh` and a passwd file with
/// the service account (10000), made with tar from a temp dir.
pub fn busybox_rootfs_tar() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    for d in ["bin", "etc", "tmp"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", r.join("bin/busybox")).expect("busybox-static must be installed");
    for applet in ["sh", "sleep", "echo", "cat", "id", "true", "false", "ls"] {
        std::os::unix::fs::symlink("/bin/busybox", r.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        r.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nopensafely:x:10000:10000::/tmp:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(r.join("etc/group"), "root:x:0:\nopensafely:x:10000:\n").unwrap();
    let out = Command::new("tar")
        .args(["-C"])
        .arg(r)
        .args(["--numeric-owner", "--owner=0", "--group=0", "-cf", "-", "."])
        .output()
        .unwrap();
    assert!(out.status.success(), "tar failed");
    out.stdout
}

/// Make sure the test image exists (imported once; concurrent imports of
/// the same tarball are harmless: same content, same tag).
pub fn ensure_test_image(engine: &Engine) -> String {
    if engine.image_id(&test_image()).unwrap().is_none() {
        engine
            .import_rootfs(busybox_rootfs_tar(), TEST_IMAGE_REPO, TEST_IMAGE_TAG)
            .unwrap();
    }
    test_image()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, with a prefix sweepers know.
pub fn unique(what: &str) -> String {
    format!(
        "bstest-{what}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Removes the named containers and networks when dropped, pass or fail.
pub struct Cleanup {
    pub containers: Vec<String>,
    pub networks: Vec<String>,
    pub images: Vec<String>,
}

impl Cleanup {
    pub fn new() -> Cleanup {
        Cleanup {
            containers: Vec::new(),
            networks: Vec::new(),
            images: Vec::new(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(engine) = Engine::connect(DEFAULT_SOCKET) {
            for c in &self.containers {
                let _ = engine.remove(c);
            }
            for n in &self.networks {
                let _ = engine.block_on(engine.docker().remove_network(n));
            }
            for i in &self.images {
                let _ = engine.block_on(engine.docker().remove_image(
                    i,
                    None::<bollard::query_parameters::RemoveImageOptions>,
                    None,
                ));
            }
        }
    }
}

pub fn test_labels() -> std::collections::BTreeMap<String, String> {
    [(labels::TEST.to_string(), "1".to_string())]
        .into_iter()
        .collect()
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// A repository checkout with the real defaults.toml and a backend written
/// by the test, and a sandbox root whose `/var/run/docker.sock` is a link
/// to the real engine's socket (or absent, for the unreachable case).
pub struct Sandbox {
    pub repo: tempfile::TempDir,
    pub root: tempfile::TempDir,
}

pub const BACKEND: &str = "t";

impl Sandbox {
    pub fn new(with_engine: bool) -> Sandbox {
        let repo = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../backends/defaults.toml");
        std::fs::create_dir_all(repo.path().join("backends").join(BACKEND)).unwrap();
        std::fs::copy(src, repo.path().join("backends/defaults.toml")).unwrap();
        let r = root.path();
        for d in ["etc/bs", "run/lock", "var/run", "var/lib"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(
            r.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\nopensafely:x:10000:10000::/home/opensafely:/bin/bash\n",
        )
        .unwrap();
        std::fs::write(
            r.join("etc/group"),
            "root:x:0:\nopensafely:x:10000:\ndocker:x:990:opensafely\n",
        )
        .unwrap();
        if with_engine {
            std::os::unix::fs::symlink("/var/run/docker.sock", r.join("var/run/docker.sock"))
                .unwrap();
        }
        let s = Sandbox { repo, root };
        s.backend("");
        s
    }

    /// Write the backend's backend.toml: `[backend]` plus `body`.
    pub fn backend(&self, body: &str) {
        std::fs::write(
            self.repo
                .path()
                .join("backends")
                .join(BACKEND)
                .join("backend.toml"),
            format!("[backend]\nname = \"{BACKEND}\"\n\n{body}"),
        )
        .unwrap();
    }

    pub fn local(&self, body: &str) {
        std::fs::write(self.root.path().join("etc/bs/local.toml"), body).unwrap();
    }

    /// What an operator's restart of the engine leaves behind: dockerd's
    /// pid file, newer than the owed-restart marker, naming a live process
    /// (this test's). apply writes daemon.json under the sandbox and, with
    /// restarts not allowed, owes a restart that `check` counts as drift.
    pub fn engine_restarted_by_hand(&self) {
        std::fs::write(
            self.path("/var/run/docker.pid"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
    }

    pub fn path(&self, system: &str) -> std::path::PathBuf {
        self.root.path().join(system.trim_start_matches('/'))
    }

    /// Run bs-docker; the exit code and the records.
    pub fn run(&self, args: &[&str]) -> (i32, Vec<serde_json::Value>) {
        let out = assert_cmd::Command::cargo_bin("bs-docker")
            .unwrap()
            .arg("--root")
            .arg(self.root.path())
            .arg("--repo")
            .arg(self.repo.path())
            .args(["--backend", BACKEND])
            .args(args)
            .env_remove("BS_ROOT")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
            .collect();
        let last = records.last().expect("a summary line");
        assert_eq!(last["type"], "summary", "{text}");
        (out.status.code().unwrap_or(-1), records)
    }
}

/// Records of a type.
pub fn of_type<'a>(records: &'a [serde_json::Value], t: &str) -> Vec<&'a serde_json::Value> {
    records.iter().filter(|r| r["type"] == t).collect()
}

/// The one record of `type` with `target`.
pub fn find<'a>(records: &'a [serde_json::Value], t: &str, target: &str) -> &'a serde_json::Value {
    records
        .iter()
        .find(|r| r["type"] == t && r["target"] == target)
        .unwrap_or_else(|| panic!("no {t} record for {target} in {records:#?}"))
}

pub fn errors(records: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    of_type(records, "error")
}
