//! bs-engine: the connection to the Docker engine, shared by bs-docker and bs-jobs.
//!
//! [`Engine`] owns a bollard client and a current-thread tokio runtime, so
//! callers stay synchronous: every helper blocks on its request, and
//! [`Engine::block_on`] runs any other bollard future. The API version is
//! always negotiated (a client newer than the engine otherwise gets 400s).
//!
//! Errors are one type, [`EngineError`]; an engine that cannot be reached
//! becomes the error record `engine_unreachable` naming the socket and the
//! cause, so an operator sees "docker is down" rather than a hyper error.
//!
//! The labels that tie containers to bs live here too ([`labels`]): bs-jobs
//! sets them on job containers, bs-docker reads them to refuse an engine
//! restart while jobs run and to list them in `ps`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStatsResponse, ContainerSummary,
    HostConfig, Mount, MountTypeEnum, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StatsOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use bs_core::Exit;

pub mod registry;

/// Where the engine listens unless the config says otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Seconds a request may take to be answered (headers, not a whole stream).
pub const DEFAULT_TIMEOUT_SECS: u64 = 120;

/// Container labels shared by the bs tools. A job container carries
/// [`labels::JOB_ID`] (and workspace/action); a service container carries
/// [`labels::SERVICE`] and [`labels::SPEC_HASH`].
pub mod labels {
    /// The job's id; its presence marks a job container (bs-jobs sets it).
    pub const JOB_ID: &str = "bs.job.id";
    /// The workspace the job belongs to.
    pub const JOB_WORKSPACE: &str = "bs.job.workspace";
    /// The action the job runs.
    pub const JOB_ACTION: &str = "bs.job.action";
    /// Which bs tool created the container or network (`bs-docker`, `bs-jobs`).
    pub const MANAGED_BY: &str = "bs.managed-by";
    /// The declared service a container implements (bs-docker).
    pub const SERVICE: &str = "bs.service";
    /// The hash of the service's spec: a different hash means recreate.
    pub const SPEC_HASH: &str = "bs.spec-hash";
    /// Set on everything a test creates, so a sweep can remove leftovers.
    pub const TEST: &str = "bs.test";
}

/// What can go wrong talking to the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach the Docker engine at {socket}: {cause}")]
    Unreachable { socket: String, cause: String },
    #[error("{target}: not found")]
    NotFound { target: String },
    #[error("{target}: {op} failed: {message}")]
    Api {
        op: &'static str,
        target: String,
        status: Option<u16>,
        message: String,
    },
    #[error("{target}: {op} did not finish within {secs} s")]
    Timeout {
        op: &'static str,
        target: String,
        secs: u64,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl EngineError {
    /// The `kind` of the error record.
    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::Unreachable { .. } => "engine_unreachable",
            EngineError::NotFound { .. } => "not_found",
            EngineError::Api { .. } => "engine_api",
            EngineError::Timeout { .. } => "engine_timeout",
            EngineError::Io { .. } => "io",
            EngineError::Runtime(_) => "engine_runtime",
        }
    }

    /// The `target` of the error record: the socket, or the object.
    pub fn target(&self) -> String {
        match self {
            EngineError::Unreachable { socket, .. } => socket.clone(),
            EngineError::NotFound { target }
            | EngineError::Api { target, .. }
            | EngineError::Timeout { target, .. } => target.clone(),
            EngineError::Io { path, .. } => path.display().to_string(),
            EngineError::Runtime(_) => String::new(),
        }
    }

    pub fn exit(&self) -> Exit {
        Exit::Failed
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, EngineError::NotFound { .. })
    }

    /// HTTP status of an API error (409 conflict, 304 not modified, ...).
    pub fn status(&self) -> Option<u16> {
        match self {
            EngineError::Api { status, .. } => *status,
            EngineError::NotFound { .. } => Some(404),
            _ => None,
        }
    }
}

impl bs_core::cli::Report for EngineError {
    fn exit(&self) -> Exit {
        EngineError::exit(self)
    }
    fn kind(&self) -> &'static str {
        EngineError::kind(self)
    }
    fn target(&self) -> String {
        EngineError::target(self)
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// What the engine says about itself (the `engine` record).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EngineInfo {
    pub socket: String,
    pub version: String,
    /// The API version the engine speaks.
    pub api_version: String,
    /// The API version we negotiated down to.
    pub client_api_version: String,
    pub storage_driver: String,
    pub cgroup_version: String,
    pub containers_running: i64,
}

