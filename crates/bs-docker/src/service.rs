//! Declared service containers: the desired container built from the
//! config (env files layered, ports, mounts, limits, hardening), its spec
//! hash, and the container's status.

use std::collections::BTreeMap;
use std::path::Path;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HealthConfig, HealthStatusEnum,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use bs_core::config::{parse_mount, parse_port, parse_size, Config, ServiceSpec};
use bs_core::secrets::Secrets;
use bs_core::Root;

use crate::error::{DockerError, Result};
use bs_engine::{labels, BindMount, ContainerSpec, PortSpec};

/// A service as it should run.
#[derive(Debug, Clone)]
pub struct Desired {
    pub name: String,
    pub spec: ContainerSpec,
    pub healthcheck: Option<HealthConfig>,
    /// sha256 of the spec and the image id, kept as a label.
    pub hash: String,
}

impl Desired {
    pub fn create_body(&self) -> ContainerCreateBody {
        let mut body = self.spec.to_create_body();
        body.healthcheck = self.healthcheck.clone();
        body
    }
}

/// Build the desired container of a service. `image_id` is the id the
/// image reference resolves to now (a re-tagged image means recreate).
pub fn desired(
    root: &Root,
    config: &Config,
    name: &str,
    s: &ServiceSpec,
    image_id: &str,
) -> Result<Desired> {
    let env = layered_env(root, config, name, s)?;
    let mut label_map: BTreeMap<String, String> = s.labels.clone();
    label_map.insert(labels::MANAGED_BY.into(), "bs-docker".into());
    label_map.insert(labels::SERVICE.into(), name.to_string());
    let invalid = |message: String| DockerError::Invalid {
        target: format!("docker.services.{name}"),
        message,
    };
    let ports = s
        .ports
        .iter()
        .map(|p| {
            parse_port(p).map(|p| PortSpec {
                host_ip: p.host_ip,
                host_port: p.host_port,
                container_port: p.container_port,
                protocol: p.protocol,
            })
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let mounts = s
        .mounts
        .iter()
        .map(|m| {
            parse_mount(m).map(|m| BindMount {
                source: m.source,
                target: m.target,
                read_only: m.read_only,
            })
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let spec = ContainerSpec {
        name: name.to_string(),
        image: s.image.clone(),
        command: s.command.clone(),
        entrypoint: None,
        user: (!s.user.is_empty()).then(|| s.user.clone()),
        env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        working_dir: None,
        labels: label_map,
        mounts,
        ports,
        network: Some(s.network.clone()),
        restart: Some(s.restart.clone()),
        init: s.init,
        cap_drop: s.cap_drop.clone(),
        no_new_privileges: s.no_new_privileges,
        read_only: s.read_only,
        memory_bytes: s.memory.as_deref().and_then(parse_size),
        nano_cpus: s.cpus.map(|c| (c * 1e9).round() as i64),
        pids_limit: s.pids_limit,
        tmpfs: BTreeMap::new(),
    };
    let healthcheck = (!s.healthcheck.is_empty()).then(|| {
        // Saturating: a huge number of seconds must not wrap into a negative
        // duration (the config check only bounds them from below).
        let nanos = |secs: u64| {
            i64::try_from(secs)
                .unwrap_or(i64::MAX)
                .saturating_mul(NANOS)
        };
        let interval = s.healthcheck_interval_secs;
        HealthConfig {
            test: Some(
                std::iter::once("CMD".to_string())
                    .chain(s.healthcheck.iter().cloned())
                    .collect(),
            ),
            interval: Some(nanos(interval)),
            timeout: Some(nanos(s.healthcheck_timeout_secs.unwrap_or(interval))),
            retries: Some(i64::from(s.healthcheck_retries)),
            start_period: (s.healthcheck_start_period_secs > 0)
                .then(|| nanos(s.healthcheck_start_period_secs)),
            start_interval: None,
        }
    });
    let hash = spec_hash(&spec, healthcheck.as_ref(), image_id);
    let mut spec = spec;
    spec.labels.insert(labels::SPEC_HASH.into(), hash.clone());
    Ok(Desired {
        name: name.to_string(),
        spec,
        healthcheck,
        hash,
    })
}

const NANOS: i64 = 1_000_000_000;

/// The hash over everything that shapes the container. Env values are in
/// it (a changed secret must recreate) but only as a digest.
pub fn spec_hash(spec: &ContainerSpec, health: Option<&HealthConfig>, image_id: &str) -> String {
    #[derive(Serialize)]
    struct Hashed<'a> {
        spec: &'a ContainerSpec,
        health: Option<(&'a Option<Vec<String>>, Option<i64>)>,
        /// Timeout, retries and start period, only when they differ from
        /// what every health check had before they could be set (timeout =
        /// interval, 3 retries, no start period): so a host's containers are
        /// not all recreated by the upgrade that made them settable.
        #[serde(skip_serializing_if = "Option::is_none")]
        health_timing: Option<(Option<i64>, Option<i64>, Option<i64>)>,
        image_id: &'a str,
    }
    let health_timing = health.and_then(|h| {
        let old_default =
            h.timeout == h.interval && h.retries == Some(3) && h.start_period.is_none();
        (!old_default).then_some((h.timeout, h.retries, h.start_period))
    });
    let text = serde_json::to_vec(&Hashed {
        spec,
        health: health.map(|h| (&h.test, h.interval)),
        health_timing,
        image_id,
    })
    .unwrap_or_default();
    let digest = Sha256::digest(&text);
    hex::encode(&digest[..12])
}

/// Env files in order (later wins), then `env`. Repo-relative files must
/// exist; system paths (under the root) are secrets-like: 0600, optional.
pub fn layered_env(
    root: &Root,
    config: &Config,
    name: &str,
    s: &ServiceSpec,
) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for file in &s.env_files {
        if file.starts_with('/') {
            let secrets = Secrets::load_file(&root.join(file))?;
            for k in secrets.keys() {
                if let Some(v) = secrets.get(k) {
                    env.insert(k.to_string(), v.expose().to_string());
                }
            }
        } else {
            let path = config.repo_path(file);
            for (k, v) in read_env_file(&path).map_err(|message| DockerError::Invalid {
                target: format!("docker.services.{name}.env_files"),
                message,
            })? {
                env.insert(k, v);
            }
        }
    }
    for (k, v) in &s.env {
        env.insert(k.clone(), v.clone());
    }
    Ok(env)
}

/// `KEY=value` lines; blanks and `#` comments skipped; `export ` allowed;
/// one pair of surrounding quotes removed.
pub fn read_env_file(path: &Path) -> std::result::Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("{} line {}: expected KEY=value", path.display(), i + 1))?;
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "{} line {}: {k:?} is not a variable name",
                path.display(),
                i + 1
            ));
        }
        let v = v.trim();
        let v = ['"', '\'']
            .iter()
            .find_map(|q| v.strip_prefix(*q).and_then(|r| r.strip_suffix(*q)))
            .unwrap_or(v);
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// The status record of one service.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    pub target: String,
    /// missing, created, starting, active, restarting, stopped, error
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<i64>,
    /// Whether the container matches the declared spec (its hash label).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<bool>,
}

