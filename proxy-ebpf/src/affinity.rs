//! ClientIP session affinity, shared by the socket and packet paths: a client that connected
//! to a frontend within its timeout goes back to the same backend, as long as that backend
//! still serves the frontend.

use proxy_common::{
    AFFINITY_CLIENT_NETNS, AffinityKey, AffinityMatchKey, AffinityValue, BackendOf, ServiceKeyOf,
    ServiceValue,
};

use crate::{
    family::Family,
    kernel,
    maps::{self, AFFINITY, Entry},
    service::select_backend,
};

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Who a client is for affinity.
#[derive(Clone, Copy)]
pub enum Client<A> {
    /// Packet path: the source address (network byte order), in the family's affinity map.
    Ip(A),
    /// Socket path: the network namespace of the socket (`bpf_get_netns_cookie`), so every
    /// process of a pod sticks to the same backend; kept in `AFFINITY_V1` for both families
    /// (each frontend has its own service id).
    Netns(u64),
}

/// Where a client's affinity entry for one frontend lives.
enum Remembered<F: Family> {
    Ip(F::AffinityKey),
    Netns(AffinityKey),
}

impl<F: Family> Remembered<F> {
    #[inline(always)]
    fn new(client: Client<F::Addr>, service_id: u32) -> Self {
        match client {
            Client::Ip(addr) => Self::Ip(F::affinity_key(addr, service_id)),
            Client::Netns(cookie) => Self::Netns(AffinityKey {
                client: cookie,
                service_id,
                client_kind: AFFINITY_CLIENT_NETNS,
                _pad: [0; 3],
            }),
        }
    }

    #[inline(always)]
    fn entry(&self) -> Option<Entry<AffinityValue>> {
        match self {
            Self::Ip(key) => F::affinity(key),
            Self::Netns(key) => maps::affinity(key),
        }
    }

    /// Overwrites an expired or stale entry. A failed write only loses stickiness.
    #[inline(always)]
    fn remember(&self, value: &AffinityValue) {
        match self {
            Self::Ip(key) => F::remember_affinity(key, value),
            Self::Netns(key) => {
                let _ = AFFINITY.insert(key, value, 0);
            }
        }
    }
}

/// Picks the backend for a new connection of `client` to the service `key` / `service`
/// (`count` > 0): the remembered one when affinity is on, the entry is younger than the
/// timeout and the backend is still one of the service's slots; else a random one, which is
/// then remembered. Every use refreshes the entry's time.
#[inline(always)]
pub fn select_backend_for<F: Family>(
    key: ServiceKeyOf<F::Addr>,
    service: &ServiceValue,
    client: Client<F::Addr>,
) -> Option<(u32, BackendOf<F::Addr>)> {
    if service.affinity_timeout == 0 {
        return select_backend::<F>(key, service.count);
    }
    let now = kernel::now_ns();
    let remembered_at = Remembered::<F>::new(client, service.service_id);
    if let Some(entry) = remembered_at.entry() {
        let remembered = entry.get();
        if let Some(backend) = still_valid::<F>(&remembered, service, now) {
            entry.update(|entry| entry.last_used_ns = now);
            return Some((remembered.backend_id, backend));
        }
    }
    let (backend_id, backend) = select_backend::<F>(key, service.count)?;
    remembered_at.remember(&AffinityValue {
        last_used_ns: now,
        backend_id,
        _pad: 0,
    });
    Some((backend_id, backend))
}

/// The remembered backend, if the entry may still be used: not older than the timeout, and
/// the backend is still in the service's slots (the daemon removes the match entry before a
/// backend leaves them, e.g. when it is deleted or stops being ready).
#[inline(always)]
fn still_valid<F: Family>(
    entry: &AffinityValue,
    service: &ServiceValue,
    now: u64,
) -> Option<BackendOf<F::Addr>> {
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
    F::backend(entry.backend_id)
}
