//! Checks of discovery.k8s.io/v1 EndpointSlice and v1 Endpoints.

use std::time::SystemTime;

use super::{NameRule, check_meta, check_port, endpoint_protocol, parse_ip, require_port};
use crate::{
    model::{Hints, IpFamily},
    source::manifest::{
        error::Problems,
        k8s::{self, EndpointPort, HintName},
        object::{
            AddressDef, EndpointPortDef, EndpointsDef, SliceDef, SliceEndpointDef, SubsetDef,
        },
    },
};

/// The label that ties an EndpointSlice to its Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The annotation the endpoint-slice controller stamps with the time of the Pod or Service
/// change that made it rewrite the slice (Go's RFC 3339, in UTC).
pub(crate) const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

pub(crate) fn check_slice(raw: &k8s::EndpointSlice, p: &mut Problems) -> Option<SliceDef> {
    let meta = check_meta(&raw.metadata, NameRule::Subdomain, p);
    let service = raw.metadata.labels.get(SERVICE_NAME_LABEL).cloned();
    if service.is_none() {
        p.warning(
            &format!("metadata.labels.{SERVICE_NAME_LABEL}"),
            "is missing: this EndpointSlice belongs to no Service and is ignored; add the \
             label with the Service's name",
        );
    }
    let family = match raw.address_type.as_deref() {
        Some("IPv4") => Some(IpFamily::V4),
        Some("IPv6") => Some(IpFamily::V6),
        Some("FQDN") => {
            p.note(
                "addressType",
                "FQDN slices are not programmed (kube-proxy ignores them too): skipped",
            );
            None
        }
        Some(other) => {
            p.error(
                "addressType",
                format!("expected IPv4, IPv6 or FQDN, got {other:?}"),
            );
            None
        }
        None => {
            p.error("addressType", "is missing: set it to IPv4 or IPv6");
            None
        }
    };
    let mut endpoints = Vec::new();
    if let Some(family) = family {
        for (i, endpoint) in raw.endpoints.iter().enumerate() {
            if endpoint.addresses.is_empty() {
                p.error(
                    &format!("endpoints[{i}].addresses"),
                    "is empty: an endpoint needs its address",
                );
            }
            let addresses = endpoint
                .addresses
                .iter()
                .enumerate()
                .filter_map(|(j, address)| {
                    let field = format!("endpoints[{i}].addresses[{j}]");
                    let ip = parse_ip(address, &field, p)?;
                    if IpFamily::of(ip) == family {
                        return Some(ip);
                    }
                    let other = IpFamily::of(ip);
                    p.error(
                        &field,
                        format!(
                            "{address} is an {other} address in an {family} slice: move it to \
                             a slice with addressType {other}"
                        ),
                    );
                    None
                })
                .collect();
            // Kubernetes' defaults: ready nil → true; serving nil → ready; terminating nil
            // → false.
            let ready = endpoint.conditions.ready.unwrap_or(true);
            endpoints.push(SliceEndpointDef {
                addresses,
                node_name: endpoint.node_name.clone().filter(|n| !n.is_empty()),
                ready,
                serving: endpoint.conditions.serving.unwrap_or(ready),
                terminating: endpoint.conditions.terminating.unwrap_or(false),
                hints: Hints {
                    for_zones: hint_names(&endpoint.hints.for_zones),
                    for_nodes: hint_names(&endpoint.hints.for_nodes),
                },
            });
        }
    }
    let ports = check_endpoint_ports(&raw.ports, "ports", false, p);
    let trigger_time = check_trigger_time(&raw.metadata, p);
    if p.has_errors() {
        return None;
    }
    let (namespace, name) = meta?;
    Some(SliceDef {
        namespace,
        name,
        service,
        family,
        endpoints,
        ports,
        trigger_time,
    })
}

