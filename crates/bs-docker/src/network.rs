//! Declared bridge networks: created when missing; one that differs from
//! its declaration is drift, recreated only when nothing is attached (or
//! with `--force`, which reconnects what was attached).

use std::collections::HashMap;

use bollard::models::{Ipam, IpamConfig, Network, NetworkCreateRequest};
use bs_core::config::NetworkSpec;

use bs_engine::{labels, Engine, EngineError};

pub const ICC_OPTION: &str = "com.docker.network.bridge.enable_icc";
/// The bridge's interface name on the host (firewall rules match it).
pub const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

/// The network as it exists, `None` when absent.
pub fn inspect(engine: &Engine, name: &str) -> Result<Option<Network>, EngineError> {
    match engine.block_on(engine.docker().inspect_network(
        name,
        None::<bollard::query_parameters::InspectNetworkOptions>,
    )) {
        Ok(n) => Ok(Some(n)),
        Err(e) => match engine.error("inspect network", name, e) {
            EngineError::NotFound { .. } => Ok(None),
            other => Err(other),
        },
    }
}

/// How an existing network differs from its declaration.
pub fn differences(spec: &NetworkSpec, n: &Network) -> Vec<String> {
    let mut out = Vec::new();
    let driver = n.driver.clone().unwrap_or_default();
    if driver != "bridge" {
        out.push(format!("driver is {driver:?}, not bridge"));
    }
    if n.internal.unwrap_or(false) != spec.internal {
        out.push(format!(
            "internal is {}, declared {}",
            !spec.internal, spec.internal
        ));
    }
    let icc = n
        .options
        .as_ref()
        .and_then(|o| o.get(ICC_OPTION))
        .map(|v| v == "true")
        // The engine's default for a user bridge is icc on.
        .unwrap_or(true);
    if icc != spec.icc {
        out.push(format!("icc is {icc}, declared {}", spec.icc));
    }
    if let Some(want) = &spec.bridge_name {
        let have = n.options.as_ref().and_then(|o| o.get(BRIDGE_NAME_OPTION));
        if have != Some(want) {
            out.push(format!("bridge name is {have:?}, declared {want:?}"));
        }
    }
    let have = n.labels.as_ref();
    for (key, want) in &spec.labels {
        // bs-docker sets its own `bs.managed-by` over a declared one.
        if key == labels::MANAGED_BY {
            continue;
        }
        match have.and_then(|l| l.get(key)) {
            Some(v) if v == want => {}
            Some(v) => out.push(format!("label {key} is {v:?}, declared {want:?}")),
            None => out.push(format!("label {key} is missing, declared {want:?}")),
        }
    }
    if let Some(want) = &spec.subnet {
        let subnets: Vec<String> = n
            .ipam
            .as_ref()
            .and_then(|i| i.config.as_ref())
            .map(|c| c.iter().filter_map(|c| c.subnet.clone()).collect())
            .unwrap_or_default();
        if !subnets.contains(want) {
            out.push(format!("subnet is {subnets:?}, declared {want}"));
        }
    }
    out
}

/// Names of the containers attached to the network.
pub fn attached(n: &Network) -> Vec<String> {
    let mut names: Vec<String> = n
        .containers
        .as_ref()
        .map(|c| {
            c.iter()
                .map(|(id, c)| c.name.clone().unwrap_or_else(|| id.clone()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

pub fn create(engine: &Engine, name: &str, spec: &NetworkSpec) -> Result<(), EngineError> {
    let mut options = HashMap::new();
    options.insert(ICC_OPTION.to_string(), spec.icc.to_string());
    if let Some(bridge) = &spec.bridge_name {
        options.insert(BRIDGE_NAME_OPTION.to_string(), bridge.clone());
    }
    let mut net_labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
    net_labels.insert(labels::MANAGED_BY.to_string(), "bs-docker".to_string());
    let req = NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".into()),
        internal: Some(spec.internal),
        options: Some(options),
        labels: Some(net_labels),
        ipam: spec.subnet.as_ref().map(|s| Ipam {
            config: Some(vec![IpamConfig {
                subnet: Some(s.clone()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    engine
        .block_on(engine.docker().create_network(req))
        .map(|_| ())
        .map_err(|e| engine.error("create network", name, e))
}

/// Remove and create again; with containers attached (forced), they are
/// disconnected first and connected to the new network afterwards.
pub fn recreate(
    engine: &Engine,
    name: &str,
    spec: &NetworkSpec,
    n: &Network,
) -> Result<(), EngineError> {
    let attached = attached(n);
    let docker = engine.docker();
    for c in &attached {
        let req = bollard::models::NetworkDisconnectRequest {
            container: Some(c.clone()),
            force: Some(true),
        };
        engine
            .block_on(docker.disconnect_network(name, req))
            .map_err(|e| engine.error("disconnect", c, e))?;
    }
    engine
        .block_on(docker.remove_network(name))
        .map_err(|e| engine.error("remove network", name, e))?;
    create(engine, name, spec)?;
    for c in &attached {
        let req = bollard::models::NetworkConnectRequest {
            container: Some(c.clone()),
            ..Default::default()
        };
        engine
            .block_on(docker.connect_network(name, req))
            .map_err(|e| engine.error("connect", c, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(labels: &[(&str, &str)]) -> Network {
        Network {
            driver: Some("bridge".into()),
            internal: Some(false),
            options: Some(HashMap::from([(
                ICC_OPTION.to_string(),
                "false".to_string(),
            )])),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn spec(labels: &[(&str, &str)]) -> NetworkSpec {
        NetworkSpec {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn declared_labels_missing_or_different_are_drift_and_extra_ones_are_not() {
        let n = network(&[(labels::MANAGED_BY, "bs-docker"), ("team", "platform")]);
        assert!(
            differences(&spec(&[]), &n).is_empty(),
            "extra labels are not drift"
        );
        assert!(differences(&spec(&[("team", "platform")]), &n).is_empty());
        assert_eq!(
            differences(&spec(&[("team", "research")]), &n),
            ["label team is \"platform\", declared \"research\""]
        );
        assert_eq!(
            differences(&spec(&[("owner", "ops")]), &n),
            ["label owner is missing, declared \"ops\""]
        );
    }

    #[test]
    fn a_declared_managed_by_label_is_not_drift_because_ours_wins_at_creation() {
        let n = network(&[(labels::MANAGED_BY, "bs-docker")]);
        assert!(differences(&spec(&[(labels::MANAGED_BY, "someone")]), &n).is_empty());
    }
}
