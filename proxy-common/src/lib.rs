//! Map keys, values and constants shared by the eBPF programs and the daemon: the datapath ABI.
//!
//! Every type is `#[repr(C)]`, has no implicit padding (the `bytemuck::Pod` derive refuses
//! padding) and a size assertion. Addresses and ports are kept in network byte order: the
//! in-memory bytes of an address field are the address's octets, exactly as in a packet
//! header or `bpf_sock_addr.user_ip4`. Use [`net`] to convert on the user side.
//!
//! IPv6 sits beside IPv4 in maps of its own (`*6_V1`), as in Cilium: the types that hold an
//! address are generic over it ([`Address`]: `u32` or [`Addr6`]) and the IPv4 names
//! (`ServiceKey`, `CtKey`, ...) are aliases of the `u32` instance, so IPv4 entries keep their
//! size and the IPv4 maps their names. Ids (service, backend) are one space for both families:
//! the per-id maps (meta, counters, affinity match) serve both. See docs/datapath.md.
//!
//! When a layout changes, bump the `_V1` suffix of the map names that use it.
#![cfg_attr(not(test), no_std)]
#![expect(
    clippy::pub_underscore_fields,
    reason = "explicit padding of structs shared with the kernel: public so either side can \
              build a value with a struct literal; the underscore says it carries nothing"
)]

use bytemuck::{Pod, Zeroable};

pub mod address;
pub mod checksum;
pub mod flow;
#[cfg(feature = "user")]
pub mod net;
pub mod stats;
pub mod tcp;
#[cfg(feature = "user")]
mod user;
#[cfg(feature = "user")]
pub use user::MetaFields;

pub use crate::address::{Addr6, Address};

/// Pinned map names (at most 15 bytes: the kernel's `BPF_OBJ_NAME_LEN` minus the NUL).
pub mod map_names {
    pub const SERVICES: &str = "SVC_V1";
    pub const BACKENDS: &str = "BACKEND_V1";
    pub const SERVICE_META: &str = "SVC_META_V2";
    /// Conntrack of new, unconfirmed flows (LRU: a flood of new flows evicts the oldest).
    pub const CONNTRACK: &str = "CT_V1";
    /// Conntrack of confirmed flows (plain hash, never evicted): a flow moves here from
    /// `CONNTRACK` at its first established reply; only flow ends and the GC remove it.
    pub const CONNTRACK_ESTABLISHED: &str = "CT_EST_V1";
    pub const SOCK_REV_NAT: &str = "SOCK_RNAT_V1";
    pub const NODE_ADDRS: &str = "NODE_ADDR_V1";
    pub const CONFIG: &str = "CONFIG_V1";
    pub const SERVICE_STATS: &str = "SVC_STATS_V2";
    pub const BACKEND_STATS: &str = "BE_STATS_V2";
    pub const DROP_STATS: &str = "DROP_STATS_V1";
    /// Packets passed untranslated, by `stats::PassReason`.
    pub const PASS_STATS: &str = "PASS_STATS_V1";
    /// V2: room for the IPv6 socket hooks.
    pub const HOOK_STATS: &str = "HOOK_STATS_V2";
    pub const AFFINITY: &str = "AFFINITY_V1";
    pub const AFFINITY_MATCH: &str = "AFF_MATCH_V1";
    pub const SOURCE_RANGES: &str = "SRC_RANGE_V1";
    pub const SKIPPED: &str = "SVC_SKIP_V1";
    /// Service addresses (LPM trie): cluster IPs and the service CIDRs, for refusing what no
    /// frontend serves there.
    pub const SERVICE_ADDRS: &str = "SVC_ADDR_V1";
    /// Not pinned: the daemon fills it just before each socket-termination run.
    pub const SOCK_TERM: &str = "SOCK_TERM_V1";

