//! `[docker]`: the settings of bs-docker (see docs/bs-docker.md).
//!
//! Networks and services are tables keyed by name, so a later layer can
//! change one field of one service (`[docker.services.web] image = ...` in
//! local.toml) without repeating the rest. Lists inside them replace.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::Layers;
use crate::error::Result;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    /// The engine's API socket (a system path, joined under the root).
    pub socket: PathBuf,
    /// Fail (exit 1) when the engine cannot be reached. A backend whose
    /// hosts may have no engine (the test backend's system-test containers)
    /// sets false: the engine's items are then reported and left alone.
    pub require_engine: bool,
    pub daemon_json: PathBuf,
    /// The keys bs-docker manages in daemon.json; every other key in the
    /// file is preserved.
    pub daemon: toml::Table,
    /// May `apply` restart the engine when daemon.json changed? A restart
    /// kills every running job, so hosts opt in.
    pub allow_restart: bool,
    /// The group whose members may use the engine; the service account must
    /// be one (bs-users manages membership; bs-docker checks it).
    pub group: String,
    pub networks: BTreeMap<String, NetworkSpec>,
    pub services: BTreeMap<String, ServiceSpec>,
    /// Keep the DOCKER-USER rules of networks with `database_addresses`.
    /// Only a machine whose engine is not in its own network namespace (a
    /// test container using the host's engine through its socket) sets
    /// false: there the rules cannot reach the engine's bridges.
    pub manage_firewall: bool,
    /// Job images are pulled from here (the backend's proxy of the public
    /// registry): `<registry_proxy>/<name>@<digest>`.
    pub registry_proxy: String,
    /// What jobs call the images: pulled images are also tagged
    /// `<registry>/<name>:<tag>`, as job-runner tags them.
    pub registry: String,
    /// The longest a pull may take before it is abandoned (a stalled
    /// registry); job images are large.
    pub pull_timeout_secs: u64,
    /// The image label naming the action (`ehrql`); `images update` prunes
    /// the old untagged images carrying it.
    pub image_action_label: String,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            socket: PathBuf::from("/var/run/docker.sock"),
            require_engine: true,
            daemon_json: PathBuf::from("/etc/docker/daemon.json"),
            daemon: toml::Table::new(),
            allow_restart: false,
            group: "docker".into(),
            networks: BTreeMap::new(),
            services: BTreeMap::new(),
            manage_firewall: true,
            registry_proxy: "docker-proxy.opensafely.org/opensafely-core".into(),
            registry: "ghcr.io/opensafely-core".into(),
            pull_timeout_secs: 1800,
            image_action_label: "org.opensafely.action".into(),
        }
    }
}

/// A user-defined bridge network. The default is deliberately the strict
/// one: not internal only because egress is a backend's choice, but icc off.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSpec {
    /// No route out of the network (containers reach only each other).
    pub internal: bool,
    /// Inter-container traffic on this bridge (the daemon's `icc` covers
    /// only the default bridge).
    pub icc: bool,
    /// `10.20.0.0/24`; the engine picks one when absent.
    pub subnet: Option<String>,
    /// Set when the network is created (with bs-docker's own
    /// `bs.managed-by`). The engine cannot relabel a network, so a declared
    /// label missing or different is drift like `internal`.
    pub labels: BTreeMap<String, String>,
    /// The bridge's interface name on the host (the engine's
    /// `com.docker.network.bridge.name`), instead of `br-<id>`: firewall
    /// rules name it, so it must not change when the network is recreated.
    /// At most 15 characters (the kernel's limit).
    pub bridge_name: Option<String>,
    /// The only addresses (IPv4, `A.B.C.D` or `A.B.C.D/N`) this network may
    /// reach: bs-docker keeps the DOCKER-USER rules that reject everything
    /// from the bridge but these (needs `bridge_name`). An empty list fails
    /// closed: the network reaches nothing. Absent: no rules are managed.
    pub database_addresses: Option<Vec<String>>,
}

