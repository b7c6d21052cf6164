//! `sluice services`: every programmed frontend with its backends, read from the pins.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use anyhow::{Context as _, Result};
use proxy_common::{
    BACKEND_F_LOCAL, BACKEND_F_TERMINATING, SVC_KIND_CLUSTER_IP, SVC_KIND_EXTERNAL_IP,
    SVC_KIND_LOAD_BALANCER, SVC_KIND_NODE_PORT, ServiceKey, ServiceValue,
    net::{ip_from_net, port_from_net, proto_name},
};
use serde::Serialize;

use super::{Output, print_table};
use crate::datapath::Maps;

/// One frontend as the maps hold it.
#[derive(Debug, Serialize)]
pub struct ServiceRow {
    pub service_id: u32,
    pub name: String,
    pub kind: &'static str,
    /// `ADDR:PORT`, or `*:PORT` for a NodePort (every node address).
    pub frontend: String,
    pub protocol: &'static str,
    pub backends: Vec<BackendRow>,
}

#[derive(Debug, Serialize)]
pub struct BackendRow {
    pub id: u32,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub local: bool,
    pub terminating: bool,
}

/// Reads every frontend and its backends from the maps.
pub fn read(maps: &Maps) -> Result<Vec<ServiceRow>> {
    let mut frontends: BTreeMap<(u32, u16, u8), BTreeMap<u16, ServiceValue>> = BTreeMap::new();
    for entry in maps.services.iter() {
        let (key, value): (ServiceKey, ServiceValue) = entry.context("read the services map")?;
        frontends
            .entry((key.addr, key.port, key.proto))
            .or_default()
            .insert(key.slot, value);
    }
    let mut rows = Vec::new();
    for ((addr, port, proto), slots) in frontends {
        let Some(head) = slots.get(&0) else {
            continue; // Being written or removed right now.
        };
        let meta = maps.service_meta.get(&head.service_id, 0).ok();
        let mut backends = Vec::new();
        for slot in 1..=head.count {
            let Some(value) = slots.get(&slot) else {
                continue;
            };
            if let Ok(backend) = maps.backends.get(&value.backend_id, 0) {
                backends.push(BackendRow {
                    id: value.backend_id,
                    addr: ip_from_net(backend.addr),
                    port: port_from_net(backend.port),
                    local: backend.flags & BACKEND_F_LOCAL != 0,
                    terminating: backend.flags & BACKEND_F_TERMINATING != 0,
                });
            }
        }
        let frontend = if addr == 0 {
            format!("*:{}", port_from_net(port))
        } else {
            format!("{}:{}", ip_from_net(addr), port_from_net(port))
        };
        rows.push(ServiceRow {
            service_id: head.service_id,
            name: meta.map_or_else(|| "?".into(), |m| m.name().to_owned()),
            kind: kind_name(meta.map_or(0, |m| m.kind)),
            frontend,
            protocol: proto_name(proto),
            backends,
        });
    }
    rows.sort_by(|a, b| (&a.name, a.kind, &a.frontend).cmp(&(&b.name, b.kind, &b.frontend)));
    Ok(rows)
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

pub fn run(pin_dir: &Path, output: Output) -> Result<()> {
    let maps = Maps::open_pinned(pin_dir)?;
    let rows = read(&maps)?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table => {
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|row| {
                    let backends = if row.backends.is_empty() {
                        "(none: refused)".to_owned()
                    } else {
                        row.backends
                            .iter()
                            .map(|b| {
                                let mut s = format!("{}:{}", b.addr, b.port);
                                if b.local {
                                    s.push_str(" local");
                                }
                                if b.terminating {
                                    s.push_str(" terminating");
                                }
                                s
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    vec![
                        row.name.clone(),
                        row.kind.to_owned(),
                        row.frontend.clone(),
                        row.protocol.to_owned(),
                        backends,
                    ]
                })
                .collect();
            print_table(
                &["SERVICE", "TYPE", "FRONTEND", "PROTO", "BACKENDS"],
                &table,
            );
        }
    }
    Ok(())
}