    // The IPv6 maps: the same roles, keyed or valued by IPv6 addresses.
    pub const SERVICES6: &str = "SVC6_V1";
    pub const BACKENDS6: &str = "BACKEND6_V1";
    pub const CONNTRACK6: &str = "CT6_V1";
    pub const CONNTRACK_ESTABLISHED6: &str = "CT6_EST_V1";
    pub const SOCK_REV_NAT6: &str = "SOCK_RNAT6_V1";
    pub const NODE_ADDRS6: &str = "NODE_ADDR6_V1";
    pub const CONFIG6: &str = "CONFIG6_V1";
    pub const AFFINITY6: &str = "AFFINITY6_V1";
    pub const SOURCE_RANGES6: &str = "SRC_RANGE6_V1";
    pub const SERVICE_ADDRS6: &str = "SVC_ADDR6_V1";
    /// Not pinned, like `SOCK_TERM`.
    pub const SOCK_TERM6: &str = "SOCK_TERM6_V1";
    /// Each CPU's room for a new SNAT flow's entries while its port is searched. Pinned, as
    /// every map the hooks use, so a program reused from its pin shares them.
    pub const SNAT_ROOM: &str = "SNAT_ROOM_V1";
    pub const SNAT_ROOM6: &str = "SNAT_ROOM6_V1";
    /// Fragmented datagrams: the first fragment's ports, for the later ones (`FragKeyOf`).
    pub const FRAGMENTS: &str = "FRAG_V1";
    pub const FRAGMENTS6: &str = "FRAG6_V1";

    /// aya-log's ring buffer of the programs' log lines (the name is aya-log's).
    pub const KERNEL_LOG: &str = "AYA_LOGS";

    /// Every map the hooks use, each pinned under its name.
    pub const ALL: [&str; 33] = [
        SERVICES,
        BACKENDS,
        SERVICE_META,
        CONNTRACK,
        SOCK_REV_NAT,
        NODE_ADDRS,
        CONFIG,
        SERVICE_STATS,
        BACKEND_STATS,
        DROP_STATS,
        PASS_STATS,
        HOOK_STATS,
        AFFINITY,
        AFFINITY_MATCH,
        SOURCE_RANGES,
        SKIPPED,
        SERVICE_ADDRS,
        SERVICES6,
        BACKENDS6,
        CONNTRACK6,
        SOCK_REV_NAT6,
        NODE_ADDRS6,
        CONFIG6,
        AFFINITY6,
        SOURCE_RANGES6,
        SERVICE_ADDRS6,
        FRAGMENTS,
        FRAGMENTS6,
        CONNTRACK_ESTABLISHED,
        CONNTRACK_ESTABLISHED6,
        SNAT_ROOM,
        SNAT_ROOM6,
        KERNEL_LOG,
    ];
}

