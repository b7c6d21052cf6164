//! `sluice affinity`: the session-affinity entries (service, client, backend, age), read from
//! the pins.

use std::{collections::HashMap, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use proxy_common::{
    AFFINITY_CLIENT_IP, AFFINITY_CLIENT_NETNS, AffinityKey, AffinityValue, ServiceKey,
    ServiceValue,
    net::{ip_from_net, port_from_net, proto_name},
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
    /// The address, or the netns cookie in decimal.
    pub client: String,
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

/// Reads every affinity entry, sorted by service, client kind and client.
pub fn read(maps: &Maps) -> Result<Vec<AffinityRow>> {
    let mut frontends: HashMap<u32, (ServiceKey, ServiceValue)> = HashMap::new();
    for entry in &maps.services {
        let (key, value) = entry.context("read the services map")?;
        if key.slot == 0 {
            frontends.insert(value.service_id, (key, value));
        }
    }
    let now = monotonic_ns();
    let mut rows = Vec::new();
    for entry in &maps.affinity {
        let (key, value): (AffinityKey, AffinityValue) = entry.context("read the affinity map")?;
        let frontend = frontends.get(&key.service_id);
        let timeout = frontend.map_or(0, |(_, service)| service.affinity_timeout);
        let age = now.saturating_sub(value.last_used_ns);
        let service = maps
            .service_meta
            .get(&key.service_id, 0)
            .map_or_else(|_| "?".to_owned(), |meta| meta.name().to_owned());
        let backend = maps.backends.get(&value.backend_id, 0).map_or_else(
            |_| "?".to_owned(),
            |b| format!("{}:{}", ip_from_net(b.addr), port_from_net(b.port)),
        );
        rows.push(AffinityRow {
            service_id: key.service_id,
            service,
            frontend: frontend.map_or_else(|| "?".to_owned(), |(key, _)| frontend_name(key)),
            client_kind: client_kind(key.client_kind),
            client: client_name(&key),
            backend_id: value.backend_id,
            backend,
            age_seconds: Duration::from_nanos(age).as_secs_f64(),
            timeout_seconds: timeout,
            expired: timeout == 0 || age > u64::from(timeout) * 1_000_000_000,
        });
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
