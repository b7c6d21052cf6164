//! The packet-test fixture: the eBPF object loaded in a fresh network namespace with a fixed
//! veth topology, run on crafted frames through `BPF_PROG_TEST_RUN`, checked Katran-style
//! ({description, input, expected verdict, expected output}).
//!
//! Topology: the node interface `sl0` (`NODE_MAC`, 198.18.0.1/24, `fd00:18::1/64`) with its
//! veth peer `sl1` (`PEER_MAC`), and a second link `sl2` (198.18.2.1/24, `fd00:18:2::1/64`).
//! The client and two next hops are permanent neighbours in both families, so every FIB lookup
//! has one answer. IPv6 is on only on `sl0` and `sl2`, without autoconfiguration.

use std::{
    ffi::CString,
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp, XdpMode, tc},
};
use proxy_common::{
    Addr6, Backend, Backend6, CONFIG_F_COUNTERS, Config, Config6, CtEntry, CtEntry6, CtKey, CtKey6,
    NODE_ADDR_F_PRIMARY, NodeAddr, SVC_F_EXTERNAL, SVC_SCOPE_DEFAULT, ServiceKey, ServiceKey6,
    ServiceValue, SourceRange, SourceRange6, handoff, map_names,
    net::ip6_to_net,
    program_names,
    stats::{DropReason, Hook, PassReason, hook_slot},
};

use crate::{
    isolated_netns::IsolatedNetns,
    packet::{self, Mac, NODE_MAC, PEER_MAC},
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub const SNAT_PORT_MIN: u16 = 61000;
pub const SNAT_PORT_MAX: u16 = 61999;

pub const NODE_IP: [u8; 4] = [198, 18, 0, 1];
pub const CLIENT_IP: [u8; 4] = [198, 18, 0, 100];
pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0xaa];
pub const SL2_MAC: Mac = [0x02, 0, 0, 0, 0, 0x21];
pub const SL3_MAC: Mac = [0x02, 0, 0, 0, 0, 0x23];

/// A next hop on `sl0`'s link and one on `sl2`'s link, with their MACs.
pub const NEXT_HOP_IP: [u8; 4] = [198, 18, 0, 20];
pub const NEXT_HOP_MAC: Mac = [0x02, 0, 0, 0, 0, 0x20];
pub const OTHER_LINK_IP: [u8; 4] = [198, 18, 2, 20];
pub const OTHER_LINK_MAC: Mac = [0x02, 0, 0, 0, 0, 0x22];

/// The same places in IPv6 (`fd00::/8`).
pub const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 1);
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x100);
pub const NEXT_HOP_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x20);
pub const OTHER_LINK_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 2, 0, 0, 0, 0, 0x20);

pub fn sock6(ip: Ipv6Addr, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(ip, port, 0, 0)
}

/// A conntrack key of the IPv6 map for packets from `from` to `to`.
pub fn ct_key6(from: SocketAddrV6, to: SocketAddrV6, proto: u8, dir: u8) -> CtKey6 {
    CtKey6 {
        saddr: ip6_to_net(*from.ip()),
        daddr: ip6_to_net(*to.ip()),
        sport: from.port().to_be(),
        dport: to.port().to_be(),
        proto,
        dir,
        _pad: 0,
    }
}

pub fn sock(ip: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}

pub fn be_addr(addr: SocketAddrV4) -> u32 {
    u32::from_ne_bytes(addr.ip().octets())
}

/// A conntrack key for packets from `from` to `to`.
pub fn ct_key(from: SocketAddrV4, to: SocketAddrV4, proto: u8, dir: u8) -> CtKey {
    CtKey {
        saddr: be_addr(from),
        daddr: be_addr(to),
        sport: from.port().to_be(),
        dport: to.port().to_be(),
        proto,
        dir,
        _pad: 0,
    }
}

/// Which program a case runs.
#[derive(Clone, Copy, Debug)]
pub enum Program {
    Xdp,
    TcIngress,
    TcEgress,
    /// `tc_from_pod`: what a pod sends, on its host-side interface's ingress.
    FromPod,
    /// `tc_to_pod`: what reaches a pod, on its host-side interface's egress.
    ToPod,
}

