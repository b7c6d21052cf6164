//! ClientIP session affinity, shared by the socket and packet paths: a client that connected
//! to a frontend within its timeout goes back to the same backend, as long as that backend
//! still serves the frontend.

use proxy_common::{
    AFFINITY_CLIENT_IP, AFFINITY_CLIENT_NETNS, AffinityKey, AffinityMatchKey, AffinityValue,
    Backend, ServiceKey, ServiceValue,
};

use crate::{
    kernel,
    maps::{self, AFFINITY},
    service::select_backend,
};

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Who a client is for affinity: a source address or a network namespace.
#[derive(Clone, Copy)]
pub struct Client {
    id: u64,
    kind: u8,
}

impl Client {
    /// Packet path: the source IPv4 address (network byte order).
    #[inline(always)]
    pub fn ip(addr: u32) -> Self {
        Self {
            id: u64::from(addr),
            kind: AFFINITY_CLIENT_IP,
        }
    }

    /// Socket path: the network namespace of the socket (`bpf_get_netns_cookie`), so every
    /// process of a pod sticks to the same backend.
    #[inline(always)]
    pub fn netns(cookie: u64) -> Self {
        Self {
            id: cookie,
            kind: AFFINITY_CLIENT_NETNS,
        }
    }
}

/// Picks the backend for a new connection of `client` to the service `key` / `service`
/// (`count` > 0): the remembered one when affinity is on, the entry is younger than the
/// timeout and the backend is still one of the service's slots; else a random one, which is
/// then remembered. Every use refreshes the entry's time.
#[inline(always)]
pub fn select_backend_for(
    key: ServiceKey,
    service: &ServiceValue,
    client: Client,
) -> Option<(u32, Backend)> {
    if service.affinity_timeout == 0 {
        return select_backend(key, service.count);
    }
    let now = kernel::now_ns();
    let affinity_key = AffinityKey {
        client: client.id,
        service_id: service.service_id,
        client_kind: client.kind,
        _pad: [0; 3],
    };
    if let Some(entry) = maps::affinity(&affinity_key) {
        let remembered = entry.get();
        if let Some(backend) = still_valid(&remembered, service, now) {
            entry.update(|entry| entry.last_used_ns = now);
            return Some((remembered.backend_id, backend));
        }
    }
    let (backend_id, backend) = select_backend(key, service.count)?;
    let value = AffinityValue {
        last_used_ns: now,
        backend_id,
        _pad: 0,
    };
    // Overwrites an expired or stale entry. A failed write only loses stickiness.
    let _ = AFFINITY.insert(&affinity_key, &value, 0);
    Some((backend_id, backend))
}

/// The remembered backend, if the entry may still be used: not older than the timeout, and
/// the backend is still in the service's slots (the daemon removes the match entry before a
/// backend leaves them, e.g. when it is deleted or stops being ready).
#[inline(always)]
fn still_valid(entry: &AffinityValue, service: &ServiceValue, now: u64) -> Option<Backend> {
    // An entry another CPU refreshed after our clock read is fresh, not 584 years old.
    let age = now.saturating_sub(entry.last_used_ns);
    if age > u64::from(service.affinity_timeout) * NANOS_PER_SEC {
        return None;
    }
    let member = AffinityMatchKey {
        service_id: service.service_id,
        backend_id: entry.backend_id,
    };
    if !maps::serves(&member) {
        return None;
    }
    maps::backend(entry.backend_id)
}
