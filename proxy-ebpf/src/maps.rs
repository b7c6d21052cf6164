//! The BPF maps, declared once with the names and layouts of `proxy_common`, and the typed
//! lookups the programs use (the one place map values are dereferenced).

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use proxy_common::{
    Addr6, AffinityKey, AffinityKey6, AffinityMatchKey, AffinityValue, Backend, Backend6, Config,
    Config6, CtEntry, CtEntry6, CtEntryOf, CtKey, CtKey6, CtKeyOf, FragKey, FragKey6, FragPorts,
    NodeAddr, ServiceKey, ServiceKey6, ServiceMeta, ServiceValue, SkippedKey, SkippedService,
    SockRevNatKey, SockRevNatKey6, SockRevNatValue, SockRevNatValue6, SockTermKey, SockTermKey6,
    SourceRange, SourceRange6, map_sizes,
};

#[btf_map(name = "SVC_V1")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue, { map_sizes::SERVICES as usize }> =
    HashMap::new();

#[btf_map(name = "BACKEND_V1")]
pub static BACKENDS: HashMap<u32, Backend, { map_sizes::BACKENDS as usize }> = HashMap::new();

/// Only the daemon and CLI use it; declared here so it is created and pinned with the rest.
#[btf_map(name = "SVC_META_V2")]
pub static SERVICE_META: HashMap<u32, ServiceMeta, { map_sizes::SERVICE_META as usize }> =
    HashMap::new();

/// Conntrack of new flows, not yet confirmed by an established reply. LRU: a flood of new
/// flows evicts the least recently used ones, never a confirmed flow (`CT_EST_V1`).
#[btf_map(name = "CT_V1")]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry, { map_sizes::CONNTRACK as usize }> =
    LruHashMap::new();

/// Conntrack of confirmed flows, moved here from `CT_V1` by their first established reply
/// (`conntrack::confirm`). A plain preallocated hash: nothing is evicted; the flow's end
/// (`conntrack::remove_flow`) and the daemon's GC remove entries.
#[btf_map(name = "CT_EST_V1")]
pub static CONNTRACK_ESTABLISHED: HashMap<
    CtKey,
    CtEntry,
    { map_sizes::CONNTRACK_ESTABLISHED as usize },
> = HashMap::new();

#[btf_map(name = "SOCK_RNAT_V1")]
pub static SOCK_REV_NAT: LruHashMap<
    SockRevNatKey,
    SockRevNatValue,
    { map_sizes::SOCK_REV_NAT as usize },
> = LruHashMap::new();

/// Filled by the daemon for one socket-termination run; not pinned.
#[btf_map(name = "SOCK_TERM_V1")]
pub static SOCK_TERM: HashMap<SockTermKey, u8, { map_sizes::SOCK_TERM as usize }> = HashMap::new();

#[btf_map(name = "NODE_ADDR_V1")]
pub static NODE_ADDRS: HashMap<u32, NodeAddr, { map_sizes::NODE_ADDRS as usize }> = HashMap::new();

#[btf_map(name = "CONFIG_V1")]
pub static CONFIG: Array<Config, 1> = Array::new();

/// Session affinity: (frontend, client) -> backend and last use. LRU: a full map forgets the
/// least recently used client, which then gets a fresh random backend.
#[btf_map(name = "AFFINITY_V1")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue, { map_sizes::AFFINITY as usize }> =
    LruHashMap::new();

/// (frontend, backend) pairs of every backend slot: an affinity entry is only used while its
/// backend still serves the frontend.
#[btf_map(name = "AFF_MATCH_V1")]
pub static AFFINITY_MATCH: HashMap<AffinityMatchKey, u32, { map_sizes::AFFINITY_MATCH as usize }> =
    HashMap::new();

/// `loadBalancerSourceRanges`: (service id, client prefix) → unused value; a frontend with
/// `SVC_F_SOURCE_RANGES` only accepts off-node clients that match one of its entries.
#[btf_map(name = "SRC_RANGE_V1")]
pub static SOURCE_RANGES: LpmTrie<SourceRange, u32, { map_sizes::SOURCE_RANGES as usize }> =
    LpmTrie::new();

/// Service addresses: cluster IPs (/32, `SVC_ADDR_CLUSTER_IP`) and service CIDRs
/// (`SVC_ADDR_SERVICE_CIDR`). A destination that matches but has no frontend for its port is
/// refused.
#[btf_map(name = "SVC_ADDR_V1")]
pub static SERVICE_ADDRS: LpmTrie<u32, u32, { map_sizes::SERVICE_ADDRS as usize }> = LpmTrie::new();

/// Services listed but not programmed; only the daemon and CLI use it.
#[btf_map(name = "SVC_SKIP_V1")]
pub static SKIPPED: HashMap<SkippedKey, SkippedService, { map_sizes::SKIPPED as usize }> =
    HashMap::new();

/// A fragmented datagram's ports, from its first fragment, for the later ones.
#[btf_map(name = "FRAG_V1")]
pub static FRAGMENTS: LruHashMap<FragKey, FragPorts, { map_sizes::FRAGMENTS as usize }> =
    LruHashMap::new();

/// A new SNAT flow's entries while its port is searched (`conntrack::create_snat`): each try
/// writes the port in and offers them to the conntrack map. In a per-CPU map, not on the stack:
/// beside the packet path's own, four IPv6 entries exceed the 512 bytes a call chain may use.
/// Only `xdp_ingress` uses it, and one XDP run never interrupts another on its CPU.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SnatRoom<A> {
    pub forward_key: CtKeyOf<A>,
    pub forward: CtEntryOf<A>,
    pub reply_key: CtKeyOf<A>,
    pub reply: CtEntryOf<A>,
}

