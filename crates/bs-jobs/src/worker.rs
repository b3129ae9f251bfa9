//! The worker: crash recovery at start, then claim -> prepare -> run ->
//! finalize, on up to `max_workers` threads.
//!
//! A worker process holds an exclusive `flock` on `workers/<id>.lock` for
//! its whole life and writes its id into every entry it claims. An entry in
//! `running/` whose worker's lock can be taken belongs to a dead worker
//! (the kernel drops the lock with the process, whatever killed it; a
//! reused pid cannot fool it): its leftover container is removed, then it
//! goes back to the queue, or to `failed/` once it has used its attempts.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use bs_core::config::Config;
use bs_core::safefs::FileSpec;
use bs_core::{CoreError, Output, Root};
use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use serde_json::{json, Value};

use crate::clock::Clock;
use crate::error::Result;
use crate::executor::{Executor, RunRequest, RunResult};
use crate::files;
use crate::finalize::{self, Filed, Trees};
use crate::queue::{Entry, Outcome, Queue, QueueLock, RunFacts, State};
use crate::results::{controller_stage, results_of};
use crate::spec::JobSpec;

/// Most of a container's output kept for the metadata log.
const MAX_LOG: u64 = 64 << 20;

/// This process's registration as a worker.
pub struct WorkerId {
    pub id: String,
    _lock: OwnedFd,
}

pub fn register(queue: &Queue, clock: &dyn Clock) -> Result<WorkerId> {
    let id = format!("{}-{}", std::process::id(), clock.now_ns());
    let name = format!("{id}.lock");
    let fd = rustix::fs::openat(
        queue.workers.fd(),
        name.as_str(),
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| CoreError::io(queue.workers.path().join(&name), e.into()))?;
    rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive)
        .map_err(|e| CoreError::io(queue.workers.path().join(&name), e.into()))?;
    Ok(WorkerId { id, _lock: fd })
}

/// Whether the worker `id` still runs (holds its lock).
pub fn worker_alive(queue: &Queue, id: &str) -> Result<bool> {
    let name = format!("{id}.lock");
    let fd = match rustix::fs::openat(
        queue.workers.fd(),
        name.as_str(),
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(CoreError::io(queue.workers.path().join(&name), e.into()).into()),
    };
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            // Dead: its lock file is litter now.
            let _ = queue.workers.remove_if_exists(OsStr::new(&name));
            Ok(false)
        }
        Err(Errno::WOULDBLOCK) => Ok(true),
        Err(e) => Err(CoreError::io(queue.workers.path().join(&name), e.into()).into()),
    }
}

/// Everything a worker thread needs.
pub struct Ctx<'a> {
    pub root: &'a Root,
    pub config: &'a Config,
    pub queue: &'a Queue,
    pub executor: &'a dyn Executor,
    pub clock: &'a dyn Clock,
    pub worker: &'a str,
}

impl Ctx<'_> {
    pub fn trees(&self) -> Result<Trees> {
        let sa = &self.config.service_account;
        let dir_spec = FileSpec {
            mode: 0o750,
            uid: sa.uid,
            gid: sa.gid,
        };
        let high =
            files::open_tree_top(&self.root.join(&self.config.paths.high_privacy), &dir_spec)?;
        let medium = files::open_tree_top(
            &self.root.join(&self.config.paths.medium_privacy),
            &dir_spec,
        )?;
        let j = &self.config.jobs;
        Ok(Trees {
            high: files::subdir_create_only(&high, OsStr::new("workspaces"), &dir_spec)?,
            volumes: files::subdir_create_only(&high, OsStr::new("volumes"), &dir_spec)?,
            logs: files::subdir_create_only(&high, OsStr::new("logs"), &dir_spec)?,
            archives: high.open_subdir(OsStr::new("archives")).ok(),
            medium: files::subdir_create_only(&medium, OsStr::new("workspaces"), &dir_spec)?,
            file_spec: FileSpec {
                mode: 0o640,
                uid: sa.uid,
                gid: sa.gid,
            },
            dir_spec,
            medium_max_bytes: j.medium_max_bytes,
            medium_max_csv_rows: j.medium_max_csv_rows,
            medium_allowed_types: j.medium_allowed_types.clone(),
        })
    }
}

