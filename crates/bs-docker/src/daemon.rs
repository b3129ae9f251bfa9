//! `daemon.json`: the keys the config manages are merged into the file,
//! every other key kept as it is; the result is type-checked (a string
//! where dockerd wants one, or dockerd refuses to start and every service
//! and job is down), validated with `dockerd --validate` where the engine
//! has it, and written atomically.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use bs_core::cmd::{Cmd, Runner};
use bs_core::safefs::{self, FileSpec};
use bs_core::Root;

/// Keys whose value must have a given JSON type. Unknown keys are not
/// checked (newer engines add keys); these are the ones operators set.
const BOOL_KEYS: &[&str] = &[
    "icc",
    "live-restore",
    "userland-proxy",
    "ip-forward",
    "ip-masq",
    "iptables",
    "ip6tables",
    "ipv6",
    "no-new-privileges",
    "debug",
    "experimental",
    "selinux-enabled",
    "init",
];
const STRING_KEYS: &[&str] = &[
    "log-driver",
    "log-level",
    "storage-driver",
    "data-root",
    "bip",
    "fixed-cidr",
    "default-cgroupns-mode",
    "cgroup-parent",
    "userns-remap",
    "default-runtime",
    "exec-root",
    "pidfile",
];
const INT_KEYS: &[&str] = &[
    "mtu",
    "max-concurrent-downloads",
    "max-concurrent-uploads",
    "max-download-attempts",
    "shutdown-timeout",
];
const STRING_LIST_KEYS: &[&str] = &[
    "dns",
    "dns-opts",
    "dns-search",
    "storage-opts",
    "exec-opts",
    "insecure-registries",
    "registry-mirrors",
    "hosts",
    "labels",
];

/// Check the types dockerd insists on. Each problem names the key.
pub fn type_check(doc: &Map<String, Value>) -> Vec<String> {
    let mut problems = Vec::new();
    for (k, v) in doc {
        let k = k.as_str();
        if k == "log-opts" {
            match v.as_object() {
                Some(opts) => {
                    for (ok, ov) in opts {
                        if !ov.is_string() {
                            problems.push(format!(
                                "log-opts.{ok}: must be a string ({}), or dockerd will not start",
                                Value::String(plain(ov))
                            ));
                        }
                    }
                }
                None => problems.push("log-opts: must be a table of strings".into()),
            }
        } else if BOOL_KEYS.contains(&k) && !v.is_boolean() {
            problems.push(format!("{k}: must be true or false"));
        } else if STRING_KEYS.contains(&k) && !v.is_string() {
            problems.push(format!("{k}: must be a string"));
        } else if INT_KEYS.contains(&k) && !(v.is_i64() || v.is_u64()) {
            problems.push(format!("{k}: must be an integer"));
        } else if STRING_LIST_KEYS.contains(&k)
            && !v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
        {
            problems.push(format!("{k}: must be a list of strings"));
        }
    }
    problems
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The managed keys as JSON (TOML has no null; dates become strings).
pub fn managed_json(table: &toml::Table) -> Map<String, Value> {
    match serde_json::to_value(table) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// The current file, parsed. A missing file is an empty document; a file
/// that is not a JSON object is an error (we will not guess what to keep).
pub fn read_current(path: &Path) -> Result<Map<String, Value>, String> {
    let (dir, name) = safefs::split(path).map_err(|e| e.to_string())?;
    let bytes = match safefs::DirFd::open(dir) {
        Ok(d) => d
            .read_file(name, 1 << 20)
            .map_err(|e| e.to_string())?
            .map(|(b, _)| b),
        Err(bs_core::CoreError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            None
        }
        Err(e) => return Err(e.to_string()),
    };
    let doc = match &bytes {
        None => Map::new(),
        Some(b) if b.iter().all(u8::is_ascii_whitespace) => Map::new(),
        Some(b) => match serde_json::from_slice::<Value>(b) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err("is not a JSON object".into()),
            Err(e) => return Err(format!("is not valid JSON: {e}")),
        },
    };
    Ok(doc)
}

/// The managed keys whose value differs from the file's.
pub fn differing_keys(current: &Map<String, Value>, managed: &Map<String, Value>) -> Vec<String> {
    managed
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect()
}

/// The merged document: the file with the managed keys set.
pub fn merge(current: &Map<String, Value>, managed: &Map<String, Value>) -> Map<String, Value> {
    let mut out = current.clone();
    for (k, v) in managed {
        out.insert(k.clone(), v.clone());
    }
    out
}

pub fn render(doc: &Map<String, Value>) -> Vec<u8> {
    let mut text = serde_json::to_string_pretty(&Value::Object(doc.clone())).unwrap_or_default();
    text.push('\n');
    text.into_bytes()
}

/// What `dockerd --validate` said.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Validation {
    /// dockerd accepted the file.
    Passed,
    /// No dockerd here, or one too old to have `--validate` (before 23.0):
    /// our own type checks stand alone.
    Unavailable(String),
    Failed(String),
}