/// Program names in the eBPF object (the function names of the entry points).
pub mod program_names {
    pub const CONNECT4: &str = "sock_connect4";
    pub const SENDMSG4: &str = "sock_sendmsg4";
    pub const RECVMSG4: &str = "sock_recvmsg4";
    pub const GETPEERNAME4: &str = "sock_getpeername4";
    pub const CONNECT6: &str = "sock_connect6";
    pub const SENDMSG6: &str = "sock_sendmsg6";
    pub const RECVMSG6: &str = "sock_recvmsg6";
    pub const GETPEERNAME6: &str = "sock_getpeername6";
    pub const XDP_INGRESS: &str = "xdp_ingress";
    pub const TC_INGRESS: &str = "tc_ingress";
    pub const TC_EGRESS: &str = "tc_egress";
    /// On the host side of pod interfaces (`--pod-iface-prefix`): TC ingress and egress.
    pub const TC_FROM_POD: &str = "tc_from_pod";
    pub const TC_TO_POD: &str = "tc_to_pod";
    /// Walks UDP sockets of both families.
    pub const SOCK_TERM_UDP: &str = "sock_term_udp";
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Default map sizes; the daemon may override them at load time.
pub mod map_sizes {
    pub const SERVICES: u32 = 262_144;
    pub const BACKENDS: u32 = 131_072;
    pub const SERVICE_META: u32 = 65_536;
    pub const CONNTRACK: u32 = 262_144;
    /// Confirmed flows' entries (two per flow), apart from the LRU of new ones.
    pub const CONNTRACK_ESTABLISHED: u32 = CONNTRACK;
    pub const SOCK_REV_NAT: u32 = 131_072;
    pub const NODE_ADDRS: u32 = 256;
    pub const AFFINITY: u32 = 131_072;
    /// One entry per backend slot of every frontend, like the services map.
    pub const AFFINITY_MATCH: u32 = SERVICES;
    pub const SOURCE_RANGES: u32 = 65_536;
    pub const SKIPPED: u32 = 16_384;
    /// Sized like the per-frontend maps: every cluster IP is at least one frontend.
    pub const SERVICE_ADDRS: u32 = SERVICE_META;
    /// Backends per socket-termination run; the daemon runs in batches of this many.
    pub const SOCK_TERM: u32 = 1_024;
    // The IPv6 maps are sized like their IPv4 counterparts.
    pub const SERVICES6: u32 = SERVICES;
    pub const BACKENDS6: u32 = BACKENDS;
    pub const CONNTRACK6: u32 = CONNTRACK;
    pub const CONNTRACK_ESTABLISHED6: u32 = CONNTRACK_ESTABLISHED;
    pub const SOCK_REV_NAT6: u32 = SOCK_REV_NAT;
    pub const NODE_ADDRS6: u32 = NODE_ADDRS;
    pub const AFFINITY6: u32 = AFFINITY;
    pub const SOURCE_RANGES6: u32 = SOURCE_RANGES;
    pub const SERVICE_ADDRS6: u32 = SERVICE_ADDRS;
    pub const SOCK_TERM6: u32 = SOCK_TERM;
    /// Datagrams in reassembly at once, per family (LRU: the oldest is forgotten first; a
    /// datagram's fragments arrive within milliseconds).
    pub const FRAGMENTS: u32 = 16_384;
    pub const FRAGMENTS6: u32 = FRAGMENTS;
}

/// `Pod` and `Zeroable` for the instances of a generic map type: `bytemuck`'s derive cannot
/// check a generic struct for padding, so each instance states its size, which must be the sum
/// of its fields' (checked here against the expected size given).
macro_rules! pod_instances {
    ($($t:ty = $size:expr),* $(,)?) => {
        $(
            const _: () = assert!(core::mem::size_of::<$t>() == $size);
            // SAFETY: `#[repr(C)]`, every field is `Pod`, and the size above is the sum of
            // the fields' sizes: no padding.
            unsafe impl Zeroable for $t {}
            // SAFETY: as above.
            unsafe impl Pod for $t {}
        )*
    };
}

/// Key of the services map: one frontend (address, port, protocol) and a slot.
///
/// Slot 0 is the service entry (backend count, id, flags); slots `1..=count` hold backend ids.
/// A NodePort frontend has `addr == 0`: it is served on every address in the node-address map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKeyOf<A> {
    /// Frontend address, network byte order; 0 for a NodePort.
    pub addr: A,
    /// Frontend port, network byte order.
    pub port: u16,
    /// 0 for the service entry, `1..=count` for the backend slots.
    pub slot: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// `SVC_SCOPE_*`: which clients the entry serves.
    pub scope: u8,
    pub _pad: u16,
}
pub type ServiceKey = ServiceKeyOf<u32>;
pub type ServiceKey6 = ServiceKeyOf<Addr6>;
pod_instances!(ServiceKey = 12, ServiceKey6 = 24);

/// Value of the services map. In slot 0: `count`, `service_id`, `flags`, `affinity_timeout`;
/// in slot `n`: `backend_id` (the other fields repeat slot 0's for convenience).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ServiceValue {
    /// Backend id in a backend slot; 0 in slot 0.
    pub backend_id: u32,
    /// Number of backend slots the datapath chooses from (ready endpoints, or
    /// serving-terminating ones when none is ready). 0 means: refuse.
    pub count: u16,
    /// `SVC_F_*`.
    pub flags: u16,
    /// Frontend id: keys the service-meta map and conntrack's accounting.
    pub service_id: u32,
    /// ClientIP session affinity timeout in seconds; 0 when affinity is off.
    pub affinity_timeout: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 16);

/// The frontend is a NodePort (key address 0, served on every node address).
pub const SVC_F_NODEPORT: u16 = 1 << 0;
/// The frontend is reachable from off-node through XDP (all frontends today).
pub const SVC_F_EXTERNAL: u16 = 1 << 1;
/// In-cluster clients (the socket path) use the frontend's `SVC_SCOPE_INTERNAL` entry instead
/// of this one: set on the default entry when the two backend sets differ (e.g.
/// `externalTrafficPolicy: Local`, where only off-node clients are kept to local endpoints).
pub const SVC_F_TWO_SCOPES: u16 = 1 << 2;
/// `count` is 0 because a `Local` traffic policy left no endpoint on this node while others
/// exist elsewhere: packets are dropped, not refused (kube-proxy's DROP, not REJECT).
pub const SVC_F_NO_LOCAL_ENDPOINT: u16 = 1 << 3;
/// Off-node clients must match the frontend's entries in the source-range map
/// (`loadBalancerSourceRanges`); others are dropped.
pub const SVC_F_SOURCE_RANGES: u16 = 1 << 4;

