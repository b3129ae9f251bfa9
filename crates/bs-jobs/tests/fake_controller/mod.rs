//! A fake job-runner controller on 127.0.0.1 that behaves as the real one
//! (controller/main.py, controller/task_api.py, webapp task_views.py) with
//! every answer bs-jobs sends:
//!
//! - `GET /<backend>/tasks/` lists the active tasks, each with a whole
//!   JobDefinition (every field, plus one no version knows yet);
//! - `POST /<backend>/task/update/` takes the form field `payload`; a
//!   missing key or an unknown task is a 500, as the view's KeyError or
//!   `find_one` would make it;
//! - a completed runjob's `results["error"]` is read (absent: the loop's
//!   KeyError, recorded as a failure of the test); truthy re-issues the task
//!   as `<job>-00N`; falsy results are read as `JobTaskResults.from_dict`
//!   reads them (a missing key is a failure) and the job's state set as
//!   `save_results` sets it;
//! - a cancel marks the job cancelled and issues `<task>-cancel` with the
//!   full definition;
//! - it can answer 500, stall or send garbage, on either endpoint.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reply {
    Error500,
    Stall,
    Garbage,
    Ok,
}

/// job-runner's ExecutorState values; "" for simple tasks.
const STAGES: &[&str] = &[
    "preparing",
    "prepared",
    "executing",
    "executed",
    "finalizing",
    "finalized",
    "unknown",
    "error",
];

/// Every key `JobTaskResults.from_dict` reads.
pub const FROM_DICT: &[&str] = &[
    "exit_code",
    "docker_image_id",
    "status_message",
    "hint",
    "timestamp_ns",
    "action_version",
    "action_revision",
    "action_created",
    "base_revision",
    "base_created",
    "has_unmatched_patterns",
    "has_level4_excluded_files",
];

/// Keys `redact_results` removes: output and pattern names stay home.
const REDACTED: &[&str] = &[
    "outputs",
    "unmatched_outputs",
    "unmatched_patterns",
    "level4_excluded_files",
];

#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    pub kind: String,
    pub job: String,
    pub definition: Value,
    pub active: bool,
    pub stage: String,
    pub results: Value,
    pub complete: bool,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub definition: Value,
    pub tasks: u32,
    /// running, succeeded, failed
    pub state: String,
    /// the StatusCode the controller set
    pub code: String,
    pub message: String,
}

#[derive(Default)]
pub struct State {
    pub tasks: BTreeMap<String, Task>,
    pub order: Vec<String>,
    pub jobs: BTreeMap<String, Job>,
    pub fetch_script: VecDeque<Reply>,
    pub update_script: VecDeque<Reply>,
    /// Every update payload that reached the view, in order.
    pub received: Vec<Value>,
    /// Where the real controller would have crashed or refused.
    pub failures: Vec<String>,
    pub auth: Vec<String>,
}

pub struct FakeController {
    pub url: String,
    pub state: Arc<Mutex<State>>,
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h =
                    u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16).unwrap();
                out.push(h);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// A whole JobDefinition as `job_to_job_definition` makes it.
pub fn definition(
    job_id: &str,
    workspace: &str,
    action: &str,
    image: &str,
    args: &[&str],
    output_spec: Value,
) -> Value {
    json!({
        "id": job_id,
        "rap_id": "rap0001",
        "task_id": "",
        "repo_url": "https://github.com/opensafely/test-study",
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "study": {"git_repo_url": "https://github.com/opensafely/test-study",
                  "commit": "0123456789abcdef0123456789abcdef01234567", "branch": "main"},
        "workspace": workspace,
        "action": action,
        "created_at": 1_764_633_600,
        "image": image,
        "image_sha": null,
        "args": args,
        "env": {"OPENSAFELY_BACKEND": "test"},
        "inputs": [],
        "input_job_ids": [],
        "output_spec": output_spec,
        "allow_database_access": false,
        "level4_max_csv_rows": 5000,
        "level4_max_filesize": 16 * 1024 * 1024,
        "user": "alice",
        "database_name": null,
        "cpu_count": "1",
        "memory_limit": "256M",
        "level4_file_types": [".csv", ".txt"],
        // A field a later controller adds: it must not stop the agent.
        "analysis_scope": {"component_access": []},
    })
}

impl State {
    fn new_task(&mut self, job: &str, kind: &str, id: String) {
        let mut def = self.jobs[job].definition.clone();
        def["task_id"] = json!(id);
        self.tasks.insert(
            id.clone(),
            Task {
                id: id.clone(),
                kind: kind.into(),
                job: job.into(),
                definition: def,
                active: true,
                stage: String::new(),
                results: Value::Null,
                complete: false,
            },
        );
        self.order.push(id);
    }

    /// `create_task_for_job`: `<job>-00N`.
    fn issue_runjob(&mut self, job: &str) {
        let n = {
            let j = self.jobs.get_mut(job).unwrap();
            j.tasks += 1;
            j.tasks
        };
        self.new_task(job, "runjob", format!("{job}-{n:03}"));
    }

