//! Checks of a v1 Pod.

use std::net::IpAddr;

use super::{NameRule, check_meta, endpoint_protocol, is_port_name, parse_ip, require_port};
use crate::source::manifest::{
    error::Problems,
    k8s,
    object::{ContainerPortDef, PodDef},
};

pub(crate) fn check_pod(raw: &k8s::Pod, p: &mut Problems) -> Option<PodDef> {
    let meta = check_meta(&raw.metadata, NameRule::Subdomain, p);
    let ip = match raw.status.pod_ip.as_deref() {
        None | Some("") => {
            p.warning(
                "status.podIP",
                "is missing: this pod serves no Service until it has an address",
            );
            None
        }
        Some(text) => match parse_ip(text, "status.podIP", p) {
            Some(IpAddr::V4(ip)) => Some(ip),
            Some(IpAddr::V6(_)) => {
                p.note("status.podIP", "IPv6 pods are not programmed yet: skipped");
                None
            }
            None => None,
        },
    };
    let mut ports = Vec::new();
    for (i, container) in raw.spec.containers.iter().enumerate() {
        for (j, port) in container.ports.iter().enumerate() {
            let at = |name: &str| format!("spec.containers[{i}].ports[{j}].{name}");
            let number = require_port(port.container_port, &at("containerPort"), p);
            let protocol = endpoint_protocol(port.protocol, &at("protocol"), p);
            let name = port.name.clone().unwrap_or_default();
            if !name.is_empty() && !is_port_name(&name) {
                p.error(
                    &at("name"),
                    format!(
                        "{name:?} is not a valid port name: at most 15 lower-case letters, \
                         digits and '-', starting with a letter"
                    ),
                );
            }
            if let (Some(port), Some(protocol)) = (number, protocol) {
                ports.push(ContainerPortDef {
                    name,
                    port,
                    protocol,
                });
            }
        }
    }
    let ready = raw.status.conditions.iter().any(|condition| {
        condition.type_.as_deref() == Some("Ready") && condition.status.as_deref() == Some("True")
    });
    let finished = matches!(raw.status.phase.as_deref(), Some("Succeeded" | "Failed"));
    if p.has_errors() {
        return None;
    }
    let (namespace, name) = meta?;
    Some(PodDef {
        namespace,
        name,
        labels: raw.metadata.labels.clone(),
        node_name: raw.spec.node_name.clone().filter(|n| !n.is_empty()),
        ip,
        ready,
        terminating: raw.metadata.deletion_timestamp.is_some(),
        finished,
        ports,
    })
}
