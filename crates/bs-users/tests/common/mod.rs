//! Test kit for bs-users: a repository with a backend, a sandbox root, a
//! fake key server on 127.0.0.1 that can fail, and a runner that decodes
//! the JSON records.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What the fake key server answers for a login.
#[derive(Clone, Debug)]
pub enum Answer {
    Keys(String),
    Status(u16),
    Html,
    Stall(Duration),
    Big(usize),
}

/// GitHub's keys endpoint, faked: `GET /<login>.keys`.
pub struct KeyServer {
    pub url: String,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    pub hits: Arc<Mutex<Vec<String>>>,
}

impl KeyServer {
    pub fn start() -> KeyServer {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let answers: Arc<Mutex<HashMap<String, Answer>>> = Arc::default();
        let hits: Arc<Mutex<Vec<String>>> = Arc::default();
        let server = Arc::new(server);
        for _ in 0..8 {
            let (server, answers, hits) = (server.clone(), answers.clone(), hits.clone());
            std::thread::spawn(move || loop {
                let Ok(req) = server.recv() else { return };
                let login = req
                    .url()
                    .trim_start_matches('/')
                    .trim_end_matches(".keys")
                    .to_string();
                hits.lock().unwrap().push(login.clone());
                // An unknown login answers 200 with an empty body, like GitHub.
                let answer = answers
                    .lock()
                    .unwrap()
                    .get(&login)
                    .cloned()
                    .unwrap_or(Answer::Keys(String::new()));
                let resp = match answer {
                    Answer::Keys(body) => tiny_http::Response::from_string(body),
                    Answer::Status(code) => tiny_http::Response::from_string("error").with_status_code(code),
                    Answer::Html => tiny_http::Response::from_string(
                        "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
                    ),
                    Answer::Stall(d) => {
                        std::thread::sleep(d);
                        tiny_http::Response::from_string("")
                    }
                    Answer::Big(n) => tiny_http::Response::from_string("ssh-ed25519 ".repeat(n / 12 + 1)),
                };
                let _ = req.respond(resp);
            });
        }
        KeyServer { url, answers, hits }
    }

    pub fn set(&self, login: &str, answer: Answer) {
        self.answers
            .lock()
            .unwrap()
            .insert(login.to_string(), answer);
    }
}