/// Write a status update for the controller into the outbox (when the job
/// came from one), to the job's current task. The poller sends it; until
/// then it waits on disk.
pub fn report(
    queue: &Queue,
    entry: &Entry,
    complete: bool,
    results: Value,
    now: i128,
) -> Result<()> {
    let Some(task) = queue.current_task(&entry.job)? else {
        return Ok(());
    };
    let lock = queue.lock()?;
    queue.outbox_put(&lock, &task, &update(&task, entry, complete, results, now))
}

/// One update as the controller's task/update view takes it.
pub fn update(task: &str, entry: &Entry, complete: bool, results: Value, now: i128) -> Value {
    json!({
        "task_id": task,
        "stage": controller_stage(&entry.stage),
        "results": results,
        "complete": complete,
        "timestamp_ns": now,
    })
}

/// What recovery did with one entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recovered {
    pub id: String,
    pub entry: String,
    pub to: &'static str,
    pub container_removed: bool,
    pub message: String,
}

/// Crash recovery: entries in `running/` whose worker is gone.
pub fn recover(ctx: &Ctx<'_>) -> Result<Vec<Recovered>> {
    let queue = ctx.queue;
    let lock = queue.lock()?;
    queue.sweep_temps(&lock)?;
    let mut done = Vec::new();
    for name in queue.names(State::Running)? {
        let entry = match queue.read(State::Running, &name)? {
            None => continue,
            Some(Err(error)) => {
                let m = queue.dead_letter(State::Running, &name, &error)?;
                done.push(Recovered {
                    id: String::new(),
                    entry: m.name,
                    to: "failed",
                    container_removed: false,
                    message: format!("malformed: {error}"),
                });
                continue;
            }
            Some(Ok(e)) => e,
        };
        if queue.finished_copy_exists(&name)? {
            queue.remove_running(&name)?;
            continue;
        }
        if let Some(w) = &entry.worker {
            if w == ctx.worker || worker_alive(queue, w)? {
                continue;
            }
        }
        // Its worker died mid-write, maybe: the temps it left in the
        // workspace (both trees; the medium one is the reviewers') go.
        // A tree it cannot walk (a planted symlink) must not stop recovery.
        let swept = sweep_workspace_temps(ctx, &entry.job.workspace).unwrap_or(0);
        // Research is not killed by a restart: a container that outlived
        // its worker is waited for by the next claim, not started again.
        // (The stage on disk stays "executing" until the entry is finished.)
        if entry.stage == "executing" && ctx.executor.exists(&entry.job.id)? {
            let id = entry.job.id.clone();
            queue.requeue_for_reattach(&lock, entry)?;
            done.push(Recovered {
                id,
                entry: name.to_string_lossy().into_owned(),
                to: "queued",
                container_removed: false,
                message: format!(
                    "its worker is gone; its container is kept and re-attached ({swept} temp file(s) swept)"
                ),
            });
            continue;
        }
        // Any other container of the dead worker's run goes before anything
        // else, or the next attempt would meet it (and two copies could write).
        let container_removed = ctx.executor.remove(&entry.job.id)?;
        if let Ok(trees) = ctx.trees() {
            let _ = files::remove_tree(&trees.volumes, OsStr::new(&entry.job.id));
        }
        let id = entry.job.id.clone();
        let attempts = entry.attempts;
        let to = queue.requeue_orphan(
            &lock,
            entry.clone(),
            ctx.config.jobs.max_attempts,
            ctx.clock.now_ns(),
        )?;
        if to == State::Failed {
            let mut e = entry;
            e.stage = "finalized".into();
            let outcome = Outcome::failed(
                "internal_error",
                "the worker died too many times",
                ctx.clock.now_ns(),
            );
            report_locked(queue, &lock, &e, results_of(&outcome), ctx.clock.now_ns())?;
        }
        done.push(Recovered {
            id,
            entry: name.to_string_lossy().into_owned(),
            to: to.as_str(),
            container_removed,
            message: format!(
                "its worker is gone (attempt {attempts} of {}; {swept} temp file(s) swept)",
                ctx.config.jobs.max_attempts
            ),
        });
    }
    drop(lock);
    Ok(done)
}