/// The entry every path uses (XDP always; the socket path unless `SVC_F_TWO_SCOPES`).
pub const SVC_SCOPE_DEFAULT: u8 = 0;
/// The entry for in-cluster clients (the socket path) when `SVC_F_TWO_SCOPES` is set.
pub const SVC_SCOPE_INTERNAL: u8 = 1;

/// Value of the backends map (key: backend id, `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendOf<A> {
    /// Pod address, network byte order.
    pub addr: A,
    /// Pod port, network byte order.
    pub port: u16,
    /// `BACKEND_F_*`.
    pub flags: u8,
    pub _pad: u8,
}
pub type Backend = BackendOf<u32>;
pub type Backend6 = BackendOf<Addr6>;
pod_instances!(Backend = 8, Backend6 = 20);

/// The backend runs on this node.
pub const BACKEND_F_LOCAL: u8 = 1 << 0;
/// The backend is terminating (KEP-1669); it is only chosen when no backend is ready.
pub const BACKEND_F_TERMINATING: u8 = 1 << 1;

/// What the daemon knows about a frontend, for the CLI: names are not needed by the datapath.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ServiceMeta {
    /// `namespace/name:port-name`, NUL padded, UTF-8.
    pub name: [u8; 112],
    /// `SVC_KIND_*`: what this frontend is.
    pub kind: u8,
    /// `SVC_TYPE_*`: the Service's `spec.type`.
    pub svc_type: u8,
    /// `POLICY_F_*`: the Service's traffic policies.
    pub policy: u8,
    pub proto: u8,
    /// The frontend's original port for display (network byte order), e.g. a NodePort.
    pub port: u16,
    /// `spec.healthCheckNodePort` (network byte order); 0 when none.
    pub health_check_port: u16,
    pub _pad: [u8; 8],
}
const _: () = assert!(core::mem::size_of::<ServiceMeta>() == 128);

pub const SVC_KIND_CLUSTER_IP: u8 = 1;
pub const SVC_KIND_NODE_PORT: u8 = 2;
pub const SVC_KIND_LOAD_BALANCER: u8 = 3;
pub const SVC_KIND_EXTERNAL_IP: u8 = 4;

pub const SVC_TYPE_CLUSTER_IP: u8 = 1;
pub const SVC_TYPE_NODE_PORT: u8 = 2;
pub const SVC_TYPE_LOAD_BALANCER: u8 = 3;
pub const SVC_TYPE_EXTERNAL_NAME: u8 = 4;
pub const SVC_TYPE_HEADLESS: u8 = 5;

/// `externalTrafficPolicy: Local`.
pub const POLICY_F_EXTERNAL_LOCAL: u8 = 1 << 0;
/// `internalTrafficPolicy: Local`.
pub const POLICY_F_INTERNAL_LOCAL: u8 = 1 << 1;

/// Key of the skipped-services map: a Service that is listed but not programmed (headless,
/// ExternalName, labelled for another proxy, conflicting), for the CLI only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SkippedKey {
    /// `namespace/name`, NUL padded, UTF-8.
    pub name: [u8; 128],
}
const _: () = assert!(core::mem::size_of::<SkippedKey>() == 128);

/// Value of the skipped-services map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct SkippedService {
    /// `SVC_TYPE_*`.
    pub svc_type: u8,
    pub _pad: [u8; 3],
    /// Why it is not programmed, NUL padded, UTF-8.
    pub reason: [u8; 188],
}
const _: () = assert!(core::mem::size_of::<SkippedService>() == 192);

/// Data of a source-range (LPM trie) key: a frontend's service id, then the client prefix.
/// The prefix length of the trie key counts the 32 bits of `service_id` plus the range's own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceRangeOf<A> {
    pub service_id: u32,
    /// Client address (network byte order).
    pub addr: A,
}
pub type SourceRange = SourceRangeOf<u32>;
pub type SourceRange6 = SourceRangeOf<Addr6>;
pod_instances!(SourceRange = 8, SourceRange6 = 20);

