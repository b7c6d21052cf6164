//! `sluice affinity`: the session-affinity entries (service, client, backend, age), read from
//! the pins.

use std::{collections::HashMap, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use proxy_common::{
    AFFINITY_CLIENT_IP, AFFINITY_CLIENT_NETNS, AffinityKey, AffinityKey6, AffinityValue,
    ServiceKey, ServiceKey6,
    net::{ip_from_net, ip6_from_net, port_from_net, proto_name},
};
use serde::Serialize;

use super::{Output, print_rows};
use crate::datapath::{Maps, clock::monotonic_ns};

/// One affinity entry as the maps hold it.
#[derive(Debug, Serialize)]
pub struct AffinityRow {
    pub service_id: u32,
    /// `namespace/name:port-name`; "?" when the frontend is gone.
    pub service: String,
    /// `ADDR:PORT/PROTO`, or `*:PORT/PROTO` for a NodePort; "?" when the frontend is gone.
    pub frontend: String,
    /// `ip` (packet path: the source address) or `netns` (socket path: the client's network
    /// namespace cookie).
    pub client_kind: &'static str,
    /// The address (IPv4 from `AFFINITY_V1`, IPv6 from `AFFINITY6_V1`), or the netns cookie in
    /// decimal.
    pub client: String,
    /// `ipv4` or `ipv6` for an `ip` client (which map holds it); absent for a netns client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<&'static str>,
    pub backend_id: u32,
    /// `ADDR:PORT`; "?" when the backend is gone.
    pub backend: String,
    /// Seconds since the last new connection used the entry.
    pub age_seconds: f64,
    /// The frontend's timeout now (0: affinity off).
    pub timeout_seconds: u32,
    /// Older than the timeout, or its frontend has no affinity: the datapath ignores it.
    pub expired: bool,
}

/// Reads every affinity entry of both maps (`AFFINITY_V1`: IPv4 and netns clients,
/// `AFFINITY6_V1`: IPv6 clients of the packet path), sorted by service, client kind and client.
pub fn read(maps: &Maps) -> Result<Vec<AffinityRow>> {
    // Service ids are unique across families, so one map holds the frontends of both.
    let mut frontends: HashMap<u32, (String, u32)> = HashMap::new();
    for entry in &maps.services {
        let (key, value) = entry.context("read the services map")?;
        if key.slot == 0 {
            frontends.insert(
                value.service_id,
                (frontend_name(&key), value.affinity_timeout),
            );
        }
    }
    for entry in &maps.services6 {
        let (key, value) = entry.context("read the IPv6 services map")?;
        if key.slot == 0 {
            frontends.insert(
                value.service_id,
                (frontend_name6(&key), value.affinity_timeout),
            );
        }
    }
    let now = monotonic_ns();
    let row = |service_id: u32,
               client_kind: &'static str,
               client: String,
               family: Option<&'static str>,
               value: &AffinityValue| {
        let frontend = frontends.get(&service_id);
        let timeout = frontend.map_or(0, |(_, timeout)| *timeout);
        let age = now.saturating_sub(value.last_used_ns);
        AffinityRow {
            service_id,
            service: maps
                .service_meta
                .get(&service_id, 0)
                .map_or_else(|_| "?".to_owned(), |meta| meta.name().to_owned()),
            frontend: frontend.map_or_else(|| "?".to_owned(), |(name, _)| name.clone()),
            client_kind,
            client,
            family,
            backend_id: value.backend_id,
            backend: backend_name(maps, value.backend_id),
            age_seconds: Duration::from_nanos(age).as_secs_f64(),
            timeout_seconds: timeout,
            expired: timeout == 0 || age > u64::from(timeout) * 1_000_000_000,
        }
    };
    let mut rows = Vec::new();
    for entry in &maps.affinity {
        let (key, value): (AffinityKey, AffinityValue) = entry.context("read the affinity map")?;
        let family = (key.client_kind == AFFINITY_CLIENT_IP).then_some("ipv4");
        rows.push(row(
            key.service_id,
            client_kind(key.client_kind),
            client_name(&key),
            family,
            &value,
        ));
    }
    for entry in &maps.affinity6 {
        let (key, value): (AffinityKey6, AffinityValue) =
            entry.context("read the IPv6 affinity map")?;
        rows.push(row(
            key.service_id,
            client_kind(key.client_kind),
            ip6_from_net(key.client).to_string(),
            Some("ipv6"),
            &value,
        ));
    }
    rows.sort_by(|a, b| {
        (&a.service, &a.frontend, a.client_kind, &a.client).cmp(&(
            &b.service,
            &b.frontend,
            b.client_kind,
            &b.client,
        ))
    });
    Ok(rows)
}

/// `ADDR:PORT` of a backend of either family (`[ADDR]:PORT` for IPv6); "?" when it is gone.
fn backend_name(maps: &Maps, id: u32) -> String {
    if let Ok(b) = maps.backends.get(&id, 0) {
        return format!("{}:{}", ip_from_net(b.addr), port_from_net(b.port));
    }
    maps.backends6.get(&id, 0).map_or_else(
        |_| "?".to_owned(),
        |b| format!("[{}]:{}", ip6_from_net(b.addr), port_from_net(b.port)),
    )
}

/// `[ADDR]:PORT/PROTO`, or `[::]:PORT/PROTO` for an IPv6 NodePort.
fn frontend_name6(key: &ServiceKey6) -> String {
    format!(
        "[{}]:{}/{}",
        ip6_from_net(key.addr),
        port_from_net(key.port),
        proto_name(key.proto)
    )
}

fn frontend_name(key: &ServiceKey) -> String {
    let port = port_from_net(key.port);
    let proto = proto_name(key.proto);
    if key.addr == 0 {
        format!("*:{port}/{proto}")
    } else {
        format!("{}:{port}/{proto}", ip_from_net(key.addr))
    }
}

fn client_kind(kind: u8) -> &'static str {
    match kind {
        AFFINITY_CLIENT_IP => "ip",
        AFFINITY_CLIENT_NETNS => "netns",
        _ => "?",
    }
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "an IP client's high 32 bits are zero"
)]
fn client_name(key: &AffinityKey) -> String {
    match key.client_kind {
        // The address's network-order bytes sit in the low 32 bits.
        AFFINITY_CLIENT_IP => ip_from_net(key.client as u32).to_string(),
        _ => key.client.to_string(),
    }
}

pub fn run(pin_dir: &Path, output: Output) -> Result<()> {
    let maps = Maps::open_pinned(pin_dir)?;
    let rows = read(&maps)?;
    print_rows(
        &rows,
        output,
        &["SERVICE", "FRONTEND", "CLIENT", "BACKEND", "AGE", "TIMEOUT"],
        |row| {
            let client = match row.client_kind {
                "netns" => format!("netns:{}", row.client),
                _ => row.client.clone(),
            };
            let mut age = format!("{:.1}s", row.age_seconds);
            if row.expired {
                age.push_str(" (expired)");
            }
            vec![
                row.service.clone(),
                row.frontend.clone(),
                client,
                row.backend.clone(),
                age,
                format!("{}s", row.timeout_seconds),
            ]
        },
    )
}