/// The slice's trigger time. A bad one is only a warning: the slice is programmed all the
/// same, its change just goes unmeasured (as in kube-proxy, which logs it and moves on).
fn check_trigger_time(meta: &k8s::ObjectMeta, p: &mut Problems) -> Option<SystemTime> {
    let value = meta.annotations.as_ref()?.get(TRIGGER_TIME_ANNOTATION)?;
    let field = format!("metadata.annotations.{TRIGGER_TIME_ANNOTATION}");
    let unmeasured = "the slice is used, but its changes are not measured in \
                      kubeproxy_network_programming_duration_seconds";
    let Some(text) = value.as_str() else {
        let written = yaml_serde::to_string(value).unwrap_or_default();
        p.warning(
            &field,
            format!(
                "expected an RFC 3339 time string like \"2026-11-22T05:00:00Z\", got {}: \
                 {unmeasured}",
                written.trim_end()
            ),
        );
        return None;
    };
    match parse_rfc3339(text) {
        Ok(time) => Some(time),
        Err(e) => {
            p.warning(
                &field,
                format!(
                    "{text:?} is not an RFC 3339 time ({e}): {unmeasured}; write it like \
                     2026-11-22T05:00:00Z"
                ),
            );
            None
        }
    }
}

/// An RFC 3339 time with its offset (`Z` or `±hh:mm`) and optional fractional seconds.
fn parse_rfc3339(text: &str) -> Result<SystemTime, String> {
    text.parse::<jiff::Timestamp>()
        .map(SystemTime::from)
        .map_err(|e| e.to_string())
}

pub(crate) fn check_endpoints(raw: &k8s::Endpoints, p: &mut Problems) -> Option<EndpointsDef> {
    let meta = check_meta(&raw.metadata, NameRule::Subdomain, p);
    let mut subsets = Vec::new();
    for (i, subset) in raw.subsets.iter().enumerate() {
        let addresses = check_addresses(&subset.addresses, &format!("subsets[{i}].addresses"), p);
        let not_ready_addresses = check_addresses(
            &subset.not_ready_addresses,
            &format!("subsets[{i}].notReadyAddresses"),
            p,
        );
        let ports = check_endpoint_ports(&subset.ports, &format!("subsets[{i}].ports"), true, p);
        subsets.push(SubsetDef {
            addresses,
            not_ready_addresses,
            ports,
        });
    }
    if p.has_errors() {
        return None;
    }
    let (namespace, name) = meta?;
    Some(EndpointsDef {
        namespace,
        name,
        subsets,
    })
}

fn check_addresses(
    addresses: &[k8s::EndpointAddress],
    field: &str,
    p: &mut Problems,
) -> Vec<AddressDef> {
    let mut defs = Vec::new();
    for (i, address) in addresses.iter().enumerate() {
        let field = format!("{field}[{i}].ip");
        let Some(ip) = address.ip.as_deref() else {
            p.error(&field, "is missing: an address needs its ip");
            continue;
        };
        if let Some(ip) = parse_ip(ip, &field, p) {
            defs.push(AddressDef {
                ip,
                node_name: address.node_name.clone().filter(|n| !n.is_empty()),
            });
        }
    }
    defs
}

/// Ports of a slice (port optional) or an Endpoints subset (port required).
fn check_endpoint_ports(
    ports: &[EndpointPort],
    field: &str,
    port_required: bool,
    p: &mut Problems,
) -> Vec<EndpointPortDef> {
    let mut defs: Vec<EndpointPortDef> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let at = |name: &str| format!("{field}[{i}].{name}");
        let number = if port_required {
            require_port(port.port, &at("port"), p)
        } else {
            check_port(port.port, &at("port"), p)
        };
        let Some(protocol) = endpoint_protocol(port.protocol, &at("protocol"), p) else {
            continue;
        };
        let name = port.name.clone().unwrap_or_default();
        if defs
            .iter()
            .any(|def| def.name == name && def.protocol == protocol)
        {
            p.error(
                &at("name"),
                format!("duplicate port name {name:?} for {protocol}: each port needs its own"),
            );
        }
        defs.push(EndpointPortDef {
            name,
            port: number,
            protocol,
        });
    }
    defs
}

/// The names of `forZones` or `forNodes`, empty ones left out.
fn hint_names(names: &[HintName]) -> Vec<String> {
    names
        .iter()
        .map(|hint| hint.name.clone())
        .filter(|name| !name.is_empty())
        .collect()
}