/// Sweep a workspace's temps in both trees, sparing those of workers that
/// still run (their pids hold a worker lock).
fn sweep_workspace_temps(ctx: &Ctx<'_>, workspace: &str) -> Result<usize> {
    let mut live = vec![std::process::id()];
    for (name, _) in ctx.queue.workers.entries()? {
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".lock")) else {
            continue;
        };
        if id != ctx.worker && worker_alive(ctx.queue, id)? {
            if let Some(pid) = id.split('-').next().and_then(|p| p.parse().ok()) {
                live.push(pid);
            }
        }
    }
    let trees = ctx.trees()?;
    let mut n = 0;
    for top in [&trees.high, &trees.medium] {
        match top.open_subdir(OsStr::new(workspace)) {
            Ok(ws) => n += files::sweep_temps(&ws, &live, 0)?,
            Err(CoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

/// `report` for recovery, which already holds the queue lock.
fn report_locked(
    queue: &Queue,
    lock: &QueueLock,
    entry: &Entry,
    results: Value,
    now: i128,
) -> Result<()> {
    let Some(task) = queue.current_task(&entry.job)? else {
        return Ok(());
    };
    queue.outbox_put(lock, &task, &update(&task, entry, true, results, now))
}

/// Run one claimed entry to the end; returns the finished entry.
pub fn run_entry(ctx: &Ctx<'_>, mut entry: Entry) -> Result<Entry> {
    let queue = ctx.queue;
    let now = || ctx.clock.now_ns();
    report(queue, &entry, false, json!({}), now())?;
    let outcome = match execute(ctx, &mut entry) {
        Ok(o) => o,
        Err(e) => Outcome::failed("internal_error", e.to_string(), now()),
    };
    let finished = queue.finish(entry, outcome)?;
    // Test hook: a worker killed between done/ and its final update.
    crate::faults::crash_point("after_finish");
    let outcome = finished
        .outcome
        .clone()
        .unwrap_or_else(|| Outcome::failed("internal_error", "", now()));
    report(queue, &finished, true, results_of(&outcome), now())?;
    Ok(finished)
}

fn set_stage(ctx: &Ctx<'_>, entry: &mut Entry, stage: &str) -> Result<()> {
    entry.stage = stage.to_string();
    // Only the long stages are worth a durable write of the entry (for
    // `ls`); the controller hears of every stage through the outbox.
    if stage == "executing" {
        ctx.queue.update_running(entry)?;
    }
    report(ctx.queue, entry, false, json!({}), ctx.clock.now_ns())
}

fn execute(ctx: &Ctx<'_>, entry: &mut Entry) -> Result<Outcome> {
    let trees = ctx.trees()?;
    let job = entry.job.clone();
    let now = || ctx.clock.now_ns();
    let id_os = OsStr::new(&job.id);
    let attach = entry.reattach;
    let volume = if attach {
        // The container still writes into it: keep it as it is.
        trees.volumes.open_subdir(id_os)?
    } else {
        // A fresh volume: whatever an earlier attempt left is not an input.
        files::remove_tree(&trees.volumes, id_os)?;
        files::subdir_create_only(&trees.volumes, id_os, &trees.dir_spec)?
    };
    let result = (|| -> Result<Outcome> {
        let log_path = ctx.queue.log_path(&job.id);
        let inputs: BTreeSet<String> = if attach {
            entry.inputs.iter().cloned().collect()
        } else {
            if let Some(message) = finalize::archived(&trees, &job.workspace)? {
                let mut o = Outcome::failed("workspace_archived", message.clone(), now());
                o.facts.status_message = Some(message);
                return Ok(o);
            }
            let inputs = match finalize::prepare_inputs(&trees, &job, &volume)? {
                Ok(i) => i,
                Err(message) => {
                    let mut o = Outcome::failed("dependency_failed", message.clone(), now());
                    o.facts.status_message = Some(message);
                    return Ok(o);
                }
            };
            entry.inputs = inputs.iter().cloned().collect();
            set_stage(ctx, entry, "prepared")?;
            let _ = std::fs::remove_file(&log_path);
            inputs
        };
        let database = match crate::database::access(ctx.root, ctx.config, &job)? {
            None => None,
            Some(Ok(d)) => Some(d),
            Some(Err(message)) => {
                let mut o = Outcome::failed("database_unknown", message.clone(), now());
                o.facts.status_message = Some(message);
                return Ok(o);
            }
        };
        // Durable before the container starts: a recovery must know the
        // run began (and which files were inputs) to re-attach to it.
        set_stage(ctx, entry, "executing")?;
        let cancel_dir = &ctx.queue.cancel;
        let cancelled = || matches!(cancel_dir.stat_at(id_os), Ok(Some(_)));
        let time_limit = ctx.config.jobs.time_limit_secs;
        let req = RunRequest {
            job: &job,
            volume: volume.path(),
            log: &log_path,
            uid: ctx.config.service_account.uid,
            gid: ctx.config.service_account.gid,
            pids: ctx.config.jobs.default_pids,
            time_limit: Duration::from_secs(time_limit),
            cancelled: &cancelled,
            attach,
            database: database.as_ref(),
        };
        let started = now();
        let run = ctx.executor.run(&req);
        let finished_at = now();
        set_stage(ctx, entry, "executed")?;
        set_stage(ctx, entry, "finalizing")?;
        let run: RunResult = match run {
            Ok(r) => r,
            Err(e) => {
                let _ = ctx.executor.remove(&job.id);
                return Ok(Outcome::failed("internal_error", e.to_string(), now()));
            }
        };
        let judged = finalize::judge_run(&run, &job, time_limit);
        // job-runner keeps the matched outputs of every run that ended by
        // itself (a nonzero exit too); not of one cancelled or killed.
        let ran_to_end = judged.as_ref().map_or(true, |f| f.code == "nonzero_exit");
        let mut filed = Filed::default();
        let mut unmatched = Vec::new();
        let mut hint = None;
        if ran_to_end {
            let (found, _others) = files::walk(&volume)?;
            let (matched, un) = finalize::match_outputs(&job, &found, &inputs);
            if !un.is_empty() {
                let others: Vec<&str> = found
                    .iter()
                    .filter(|f| !matched.contains_key(*f) && !inputs.contains(*f))
                    .map(String::as_str)
                    .collect();
                if !others.is_empty() {
                    hint = Some(format!(
                        "Did you mean to match one of these files instead?\n - {}",
                        others.join("\n - ")
                    ));
                }
            }
            unmatched = un;
            filed = finalize::file_outputs(&trees, &job, &volume, &matched, now())?;
        }
        let mut outcome = match &judged {
            Some(f) => {
                let mut o = Outcome::failed(f.code, f.message.clone(), now());
                o.exit_code = Some(run.exit_code);
                o
            }
            None if !unmatched.is_empty() => {
                let mut o = Outcome::failed(
                    "unmatched_patterns",
                    format!("no output matched: {}", unmatched.join(", ")),
                    now(),
                );
                o.exit_code = Some(0);
                o
            }
            None => Outcome::succeeded("completed successfully", Vec::new(), now()),
        };
        outcome.outputs = filed.outputs.keys().cloned().collect();
        outcome.facts = RunFacts {
            image_id: run.image_id.clone(),
            labels: run.labels.clone(),
            status_message: (run.oom_killed || run.timed_out || run.cancelled)
                .then(|| judged.as_ref().map(|f| f.message.clone()))
                .flatten(),
            hint,
            level4_excluded: filed.outputs.values().any(|o| o.excluded),
        };
        let output = read_capped(&log_path);
        let summary = [
            ("started_at", crate::clock::rfc3339(started)),
            ("finished_at", crate::clock::rfc3339(finished_at)),
            ("exit_code", run.exit_code.to_string()),
            ("oom_killed", run.oom_killed.to_string()),
            ("status", outcome.status.clone()),
            ("message", outcome.message.clone()),
        ];
        let secrets = database.as_ref().map(|d| d.env.clone()).unwrap_or_default();
        let log = finalize::render_log(&job, &secrets, &output, &summary);
        // A cancelled or killed run's log stays in the log directory only,
        // as job-runner keeps it; a finished one goes to both trees too.
        if ran_to_end {
            finalize::write_logs(&trees, &job, &log)?;
        }
        let created_ns = job
            .origin
            .created_at
            .map(|s| i128::from(s) * 1_000_000_000)
            .unwrap_or(entry.submitted_at_ns);
        finalize::write_job_log_dir(
            &trees,
            &job,
            &log,
            &job_metadata(&job, &outcome, &run, finished_at),
            created_ns,
        )?;
        {
            let _lock = ctx.queue.lock()?;
            if ran_to_end {
                finalize::write_manifests(&trees, &job, &filed)?;
            }
        }
        let _ = std::fs::remove_file(&log_path);
        Ok(outcome)
    })();
    // The container and the volume go whatever happened; outputs are in
    // the trees by now.
    ctx.executor.remove(&job.id)?;
    files::remove_tree(&trees.volumes, id_os)?;
    result
}

/// The job's metadata.json: what job-runner records of a run (its keys),
/// with the environment's names only.
fn job_metadata(job: &JobSpec, o: &Outcome, run: &RunResult, finished_ns: i128) -> Value {
    let mut results = crate::results::results_of(o);
    if let Some(m) = results.as_object_mut() {
        // This file stays in the high privacy tree: names may be in it.
        m.insert("outputs".into(), json!(o.outputs));
        m.insert("hint".into(), json!(o.facts.hint));
        m.insert(
            "status_message".into(),
            json!(o
                .facts
                .status_message
                .clone()
                .unwrap_or_else(|| o.message.clone())),
        );
    }
    json!({
        "job_definition_id": job.id,
        "job_definition_rap_id": job.origin.rap_id,
        "task_id": job.task_id,
        "created_at": job.origin.created_at,
        "user": job.origin.user,
        "completed_at": finished_ns / 1_000_000_000,
        "expected_image_id": job.origin.image_sha,
        "oom_killed": run.oom_killed,
        "commit": job.commit,
        "database_name": job.origin.database_name,
        "status": o.status,
        "code": o.code,
        "results": results,
        "container_metadata": {
            "Image": run.image_id,
            "Config": {
                "Labels": run.labels,
                "Env": job.env.keys().map(|k| format!("{k}=xxxx-REDACTED-xxxx")).collect::<Vec<_>>(),
            },
        },
    })
}

fn read_capped(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut buf = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(MAX_LOG).read_to_end(&mut buf);
    }
    buf
}

/// The record of a finished job.
pub fn job_record(entry: &Entry) -> Value {
    let o = entry.outcome.clone();
    json!({
        "action": "run",
        "target": entry.job.id,
        "workspace": entry.job.workspace,
        "job_action": entry.job.action,
        "status": o.as_ref().map(|o| o.status.clone()),
        "code": o.as_ref().and_then(|o| o.code.clone()),
        "message": o.as_ref().map(|o| o.message.clone()),
        "exit_code": o.as_ref().and_then(|o| o.exit_code),
        "outputs": o.as_ref().map(|o| o.outputs.clone()).unwrap_or_default(),
        "attempts": entry.attempts,
    })
}

/// `work`: recover, then run jobs on `max_workers` threads until the queue
/// is empty (`once`) or forever.
pub fn work(ctx: &Ctx<'_>, out: &mut Output, once: bool, max_workers: usize) -> Result<u64> {
    for r in recover(ctx)? {
        out.item("recovered", true, &r);
    }
    let out = Mutex::new(out);
    let count = Mutex::new(0u64);
    let idle = Duration::from_millis((ctx.config.jobs.poll_interval_secs * 1000).clamp(100, 1000));
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..max_workers.max(1) {
            s.spawn(|| loop {
                let mut malformed = Vec::new();
                let claimed = ctx.queue.claim(ctx.worker, ctx.clock, &mut malformed);
                if let Ok(mut o) = out.lock() {
                    for m in &malformed {
                        o.item(
                            "malformed",
                            true,
                            &json!({"action": "dead_letter", "target": m.name, "error": m.error}),
                        );
                    }
                }
                match claimed {
                    Ok(Some(entry)) => {
                        let result = run_entry(ctx, entry);
                        if let Ok(mut o) = out.lock() {
                            match result {
                                Ok(done) => {
                                    o.item("job", true, &job_record(&done));
                                    if let Ok(mut c) = count.lock() {
                                        *c += 1;
                                    }
                                }
                                Err(e) => {
                                    use bs_core::cli::Report;
                                    o.error(e.kind(), &e.target(), &e.to_string());
                                }
                            }
                        }
                    }
                    Ok(None) if once => break,
                    Ok(None) => std::thread::sleep(idle),
                    Err(e) => {
                        if let Ok(mut f) = failures.lock() {
                            f.push(e.to_string());
                        }
                        if once {
                            break;
                        }
                        std::thread::sleep(idle);
                    }
                }
            });
        }
    });
    if let Ok(f) = failures.into_inner() {
        if let Ok(o) = out.into_inner() {
            for m in f {
                o.error("claim", "", &m);
            }
        }
    }
    Ok(count.into_inner().unwrap_or(0))
}
