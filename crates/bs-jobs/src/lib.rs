//! bs-jobs: a crash-safe file-system job queue, a poller for the job
//! server, and a worker that runs each action in a locked-down container
//! and files its outputs by privacy level. See docs/bs-jobs.md.
//!
//! | module       | concern |
//! |--------------|---------|
//! | [`spec`]     | job definitions and their validation |
//! | [`queue`]    | the queue directories, sequence, ledger, claim, dead letter |
//! | [`worker`]   | crash recovery, claim -> run -> finalize on N threads |
//! | [`executor`] | the hardened container (or a no-op, for the bench) |
//! | [`finalize`] | output globs, medium-privacy rules, manifest and logs |
//! | [`files`]    | fd-based, no-follow file work in user-writable trees |
//! | [`poller`]   | the controller: tasks in, status updates out (outbox) |
//! | [`units`]    | plan/apply/check of the systemd units |

pub mod cli;
pub mod clock;
pub mod database;
pub mod error;
pub mod executor;
pub mod faults;
pub mod files;
pub mod finalize;
pub mod glob;
pub mod poller;
pub mod queue;
pub mod results;
pub mod spec;
pub mod units;
pub mod worker;

use std::io::Read;
use std::time::{Duration, Instant};

use bs_core::cmd::SystemRunner;
use bs_core::config::Config;
use bs_core::http::Http;
use bs_core::plan::Mode;
use bs_core::secrets::Secrets;
use bs_core::{Output, Root};
use serde_json::{json, Map, Value};

pub use error::JobsError;

use crate::cli::{Cli, Command, ExecutorKind, StateArg};
use crate::clock::{Clock, SystemClock};
use crate::error::Result;
use crate::executor::{DockerExecutor, Executor, NoopExecutor};
use crate::queue::{Queue, State};

/// The engine's socket: `[docker] socket` joined under the root, as
/// bs-docker reaches it (a sandbox root links it to the real one).
pub fn docker_socket(root: &Root, config: &Config) -> String {
    root.join(&config.docker.socket)
        .to_string_lossy()
        .into_owned()
}

pub fn run(cli: Cli, out: &mut Output) -> Result<Map<String, Value>> {
    let root = cli.global.root()?;
    let config = cli.global.config(&root)?;
    let clock = SystemClock;
    match cli.command {
        Command::Submit { file } => submit(&root, &config, out, &file, &clock),
        Command::Poll { once, every } => poll(&root, &config, out, once, every, &clock),
        Command::Work {
            once,
            forever,
            max_workers,
            executor,
        } => {
            if !once && !forever {
                return Err(JobsError::Usage("work needs --once or --forever".into()));
            }
            let queue = Queue::open(&root, &config.jobs.state_dir)?;
            let docker;
            let noop = NoopExecutor;
            let exec: &dyn Executor = match executor {
                ExecutorKind::Docker => {
                    docker = DockerExecutor::new(docker_socket(&root, &config));
                    &docker
                }
                ExecutorKind::Noop => &noop,
            };
            let me = worker::register(&queue, &clock)?;
            let ctx = worker::Ctx {
                root: &root,
                config: &config,
                queue: &queue,
                executor: exec,
                clock: &clock,
                worker: &me.id,
            };
            let n = worker::work(
                &ctx,
                out,
                once,
                max_workers.unwrap_or(config.jobs.max_workers),
            )?;
            let mut extra = Map::new();
            extra.insert("jobs_run".into(), json!(n));
            Ok(extra)
        }
        Command::Cancel { id } => {
            let queue = Queue::open(&root, &config.jobs.state_dir)?;
            let exec = DockerExecutor::new(docker_socket(&root, &config));
            let fate = poller::cancel(&queue, &exec, &id, &clock)?;
            out.item(
                "job",
                true,
                &json!({"action": "cancel", "target": id, "result": fate}),
            );
            Ok(Map::new())
        }
        Command::Ls { state } => {
            let queue = Queue::open(&root, &config.jobs.state_dir)?;
            ls(&queue, out, state, &clock)?;
            Ok(Map::new())
        }
        Command::Show { id } => {
            let queue = Queue::open(&root, &config.jobs.state_dir)?;
            let (state, name) = queue
                .find(&id)?
                .ok_or_else(|| JobsError::NoSuchJob { id: id.clone() })?;
            match queue.read(state, &name)? {
                Some(Ok(entry)) => {
                    out.emit("job", &json!({"state": state.as_str(), "entry": entry}))
                }
                Some(Err(e)) => out.emit("job", &json!({"state": state.as_str(), "malformed": e})),
                None => return Err(JobsError::NoSuchJob { id }),
            }
            Ok(Map::new())
        }
        Command::Retry { id } => {
            let queue = Queue::open(&root, &config.jobs.state_dir)?;
            let (state, name) = queue
                .find(&id)?
                .ok_or_else(|| JobsError::NoSuchJob { id: id.clone() })?;
            if matches!(state, State::Queued | State::Running) {
                return Err(JobsError::State {
                    id,
                    message: format!("is {}; only finished jobs can be retried", state.as_str()),
                });
            }
            let entry = queue.retry(state, &name)?;
            out.item(
                "job",
                true,
                &json!({"action": "retry", "target": id, "seq": entry.seq}),
            );
            Ok(Map::new())
        }
        Command::Plan => {
            units::converge(
                &root,
                &config,
                out,
                Mode::Plan,
                None,
                &SystemRunner::new(&root),
            )?;
            Ok(Map::new())
        }
        Command::Check => {
            units::converge(
                &root,
                &config,
                out,
                Mode::Check,
                None,
                &SystemRunner::new(&root),
            )?;
            Ok(Map::new())
        }
        Command::Apply(args) => {
            let _lock = cli.global.lock(&root)?;
            let given = match args.plan_input() {
                Some(p) => Some(p.read::<units::UnitChange>("bs-jobs")?),
                None => None,
            };
            units::converge(
                &root,
                &config,
                out,
                Mode::Apply,
                given,
                &SystemRunner::new(&root),
            )?;
            Ok(Map::new())
        }
        Command::BenchLaunch { image, count } => bench_launch(&root, &config, out, &image, count),
    }
}

