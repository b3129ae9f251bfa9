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
use crate::results::{is_agent_error, results_of};
use crate::spec;
use crate::worker::{report, update};

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
    /// Runs the backend's database checks.
    pub runner: &'a dyn bs_core::cmd::Runner,
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
        let mut answered: Map<String, Value> = Map::new();
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
            // One task's trouble never stops the others of the round.
            let fate = match task.kind.as_str() {
                "runjob" => self.runjob(&task),
                "canceljob" => self.canceljob(&task),
                "dbstatus" | "dbdatacheck" => self.simple(&task),
                other => {
                    out.error(
                        "bad_task",
                        &task.id,
                        &format!("unknown task type {other:?}; skipped"),
                    );
                    continue;
                }
            };
            match fate {
                Ok(fate) => {
                    let n = answered.entry(fate).or_insert(json!(0));
                    *n = json!(n.as_u64().unwrap_or(0) + 1);
                    if fate != "waiting" {
                        out.item(
                            "task",
                            fate != "refused",
                            &json!({"action": fate, "target": task.id, "task_type": task.kind,
                                    "job_id": job_id_of(&task)}),
                        );
                    }
                }
                Err(e) => {
                    use bs_core::cli::Report;
                    out.error(e.kind(), &task.id, &e.to_string());
                }
            }
        }
        let (sent, left) = self.flush_outbox(out)?;
        let mut extra = Map::new();
        extra.insert("tasks".into(), Value::Object(answered));
        extra.insert("updates_sent".into(), json!(sent));
        extra.insert("updates_waiting".into(), json!(left));
        Ok(extra)
    }

    fn put(&self, task: &str, payload: &Value) -> Result<()> {
        let lock = self.queue.lock()?;
        self.queue.outbox_put(&lock, task, payload)
    }

    /// A runjob task: the job's state on disk decides the answer, so a
    /// re-issued task, a lost update or a restart all end in one answer.
    fn runjob(&self, task: &Task) -> Result<&'static str> {
        let now = self.clock.now_ns();
        let Some(job_id) = job_id_of(task) else {
            self.refuse(task, "id", "missing or not a job id")?;
            return Ok("refused");
        };
        let Some((state, name)) = self.queue.find(&job_id)? else {
            let job = match spec::from_definition(&task.definition, &task.id, &self.config.jobs) {
                Ok(j) => j,
                Err(JobsError::Invalid { field, message }) => {
                    self.refuse(task, &field, &message)?;
                    return Ok("refused");
                }
                Err(e) => return Err(e),
            };
            return match self.queue.submit(job, self.clock) {
                Ok(entry) => {
                    report(self.queue, &entry, false, json!({}), now)?;
                    Ok("queued")
                }
                // Queued by a racing poller: the next round answers.
                Err(JobsError::Duplicate { .. }) => Ok("waiting"),
                Err(e) => Err(e),
            };
        };
        let entry = match self.queue.read(state, &name)? {
            Some(Ok(e)) => e,
            Some(Err(error)) => {
                return Err(JobsError::State {
                    id: job_id,
                    message: format!("its entry is malformed: {error}"),
                })
            }
            None => return Ok("waiting"),
        };
        let reissued = self.queue.current_task(&entry.job)?.as_deref() != Some(task.id.as_str());
        if reissued {
            self.queue.set_current_task(&job_id, &task.id)?;
        }
        match state {
            State::Queued | State::Running => {
                if reissued {
                    self.put(&task.id, &update(&task.id, &entry, false, json!({}), now))?;
                    return Ok("attached");
                }
                Ok("waiting")
            }
            State::Done | State::Failed => {
                let outcome = entry
                    .outcome
                    .clone()
                    .unwrap_or_else(|| Outcome::failed("internal_error", "no outcome", now));
                if reissued && is_agent_error(&outcome) {
                    // The controller heard "agent error" and made a new
                    // task: a new attempt, not the old answer again.
                    let entry = self.queue.retry(state, &name)?;
                    report(self.queue, &entry, false, json!({}), now)?;
                    return Ok("requeued");
                }
                if self.queue.outbox_has(&task.id)? {
                    return Ok("waiting");
                }
                // Finished, yet the controller still offers the task: its
                // final update was lost (a worker killed between done/ and
                // the outbox, say). Send it again.
                self.put(
                    &task.id,
                    &update(&task.id, &entry, true, results_of(&outcome), now),
                )?;
                Ok("resent")
            }
        }
    }

    /// A definition bs-jobs will not run is answered once, as a failed
    /// job (an agent error would make the controller re-issue it forever).
    fn refuse(&self, task: &Task, field: &str, message: &str) -> Result<()> {
        if self.queue.outbox_has(&task.id)? {
            return Ok(());
        }
        let now = self.clock.now_ns();
        let mut o = Outcome::failed(
            "invalid_job",
            format!("invalid job definition: {field}: {message}"),
            now,
        );
        o.facts.status_message = Some(format!(
            "bs-jobs refused the job definition: {}: {}",
            crate::error::clip(field, 200),
            crate::error::clip(message, 500)
        ));
        let payload = json!({
            "task_id": task.id, "stage": "finalized", "complete": true,
            "results": results_of(&o), "timestamp_ns": now,
        });
        self.put(&task.id, &payload)
    }

    /// A canceljob task (with the job's full definition): answered from
    /// the job's state, whatever it is, unknown included.
    fn canceljob(&self, task: &Task) -> Result<&'static str> {
        let now = self.clock.now_ns();
        if self.queue.outbox_has(&task.id)? {
            return Ok("waiting");
        }
        let found = match job_id_of(task) {
            Some(id) => self.queue.find(&id)?.map(|f| (id, f)),
            None => None,
        };
        let Some((job_id, (state, name))) = found else {
            // Never queued here: nothing runs, nothing to stop.
            let mut o = Outcome::failed("cancelled_by_user", "cancelled before it ran", now);
            o.facts.status_message = Some("Job cancelled by system".into());
            let payload = json!({
                "task_id": task.id, "stage": "finalized", "complete": true,
                "results": results_of(&o), "timestamp_ns": now,
            });
            self.put(&task.id, &payload)?;
            return Ok("cancelled_unknown");
        };
        let fate = match state {
            State::Queued | State::Running => {
                cancel(self.queue, self.executor, &job_id, self.clock)?;
                "cancelled"
            }
            State::Done | State::Failed => "already_finished",
        };
        // Give the worker a moment to record the end of a running job, so
        // the answer is usually complete in this round; else next round.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((s, n)) = self.queue.find(&job_id)? {
                if matches!(s, State::Done | State::Failed) {
                    if let Some(Ok(entry)) = self.queue.read(s, &n)? {
                        let o = entry.outcome.clone().unwrap_or_else(|| {
                            Outcome::failed("cancelled_by_user", "cancelled", now)
                        });
                        self.put(
                            &task.id,
                            &update(&task.id, &entry, true, results_of(&o), self.clock.now_ns()),
                        )?;
                        return Ok(fate);
                    }
                }
            }
            if std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = name;
        Ok("cancelling")
    }

    /// dbstatus and dbdatacheck: simple tasks, `{"results", "error"}`,
    /// stage `""`, answered by the backend's configured command.
    fn simple(&self, task: &Task) -> Result<&'static str> {
        if self.queue.outbox_has(&task.id)? {
            return Ok("waiting");
        }
        let results = match self.db_check(task) {
            Ok(results) => json!({"results": results, "error": null}),
            Err((kind, message)) => json!({
                "results": null,
                "error": {"type": kind, "message": crate::error::clip(&message, 500)},
            }),
        };
        let payload = json!({
            "task_id": task.id, "stage": "", "complete": true,
            "results": results, "timestamp_ns": self.clock.now_ns(),
        });
        self.put(&task.id, &payload)?;
        Ok("answered")
    }

    fn db_check(&self, task: &Task) -> std::result::Result<Value, (&'static str, String)> {
        let jobs = &self.config.jobs;
        let (argv, extra, allowed): (&Vec<String>, Option<&str>, &[&str]) =
            if task.kind == "dbstatus" {
                (&jobs.dbstatus_command, None, DB_STATUSES)
            } else {
                let month = task
                    .definition
                    .get("hes_expected_activity_month")
                    .and_then(Value::as_str)
                    .filter(|m| {
                        !m.is_empty()
                            && m.len() <= 32
                            && m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    })
                    .ok_or((
                        "ValueError",
                        "hes_expected_activity_month: missing or not a month".to_string(),
                    ))?;
                (&jobs.dbdatacheck_command, Some(month), DATA_CHECKS)
            };
        let Some((program, args)) = argv.split_first() else {
            return Err((
                "NotConfigured",
                format!("this backend has no {} command", task.kind),
            ));
        };
        let cmd = bs_core::cmd::Cmd::new(program.clone())
            .args(args.iter().cloned().chain(extra.map(str::to_string)))
            .timeout(Duration::from_secs(300));
        let ran = self
            .runner
            .run(&cmd)
            .map_err(|e| ("CommandFailed", e.to_string()))?;
        if !ran.success() {
            return Err((
                "CommandFailed",
                format!("{program} exited {:?}", ran.status),
            ));
        }
        // As job-runner: only an allowed status line leaves the backend, so
        // a compromised check cannot send data out through it.
        let last = ran
            .stdout
            .trim()
            .lines()
            .last()
            .unwrap_or("")
            .trim()
            .to_string();
        if !allowed.contains(&last.as_str()) {
            return Err((
                "ValueError",
                format!("Invalid status, expected one of: {}", allowed.join(",")),
            ));
        }
        Ok(if task.kind == "dbstatus" {
            let maintenance = last.split(';').next() == Some("db-maintenance");
            json!({"status": if maintenance { "db-maintenance" } else { "" }})
        } else {
            json!({ "status": last })
        })
    }
}

/// job-runner's allowed answers of the database checks.
const DB_STATUSES: &[&str] = &[
    "",
    "db-maintenance",
    "db-maintenance;0",
    "db-maintenance;1",
    "db-maintenance;2",
    "none;0",
    "none;1",
    "none;2",
];
const DATA_CHECKS: &[&str] = &["OK", "FAILED"];

fn job_id_of(task: &Task) -> Option<String> {
    task.definition
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| spec::valid_name(id, 64))
        .map(str::to_string)
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
                    // A queued entry waiting to re-attach has a container
                    // that still runs: it goes too.
                    if entry.reattach {
                        executor.remove(id)?;
                    }
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