impl Program {
    /// The program's name in the object.
    pub fn name(self) -> &'static str {
        match self {
            Program::Xdp => program_names::XDP_INGRESS,
            Program::TcIngress => program_names::TC_INGRESS,
            Program::TcEgress => program_names::TC_EGRESS,
            Program::FromPod => program_names::TC_FROM_POD,
            Program::ToPod => program_names::TC_TO_POD,
        }
    }
}

/// The output a case expects.
#[derive(Debug)]
pub enum Expect {
    /// The input, byte for byte.
    Unchanged,
    /// These bytes.
    Frame(Vec<u8>),
    /// These bytes handed to `tc_ingress` for a redirect to `ifindex`: the hand-off mark in
    /// their Ethernet addresses (see [`handed_off`]).
    Redirect { ifindex: u32, frame: Vec<u8> },
}

/// One row of a table: Katran's {description, input, expected verdict, expected output}.
pub struct Case {
    pub description: &'static str,
    pub program: Program,
    pub input: Vec<u8>,
    pub verdict: u32,
    pub output: Expect,
}

impl Case {
    pub fn xdp(description: &'static str, input: Vec<u8>, verdict: u32, output: Expect) -> Self {
        Self {
            description,
            program: Program::Xdp,
            input,
            verdict,
            output,
        }
    }

    pub fn tc_egress(description: &'static str, input: Vec<u8>, output: Expect) -> Self {
        Self {
            description,
            program: Program::TcEgress,
            input,
            verdict: TC_ACT_OK,
            output,
        }
    }

    /// A frame a pod sends, through `tc_from_pod`.
    pub fn from_pod(
        description: &'static str,
        input: Vec<u8>,
        verdict: u32,
        output: Expect,
    ) -> Self {
        Self {
            description,
            program: Program::FromPod,
            input,
            verdict,
            output,
        }
    }

    /// A frame on its way into a pod, through `tc_to_pod` (which never drops).
    pub fn to_pod(description: &'static str, input: Vec<u8>, output: Expect) -> Self {
        Self {
            description,
            program: Program::ToPod,
            input,
            verdict: TC_ACT_OK,
            output,
        }
    }
}

/// Which of a family's conntrack maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// `CT_V1`, `CT6_V1`: new flows (LRU).
    New,
    /// `CT_EST_V1`, `CT6_EST_V1`: confirmed flows.
    Established,
}

impl Tier {
    pub const fn map(self) -> &'static str {
        match self {
            Self::New => map_names::CONNTRACK,
            Self::Established => map_names::CONNTRACK_ESTABLISHED,
        }
    }

    pub const fn map6(self) -> &'static str {
        match self {
            Self::New => map_names::CONNTRACK6,
            Self::Established => map_names::CONNTRACK_ESTABLISHED6,
        }
    }
}

/// What a program run gave back.
pub struct Run {
    pub verdict: u32,
    pub frame: Vec<u8>,
}

/// The eBPF object loaded in a fresh namespace with the test topology and services.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub sl0: u32,
    pub sl2: u32,
    // Dropped last: the programs and maps go first, then the namespace.
    pub netns: IsolatedNetns,
}

/// Entries of each conntrack map in [`Datapath::new`].
pub const CONNTRACK_ENTRIES: u32 = 4096;

impl Datapath {
    pub fn new(config_flags: u32) -> Self {
        Self::with_conntrack(config_flags, CONNTRACK_ENTRIES, CONNTRACK_ENTRIES)
    }

