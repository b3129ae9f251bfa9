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
    // A GitHub login with capitals: its Unix name is lower case.
    ("testcapitals", 2006, &["reviewers"]),
];

/// The GitHub login bs-users writes in the GECOS field (`GitHub <login>`).
pub fn github_login(name: &str) -> &str {
    match name {
        "testcapitals" => "TestCapitals",
        other => other,
    }
}

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
            let gecos = format!("GitHub {}", github_login(name));
            passwd.push_str(&format!(
                "{name}:x:{uid}:{uid}:{gecos}:/home/{name}:/bin/bash\n"
            ));
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
        self.describe("alice", &id, "default");
        self.run("alice", &["request", "submit", &id]).ok();
        id
    }

    /// `author` gives group `group` of request `id` its context and controls.
    pub fn describe(&self, author: &str, id: &str, group: &str) {
        self.run(
            author,
            &[
                "request",
                "group",
                id,
                group,
                "--context",
                "counts by group for table 1",
                "--controls",
                "counts under 8 suppressed, rounded to 5",
            ],
        )
        .ok();
    }

    /// Submitted, two submitted reviews approving every file, approved.
    pub fn approved(&self, ws: &str, paths: &[&str]) -> String {
        let id = self.submitted(ws, paths);
        for reviewer in ["rita", "victor"] {
            self.review_all(reviewer, &id, paths, "--approve");
        }
        self.run("rita", &["request", "approve", &id]).ok();
        id
    }

    /// `reviewer` votes `flag` on every path, then submits their review.
    pub fn review_all(&self, reviewer: &str, id: &str, paths: &[&str], flag: &str) {
        for p in paths {
            self.run(reviewer, &["review", id, p, flag]).ok();
        }
        self.run(reviewer, &["request", "submit-review", id]).ok();
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
    pub status: u16,
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
    /// Answer uploads of these file names as job-server does a file it has.
    pub already: Vec<String>,
    /// Stall the create's answer past the client's timeout this many times,
    /// after making the release (a create whose answer was lost).
    pub lose_create_answers: u32,
}

/// A release as job-server keeps it: workspace, requested files (name ->
/// sha256) and the ones uploaded.
#[derive(Clone, Debug, Default)]
pub struct FakeRelease {
    pub workspace: String,
    pub files: BTreeMap<String, String>,
    pub uploaded: BTreeMap<String, Vec<u8>>,
}

pub struct FakeServer {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    pub uploads: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    pub releases: Arc<Mutex<BTreeMap<String, FakeRelease>>>,
    pub events: Arc<Mutex<Vec<Value>>>,
}

/// job-server's users, by username, case-sensitive (User.objects.get(username=...)).
pub const SERVER_USERS: &[&str] = &["rita", "victor", "dev", "TestCapitals", "alice"];
pub const MAX_FILE: u64 = 16 * 1024 * 1024;

/// DRF's answer for a missing field, and the other field errors.
fn required(errors: &mut serde_json::Map<String, Value>, at: &str) {
    errors.insert(at.into(), json!(["This field is required."]));
}

/// A date DRF's DateTimeField parses (ISO 8601).
fn is_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 16
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b' ')
        && b[13] == b':'
}