/// `SVC_ADDR_V1` value: a cluster IP (a /32 or /128 entry). A TCP or UDP packet or call to
/// it on a port none of its frontends serves is refused, as kube-proxy's nftables mode rejects
/// it.
pub const SVC_ADDR_CLUSTER_IP: u32 = 1;
/// `SVC_ADDR_V1` value: a service CIDR. An address in it that is no cluster IP (the longest
/// match is this entry) holds no Service: refused too.
pub const SVC_ADDR_SERVICE_CIDR: u32 = 2;

/// Conntrack key: a packet's 5-tuple as seen at the hook, and the direction it was recorded for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKeyOf<A> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// `CT_DIR_*`.
    pub dir: u8,
    pub _pad: u16,
}
pub type CtKey = CtKeyOf<u32>;
pub type CtKey6 = CtKeyOf<Addr6>;
pod_instances!(CtKey = 16, CtKey6 = 40);

/// Key of the fragment maps: what the fragments of one datagram share (RFC 791: source,
/// destination, protocol, identification; IPv6: the Fragment header's 32-bit identification),
/// as they arrive at the hook, before translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKeyOf<A> {
    pub saddr: A,
    pub daddr: A,
    /// Host byte order (IPv4's 16 bits widened).
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}
pub type FragKey = FragKeyOf<u32>;
pub type FragKey6 = FragKeyOf<Addr6>;
pod_instances!(FragKey = 16, FragKey6 = 40);

/// Value of the fragment maps: the datagram's ports, from its first fragment (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
}

/// Client to frontend, before translation (looked up by XDP on ingress).
pub const CT_DIR_FORWARD: u8 = 0;
/// Backend to client or to the SNAT address, before reverse translation.
pub const CT_DIR_REPLY: u8 = 1;

/// Conntrack value: how to rewrite packets that match the key.
///
/// A zero `new_*` field leaves that header field as it is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntryOf<A> {
    /// `bpf_ktime_get_ns` of the last packet seen.
    pub last_seen_ns: u64,
    pub new_saddr: A,
    pub new_daddr: A,
    pub new_sport: u16,
    pub new_dport: u16,
    pub backend_id: u32,
    pub service_id: u32,
    /// `CT_F_*`.
    pub flags: u8,
    /// `TCP_STATE_*`.
    pub tcp_state: u8,
    pub _pad: u16,
}
pub type CtEntry = CtEntryOf<u32>;
pub type CtEntry6 = CtEntryOf<Addr6>;
pod_instances!(CtEntry = 32, CtEntry6 = 56);

/// The flow was source-NATed to the node address (remote backend): replies arrive at XDP.
pub const CT_F_SNAT: u8 = 1 << 0;
/// The flow goes to a backend on this node: replies leave through TC egress.
pub const CT_F_LOCAL: u8 = 1 << 1;
/// The flow came from a pod the socket hooks missed (`tc_from_pod`), destination NAT only:
/// replies are turned back by `tc_to_pod` on the client pod's interface.
pub const CT_F_POD: u8 = 1 << 2;

pub const TCP_STATE_SYN: u8 = 1;
pub const TCP_STATE_ESTABLISHED: u8 = 2;
pub const TCP_STATE_CLOSING: u8 = 3;

/// Socket-level reverse NAT key: which socket talked to which backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SockRevNatKey {
    /// `bpf_get_socket_cookie` of the client socket.
    pub cookie: u64,
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockRevNatKey>() == 16);

/// [`SockRevNatKey`] of an IPv6 socket to an IPv6 backend. (An `AF_INET6` socket to an
/// IPv4-mapped address is translated in the IPv4 maps.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SockRevNatKey6 {
    pub cookie: u64,
    pub addr: Addr6,
    pub port: u16,
    pub _pad: [u16; 3],
}
const _: () = assert!(core::mem::size_of::<SockRevNatKey6>() == 32);

/// Socket-level reverse NAT value: the address the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevNatValueOf<A> {
    pub addr: A,
    pub port: u16,
    pub _pad: u16,
}
pub type SockRevNatValue = SockRevNatValueOf<u32>;
pub type SockRevNatValue6 = SockRevNatValueOf<Addr6>;
pod_instances!(SockRevNatValue = 8, SockRevNatValue6 = 20);

