//! `sluice conntrack`: the flows the packet path tracks (`CT_V1` and `CT6_V1`), one row per
//! flow.

use std::{net::IpAddr, path::Path, time::Duration};

use anyhow::Result;
use proxy_common::{
    CT_DIR_FORWARD, CT_F_SNAT, CtEntryOf, CtKeyOf, TCP_STATE_CLOSING, TCP_STATE_ESTABLISHED,
    TCP_STATE_SYN,
    net::{ip_from_net, ip6_from_net, port_from_net, proto_name},
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
    pub client: Option<IpAddr>,
}

pub fn read(maps: &Maps, filter: &Filter) -> Result<Vec<FlowRow>> {
    let now = monotonic_ns();
    let mut rows = Vec::new();
    for entry in &maps.conntrack {
        let (key, flow) = entry?;
        if let Some(row) = flow_row(maps, filter, now, &key, &flow, |ip| ip_from_net(ip).into()) {
            rows.push(row);
        }
    }
    for entry in &maps.conntrack6 {
        let (key, flow) = entry?;
        if let Some(row) = flow_row(maps, filter, now, &key, &flow, |ip| ip6_from_net(ip).into()) {
            rows.push(row);
        }
    }
    rows.sort_by(|a, b| (&a.service, &a.client).cmp(&(&b.service, &b.client)));
    Ok(rows)
}

/// The row of one conntrack entry of either family, if it is a forward entry `filter` keeps.
fn flow_row<A: Copy>(
    maps: &Maps,
    filter: &Filter,
    now: u64,
    key: &CtKeyOf<A>,
    flow: &CtEntryOf<A>,
    ip: fn(A) -> IpAddr,
) -> Option<FlowRow> {
    let addr =
        |addr: A, port: u16| std::net::SocketAddr::new(ip(addr), port_from_net(port)).to_string();
    // Each flow has one forward entry; the reply entry only mirrors it.
    if key.dir != CT_DIR_FORWARD {
        return None;
    }
    let client = ip(key.saddr);
    if filter.client.is_some_and(|wanted| wanted != client) {
        return None;
    }
    let service = maps.service_meta.get(&flow.service_id, 0).map_or_else(
        |_| format!("id {}", flow.service_id),
        |m| m.name().to_owned(),
    );
    if let Some(prefix) = &filter.service
        && !service.starts_with(prefix.as_str())
    {
        return None;
    }
    let snat = (flow.flags & CT_F_SNAT != 0).then(|| addr(flow.new_saddr, flow.new_sport));
    Some(FlowRow {
        protocol: proto_name(key.proto),
        client: addr(key.saddr, key.sport),
        frontend: addr(key.daddr, key.dport),
        backend: addr(flow.new_daddr, flow.new_dport),
        snat,
        service,
        state: state_name(key.proto, flow.tcp_state),
        idle_seconds: Duration::from_nanos(now.saturating_sub(flow.last_seen_ns)).as_secs_f64(),
    })
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
