//! The per-family maps seen from the write path: a frontend's or backend's entries of either
//! family, and the family's own table of each kind, so every step of the write order is one
//! generic call per family instead of a copy per family.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Result, bail};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proxy_common::{
    Addr6, BackendOf, ServiceKey, ServiceKey6, ServiceKeyOf, ServiceValue,
    net::{ip_to_net, ip6_to_net, port_from_net, port_to_net},
};

use super::super::{
    plan::{BackendAddr, Frontend},
    tables::{MapAddr, ServiceTables, Table},
};
use crate::model::Protocol;

/// A family's address field with its maps: `u32` for IPv4, `Addr6` for IPv6.
pub(super) trait Family: MapAddr {
    /// The network type of the family's source ranges.
    type Net: Copy + std::fmt::Display + PartialEq;

    fn services(maps: &mut dyn ServiceTables) -> &mut dyn Table<ServiceKeyOf<Self>, ServiceValue>;
    fn backends(maps: &mut dyn ServiceTables) -> &mut dyn Table<u32, BackendOf<Self>>;
    fn source_ranges(maps: &mut dyn ServiceTables) -> &mut dyn Table<(u32, Self::Net), ()>;
    fn ip_net(net: Self::Net) -> IpNet;
}

impl Family for u32 {
    type Net = Ipv4Net;

    fn services(maps: &mut dyn ServiceTables) -> &mut dyn Table<ServiceKey, ServiceValue> {
        maps.services()
    }
    fn backends(maps: &mut dyn ServiceTables) -> &mut dyn Table<u32, BackendOf<u32>> {
        maps.backends()
    }
    fn source_ranges(maps: &mut dyn ServiceTables) -> &mut dyn Table<(u32, Ipv4Net), ()> {
        maps.source_ranges()
    }
    fn ip_net(net: Ipv4Net) -> IpNet {
        net.into()
    }
}

impl Family for Addr6 {
    type Net = Ipv6Net;

    fn services(maps: &mut dyn ServiceTables) -> &mut dyn Table<ServiceKey6, ServiceValue> {
        maps.services6()
    }
    fn backends(maps: &mut dyn ServiceTables) -> &mut dyn Table<u32, BackendOf<Addr6>> {
        maps.backends6()
    }
    fn source_ranges(maps: &mut dyn ServiceTables) -> &mut dyn Table<(u32, Ipv6Net), ()> {
        maps.source_ranges6()
    }
    fn ip_net(net: Ipv6Net) -> IpNet {
        net.into()
    }
}

/// A services-map key of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AnyServiceKey {
    V4(ServiceKey),
    V6(ServiceKey6),
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "slots are 0..=count, and `write_frontend` refuses a count past u16::MAX"
)]
pub(super) fn service_key(frontend: Frontend, slot: usize) -> AnyServiceKey {
    fn key<A: MapAddr>(addr: A, frontend: Frontend, slot: u16) -> ServiceKeyOf<A> {
        ServiceKeyOf {
            addr,
            port: port_to_net(frontend.port),
            slot,
            proto: frontend.protocol.ip_proto(),
            scope: frontend.scope,
            _pad: 0,
        }
    }
    let slot = slot as u16;
    match frontend.addr {
        IpAddr::V4(ip) => AnyServiceKey::V4(key(ip_to_net(ip), frontend, slot)),
        IpAddr::V6(ip) => AnyServiceKey::V6(key(ip6_to_net(ip), frontend, slot)),
    }
}

/// The frontend a services-map key of either family belongs to; `None` for a protocol the
/// reconciler never writes.
pub(super) fn frontend_of<A: MapAddr>(key: &ServiceKeyOf<A>) -> Option<Frontend> {
    let protocol = match key.proto {
        proxy_common::IPPROTO_TCP => Protocol::Tcp,
        proxy_common::IPPROTO_UDP => Protocol::Udp,
        _ => return None,
    };
    Some(Frontend {
        addr: key.addr.ip(),
        port: port_from_net(key.port),
        protocol,
        scope: key.scope,
    })
}

pub(super) fn backend_addr<A: MapAddr>(backend: &BackendOf<A>) -> BackendAddr {
    BackendAddr {
        addr: backend.addr.ip(),
        port: port_from_net(backend.port),
    }
}

/// The backends-map value of `addr` in its family.
pub(super) fn backend_value<A: MapAddr>(addr: BackendAddr, flags: u8) -> Option<BackendOf<A>> {
    Some(BackendOf {
        addr: A::from_ip(addr.addr)?,
        port: port_to_net(addr.port),
        flags,
        _pad: 0,
    })
}

/// `addr:port` of a backends-map value, for messages.
pub(super) fn backend_socket<A: MapAddr>(backend: &BackendOf<A>) -> SocketAddr {
    SocketAddr::new(backend.addr.ip(), port_from_net(backend.port))
}

/// Removes one services-map key from its family's table.
pub(super) fn remove_service_key(maps: &mut dyn ServiceTables, key: AnyServiceKey) -> Result<()> {
    match key {
        AnyServiceKey::V4(key) => maps.services().remove(&key),
        AnyServiceKey::V6(key) => maps.services6().remove(&key),
    }
}

/// Removes one source range from its family's table.
pub(super) fn remove_range(
    maps: &mut dyn ServiceTables,
    service_id: u32,
    net: IpNet,
) -> Result<()> {
    match net {
        IpNet::V4(net) => maps.source_ranges().remove(&(service_id, net)),
        IpNet::V6(net) => maps.source_ranges6().remove(&(service_id, net)),
    }
}

/// Checks that a frontend's source range is of the frontend's family (the plan keeps them so).
pub(super) fn check_range_family(frontend: &Frontend, net: &IpNet) -> Result<()> {
    if frontend.addr.is_ipv4() != matches!(net, IpNet::V4(_)) {
        bail!(
            "source range {net} is not of the family of frontend {}",
            frontend.addr
        );
    }
    Ok(())
}