    fn current_runjob(&self, job: &str) -> Option<&Task> {
        self.order
            .iter()
            .rev()
            .map(|id| &self.tasks[id])
            .find(|t| t.job == job && t.kind == "runjob")
    }

    /// The task view plus the controller loop's `handle_running_job`.
    fn update(&mut self, payload: &str) -> u16 {
        let info: Value = match serde_json::from_str(payload) {
            Ok(v) => v,
            Err(e) => {
                self.failures
                    .push(format!("payload is not JSON ({e}): {payload}"));
                return 500;
            }
        };
        self.received.push(info.clone());
        for key in ["task_id", "stage", "complete", "timestamp_ns"] {
            if info.get(key).is_none() {
                self.failures.push(format!("KeyError {key:?} in {info}"));
                return 500;
            }
        }
        let task_id = info["task_id"].as_str().unwrap_or_default().to_string();
        let Some(task) = self.tasks.get_mut(&task_id) else {
            self.failures
                .push(format!("update of unknown task {task_id}"));
            return 500;
        };
        let stage = info["stage"].as_str().unwrap_or("?");
        let simple = task.kind == "dbstatus" || task.kind == "dbdatacheck";
        if simple && !stage.is_empty() || !simple && !STAGES.contains(&stage) {
            self.failures.push(format!(
                "{task_id}: stage {stage:?} is not one job-runner sends"
            ));
        }
        if info["timestamp_ns"].as_i64().is_none() && !info["timestamp_ns"].is_null() {
            self.failures
                .push(format!("{task_id}: timestamp_ns is not an integer"));
        }
        task.stage = stage.to_string();
        task.results = info.get("results").cloned().unwrap_or(json!({}));
        task.complete = info["complete"] == json!(true);
        if task.complete {
            task.active = false;
        }
        let task = task.clone();
        if task.kind == "runjob" && task.complete {
            self.handle_completed_runjob(&task);
        }
        if simple && task.complete {
            let r = &task.results;
            let ok = r.get("results").is_some()
                && r.get("error").is_some()
                && (r["error"].is_null() || r["error"]["type"].is_string());
            if !ok {
                self.failures
                    .push(format!("{task_id}: simple task results {r}"));
            }
        }
        200
    }

