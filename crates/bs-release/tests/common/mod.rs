//! Test kit: a sandbox root with people in its passwd/group, a workspace with
//! outputs and a job manifest, the bs-release binary run as a sudo user, and
//! a fake release server on 127.0.0.1 that speaks the real contract and can
//! fail, stall and lie.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use sha2::Digest;

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

pub fn repo() -> PathBuf {
    Path::new(REPO).join("../..").canonicalize().unwrap()
}

/// People: (name, uid, groups).
pub const PEOPLE: &[(&str, u32, &[&str])] = &[
    ("alice", 2001, &["researchers"]),
    ("rita", 2002, &["reviewers"]),
    ("victor", 2003, &["reviewers"]),
    ("dev", 2004, &["developers", "researchers", "reviewers"]),
    ("eve", 2005, &[]),
];

pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let st = std::process::Command::new(repo().join("bin/sandbox-root"))
            .arg(&root)
            .output()
            .unwrap();
        assert!(st.status.success(), "{st:?}");
        let mut passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
        let mut group = std::fs::read_to_string(root.join("etc/group")).unwrap();
        passwd.push_str("opensafely:x:10000:10000::/home/opensafely:/bin/bash\n");
        group.push_str("opensafely:x:10000:\n");
        let mut members: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, uid, groups) in PEOPLE {
            passwd.push_str(&format!("{name}:x:{uid}:{uid}::/home/{name}:/bin/bash\n"));
            group.push_str(&format!("{name}:x:{uid}:\n"));
            for g in *groups {
                members.entry(g).or_default().push(name);
            }
        }
        for (g, gid) in [
            ("reviewers", 10010),
            ("researchers", 10011),
            ("developers", 10012),
        ] {
            let m = members.get(g).map(|v| v.join(",")).unwrap_or_default();
            group.push_str(&format!("{g}:x:{gid}:{m}\n"));
        }
        std::fs::write(root.join("etc/passwd"), passwd).unwrap();
        std::fs::write(root.join("etc/group"), group).unwrap();
        std::fs::create_dir_all(root.join("etc/bs")).unwrap();
        let secrets = root.join("etc/bs/release.env");
        std::fs::write(&secrets, "RELEASE_TOKEN=sekrit-token-123\n").unwrap();
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
        let sb = Sandbox { dir, root };
        sb.local_toml("");
        sb
    }

    /// `<root>/etc/bs/local.toml` with a [release] section (plus `extra` lines in it).
    pub fn local_toml(&self, extra: &str) {
        let mut text = format!("[release]\n{extra}\n");
        for (k, v) in [("retry_delay_ms", "20"), ("upload_timeout_secs", "5")] {
            if !extra.contains(k) {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        std::fs::write(self.root.join("etc/bs/local.toml"), text).unwrap();
    }

    pub fn server(&self, url: &str) {
        self.local_toml(&format!("server = {url:?}"));
    }

    pub fn medium(&self) -> PathBuf {
        self.root.join("srv/medium_privacy")
    }

    pub fn ws(&self, ws: &str) -> PathBuf {
        self.medium().join("workspaces").join(ws)
    }

    /// Write outputs into a workspace and a manifest that records them.
    pub fn outputs(&self, ws: &str, files: &[(&str, &[u8])]) {
        let dir = self.ws(ws);
        let mut manifest = self.manifest(ws);
        for (path, bytes) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
            // job-runner's get_output_metadata (agent/executors/local.py).
            manifest["outputs"][*path] = json!({
                "level": "moderately_sensitive", "job_id": "job-1", "job_request": "rap-1",
                "action": "generate", "user": "alice",
                "repo": "https://github.com/opensafely/study", "commit": "abc123",
                "size": bytes.len(), "timestamp": 1795334400.0,
                "content_hash": sha256(bytes), "excluded": false, "message": null,
                "row_count": null, "col_count": null,
            });
        }
        self.write_manifest(ws, &manifest);
    }

    pub fn manifest(&self, ws: &str) -> Value {
        let p = self.ws(ws).join("metadata/manifest.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).unwrap(),
            Err(_) => json!({"workspace": ws, "repo": null, "outputs": {}}),
        }
    }

    pub fn write_manifest(&self, ws: &str, m: &Value) {
        let p = self.ws(ws).join("metadata/manifest.json");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, serde_json::to_vec_pretty(m).unwrap()).unwrap();
    }

    pub fn cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("bs-release"));
        c.env("BS_ROOT", &self.root)
            .env("BS_REPO", repo())
            .env("BS_BACKEND", "test")
            .env_remove("SUDO_USER")
            .env_remove("SUDO_UID")
            .env_remove("SUDO_GID")
            .env_remove("SUDO_COMMAND");
        c
    }

    /// Run as `user` the way sudo reports them.
    pub fn run(&self, user: &str, args: &[&str]) -> Run {
        let uid = PEOPLE
            .iter()
            .find(|p| p.0 == user)
            .map(|p| p.1)
            .unwrap_or(9999);
        let mut c = self.cmd();
        c.env("SUDO_USER", user)
            .env("SUDO_UID", uid.to_string())
            .args(args);
        Run::of(c)
    }

    pub fn audit(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.root.join("var/lib/bs/release/audit.jsonl"))
            .unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn request_json(&self, id: &str) -> Value {
        serde_json::from_slice(
            &std::fs::read(self.medium().join("requests").join(id).join("request.json")).unwrap(),
        )
        .unwrap()
    }

    pub fn request_bytes(&self, id: &str) -> Vec<u8> {
        std::fs::read(self.medium().join("requests").join(id).join("request.json")).unwrap()
    }

    /// Create, fill and submit a request by alice; returns its id.
    pub fn submitted(&self, ws: &str, paths: &[&str]) -> String {
        let r = self.run("alice", &["request", "create", ws]);
        r.ok();
        let id = r.summary()["id"].as_str().unwrap().to_string();
        let mut args = vec!["request", "add", id.as_str()];
        args.extend_from_slice(paths);
        self.run("alice", &args).ok();
        self.run("alice", &["request", "submit", &id]).ok();
        id
    }

    /// Submitted, two approvals on every file, approved.
    pub fn approved(&self, ws: &str, paths: &[&str]) -> String {
        let id = self.submitted(ws, paths);
        for reviewer in ["rita", "victor"] {
            for p in paths {
                self.run(reviewer, &["review", &id, p, "--approve"]).ok();
            }
        }
        self.run("rita", &["request", "approve", &id]).ok();
        id
    }
}