/// Whether `name` can be a Linux interface name: 1 to 15 characters,
/// letters, digits, `-`, `_`, `.`.
pub fn valid_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// An IPv4 address or network as iptables prints it: `A.B.C.D/N` (a bare
/// address is `/32`); the host bits of a network must be zero, since
/// iptables would clear them and the rule would never compare equal.
pub fn canonical_ipv4(text: &str) -> std::result::Result<String, String> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (
            a,
            l.parse::<u8>()
                .ok()
                .filter(|l| *l <= 32)
                .ok_or_else(|| format!("{text:?}: {l:?} is not a prefix length (0 to 32)"))?,
        ),
        None => (text, 32),
    };
    let ip: std::net::Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{text:?} is not an IPv4 address"))?;
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    if u32::from(ip) & !mask != 0 {
        return Err(format!("{text:?} has host bits set beyond /{len}"));
    }
    if len == 0 {
        return Err(format!("{text:?} would allow every address"));
    }
    Ok(format!("{ip}/{len}"))
}

/// A declared service container.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSpec {
    /// `repo:tag` or `repo@sha256:...`; never pulled: it must be present.
    pub image: String,
    /// Empty: the image's default command.
    pub command: Vec<String>,
    /// `uid:gid`, a name known in the image, or empty for the image's.
    pub user: String,
    /// Env files, layered in order (later wins): repo-relative paths, or
    /// system paths (joined under the root; those must be 0600 and may be
    /// absent, like the secrets file). Then `env` wins over all of them.
    pub env_files: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// `HOST_IP:HOST_PORT:CONTAINER_PORT[/tcp|/udp]`: the host address is
    /// required so nothing is published on every interface by accident.
    pub ports: Vec<String>,
    /// `SOURCE:TARGET[:ro|:rw]`, absolute paths; read-write by default.
    pub mounts: Vec<String>,
    /// `no`, `always`, `unless-stopped`, `on-failure`.
    pub restart: String,
    pub init: bool,
    pub cap_drop: Vec<String>,
    pub no_new_privileges: bool,
    pub read_only: bool,
    /// `512m`, `2g`, bytes as a number string.
    pub memory: Option<String>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub labels: BTreeMap<String, String>,
    /// A network's name (declared above, or `bridge`, `none`, `host`).
    pub network: String,
    /// A health check command (run with the image's shell as `CMD`).
    pub healthcheck: Vec<String>,
    pub healthcheck_interval_secs: u64,
    /// How long one check may take; unset: the interval.
    pub healthcheck_timeout_secs: Option<u64>,
    /// Failed checks in a row before the container is unhealthy.
    pub healthcheck_retries: u32,
    /// Grace time after start in which failures do not count (a service
    /// that migrates its database first).
    pub healthcheck_start_period_secs: u64,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            image: String::new(),
            command: Vec::new(),
            user: String::new(),
            env_files: Vec::new(),
            env: BTreeMap::new(),
            ports: Vec::new(),
            mounts: Vec::new(),
            restart: "unless-stopped".into(),
            init: true,
            cap_drop: vec!["ALL".into()],
            no_new_privileges: true,
            read_only: false,
            memory: None,
            cpus: None,
            pids_limit: None,
            labels: BTreeMap::new(),
            network: "bridge".into(),
            healthcheck: Vec::new(),
            healthcheck_interval_secs: 30,
            healthcheck_timeout_secs: None,
            healthcheck_retries: 3,
            healthcheck_start_period_secs: 0,
        }
    }
}

/// A parsed `ports` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortEntry {
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
}

/// A parsed `mounts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// Parse `HOST_IP:HOST_PORT:CONTAINER_PORT[/proto]` (IPv6 in brackets).
pub fn parse_port(text: &str) -> std::result::Result<PortEntry, String> {
    let (spec, protocol) = match text.rsplit_once('/') {
        Some((s, p)) if p == "tcp" || p == "udp" => (s, p.to_string()),
        Some((_, p)) => return Err(format!("{text:?}: protocol {p:?} is not tcp or udp")),
        None => (text, "tcp".to_string()),
    };
    let (host_ip, rest) = if let Some(stripped) = spec.strip_prefix('[') {
        let (ip, rest) = stripped
            .split_once("]:")
            .ok_or_else(|| format!("{text:?}: expected [IPV6]:HOST_PORT:CONTAINER_PORT"))?;
        (ip.to_string(), rest)
    } else {
        let (ip, rest) = spec
            .split_once(':')
            .ok_or_else(|| format!("{text:?}: expected HOST_IP:HOST_PORT:CONTAINER_PORT"))?;
        (ip.to_string(), rest)
    };
    if host_ip.parse::<std::net::IpAddr>().is_err() {
        return Err(format!(
            "{text:?}: {host_ip:?} is not an IP address; name the host address to bind to"
        ));
    }
    let (hp, cp) = rest
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: expected HOST_IP:HOST_PORT:CONTAINER_PORT"))?;
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{text:?}: {p:?} is not a port number"))
    };
    Ok(PortEntry {
        host_ip,
        host_port: port(hp)?,
        container_port: port(cp)?,
        protocol,
    })
}

