//! The database access of a job with `allow_database_access`, as
//! job-runner's agent gives it: the database network, `DATABASE_URL` for
//! the job's `database_name` and the backend's other database variables,
//! all from `/etc/bs/secrets.env`, and an `/etc/hosts` entry for the
//! database host (the container's DNS goes nowhere).
//!
//! The values are secrets: they are never stored in the queue entry (which
//! `show` prints), only handed to the container, and every log redacts them.

use std::collections::BTreeMap;
use std::net::{IpAddr, ToSocketAddrs};

use bs_core::config::Config;
use bs_core::secrets::Secrets;
use bs_core::Root;

use crate::error::Result;
use crate::executor::DatabaseAccess;
use crate::spec::JobSpec;

/// The backend's other database variables, passed on when set.
const EXTRA: &[&str] = &[
    "TEMP_DATABASE_NAME",
    "PRESTO_TLS_CERT",
    "PRESTO_TLS_KEY",
    "EMIS_ORGANISATION_HASH",
];

/// `None` for a job without database access; `Some(Err(message))` when
/// this job cannot have it (an unknown database): an error of the job alone.
pub fn access(
    root: &Root,
    config: &Config,
    job: &JobSpec,
) -> Result<Option<std::result::Result<DatabaseAccess, String>>> {
    if !job.origin.allow_database_access {
        return Ok(None);
    }
    let name = job.origin.database_name.as_deref().unwrap_or("default");
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Ok(Some(Err(format!("database name {name:?} is not one"))));
    }
    let secrets = Secrets::load(root)?;
    let key = format!("{}_DATABASE_URL", name.to_ascii_uppercase());
    let Some(url) = secrets.get(&key) else {
        return Ok(Some(Err(format!(
            "database {name:?} is not defined on this backend"
        ))));
    };
    let url = url.expose().to_string();
    let mut env = BTreeMap::new();
    env.insert("DATABASE_URL".to_string(), url.clone());
    for k in EXTRA {
        if let Some(v) = secrets.get(k) {
            env.insert((*k).to_string(), v.expose().to_string());
        }
    }
    let hosts = match host_entry(&url) {
        Ok(h) => h.into_iter().collect(),
        Err(message) => return Ok(Some(Err(message))),
    };
    Ok(Some(Ok(DatabaseAccess {
        network: config.jobs.database_network.clone(),
        env,
        hosts,
    })))
}

/// `host:ip` for a database URL's host name (nothing for an address).
/// The message never holds the URL: it carries the password.
fn host_entry(url: &str) -> std::result::Result<Option<String>, String> {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().unwrap_or(0))
        }
        _ => (host_port, 0),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("the database URL has no host".into());
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(None);
    }
    let ip = (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.find(|a| a.is_ipv4()))
        .ok_or_else(|| format!("the database host {host} does not resolve"))?;
    Ok(Some(format!("{host}:{}", ip.ip())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::host_entry;

    #[test]
    fn a_database_host_gets_an_entry_and_an_address_none() {
        assert_eq!(
            host_entry("postgres://u:p@127.0.0.1:5432/db").unwrap(),
            None
        );
        assert_eq!(
            host_entry("postgres://u:p@localhost:5432/db").unwrap(),
            Some("localhost:127.0.0.1".into())
        );
        let e = host_entry("mssql://u:s3cret@no-such-host.invalid:1433/db").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