    fn handle_completed_runjob(&mut self, task: &Task) {
        let job_id = task.job.clone();
        let is_current =
            self.current_runjob(&job_id).map(|t| t.id.clone()) == Some(task.id.clone());
        let running = self.jobs[&job_id].state == "running";
        if !(running && is_current) {
            // The loop only looks at the current task of a running job.
            return;
        }
        let r = task.results.clone();
        let Some(error) = r.get("error") else {
            self.failures
                .push(format!("{}: KeyError 'error' in {r}", task.id));
            return;
        };
        let truthy = match error {
            Value::Null | Value::Bool(false) => false,
            Value::String(s) => !s.is_empty(),
            Value::Object(m) => !m.is_empty(),
            _ => true,
        };
        if truthy {
            // WAITING_ON_NEW_TASK, then a new task for the same job.
            self.issue_runjob(&job_id);
            return;
        }
        for key in FROM_DICT {
            if r.get(*key).is_none() {
                self.failures.push(format!(
                    "{}: JobTaskResults.from_dict KeyError {key:?} in {r}",
                    task.id
                ));
                return;
            }
        }
        for key in REDACTED {
            if r.get(*key).is_some() {
                self.failures
                    .push(format!("{}: {key} was not redacted: {r}", task.id));
            }
        }
        // int(exit_code), or None
        let exit_code = match &r["exit_code"] {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        let job = self.jobs.get_mut(&job_id).unwrap();
        if exit_code != Some(0) {
            job.state = "failed".into();
            job.code = "nonzero_exit".into();
            job.message = match r["status_message"].as_str() {
                Some(m) if !m.is_empty() => format!("Job exited with an error: {m}"),
                _ => "Job exited with an error".into(),
            };
        } else if r["has_unmatched_patterns"] == json!(true) {
            job.state = "failed".into();
            job.code = "unmatched_patterns".into();
            job.message = "Outputs matching expected patterns were not found".into();
        } else {
            job.state = "succeeded".into();
            job.code = "succeeded".into();
            job.message = "Completed successfully".into();
            if r["has_level4_excluded_files"] == json!(true) {
                job.message.push_str(", but some file(s) were excluded");
            }
        }
    }
}

impl FakeController {
    pub fn start() -> FakeController {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for mut req in server.incoming_requests() {
                let st = st.clone();
                // A thread a request, so a stalled answer does not hold up the retry.
                std::thread::spawn(move || {
                    let auth = req
                        .headers()
                        .iter()
                        .find(|h| h.field.equiv("Authorization"))
                        .map(|h| h.value.to_string())
                        .unwrap_or_default();
                    let mut body = String::new();
                    let _ = req.as_reader().read_to_string(&mut body);
                    let path = req.url().to_string();
                    let reply = {
                        let mut s = st.lock().unwrap();
                        s.auth.push(auth);
                        if path == "/test/tasks/" {
                            s.fetch_script.pop_front().unwrap_or(Reply::Ok)
                        } else if path == "/test/task/update/" {
                            s.update_script.pop_front().unwrap_or(Reply::Ok)
                        } else {
                            Reply::Error500
                        }
                    };
                    let respond = |code: u16, text: String| {
                        let _ = req
                            .respond(tiny_http::Response::from_string(text).with_status_code(code));
                    };
                    match reply {
                        Reply::Error500 => respond(500, "{\"error\": \"oops\"}".into()),
                        Reply::Stall => {
                            std::thread::sleep(Duration::from_secs(3));
                            respond(200, "{\"tasks\": []}".into());
                        }
                        Reply::Garbage => respond(200, "<html>proxy error</html>".into()),
                        Reply::Ok if path == "/test/tasks/" => {
                            let s = st.lock().unwrap();
                            let tasks: Vec<Value> = s
                                .order
                                .iter()
                                .map(|id| &s.tasks[id])
                                .filter(|t| t.active)
                                .map(|t| {
                                    json!({"id": t.id, "backend": "test", "type": t.kind,
                                           "definition": t.definition, "attributes": {},
                                           "created_at": 1_764_633_600})
                                })
                                .collect();
                            respond(200, json!({ "tasks": tasks }).to_string());
                        }
                        Reply::Ok => {
                            let payload = body
                                .strip_prefix("payload=")
                                .map(url_decode)
                                .unwrap_or_default();
                            let code = st.lock().unwrap().update(&payload);
                            respond(code, "{\"response\": \"Update successful\"}".into());
                        }
                    }
                });
            }
        });
        FakeController { url, state }
    }

    /// A new job with its first runjob task.
    pub fn add_job(&self, definition: Value) -> String {
        let id = definition["id"].as_str().unwrap().to_string();
        let mut s = self.state.lock().unwrap();
        s.jobs.insert(
            id.clone(),
            Job {
                definition,
                tasks: 0,
                state: "running".into(),
                code: "initiated".into(),
                message: String::new(),
            },
        );
        s.issue_runjob(&id);
        id
    }

    /// `cancel_job`: the runjob task goes inactive, `<task>-cancel` comes.
    /// A job the controller never gave a task is added first (a cancel of
    /// a job this backend never saw).
    pub fn cancel(&self, job: &str) -> String {
        let mut s = self.state.lock().unwrap();
        let run = s.current_runjob(job).unwrap().id.clone();
        s.tasks.get_mut(&run).unwrap().active = false;
        let id = format!("{run}-cancel");
        s.new_task(job, "canceljob", id.clone());
        let j = s.jobs.get_mut(job).unwrap();
        j.state = "failed".into();
        j.code = "cancelled_by_user".into();
        id
    }

    /// A cancel for a job that never got a runjob task to this backend.
    pub fn cancel_unseen(&self, definition: Value) -> String {
        let id = definition["id"].as_str().unwrap().to_string();
        let mut s = self.state.lock().unwrap();
        s.jobs.insert(
            id.clone(),
            Job {
                definition,
                tasks: 1,
                state: "failed".into(),
                code: "cancelled_by_user".into(),
                message: String::new(),
            },
        );
        let task = format!("{id}-001-cancel");
        s.new_task(&id, "canceljob", task.clone());
        task
    }

    pub fn add_simple(&self, kind: &str, definition: Value) -> String {
        let mut s = self.state.lock().unwrap();
        let id = format!("{kind}-{}", s.order.len() + 1);
        s.tasks.insert(
            id.clone(),
            Task {
                id: id.clone(),
                kind: kind.into(),
                job: String::new(),
                definition,
                active: true,
                stage: String::new(),
                results: Value::Null,
                complete: false,
            },
        );
        s.order.push(id.clone());
        id
    }

    pub fn job(&self, id: &str) -> Job {
        self.state.lock().unwrap().jobs[id].clone()
    }

    pub fn task(&self, id: &str) -> Task {
        self.state.lock().unwrap().tasks[id].clone()
    }

    pub fn task_ids(&self) -> Vec<String> {
        self.state.lock().unwrap().order.clone()
    }

    pub fn failures(&self) -> Vec<String> {
        self.state.lock().unwrap().failures.clone()
    }

    /// Completed updates a task received.
    pub fn finals(&self, task: &str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .received
            .iter()
            .filter(|u| u["task_id"] == task && u["complete"] == json!(true))
            .cloned()
            .collect()
    }

    pub fn updates(&self, task: &str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .received
            .iter()
            .filter(|u| u["task_id"] == task)
            .cloned()
            .collect()
    }
}
