//! `sluice conntrack`: the flows the packet path tracks, one row per flow.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use anyhow::Result;
use proxy_common::{
    CT_DIR_FORWARD, CT_F_SNAT, CtEntry, CtKey, TCP_STATE_CLOSING, TCP_STATE_ESTABLISHED,
    TCP_STATE_SYN,
    net::{ip_from_net, port_from_net, proto_name},
};
use serde::Serialize;

use super::{Output, print_rows};
use crate::datapath::{Maps, clock::monotonic_ns};

#[derive(Debug, Serialize)]
pub struct FlowRow {
    pub protocol: &'static str,
    pub client: String,
    pub frontend: String,
    pub backend: String,
    /// The node address and port the flow was source-NATed to (remote backends).
    pub snat: Option<String>,
    pub service: String,
    pub state: &'static str,
    /// Seconds since the flow's last packet.
    pub idle_seconds: f64,
}

/// Which flows to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Service name prefix: `namespace/name` or `namespace/name:port`.
    pub service: Option<String>,
    pub client: Option<Ipv4Addr>,
}

pub fn read(maps: &Maps, filter: &Filter) -> Result<Vec<FlowRow>> {
    let now = monotonic_ns();
    let mut rows = Vec::new();
    for entry in &maps.conntrack {
        let (key, flow): (CtKey, CtEntry) = entry?;
        // Each flow has one forward entry; the reply entry only mirrors it.
        if key.dir != CT_DIR_FORWARD {
            continue;
        }
        let client = ip_from_net(key.saddr);
        if filter.client.is_some_and(|wanted| wanted != client) {
            continue;
        }
        let service = maps.service_meta.get(&flow.service_id, 0).map_or_else(
            |_| format!("id {}", flow.service_id),
            |m| m.name().to_owned(),
        );
        if let Some(prefix) = &filter.service
            && !service.starts_with(prefix.as_str())
        {
            continue;
        }
        let snat = (flow.flags & CT_F_SNAT != 0).then(|| addr(flow.new_saddr, flow.new_sport));
        rows.push(FlowRow {
            protocol: proto_name(key.proto),
            client: addr(key.saddr, key.sport),
            frontend: addr(key.daddr, key.dport),
            backend: addr(flow.new_daddr, flow.new_dport),
            snat,
            service,
            state: state_name(key.proto, flow.tcp_state),
            idle_seconds: Duration::from_nanos(now.saturating_sub(flow.last_seen_ns)).as_secs_f64(),
        });
    }
    rows.sort_by(|a, b| (&a.service, &a.client).cmp(&(&b.service, &b.client)));
    Ok(rows)
}

fn addr(ip: u32, port: u16) -> String {
    format!("{}:{}", ip_from_net(ip), port_from_net(port))
}

fn state_name(proto: u8, state: u8) -> &'static str {
    if proto != proxy_common::IPPROTO_TCP {
        return "-";
    }
    match state {
        TCP_STATE_SYN => "syn",
        TCP_STATE_ESTABLISHED => "established",
        TCP_STATE_CLOSING => "closing",
        _ => "?",
    }
}

pub fn run(pin_dir: &Path, output: Output, filter: &Filter) -> Result<()> {
    let rows = read(&Maps::open_pinned(pin_dir)?, filter)?;
    print_rows(
        &rows,
        output,
        &[
            "PROTO", "CLIENT", "FRONTEND", "BACKEND", "SNAT", "SERVICE", "STATE", "IDLE",
        ],
        |row| {
            vec![
                row.protocol.to_owned(),
                row.client.clone(),
                row.frontend.clone(),
                row.backend.clone(),
                row.snat.clone().unwrap_or_else(|| "-".into()),
                row.service.clone(),
                row.state.to_owned(),
                format!("{:.1}s", row.idle_seconds),
            ]
        },
    )
}
