//! The crash-safe file-system queue under `<root>/var/lib/bs/jobs/`.
//!
//! ```text
//! queue/    waiting entries        <seq:020>-<job id>.json
//! running/  claimed by a worker    (same name; the entry names the worker)
//! done/     succeeded
//! failed/   failed, cancelled, or malformed (the dead letter, with the reason)
//! ledger/   one empty-ish file per job id and per controller task id ever queued
//! outbox/   status updates for the controller not yet sent
//! cancel/   a file per job a `cancel` asked to stop
//! workers/  one lock file per live worker process (flock held for its life)
//! logs/     container output while a job runs
//! seq       the last sequence number handed out
//! lock      flock taken for sequence numbers, claims and recovery
//! ```
//!
//! The faults of the durhack queue (seeds/003) and how they are avoided:
//! names come from a sequence number kept under the lock, never the wall
//! clock (chrony steps it backwards, and two entries can share a
//! nanosecond); every file is written temp -> fsync -> rename; an entry is
//! claimed by an atomic rename, so two workers never run the same one; a
//! malformed entry goes to `failed/` at once instead of blocking the queue;
//! the ledger refuses a job id or task id seen before.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use bs_core::safefs::{self, DirFd, FileSpec, Kind};
use bs_core::{CoreError, Root};
use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::error::{JobsError, Result};
use crate::spec::JobSpec;

/// Largest entry we read: a job definition is small; anything bigger is
/// not one of ours.
const MAX_ENTRY: u64 = 1 << 20;

/// Where an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Done,
    Failed,
}

impl State {
    pub const ALL: [State; 4] = [State::Queued, State::Running, State::Done, State::Failed];

    pub fn dir(self) -> &'static str {
        match self {
            State::Queued => "queue",
            State::Running => "running",
            State::Done => "done",
            State::Failed => "failed",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Done => "done",
            State::Failed => "failed",
        }
    }
}

/// How a finished job ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// `succeeded` or `failed`.
    pub status: String,
    /// A failure code: nonzero_exit, unmatched_patterns, cancelled_by_user,
    /// killed_by_admin, internal_error, malformed_entry, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub outputs: Vec<String>,
    pub finished_at_ns: i128,
    /// What the controller's results carry beyond the status.
    #[serde(default)]
    pub facts: RunFacts,
}

/// Facts of a run that job-runner's results report (crate::results).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunFacts {
    /// The engine's id of the image the container ran.
    #[serde(default)]
    pub image_id: Option<String>,
    /// The image's labels (org.opencontainers.*, org.opensafely.*).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The message for the controller, when not the status's default.
    #[serde(default)]
    pub status_message: Option<String>,
    /// job-runner's hint for unmatched patterns (stays on the backend).
    #[serde(default)]
    pub hint: Option<String>,
    #[serde(default)]
    pub level4_excluded: bool,
}

impl Outcome {
    pub fn failed(code: &str, message: impl Into<String>, now: i128) -> Outcome {
        Outcome {
            status: "failed".into(),
            code: Some(code.into()),
            message: message.into(),
            exit_code: None,
            outputs: Vec::new(),
            finished_at_ns: now,
            facts: RunFacts::default(),
        }
    }

    pub fn succeeded(message: impl Into<String>, outputs: Vec<String>, now: i128) -> Outcome {
        Outcome {
            status: "succeeded".into(),
            code: None,
            message: message.into(),
            exit_code: Some(0),
            outputs,
            finished_at_ns: now,
            facts: RunFacts::default(),
        }
    }
}

/// One queue entry, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub seq: u64,
    pub job: JobSpec,
    /// Wall-clock time of submission, for people; never used for order.
    pub submitted_at_ns: i128,
    /// Runs started (a worker that died counts).
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub stage: String,
    /// The worker process holding it while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ns: Option<i128>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// The job's container outlived its worker: the next claim waits for
    /// that container instead of starting the job again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reattach: bool,
    /// Files copied into the volume as inputs (they are not outputs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
}

