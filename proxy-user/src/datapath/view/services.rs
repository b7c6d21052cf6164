//! The services as the pinned maps hold them: every frontend with its policies and backends,
//! and the services that are listed but not programmed, of both families (`SVC_V1` and
//! `SVC6_V1` with their backends maps). Read by `sluice services`, `sluice backends`, `sluice
//! stats` and /metrics.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use anyhow::{Context as _, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proxy_common::{
    BACKEND_F_LOCAL, BACKEND_F_TERMINATING, POLICY_F_EXTERNAL_LOCAL, POLICY_F_INTERNAL_LOCAL,
    SVC_F_NO_LOCAL_ENDPOINT, SVC_F_TWO_SCOPES, SVC_KIND_CLUSTER_IP, SVC_KIND_EXTERNAL_IP,
    SVC_KIND_LOAD_BALANCER, SVC_KIND_NODE_PORT, SVC_SCOPE_DEFAULT, SVC_SCOPE_INTERNAL,
    SVC_TYPE_CLUSTER_IP, SVC_TYPE_EXTERNAL_NAME, SVC_TYPE_HEADLESS, SVC_TYPE_LOAD_BALANCER,
    SVC_TYPE_NODE_PORT, ServiceValue,
    net::{ip_from_net, ip6_from_net, port_from_net, proto_name},
};
use serde::Serialize;

use crate::datapath::Maps;

/// One frontend as the maps hold it, or one service that is not programmed.
#[derive(Debug, Serialize)]
pub struct ServiceRow {
    pub service_id: u32,
    pub name: String,
    /// The Service's type: ClusterIP, NodePort, LoadBalancer, ExternalName, Headless.
    #[serde(rename = "type")]
    pub service_type: &'static str,
    /// What this frontend is: ClusterIP, NodePort, LoadBalancer (an LB IP), ExternalIP.
    pub kind: &'static str,
    /// `ADDR:PORT` (`[ADDR]:PORT` for IPv6), or `*:PORT` for a NodePort on every IPv4 node
    /// address and `[::]:PORT` on every IPv6 one; "" when not programmed.
    pub frontend: String,
    /// `IPv4` or `IPv6` ("-" when not programmed).
    pub family: &'static str,
    pub protocol: &'static str,
    pub external_traffic_policy: &'static str,
    pub internal_traffic_policy: &'static str,
    pub health_check_node_port: Option<u16>,
    /// `loadBalancerSourceRanges` enforced on this frontend (of its family).
    pub source_ranges: Vec<IpNet>,
    pub programmed: bool,
    /// Why the service is not programmed.
    pub reason: Option<String>,
    /// No backend because a `Local` policy found none on this node: traffic is dropped.
    pub no_local_endpoint: bool,
    /// The backends new connections from off-node (and, with one scope, every client) use.
    pub backends: Vec<BackendRow>,
    /// The backends in-cluster clients use, when they differ (`externalTrafficPolicy: Local`).
    pub internal_backends: Option<Vec<BackendRow>>,
}

#[derive(Debug, Serialize)]
pub struct BackendRow {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
    pub local: bool,
    pub terminating: bool,
}

type Slots = BTreeMap<u16, ServiceValue>;