/// Key of the socket-termination map: a removed backend (address and port, network byte
/// order) whose connected UDP client sockets the `iter/udp` program destroys. Value: `u8` 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockTermKeyOf<A> {
    pub addr: A,
    pub port: u16,
    pub _pad: u16,
}
pub type SockTermKey = SockTermKeyOf<u32>;
pub type SockTermKey6 = SockTermKeyOf<Addr6>;
pod_instances!(SockTermKey = 8, SockTermKey6 = 20);

/// What the `iter/udp` program writes to its output for each socket it destroyed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockTermRecordOf<A> {
    /// `bpf_get_socket_cookie` of the destroyed socket.
    pub cookie: u64,
    /// The backend it was connected to (network byte order).
    pub backend_addr: A,
    /// The service address the application had connected to (network byte order).
    pub service_addr: A,
    pub backend_port: u16,
    pub service_port: u16,
    pub _pad: u32,
}
pub type SockTermRecord = SockTermRecordOf<u32>;
pub type SockTermRecord6 = SockTermRecordOf<Addr6>;
pod_instances!(SockTermRecord = 24, SockTermRecord6 = 48);

/// Stand-in for the `bpf_sock_destroy` kfunc in the compiled `iter/udp` program: a helper call
/// with this number, which the daemon rewrites into a kfunc call (`BPF_PSEUDO_KFUNC_CALL` and the
/// kernel's BTF id of the function) before loading. aya 0.16 resolves kfunc externs only from
/// `.ksyms` BTF, which rustc and bpf-linker do not write for a Rust object (`udp_sockets`).
/// No helper has this number, so an object loaded without the rewrite fails verification.
pub const SOCK_DESTROY_CALL_MARKER: u32 = 0x5eed_d357;

/// The byte offsets in the kernel's `struct sock_common` the `iter/udp` program reads (it has
/// no CO-RE relocations); the daemon checks them against the running kernel's BTF before
/// loading it. See `proxy-ebpf/src/sock_term.rs` for why they hold.
pub mod sock_common {
    pub const SKC_DADDR: usize = 0;
    pub const SKC_DPORT: usize = 12;
    pub const SKC_FAMILY: usize = 16;
    pub const SKC_STATE: usize = 18;
    pub const SKC_V6_DADDR: usize = 56;
    /// Each offset with the field's name in the kernel's BTF.
    pub const FIELDS: [(&str, usize); 5] = [
        ("skc_daddr", SKC_DADDR),
        ("skc_dport", SKC_DPORT),
        ("skc_family", SKC_FAMILY),
        ("skc_state", SKC_STATE),
        ("skc_v6_daddr", SKC_V6_DADDR),
    ];
}

/// Value of the node-address map (key: IPv4 address in network byte order, `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NodeAddr {
    /// `NODE_ADDR_F_*`.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<NodeAddr>() == 4);

/// The address is the primary node address, used as the SNAT source for remote backends.
pub const NODE_ADDR_F_PRIMARY: u32 = 1 << 0;

/// Datapath configuration of the IPv6 path, in a one-entry array beside [`Config`] (whose SNAT
/// port range and flags it shares).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Config6 {
    /// Source address for SNAT to remote IPv6 backends; all zero disables it.
    pub snat_addr: Addr6,
}
const _: () = assert!(core::mem::size_of::<Config6>() == 16);

/// Datapath configuration, in a one-entry array so the daemon can change it without reloading.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    /// Source address for SNAT to remote backends (network byte order); 0 disables it.
    pub snat_addr: u32,
    /// SNAT source port range, host byte order, inclusive.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// `CONFIG_F_*`.
    pub flags: u32,
    /// The most verbose kernel log level emitted (`LOG_LEVEL_*`); 0 keeps the programs quiet.
    pub log_level: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 16);

/// Kernel log levels, as aya-log numbers them.
pub const LOG_LEVEL_OFF: u32 = 0;
pub const LOG_LEVEL_ERROR: u32 = 1;
pub const LOG_LEVEL_WARN: u32 = 2;
pub const LOG_LEVEL_INFO: u32 = 3;
pub const LOG_LEVEL_DEBUG: u32 = 4;
pub const LOG_LEVEL_TRACE: u32 = 5;

/// Count traffic, drops and verdicts (`stats`); off only to measure what counting costs.
pub const CONFIG_F_COUNTERS: u32 = 1 << 1;