pub fn keypair(comment: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

pub fn fingerprint(pubkey: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.pub");
    std::fs::write(&p, pubkey).unwrap();
    let out = std::process::Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(&p)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

/// A repository (real backends/defaults.toml, a test backend) and a sandbox root.
pub struct Env {
    pub repo: tempfile::TempDir,
    pub root: tempfile::TempDir,
}

impl Env {
    /// `backend_extra` is appended to the backend's TOML.
    pub fn new(backend_extra: &str) -> Env {
        let repo = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = repo.path();
        std::fs::create_dir_all(r.join("backends/t")).unwrap();
        std::fs::create_dir_all(r.join("keys")).unwrap();
        std::fs::copy(
            workspace().join("backends/defaults.toml"),
            r.join("backends/defaults.toml"),
        )
        .unwrap();
        std::fs::write(
            r.join("backends/t/backend.toml"),
            format!(
                "[backend]\nname = \"t\"\n\n[users]\nfetch_keys = false\nrefresh = \"cron\"\n\n\
                 [users.lists.researchers]\nfile = \"researchers\"\ngroups = [\"researchers\", \"reviewers\", \"docker\"]\n\n\
                 [users.lists.reviewers]\nfile = \"reviewers\"\ngroups = [\"reviewers\"]\n{backend_extra}"
            ),
        )
        .unwrap();
        for list in ["developers", "researchers", "reviewers"] {
            std::fs::write(r.join(list), "").unwrap();
        }
        let sandbox = root.path().join("r");
        let st = std::process::Command::new(workspace().join("bin/sandbox-root"))
            .arg(&sandbox)
            .output()
            .unwrap();
        assert!(st.status.success(), "{st:?}");
        Env { repo, root }
    }

    pub fn root(&self) -> PathBuf {
        self.root.path().join("r")
    }

    pub fn path(&self, system: &str) -> PathBuf {
        self.root().join(system.trim_start_matches('/'))
    }

    pub fn list(&self, name: &str, text: &str) {
        std::fs::write(self.repo.path().join(name), text).unwrap();
    }

    pub fn key_file(&self, login: &str, text: &str) {
        std::fs::write(self.repo.path().join("keys").join(login), text).unwrap();
    }

    pub fn cmd(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::cargo_bin("bs-users").unwrap();
        c.env("BS_ROOT", self.root())
            .env("BS_REPO", self.repo.path())
            .env("BS_BACKEND", "t")
            .env_remove("HTTPS_PROXY")
            .env_remove("HTTP_PROXY")
            .env_remove("ALL_PROXY")
            .timeout(Duration::from_secs(120));
        c
    }

    /// The same invocation as a std Command, for spawn/kill control.
    pub fn std_cmd(&self, arg: &str) -> std::process::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("bs-users"));
        c.env("BS_ROOT", self.root())
            .env("BS_REPO", self.repo.path())
            .env("BS_BACKEND", "t")
            .arg(arg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd().args(args).output().unwrap())
    }

    pub fn read(&self, system: &str) -> String {
        std::fs::read_to_string(self.path(system)).unwrap_or_default()
    }

    /// The members of a group in the sandbox's /etc/group.
    pub fn members(&self, group: &str) -> Vec<String> {
        self.read("/etc/group")
            .lines()
            .find(|l| l.split(':').next() == Some(group))
            .map(|l| {
                l.split(':')
                    .nth(3)
                    .unwrap_or("")
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Group names listing `user` as member.
    pub fn groups_of(&self, user: &str) -> Vec<String> {
        self.read("/etc/group")
            .lines()
            .filter(|l| {
                l.split(':')
                    .nth(3)
                    .unwrap_or("")
                    .split(',')
                    .any(|m| m == user)
            })
            .map(|l| l.split(':').next().unwrap().to_string())
            .collect()
    }

    pub fn shadow(&self, user: &str) -> Vec<String> {
        self.read("/etc/shadow")
            .lines()
            .find(|l| l.split(':').next() == Some(user))
            .map(|l| l.split(':').map(String::from).collect())
            .unwrap_or_default()
    }

    pub fn passwd(&self, user: &str) -> Vec<String> {
        self.read("/etc/passwd")
            .lines()
            .find(|l| l.split(':').next() == Some(user))
            .map(|l| l.split(':').map(String::from).collect())
            .unwrap_or_default()
    }

    /// Every file under the sandbox root, with its content, for "nothing changed" checks.
    /// The run lock holds the last holder's pid, so it is left out.
    pub fn snapshot(&self) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        for e in walkdir(self.root()) {
            if e.is_file() && !e.ends_with("run/lock/bs.lock") {
                out.push((
                    e.clone(),
                    String::from_utf8_lossy(&std::fs::read(&e).unwrap()).into_owned(),
                ));
            }
        }
        out.sort();
        out
    }

    pub fn temp_files(&self) -> Vec<PathBuf> {
        walkdir(self.root())
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().ends_with(".bs-tmp"))
                    .unwrap_or(false)
            })
            .collect()
    }
}

fn walkdir(dir: PathBuf) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// A finished run: exit code and decoded records.
pub struct Run {
    pub code: i32,
    pub records: Vec<Value>,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        let stdout = String::from_utf8(o.stdout).unwrap();
        let records = stdout
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
            })
            .collect::<Vec<_>>();
        Run {
            code: o.status.code().unwrap_or(-1),
            records,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    pub fn summary(&self) -> &Value {
        let last = self
            .records
            .last()
            .unwrap_or_else(|| panic!("no records; stderr: {}", self.stderr));
        assert_eq!(
            last["type"], "summary",
            "last record is not the summary: {last}"
        );
        last
    }

    pub fn changed(&self) -> u64 {
        self.summary()["changed"].as_u64().unwrap()
    }

    pub fn errors(&self) -> Vec<&Value> {
        self.records
            .iter()
            .filter(|r| r["type"] == "error")
            .collect()
    }

    pub fn errors_of(&self, kind: &str, target: &str) -> Vec<&Value> {
        self.errors()
            .into_iter()
            .filter(|r| r["kind"] == kind && r["target"] == target)
            .collect()
    }

    pub fn find(&self, rtype: &str, action: &str, target: &str) -> Option<&Value> {
        self.records
            .iter()
            .find(|r| r["type"] == rtype && r["action"] == action && r["target"] == target)
    }

    pub fn dump(&self) -> String {
        format!(
            "exit {}\n{}\nstderr: {}",
            self.code,
            self.records
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
            self.stderr
        )
    }
}
