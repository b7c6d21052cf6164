//! Service frontend lookup and backend selection, shared by the socket and packet paths.

use aya_ebpf::btf_maps::lpm_trie::Key;
use proxy_common::{
    Backend, SVC_F_NODEPORT, SVC_F_TWO_SCOPES, SVC_SCOPE_INTERNAL, ServiceKey, ServiceValue,
    SourceRange,
};

use crate::{
    kernel,
    maps::{self, SOURCE_RANGES},
};

/// Finds the service entry for a destination: an exact frontend (ClusterIP, external address),
/// or a NodePort when the destination is a node address (or, with `loopback_is_node`, any
/// 127.0.0.0/8 address: sockets on the node may reach NodePorts through loopback).
#[inline(always)]
pub fn lookup_frontend(
    addr: u32,
    port: u16,
    proto: u8,
    loopback_is_node: bool,
) -> Option<(ServiceKey, ServiceValue)> {
    let mut key = ServiceKey {
        addr,
        port,
        slot: 0,
        proto,
        scope: 0,
        _pad: 0,
    };
    if let Some(service) = maps::service(&key) {
        return Some((key, service));
    }
    // 127.0.0.0/8: the first octet is the first byte in memory.
    let loopback = loopback_is_node && addr.to_ne_bytes()[0] == 127;
    if !loopback && !maps::is_node_addr(addr) {
        return None;
    }
    key.addr = 0;
    let service = maps::service(&key)?;
    (service.flags & SVC_F_NODEPORT != 0).then_some((key, service))
}

/// The entry in-cluster clients use: the internal-scope one when the frontend has two scopes
/// (its backend set differs for off-node clients, as with `externalTrafficPolicy: Local`).
#[inline(always)]
pub fn for_internal_clients(
    key: ServiceKey,
    service: ServiceValue,
) -> Option<(ServiceKey, ServiceValue)> {
    if service.flags & SVC_F_TWO_SCOPES == 0 {
        return Some((key, service));
    }
    let key = ServiceKey {
        scope: SVC_SCOPE_INTERNAL,
        ..key
    };
    Some((key, maps::service(&key)?))
}

/// Whether `client` may use the frontend `service_id` under its `loadBalancerSourceRanges`.
#[inline(always)]
pub fn source_allowed(service_id: u32, client: u32) -> bool {
    // The service id's 32 bits, then the client address's.
    let key = Key::new(
        64,
        SourceRange {
            service_id,
            addr: client,
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}

/// Picks a backend uniformly among the service's `count` slots (`count` > 0); returns its id
/// and value.
#[inline(always)]
pub fn select_backend(mut key: ServiceKey, count: u16) -> Option<(u32, Backend)> {
    key.slot = (kernel::random() % u32::from(count)) as u16 + 1;
    let slot = maps::service(&key)?;
    Some((slot.backend_id, maps::backend(slot.backend_id)?))
}
