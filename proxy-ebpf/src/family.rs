//! The address families: which maps serve IPv4 and which IPv6, and what differs between their
//! headers. The lookups every path shares (`service`, `affinity`) and the packet paths
//! (`xdp_ingress`, `tc_egress`, `conntrack`, `nat`, `forward`) are generic over a [`Family`],
//! so each family's code is the same source compiled for its own maps, key sizes and header
//! layout; nothing is decided per packet but the EtherType.

use aya_ebpf::{
    bindings::bpf_fib_lookup,
    btf_maps::lpm_trie::Key,
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::macro_support::{Argument, IpFormatter};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use proxy_common::{
    AFFINITY_CLIENT_IP, Addr6, Address, AffinityKey, AffinityKey6, AffinityValue, BackendOf,
    CtEntryOf, CtKeyOf, FragKeyOf, FragPorts, IPPROTO_TCP, ServiceKeyOf, ServiceValue,
    SourceRangeOf,
};

use crate::{
    error::Error,
    forward, fragments,
    maps::{
        self, AFFINITY, AFFINITY6, BACKENDS, BACKENDS6, CONFIG, CONFIG6, CONNTRACK,
        CONNTRACK_ESTABLISHED, CONNTRACK_ESTABLISHED6, CONNTRACK6, Entry, FRAGMENTS, FRAGMENTS6,
        NODE_ADDRS, NODE_ADDRS6, SERVICE_ADDRS, SERVICE_ADDRS6, SERVICES, SERVICES6, SNAT_ROOM,
        SNAT_ROOM6, SOURCE_RANGES, SOURCE_RANGES6, SnatRoom,
    },
    nat,
    packet::{self, ETH_HLEN, IPV4_HLEN, IPV6_HLEN, Packet, TCP_HLEN, Tuple},
    reject,
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
    /// `SVC_ADDR_*` of the longest service-address entry that holds `addr`.
    fn service_addr(addr: Self::Addr) -> Option<u32>;
    fn affinity_key(client: Self::Addr, service_id: u32) -> Self::AffinityKey;
    fn affinity(key: &Self::AffinityKey) -> Option<Entry<AffinityValue>>;
    /// Remembers `value` for `key`; a failed write (map busy) only loses stickiness.
    fn remember_affinity(key: &Self::AffinityKey, value: &AffinityValue);

    // The packet path.

    /// The fixed IP header.
    type IpHdr;
    /// An address as aya-log's `{:i}` prints it.
    type LogIp: IpFormatter + Argument;
    fn log_ip(addr: &Self::Addr) -> Self::LogIp;
    /// The smallest frame whose headers may sit partly in paged skb data (Ethernet and the
    /// fixed IP header), and the most header bytes the parser reads.
    const MIN_HEADERS: usize;
    const MAX_HEADERS: u32;
    /// Whether `xdp_ingress` balances new flows in a subprogram apart from known flows' (the
    /// verifier allows 512 bytes of stack per call chain).
    const NEW_FLOWS_APART: bool;
    /// Parses the frame (its EtherType is this family's); a fragment gets its datagram's ports
    /// (`fragments`).
    fn parse(data: usize, data_end: usize) -> Result<Packet<Self::Addr>, Error>;
    /// The ports a datagram's first fragment carried.
    fn fragment_ports(key: &FragKeyOf<Self::Addr>) -> Option<FragPorts>;
    /// Remembers a first fragment's ports; a failed write only leaves its later fragments
    /// untranslated.
    fn remember_fragment(key: &FragKeyOf<Self::Addr>, ports: FragPorts);
    /// The entry under `key` in one of this family's conntrack maps (`conntrack::lookup`
    /// searches both).
    fn conntrack(tier: Tier, key: &CtKeyOf<Self::Addr>) -> Option<Entry<CtEntryOf<Self::Addr>>>;
    /// `bpf_map_update_elem` on one of this family's conntrack maps; the error is the helper's.
    fn conntrack_insert(
        tier: Tier,
        key: &CtKeyOf<Self::Addr>,
        value: &CtEntryOf<Self::Addr>,
        flags: u64,
    ) -> Result<(), i32>;
    /// Deletes a conntrack entry from one map; a missing one is fine.
    fn conntrack_remove(tier: Tier, key: &CtKeyOf<Self::Addr>);
    /// The address remote backends' flows are source-NATed to; unset: none configured.
    fn snat_addr() -> Self::Addr;
    /// This CPU's room for a new SNAT flow's entries (`maps::SnatRoom`).
    fn snat_room() -> Option<Entry<SnatRoom<Self::Addr>>>;
    /// Writes `to`'s addresses over `from`'s in the IP header of the frame (updating the IPv4
    /// header checksum), and returns the L4 checksum `l4_sum` updated for them.
    fn rewrite_addresses(
        data: usize,
        data_end: usize,
        from: &Tuple<Self::Addr>,
        to: &Tuple<Self::Addr>,
        l4_sum: u16,
    ) -> Result<u16, Error>;
    /// Replaces the source (`source`) or destination address of an skb from `from` to `to`
    /// with the kernel's store and checksum helpers (`l4_flags` for the L4 checksum at
    /// `l4_check`; `None`: a later fragment, whose L4 checksum is in its first fragment).
    fn skb_replace_address(
        ctx: &TcContext,
        source: bool,
        l4_check: Option<usize>,
        from: &Self::Addr,
        to: &Self::Addr,
        l4_flags: u64,
    ) -> Result<(), Error>;
    /// Fills in the family, addresses and length of a FIB lookup for `tuple`.
    fn fib_addresses(fib: &mut bpf_fib_lookup, tuple: &Tuple<Self::Addr>, tot_len: u16);
    /// Decrements the TTL / hop limit as a router does; false (and no change) when it would
    /// reach zero.
    fn decrement_hop_limit(ctx: &XdpContext) -> Result<bool, Error>;
    /// Answers a new flow to a service without endpoints: TCP RST, or ICMP port unreachable.
    fn refuse<C: reject::Frame>(ctx: &C, pkt: &Packet<Self::Addr>) -> Result<C::Verdict, Error>;
}

/// Which of a family's two conntrack maps: each flow's entries are in one (for a moment, while
/// a flow is confirmed, in both: a reader then takes the established one).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// `CT_V1`, `CT6_V1` (LRU): flows not yet confirmed by an established reply.
    New,
    /// `CT_EST_V1`, `CT6_EST_V1` (plain hash, never evicted): confirmed flows.
    Established,
}

