//! `ps`: running job containers (by label) with workspace, action, start
//! time and resource use, like the original's `lsjobs`. The stats of all
//! containers are sampled at once (each sample takes about a second).

use futures_util::StreamExt;
use serde::Serialize;

use bs_core::Output;

use bs_engine::{labels, Engine, EngineError, Usage};

#[derive(Debug, Serialize)]
pub struct JobRow {
    pub target: String,
    pub container: String,
    pub job_id: String,
    pub workspace: String,
    pub action: String,
    pub image: String,
    /// Seconds since the epoch when the container was created.
    pub created: i64,
    /// When the job's process started (RFC 3339, from the engine).
    pub started_at: String,
    pub status: String,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
}

pub fn ps(engine: &Engine, out: &mut Output) -> Result<usize, EngineError> {
    let jobs = engine.running_jobs()?;
    let ids: Vec<String> = jobs.iter().filter_map(|j| j.id.clone()).collect();
    let docker = engine.docker();
    let samples = engine.block_on(futures_util::future::join_all(ids.iter().map(
        |id| async move {
            let opts = bollard::query_parameters::StatsOptionsBuilder::new()
                .stream(false)
                .build();
            docker.stats(id, Some(opts)).next().await
        },
    )));
    for (j, sample) in jobs.iter().zip(samples) {
        let l = j.labels.clone().unwrap_or_default();
        let get = |k: &str| l.get(k).cloned().unwrap_or_default();
        let usage = match sample {
            Some(Ok(s)) => Usage::from_stats(&s),
            _ => Usage::default(),
        };
        let name = j
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default();
        let started_at =
            j.id.as_deref()
                .and_then(|id| engine.inspect(id).ok().flatten())
                .and_then(|c| c.state)
                .and_then(|s| s.started_at)
                .unwrap_or_default();
        out.emit(
            "job",
            &JobRow {
                target: name,
                container: j.id.clone().unwrap_or_default().chars().take(12).collect(),
                job_id: get(labels::JOB_ID),
                workspace: get(labels::JOB_WORKSPACE),
                action: get(labels::JOB_ACTION),
                image: j.image.clone().unwrap_or_default(),
                created: j.created.unwrap_or(0),
                started_at,
                status: j.status.clone().unwrap_or_default(),
                cpu_percent: usage.cpu_percent,
                memory_bytes: usage.memory_bytes,
                memory_limit_bytes: usage.memory_limit_bytes,
            },
        );
    }
    Ok(jobs.len())
}