impl Entry {
    pub fn file_name(&self) -> OsString {
        entry_name(self.seq, &self.job.id)
    }
}

/// What a malformed entry becomes in `failed/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Malformed {
    pub malformed: bool,
    pub name: String,
    pub error: String,
    /// The first bytes of what was there, for a person to look at.
    pub content: String,
}

pub fn entry_name(seq: u64, id: &str) -> OsString {
    OsString::from(format!("{seq:020}-{id}.json"))
}

/// The job id inside an entry's file name.
pub fn id_of_name(name: &OsStr) -> Option<&str> {
    let s = std::str::from_utf8(name.as_bytes()).ok()?;
    let s = s.strip_suffix(".json")?;
    let (seq, id) = s.split_once('-')?;
    (seq.len() == 20 && seq.bytes().all(|b| b.is_ascii_digit())).then_some(id)
}

fn is_entry_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !b.starts_with(b".") && b.ends_with(b".json")
}

/// The queue's directories, open.
pub struct Queue {
    pub base: DirFd,
    queue: DirFd,
    running: DirFd,
    done: DirFd,
    failed: DirFd,
    ledger: DirFd,
    pub outbox: DirFd,
    pub cancel: DirFd,
    pub workers: DirFd,
    pub logs: DirFd,
    spec: FileSpec,
    /// Queued names seen by the last directory scan, oldest first. New
    /// entries always sort after them (the sequence only grows), so
    /// draining this before scanning again keeps the order while a claim
    /// stays O(1) instead of a scan of a 10,000-entry directory.
    pending: std::sync::Mutex<std::collections::VecDeque<OsString>>,
}

/// The queue lock, held until dropped (the kernel drops it if we die).
pub struct QueueLock {
    _fd: OwnedFd,
}

impl Queue {
    /// Open (creating if needed) the queue at `[jobs] state_dir` under the root.
    pub fn open(root: &Root, state_dir: &Path) -> Result<Queue> {
        let path = root.join(state_dir);
        // Parents like /var/lib are the system's; only ours gets 0750.
        if let Some(parent) = path.parent() {
            safefs::ensure_dir_all(parent, &FileSpec::root(0o755))?;
        }
        let spec = FileSpec::root(0o750);
        let (dir_parent, name) = safefs::split(&path)?;
        let (base, _) = DirFd::open(dir_parent)?.ensure_subdir(name, &spec)?;
        let sub = |n: &str| -> Result<DirFd> { Ok(base.ensure_subdir(OsStr::new(n), &spec)?.0) };
        Ok(Queue {
            queue: sub("queue")?,
            running: sub("running")?,
            done: sub("done")?,
            failed: sub("failed")?,
            ledger: sub("ledger")?,
            outbox: sub("outbox")?,
            cancel: sub("cancel")?,
            workers: sub("workers")?,
            logs: sub("logs")?,
            base,
            spec: FileSpec::root(0o640),
            pending: std::sync::Mutex::new(std::collections::VecDeque::new()),
        })
    }

    pub fn path(&self) -> &Path {
        self.base.path()
    }

    pub fn dir(&self, state: State) -> &DirFd {
        match state {
            State::Queued => &self.queue,
            State::Running => &self.running,
            State::Done => &self.done,
            State::Failed => &self.failed,
        }
    }

    /// Take the queue lock (blocking; it is only ever held briefly).
    pub fn lock(&self) -> Result<QueueLock> {
        let fd = rustix::fs::openat(
            self.base.fd(),
            "lock",
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| CoreError::io(self.path().join("lock"), e.into()))?;
        loop {
            match rustix::fs::flock(&fd, FlockOperation::LockExclusive) {
                Ok(()) => return Ok(QueueLock { _fd: fd }),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(CoreError::io(self.path().join("lock"), e.into()).into()),
            }
        }
    }

