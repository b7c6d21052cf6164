//! The address families: which maps serve IPv4 and which IPv6. The lookups every path shares
//! (`service`, `affinity`) are generic over a [`Family`], so each family's code is the same
//! source compiled for its own maps and key sizes.

use aya_ebpf::btf_maps::lpm_trie::Key;
use proxy_common::{
    AFFINITY_CLIENT_IP, Addr6, Address, AffinityKey, AffinityKey6, AffinityValue, BackendOf,
    ServiceKeyOf, ServiceValue, SourceRangeOf,
};

use crate::maps::{
    self, AFFINITY, AFFINITY6, BACKENDS, BACKENDS6, Entry, NODE_ADDRS, NODE_ADDRS6, SERVICES,
    SERVICES6, SOURCE_RANGES, SOURCE_RANGES6,
};

/// One address family's maps.
pub trait Family {
    type Addr: Address;
    /// The key of this family's affinity entries for a client address.
    type AffinityKey;

    /// The frontend entry (slot 0) or backend slot under `key`.
    fn service(key: &ServiceKeyOf<Self::Addr>) -> Option<ServiceValue>;
    fn backend(id: u32) -> Option<BackendOf<Self::Addr>>;
    /// Whether `addr` is one of this node's addresses.
    fn is_node_addr(addr: &Self::Addr) -> bool;
    /// Whether `addr` is a loopback address (where node sockets may reach NodePorts).
    fn is_loopback(addr: &Self::Addr) -> bool;
    /// Whether the source-range map holds a prefix of `client` for the frontend `service_id`.
    fn source_range_matches(service_id: u32, client: Self::Addr) -> bool;
    fn affinity_key(client: Self::Addr, service_id: u32) -> Self::AffinityKey;
    fn affinity(key: &Self::AffinityKey) -> Option<Entry<AffinityValue>>;
    /// Remembers `value` for `key`; a failed write (map busy) only loses stickiness.
    fn remember_affinity(key: &Self::AffinityKey, value: &AffinityValue);
}

pub enum V4 {}
pub enum V6 {}

impl Family for V4 {
    type Addr = u32;
    type AffinityKey = AffinityKey;

    #[inline(always)]
    fn service(key: &ServiceKeyOf<u32>) -> Option<ServiceValue> {
        maps::found(SERVICES.get_ptr_mut(key)).map(Entry::get)
    }

    #[inline(always)]
    fn backend(id: u32) -> Option<BackendOf<u32>> {
        maps::found(BACKENDS.get_ptr_mut(&id)).map(Entry::get)
    }

    #[inline(always)]
    fn is_node_addr(addr: &u32) -> bool {
        NODE_ADDRS.get_ptr(addr).is_some()
    }

    #[inline(always)]
    fn is_loopback(addr: &u32) -> bool {
        // 127.0.0.0/8: the first octet is the first byte in memory.
        addr.to_ne_bytes()[0] == 127
    }

    #[inline(always)]
    fn source_range_matches(service_id: u32, client: u32) -> bool {
        // The service id's 32 bits, then the client address's.
        let key = Key::new(
            64,
            SourceRangeOf {
                service_id,
                addr: client,
            },
        );
        SOURCE_RANGES.get(&key).is_some()
    }

    #[inline(always)]
    fn affinity_key(client: u32, service_id: u32) -> AffinityKey {
        AffinityKey {
            client: u64::from(client),
            service_id,
            client_kind: AFFINITY_CLIENT_IP,
            _pad: [0; 3],
        }
    }

    #[inline(always)]
    fn affinity(key: &AffinityKey) -> Option<Entry<AffinityValue>> {
        maps::affinity(key)
    }

    #[inline(always)]
    fn remember_affinity(key: &AffinityKey, value: &AffinityValue) {
        let _ = AFFINITY.insert(key, value, 0);
    }
}

impl Family for V6 {
    type Addr = Addr6;
    type AffinityKey = AffinityKey6;

    #[inline(always)]
    fn service(key: &ServiceKeyOf<Addr6>) -> Option<ServiceValue> {
        maps::found(SERVICES6.get_ptr_mut(key)).map(Entry::get)
    }

    #[inline(always)]
    fn backend(id: u32) -> Option<BackendOf<Addr6>> {
        maps::found(BACKENDS6.get_ptr_mut(&id)).map(Entry::get)
    }

    #[inline(always)]
    fn is_node_addr(addr: &Addr6) -> bool {
        NODE_ADDRS6.get_ptr(addr).is_some()
    }

    #[inline(always)]
    fn is_loopback(addr: &Addr6) -> bool {
        // ::1 only: IPv6 has no loopback range.
        *addr == [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]
    }

    #[inline(always)]
    fn source_range_matches(service_id: u32, client: Addr6) -> bool {
        let key = Key::new(
            32 + 128,
            SourceRangeOf {
                service_id,
                addr: client,
            },
        );
        SOURCE_RANGES6.get(&key).is_some()
    }

    #[inline(always)]
    fn affinity_key(client: Addr6, service_id: u32) -> AffinityKey6 {
        AffinityKey6 {
            client,
            service_id,
            client_kind: AFFINITY_CLIENT_IP,
            _pad: [0; 3],
        }
    }

    #[inline(always)]
    fn affinity(key: &AffinityKey6) -> Option<Entry<AffinityValue>> {
        maps::found(AFFINITY6.get_ptr_mut(key))
    }

    #[inline(always)]
    fn remember_affinity(key: &AffinityKey6, value: &AffinityValue) {
        let _ = AFFINITY6.insert(key, value, 0);
    }
}