/// Send rewritten packets back out with `XDP_TX` / `XDP_REDIRECT`. Without it XDP hands them to
/// `tc_ingress` (see [`handoff`]), which redirects them; needed on veth whose peer
/// runs no XDP program (`XDP_TX` frames would be dropped there).
pub const CONFIG_F_XDP_TX: u32 = 1 << 0;

/// XDP's hand-off to `tc_ingress`: a packet XDP translated but cannot send itself goes to the
/// stack with its Ethernet addresses overwritten by this mark, and `tc_ingress` redirects it
/// with `bpf_redirect_neigh` (which writes the real addresses). The mark is in the frame, not
/// in XDP metadata: some kernels refuse `bpf_xdp_adjust_meta` to XDP programs. Both addresses
/// are locally administered unicast; a frame carrying them is for no host, so the stack would
/// drop it, and `tc_ingress` runs before the stack.
pub mod handoff {
    /// The source address of a handed-off frame.
    pub const SOURCE: [u8; 6] = [0x02, 0x51, 0x31, 0x0c, 0xe5, 0x00];
    /// The first two bytes of a handed-off frame's destination; the output interface's index
    /// follows (big-endian).
    pub const DESTINATION_PREFIX: [u8; 2] = [0x02, 0x5c];

    /// The destination address that asks for a redirect to `ifindex`.
    #[must_use]
    pub const fn destination(ifindex: u32) -> [u8; 6] {
        let i = ifindex.to_be_bytes();
        [
            DESTINATION_PREFIX[0],
            DESTINATION_PREFIX[1],
            i[0],
            i[1],
            i[2],
            i[3],
        ]
    }

    /// The interface a frame with these addresses is handed off to, if it carries the mark.
    #[must_use]
    pub fn ifindex(destination: [u8; 6], source: [u8; 6]) -> Option<u32> {
        (source == SOURCE && destination[..2] == DESTINATION_PREFIX).then(|| {
            u32::from_be_bytes([
                destination[2],
                destination[3],
                destination[4],
                destination[5],
            ])
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_mark_carries_the_interface_and_nothing_else_reads_as_one() {
            assert_eq!(ifindex(destination(0x0102_0304), SOURCE), Some(0x0102_0304));
            assert_eq!(destination(7), [0x02, 0x5c, 0, 0, 0, 7]);
            // A real frame: another source, or a destination without the prefix.
            assert_eq!(ifindex(destination(7), [0x02, 0, 0, 0, 0, 1]), None);
            assert_eq!(ifindex([0x02, 0x5d, 0, 0, 0, 7], SOURCE), None);
        }
    }
}

/// Key of the session-affinity map (LRU): which client of which frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct AffinityKey {
    /// `AFFINITY_CLIENT_IP`: the source IPv4 address (network byte order) in the low 32 bits'
    /// bytes, as `u64::from(addr)`; `AFFINITY_CLIENT_NETNS`: `bpf_get_netns_cookie`.
    pub client: u64,
    /// The frontend's `ServiceValue::service_id`.
    pub service_id: u32,
    /// `AFFINITY_CLIENT_*`: which kind of identity `client` is.
    pub client_kind: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 16);

/// Key of the IPv6 session-affinity map: an IPv6 client (packet path) of a frontend. The socket
/// path keys IPv6 sockets by network namespace in [`AffinityKey`], like IPv4 ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct AffinityKey6 {
    /// The source IPv6 address.
    pub client: Addr6,
    pub service_id: u32,
    /// `AFFINITY_CLIENT_IP`.
    pub client_kind: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<AffinityKey6>() == 24);

/// Packet path (XDP): the client is the packet's source address.
pub const AFFINITY_CLIENT_IP: u8 = 1;
/// Socket path (cgroup hooks): the client is the socket's network namespace.
pub const AFFINITY_CLIENT_NETNS: u8 = 2;

/// Value of the session-affinity map: the backend a client sticks to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct AffinityValue {
    /// `bpf_ktime_get_ns` (`CLOCK_MONOTONIC`) of the last new connection that used the entry.
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);

/// Key of the affinity-match map: the backend is in one of the frontend's slots `1..=count`.
/// The daemon keeps one entry per backend slot, so the datapath can check in O(1) that a
/// remembered backend still serves the frontend (value: `u32`, unused, 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct AffinityMatchKey {
    pub service_id: u32,
    pub backend_id: u32,
}
const _: () = assert!(core::mem::size_of::<AffinityMatchKey>() == 8);