fn submit(
    root: &Root,
    config: &Config,
    out: &mut Output,
    file: &str,
    clock: &dyn Clock,
) -> Result<Map<String, Value>> {
    let mut text = String::new();
    if file == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| bs_core::CoreError::io("(stdin)", e))?;
    } else {
        text = std::fs::read_to_string(file).map_err(|e| bs_core::CoreError::io(file, e))?;
    }
    // One JSON document, or JSON Lines. Everything is validated before
    // anything is queued: a bad line queues nothing (exit 2).
    let docs: Vec<Value> = match serde_json::from_str::<Value>(&text) {
        Ok(v) => vec![v],
        Err(_) => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| {
                    JobsError::invalid(format!("(line {})", i + 1), format!("not JSON: {e}"))
                })
            })
            .collect::<Result<_>>()?,
    };
    if docs.is_empty() {
        return Err(JobsError::invalid("(job)", "no job given"));
    }
    let many = docs.len() > 1;
    let jobs = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            spec::parse(d, &config.jobs).map_err(|e| match e {
                JobsError::Invalid { field, message } if many => JobsError::Invalid {
                    field: format!("(line {}).{field}", i + 1),
                    message,
                },
                e => e,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let queue = Queue::open(root, &config.jobs.state_dir)?;
    let mut queued = 0u64;
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    for (id, result) in ids.into_iter().zip(queue.submit_many(jobs, clock)) {
        match result {
            Ok(entry) => {
                queued += 1;
                worker::report(&queue, &entry, false, json!({}), clock.now_ns())?;
                out.item(
                    "job",
                    true,
                    &json!({"action": "submit", "target": id, "seq": entry.seq, "state": "queued"}),
                );
            }
            Err(e @ JobsError::Duplicate { .. }) => {
                use bs_core::cli::Report;
                out.error(e.kind(), &e.target(), &e.to_string());
            }
            Err(e) => return Err(e),
        }
    }
    let mut extra = Map::new();
    extra.insert("queued".into(), json!(queued));
    Ok(extra)
}

fn poll(
    root: &Root,
    config: &Config,
    out: &mut Output,
    once: bool,
    every: Option<u64>,
    clock: &dyn Clock,
) -> Result<Map<String, Value>> {
    if !once && every.is_none() {
        return Err(JobsError::Usage("poll needs --once or --every SECS".into()));
    }
    if config.jobs.controller.is_empty() {
        return Err(JobsError::Core(bs_core::CoreError::Config {
            file: config.sources.last().cloned().unwrap_or_default(),
            key: "jobs.controller".into(),
            message: "not set: the poller has no job server to ask".into(),
        }));
    }
    let secrets = Secrets::load(root)?;
    let token = secrets.require("JOB_SERVER_TOKEN")?.expose().to_string();
    let queue = Queue::open(root, &config.jobs.state_dir)?;
    let http = Http::new(&config.http).map_err(|e| JobsError::Controller {
        url: config.jobs.controller.clone(),
        message: e.to_string(),
    })?;
    let exec = DockerExecutor::new(docker_socket(root, config));
    let runner = SystemRunner::new(root);
    let poller = poller::Poller {
        config,
        queue: &queue,
        http,
        token,
        clock,
        executor: &exec,
        runner: &runner,
    };
    match every {
        None => poller.poll_once(out),
        Some(secs) => loop {
            let started = Instant::now();
            if let Err(e) = poller.poll_once(out) {
                // A bad round is reported; the next one tries again.
                use bs_core::cli::Report;
                out.error(e.kind(), &e.target(), &e.to_string());
            }
            let wait = Duration::from_secs(secs.max(1)).saturating_sub(started.elapsed());
            std::thread::sleep(wait);
        },
    }
}

fn ls(queue: &Queue, out: &mut Output, only: Option<StateArg>, clock: &dyn Clock) -> Result<()> {
    let now = clock.now_ns();
    for state in State::ALL {
        let wanted = match only {
            None => true,
            Some(StateArg::Queued) => state == State::Queued,
            Some(StateArg::Running) => state == State::Running,
            Some(StateArg::Done) => state == State::Done,
            Some(StateArg::Failed) => state == State::Failed,
        };
        if !wanted {
            continue;
        }
        for name in queue.names(state)? {
            match queue.read(state, &name)? {
                Some(Ok(e)) => {
                    let since = e.started_at_ns.unwrap_or(e.submitted_at_ns);
                    out.emit(
                        "job",
                        &json!({
                            "id": e.job.id, "state": state.as_str(), "stage": e.stage, "seq": e.seq,
                            "workspace": e.job.workspace, "job_action": e.job.action, "attempts": e.attempts,
                            "age_secs": ((now - since).max(0) / 1_000_000_000) as u64,
                            "code": e.outcome.as_ref().and_then(|o| o.code.clone()),
                        }),
                    );
                }
                Some(Err(err)) => {
                    // failed/ holds malformed entries wrapped with their error.
                    let wrapped: Option<queue::Malformed> = queue
                        .dir(state)
                        .read_file(&name, 1 << 20)
                        .ok()
                        .flatten()
                        .and_then(|(b, _)| serde_json::from_slice(&b).ok());
                    let error = wrapped.map(|m| m.error).unwrap_or(err);
                    out.emit("job", &json!({"entry": name.to_string_lossy(), "state": state.as_str(), "malformed": true, "error": error}));
                }
                None => {}
            }
        }
    }
    Ok(())
}

fn bench_launch(
    root: &Root,
    config: &Config,
    out: &mut Output,
    image: &str,
    count: u32,
) -> Result<Map<String, Value>> {
    let engine = bs_engine::Engine::connect(&docker_socket(root, config))?;
    let job = spec::JobSpec {
        id: format!("bench-{}", std::process::id()),
        workspace: "bench".into(),
        action: "launch".into(),
        image: image.into(),
        command: vec!["true".into()],
        outputs: Default::default(),
        cpu: config.jobs.default_cpu,
        memory: bs_core::config::parse_memory(&config.jobs.default_memory).unwrap_or(1 << 30),
        dependencies: vec![],
        env: Default::default(),
        commit: String::new(),
        task_id: None,
        origin: Default::default(),
    };
    let tmp = std::env::temp_dir();
    let never = || false;
    let req = executor::RunRequest {
        job: &job,
        volume: &tmp,
        log: &tmp,
        uid: config.service_account.uid,
        gid: config.service_account.gid,
        pids: config.jobs.default_pids,
        time_limit: Duration::from_secs(60),
        cancelled: &never,
        attach: false,
        database: None,
    };
    let mut spec = executor::container_spec(&req);
    spec.mounts.clear();
    let started = Instant::now();
    for _ in 0..count {
        engine.create_container(&spec)?;
        engine.start(&spec.name)?;
        let code = engine.wait(&spec.name)?;
        engine.remove(&spec.name)?;
        if code != 0 {
            return Err(JobsError::State {
                id: spec.name.clone(),
                message: format!("`true` exited {code}"),
            });
        }
    }
    let secs = started.elapsed().as_secs_f64();
    out.emit("bench", &json!({"launches": count, "seconds": secs}));
    Ok(Map::new())
}