    /// The next sequence number. Call with the lock held.
    pub fn next_seq(&self, lock: &QueueLock) -> Result<u64> {
        self.reserve_seqs(lock, 1)
    }

    /// Reserve `n` sequence numbers with one durable write; returns the
    /// first. The counter is on disk before any number is used, so a crash
    /// can skip numbers but never hand one out twice.
    pub fn reserve_seqs(&self, _lock: &QueueLock, n: u64) -> Result<u64> {
        let last = match self.base.read_file(OsStr::new("seq"), 64)? {
            Some((bytes, _)) => String::from_utf8_lossy(&bytes)
                .trim()
                .parse::<u64>()
                .map_err(|_| {
                    JobsError::Core(CoreError::Unsafe {
                        path: self.path().join("seq"),
                        reason: "not a number: refusing to guess the next sequence number".into(),
                    })
                })?,
            None => 0,
        };
        let next = last + 1;
        let end = last + n.max(1);
        self.base.write_file(
            OsStr::new("seq"),
            format!("{end}\n").as_bytes(),
            &FileSpec::root(0o600),
        )?;
        Ok(next)
    }

    /// Whether a ledger key (`job-<id>` / `task-<id>`) was recorded, and
    /// what it says (the entry name it queued, or a note).
    pub fn ledger_get(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .ledger
            .read_file(OsStr::new(key), 4096)?
            .map(|(b, _)| String::from_utf8_lossy(&b).trim().to_string()))
    }

    pub fn ledger_put(&self, key: &str, value: &str) -> Result<()> {
        self.ledger
            .write_file(OsStr::new(key), format!("{value}\n").as_bytes(), &self.spec)?;
        Ok(())
    }

    /// Whether an entry of this name exists in any state.
    pub fn exists_anywhere(&self, name: &OsStr) -> Result<bool> {
        for s in State::ALL {
            if self.dir(s).stat_at(name)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Queue a validated job. A job id (or task id) seen before is refused:
    /// the ledger remembers every id ever queued, finished ones too.
    pub fn submit(&self, job: JobSpec, clock: &dyn Clock) -> Result<Entry> {
        self.submit_many(vec![job], clock).pop().unwrap_or_else(|| {
            Err(JobsError::State {
                id: String::new(),
                message: "nothing submitted".into(),
            })
        })
    }

    /// Queue several jobs under one lock and one sequence reservation;
    /// one result per job, in order.
    pub fn submit_many(&self, jobs: Vec<JobSpec>, clock: &dyn Clock) -> Vec<Result<Entry>> {
        let lock = match self.lock() {
            Ok(l) => l,
            Err(e) => return vec![Err(e)],
        };
        let first = match self.reserve_seqs(&lock, jobs.len() as u64) {
            Ok(f) => f,
            Err(e) => return vec![Err(e)],
        };
        // A batch is made durable with one syncfs instead of two fsyncs a
        // file (10,000 jobs: seconds instead of a minute); a single job is
        // fsynced on its own, so it never waits for the whole file system.
        let batch = jobs.len() > 8;
        let mut staged: Vec<Staged<'_>> = Vec::new();
        let mut keys_in_batch = std::collections::BTreeSet::new();
        let mut out = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.into_iter().enumerate() {
            let r = self.stage_job(
                job,
                first + i as u64,
                clock,
                batch,
                &mut keys_in_batch,
                &mut staged,
            );
            out.push(r);
        }
        if let Err(e) = self.commit(staged, batch) {
            return vec![Err(e)];
        }
        drop(lock);
        out
    }

    fn stage_job<'a>(
        &'a self,
        job: JobSpec,
        seq: u64,
        clock: &dyn Clock,
        batch: bool,
        seen: &mut std::collections::BTreeSet<String>,
        staged: &mut Vec<Staged<'a>>,
    ) -> Result<Entry> {
        let keys = ledger_keys(&job);
        for key in &keys {
            if seen.contains(key) {
                return Err(JobsError::Duplicate { id: job.id.clone() });
            }
            if let Some(name) = self.ledger_get(key)? {
                // The ledger is written with the entry; a crash between the
                // two leaves a ledger line naming an entry that never landed,
                // which does not block submitting the job again.
                if self.exists_anywhere(OsStr::new(&name))? || !name.ends_with(".json") {
                    return Err(JobsError::Duplicate { id: job.id.clone() });
                }
            }
        }
        let entry = Entry {
            seq,
            job,
            submitted_at_ns: clock.now_ns(),
            attempts: 0,
            stage: "pending".into(),
            worker: None,
            started_at_ns: None,
            outcome: None,
            reattach: false,
            inputs: Vec::new(),
        };
        let name = entry.file_name();
        let name_str = name.to_string_lossy().into_owned();
        let bytes = serde_json::to_vec_pretty(&entry).map_err(|e| JobsError::State {
            id: entry.job.id.clone(),
            message: format!("cannot serialise: {e}"),
        })?;
        for key in &keys {
            staged.push(stage(
                &self.ledger,
                OsStr::new(key),
                format!("{name_str}\n").as_bytes(),
                &self.spec,
                !batch,
            )?);
            seen.insert(key.clone());
        }
        staged.push(stage(&self.queue, &name, &bytes, &self.spec, !batch)?);
        Ok(entry)
    }

    /// Rename staged files into place (ledger lines before their entries)
    /// and make the names durable.
    fn commit(&self, staged: Vec<Staged<'_>>, batch: bool) -> Result<()> {
        if batch && !staged.is_empty() {
            rustix::fs::syncfs(self.base.fd()).map_err(|e| CoreError::io(self.path(), e.into()))?;
        }
        for s in &staged {
            rustix::fs::renameat(s.dir.fd(), &s.tmp, s.dir.fd(), &s.name)
                .map_err(|e| CoreError::io(s.dir.path().join(&s.name), e.into()))?;
        }
        for dir in [&self.ledger, &self.queue] {
            rustix::fs::fsync(dir.fd()).map_err(|e| CoreError::io(dir.path(), e.into()))?;
        }
        Ok(())
    }

    /// Record an id in the ledger without queueing (a task refused as
    /// invalid must not be looked at again).
    pub fn ledger_note(&self, key: &str, note: &str) -> Result<()> {
        let _lock = self.lock()?;
        self.ledger_put(key, note)
    }

    pub fn write(&self, state: State, entry: &Entry) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(entry).map_err(|e| JobsError::State {
            id: entry.job.id.clone(),
            message: format!("cannot serialise: {e}"),
        })?;
        self.dir(state)
            .write_file(&entry.file_name(), &bytes, &self.spec)?;
        Ok(())
    }

    /// Read an entry; `Err(message)` inside `Ok` when it does not parse.
    pub fn read(
        &self,
        state: State,
        name: &OsStr,
    ) -> Result<Option<std::result::Result<Entry, String>>> {
        let bytes = match self.dir(state).read_file(name, MAX_ENTRY) {
            Ok(Some((b, _))) => b,
            Ok(None) => return Ok(None),
            Err(CoreError::Unsafe { reason, .. }) => return Ok(Some(Err(reason))),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(parse_entry(name, &bytes)))
    }

    /// Entry names in a state directory, in queue order.
    pub fn names(&self, state: State) -> Result<Vec<OsString>> {
        Ok(self
            .dir(state)
            .entries()?
            .into_iter()
            .filter(|(n, k)| *k != Kind::Dir && is_entry_name(n))
            .map(|(n, _)| n)
            .collect())
    }

    /// Find a job by id: its state and entry name.
    pub fn find(&self, id: &str) -> Result<Option<(State, OsString)>> {
        let suffix = format!("-{id}.json");
        // Ledger first: it names the entry, which saves scanning.
        if let Some(name) = self.ledger_get(&format!("job-{id}"))? {
            for s in State::ALL {
                if self.dir(s).stat_at(OsStr::new(&name))?.is_some() {
                    return Ok(Some((s, OsString::from(name))));
                }
            }
        }
        for s in State::ALL {
            for n in self.names(s)? {
                if n.as_bytes().ends_with(suffix.as_bytes()) {
                    return Ok(Some((s, n)));
                }
            }
        }
        Ok(None)
    }

    /// Claim the oldest queued entry for `worker`: an atomic rename into
    /// `running/` under the lock, then the entry is rewritten naming the
    /// worker. Malformed entries met on the way go to `failed/` at once.
    pub fn claim(
        &self,
        worker: &str,
        clock: &dyn Clock,
        malformed: &mut Vec<Malformed>,
    ) -> Result<Option<Entry>> {
        let _lock = self.lock()?;
        let mut pending = self.pending.lock().map_err(|_| JobsError::State {
            id: String::new(),
            message: "claim cache poisoned".into(),
        })?;
        if pending.is_empty() {
            pending.extend(self.names(State::Queued)?);
        }
        while let Some(name) = pending.pop_front() {
            match rustix::fs::renameat(self.queue.fd(), &name, self.running.fd(), &name) {
                Ok(()) => {}
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(CoreError::io(self.queue.path().join(&name), e.into()).into()),
            }
            match self.read(State::Running, &name)? {
                None => continue,
                Some(Err(error)) => {
                    malformed.push(self.dead_letter(State::Running, &name, &error)?);
                    continue;
                }
                Some(Ok(mut entry)) => {
                    entry.worker = Some(worker.to_string());
                    if entry.reattach {
                        // The same run goes on: not a new attempt.
                        entry.stage = "executing".into();
                    } else {
                        entry.attempts += 1;
                        entry.stage = "preparing".into();
                        entry.started_at_ns = Some(clock.now_ns());
                    }
                    self.write(State::Running, &entry)?;
                    rustix::fs::fsync(self.queue.fd())
                        .map_err(|e| CoreError::io(self.queue.path(), e.into()))?;
                    return Ok(Some(entry));
                }
            }
        }
        Ok(None)
    }

    /// Move an unreadable entry from `state` to `failed/`, wrapped with the
    /// parse error, so it never blocks the queue and is kept for a person.
    pub fn dead_letter(&self, state: State, name: &OsStr, error: &str) -> Result<Malformed> {
        let content = match self.dir(state).read_file(name, MAX_ENTRY) {
            Ok(Some((b, _))) => String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned(),
            _ => String::new(),
        };
        let record = Malformed {
            malformed: true,
            name: name.to_string_lossy().into_owned(),
            error: error.to_string(),
            content,
        };
        let mut bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
        bytes.push(b'\n');
        // A malformed name may not end in .json; keep what it was, readable.
        let mut target = OsString::from(name);
        if !is_entry_name(name) {
            target.push(".json");
        }
        self.failed.write_file(&target, &bytes, &self.spec)?;
        self.dir(state).remove_if_exists(name)?;
        Ok(record)
    }

    /// Update a running entry (its stage) in place: atomic, but not
    /// fsynced: a crash can only lose the stage label, which recovery
    /// resets anyway.
    pub fn update_running(&self, entry: &Entry) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(entry).map_err(|e| JobsError::State {
            id: entry.job.id.clone(),
            message: format!("cannot serialise: {e}"),
        })?;
        let staged = stage(&self.running, &entry.file_name(), &bytes, &self.spec, false)?;
        rustix::fs::renameat(staged.dir.fd(), &staged.tmp, staged.dir.fd(), &staged.name)
            .map_err(|e| CoreError::io(self.running.path().join(&staged.name), e.into()))?;
        Ok(())
    }

    /// Finish a running entry into `done/` or `failed/`. The new file lands
    /// before the old one goes: a crash in between leaves both, and
    /// recovery drops the running copy.
    pub fn finish(&self, mut entry: Entry, outcome: Outcome) -> Result<Entry> {
        let state = if outcome.status == "succeeded" {
            State::Done
        } else {
            State::Failed
        };
        entry.stage = "finalized".into();
        entry.outcome = Some(outcome);
        self.write(state, &entry)?;
        self.running.remove_if_exists(&entry.file_name())?;
        rustix::fs::fsync(self.running.fd())
            .map_err(|e| CoreError::io(self.running.path(), e.into()))?;
        self.cancel.remove_if_exists(OsStr::new(&entry.job.id))?;
        Ok(entry)
    }

    /// Move a queued entry straight to `failed/` (cancelled before it ran).
    /// Returns false when it is no longer queued.
    pub fn fail_queued(&self, name: &OsStr, outcome: Outcome) -> Result<Option<Entry>> {
        let _lock = self.lock()?;
        let Some(parsed) = self.read(State::Queued, name)? else {
            return Ok(None);
        };
        let mut entry = match parsed {
            Ok(e) => e,
            Err(error) => {
                self.dead_letter(State::Queued, name, &error)?;
                return Ok(None);
            }
        };
        entry.stage = "finalized".into();
        entry.outcome = Some(outcome);
        self.write(State::Failed, &entry)?;
        self.queue.remove_if_exists(name)?;
        Ok(Some(entry))
    }

    /// Put a failed or done entry back in the queue (same name: same place
    /// in the order), with its attempts reset.
    pub fn retry(&self, state: State, name: &OsStr) -> Result<Entry> {
        let _lock = self.lock()?;
        let mut entry = match self.read(state, name)? {
            Some(Ok(e)) => e,
            _ => {
                return Err(JobsError::State {
                    id: name.to_string_lossy().into_owned(),
                    message: "the entry cannot be read; fix or remove it by hand".into(),
                })
            }
        };
        entry.attempts = 0;
        entry.reattach = false;
        entry.stage = "pending".into();
        entry.worker = None;
        entry.outcome = None;
        entry.started_at_ns = None;
        self.write(State::Queued, &entry)?;
        self.dir(state).remove_if_exists(name)?;
        Ok(entry)
    }

    /// Requeue an entry from `running/` whose worker died (or fail it when
    /// it has used up its attempts). Call with the lock held.
    pub fn requeue_orphan(
        &self,
        _lock: &QueueLock,
        mut entry: Entry,
        max_attempts: u32,
        now: i128,
    ) -> Result<State> {
        let name = entry.file_name();
        if entry.attempts >= max_attempts {
            let outcome = Outcome::failed(
                "internal_error",
                format!(
                    "the worker died {} time(s) while running this job; giving up",
                    entry.attempts
                ),
                now,
            );
            entry.stage = "finalized".into();
            entry.outcome = Some(outcome);
            self.write(State::Failed, &entry)?;
            self.running.remove_if_exists(&name)?;
            return Ok(State::Failed);
        }
        entry.worker = None;
        entry.stage = "pending".into();
        self.write(State::Queued, &entry)?;
        self.running.remove_if_exists(&name)?;
        Ok(State::Queued)
    }

    /// Give an entry from `running/` whose worker died but whose container
    /// still exists back to the queue, marked to re-attach to it (no
    /// attempt counted: nothing is run again). Call with the lock held.
    pub fn requeue_for_reattach(&self, _lock: &QueueLock, mut entry: Entry) -> Result<()> {
        let name = entry.file_name();
        entry.worker = None;
        entry.reattach = true;
        self.write(State::Queued, &entry)?;
        self.running.remove_if_exists(&name)?;
        Ok(())
    }

    /// Remove temp files a killed `submit` left in queue/ and ledger/.
    /// Call with the lock held: every writer there holds it too, so none
    /// of these is in use. Returns how many went.
    pub fn sweep_temps(&self, _lock: &QueueLock) -> Result<usize> {
        let mut n = 0;
        for dir in [&self.queue, &self.ledger, &self.outbox] {
            for (name, kind) in dir.entries()? {
                let b = name.as_bytes();
                if kind == Kind::File && b.starts_with(b".") && b.ends_with(b".bs-tmp") {
                    dir.remove_if_exists(&name)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Drop `running/NAME` when the same entry already landed in done/ or
    /// failed/ (a crash between the two steps of [`Queue::finish`]).
    pub fn finished_copy_exists(&self, name: &OsStr) -> Result<bool> {
        Ok(self.done.stat_at(name)?.is_some() || self.failed.stat_at(name)?.is_some())
    }

    pub fn remove_running(&self, name: &OsStr) -> Result<()> {
        self.running.remove_if_exists(name)?;
        Ok(())
    }

    /// Put a status update for the controller in the outbox, ordered by
    /// the sequence (call with the lock held).
    pub fn outbox_put(
        &self,
        lock: &QueueLock,
        task_id: &str,
        payload: &serde_json::Value,
    ) -> Result<()> {
        let seq = self.next_seq(lock)?;
        let name = format!("{seq:020}-{task_id}.json");
        self.outbox.write_file(
            OsStr::new(&name),
            payload.to_string().as_bytes(),
            &FileSpec::root(0o600),
        )?;
        Ok(())
    }

    /// The controller task a job's updates go to: the latest task the
    /// controller issued for it (a re-issued `<job>-002` replaces
    /// `<job>-001`), else the one it came in.
    pub fn current_task(&self, job: &JobSpec) -> Result<Option<String>> {
        Ok(self
            .ledger_get(&format!("current-{}", job.id))?
            .filter(|t| !t.is_empty())
            .or_else(|| job.task_id.clone()))
    }

    pub fn set_current_task(&self, job_id: &str, task_id: &str) -> Result<()> {
        self.ledger_note(&format!("current-{job_id}"), task_id)
    }

    /// Whether an update for this task waits in the outbox.
    pub fn outbox_has(&self, task_id: &str) -> Result<bool> {
        let wanted = format!("{task_id}.json");
        Ok(self.outbox.entries()?.into_iter().any(|(n, _)| {
            let n = n.as_bytes();
            // `<seq:020>-<task>.json`
            n.len() > 21 && n[20] == b'-' && &n[21..] == wanted.as_bytes()
        }))
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.logs.path().join(format!("{id}.log"))
    }
}

/// A file written under a temp name, waiting to be renamed into place.
struct Staged<'a> {
    dir: &'a DirFd,
    tmp: OsString,
    name: OsString,
}

fn stage<'a>(
    dir: &'a DirFd,
    name: &OsStr,
    bytes: &[u8],
    spec: &FileSpec,
    fsync: bool,
) -> Result<Staged<'a>> {
    use std::io::Write;
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.bs-tmp", std::process::id()));
    let path = dir.path().join(&tmp);
    let fd = rustix::fs::openat(
        dir.fd(),
        &tmp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(spec.mode),
    )
    .map_err(|e| CoreError::io(&path, e.into()))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes).map_err(|e| CoreError::io(&path, e))?;
    crate::files::set_owner_mode(&file, &path, spec)?;
    if fsync {
        file.sync_all().map_err(|e| CoreError::io(&path, e))?;
    }
    Ok(Staged {
        dir,
        tmp,
        name: name.to_os_string(),
    })
}

fn parse_entry(name: &OsStr, bytes: &[u8]) -> std::result::Result<Entry, String> {
    let entry: Entry = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if entry.file_name() != name {
        return Err(format!(
            "its content (job {:?}, seq {}) does not match its file name",
            entry.job.id, entry.seq
        ));
    }
    Ok(entry)
}

pub fn ledger_keys(job: &JobSpec) -> Vec<String> {
    let mut keys = vec![format!("job-{}", job.id)];
    if let Some(t) = &job.task_id {
        keys.push(format!("task-{t}"));
    }
    keys
}