/// Derive the status vocabulary from the container's real state: a failed
/// container is `error` with its exit code, never "starting" forever.
pub fn status_of(
    name: &str,
    image: &str,
    c: Option<&ContainerInspectResponse>,
    want_hash: Option<&str>,
) -> Status {
    let mut st = Status {
        target: name.to_string(),
        state: "missing".into(),
        reason: None,
        exit_code: None,
        oom_killed: false,
        health: None,
        container: None,
        image: image.to_string(),
        started_at: None,
        restart_count: None,
        current: None,
    };
    let Some(c) = c else {
        st.reason = Some("no container of this name".into());
        return st;
    };
    st.container = c.id.as_ref().map(|id| id.chars().take(12).collect());
    st.restart_count = c.restart_count;
    let got_hash = c
        .config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .and_then(|l| l.get(labels::SPEC_HASH))
        .cloned();
    st.current = want_hash.map(|w| got_hash.as_deref() == Some(w));
    let s = c.state.clone().unwrap_or_default();
    st.oom_killed = s.oom_killed.unwrap_or(false);
    st.health = s
        .health
        .as_ref()
        .and_then(|h| h.status)
        .filter(|h| *h != HealthStatusEnum::NONE && *h != HealthStatusEnum::EMPTY)
        .map(|h| h.to_string());
    st.started_at = s.started_at.clone().filter(|t| !t.starts_with("0001-"));
    let code = s.exit_code.unwrap_or(0);
    use bollard::models::ContainerStateStatusEnum as S;
    let (state, reason) = match s.status {
        Some(S::CREATED) => ("created", None),
        Some(S::RUNNING) => match st.health.as_deref() {
            Some("starting") => (
                "starting",
                Some("health check has not passed yet".to_string()),
            ),
            Some("unhealthy") => ("error", Some("health check failing".to_string())),
            _ => ("active", None),
        },
        Some(S::RESTARTING) => ("restarting", Some(format!("last exit code {code}"))),
        Some(S::PAUSED) => ("stopped", Some("paused".to_string())),
        Some(S::DEAD) => ("error", Some("container is dead".to_string())),
        Some(S::EXITED) | Some(S::REMOVING) => {
            if st.oom_killed {
                ("error", Some("killed: out of memory".to_string()))
            } else if code != 0 {
                ("error", Some(format!("exited with code {code}")))
            } else {
                ("stopped", None)
            }
        }
        _ => ("error", Some("unknown container state".to_string())),
    };
    if matches!(
        s.status,
        Some(S::EXITED) | Some(S::DEAD) | Some(S::RESTARTING)
    ) {
        st.exit_code = Some(code);
    }
    st.state = state.into();
    st.reason = reason;
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(timeout: i64, retries: i64, start: Option<i64>) -> HealthConfig {
        HealthConfig {
            test: Some(vec!["CMD".into(), "true".into()]),
            interval: Some(30 * NANOS),
            timeout: Some(timeout * NANOS),
            retries: Some(retries),
            start_period: start.map(|s| s * NANOS),
            start_interval: None,
        }
    }

    /// Health checks from before timeout, retries and start period could be
    /// set must keep their hash, or upgrading bs would recreate them all.
    #[test]
    fn the_old_default_health_timing_keeps_the_hash_and_any_change_recreates() {
        let spec = ContainerSpec::default();
        #[derive(Serialize)]
        struct Before<'a> {
            spec: &'a ContainerSpec,
            health: Option<(&'a Option<Vec<String>>, Option<i64>)>,
            image_id: &'a str,
        }
        let old = health(30, 3, None);
        let before = serde_json::to_vec(&Before {
            spec: &spec,
            health: Some((&old.test, old.interval)),
            image_id: "sha256:x",
        })
        .unwrap();
        let before = hex::encode(&Sha256::digest(&before)[..12]);
        assert_eq!(spec_hash(&spec, Some(&old), "sha256:x"), before);
        for changed in [
            health(5, 3, None),
            health(30, 5, None),
            health(30, 3, Some(60)),
        ] {
            assert_ne!(
                spec_hash(&spec, Some(&changed), "sha256:x"),
                before,
                "{changed:?}"
            );
        }
    }

    #[test]
    fn env_files_parse_comments_export_and_quotes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.env");
        std::fs::write(&f, "# c\n\nexport A=1\nB=\"two words\"\nC='x=y'\n").unwrap();
        let v = read_env_file(&f).unwrap();
        assert_eq!(
            v,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x=y".into())
            ]
        );
        std::fs::write(&f, "NOEQUALS\n").unwrap();
        assert!(read_env_file(&f).unwrap_err().contains("line 1"));
    }

    #[test]
    fn a_crashed_or_oom_killed_container_is_error_with_its_exit_code() {
        use bollard::models::{ContainerState, ContainerStateStatusEnum};
        let c = |status, code, oom| ContainerInspectResponse {
            state: Some(ContainerState {
                status: Some(status),
                exit_code: Some(code),
                oom_killed: Some(oom),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = status_of(
            "web",
            "img",
            Some(&c(ContainerStateStatusEnum::EXITED, 3, false)),
            None,
        );
        assert_eq!((s.state.as_str(), s.exit_code), ("error", Some(3)));
        let s = status_of(
            "web",
            "img",
            Some(&c(ContainerStateStatusEnum::EXITED, 137, true)),
            None,
        );
        assert!(s.oom_killed && s.reason.unwrap().contains("memory"));
        let s = status_of(
            "web",
            "img",
            Some(&c(ContainerStateStatusEnum::EXITED, 0, false)),
            None,
        );
        assert_eq!(s.state, "stopped");
        assert_eq!(status_of("web", "img", None, None).state, "missing");
    }
}
