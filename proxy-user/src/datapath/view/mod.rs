//! Typed read views of the pinned maps: what the CLI prints and /metrics exports, read the
//! same way for both.

pub mod services;
pub mod stats;

use std::net::IpAddr;

use anyhow::{Context as _, Result};
use proxy_common::net::{ip_from_net, ip6_from_net, port_from_net};

use crate::datapath::Maps;

/// One entry of either family's backends map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendEntry {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
    /// `BACKEND_F_*`.
    pub flags: u8,
}

/// Every backend of `BACKEND_V1` and `BACKEND6_V1` (one id space), by id.
pub fn all_backends(maps: &Maps) -> Result<Vec<BackendEntry>> {
    let mut out = Vec::new();
    for entry in &maps.backends {
        let (id, backend) = entry.context("read the backends map")?;
        out.push(BackendEntry {
            id,
            addr: ip_from_net(backend.addr).into(),
            port: port_from_net(backend.port),
            flags: backend.flags,
        });
    }
    for entry in &maps.backends6 {
        let (id, backend) = entry.context("read the IPv6 backends map")?;
        out.push(BackendEntry {
            id,
            addr: ip6_from_net(backend.addr).into(),
            port: port_from_net(backend.port),
            flags: backend.flags,
        });
    }
    out.sort_by_key(|backend| backend.id);
    Ok(out)
}

/// `addr:port`, with an IPv6 address in brackets.
pub fn socket(addr: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(addr, port).to_string()
}