/// Reads every frontend with its backends, and every skipped service, from the maps.
pub fn read(maps: &Maps) -> Result<Vec<ServiceRow>> {
    let mut frontends: BTreeMap<(IpAddr, u16, u8), BTreeMap<u8, Slots>> = BTreeMap::new();
    let mut add = |addr: IpAddr, port, proto, scope, slot, value| {
        frontends
            .entry((addr, port, proto))
            .or_default()
            .entry(scope)
            .or_default()
            .insert(slot, value);
    };
    for entry in &maps.services {
        let (key, value) = entry.context("read the services map")?;
        let addr = ip_from_net(key.addr).into();
        add(addr, key.port, key.proto, key.scope, key.slot, value);
    }
    for entry in &maps.services6 {
        let (key, value) = entry.context("read the IPv6 services map")?;
        let addr = ip6_from_net(key.addr).into();
        add(addr, key.port, key.proto, key.scope, key.slot, value);
    }
    let mut ranges = source_ranges(maps)?;
    let mut rows = Vec::new();
    for ((addr, port, proto), scopes) in frontends {
        let Some(slots) = scopes.get(&SVC_SCOPE_DEFAULT) else {
            continue;
        };
        let Some(head) = slots.get(&0) else {
            continue; // Being written or removed right now.
        };
        let meta = maps.service_meta.get(&head.service_id, 0).ok();
        let internal_backends = (head.flags & SVC_F_TWO_SCOPES != 0)
            .then(|| {
                scopes
                    .get(&SVC_SCOPE_INTERNAL)
                    .map(|s| backends(maps, addr.is_ipv4(), s))
            })
            .flatten();
        let port = port_from_net(port);
        let frontend = match addr {
            IpAddr::V4(ip) if ip.is_unspecified() => format!("*:{port}"),
            IpAddr::V4(ip) => format!("{ip}:{port}"),
            IpAddr::V6(ip) => format!("[{ip}]:{port}"),
        };
        let policy = meta.map_or(0, |m| m.policy);
        let mut source_ranges = ranges.remove(&head.service_id).unwrap_or_default();
        source_ranges.sort_unstable();
        rows.push(ServiceRow {
            service_id: head.service_id,
            name: meta.map_or_else(|| "?".into(), |m| m.name().to_owned()),
            service_type: type_name(meta.map_or(0, |m| m.svc_type)),
            kind: kind_name(meta.map_or(0, |m| m.kind)),
            frontend,
            family: if addr.is_ipv4() { "IPv4" } else { "IPv6" },
            protocol: proto_name(proto),
            external_traffic_policy: policy_name(policy & POLICY_F_EXTERNAL_LOCAL != 0),
            internal_traffic_policy: policy_name(policy & POLICY_F_INTERNAL_LOCAL != 0),
            health_check_node_port: meta
                .map(|m| port_from_net(m.health_check_port))
                .filter(|&port| port != 0),
            source_ranges,
            programmed: true,
            reason: None,
            no_local_endpoint: head.flags & SVC_F_NO_LOCAL_ENDPOINT != 0,
            backends: backends(maps, addr.is_ipv4(), slots),
            internal_backends,
        });
    }
    for entry in &maps.skipped {
        let (key, value) = entry.context("read the skipped-services map")?;
        rows.push(ServiceRow {
            service_id: 0,
            name: key.name().to_owned(),
            service_type: type_name(value.svc_type),
            kind: "-",
            frontend: String::new(),
            family: "-",
            protocol: "-",
            external_traffic_policy: "-",
            internal_traffic_policy: "-",
            health_check_node_port: None,
            source_ranges: Vec::new(),
            programmed: false,
            reason: Some(value.reason().to_owned()),
            no_local_endpoint: false,
            backends: Vec::new(),
            internal_backends: None,
        });
    }
    rows.sort_by(|a, b| (&a.name, a.kind, &a.frontend).cmp(&(&b.name, b.kind, &b.frontend)));
    Ok(rows)
}

/// Both families' source ranges, by service id.
fn source_ranges(maps: &Maps) -> Result<HashMap<u32, Vec<IpNet>>> {
    let mut ranges: HashMap<u32, Vec<IpNet>> = HashMap::new();
    for key in maps.source_ranges.keys() {
        let key = key.context("read the source-range map")?;
        let data = key.data();
        let prefix = key.prefix_len().saturating_sub(32).min(32) as u8;
        if let Ok(net) = Ipv4Net::new(ip_from_net(data.addr), prefix) {
            ranges.entry(data.service_id).or_default().push(net.into());
        }
    }
    for key in maps.source_ranges6.keys() {
        let key = key.context("read the IPv6 source-range map")?;
        let data = key.data();
        let prefix = key.prefix_len().saturating_sub(32).min(128) as u8;
        if let Ok(net) = Ipv6Net::new(ip6_from_net(data.addr), prefix) {
            ranges.entry(data.service_id).or_default().push(net.into());
        }
    }
    Ok(ranges)
}

/// The backends in slots `1..=count` of one scope, from the frontend family's backends map.
fn backends(maps: &Maps, ipv4: bool, slots: &Slots) -> Vec<BackendRow> {
    let count = slots.get(&0).map_or(0, |head| head.count);
    (1..=count)
        .filter_map(|slot| {
            let value = slots.get(&slot)?;
            let (addr, port, flags) = if ipv4 {
                let backend = maps.backends.get(&value.backend_id, 0).ok()?;
                (
                    ip_from_net(backend.addr).into(),
                    backend.port,
                    backend.flags,
                )
            } else {
                let backend = maps.backends6.get(&value.backend_id, 0).ok()?;
                (
                    ip6_from_net(backend.addr).into(),
                    backend.port,
                    backend.flags,
                )
            };
            Some(BackendRow {
                id: value.backend_id,
                addr,
                port: port_from_net(port),
                local: flags & BACKEND_F_LOCAL != 0,
                terminating: flags & BACKEND_F_TERMINATING != 0,
            })
        })
        .collect()
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        SVC_KIND_CLUSTER_IP => "ClusterIP",
        SVC_KIND_NODE_PORT => "NodePort",
        SVC_KIND_LOAD_BALANCER => "LoadBalancer",
        SVC_KIND_EXTERNAL_IP => "ExternalIP",
        _ => "?",
    }
}

fn type_name(svc_type: u8) -> &'static str {
    match svc_type {
        SVC_TYPE_CLUSTER_IP => "ClusterIP",
        SVC_TYPE_NODE_PORT => "NodePort",
        SVC_TYPE_LOAD_BALANCER => "LoadBalancer",
        SVC_TYPE_EXTERNAL_NAME => "ExternalName",
        SVC_TYPE_HEADLESS => "Headless",
        _ => "?",
    }
}

fn policy_name(local: bool) -> &'static str {
    if local { "Local" } else { "Cluster" }
}