pub fn validate_with_dockerd(runner: &dyn Runner, doc: &[u8]) -> Validation {
    // The candidate goes in on stdin: no temp file for a root-owned config.
    let cmd = Cmd::new("dockerd")
        .args(["--validate", "--config-file", "/dev/stdin"])
        .stdin(doc.to_vec())
        .timeout(std::time::Duration::from_secs(30));
    match runner.run(&cmd) {
        Err(bs_core::CoreError::CommandSpawn { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Validation::Unavailable("dockerd is not installed here".into())
        }
        Err(e) => Validation::Unavailable(e.to_string()),
        Ok(ran) if ran.success() => Validation::Passed,
        Ok(ran) => {
            let said = format!("{} {}", ran.stdout.trim(), ran.stderr.trim());
            if said.contains("unknown flag: --validate") {
                Validation::Unavailable("this dockerd has no --validate (added in 23.0)".into())
            } else {
                Validation::Failed(said.trim().to_string())
            }
        }
    }
}

/// Write atomically, root-owned 0644 (dockerd reads it as root).
pub fn write(path: &Path, doc: &[u8]) -> bs_core::error::Result<bool> {
    if let Some(dir) = path.parent() {
        safefs::ensure_dir_all(dir, &FileSpec::root(0o755))?;
    }
    safefs::write_atomic(path, doc, &FileSpec::root(0o644))
}

/// A marker that an engine restart is owed: daemon.json changed but the
/// restart was not allowed or was refused. The next run restarts then.
pub fn restart_marker(root: &Root) -> PathBuf {
    root.join("/var/lib/bs/docker/restart-pending")
}

/// Whether the engine started after the restart was owed, so it already
/// reads the daemon.json that was written: someone restarted it by hand in
/// a quiet moment, as `allow_restart = false` asks. dockerd writes its pid
/// file when it starts: a pid file of a running process that is newer than
/// the marker says so. Unknown (no pid file, no such process) is "no".
pub fn restarted_since(root: &Root, marker: &Path) -> bool {
    use std::io::Read;
    let Ok(mut pidfile) = std::fs::File::open(root.join("/var/run/docker.pid")) else {
        return false;
    };
    let started = pidfile.metadata().and_then(|m| m.modified());
    let owed = std::fs::metadata(marker).and_then(|m| m.modified());
    let mut pid = String::new();
    let alive = pidfile.read_to_string(&mut pid).is_ok()
        && pid
            .trim()
            .parse::<u32>()
            .is_ok_and(|pid| Path::new("/proc").join(pid.to_string()).is_dir());
    matches!((started, owed), (Ok(started), Ok(owed)) if alive && started > owed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn merge_keeps_unknown_keys_and_sets_managed_ones() {
        let cur = obj(json!({"data-root": "/var/lib/docker", "mtu": 1400, "log-driver": "local"}));
        let managed = obj(json!({"log-driver": "json-file", "live-restore": true}));
        let m = merge(&cur, &managed);
        assert_eq!(m["data-root"], "/var/lib/docker");
        assert_eq!(m["mtu"], 1400);
        assert_eq!(m["log-driver"], "json-file");
        assert_eq!(
            differing_keys(&cur, &managed),
            vec!["live-restore", "log-driver"]
        );
        assert!(differing_keys(&m, &managed).is_empty());
    }

    #[test]
    fn log_opts_values_must_be_strings() {
        let bad = obj(json!({"log-opts": {"max-file": 3, "max-size": "10m"}}));
        let p = type_check(&bad);
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("log-opts.max-file"), "{p:?}");
        assert!(type_check(&obj(json!({"icc": "no"})))[0].starts_with("icc"));
        assert!(type_check(&obj(
            json!({"log-opts": {"max-file": "3"}, "icc": false, "whatever": 1})
        ))
        .is_empty());
    }

    #[test]
    fn an_old_dockerd_without_validate_is_unavailable_not_failed() {
        let r = bs_core::cmd::RecordingRunner::new();
        r.answer(
            "--validate",
            125,
            "",
            "Status: unknown flag: --validate\nSee 'dockerd --help'.",
        );
        assert!(matches!(
            validate_with_dockerd(&r, b"{}"),
            Validation::Unavailable(_)
        ));
        r.answer(
            "--validate",
            1,
            "",
            "unable to configure the Docker daemon with file",
        );
        assert!(matches!(
            validate_with_dockerd(&r, b"{}"),
            Validation::Failed(_)
        ));
        assert_eq!(validate_with_dockerd(&r, b"{}"), Validation::Passed);
    }
}
