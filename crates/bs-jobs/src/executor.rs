//! Running one action: in a locked-down container on the Docker engine
//! ([`DockerExecutor`]), or not at all ([`NoopExecutor`], for measuring
//! the queue's own overhead).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bs_engine::{labels, BindMount, ContainerSpec, Engine, EngineError};

use crate::error::{JobsError, Result};
use crate::spec::JobSpec;

/// The container name of a job: the one place it is spelled.
pub fn container_name(job_id: &str) -> String {
    format!("os-job-{job_id}")
}

/// Everything the executor needs for one run.
pub struct RunRequest<'a> {
    pub job: &'a JobSpec,
    /// Host path of the job's volume, mounted at /workspace.
    pub volume: &'a Path,
    /// Where the container's output goes while it runs.
    pub log: &'a Path,
    pub uid: u32,
    pub gid: u32,
    pub pids: i64,
    pub time_limit: Duration,
    /// Polled while the job runs: true when someone asked to cancel it.
    pub cancelled: &'a dyn Fn() -> bool,
    /// Wait for the job's existing container (its worker died while it
    /// ran) instead of creating one: the run is not started again.
    pub attach: bool,
    /// A database job's access: its network, the database variables
    /// (secrets: never stored in the entry, redacted in every log) and
    /// `/etc/hosts` entries for the database hosts.
    pub database: Option<&'a DatabaseAccess>,
}

/// What a job with `allow_database_access` gets.
#[derive(Debug, Clone, Default)]
pub struct DatabaseAccess {
    pub network: String,
    pub env: BTreeMap<String, String>,
    /// `host:ip`, for the database hosts: the container has no DNS.
    pub hosts: Vec<String>,
}

/// No resolver reaches anything from a database job: Docker's embedded DNS
/// forwards to this address of the documentation range (RFC 5737), which
/// goes nowhere, as job-runner does.
const DNS_BLACKHOLE: &str = "192.0.2.0";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunResult {
    pub exit_code: i64,
    pub oom_killed: bool,
    pub timed_out: bool,
    pub cancelled: bool,
    /// Settings the engine did not apply (the job was not started then).
    pub refused: Option<String>,
    /// The engine's id of the image the container ran.
    pub image_id: Option<String>,
    /// The container's labels (the image's, with ours on top).
    pub labels: BTreeMap<String, String>,
}

pub trait Executor: Sync {
    fn run(&self, req: &RunRequest<'_>) -> Result<RunResult>;
    /// Remove a job's container if there is one (crash recovery, clean-up).
    fn remove(&self, job_id: &str) -> Result<bool>;
    /// Kill a job's running container; false when none runs.
    fn kill(&self, job_id: &str) -> Result<bool>;
    /// Whether the job's container exists (running or exited, not removed).
    fn exists(&self, job_id: &str) -> Result<bool>;
}

/// The hardened container of a job, as the engine is asked to create it.
pub fn container_spec(req: &RunRequest<'_>) -> ContainerSpec {
    let job = req.job;
    let mut label_map = BTreeMap::new();
    label_map.insert(labels::JOB_ID.to_string(), job.id.clone());
    label_map.insert(labels::JOB_WORKSPACE.to_string(), job.workspace.clone());
    label_map.insert(labels::JOB_ACTION.to_string(), job.action.clone());
    label_map.insert(labels::MANAGED_BY.to_string(), "bs-jobs".to_string());
    // job-runner's own labels, so operators' `docker ps --filter
    // label=job-runner` (and workspace=, action=) habits keep working.
    label_map.insert("job-runner".to_string(), String::new());
    label_map.insert("workspace".to_string(), job.workspace.clone());
    label_map.insert("action".to_string(), job.action.clone());
    let mut env = vec!["HOME=/tmp".to_string()];
    env.extend(job.env.iter().map(|(k, v)| format!("{k}={v}")));
    if let Some(db) = req.database {
        env.extend(db.env.iter().map(|(k, v)| format!("{k}={v}")));
    }
    ContainerSpec {
        name: container_name(&job.id),
        image: job.image.clone(),
        command: job.command.clone(),
        user: Some(format!("{}:{}", req.uid, req.gid)),
        env,
        working_dir: Some("/workspace".into()),
        labels: label_map,
        mounts: vec![BindMount {
            source: req.volume.display().to_string(),
            target: "/workspace".into(),
            read_only: false,
        }],
        network: Some(
            req.database
                .map(|d| d.network.clone())
                .unwrap_or_else(|| "none".into()),
        ),
        init: true,
        cap_drop: vec!["ALL".into()],
        no_new_privileges: true,
        memory_bytes: Some(job.memory.min(i64::MAX as u64) as i64),
        nano_cpus: Some((job.cpu * 1e9).round() as i64),
        pids_limit: Some(req.pids),
        ..ContainerSpec::default()
    }
}

pub struct DockerExecutor {
    pub socket: String,
}

impl DockerExecutor {
    pub fn new(socket: impl Into<String>) -> DockerExecutor {
        DockerExecutor {
            socket: socket.into(),
        }
    }