/// job-server's ReleaseSerializer / FileSerializer / ReviewSerializer
/// (jobserver/api/releases.py): required fields, their types, the size limit.
pub fn validate_release_body(body: &Value) -> Result<(), Value> {
    let mut errors = serde_json::Map::new();
    let Some(top) = body.as_object() else {
        return Err(json!({"non_field_errors": ["Invalid data. Expected a dictionary."]}));
    };
    match top.get("metadata") {
        None => required(&mut errors, "metadata"),
        Some(Value::Object(_)) => {}
        Some(_) => {
            errors.insert(
                "metadata".into(),
                json!(["Expected a dictionary of items."]),
            );
        }
    }
    match top.get("review") {
        None => required(&mut errors, "review"),
        Some(Value::Null | Value::Object(_)) => {}
        Some(_) => {
            errors.insert("review".into(), json!(["Expected a dictionary of items."]));
        }
    }
    match top.get("files") {
        None => required(&mut errors, "files"),
        Some(Value::Array(files)) => {
            for (i, f) in files.iter().enumerate() {
                let mut fe = serde_json::Map::new();
                let Some(f) = f.as_object() else {
                    errors.insert(format!("files[{i}]"), json!(["Expected a dictionary."]));
                    continue;
                };
                for key in ["name", "url", "sha256"] {
                    match f.get(key) {
                        None => required(&mut fe, key),
                        Some(Value::String(s)) if !s.is_empty() => {}
                        Some(_) => {
                            fe.insert(key.into(), json!(["Not a valid string."]));
                        }
                    }
                }
                match f.get("size") {
                    None => required(&mut fe, "size"),
                    Some(v) if v.is_u64() => {
                        if v.as_u64().unwrap() > MAX_FILE {
                            fe.insert("size".into(), json!(["File size should be <16Mb."]));
                        }
                    }
                    Some(_) => {
                        fe.insert("size".into(), json!(["A valid integer is required."]));
                    }
                }
                match f.get("date") {
                    None => required(&mut fe, "date"),
                    Some(Value::String(d)) if is_datetime(d) => {}
                    Some(_) => {
                        fe.insert("date".into(), json!(["Datetime has wrong format."]));
                    }
                }
                match f.get("metadata") {
                    None => required(&mut fe, "metadata"),
                    Some(Value::Object(_)) => {}
                    Some(_) => {
                        fe.insert(
                            "metadata".into(),
                            json!(["Expected a dictionary of items."]),
                        );
                    }
                }
                match f.get("review") {
                    None => required(&mut fe, "review"),
                    Some(Value::Null) => {}
                    Some(Value::Object(r)) => {
                        let ok_status = matches!(
                            r.get("status").and_then(Value::as_str),
                            Some("APPROVED" | "REJECTED")
                        );
                        if !ok_status || !r.get("comments").is_some_and(Value::is_object) {
                            fe.insert("review".into(), json!(["Invalid review."]));
                        }
                    }
                    Some(_) => {
                        fe.insert("review".into(), json!(["Invalid review."]));
                    }
                }
                if !fe.is_empty() {
                    errors.insert(format!("files[{i}]"), Value::Object(fe));
                }
            }
        }
        Some(_) => {
            errors.insert("files".into(), json!(["Expected a list of items."]));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Value::Object(errors))
    }
}

/// The file name of a `Content-Disposition: attachment; filename="..."` header.
fn disposition_name(headers: &BTreeMap<String, String>) -> Option<String> {
    headers
        .get("content-disposition")
        .and_then(|d| d.split("filename=\"").nth(1))
        .map(|s| s.trim_end_matches('"').to_string())
}

