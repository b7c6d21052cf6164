//! `sluice conntrack`: the flows the packet path tracks, one row per flow: new ones (`CT_V1`,
//! `CT6_V1`) and confirmed ones (`CT_EST_V1`, `CT6_EST_V1`), told apart by the TIER column.

use std::{collections::HashSet, hash::Hash, net::IpAddr, path::Path, time::Duration};

use anyhow::Result;
use aya::maps::{HashMap as BpfHashMap, MapData};
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
    /// `new` (the LRU map of unconfirmed flows, which a flood of new flows may evict) or
    /// `established` (confirmed by a reply: never evicted).
    pub tier: &'static str,
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
    tier_rows(
        maps,
        filter,
        now,
        &maps.conntrack_established,
        &maps.conntrack,
        |ip| ip_from_net(ip).into(),
        &mut rows,
    )?;
    tier_rows(
        maps,
        filter,
        now,
        &maps.conntrack_established6,
        &maps.conntrack6,
        |ip| ip6_from_net(ip).into(),
        &mut rows,
    )?;
    rows.sort_by(|a, b| (&a.service, &a.client).cmp(&(&b.service, &b.client)));
    Ok(rows)
}

/// The rows of one family's flows, confirmed ones first. A flow being confirmed is in both
/// maps for a moment: shown once, as established.
fn tier_rows<A: Copy + Eq + Hash>(
    maps: &Maps,
    filter: &Filter,
    now: u64,
    established: &BpfHashMap<MapData, CtKeyOf<A>, CtEntryOf<A>>,
    new: &BpfHashMap<MapData, CtKeyOf<A>, CtEntryOf<A>>,
    ip: fn(A) -> IpAddr,
    rows: &mut Vec<FlowRow>,
) -> Result<()>
where
    CtKeyOf<A>: aya::Pod,
    CtEntryOf<A>: aya::Pod,
{
    let mut confirmed = HashSet::new();
    for entry in established {
        let (key, flow) = entry?;
        confirmed.insert(key);
        rows.extend(flow_row(
            maps,
            filter,
            now,
            TIER_ESTABLISHED,
            &key,
            &flow,
            ip,
        ));
    }
    for entry in new {
        let (key, flow) = entry?;
        if !confirmed.contains(&key) {
            rows.extend(flow_row(maps, filter, now, TIER_NEW, &key, &flow, ip));
        }
    }
    Ok(())
}

const TIER_NEW: &str = "new";
const TIER_ESTABLISHED: &str = "established";

/// The row of one conntrack entry of either family (from the map `tier` names), if it is a
/// forward entry `filter` keeps.
fn flow_row<A: Copy>(
    maps: &Maps,
    filter: &Filter,
    now: u64,
    tier: &'static str,
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
        tier,
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
            "PROTO", "CLIENT", "FRONTEND", "BACKEND", "SNAT", "SERVICE", "STATE", "TIER", "IDLE",
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
                row.tier.to_owned(),
                format!("{:.1}s", row.idle_seconds),
            ]
        },
    )
}
