//! The poller: fetch tasks from the controller, queue new `runjob` tasks,
//! cancel on `canceljob`, and send the status updates waiting in the
//! outbox.
//!
//! No task is lost or run twice: a task is acknowledged to nobody until it
//! is in the queue (the controller keeps offering it), the ledger refuses a
//! task id seen before, and an update is deleted from the outbox only once
//! the controller answered 2xx. Server errors, timeouts and refused
//! connections are retried with doubling backoff; garbage is an error for
//! this round only.

use std::ffi::OsStr;
use std::time::Duration;

use bs_core::config::Config;
use bs_core::http::{Http, Response};
use bs_core::Output;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::clock::Clock;
use crate::error::{JobsError, Result};
use crate::executor::Executor;
use crate::queue::{Outcome, Queue, State};
use crate::spec;
use crate::worker::{report, results_of};

#[derive(Debug, Deserialize)]
struct Tasks {
    tasks: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct Task {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    definition: Value,
}

pub struct Poller<'a> {
    pub config: &'a Config,
    pub queue: &'a Queue,
    pub http: Http,
    pub token: String,
    pub clock: &'a dyn Clock,
    pub executor: &'a dyn Executor,
}

impl Poller<'_> {
    fn base(&self) -> String {
        let backend = if self.config.jobs.backend_name.is_empty() {
            &self.config.backend.name
        } else {
            &self.config.jobs.backend_name
        };
        format!(
            "{}/{}",
            self.config.jobs.controller.trim_end_matches('/'),
            backend
        )
    }

    /// A request with retries on transient failures and 5xx answers.
    fn with_retries(
        &self,
        url: &str,
        call: &dyn Fn() -> std::result::Result<Response, bs_core::http::HttpError>,
    ) -> Result<Response> {
        let attempts = self.config.jobs.http_attempts.max(1);
        let mut backoff = Duration::from_millis(self.config.jobs.http_backoff_ms);
        let mut last = String::new();
        for attempt in 1..=attempts {
            match call() {
                Ok(r) if r.status >= 500 || r.status == 429 => last = format!("HTTP {}", r.status),
                Ok(r) => return Ok(r),
                Err(e) if e.is_transient() => last = e.to_string(),
                Err(e) => {
                    return Err(JobsError::Controller {
                        url: url.to_string(),
                        message: e.to_string(),
                    })
                }
            }
            if attempt < attempts {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
        Err(JobsError::Controller {
            url: url.to_string(),
            message: format!("gave up after {attempts} attempt(s): {last}"),
        })
    }

    /// Send the outbox, oldest first; stop at the first failure so updates
    /// of one task never arrive out of order. Returns (sent, left).
    pub fn flush_outbox(&self, out: &mut Output) -> Result<(u64, u64)> {
        let url = format!("{}/task/update/", self.base());
        let names: Vec<_> = self
            .queue
            .outbox
            .entries()?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| !n.to_string_lossy().starts_with('.'))
            .collect();
        let mut sent = 0;
        for (i, name) in names.iter().enumerate() {
            let Some((bytes, _)) = self.queue.outbox.read_file(name, 1 << 20)? else {
                continue;
            };
            let payload = String::from_utf8_lossy(&bytes).into_owned();
            let auth = [("Authorization", self.token.as_str())];
            let result = self.with_retries(&url, &|| {
                self.http
                    .post_form(&url, &auth, &[("payload", payload.as_str())])
            });
            match result {
                Ok(r) if r.is_success() => {
                    self.queue.outbox.remove_if_exists(name)?;
                    sent += 1;
                    let v: Value = serde_json::from_str(&payload).unwrap_or(Value::Null);
                    out.emit("update", &json!({"task_id": v["task_id"], "stage": v["stage"], "complete": v["complete"], "sent": true}));
                }
                Ok(r) => {
                    out.error(
                        "update_refused",
                        &url,
                        &format!("HTTP {}: kept in the outbox", r.status),
                    );
                    return Ok((sent, (names.len() - i) as u64));
                }
                Err(e) => {
                    out.error("update_not_sent", &url, &format!("{e}; kept in the outbox"));
                    return Ok((sent, (names.len() - i) as u64));
                }
            }
        }
        Ok((sent, 0))
    }

    /// One round: send what waits, fetch tasks, act on them, send again.
    pub fn poll_once(&self, out: &mut Output) -> Result<Map<String, Value>> {
        self.flush_outbox(out)?;
        let url = format!("{}/tasks/", self.base());
        let auth = [("Authorization", self.token.as_str())];
        let resp = self.with_retries(&url, &|| self.http.get(&url, &auth))?;
        if !resp.is_success() {
            return Err(JobsError::Controller {
                url,
                message: format!("HTTP {}", resp.status),
            });
        }
        let tasks: Tasks =
            serde_json::from_slice(&resp.body).map_err(|e| JobsError::Controller {
                url: url.clone(),
                message: format!("not a task list: {e}"),
            })?;
        let (mut queued, mut seen, mut cancelled) = (0u64, 0u64, 0u64);
        for raw in tasks.tasks {
            let task: Task = match serde_json::from_value(raw) {
                Ok(t) => t,
                Err(e) => {
                    out.error(
                        "bad_task",
                        &url,
                        &format!("skipped a task that does not parse: {e}"),
                    );
                    continue;
                }
            };
            if !spec::valid_name(&task.id, 128) {
                out.error("bad_task", &task.id, "task id is not a safe name; skipped");
                continue;
            }
            match task.kind.as_str() {
                "runjob" => match self.queue_task(&task)? {
                    TaskFate::Queued(id) => {
                        queued += 1;
                        out.item(
                            "task",
                            true,
                            &json!({"action": "queue", "target": task.id, "job_id": id}),
                        );
                    }
                    TaskFate::Seen => seen += 1,
                    TaskFate::Refused(field, message) => {
                        out.error("invalid_job", &task.id, &format!("{field}: {message}"));
                    }
                },
                "canceljob" => {
                    if self.cancel_task(&task, out)? {
                        cancelled += 1;
                    } else {
                        seen += 1;
                    }
                }
                other => out.error(
                    "bad_task",
                    &task.id,
                    &format!("unknown task type {other:?}; skipped"),
                ),
            }
        }
        let (sent, left) = self.flush_outbox(out)?;
        let mut extra = Map::new();
        extra.insert("queued".into(), json!(queued));
        extra.insert("seen".into(), json!(seen));
        extra.insert("cancelled".into(), json!(cancelled));
        extra.insert("updates_sent".into(), json!(sent));
        extra.insert("updates_waiting".into(), json!(left));
        Ok(extra)
    }

    fn queue_task(&self, task: &Task) -> Result<TaskFate> {
        let key = format!("task-{}", task.id);
        if self.queue.ledger_get(&key)?.is_some() {
            // Queued before (or refused before): the ledger says so. A crash
            // between the ledger line and the entry is handled by submit.
            if let Some(name) = self.queue.ledger_get(&key)? {
                if !name.ends_with(".json") || self.queue.exists_anywhere(OsStr::new(&name))? {
                    return Ok(TaskFate::Seen);
                }
            }
        }
        let mut def = task.definition.clone();
        if let Some(obj) = def.as_object_mut() {
            obj.insert("task_id".into(), json!(task.id));
            // The job server's field names, mapped to ours.
            if let Some(args) = obj.remove("args") {
                obj.entry("command").or_insert(args);
            }
            if let Some(spec) = obj.remove("output_spec") {
                let mut by_level: Map<String, Value> = Map::new();
                if let Some(m) = spec.as_object() {
                    for (pattern, level) in m {
                        let level = level.as_str().unwrap_or("").to_string();
                        if let Some(a) = by_level
                            .entry(level)
                            .or_insert_with(|| json!([]))
                            .as_array_mut()
                        {
                            a.push(json!(pattern));
                        }
                    }
                }
                obj.entry("outputs").or_insert(Value::Object(by_level));
            }
        }
        let job = match spec::parse(&def, &self.config.jobs) {
            Ok(j) => j,
            Err(JobsError::Invalid { field, message }) => {
                self.queue
                    .ledger_note(&key, "refused: invalid definition")?;
                self.reject(task, &format!("invalid job definition: {field}: {message}"))?;
                return Ok(TaskFate::Refused(field, message));
            }
            Err(e) => return Err(e),
        };
        let id = job.id.clone();
        match self.queue.submit(job, self.clock) {
            Ok(entry) => {
                report(self.queue, &entry, false, json!({}), self.clock.now_ns())?;
                Ok(TaskFate::Queued(id))
            }
            Err(JobsError::Duplicate { .. }) => Ok(TaskFate::Seen),
            Err(e) => Err(e),
        }
    }

    /// Tell the controller a task failed without a job being queued.
    fn reject(&self, task: &Task, message: &str) -> Result<()> {
        let payload = json!({
            "task_id": task.id, "stage": "finalized", "complete": true,
            "results": {"status": "failed", "code": "internal_error", "error": message},
            "timestamp_ns": self.clock.now_ns(),
        });
        let lock = self.queue.lock()?;
        self.queue.outbox_put(&lock, &task.id, &payload)?;
        Ok(())
    }

    fn cancel_task(&self, task: &Task, out: &mut Output) -> Result<bool> {
        let key = format!("task-{}", task.id);
        if self.queue.ledger_get(&key)?.is_some() {
            return Ok(false);
        }
        let job_id = task
            .definition
            .get("id")
            .or_else(|| task.definition.get("job_id"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let fate = if spec::valid_name(&job_id, 64) {
            cancel(self.queue, self.executor, &job_id, self.clock)?
        } else {
            "no such job".to_string()
        };
        out.item(
            "task",
            true,
            &json!({"action": "cancel", "target": task.id, "job_id": job_id, "result": fate}),
        );
        self.queue.ledger_note(&key, &format!("cancel: {fate}"))?;
        let payload = json!({
            "task_id": task.id, "stage": "finalized", "complete": true,
            "results": {"status": "succeeded", "message": fate},
            "timestamp_ns": self.clock.now_ns(),
        });
        let lock = self.queue.lock()?;
        self.queue.outbox_put(&lock, &task.id, &payload)?;
        Ok(true)
    }
}

enum TaskFate {
    Queued(String),
    Seen,
    Refused(String, String),
}

/// Cancel a job: a queued one is failed at once; a running one gets a
/// cancel mark (its worker records the outcome) and its container killed.
pub fn cancel(
    queue: &Queue,
    executor: &dyn Executor,
    id: &str,
    clock: &dyn Clock,
) -> Result<String> {
    let Some((state, name)) = queue.find(id)? else {
        return Err(JobsError::NoSuchJob { id: id.to_string() });
    };
    match state {
        State::Queued => {
            let outcome = Outcome::failed(
                "cancelled_by_user",
                "cancelled by user before it ran",
                clock.now_ns(),
            );
            match queue.fail_queued(&name, outcome)? {
                Some(entry) => {
                    let o = entry
                        .outcome
                        .clone()
                        .unwrap_or_else(|| Outcome::failed("cancelled_by_user", "", 0));
                    report(queue, &entry, true, results_of(&o), clock.now_ns())?;
                    Ok("cancelled before it ran".into())
                }
                // Claimed meanwhile: cancel it as a running job.
                None => cancel(queue, executor, id, clock),
            }
        }
        State::Running => {
            queue.cancel.write_file(
                OsStr::new(id),
                b"cancel\n",
                &bs_core::safefs::FileSpec::root(0o600),
            )?;
            let killed = executor.kill(id).unwrap_or(false);
            Ok(if killed {
                "container killed".into()
            } else {
                "marked for cancellation".into()
            })
        }
        State::Done | State::Failed => Err(JobsError::State {
            id: id.to_string(),
            message: format!("already finished ({})", state.as_str()),
        }),
    }
}