/// Parse `SOURCE:TARGET[:ro|:rw]`.
pub fn parse_mount(text: &str) -> std::result::Result<MountEntry, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [s, t] => (*s, *t, false),
        [s, t, "ro"] => (*s, *t, true),
        [s, t, "rw"] => (*s, *t, false),
        _ => return Err(format!("{text:?}: expected SOURCE:TARGET[:ro|:rw]")),
    };
    if !source.starts_with('/') || !target.starts_with('/') {
        return Err(format!(
            "{text:?}: source and target must be absolute paths"
        ));
    }
    Ok(MountEntry {
        source: source.to_string(),
        target: target.to_string(),
        read_only,
    })
}

/// Parse a byte size: `512m`, `2g`, `64k`, `1048576`.
pub fn parse_size(text: &str) -> Option<i64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1i64 << 10),
        'm' => (&t[..t.len() - 1], 1 << 20),
        'g' => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)?
        .checked_mul(mult)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

impl DockerConfig {
    pub(super) fn validate(&self, layers: &Layers) -> Result<()> {
        if !self.socket.is_absolute() {
            return Err(layers.error("docker.socket", "must be an absolute path"));
        }
        if !self.daemon_json.is_absolute() {
            return Err(layers.error("docker.daemon_json", "must be an absolute path"));
        }
        // dockerd refuses to start when a log-opts value is not a string
        // (`max-file = 3`): every service and job would be down.
        if let Some(opts) = self.daemon.get("log-opts") {
            let table = opts.as_table().ok_or_else(|| {
                layers.error("docker.daemon.log-opts", "must be a table of strings")
            })?;
            for (k, v) in table {
                if !v.is_str() {
                    return Err(layers.error(
                        &format!("docker.daemon.log-opts.{k}"),
                        format!("must be a string (\"{v}\"), or dockerd will not start"),
                    ));
                }
            }
        }
        for (key, v) in [
            ("registry_proxy", &self.registry_proxy),
            ("registry", &self.registry),
        ] {
            let ok = !v.is_empty()
                && !v.contains("://")
                && !v.ends_with('/')
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_/:".contains(c));
            if !ok {
                return Err(layers.error(
                    &format!("docker.{key}"),
                    "a registry host and path like docker-proxy.example.org/opensafely-core (no scheme, no trailing /)",
                ));
            }
        }
        if self.pull_timeout_secs == 0 {
            return Err(layers.error("docker.pull_timeout_secs", "must be at least 1"));
        }
        for name in self.networks.keys() {
            if !valid_name(name) || ["bridge", "host", "none"].contains(&name.as_str()) {
                return Err(layers.error(
                    &format!("docker.networks.{name}"),
                    "a network name is letters, digits, - _ . and not bridge/host/none",
                ));
            }
        }
        let mut bridges = std::collections::BTreeSet::new();
        for (name, n) in &self.networks {
            let key = |k: &str| format!("docker.networks.{name}.{k}");
            if let Some(b) = &n.bridge_name {
                if !valid_interface_name(b) {
                    return Err(layers.error(
                        &key("bridge_name"),
                        "an interface name: 1 to 15 letters, digits, - _ .",
                    ));
                }
                if !bridges.insert(b.clone()) {
                    return Err(layers.error(&key("bridge_name"), "used by another network"));
                }
            }
            if let Some(addrs) = &n.database_addresses {
                if n.bridge_name.is_none() {
                    return Err(layers.error(
                        &key("database_addresses"),
                        "needs bridge_name: the rules match the bridge by its interface name",
                    ));
                }
                for a in addrs {
                    canonical_ipv4(a).map_err(|m| layers.error(&key("database_addresses"), m))?;
                }
            }
        }
        for (name, s) in &self.services {
            let key = |k: &str| format!("docker.services.{name}.{k}");
            if !valid_name(name) {
                return Err(layers.error(
                    &format!("docker.services.{name}"),
                    "a service name is letters, digits, - _ .",
                ));
            }
            if s.image.is_empty() {
                return Err(
                    layers.error(&key("image"), "is required (repo:tag or repo@sha256:...)")
                );
            }
            for p in &s.ports {
                parse_port(p).map_err(|m| layers.error(&key("ports"), m))?;
            }
            for m in &s.mounts {
                parse_mount(m).map_err(|msg| layers.error(&key("mounts"), msg))?;
            }
            if !["no", "always", "unless-stopped", "on-failure"].contains(&s.restart.as_str()) {
                return Err(layers.error(
                    &key("restart"),
                    "must be no, always, unless-stopped or on-failure",
                ));
            }
            if let Some(m) = &s.memory {
                if parse_size(m).is_none() {
                    return Err(layers.error(&key("memory"), "a size like 512m or 2g"));
                }
            }
            if let Some(c) = s.cpus {
                if !(c > 0.0 && c <= 1024.0) {
                    return Err(layers.error(&key("cpus"), "must be > 0"));
                }
            }
            if s.healthcheck_interval_secs == 0 || s.healthcheck_timeout_secs == Some(0) {
                return Err(layers.error(
                    &key("healthcheck_interval_secs"),
                    "the health check interval and timeout must be at least 1 s",
                ));
            }
            if s.healthcheck_retries == 0 {
                return Err(layers.error(&key("healthcheck_retries"), "must be at least 1"));
            }
            if s.pids_limit.is_some_and(|p| p <= 0) {
                return Err(layers.error(&key("pids_limit"), "must be > 0"));
            }
            for k in s.env.keys() {
                if k.is_empty() || k.contains('=') {
                    return Err(layers.error(&key("env"), format!("{k:?} is not a variable name")));
                }
            }
            let net = s.network.as_str();
            if !["bridge", "none", "host"].contains(&net) && !self.networks.contains_key(net) {
                return Err(layers.error(
                    &key("network"),
                    format!("{net:?} is not declared under [docker.networks]"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_need_a_host_address() {
        let p = parse_port("127.0.0.1:8000:80").unwrap();
        assert_eq!(
            (
                p.host_ip.as_str(),
                p.host_port,
                p.container_port,
                p.protocol.as_str()
            ),
            ("127.0.0.1", 8000, 80, "tcp")
        );
        assert_eq!(parse_port("[::1]:53:53/udp").unwrap().protocol, "udp");
        assert!(parse_port("8000:80").is_err());
        assert!(parse_port("localhost:8000:80").is_err());
        assert!(parse_port("127.0.0.1:0:80").is_err());
    }

    #[test]
    fn database_addresses_are_canonical_ipv4() {
        assert_eq!(canonical_ipv4("10.0.0.5").unwrap(), "10.0.0.5/32");
        assert_eq!(canonical_ipv4("10.0.0.0/24").unwrap(), "10.0.0.0/24");
        assert!(canonical_ipv4("10.0.0.5/24").is_err(), "host bits set");
        assert!(canonical_ipv4("0.0.0.0/0").is_err(), "everything");
        assert!(canonical_ipv4("db.example").is_err());
        assert!(canonical_ipv4("10.0.0.1/33").is_err());
        assert!(canonical_ipv4("::1").is_err());
        assert!(valid_interface_name("jobrunner-db"));
        assert!(!valid_interface_name("a-name-too-long-x"));
        assert!(!valid_interface_name("br 0"));
    }

    #[test]
    fn mounts_and_sizes_parse() {
        assert!(parse_mount("/srv/a:/a:ro").unwrap().read_only);
        assert!(!parse_mount("/srv/a:/a").unwrap().read_only);
        assert!(parse_mount("rel:/a").is_err());
        assert!(parse_mount("/a:/b:rx").is_err());
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("x"), None);
    }
}