    /// [`Datapath::new`] with `new_flows` entries in each family's LRU map of new flows
    /// (`CT_V1`, `CT6_V1`) and `established` in its map of confirmed ones.
    pub fn with_conntrack(config_flags: u32, new_flows: u32, established: u32) -> Self {
        let netns = IsolatedNetns::enter().expect("create a network namespace (needs root)");
        // No IPv6 chatter (router solicitations, MLD) on the links the capture test watches:
        // IPv6 only where the IPv6 tables need it (sl0, sl2), with no link-local address and
        // no autoconfiguration.
        netns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        netns.sysctl("net.ipv6.conf.default.addr_gen_mode", "1");
        netns.sysctl("net.ipv6.conf.default.accept_ra", "0");
        netns.ip(&format!(
            "link add sl0 address {} type veth peer name sl1 address {}",
            mac(NODE_MAC),
            mac(PEER_MAC)
        ));
        netns.ip(&format!(
            "link add sl2 address {} type veth peer name sl3 address {}",
            mac(SL2_MAC),
            mac(SL3_MAC)
        ));
        for link in ["sl0", "sl1", "sl2", "sl3"] {
            netns.ip(&format!("link set {link} up"));
        }
        netns.ip("addr add 198.18.0.1/24 dev sl0");
        netns.ip("addr add 198.18.2.1/24 dev sl2");
        for link in ["sl0", "sl2"] {
            netns.sysctl(&format!("net.ipv6.conf.{link}.disable_ipv6"), "0");
        }
        netns.ip(&format!("addr add {NODE_IP6}/64 dev sl0 nodad"));
        netns.ip("addr add fd00:18:2::1/64 dev sl2 nodad");
        for (ip, link, lladdr) in [
            (CLIENT_IP6, "sl0", CLIENT_MAC),
            (NEXT_HOP_IP6, "sl0", NEXT_HOP_MAC),
            (OTHER_LINK_IP6, "sl2", OTHER_LINK_MAC),
        ] {
            netns.ip(&format!(
                "neigh replace {ip} lladdr {} dev {link} nud permanent",
                mac(lladdr)
            ));
        }
        netns.sysctl("net.ipv6.conf.all.forwarding", "1");
        for (ip, link, lladdr) in [
            (CLIENT_IP, "sl0", CLIENT_MAC),
            (NEXT_HOP_IP, "sl0", NEXT_HOP_MAC),
            (OTHER_LINK_IP, "sl2", OTHER_LINK_MAC),
        ] {
            netns.ip(&format!(
                "neigh replace {} lladdr {} dev {link} nud permanent",
                Ipv4Addr::from(ip),
                mac(lladdr)
            ));
        }
        // bpf_fib_lookup only forwards from interfaces with forwarding on.
        netns.sysctl("net.ipv4.ip_forward", "1");
        let (sl0, sl2) = (netns.ifindex("sl0"), netns.ifindex("sl2"));

        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::SERVICES, 1024)
            .map_max_entries(map_names::BACKENDS, 1024)
            .map_max_entries(map_names::SERVICE_META, 16)
            .map_max_entries(map_names::CONNTRACK, new_flows)
            .map_max_entries(map_names::CONNTRACK_ESTABLISHED, established)
            .map_max_entries(map_names::SOCK_REV_NAT, 16)
            .map_max_entries(map_names::SERVICES6, 1024)
            .map_max_entries(map_names::BACKENDS6, 1024)
            .map_max_entries(map_names::CONNTRACK6, new_flows)
            .map_max_entries(map_names::CONNTRACK_ESTABLISHED6, established)
            .map_max_entries(map_names::SOCK_REV_NAT6, 16)
            .map_max_entries(map_names::AFFINITY6, 1024)
            .load(proxy_user::EBPF_OBJECT)
            .expect("load the eBPF object");
        load_xdp(&mut ebpf);
        for name in [
            program_names::TC_INGRESS,
            program_names::TC_EGRESS,
            program_names::TC_FROM_POD,
            program_names::TC_TO_POD,
        ] {
            let program: &mut SchedClassifier = program_mut(&mut ebpf, name);
            program
                .load()
                .unwrap_or_else(|err| panic!("verifier rejected {name}: {err:?}"));
        }
        let mut datapath = Self {
            ebpf,
            sl0,
            sl2,
            netns,
        };
        datapath.set_config(Config {
            snat_addr: u32::from_ne_bytes(NODE_IP),
            snat_port_min: SNAT_PORT_MIN,
            snat_port_max: SNAT_PORT_MAX,
            // Counting on, as the daemon runs it.
            flags: config_flags | CONFIG_F_COUNTERS,
            log_level: 0,
        });
        datapath.add_node_address(NODE_IP);
        datapath.set_config6(NODE_IP6);
        datapath.add_node_address6(NODE_IP6);
        datapath
    }

    /// Sets the IPv6 SNAT address (`CONFIG6_V1`); `::` disables SNAT for IPv6.
    pub fn set_config6(&mut self, snat: Ipv6Addr) {
        let map = self.ebpf.map_mut(map_names::CONFIG6).expect("CONFIG6_V1");
        let mut array: Array<_, Config6> = Array::try_from(map).expect("CONFIG6_V1 is an array");
        let config = Config6 {
            snat_addr: ip6_to_net(snat),
        };
        array.set(0, &config, 0).expect("write CONFIG6_V1");
    }

    /// Registers an IPv6 node address (NodePorts are served on it).
    pub fn add_node_address6(&mut self, ip: Ipv6Addr) {
        let mut node_addrs: HashMap<_, Addr6, NodeAddr> = self.hash_map(map_names::NODE_ADDRS6);
        let flags = NodeAddr {
            flags: NODE_ADDR_F_PRIMARY,
        };
        node_addrs
            .insert(&ip6_to_net(ip), &flags, 0)
            .expect("write NODE_ADDR6_V1");
    }

    pub fn add_backend6(&mut self, id: u32, addr: SocketAddrV6, flags: u8) {
        let mut backends: HashMap<_, u32, Backend6> = self.hash_map(map_names::BACKENDS6);
        let backend = Backend6 {
            addr: ip6_to_net(*addr.ip()),
            port: addr.port().to_be(),
            flags,
            _pad: 0,
        };
        backends
            .insert(&id, &backend, 0)
            .expect("write BACKEND6_V1");
    }

    /// Writes an IPv6 service the way the daemon must: backend slots first, then slot 0.
    /// `affinity_timeout` seconds of ClientIP affinity (0: off).
    pub fn add_service6(
        &mut self,
        service_id: u32,
        frontend: SocketAddrV6,
        proto: u8,
        flags: u16,
        affinity_timeout: u32,
        backend_ids: &[u32],
    ) {
        let mut services: HashMap<_, ServiceKey6, ServiceValue> =
            self.hash_map(map_names::SERVICES6);
        let count = u16::try_from(backend_ids.len()).expect("few backends");
        let key = |slot: u16| ServiceKey6 {
            addr: ip6_to_net(*frontend.ip()),
            port: frontend.port().to_be(),
            slot,
            proto,
            scope: SVC_SCOPE_DEFAULT,
            _pad: 0,
        };
        let head = ServiceValue::head(service_id, count, flags | SVC_F_EXTERNAL, affinity_timeout);
        for (slot, backend_id) in (1..).zip(backend_ids) {
            services
                .insert(&key(slot), &head.slot(*backend_id), 0)
                .expect("write SVC6_V1 slot");
        }
        services.insert(&key(0), &head, 0).expect("write SVC6_V1");
    }

    /// Allows IPv6 clients in `addr/prefix` on the frontend `service_id`.
    pub fn add_source_range6(&mut self, service_id: u32, addr: Ipv6Addr, prefix: u32) {
        let map = self
            .ebpf
            .map_mut(map_names::SOURCE_RANGES6)
            .expect("SRC_RANGE6_V1");
        let mut trie: LpmTrie<_, SourceRange6, u32> =
            LpmTrie::try_from(map).expect("SRC_RANGE6_V1 is an LPM trie");
        let data = SourceRange6 {
            service_id,
            addr: ip6_to_net(addr),
        };
        trie.insert(&Key::new(32 + prefix, data), &1, 0)
            .expect("write SRC_RANGE6_V1");
    }

    /// The IPv6 entry under `key`, from whichever conntrack map holds it (the established
    /// one first, as the datapath reads them).
    pub fn conntrack6(&mut self, key: CtKey6) -> Option<CtEntry6> {
        self.conntrack6_in(Tier::Established, key)
            .or_else(|| self.conntrack6_in(Tier::New, key))
    }

    pub fn conntrack6_in(&mut self, tier: Tier, key: CtKey6) -> Option<CtEntry6> {
        let conntrack: HashMap<_, CtKey6, CtEntry6> = self.hash_map(tier.map6());
        conntrack.get(&key, 0).ok()
    }

    /// IPv6 conntrack entries in both maps.
    pub fn conntrack6_len(&mut self) -> usize {
        self.conntrack6_len_in(Tier::New) + self.conntrack6_len_in(Tier::Established)
    }

    pub fn conntrack6_len_in(&mut self, tier: Tier) -> usize {
        let conntrack: HashMap<_, CtKey6, CtEntry6> = self.hash_map(tier.map6());
        conntrack.keys().count()
    }

    /// The pass counter of `reason` (`PASS_STATS_V1`), summed over CPUs.
    pub fn passes(&mut self, reason: PassReason) -> u64 {
        self.counter(map_names::PASS_STATS, reason as u32)
    }

    /// Slot `index` of the per-CPU counter array `name`, summed over CPUs.
    fn counter(&mut self, name: &str, index: u32) -> u64 {
        let map = self
            .ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("no map {name}"));
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(map)
            .unwrap_or_else(|e| panic!("{name} is not a per-CPU array: {e:?}"));
        counters
            .get(&index, 0)
            .unwrap_or_else(|e| panic!("read {name}[{index}]: {e:?}"))
            .iter()
            .sum()
    }

    /// Registers a node address (NodePorts are served on it).
    pub fn add_node_address(&mut self, ip: [u8; 4]) {
        let mut node_addrs: HashMap<_, u32, NodeAddr> = self.hash_map(map_names::NODE_ADDRS);
        let flags = NodeAddr {
            flags: NODE_ADDR_F_PRIMARY,
        };
        node_addrs
            .insert(&u32::from_ne_bytes(ip), &flags, 0)
            .expect("write NODE_ADDR_V1");
    }

    pub fn add_backend(&mut self, id: u32, addr: SocketAddrV4, flags: u8) {
        let mut backends: HashMap<_, u32, Backend> = self.hash_map(map_names::BACKENDS);
        let backend = Backend {
            addr: be_addr(addr),
            port: addr.port().to_be(),
            flags,
            _pad: 0,
        };
        backends.insert(&id, &backend, 0).expect("write BACKEND_V1");
    }

    /// Writes a service the way the daemon must: backend slots first, then slot 0.
    pub fn add_service(
        &mut self,
        service_id: u32,
        frontend: SocketAddrV4,
        proto: u8,
        flags: u16,
        backend_ids: &[u32],
    ) {
        self.add_service_in_scope(
            service_id,
            frontend,
            proto,
            SVC_SCOPE_DEFAULT,
            flags,
            backend_ids,
        );
    }

    /// [`Datapath::add_service`] for one lookup scope (`SVC_SCOPE_*`).
    pub fn add_service_in_scope(
        &mut self,
        service_id: u32,
        frontend: SocketAddrV4,
        proto: u8,
        scope: u8,
        flags: u16,
        backend_ids: &[u32],
    ) {
        let mut services: HashMap<_, ServiceKey, ServiceValue> = self.hash_map(map_names::SERVICES);
        let count = u16::try_from(backend_ids.len()).expect("few backends");
        let key = |slot: u16| ServiceKey::new(frontend, proto, scope, slot);
        let head = ServiceValue::head(service_id, count, flags | SVC_F_EXTERNAL, 0);
        for (slot, backend_id) in (1..).zip(backend_ids) {
            services
                .insert(&key(slot), &head.slot(*backend_id), 0)
                .expect("write SVC_V1 slot");
        }
        services.insert(&key(0), &head, 0).expect("write SVC_V1");
    }

    /// Allows clients in `addr/prefix` on the frontend `service_id` (`loadBalancerSourceRanges`).
    pub fn add_source_range(&mut self, service_id: u32, addr: [u8; 4], prefix: u32) {
        let map = self
            .ebpf
            .map_mut(map_names::SOURCE_RANGES)
            .expect("SRC_RANGE_V1");
        let mut trie: LpmTrie<_, SourceRange, u32> =
            LpmTrie::try_from(map).expect("SRC_RANGE_V1 is an LPM trie");
        let data = SourceRange {
            service_id,
            addr: u32::from_ne_bytes(addr),
        };
        trie.insert(&Key::new(32 + prefix, data), &1, 0)
            .expect("write SRC_RANGE_V1");
    }

    /// Marks `addr/prefix` a service address of `kind` (`SVC_ADDR_*`).
    pub fn add_service_addr(&mut self, addr: [u8; 4], prefix: u32, kind: u32) {
        let map = self
            .ebpf
            .map_mut(map_names::SERVICE_ADDRS)
            .expect("SVC_ADDR_V1");
        let mut trie: LpmTrie<_, u32, u32> =
            LpmTrie::try_from(map).expect("SVC_ADDR_V1 is an LPM trie");
        trie.insert(&Key::new(prefix, u32::from_ne_bytes(addr)), &kind, 0)
            .expect("write SVC_ADDR_V1");
    }

    /// How often `hook` returned `verdict` (`HOOK_STATS_V2`, summed over CPUs).
    pub fn hook_count(&mut self, hook: Hook, verdict: u32) -> u64 {
        self.counter(map_names::HOOK_STATS, hook_slot(hook, verdict))
    }

    /// The drop counter of `reason` (`DROP_STATS_V1`), summed over CPUs.
    pub fn drops(&mut self, reason: DropReason) -> u64 {
        self.counter(map_names::DROP_STATS, reason as u32)
    }

    pub fn set_config(&mut self, config: Config) {
        let map = self.ebpf.map_mut(map_names::CONFIG).expect("CONFIG_V1");
        let mut array: Array<_, Config> = Array::try_from(map).expect("CONFIG_V1 is an array");
        array.set(0, &config, 0).expect("write CONFIG_V1");
    }

    pub fn hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &str,
    ) -> HashMap<&mut MapData, K, V> {
        let map = self
            .ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("no map {name}"));
        HashMap::try_from(map).unwrap_or_else(|err| panic!("map {name}: {err}"))
    }

    /// The IPv4 entry under `key`, from whichever conntrack map holds it (the established
    /// one first, as the datapath reads them).
    pub fn conntrack(&mut self, key: CtKey) -> Option<CtEntry> {
        self.conntrack_in(Tier::Established, key)
            .or_else(|| self.conntrack_in(Tier::New, key))
    }

    pub fn conntrack_in(&mut self, tier: Tier, key: CtKey) -> Option<CtEntry> {
        let conntrack: HashMap<_, CtKey, CtEntry> = self.hash_map(tier.map());
        conntrack.get(&key, 0).ok()
    }

    /// IPv4 conntrack entries in both maps.
    pub fn conntrack_len(&mut self) -> usize {
        self.conntrack_len_in(Tier::New) + self.conntrack_len_in(Tier::Established)
    }

    pub fn conntrack_len_in(&mut self, tier: Tier) -> usize {
        let conntrack: HashMap<_, CtKey, CtEntry> = self.hash_map(tier.map());
        conntrack.keys().count()
    }

    /// Runs a program on `input`; XDP runs as if the frame arrived on `sl0`.
    pub fn run(&mut self, program: Program, input: &[u8]) -> Run {
        self.try_run(program, input)
            .unwrap_or_else(|err| panic!("BPF_PROG_TEST_RUN {}: {err:?}", program.name()))
    }

    /// [`Datapath::run`], returning the kernel's refusal (an skb run on a frame whose IP
    /// header is cut is one).
    pub fn try_run(
        &mut self,
        program: Program,
        input: &[u8],
    ) -> Result<Run, aya::programs::ProgramError> {
        let mut out = vec![0u8; input.len() + 512];
        match program {
            Program::Xdp => {
                let ctx_in = xdp_md(input.len(), self.sl0);
                let xdp: &mut Xdp = program_mut(&mut self.ebpf, program_names::XDP_INGRESS);
                let result = xdp.test_run(TestRunOptions {
                    data_in: Some(input),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx_in),
                    ..TestRunOptions::default()
                })?;
                out.truncate(result.data_size_out as usize);
                Ok(Run {
                    verdict: result.return_value,
                    frame: out,
                })
            }
            Program::TcIngress | Program::TcEgress | Program::FromPod | Program::ToPod => {
                let tc: &mut SchedClassifier = program_mut(&mut self.ebpf, program.name());
                let result = tc.test_run(TestRunOptions {
                    data_in: Some(input),
                    data_out: Some(&mut out),
                    ..TestRunOptions::default()
                })?;
                out.truncate(result.data_size_out as usize);
                Ok(Run {
                    verdict: result.return_value,
                    frame: out,
                })
            }
        }
    }

    /// Attaches `tc_ingress` to `iface`, as the daemon does on node interfaces.
    pub fn attach_tc_ingress(&mut self, iface: &str) {
        let name = CString::new(iface).expect("an interface name");
        // With TCX (kernel 6.6+) no qdisc is needed; without it, clsact must exist.
        let _ = tc::qdisc_add_clsact(&name);
        let program: &mut SchedClassifier = program_mut(&mut self.ebpf, program_names::TC_INGRESS);
        program
            .attach(&name, TcAttachType::Ingress)
            .unwrap_or_else(|err| panic!("attach tc_ingress to {iface}: {err:?}"));
    }

    /// Attaches `xdp_ingress` to `sl0` as the daemon does, so that frames sent into `sl1` (see
    /// [`Capture::send`](crate::capture::Capture::send)) meet it for real: what it passes enters
    /// `sl0`'s stack, what it transmits leaves. (`BPF_PROG_TEST_RUN`'s live-frame mode would do
    /// without the attachment, but some kernels refuse it.)
    pub fn attach_xdp(&mut self) {
        let xdp: &mut Xdp = program_mut(&mut self.ebpf, program_names::XDP_INGRESS);
        xdp.attach(c"sl0", XdpMode::default())
            .unwrap_or_else(|err| panic!("attach xdp_ingress to sl0: {err:?}"));
    }

    /// Runs one table row and checks verdict, bytes and checksums.
    pub fn check(&mut self, case: &Case) -> Run {
        let run = self.run(case.program, &case.input);
        let what = case.description;
        assert_eq!(
            run.verdict, case.verdict,
            "{what}: verdict (XDP: 1 drop, 2 pass, 3 tx, 4 redirect; TC: 0 ok, 7 redirect)"
        );
        let expected = match &case.output {
            Expect::Unchanged => case.input.clone(),
            Expect::Frame(frame) => frame.clone(),
            Expect::Redirect { ifindex, frame } => handed_off(frame, *ifindex),
        };
        let expected = expected.as_slice();
        assert!(
            run.frame == expected,
            "{what}: output bytes differ\n got:      {}\n expected: {}\n got parsed: {:?}\n \
             expected parsed: {:?}",
            hex(&run.frame),
            hex(expected),
            packet::parse_any(&run.frame),
            packet::parse_any(expected),
        );
        // A fragment's L4 checksum covers its datagram: tests check that reassembled.
        if !matches!(case.output, Expect::Unchanged)
            && !packet::is_fragment(&run.frame)
            && let Err(err) = packet::parse_any(&run.frame)
        {
            panic!("{what}: output is not a valid frame: {err}");
        }
        run
    }

    pub fn check_all(&mut self, cases: &[Case]) {
        for case in cases {
            self.check(case);
        }
    }
}