#[btf_map(name = "SNAT_ROOM_V1")]
pub static SNAT_ROOM: PerCpuArray<SnatRoom<u32>, 1> = PerCpuArray::new();

#[btf_map(name = "SNAT_ROOM6_V1")]
pub static SNAT_ROOM6: PerCpuArray<SnatRoom<Addr6>, 1> = PerCpuArray::new();

// The IPv6 maps: the roles of the IPv4 ones above, keyed or valued by IPv6 addresses. Ids
// (service, backend) are shared with IPv4, so the per-id maps above serve both families.

#[btf_map(name = "SVC6_V1")]
pub static SERVICES6: HashMap<ServiceKey6, ServiceValue, { map_sizes::SERVICES6 as usize }> =
    HashMap::new();

#[btf_map(name = "BACKEND6_V1")]
pub static BACKENDS6: HashMap<u32, Backend6, { map_sizes::BACKENDS6 as usize }> = HashMap::new();

#[btf_map(name = "CT6_V1")]
pub static CONNTRACK6: LruHashMap<CtKey6, CtEntry6, { map_sizes::CONNTRACK6 as usize }> =
    LruHashMap::new();

#[btf_map(name = "CT6_EST_V1")]
pub static CONNTRACK_ESTABLISHED6: HashMap<
    CtKey6,
    CtEntry6,
    { map_sizes::CONNTRACK_ESTABLISHED6 as usize },
> = HashMap::new();

#[btf_map(name = "SOCK_RNAT6_V1")]
pub static SOCK_REV_NAT6: LruHashMap<
    SockRevNatKey6,
    SockRevNatValue6,
    { map_sizes::SOCK_REV_NAT6 as usize },
> = LruHashMap::new();

#[btf_map(name = "SOCK_TERM6_V1")]
pub static SOCK_TERM6: HashMap<SockTermKey6, u8, { map_sizes::SOCK_TERM6 as usize }> =
    HashMap::new();

#[btf_map(name = "NODE_ADDR6_V1")]
pub static NODE_ADDRS6: HashMap<Addr6, NodeAddr, { map_sizes::NODE_ADDRS6 as usize }> =
    HashMap::new();

#[btf_map(name = "CONFIG6_V1")]
pub static CONFIG6: Array<Config6, 1> = Array::new();

#[btf_map(name = "AFFINITY6_V1")]
pub static AFFINITY6: LruHashMap<AffinityKey6, AffinityValue, { map_sizes::AFFINITY6 as usize }> =
    LruHashMap::new();

#[btf_map(name = "SRC_RANGE6_V1")]
pub static SOURCE_RANGES6: LpmTrie<SourceRange6, u32, { map_sizes::SOURCE_RANGES6 as usize }> =
    LpmTrie::new();

#[btf_map(name = "SVC_ADDR6_V1")]
pub static SERVICE_ADDRS6: LpmTrie<Addr6, u32, { map_sizes::SERVICE_ADDRS6 as usize }> =
    LpmTrie::new();

#[btf_map(name = "FRAG6_V1")]
pub static FRAGMENTS6: LruHashMap<FragKey6, FragPorts, { map_sizes::FRAGMENTS6 as usize }> =
    LruHashMap::new();

/// A value found in a map: copied out or changed in place.
#[derive(Clone, Copy)]
pub struct Entry<V>(*mut V);

impl<V: Copy> Entry<V> {
    /// A copy of the value.
    #[inline(always)]
    pub fn get(self) -> V {
        // SAFETY: the pointer is a lookup result of one of the maps above (only `found` makes
        // an `Entry`), to a value that stays allocated for the rest of this program run (the
        // kernel frees map values after an RCU grace period). Another CPU or the daemon may
        // write it meanwhile; the copy may then mix old and new fields, as in C, which every
        // reader of these maps tolerates.
        unsafe { self.0.read() }
    }

    /// Changes the value in place. Concurrent writers (packets of one flow on two CPUs) store
    /// whole aligned fields; the last one wins.
    #[inline(always)]
    pub fn update(self, change: impl FnOnce(&mut V)) {
        // SAFETY: as for `get`; the reference does not outlive `change`.
        change(unsafe { &mut *self.0 });
    }
}

/// The one way a lookup result becomes an [`Entry`]: only pointers from these maps' lookups
/// may be passed (the `family` module's lookups use it too).
#[inline(always)]
pub(crate) fn found<V>(value: Option<*mut V>) -> Option<Entry<V>> {
    value.map(Entry)
}

/// Whether a backend still serves a frontend (`AFF_MATCH_V1`).
#[inline(always)]
pub fn serves(member: &AffinityMatchKey) -> bool {
    AFFINITY_MATCH.get_ptr(member).is_some()
}

#[inline(always)]
pub fn affinity(key: &AffinityKey) -> Option<Entry<AffinityValue>> {
    found(AFFINITY.get_ptr_mut(key))
}

#[inline(always)]
pub fn conntrack(key: &CtKey) -> Option<Entry<CtEntry>> {
    found(CONNTRACK.get_ptr_mut(key))
}

#[inline(always)]
pub fn conntrack_established(key: &CtKey) -> Option<Entry<CtEntry>> {
    found(CONNTRACK_ESTABLISHED.get_ptr_mut(key))
}

#[inline(always)]
pub fn sock_rev_nat(key: &SockRevNatKey) -> Option<SockRevNatValue> {
    found(SOCK_REV_NAT.get_ptr_mut(key)).map(Entry::get)
}

/// Whether the daemon asked for sockets connected to `key` to be terminated.
#[inline(always)]
pub fn terminates(key: &SockTermKey) -> bool {
    SOCK_TERM.get_ptr(key).is_some()
}
