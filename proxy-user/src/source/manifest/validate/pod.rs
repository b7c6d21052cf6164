//! Checks of a v1 Pod.

use std::net::IpAddr;

use super::{NameRule, check_meta, endpoint_protocol, is_port_name, parse_ip, require_port};
use crate::{
    model::IpFamily,
    source::manifest::{
        error::Problems,
        k8s,
        object::{ContainerPortDef, PodDef},
    },
};

pub(crate) fn check_pod(raw: &k8s::Pod, p: &mut Problems) -> Option<PodDef> {
    let meta = check_meta(&raw.metadata, NameRule::Subdomain, p);
    let ips = check_pod_ips(&raw.status, p);
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
        ips,
        ready,
        terminating: raw.metadata.deletion_timestamp.is_some(),
        finished,
        ports,
    })
}

/// `status.podIPs` (at most one per family, the first equal to `podIP`), or `status.podIP`
/// alone.
fn check_pod_ips(status: &k8s::PodStatus, p: &mut Problems) -> Vec<IpAddr> {
    let pod_ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty());
    if status.pod_ips.is_empty() {
        let Some(text) = pod_ip else {
            p.warning(
                "status.podIP",
                "is missing: this pod serves no Service until it has an address",
            );
            return Vec::new();
        };
        return parse_ip(text, "status.podIP", p).into_iter().collect();
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for (i, entry) in status.pod_ips.iter().enumerate() {
        let field = format!("status.podIPs[{i}].ip");
        let Some(ip) = entry
            .ip
            .as_deref()
            .and_then(|text| parse_ip(text, &field, p))
        else {
            continue;
        };
        if ips
            .iter()
            .any(|seen| IpFamily::of(*seen) == IpFamily::of(ip))
        {
            p.error(
                &field,
                format!(
                    "a second {} address: a pod has at most one per family",
                    IpFamily::of(ip)
                ),
            );
            continue;
        }
        ips.push(ip);
    }
    if let (Some(text), Some(first)) = (pod_ip, ips.first())
        && text.parse::<IpAddr>().ok() != Some(*first)
    {
        p.error(
            "status.podIPs[0].ip",
            format!("{first} differs from status.podIP {text}: make them equal"),
        );
    }
    ips
}