/// A bind mount of a host path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BindMount {
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

/// A published port, bound to one host address (never all interfaces by
/// accident: the host address is required).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

impl PortSpec {
    /// The engine's key for the container side: `8000/tcp`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.container_port, self.protocol)
    }
}

/// Everything needed to create a container, tool-neutral: bs-docker builds
/// it from a declared service, bs-jobs from a job definition.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// Empty: the image's default command.
    pub command: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    /// `uid:gid` or a name known inside the image.
    pub user: Option<String>,
    /// `KEY=VALUE` entries, in order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub mounts: Vec<BindMount>,
    pub ports: Vec<PortSpec>,
    /// Network mode: `none`, `bridge`, `host` or a network's name.
    pub network: Option<String>,
    /// `no`, `always`, `unless-stopped` or `on-failure`.
    pub restart: Option<String>,
    pub init: bool,
    pub cap_drop: Vec<String>,
    pub no_new_privileges: bool,
    pub read_only: bool,
    pub memory_bytes: Option<i64>,
    /// CPUs in billionths (`--cpus 1.5` = 1_500_000_000).
    pub nano_cpus: Option<i64>,
    pub pids_limit: Option<i64>,
    /// tmpfs mounts: path -> options (`rw,size=64m`).
    pub tmpfs: BTreeMap<String, String>,
}

