//! Service frontend lookup and backend selection, shared by the socket and packet paths of
//! both families.

use proxy_common::{
    BackendOf, SVC_ADDR_CLUSTER_IP, SVC_F_NO_LOCAL_ENDPOINT, SVC_F_NODEPORT, SVC_F_SOURCE_RANGES,
    SVC_F_TWO_SCOPES, SVC_SCOPE_INTERNAL, ServiceKeyOf, ServiceValue,
};

use crate::{error::Error, family::Family, kernel};

/// Finds the service entry for a destination: an exact frontend (ClusterIP, external address),
/// or a NodePort when the destination is a node address (or, with `loopback_is_node`, a
/// loopback address: sockets on the node may reach NodePorts through loopback).
#[inline(always)]
pub fn lookup_frontend<F: Family>(
    addr: F::Addr,
    port: u16,
    proto: u8,
    loopback_is_node: bool,
) -> Option<(ServiceKeyOf<F::Addr>, ServiceValue)> {
    let mut key = ServiceKeyOf {
        addr,
        port,
        slot: 0,
        proto,
        scope: 0,
        _pad: 0,
    };
    if let Some(service) = F::service(&key) {
        return Some((key, service));
    }
    let loopback = loopback_is_node && F::is_loopback(&addr);
    if !loopback && !F::is_node_addr(&addr) {
        return None;
    }
    key.addr = F::Addr::default();
    let service = F::service(&key)?;
    (service.flags & SVC_F_NODEPORT != 0).then_some((key, service))
}

/// Why a destination without a frontend is refused, when it is a service address: a cluster
/// IP on a port none of its frontends serves, or a service CIDR address no Service holds.
/// `None`: not a service address, not ours.
#[inline(always)]
pub fn unserved<F: Family>(addr: F::Addr) -> Option<Error> {
    Some(match F::service_addr(addr)? {
        SVC_ADDR_CLUSTER_IP => Error::UnservedPort,
        _ => Error::UnallocatedServiceIp,
    })
}

/// The entry in-cluster clients use: the internal-scope one when the frontend has two scopes
/// (its backend set differs for off-node clients, as with `externalTrafficPolicy: Local`).
#[inline(always)]
pub fn for_internal_clients<F: Family>(
    key: ServiceKeyOf<F::Addr>,
    service: ServiceValue,
) -> Option<(ServiceKeyOf<F::Addr>, ServiceValue)> {
    if service.flags & SVC_F_TWO_SCOPES == 0 {
        return Some((key, service));
    }
    let key = ServiceKeyOf {
        scope: SVC_SCOPE_INTERNAL,
        ..key
    };
    Some((key, F::service(&key)?))
}

/// Whether `client` may use the frontend `service_id` under its `loadBalancerSourceRanges`.
#[inline(always)]
fn source_allowed<F: Family>(service_id: u32, client: F::Addr) -> bool {
    F::source_range_matches(service_id, client)
}

/// Whether a new packet-path flow from `client` may use `service`: its source ranges, and an
/// endpoint to choose (none: refused; none local under a `Local` policy: dropped).
#[inline(always)]
pub fn admit<F: Family>(service: &ServiceValue, client: F::Addr) -> Result<(), Error> {
    if service.flags & SVC_F_SOURCE_RANGES != 0 && !source_allowed::<F>(service.service_id, client)
    {
        return Err(Error::SourceRangeDenied);
    }
    if service.count == 0 {
        return Err(if service.flags & SVC_F_NO_LOCAL_ENDPOINT != 0 {
            Error::NoLocalEndpoint
        } else {
            Error::NoEndpoints
        });
    }
    Ok(())
}

/// Picks a backend uniformly among the service's `count` slots (`count` > 0); returns its id
/// and value.
#[inline(always)]
pub fn select_backend<F: Family>(
    mut key: ServiceKeyOf<F::Addr>,
    count: u16,
) -> Option<(u32, BackendOf<F::Addr>)> {
    key.slot = (kernel::random() % u32::from(count)) as u16 + 1;
    let slot = F::service(&key)?;
    Some((slot.backend_id, F::backend(slot.backend_id)?))
}
