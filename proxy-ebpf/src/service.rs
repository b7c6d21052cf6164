//! Service frontend lookup and backend selection, shared by the socket and packet paths.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use proxy_common::{Backend, SVC_F_NODEPORT, ServiceKey, ServiceValue};

use crate::maps::{BACKENDS, NODE_ADDRS, SERVICES};

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
    // SAFETY: copied out at once.
    if let Some(service) = unsafe { SERVICES.get(key) } {
        return Some((key, *service));
    }
    // 127.0.0.0/8: the first octet is the first byte in memory.
    let loopback = loopback_is_node && addr.to_ne_bytes()[0] == 127;
    // SAFETY: only the presence of the key matters.
    if !loopback && unsafe { NODE_ADDRS.get(addr) }.is_none() {
        return None;
    }
    key.addr = 0;
    // SAFETY: copied out at once.
    let service = unsafe { SERVICES.get(key) }?;
    (service.flags & SVC_F_NODEPORT != 0).then_some((key, *service))
}

/// Picks a backend uniformly among the service's `count` slots (`count` > 0); returns its id
/// and value.
#[inline(always)]
pub fn select_backend(mut key: ServiceKey, count: u16) -> Option<(u32, Backend)> {
    // SAFETY: a plain helper call with no arguments.
    let random = unsafe { bpf_get_prandom_u32() };
    key.slot = (random % u32::from(count)) as u16 + 1;
    // SAFETY: copied out at once.
    let slot = unsafe { SERVICES.get(key) }?;
    // SAFETY: copied out at once.
    let backend = unsafe { BACKENDS.get(slot.backend_id) }?;
    Some((slot.backend_id, *backend))
}