pub struct Run {
    pub code: i32,
    pub records: Vec<Value>,
    pub stderr: String,
}

impl Run {
    pub fn of(mut c: std::process::Command) -> Run {
        let out = c.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let records = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
            .collect();
        Run {
            code: out.status.code().unwrap_or(-1),
            records,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn ok(&self) -> &Run {
        assert_eq!(
            self.code, 0,
            "records: {:#?}\nstderr: {}",
            self.records, self.stderr
        );
        self
    }

    pub fn summary(&self) -> &Value {
        let s = self.records.last().unwrap();
        assert_eq!(s["type"], "summary");
        s
    }

    pub fn of_type(&self, t: &str) -> Vec<&Value> {
        self.records.iter().filter(|r| r["type"] == t).collect()
    }

    pub fn error_kinds(&self) -> Vec<String> {
        self.of_type("error")
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect()
    }
}

// ------------------------------------------------------------- fake release server

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// What the fake server does; tests change it between runs.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Answer the create call with 201 but no Release-Id.
    pub no_release_id: bool,
    /// Sleep this long before answering any call.
    pub stall: Option<Duration>,
    /// Answer uploads of these file names with 500, this many times each.
    pub fail_upload: BTreeMap<String, u32>,
    /// Answer uploads of these file names with 400 "already uploaded".
    pub already: Vec<String>,
}

pub struct FakeServer {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    pub uploads: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
}

impl FakeServer {
    pub fn start() -> FakeServer {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let uploads = Arc::new(Mutex::new(BTreeMap::new()));
        let (s2, b2, u2) = (seen.clone(), behaviour.clone(), uploads.clone());
        std::thread::spawn(move || {
            let mut next_id = 0u32;
            for mut req in server.incoming_requests() {
                let mut body = Vec::new();
                std::io::Read::read_to_end(req.as_reader(), &mut body).unwrap();
                let headers: BTreeMap<String, String> = req
                    .headers()
                    .iter()
                    .map(|h| {
                        (
                            h.field.as_str().as_str().to_ascii_lowercase(),
                            h.value.as_str().to_string(),
                        )
                    })
                    .collect();
                let url = req.url().to_string();
                s2.lock().unwrap().push(Seen {
                    method: req.method().to_string(),
                    url: url.clone(),
                    headers: headers.clone(),
                    body: body.clone(),
                });
                let b = b2.lock().unwrap().clone();
                if let Some(d) = b.stall {
                    std::thread::sleep(d);
                }
                let respond = |req: tiny_http::Request,
                               code: u16,
                               text: &str,
                               extra: Option<(&str, String)>| {
                    let mut r = tiny_http::Response::from_string(text).with_status_code(code);
                    if let Some((k, v)) = extra {
                        r = r.with_header(
                            tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap(),
                        );
                    }
                    let _ = req.respond(r);
                };
                if headers.get("authorization").map(String::as_str) != Some("sekrit-token-123") {
                    respond(req, 403, "bad token", None);
                    continue;
                }
                if url.starts_with("/releases/workspace/") {
                    let parsed: Result<Value, _> = serde_json::from_slice(&body);
                    if parsed.is_err() {
                        respond(req, 400, "bad json", None);
                    } else if b.no_release_id {
                        respond(req, 201, "{}", None);
                    } else {
                        next_id += 1;
                        respond(req, 201, "", Some(("Release-Id", format!("rel-{next_id}"))));
                    }
                } else if url.starts_with("/releases/release/") {
                    let name = headers
                        .get("content-disposition")
                        .and_then(|d| d.split("filename=\"").nth(1))
                        .map(|s| s.trim_end_matches('"').to_string())
                        .unwrap_or_default();
                    if b.already.contains(&name) {
                        respond(
                            req,
                            400,
                            "{\"detail\": \"This file has already been uploaded\"}",
                            None,
                        );
                        continue;
                    }
                    let fails = b.fail_upload.get(&name).copied().unwrap_or(0);
                    if fails > 0 {
                        b2.lock()
                            .unwrap()
                            .fail_upload
                            .insert(name.clone(), fails - 1);
                        respond(req, 500, "upstream broke", None);
                        continue;
                    }
                    u2.lock().unwrap().insert(name, body);
                    respond(req, 201, "", None);
                } else {
                    respond(req, 404, "no", None);
                }
            }
        });
        FakeServer {
            url,
            seen,
            behaviour,
            uploads,
        }
    }

    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.behaviour.lock().unwrap());
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn creates(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.url.starts_with("/releases/workspace/"))
            .count()
    }
}
