//! Shared kit of the bs-jobs integration tests: a sandbox root with the
//! test backend's config, the real binary, and clean-up of the job
//! containers a test started (by their workspace label).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const IMAGE: &str = "bs-busybox:latest";

pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub ws: String,
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Fail loudly (never skip) when the engine or the job image is missing.
pub fn require_engine() {
    let ok = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        let built = Command::new(repo().join("tests/images/build-busybox"))
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(built, "the job image {IMAGE} is missing and tests/images/build-busybox could not build it (is the Docker engine up?)");
    }
}

impl Sandbox {
    /// A fresh root; `extra` is appended to its /etc/bs/local.toml.
    pub fn new(test: &str, extra: &str) -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("bs-jobs-test.")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("etc/bs")).unwrap();
        // bs-jobs reaches the engine at `[docker] socket` under the root.
        std::fs::create_dir_all(dir.path().join("var/run")).unwrap();
        std::os::unix::fs::symlink(
            "/var/run/docker.sock",
            dir.path().join("var/run/docker.sock"),
        )
        .unwrap();
        let limit = if extra.contains("time_limit_secs") {
            ""
        } else {
            "time_limit_secs = 120\n"
        };
        let local = format!(
            "[jobs]\n{limit}default_memory = \"256m\"\ndefault_cpu = 1.0\nmax_workers = 1\npoll_interval_secs = 1\nhttp_backoff_ms = 50\n{extra}\n"
        );
        std::fs::write(dir.path().join("etc/bs/local.toml"), local).unwrap();
        let ws = format!("t{}-{}", std::process::id(), test.replace('_', "-"));
        Sandbox { dir, ws }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bs-jobs"));
        c.arg("--root")
            .arg(self.root())
            .arg("--repo")
            .arg(repo())
            .arg("--backend")
            .arg("test");
        c.env_remove("BS_ROOT")
            .env_remove("BS_REPO")
            .env_remove("BS_BACKEND");
        c
    }

    pub fn run(&self, args: &[&str]) -> (i32, Vec<Value>, String) {
        let out = self.cmd().args(args).output().unwrap();
        parse(out)
    }

    pub fn submit(&self, job: &Value) -> (i32, Vec<Value>, String) {
        use std::io::Write;
        let mut child = self
            .cmd()
            .arg("submit")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(job.to_string().as_bytes())
            .unwrap();
        parse(child.wait_with_output().unwrap())
    }

    pub fn job(&self, id: &str, command: &[&str]) -> Value {
        serde_json::json!({
            "id": self.id(id), "workspace": self.ws, "action": id, "image": IMAGE,
            "command": command, "commit": "abc123",
        })
    }

    /// Job ids are unique per test process, so concurrent runs never share
    /// a container name.
    pub fn id(&self, short: &str) -> String {
        format!("{}-{short}", self.ws)
    }

    pub fn high(&self) -> PathBuf {
        self.root()
            .join("srv/high_privacy/workspaces")
            .join(&self.ws)
    }

    pub fn medium(&self) -> PathBuf {
        self.root()
            .join("srv/medium_privacy/workspaces")
            .join(&self.ws)
    }

    pub fn jobs_dir(&self, state: &str) -> PathBuf {
        self.root().join("var/lib/bs/jobs").join(state)
    }

    pub fn entries(&self, state: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.jobs_dir(state))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The entry of a finished job in done/ or failed/.
    pub fn finished(&self, short: &str) -> (String, Value) {
        let id = self.id(short);
        for state in ["done", "failed"] {
            for n in self.entries(state) {
                if n.ends_with(&format!("-{id}.json")) {
                    let v: Value = serde_json::from_slice(
                        &std::fs::read(self.jobs_dir(state).join(&n)).unwrap(),
                    )
                    .unwrap();
                    return (state.to_string(), v);
                }
            }
        }
        panic!(
            "job {id} is not finished; queue: {:?} running: {:?}",
            self.entries("queue"),
            self.entries("running")
        );
    }

    /// Containers of this test's jobs (running or not).
    pub fn containers(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args([
                "ps",
                "-a",
                "-q",
                "--filter",
                &format!("label=bs.job.workspace={}", self.ws),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    pub fn wait_for_container(&self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            let out = Command::new("docker")
                .args([
                    "ps",
                    "-q",
                    "--filter",
                    &format!("label=bs.job.workspace={}", self.ws),
                ])
                .output()
                .unwrap();
            if !out.stdout.is_empty() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for c in self.containers() {
            let _ = Command::new("docker").args(["rm", "-f", "-v", &c]).output();
        }
    }
}

pub fn parse(out: Output) -> (i32, Vec<Value>, String) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let recs = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("stdout line is not JSON: {l}")))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        recs,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn of_type<'a>(recs: &'a [Value], t: &str) -> Vec<&'a Value> {
    recs.iter().filter(|r| r["type"] == t).collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2_shim::digest;
    digest(bytes)
}

/// sha256 through the sha256sum tool, so the test does not trust our code.
mod sha2_shim {
    pub fn digest(bytes: &[u8]) -> String {
        use std::io::Write;
        let mut child = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }
}