pub enum V4 {}
pub enum V6 {}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

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
    fn service_addr(addr: u32) -> Option<u32> {
        SERVICE_ADDRS.get(&Key::new(32, addr)).copied()
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

    type IpHdr = Ipv4Hdr;
    type LogIp = [u8; 4];

    #[inline(always)]
    fn log_ip(addr: &u32) -> [u8; 4] {
        addr.to_ne_bytes()
    }

    const NEW_FLOWS_APART: bool = false;
    const MIN_HEADERS: usize = ETH_HLEN + IPV4_HLEN;
    /// Ethernet, IPv4 with options, TCP without options.
    const MAX_HEADERS: u32 = (ETH_HLEN + 60 + TCP_HLEN) as u32;

    #[inline(always)]
    fn parse(data: usize, data_end: usize) -> Result<Packet<u32>, Error> {
        let mut pkt = packet::parse_v4(data, data_end)?;
        fragments::resolve::<Self>(&mut pkt)?;
        Ok(pkt)
    }

    #[inline(always)]
    fn fragment_ports(key: &FragKeyOf<u32>) -> Option<FragPorts> {
        maps::found(FRAGMENTS.get_ptr_mut(key)).map(Entry::get)
    }

    #[inline(always)]
    fn remember_fragment(key: &FragKeyOf<u32>, ports: FragPorts) {
        let _ = FRAGMENTS.insert(key, &ports, 0);
    }

    #[inline(always)]
    fn conntrack(tier: Tier, key: &CtKeyOf<u32>) -> Option<Entry<CtEntryOf<u32>>> {
        match tier {
            Tier::New => maps::conntrack(key),
            Tier::Established => maps::conntrack_established(key),
        }
    }

    #[inline(always)]
    fn conntrack_insert(
        tier: Tier,
        key: &CtKeyOf<u32>,
        value: &CtEntryOf<u32>,
        flags: u64,
    ) -> Result<(), i32> {
        match tier {
            Tier::New => CONNTRACK.insert(key, value, flags),
            Tier::Established => CONNTRACK_ESTABLISHED.insert(key, value, flags),
        }
    }

    #[inline(always)]
    fn conntrack_remove(tier: Tier, key: &CtKeyOf<u32>) {
        let _ = match tier {
            Tier::New => CONNTRACK.remove(key),
            Tier::Established => CONNTRACK_ESTABLISHED.remove(key),
        };
    }

    #[inline(always)]
    fn snat_addr() -> u32 {
        CONFIG.get(0).map_or(0, |config| config.snat_addr)
    }

    #[inline(always)]
    fn snat_room() -> Option<Entry<SnatRoom<u32>>> {
        maps::found(SNAT_ROOM.get_ptr_mut(0))
    }

    #[inline(always)]
    fn rewrite_addresses(
        data: usize,
        data_end: usize,
        from: &Tuple<u32>,
        to: &Tuple<u32>,
        l4_sum: u16,
    ) -> Result<u16, Error> {
        nat::rewrite_ipv4_addresses(data, data_end, from, to, l4_sum)
    }

    #[inline(always)]
    fn skb_replace_address(
        ctx: &TcContext,
        source: bool,
        l4_check: Option<usize>,
        from: &u32,
        to: &u32,
        l4_flags: u64,
    ) -> Result<(), Error> {
        nat::skb_replace_ipv4_address(ctx, source, l4_check, *from, *to, l4_flags)
    }

    #[inline(always)]
    fn fib_addresses(fib: &mut bpf_fib_lookup, tuple: &Tuple<u32>, tot_len: u16) {
        fib.family = AF_INET;
        fib.__bindgen_anon_1.tot_len = tot_len;
        fib.__bindgen_anon_3.ipv4_src = tuple.saddr;
        fib.__bindgen_anon_4.ipv4_dst = tuple.daddr;
    }

    #[inline(always)]
    fn decrement_hop_limit(ctx: &XdpContext) -> Result<bool, Error> {
        forward::decrement_ttl(ctx)
    }

    #[inline(always)]
    fn refuse<C: reject::Frame>(ctx: &C, pkt: &Packet<u32>) -> Result<C::Verdict, Error> {
        if pkt.tuple.proto == IPPROTO_TCP {
            reject::tcp_reset::<Self, C>(ctx, pkt)
        } else {
            reject::icmp_port_unreachable(ctx, pkt)
        }
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
    fn service_addr(addr: Addr6) -> Option<u32> {
        SERVICE_ADDRS6.get(&Key::new(128, addr)).copied()
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

    type IpHdr = Ipv6Hdr;
    type LogIp = [u8; 16];

    #[inline(always)]
    fn log_ip(addr: &Addr6) -> [u8; 16] {
        let mut octets = [0; 16];
        for (chunk, word) in octets.as_chunks_mut::<4>().0.iter_mut().zip(addr) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        octets
    }

    const NEW_FLOWS_APART: bool = true;
    const MIN_HEADERS: usize = ETH_HLEN + IPV6_HLEN;
    /// Ethernet, IPv6, room for a few extension headers, TCP without options.
    const MAX_HEADERS: u32 = (ETH_HLEN + IPV6_HLEN + 64 + TCP_HLEN) as u32;

    #[inline(always)]
    fn parse(data: usize, data_end: usize) -> Result<Packet<Addr6>, Error> {
        let mut pkt = packet::parse_v6(data, data_end)?;
        fragments::resolve::<Self>(&mut pkt)?;
        Ok(pkt)
    }

    #[inline(always)]
    fn fragment_ports(key: &FragKeyOf<Addr6>) -> Option<FragPorts> {
        maps::found(FRAGMENTS6.get_ptr_mut(key)).map(Entry::get)
    }

    #[inline(always)]
    fn remember_fragment(key: &FragKeyOf<Addr6>, ports: FragPorts) {
        let _ = FRAGMENTS6.insert(key, &ports, 0);
    }

    #[inline(always)]
    fn conntrack(tier: Tier, key: &CtKeyOf<Addr6>) -> Option<Entry<CtEntryOf<Addr6>>> {
        match tier {
            Tier::New => maps::found(CONNTRACK6.get_ptr_mut(key)),
            Tier::Established => maps::found(CONNTRACK_ESTABLISHED6.get_ptr_mut(key)),
        }
    }

    #[inline(always)]
    fn conntrack_insert(
        tier: Tier,
        key: &CtKeyOf<Addr6>,
        value: &CtEntryOf<Addr6>,
        flags: u64,
    ) -> Result<(), i32> {
        match tier {
            Tier::New => CONNTRACK6.insert(key, value, flags),
            Tier::Established => CONNTRACK_ESTABLISHED6.insert(key, value, flags),
        }
    }

    #[inline(always)]
    fn conntrack_remove(tier: Tier, key: &CtKeyOf<Addr6>) {
        let _ = match tier {
            Tier::New => CONNTRACK6.remove(key),
            Tier::Established => CONNTRACK_ESTABLISHED6.remove(key),
        };
    }

    #[inline(always)]
    fn snat_addr() -> Addr6 {
        CONFIG6.get(0).map_or([0; 4], |config| config.snat_addr)
    }

    #[inline(always)]
    fn snat_room() -> Option<Entry<SnatRoom<Addr6>>> {
        maps::found(SNAT_ROOM6.get_ptr_mut(0))
    }

    #[inline(always)]
    fn rewrite_addresses(
        data: usize,
        data_end: usize,
        from: &Tuple<Addr6>,
        to: &Tuple<Addr6>,
        l4_sum: u16,
    ) -> Result<u16, Error> {
        nat::rewrite_ipv6_addresses(data, data_end, from, to, l4_sum)
    }

    #[inline(always)]
    fn skb_replace_address(
        ctx: &TcContext,
        source: bool,
        l4_check: Option<usize>,
        from: &Addr6,
        to: &Addr6,
        l4_flags: u64,
    ) -> Result<(), Error> {
        nat::skb_replace_ipv6_address(ctx, source, l4_check, from, to, l4_flags)
    }

    #[inline(always)]
    fn fib_addresses(fib: &mut bpf_fib_lookup, tuple: &Tuple<Addr6>, tot_len: u16) {
        fib.family = AF_INET6;
        fib.__bindgen_anon_1.tot_len = tot_len;
        fib.__bindgen_anon_3.ipv6_src = tuple.saddr;
        fib.__bindgen_anon_4.ipv6_dst = tuple.daddr;
    }

    #[inline(always)]
    fn decrement_hop_limit(ctx: &XdpContext) -> Result<bool, Error> {
        forward::decrement_hop_limit6(ctx)
    }

    #[inline(always)]
    fn refuse<C: reject::Frame>(ctx: &C, pkt: &Packet<Addr6>) -> Result<C::Verdict, Error> {
        if pkt.tuple.proto == IPPROTO_TCP {
            reject::tcp_reset::<Self, C>(ctx, pkt)
        } else {
            reject::icmp6_port_unreachable(ctx, pkt)
        }
    }
}
