//! `[jobs]`: the settings of bs-jobs (the queue, the poller and the worker).

use std::path::PathBuf;

use serde::Deserialize;

use super::layers::Layers;
use crate::error::Result;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// The job server's base URL: the poller fetches
    /// `{controller}/{backend}/tasks/`. Empty: the poller refuses to run.
    pub controller: String,
    /// The backend name the controller knows this server by; empty means
    /// `[backend].name`.
    pub backend_name: String,
    /// Where the queue lives (joined under the root).
    pub state_dir: PathBuf,
    /// Seconds between polls of `poll --every` when not given, and the
    /// idle sleep of `work --forever` (capped at 1 s).
    pub poll_interval_secs: u64,
    /// Jobs one worker process runs at the same time.
    pub max_workers: usize,
    /// How many times a job whose worker died is tried before it is failed.
    pub max_attempts: u32,
    /// Wall-clock limit of one action; over it the container is killed.
    pub time_limit_secs: u64,
    /// Limits for jobs that do not ask for their own.
    pub default_cpu: f64,
    pub default_memory: String,
    pub default_pids: i64,
    /// The most a job may ask for.
    pub max_cpu: f64,
    pub max_memory: String,
    /// Rules for copying moderately_sensitive outputs to the medium tree.
    pub medium_max_bytes: u64,
    pub medium_max_csv_rows: u64,
    pub medium_allowed_types: Vec<String>,
    /// HTTP attempts per request of the poller and the first backoff.
    pub http_attempts: u32,
    pub http_backoff_ms: u64,
    /// The backend's database checks for the controller's `dbstatus` and
    /// `dbdatacheck` tasks: an argv whose last line of output is the status
    /// (`dbdatacheck` gets the expected month as its last argument). Empty:
    /// such a task is answered with a `NotConfigured` error.
    pub dbstatus_command: Vec<String>,
    pub dbdatacheck_command: Vec<String>,
    /// The engine network of jobs with database access (`[docker.networks]`
    /// declares it; job-runner's `jobrunner-db`); its firewall lets it
    /// reach only the databases.
    pub database_network: String,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            controller: String::new(),
            backend_name: String::new(),
            state_dir: PathBuf::from("/var/lib/bs/jobs"),
            poll_interval_secs: 15,
            max_workers: 2,
            max_attempts: 3,
            time_limit_secs: 24 * 3600,
            default_cpu: 2.0,
            default_memory: "4g".into(),
            default_pids: 1024,
            max_cpu: 16.0,
            max_memory: "128g".into(),
            medium_max_bytes: 16 * 1024 * 1024,
            medium_max_csv_rows: 5000,
            medium_allowed_types: [
                "csv", "png", "svg", "html", "pdf", "txt", "json", "md", "log", "jpg", "jpeg",
                "tsv",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            http_attempts: 4,
            http_backoff_ms: 500,
            dbstatus_command: Vec::new(),
            dbdatacheck_command: Vec::new(),
            database_network: "jobs-db".into(),
        }
    }
}

impl JobsConfig {
    pub(super) fn validate(&self, layers: &Layers) -> Result<()> {
        for (key, value) in [
            ("jobs.default_memory", &self.default_memory),
            ("jobs.max_memory", &self.max_memory),
        ] {
            if parse_memory(value).is_none() {
                return Err(layers.error(
                    key,
                    format!("{value:?}: expected bytes with an optional k/m/g suffix, like \"4g\""),
                ));
            }
        }
        if !(self.default_cpu > 0.0 && self.default_cpu <= self.max_cpu) {
            return Err(layers.error(
                "jobs.default_cpu",
                "must be above 0 and at most jobs.max_cpu",
            ));
        }
        if self.max_workers == 0 {
            return Err(layers.error("jobs.max_workers", "must be at least 1"));
        }
        if self.max_attempts == 0 {
            return Err(layers.error("jobs.max_attempts", "must be at least 1"));
        }
        if self.time_limit_secs == 0 {
            return Err(layers.error("jobs.time_limit_secs", "must be at least 1"));
        }
        if self.default_pids <= 0 {
            return Err(layers.error("jobs.default_pids", "must be at least 1"));
        }
        if !self.controller.is_empty() && !super::is_http_url(&self.controller) {
            return Err(layers.error("jobs.controller", "must be an http(s) URL"));
        }
        for (key, argv) in [
            ("jobs.dbstatus_command", &self.dbstatus_command),
            ("jobs.dbdatacheck_command", &self.dbdatacheck_command),
        ] {
            if argv.first().is_some_and(|p| !p.starts_with('/')) {
                return Err(layers.error(key, "the program must be an absolute path"));
            }
        }
        if self.database_network.is_empty()
            || matches!(
                self.database_network.as_str(),
                "none" | "host" | "bridge" | "default"
            )
        {
            return Err(layers.error(
                "jobs.database_network",
                "must name the database network (not none, host, bridge or default)",
            ));
        }
        for t in &self.medium_allowed_types {
            if t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(layers.error(
                    "jobs.medium_allowed_types",
                    format!("{t:?}: a file extension without the dot"),
                ));
            }
        }
        Ok(())
    }
}

/// Bytes from `"512m"`, `"4g"`, `"1048576"` (k, m, g, t are powers of 1024).
pub fn parse_memory(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (digits, mult) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1u64 << 10),
        'm' => (&t[..t.len() - 1], 1 << 20),
        'g' => (&t[..t.len() - 1], 1 << 30),
        't' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let bytes = n.checked_mul(mult)?;
    (bytes > 0).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::parse_memory;

    #[test]
    fn memory_sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_memory("512m"), Some(512 << 20));
        assert_eq!(parse_memory("4G"), Some(4 << 30));
        assert_eq!(parse_memory("1024"), Some(1024));
        assert_eq!(parse_memory("6mb"), Some(6 << 20));
        assert_eq!(parse_memory("0"), None);
        assert_eq!(parse_memory("lots"), None);
        assert_eq!(parse_memory("-1g"), None);
    }
}