impl FakeServer {
    pub fn start() -> FakeServer {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let fake = FakeServer {
            url,
            seen: Arc::default(),
            behaviour: Arc::default(),
            uploads: Arc::default(),
            releases: Arc::default(),
            events: Arc::default(),
        };
        let (seen, behaviour, uploads, releases, events) = (
            fake.seen.clone(),
            fake.behaviour.clone(),
            fake.uploads.clone(),
            fake.releases.clone(),
            fake.events.clone(),
        );
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
                let method = req.method().to_string();
                let b = behaviour.lock().unwrap().clone();
                if let Some(d) = b.stall {
                    std::thread::sleep(d);
                }
                let mut release_header = None;
                let (status, text): (u16, String) = (|| {
                    if headers.get("authorization").map(String::as_str) != Some("sekrit-token-123")
                    {
                        return (403, json!({"detail": "Invalid token"}).to_string());
                    }
                    let user = headers.get("os-user").map(|u| u.trim()).unwrap_or("");
                    if !SERVER_USERS.contains(&user) {
                        return (
                            403,
                            json!({"detail": "Authentication credentials were not provided."})
                                .to_string(),
                        );
                    }
                    if method != "POST" {
                        return (405, String::new());
                    }
                    if url == "/airlock/events/" {
                        match serde_json::from_slice::<Value>(&body) {
                            Ok(v) => {
                                events.lock().unwrap().push(v);
                                return (201, json!({"status": "ok"}).to_string());
                            }
                            Err(_) => return (400, "bad json".into()),
                        }
                    }
                    if let Some(ws) = url.strip_prefix("/releases/workspace/") {
                        let parsed: Value = match serde_json::from_slice(&body) {
                            Ok(v) => v,
                            Err(_) => {
                                return (400, json!({"detail": "JSON parse error"}).to_string())
                            }
                        };
                        if let Err(errors) = validate_release_body(&parsed) {
                            return (400, errors.to_string());
                        }
                        let files: BTreeMap<String, String> = parsed["files"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|f| {
                                (
                                    f["name"].as_str().unwrap().to_string(),
                                    f["sha256"].as_str().unwrap().to_string(),
                                )
                            })
                            .collect();
                        let airlock_id = parsed["metadata"]
                            .get("airlock_id")
                            .and_then(Value::as_str)
                            .map(str::to_string);
                        let mut rel = releases.lock().unwrap();
                        let id = match airlock_id {
                            Some(a) if a.len() > 26 => {
                                return (
                                    500,
                                    "value too long for type character varying(26)".into(),
                                )
                            }
                            Some(a) => {
                                if let Some(existing) = rel.get(&a) {
                                    if existing.workspace != ws {
                                        return (500, "IntegrityError".into());
                                    }
                                    let want: std::collections::BTreeSet<_> =
                                        files.values().collect();
                                    let have: std::collections::BTreeSet<_> =
                                        existing.files.values().collect();
                                    if want != have {
                                        return (500, "ReleaseFilesMismatch".into());
                                    }
                                }
                                a
                            }
                            None => {
                                next_id += 1;
                                format!("rel-{next_id}")
                            }
                        };
                        rel.entry(id.clone()).or_insert_with(|| FakeRelease {
                            workspace: ws.to_string(),
                            files,
                            uploaded: BTreeMap::new(),
                        });
                        drop(rel);
                        if b.lose_create_answers > 0 {
                            behaviour.lock().unwrap().lose_create_answers -= 1;
                            std::thread::sleep(Duration::from_secs(7));
                        }
                        if b.no_release_id {
                            return (201, "{}".into());
                        }
                        release_header = Some(id.clone());
                        return (
                            201,
                            json!({"release_id": id, "release_url": format!("/r/{id}")})
                                .to_string(),
                        );
                    }
                    if let Some(id) = url.strip_prefix("/releases/release/") {
                        let mut rel = releases.lock().unwrap();
                        let Some(release) = rel.get_mut(id) else {
                            return (404, json!({"detail": "Not found."}).to_string());
                        };
                        if body.len() as u64 > MAX_FILE {
                            return (400, json!(["File is too large"]).to_string());
                        }
                        let Some(name) = disposition_name(&headers) else {
                            return (400, json!({"detail": "No data uploaded"}).to_string());
                        };
                        if body.is_empty() {
                            return (400, json!({"detail": "No data uploaded"}).to_string());
                        }
                        let Some(sha) = release.files.get(&name).cloned() else {
                            return (
                                400,
                                json!({"detail": format!("File {name} not requested in release {id}")})
                                    .to_string(),
                            );
                        };
                        let already = json!({"detail": format!(
                            "This version of '{name}' has already been uploaded from backend 'test'"
                        )})
                        .to_string();
                        if b.already.contains(&name) || release.uploaded.contains_key(&name) {
                            return (400, already);
                        }
                        let fails = b.fail_upload.get(&name).copied().unwrap_or(0);
                        if fails > 0 {
                            behaviour
                                .lock()
                                .unwrap()
                                .fail_upload
                                .insert(name.clone(), fails - 1);
                            return (500, "upstream broke".into());
                        }
                        if sha256(&body) != sha {
                            return (400, json!({"detail": "Contents of uploaded file does not match the file which a review was requested for"}).to_string());
                        }
                        release.uploaded.insert(name.clone(), body.clone());
                        uploads.lock().unwrap().insert(name, body.clone());
                        return (201, String::new());
                    }
                    (404, "no".into())
                })();
                seen.lock().unwrap().push(Seen {
                    method,
                    url,
                    headers,
                    body,
                    status,
                });
                let mut r = tiny_http::Response::from_string(text).with_status_code(status);
                if let Some(id) = release_header {
                    r = r.with_header(
                        tiny_http::Header::from_bytes(&b"Release-Id"[..], id.as_bytes()).unwrap(),
                    );
                }
                let _ = req.respond(r);
            }
        });
        fake
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

    pub fn release_count(&self) -> usize {
        self.releases.lock().unwrap().len()
    }
}