pub fn load_xdp(ebpf: &mut Ebpf) {
    let program: &mut Xdp = program_mut(ebpf, program_names::XDP_INGRESS);
    program
        .load()
        .unwrap_or_else(|err| panic!("verifier rejected xdp_ingress: {err:?}"));
}

pub fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut T
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
    <&'a mut T as TryFrom<&'a mut aya::programs::Program>>::Error: std::fmt::Debug,
{
    let program = ebpf
        .program_mut(name)
        .unwrap_or_else(|| panic!("no program {name} in the object"));
    program
        .try_into()
        .unwrap_or_else(|err| panic!("program {name} has an unexpected type: {err:?}"))
}

/// A `struct xdp_md` for `BPF_PROG_TEST_RUN`: the frame with no metadata, received on `ifindex`.
pub fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let fields = [
        0,
        u32::try_from(len).expect("small frame"),
        0,
        ifindex,
        0,
        0,
    ];
    let mut bytes = [0u8; 24];
    for (chunk, field) in bytes.as_chunks_mut::<4>().0.iter_mut().zip(fields) {
        chunk.copy_from_slice(&field.to_ne_bytes());
    }
    bytes
}

/// `frame` as XDP hands it to `tc_ingress` for a redirect to `ifindex`: the hand-off mark over
/// its Ethernet addresses.
pub fn handed_off(frame: &[u8], ifindex: u32) -> Vec<u8> {
    let mut frame = frame.to_vec();
    frame[0..6].copy_from_slice(&handoff::destination(ifindex));
    frame[6..12].copy_from_slice(&handoff::SOURCE);
    frame
}

pub fn mac(mac: Mac) -> String {
    mac.map(|byte| format!("{byte:02x}")).join(":")
}

pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}