impl ContainerSpec {
    /// The engine's create request for this spec.
    pub fn to_create_body(&self) -> ContainerCreateBody {
        let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        let mut exposed: HashMap<String, HashMap<(), ()>> = HashMap::new();
        for p in &self.ports {
            exposed.insert(p.key(), HashMap::new());
            port_bindings
                .entry(p.key())
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: Some(p.host_ip.clone()),
                    host_port: Some(p.host_port.to_string()),
                });
        }
        let mounts: Vec<Mount> = self
            .mounts
            .iter()
            .map(|m| Mount {
                target: Some(m.target.clone()),
                source: Some(m.source.clone()),
                typ: Some(MountTypeEnum::BIND),
                read_only: Some(m.read_only),
                ..Default::default()
            })
            .collect();
        let mut security_opt = Vec::new();
        if self.no_new_privileges {
            security_opt.push("no-new-privileges".to_string());
        }
        let restart_policy = self.restart.as_deref().map(|r| RestartPolicy {
            name: Some(restart_name(r)),
            maximum_retry_count: None,
        });
        let host_config = HostConfig {
            memory: self.memory_bytes,
            // No swap beyond the memory limit: a job over its limit is
            // killed (and reported as OOM), not slowed to a crawl.
            memory_swap: self.memory_bytes,
            nano_cpus: self.nano_cpus,
            pids_limit: self.pids_limit,
            init: Some(self.init),
            mounts: (!mounts.is_empty()).then_some(mounts),
            network_mode: self.network.clone(),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            restart_policy,
            cap_drop: (!self.cap_drop.is_empty()).then(|| self.cap_drop.clone()),
            security_opt: (!security_opt.is_empty()).then_some(security_opt),
            readonly_rootfs: Some(self.read_only),
            tmpfs: (!self.tmpfs.is_empty()).then(|| {
                self.tmpfs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: (!self.command.is_empty()).then(|| self.command.clone()),
            entrypoint: self.entrypoint.clone(),
            user: self.user.clone(),
            env: (!self.env.is_empty()).then(|| self.env.clone()),
            working_dir: self.working_dir.clone(),
            labels: Some(
                self.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// Compare a created container with this spec: the settings a silent
    /// engine could drop (user, limits, mounts, network, hardening). Each
    /// entry names what differs; empty means everything was applied.
    pub fn mismatches(&self, c: &ContainerInspectResponse) -> Vec<String> {
        let mut out = Vec::new();
        let config = c.config.clone().unwrap_or_default();
        let host = c.host_config.clone().unwrap_or_default();
        let want_user = self.user.clone().unwrap_or_default();
        let got_user = config.user.clone().unwrap_or_default();
        if want_user != got_user {
            out.push(format!("user: wanted {want_user:?}, got {got_user:?}"));
        }
        let limits = [
            ("memory", self.memory_bytes, host.memory),
            ("nano_cpus", self.nano_cpus, host.nano_cpus),
            ("pids_limit", self.pids_limit, host.pids_limit),
        ];
        for (what, want, got) in limits {
            let got = got.filter(|v| *v != 0);
            if want != got {
                out.push(format!("{what}: wanted {want:?}, got {got:?}"));
            }
        }
        let want_net = self.network.clone().unwrap_or_else(|| "default".into());
        let got_net = host
            .network_mode
            .clone()
            .unwrap_or_else(|| "default".into());
        if want_net != got_net && !(want_net == "default" && got_net == "bridge") {
            out.push(format!("network: wanted {want_net:?}, got {got_net:?}"));
        }
        let got_mounts: Vec<(String, String, bool)> = c
            .mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| matches!(m.typ, Some(bollard::models::MountPointTypeEnum::BIND)))
            .map(|m| {
                (
                    m.source.unwrap_or_default(),
                    m.destination.unwrap_or_default(),
                    !m.rw.unwrap_or(true),
                )
            })
            .collect();
        let want_mounts = self
            .mounts
            .iter()
            .map(|m| (m.source.clone(), m.target.clone(), m.read_only))
            .collect();
        differ_as_sets("mounts", want_mounts, got_mounts, &mut out);
        // A port published on another address than declared (0.0.0.0 for
        // 127.0.0.1) would put a service on the partner's network.
        let want_ports = self
            .ports
            .iter()
            .map(|p| (p.key(), p.host_ip.clone(), p.host_port.to_string()))
            .collect();
        let got_ports: Vec<(String, String, String)> = host
            .port_bindings
            .clone()
            .unwrap_or_default()
            .into_iter()
            .flat_map(|(key, bindings)| {
                bindings.unwrap_or_default().into_iter().map(move |b| {
                    (
                        key.clone(),
                        b.host_ip.unwrap_or_default(),
                        b.host_port.unwrap_or_default(),
                    )
                })
            })
            .collect();
        differ_as_sets("ports", want_ports, got_ports, &mut out);
        if self.read_only != host.readonly_rootfs.unwrap_or(false) {
            out.push(format!("read_only: wanted {}", self.read_only));
        }
        if self.init != host.init.unwrap_or(false) {
            out.push(format!("init: wanted {}", self.init));
        }
        let got_caps: Vec<String> = host.cap_drop.clone().unwrap_or_default();
        for cap in &self.cap_drop {
            if !got_caps.iter().any(|c| c.eq_ignore_ascii_case(cap)) {
                out.push(format!("cap_drop: {cap} not dropped"));
            }
        }
        let secopt = host.security_opt.clone().unwrap_or_default();
        if self.no_new_privileges && !secopt.iter().any(|s| s.starts_with("no-new-privileges")) {
            out.push("no_new_privileges: not set".into());
        }
        out
    }
}

fn restart_name(r: &str) -> RestartPolicyNameEnum {
    match r {
        "always" => RestartPolicyNameEnum::ALWAYS,
        "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
        "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
        "no" | "" => RestartPolicyNameEnum::NO,
        _ => RestartPolicyNameEnum::EMPTY,
    }
}

/// A one-shot resource sample of a running container.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Usage {
    /// Percent of one CPU (200.0 = two CPUs busy), over the sample window.
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
}

impl Usage {
    pub fn from_stats(s: &ContainerStatsResponse) -> Usage {
        let total = |c: &Option<bollard::models::ContainerCpuStats>| {
            let c = c.as_ref();
            (
                c.and_then(|c| c.cpu_usage.as_ref())
                    .and_then(|u| u.total_usage)
                    .unwrap_or(0),
                c.and_then(|c| c.system_cpu_usage).unwrap_or(0),
                c.and_then(|c| c.online_cpus).unwrap_or(0),
            )
        };
        let (cpu, sys, online) = total(&s.cpu_stats);
        let (pcpu, psys, _) = total(&s.precpu_stats);
        let cpu_delta = cpu.saturating_sub(pcpu) as f64;
        let sys_delta = sys.saturating_sub(psys) as f64;
        let online = if online == 0 { 1 } else { online } as f64;
        let cpu_percent = if sys_delta > 0.0 {
            (cpu_delta / sys_delta) * online * 100.0
        } else {
            0.0
        };
        let mem = s.memory_stats.clone().unwrap_or_default();
        // As `docker stats` does: page cache the kernel can drop is not use.
        let cache = mem
            .stats
            .as_ref()
            .and_then(|m| {
                m.get("total_inactive_file")
                    .or_else(|| m.get("inactive_file"))
            })
            .copied()
            .unwrap_or(0);
        Usage {
            cpu_percent: (cpu_percent * 10.0).round() / 10.0,
            memory_bytes: mem.usage.unwrap_or(0).saturating_sub(cache),
            memory_limit_bytes: mem.limit.unwrap_or(0),
        }
    }
}

/// A connected engine. It is `Send + Sync`, but its runtime is a single
/// thread: calls from several threads take turns. A tool that wants real
/// parallelism opens one `Engine` per thread, or joins futures inside one
/// [`Engine::block_on`] (as `ps` does for stats).
pub struct Engine {
    docker: Docker,
    rt: tokio::runtime::Runtime,
    socket: String,
    timeout_secs: u64,
}

impl Engine {
    /// Connect to the socket and negotiate the API version.
    pub fn connect(socket: &str) -> Result<Engine> {
        Engine::connect_with_timeout(socket, DEFAULT_TIMEOUT_SECS)
    }

    pub fn connect_with_timeout(socket: &str, timeout_secs: u64) -> Result<Engine> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(EngineError::Runtime)?;
        let unreachable = |cause: String| EngineError::Unreachable {
            socket: socket.to_string(),
            cause,
        };
        let path = socket.strip_prefix("unix://").unwrap_or(socket);
        match std::fs::metadata(path) {
            Ok(_) => {}
            Err(e) => return Err(unreachable(e.to_string())),
        }
        let docker = Docker::connect_with_unix(path, timeout_secs, bollard::API_DEFAULT_VERSION)
            .map_err(|e| unreachable(e.to_string()))?;
        let docker = rt
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(timeout_secs.min(30)),
                    docker.negotiate_version(),
                )
                .await
            })
            .map_err(|_| unreachable("no answer to /version".into()))?
            .map_err(|e| unreachable(cause_of(&e)))?;
        Ok(Engine {
            docker,
            rt,
            socket: path.to_string(),
            timeout_secs,
        })
    }

    /// Run any bollard future to completion on this engine's runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The bollard client, for calls the helpers here do not cover.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// Turn a bollard error into ours: connection failures become
    /// `Unreachable`, 404 `NotFound`, the rest `Api` with the status.
    pub fn error(&self, op: &'static str, target: &str, e: BollardError) -> EngineError {
        match e {
            BollardError::DockerResponseServerError {
                status_code: 404, ..
            } => EngineError::NotFound {
                target: target.to_string(),
            },
            BollardError::DockerResponseServerError {
                status_code,
                message,
            } => EngineError::Api {
                op,
                target: target.to_string(),
                status: Some(status_code),
                message,
            },
            BollardError::RequestTimeoutError => EngineError::Timeout {
                op,
                target: target.to_string(),
                secs: self.timeout_secs,
            },
            BollardError::HyperLegacyError { .. }
            | BollardError::IOError { .. }
            | BollardError::SocketNotFoundError(_) => EngineError::Unreachable {
                socket: self.socket.clone(),
                cause: cause_of(&e),
            },
            other => EngineError::Api {
                op,
                target: target.to_string(),
                status: None,
                message: other.to_string(),
            },
        }
    }

    pub fn ping(&self) -> Result<()> {
        self.block_on(self.docker.ping())
            .map(|_| ())
            .map_err(|e| self.error("ping", &self.socket, e))
    }

    /// Version, API version and storage driver.
    pub fn info(&self) -> Result<EngineInfo> {
        let version = self
            .block_on(self.docker.version())
            .map_err(|e| self.error("version", &self.socket, e))?;
        let info = self
            .block_on(self.docker.info())
            .map_err(|e| self.error("info", &self.socket, e))?;
        Ok(EngineInfo {
            socket: self.socket.clone(),
            version: version.version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
            client_api_version: self.docker.client_version().to_string(),
            storage_driver: info.driver.unwrap_or_default(),
            cgroup_version: info
                .cgroup_version
                .map(|v| v.to_string())
                .unwrap_or_default(),
            containers_running: info.containers_running.unwrap_or(0),
        })
    }

    // ---- containers -------------------------------------------------------

    /// Create a container from a spec; returns its id.
    pub fn create_container(&self, spec: &ContainerSpec) -> Result<String> {
        self.create_container_raw(&spec.name, spec.to_create_body())
    }

    /// Create from a raw bollard body, for settings the spec lacks.
    pub fn create_container_raw(&self, name: &str, body: ContainerCreateBody) -> Result<String> {
        let opts = CreateContainerOptionsBuilder::new().name(name).build();
        let created = self
            .block_on(self.docker.create_container(Some(opts), body))
            .map_err(|e| self.error("create", name, e))?;
        Ok(created.id)
    }

    pub fn start(&self, id: &str) -> Result<()> {
        match self.block_on(
            self.docker
                .start_container(id, None::<bollard::query_parameters::StartContainerOptions>),
        ) {
            Ok(()) => Ok(()),
            // 304: already running.
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.error("start", id, e)),
        }
    }

    /// Inspect a container by id or name; `None` when there is none.
    pub fn inspect(&self, id: &str) -> Result<Option<ContainerInspectResponse>> {
        match self.block_on(self.docker.inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )) {
            Ok(c) => Ok(Some(c)),
            Err(e) => match self.error("inspect", id, e) {
                EngineError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Wait for a container to stop and return its exit code. bollard
    /// reports a non-zero exit as `Err(DockerContainerWaitError{code})`,
    /// not as `Ok`: that is an exit code here, not a failure.
    pub fn wait(&self, id: &str) -> Result<i64> {
        let opts = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let mut stream = self.docker.wait_container(id, Some(opts));
        let first = self.block_on(stream.next());
        match first {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(self.error("wait", id, e)),
            None => Err(EngineError::Api {
                op: "wait",
                target: id.to_string(),
                status: None,
                message: "the engine closed the wait stream without an exit code".into(),
            }),
        }
    }

    /// [`Engine::wait`] with a limit: `Ok(None)` when still running after it.
    pub fn wait_timeout(&self, id: &str, limit: Duration) -> Result<Option<i64>> {
        let opts = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let mut stream = self.docker.wait_container(id, Some(opts));
        let first = self.block_on(async { tokio::time::timeout(limit, stream.next()).await });
        match first {
            Err(_) => Ok(None),
            Ok(Some(Ok(r))) => Ok(Some(r.status_code)),
            Ok(Some(Err(BollardError::DockerContainerWaitError { code, .. }))) => Ok(Some(code)),
            Ok(Some(Err(e))) => Err(self.error("wait", id, e)),
            Ok(None) => Err(EngineError::Api {
                op: "wait",
                target: id.to_string(),
                status: None,
                message: "the engine closed the wait stream without an exit code".into(),
            }),
        }
    }

    /// Stop (SIGTERM, then SIGKILL after `grace_secs`). Already stopped is fine.
    pub fn stop(&self, id: &str, grace_secs: i32) -> Result<()> {
        let opts = StopContainerOptionsBuilder::new().t(grace_secs).build();
        match self.block_on(self.docker.stop_container(id, Some(opts))) {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.error("stop", id, e)),
        }
    }

    /// Kill with a signal (`KILL`, `TERM`).
    pub fn kill(&self, id: &str, signal: &str) -> Result<()> {
        let opts = bollard::query_parameters::KillContainerOptionsBuilder::new()
            .signal(signal)
            .build();
        self.block_on(self.docker.kill_container(id, Some(opts)))
            .map_err(|e| self.error("kill", id, e))
    }

    /// Remove a container (forced: a running one is killed first); returns
    /// false when it was already gone. Anonymous volumes go with it.
    pub fn remove(&self, id: &str) -> Result<bool> {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.block_on(self.docker.remove_container(id, Some(opts))) {
            Ok(()) => Ok(true),
            Err(e) => match self.error("remove", id, e) {
                EngineError::NotFound { .. } => Ok(false),
                // 409 "removal already in progress": it is going.
                EngineError::Api {
                    status: Some(409),
                    message,
                    ..
                } if message.contains("already in progress") => Ok(false),
                other => Err(other),
            },
        }
    }

    /// Containers carrying a label (`key` or `key=value`), running ones
    /// only unless `all`.
    pub fn list_by_label(&self, label: &str, all: bool) -> Result<Vec<ContainerSummary>> {
        let mut filters: HashMap<&str, Vec<&str>> = HashMap::new();
        filters.insert("label", vec![label]);
        let opts = ListContainersOptionsBuilder::new()
            .all(all)
            .filters(&filters)
            .build();
        self.block_on(self.docker.list_containers(Some(opts)))
            .map_err(|e| self.error("list containers", label, e))
    }

    /// Running job containers (those with [`labels::JOB_ID`]).
    pub fn running_jobs(&self) -> Result<Vec<ContainerSummary>> {
        self.list_by_label(labels::JOB_ID, false)
    }

    /// Write a container's stdout and stderr to `file` (created or
    /// appended, 0640). With `follow`, streams until the container stops.
    /// Returns the bytes written.
    pub fn logs_to_file(&self, id: &str, file: &Path, follow: bool) -> Result<u64> {
        use std::os::unix::fs::OpenOptionsExt;
        let io_err = |source| EngineError::Io {
            path: file.to_path_buf(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .custom_flags(libc_o_nofollow())
            .open(file)
            .map_err(io_err)?;
        let opts = LogsOptionsBuilder::new()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .timestamps(false)
            .build();
        let mut stream = self.docker.logs(id, Some(opts));
        let mut written = 0u64;
        loop {
            let next = self.block_on(stream.next());
            match next {
                None => break,
                Some(Ok(chunk)) => {
                    let bytes = chunk.into_bytes();
                    f.write_all(&bytes).map_err(io_err)?;
                    written += bytes.len() as u64;
                }
                Some(Err(e)) => return Err(self.error("logs", id, e)),
            }
        }
        f.flush().map_err(io_err)?;
        Ok(written)
    }

    /// One resource sample (no streaming) of a running container.
    pub fn stats_once(&self, id: &str) -> Result<Usage> {
        let opts = StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(false)
            .build();
        let mut stream = self.docker.stats(id, Some(opts));
        match self.block_on(stream.next()) {
            Some(Ok(s)) => Ok(Usage::from_stats(&s)),
            Some(Err(e)) => Err(self.error("stats", id, e)),
            None => Ok(Usage::default()),
        }
    }

    // ---- images -----------------------------------------------------------

    /// Import a root-file-system tarball as image `repo:tag` (what
    /// `docker import` does); returns the image id.
    pub fn import_rootfs(&self, tarball: Vec<u8>, repo: &str, tag: &str) -> Result<String> {
        let target = format!("{repo}:{tag}");
        let opts = CreateImageOptionsBuilder::new()
            .from_src("-")
            .repo(repo)
            .tag(tag)
            .build();
        let body = bollard::body_full(bytes::Bytes::from(tarball));
        let mut stream = self.docker.create_image(Some(opts), Some(body), None);
        loop {
            match self.block_on(stream.next()) {
                None => break,
                Some(Ok(info)) => {
                    if let Some(err) = info.error_detail.and_then(|d| d.message) {
                        return Err(EngineError::Api {
                            op: "import",
                            target,
                            status: None,
                            message: err,
                        });
                    }
                }
                Some(Err(e)) => return Err(self.error("import", &target, e)),
            }
        }
        self.image_id(&target)?
            .ok_or(EngineError::NotFound { target })
    }

    /// The id of an image (by name, tag or digest); `None` when absent.
    pub fn image_id(&self, image: &str) -> Result<Option<String>> {
        match self.block_on(self.docker.inspect_image(image)) {
            Ok(i) => Ok(i.id),
            Err(e) => match self.error("inspect image", image, e) {
                EngineError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }
}

/// The root cause of a bollard error, without bollard's wrapping: "No such
/// file or directory", "Connection refused", "Permission denied".
fn cause_of(e: &BollardError) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    if text.is_empty() {
        e.to_string()
    } else {
        text
    }
}

fn libc_o_nofollow() -> i32 {
    libc::O_NOFOLLOW
}

/// Compare what was declared with what the engine holds, in any order; a
/// difference is one mismatch line naming `what`.
fn differ_as_sets<T: Ord + std::fmt::Debug>(
    what: &str,
    mut want: Vec<T>,
    mut got: Vec<T>,
    out: &mut Vec<String>,
) {
    want.sort();
    got.sort();
    if want != got {
        out.push(format!("{what}: wanted {want:?}, got {got:?}"));
    }
}