    fn engine(&self) -> Result<Engine> {
        Ok(Engine::connect(&self.socket)?)
    }
}

impl Executor for DockerExecutor {
    fn run(&self, req: &RunRequest<'_>) -> Result<RunResult> {
        let engine = self.engine()?;
        let name = container_name(&req.job.id);
        if req.attach {
            let Some(inspect) = engine.inspect(&name)? else {
                return Err(JobsError::State {
                    id: req.job.id.clone(),
                    message: "its container is gone; it cannot be re-attached".into(),
                });
            };
            // Created but never started (the worker died in between).
            let status = inspect.state.and_then(|s| s.status).map(|s| s.to_string());
            if status.as_deref() == Some("created") {
                engine.start(&name)?;
            }
            return self.wait_for(&engine, &name, req);
        }
        // A container of an earlier attempt (the worker died) goes first.
        engine.remove(&name)?;
        if engine.image_id(&req.job.image)?.is_none() {
            return Err(JobsError::State {
                id: req.job.id.clone(),
                message: format!(
                    "image {} is not on this server (bs-jobs never pulls images)",
                    req.job.image
                ),
            });
        }
        let spec = container_spec(req);
        match req.database {
            None => engine.create_container(&spec)?,
            Some(db) => {
                let mut body = spec.to_create_body();
                if let Some(hc) = body.host_config.as_mut() {
                    hc.dns = Some(vec![DNS_BLACKHOLE.to_string()]);
                    hc.extra_hosts = Some(db.hosts.clone());
                }
                engine.create_container_raw(&spec.name, body)?
            }
        };
        // Read the settings back: a job must never run with less isolation
        // than asked for because an engine silently dropped a setting.
        if let Some(inspect) = engine.inspect(&name)? {
            let problems = spec.mismatches(&inspect);
            if !problems.is_empty() {
                engine.remove(&name)?;
                return Ok(RunResult {
                    refused: Some(problems.join("; ")),
                    ..RunResult::default()
                });
            }
        }
        engine.start(&name)?;
        self.wait_for(&engine, &name, req)
    }

    fn remove(&self, job_id: &str) -> Result<bool> {
        Ok(self.engine()?.remove(&container_name(job_id))?)
    }

    fn kill(&self, job_id: &str) -> Result<bool> {
        let engine = self.engine()?;
        let name = container_name(job_id);
        match engine.kill(&name, "KILL") {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() || e.status() == Some(409) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn exists(&self, job_id: &str) -> Result<bool> {
        Ok(self.engine()?.inspect(&container_name(job_id))?.is_some())
    }
}

impl DockerExecutor {
    /// Follow a started container to its end (its log to the log file),
    /// enforcing cancel and the time limit.
    fn wait_for(&self, engine: &Engine, name: &str, req: &RunRequest<'_>) -> Result<RunResult> {
        let name = name.to_string();
        let logger = {
            let socket = self.socket.clone();
            let name = name.clone();
            let log: PathBuf = req.log.to_path_buf();
            std::thread::spawn(move || -> std::result::Result<u64, EngineError> {
                Engine::connect(&socket)?.logs_to_file(&name, &log, true)
            })
        };
        let started = Instant::now();
        let mut result = RunResult::default();
        let exit = loop {
            let slice = Duration::from_millis(500);
            if let Some(code) = engine.wait_timeout(&name, slice)? {
                break code;
            }
            if (req.cancelled)() {
                result.cancelled = true;
                let _ = engine.kill(&name, "KILL");
            } else if started.elapsed() >= req.time_limit {
                result.timed_out = true;
                let _ = engine.kill(&name, "KILL");
            }
        };
        result.exit_code = exit;
        if let Some(inspect) = engine.inspect(&name)? {
            let state = inspect.state.unwrap_or_default();
            result.oom_killed = state.oom_killed.unwrap_or(false);
            if let Some(code) = state.exit_code {
                result.exit_code = code;
            }
            result.image_id = inspect.image.clone();
            result.labels = inspect
                .config
                .and_then(|c| c.labels)
                .map(|l| l.into_iter().collect())
                .unwrap_or_default();
        }
        // The log stream ends when the container stops.
        let _ = logger.join();
        // A cancel that raced with a normal exit still counts as asked.
        if !result.cancelled && (req.cancelled)() && result.exit_code != 0 {
            result.cancelled = true;
        }
        // The container stays until the job is finalized (the worker
        // removes it then): a worker killed while finalizing re-attaches
        // to the exited container instead of running the job again.
        Ok(result)
    }
}

/// Runs nothing and succeeds: the queue, volume, finalize and manifest
/// work of a job without a container (`work --executor noop`, the bench).
pub struct NoopExecutor;

impl Executor for NoopExecutor {
    fn run(&self, req: &RunRequest<'_>) -> Result<RunResult> {
        std::fs::write(req.log, b"").map_err(|e| bs_core::CoreError::io(req.log, e))?;
        Ok(RunResult::default())
    }

    fn remove(&self, _job_id: &str) -> Result<bool> {
        Ok(false)
    }

    fn kill(&self, _job_id: &str) -> Result<bool> {
        Ok(false)
    }

    fn exists(&self, _job_id: &str) -> Result<bool> {
        Ok(false)
    }
}
