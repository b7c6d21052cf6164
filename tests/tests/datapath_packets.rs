//! Packet tests of the XDP and TC programs through BPF_PROG_TEST_RUN: crafted frames in,
//! verdict and exact output bytes checked (Katran-style tables), conntrack inspected.
//!
//! Each test runs in its own network namespace (a veth topology with fixed addresses and
//! permanent neighbours) so the FIB lookups are deterministic. Needs root.

use std::net::{Ipv4Addr, SocketAddrV4};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use proxy_common::{
    BACKEND_F_LOCAL, Backend, CONFIG_F_XDP_TX, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_LOCAL, CT_F_SNAT,
    Config, CtEntry, CtKey, IPPROTO_TCP, IPPROTO_UDP, NODE_ADDR_F_PRIMARY, NodeAddr,
    SVC_F_EXTERNAL, SVC_F_NODEPORT, ServiceKey, ServiceValue, TCP_STATE_ESTABLISHED, TCP_STATE_SYN,
    XDP_META_MAGIC, map_names, program_names, tcp,
};
use proxy_tests::{
    isolated_netns::IsolatedNetns,
    packet::{
        self, ETH_P_ARP, ETH_P_IPV6, Frame, IP_DF, IP_MF, Mac, NODE_MAC, PEER_MAC, Transport,
    },
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;

const SNAT_PORT_MIN: u16 = 61000;
const SNAT_PORT_MAX: u16 = 61999;

// The topology: the node interface `sl0` (NODE_MAC, 198.18.0.1/24) with its veth peer `sl1`
// (PEER_MAC) and a second link `sl2` (198.18.2.1/24). Neighbours are permanent entries.
const NODE_IP: [u8; 4] = [198, 18, 0, 1];
const CLIENT_IP: [u8; 4] = [198, 18, 0, 100];
const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0xaa];
const SL2_MAC: Mac = [0x02, 0, 0, 0, 0, 0x21];
const SL3_MAC: Mac = [0x02, 0, 0, 0, 0, 0x23];
const REMOTE_MAC: Mac = [0x02, 0, 0, 0, 0, 0x20];
const OTHER_LINK_MAC: Mac = [0x02, 0, 0, 0, 0, 0x22];

// Frontends (198.19.0.0/24 is not routed: services exist only in the maps).
const CLUSTER_IP: [u8; 4] = [198, 19, 0, 10];
const REMOTE_SVC: [u8; 4] = [198, 19, 0, 20];
const OTHER_LINK_SVC: [u8; 4] = [198, 19, 0, 21];
const NO_NEIGH_SVC: [u8; 4] = [198, 19, 0, 22];
const EMPTY_SVC: [u8; 4] = [198, 19, 0, 30];
const NODE_PORT: u16 = 30080;

// Backends: ids and addresses.
const LOCAL_A: (u32, [u8; 4], u16) = (1, [198, 19, 100, 1], 8080);
const LOCAL_B: (u32, [u8; 4], u16) = (2, [198, 19, 100, 2], 8080);
const LOCAL_DNS: (u32, [u8; 4], u16) = (3, [198, 19, 100, 1], 5353);
const REMOTE: (u32, [u8; 4], u16) = (10, [198, 18, 0, 20], 8080);
const OTHER_LINK: (u32, [u8; 4], u16) = (11, [198, 18, 2, 20], 8080);
const NO_NEIGH: (u32, [u8; 4], u16) = (12, [198, 18, 0, 30], 8080);
const REMOTE_DNS: (u32, [u8; 4], u16) = (13, [198, 18, 0, 20], 5353);

fn sock(ip: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}

fn client(port: u16) -> SocketAddrV4 {
    sock(CLIENT_IP, port)
}

fn be_addr(addr: SocketAddrV4) -> u32 {
    u32::from_ne_bytes(addr.ip().octets())
}

/// Which program a case runs.
#[derive(Clone, Copy, Debug)]
enum Program {
    Xdp,
    TcIngress,
    TcEgress,
}

/// The output a case expects.
#[derive(Debug)]
enum Expect {
    /// The input, byte for byte.
    Unchanged,
    /// These bytes.
    Frame(Vec<u8>),
    /// XDP metadata asking `tc_ingress` to redirect to `ifindex`, then these bytes.
    Redirect { ifindex: u32, frame: Vec<u8> },
}

/// One row of a table: Katran's {description, input, expected verdict, expected output}.
struct Case {
    description: &'static str,
    program: Program,
    input: Vec<u8>,
    verdict: u32,
    output: Expect,
}

impl Case {
    fn xdp(description: &'static str, input: Vec<u8>, verdict: u32, output: Expect) -> Self {
        Self {
            description,
            program: Program::Xdp,
            input,
            verdict,
            output,
        }
    }

    fn tc_egress(description: &'static str, input: Vec<u8>, output: Expect) -> Self {
        Self {
            description,
            program: Program::TcEgress,
            input,
            verdict: TC_ACT_OK,
            output,
        }
    }
}

/// What a program run gave back.
struct Run {
    verdict: u32,
    meta: Vec<u8>,
    frame: Vec<u8>,
}

/// The eBPF object loaded in a fresh namespace with the test topology and services.
struct Datapath {
    ebpf: Ebpf,
    sl0: u32,
    sl2: u32,
    // Dropped last: the programs and maps go first, then the namespace.
    netns: IsolatedNetns,
}

impl Datapath {
    fn new(config_flags: u32) -> Self {
        let netns = IsolatedNetns::enter().expect("create a network namespace (needs root)");
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
        for (ip, link, lladdr) in [
            (CLIENT_IP, "sl0", CLIENT_MAC),
            (REMOTE.1, "sl0", REMOTE_MAC),
            (OTHER_LINK.1, "sl2", OTHER_LINK_MAC),
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
            .map_max_entries(map_names::CONNTRACK, 4096)
            .map_max_entries(map_names::SOCK_REV_NAT, 16)
            .load(proxy_user::EBPF_OBJECT)
            .expect("load the eBPF object");
        load_xdp(&mut ebpf);
        for name in [program_names::TC_INGRESS, program_names::TC_EGRESS] {
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
            flags: config_flags,
            _pad: 0,
        });
        datapath.install_services();
        datapath
    }

    fn install_services(&mut self) {
        let mut node_addrs: HashMap<_, u32, NodeAddr> = self.hash_map(map_names::NODE_ADDRS);
        node_addrs
            .insert(
                u32::from_ne_bytes(NODE_IP),
                NodeAddr {
                    flags: NODE_ADDR_F_PRIMARY,
                },
                0,
            )
            .expect("write NODE_ADDR_V1");
        for (id, ip, port) in [LOCAL_A, LOCAL_B, LOCAL_DNS] {
            self.add_backend(id, sock(ip, port), BACKEND_F_LOCAL);
        }
        for (id, ip, port) in [REMOTE, OTHER_LINK, NO_NEIGH, REMOTE_DNS] {
            self.add_backend(id, sock(ip, port), 0);
        }
        let tcp = IPPROTO_TCP;
        let udp = IPPROTO_UDP;
        self.add_service(100, sock(CLUSTER_IP, 80), tcp, 0, &[LOCAL_A.0, LOCAL_B.0]);
        self.add_service(101, sock(CLUSTER_IP, 53), udp, 0, &[LOCAL_DNS.0]);
        let nodeport = sock([0; 4], NODE_PORT);
        self.add_service(102, nodeport, tcp, SVC_F_NODEPORT, &[LOCAL_A.0]);
        self.add_service(103, sock(REMOTE_SVC, 80), tcp, 0, &[REMOTE.0]);
        self.add_service(104, sock(REMOTE_SVC, 53), udp, 0, &[REMOTE_DNS.0]);
        self.add_service(105, sock(OTHER_LINK_SVC, 80), tcp, 0, &[OTHER_LINK.0]);
        self.add_service(106, sock(NO_NEIGH_SVC, 80), tcp, 0, &[NO_NEIGH.0]);
        self.add_service(107, sock(EMPTY_SVC, 80), tcp, 0, &[]);
        self.add_service(108, sock(EMPTY_SVC, 53), udp, 0, &[]);
    }

    fn add_backend(&mut self, id: u32, addr: SocketAddrV4, flags: u8) {
        let mut backends: HashMap<_, u32, Backend> = self.hash_map(map_names::BACKENDS);
        let backend = Backend {
            addr: be_addr(addr),
            port: addr.port().to_be(),
            flags,
            _pad: 0,
        };
        backends.insert(id, backend, 0).expect("write BACKEND_V1");
    }

    /// Writes a service the way the daemon must: backend slots first, then slot 0.
    fn add_service(
        &mut self,
        service_id: u32,
        frontend: SocketAddrV4,
        proto: u8,
        flags: u16,
        backend_ids: &[u32],
    ) {
        let mut services: HashMap<_, ServiceKey, ServiceValue> = self.hash_map(map_names::SERVICES);
        let count = u16::try_from(backend_ids.len()).expect("few backends");
        let key = |slot: u16| ServiceKey {
            addr: be_addr(frontend),
            port: frontend.port().to_be(),
            slot,
            proto,
            scope: 0,
            _pad: 0,
        };
        let value = |backend_id: u32| ServiceValue {
            backend_id,
            count,
            flags: flags | SVC_F_EXTERNAL,
            service_id,
            affinity_timeout: 0,
        };
        for (slot, backend_id) in (1..).zip(backend_ids) {
            services
                .insert(key(slot), value(*backend_id), 0)
                .expect("write SVC_V1 slot");
        }
        services.insert(key(0), value(0), 0).expect("write SVC_V1");
    }

    fn set_config(&mut self, config: Config) {
        let map = self.ebpf.map_mut(map_names::CONFIG).expect("CONFIG_V1");
        let mut array: Array<_, Config> = Array::try_from(map).expect("CONFIG_V1 is an array");
        array.set(0, config, 0).expect("write CONFIG_V1");
    }

    fn hash_map<K: aya::Pod, V: aya::Pod>(&mut self, name: &str) -> HashMap<&mut MapData, K, V> {
        let map = self
            .ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("no map {name}"));
        HashMap::try_from(map).unwrap_or_else(|err| panic!("map {name}: {err}"))
    }

    fn conntrack(&mut self, key: CtKey) -> Option<CtEntry> {
        let conntrack: HashMap<_, CtKey, CtEntry> = self.hash_map(map_names::CONNTRACK);
        conntrack.get(&key, 0).ok()
    }

    fn conntrack_len(&mut self) -> usize {
        let conntrack: HashMap<_, CtKey, CtEntry> = self.hash_map(map_names::CONNTRACK);
        conntrack.keys().count()
    }

    /// Runs a program on `input`; XDP runs as if the frame arrived on `sl0`.
    fn run(&mut self, program: Program, input: &[u8]) -> Run {
        let mut out = vec![0u8; input.len() + 512];
        match program {
            Program::Xdp => {
                let ctx_in = xdp_md(input.len(), self.sl0);
                let mut ctx_out = [0u8; 24];
                let xdp: &mut Xdp = program_mut(&mut self.ebpf, program_names::XDP_INGRESS);
                let result = xdp
                    .test_run(TestRunOptions {
                        data_in: Some(input),
                        data_out: Some(&mut out),
                        ctx_in: Some(&ctx_in),
                        ctx_out: Some(&mut ctx_out),
                        ..TestRunOptions::default()
                    })
                    .expect("BPF_PROG_TEST_RUN xdp_ingress");
                out.truncate(result.data_size_out as usize);
                // xdp_md.data after the run: the metadata length in front of the frame.
                let meta_len = u32::from_ne_bytes(ctx_out[0..4].try_into().expect("4 bytes"));
                let frame = out.split_off(meta_len as usize);
                Run {
                    verdict: result.return_value,
                    meta: out,
                    frame,
                }
            }
            Program::TcIngress | Program::TcEgress => {
                let name = match program {
                    Program::TcIngress => program_names::TC_INGRESS,
                    _ => program_names::TC_EGRESS,
                };
                let tc: &mut SchedClassifier = program_mut(&mut self.ebpf, name);
                let result = tc
                    .test_run(TestRunOptions {
                        data_in: Some(input),
                        data_out: Some(&mut out),
                        ..TestRunOptions::default()
                    })
                    .unwrap_or_else(|err| panic!("BPF_PROG_TEST_RUN {name}: {err:?}"));
                out.truncate(result.data_size_out as usize);
                Run {
                    verdict: result.return_value,
                    meta: Vec::new(),
                    frame: out,
                }
            }
        }
    }

    /// Runs one table row and checks verdict, metadata, bytes and checksums.
    fn check(&mut self, case: &Case) -> Run {
        let run = self.run(case.program, &case.input);
        let what = case.description;
        assert_eq!(
            run.verdict, case.verdict,
            "{what}: verdict (XDP: 1 drop, 2 pass, 3 tx, 4 redirect; TC: 0 ok, 7 redirect)"
        );
        let (meta, expected): (Vec<u8>, &[u8]) = match &case.output {
            Expect::Unchanged => (Vec::new(), &case.input),
            Expect::Frame(frame) => (Vec::new(), frame),
            Expect::Redirect { ifindex, frame } => (redirect_meta(*ifindex), frame),
        };
        assert_eq!(run.meta, meta, "{what}: XDP metadata");
        if run.frame != expected {
            panic!(
                "{what}: output bytes differ\n got:      {}\n expected: {}\n got parsed: {:?}\n \
                 expected parsed: {:?}",
                hex(&run.frame),
                hex(expected),
                packet::parse(&run.frame),
                packet::parse(expected),
            );
        }
        if !matches!(case.output, Expect::Unchanged)
            && let Err(err) = packet::parse(&run.frame)
        {
            panic!("{what}: output is not a valid frame: {err}");
        }
        run
    }

    fn check_all(&mut self, cases: &[Case]) {
        for case in cases {
            self.check(case);
        }
    }
}

fn load_xdp(ebpf: &mut Ebpf) {
    let program: &mut Xdp = program_mut(ebpf, program_names::XDP_INGRESS);
    program
        .load()
        .unwrap_or_else(|err| panic!("verifier rejected xdp_ingress: {err:?}"));
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut T
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

/// A `struct xdp_md` for BPF_PROG_TEST_RUN: the frame with no metadata, received on `ifindex`.
fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let fields = [
        0,
        u32::try_from(len).expect("small frame"),
        0,
        ifindex,
        0,
        0,
    ];
    let mut bytes = [0u8; 24];
    for (chunk, field) in bytes.chunks_exact_mut(4).zip(fields) {
        chunk.copy_from_slice(&field.to_ne_bytes());
    }
    bytes
}

fn redirect_meta(ifindex: u32) -> Vec<u8> {
    let mut meta = XDP_META_MAGIC.to_ne_bytes().to_vec();
    meta.extend_from_slice(&ifindex.to_ne_bytes());
    meta
}

fn mac(mac: Mac) -> String {
    mac.map(|byte| format!("{byte:02x}")).join(":")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn forward_key(frame: &Frame, sport: u16, dport: u16, proto: u8) -> CtKey {
    CtKey {
        saddr: u32::from_ne_bytes(frame.saddr.octets()),
        daddr: u32::from_ne_bytes(frame.daddr.octets()),
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto,
        dir: CT_DIR_FORWARD,
        _pad: 0,
    }
}

fn reply_key(from: SocketAddrV4, to: SocketAddrV4, proto: u8) -> CtKey {
    CtKey {
        saddr: be_addr(from),
        daddr: be_addr(to),
        sport: from.port().to_be(),
        dport: to.port().to_be(),
        proto,
        dir: CT_DIR_REPLY,
        _pad: 0,
    }
}

#[test]
fn cluster_ip_to_local_backend_is_dnated_and_replies_reverse_translated() {
    let mut dp = Datapath::new(0);
    let frontend = sock(CLUSTER_IP, 80);
    let syn = packet::tcp(client(40000), frontend, tcp::SYN);

    // The backend is random: learn it from the first run, then require the exact bytes.
    let run = dp.run(Program::Xdp, &syn.build());
    assert_eq!(
        run.verdict, XDP_PASS,
        "local backend: the stack delivers the packet"
    );
    let parsed = packet::parse(&run.frame).expect("valid translated frame");
    let backend = parsed.destination();
    assert!(
        [sock(LOCAL_A.1, LOCAL_A.2), sock(LOCAL_B.1, LOCAL_B.2)].contains(&backend),
        "destination {backend} is not a backend of the service"
    );
    assert_eq!(
        run.frame,
        syn.clone().addresses(client(40000), backend).build(),
        "only the destination changes"
    );

    let forward = dp
        .conntrack(forward_key(&syn, 40000, 80, IPPROTO_TCP))
        .expect("forward conntrack entry");
    assert_eq!(forward.flags, CT_F_LOCAL);
    assert_eq!(forward.tcp_state, TCP_STATE_SYN);
    assert_eq!(
        (forward.new_daddr, forward.new_dport),
        (be_addr(backend), 8080u16.to_be())
    );
    assert_eq!(
        (forward.new_saddr, forward.new_sport),
        (0, 0),
        "no SNAT for a local backend"
    );
    assert_eq!(forward.service_id, 100);
    assert_ne!(forward.last_seen_ns, 0);
    let reply = dp
        .conntrack(reply_key(backend, client(40000), IPPROTO_TCP))
        .expect("reply conntrack entry keyed backend -> client");
    assert_eq!(reply.flags, CT_F_LOCAL);
    assert_eq!(
        (reply.new_saddr, reply.new_sport),
        (be_addr(frontend), 80u16.to_be())
    );
    assert_eq!((reply.new_daddr, reply.new_dport), (0, 0));
    assert_eq!(reply.backend_id, forward.backend_id);

    let ack = packet::tcp(client(40000), frontend, tcp::ACK | tcp::PSH)
        .seq_ack(1001, 5001)
        .payload(b"GET / HTTP/1.1\r\n\r\n");
    let synack = packet::tcp(backend, client(40000), tcp::SYN | tcp::ACK)
        .seq_ack(5000, 1001)
        .macs(NODE_MAC, PEER_MAC);
    dp.check_all(&[
        Case::xdp(
            "the next segment of the flow goes to the same backend",
            ack.build(),
            XDP_PASS,
            Expect::Frame(ack.clone().addresses(client(40000), backend).build()),
        ),
        Case::tc_egress(
            "the backend's reply leaves with the frontend as its source",
            synack.build(),
            Expect::Frame(synack.clone().addresses(frontend, client(40000)).build()),
        ),
        Case::tc_egress(
            "a packet of no tracked flow leaves untouched",
            packet::tcp(backend, client(40001), tcp::ACK).build(),
            Expect::Unchanged,
        ),
    ]);
    // Ten more segments: conntrack keeps them on the first choice.
    for _ in 0..10 {
        dp.check(&Case::xdp(
            "every segment of the flow reuses the conntrack entry",
            ack.build(),
            XDP_PASS,
            Expect::Frame(ack.clone().addresses(client(40000), backend).build()),
        ));
    }
    let forward = dp
        .conntrack(forward_key(&syn, 40000, 80, IPPROTO_TCP))
        .expect("forward conntrack entry");
    assert_eq!(
        forward.tcp_state, TCP_STATE_ESTABLISHED,
        "an ACK establishes the flow"
    );
    assert_eq!(dp.conntrack_len(), 2, "one flow, two entries");
}

#[test]
fn udp_to_local_backend_keeps_a_zero_checksum() {
    let mut dp = Datapath::new(0);
    let frontend = sock(CLUSTER_IP, 53);
    let backend = sock(LOCAL_DNS.1, LOCAL_DNS.2);
    let query = packet::udp(client(50000), frontend).payload(b"query");
    let bare = packet::udp(client(50001), frontend)
        .payload(b"query")
        .without_udp_checksum();
    let answer = packet::udp(backend, client(50000))
        .payload(b"answer")
        .macs(NODE_MAC, PEER_MAC);
    let bare_answer = packet::udp(backend, client(50001))
        .payload(b"answer")
        .without_udp_checksum()
        .macs(NODE_MAC, PEER_MAC);
    dp.check_all(&[
        Case::xdp(
            "UDP to a ClusterIP is DNATed to the local backend",
            query.build(),
            XDP_PASS,
            Expect::Frame(query.clone().addresses(client(50000), backend).build()),
        ),
        Case::xdp(
            "a UDP checksum of 0 stays 0",
            bare.build(),
            XDP_PASS,
            Expect::Frame(bare.clone().addresses(client(50001), backend).build()),
        ),
        Case::tc_egress(
            "the UDP answer leaves from the frontend",
            answer.build(),
            Expect::Frame(answer.clone().addresses(frontend, client(50000)).build()),
        ),
        Case::tc_egress(
            "the UDP answer without checksum keeps 0",
            bare_answer.build(),
            Expect::Frame(
                bare_answer
                    .clone()
                    .addresses(frontend, client(50001))
                    .build(),
            ),
        ),
    ]);
}

#[test]
fn nodeport_on_a_node_address_is_dnated() {
    let mut dp = Datapath::new(0);
    let node_port = sock(NODE_IP, NODE_PORT);
    let backend = sock(LOCAL_A.1, LOCAL_A.2);
    let syn = packet::tcp(client(40000), node_port, tcp::SYN);
    let elsewhere = packet::tcp(client(40000), sock([198, 18, 0, 99], NODE_PORT), tcp::SYN);
    let with_options = packet::tcp(client(40002), node_port, tcp::SYN).options(&[
        0x94, 0x04, 0x00, 0x00, // router alert
        0x01, 0x01, 0x01, 0x00, // NOPs, end of options
    ]);
    let reply = packet::tcp(backend, client(40000), tcp::SYN | tcp::ACK).macs(NODE_MAC, PEER_MAC);
    dp.check_all(&[
        Case::xdp(
            "NodePort on a node address goes to the backend",
            syn.build(),
            XDP_PASS,
            Expect::Frame(syn.clone().addresses(client(40000), backend).build()),
        ),
        Case::xdp(
            "the NodePort on an address that is not the node's is not ours",
            elsewhere.build(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "IPv4 options (IHL 7) are skipped and kept",
            with_options.build(),
            XDP_PASS,
            Expect::Frame(
                with_options
                    .clone()
                    .addresses(client(40002), backend)
                    .build(),
            ),
        ),
        Case::tc_egress(
            "the reply leaves from the node address and NodePort",
            reply.build(),
            Expect::Frame(reply.clone().addresses(node_port, client(40000)).build()),
        ),
    ]);
}

/// Returns the SNAT port conntrack chose for a client flow, checking both entries.
fn snat_port(
    dp: &mut Datapath,
    request: &Frame,
    client: SocketAddrV4,
    backend: SocketAddrV4,
) -> u16 {
    let (sport, dport, proto) = match request.transport {
        Transport::Tcp { sport, dport, .. } => (sport, dport, IPPROTO_TCP),
        Transport::Udp { sport, dport, .. } => (sport, dport, IPPROTO_UDP),
        Transport::Icmp { .. } => unreachable!("requests are TCP or UDP"),
    };
    let forward = dp
        .conntrack(forward_key(request, sport, dport, proto))
        .expect("forward conntrack entry");
    assert_eq!(forward.flags, CT_F_SNAT);
    assert_eq!(
        forward.new_saddr,
        u32::from_ne_bytes(NODE_IP),
        "SNAT to the node address"
    );
    assert_eq!(
        (forward.new_daddr, forward.new_dport),
        (be_addr(backend), backend.port().to_be())
    );
    let port = u16::from_be(forward.new_sport);
    assert!(
        (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&port),
        "SNAT port {port} outside the configured range"
    );
    let reply = dp
        .conntrack(reply_key(backend, sock(NODE_IP, port), proto))
        .expect("reply entry keyed backend -> SNAT address and port");
    assert_eq!(reply.flags, CT_F_SNAT);
    let frontend = SocketAddrV4::new(request.daddr, dport);
    assert_eq!(
        (reply.new_saddr, reply.new_sport),
        (be_addr(frontend), dport.to_be())
    );
    assert_eq!(
        (reply.new_daddr, reply.new_dport),
        (be_addr(client), client.port().to_be())
    );
    port
}

#[test]
fn remote_backend_is_snated_and_sent_back_out_with_xdp_tx() {
    let mut dp = Datapath::new(CONFIG_F_XDP_TX);
    let frontend = sock(REMOTE_SVC, 80);
    let backend = sock(REMOTE.1, REMOTE.2);
    let syn = packet::tcp(client(40000), frontend, tcp::SYN);

    let run = dp.run(Program::Xdp, &syn.build());
    let port = snat_port(&mut dp, &syn, client(40000), backend);
    let snat = sock(NODE_IP, port);
    let to_backend = |frame: &Frame| {
        frame
            .clone()
            .addresses(snat, backend)
            .macs(NODE_MAC, REMOTE_MAC)
            .build()
    };
    assert_eq!(
        run.verdict, XDP_TX,
        "the backend is reached through the ingress interface"
    );
    assert_eq!(
        run.frame,
        to_backend(&syn),
        "DNAT + SNAT + MACs from the FIB"
    );

    let synack = packet::tcp(backend, snat, tcp::SYN | tcp::ACK)
        .seq_ack(7000, 1001)
        .macs(REMOTE_MAC, NODE_MAC);
    let ack = packet::tcp(client(40000), frontend, tcp::ACK).seq_ack(1001, 7001);
    let other_link = packet::tcp(client(40001), sock(OTHER_LINK_SVC, 80), tcp::SYN);
    let no_neigh = packet::tcp(client(40002), sock(NO_NEIGH_SVC, 80), tcp::SYN);
    dp.check_all(&[
        Case::xdp(
            "the backend's reply is reverse-translated and sent to the client",
            synack.build(),
            XDP_TX,
            Expect::Frame(
                synack
                    .clone()
                    .addresses(frontend, client(40000))
                    .macs(NODE_MAC, CLIENT_MAC)
                    .build(),
            ),
        ),
        Case::xdp(
            "the next segment reuses the SNAT port",
            ack.build(),
            XDP_TX,
            Expect::Frame(to_backend(&ack)),
        ),
    ]);

    // A backend behind another interface: XDP_REDIRECT to it (the test run does not transmit).
    let run = dp.run(Program::Xdp, &other_link.build());
    assert_eq!(run.verdict, XDP_REDIRECT, "backend behind sl2");
    let port = snat_port(
        &mut dp,
        &other_link,
        client(40001),
        sock(OTHER_LINK.1, OTHER_LINK.2),
    );
    assert_eq!(
        run.frame,
        other_link
            .clone()
            .addresses(sock(NODE_IP, port), sock(OTHER_LINK.1, OTHER_LINK.2))
            .macs(SL2_MAC, OTHER_LINK_MAC)
            .build()
    );

    // No neighbour entry: the stack must resolve it, so XDP hands over to tc_ingress.
    let run = dp.run(Program::Xdp, &no_neigh.build());
    assert_eq!(run.verdict, XDP_PASS, "unresolved neighbour");
    assert_eq!(run.meta, redirect_meta(dp.sl0), "metadata for tc_ingress");
    let port = snat_port(
        &mut dp,
        &no_neigh,
        client(40002),
        sock(NO_NEIGH.1, NO_NEIGH.2),
    );
    assert_eq!(
        run.frame,
        no_neigh
            .clone()
            .addresses(sock(NODE_IP, port), sock(NO_NEIGH.1, NO_NEIGH.2))
            .build(),
        "translated, MACs left to bpf_redirect_neigh"
    );
    assert_eq!(dp.sl2, dp.netns.ifindex("sl2"));
}

#[test]
fn remote_backend_without_xdp_tx_is_handed_to_tc_with_metadata() {
    let mut dp = Datapath::new(0);
    let frontend = sock(REMOTE_SVC, 53);
    let backend = sock(REMOTE_DNS.1, REMOTE_DNS.2);
    let query = packet::udp(client(50000), frontend)
        .payload(b"query")
        .without_udp_checksum();

    let run = dp.run(Program::Xdp, &query.build());
    assert_eq!(run.verdict, XDP_PASS);
    assert_eq!(
        run.meta,
        redirect_meta(dp.sl0),
        "redirect metadata for tc_ingress"
    );
    let port = snat_port(&mut dp, &query, client(50000), backend);
    let snat = sock(NODE_IP, port);
    assert_eq!(
        run.frame,
        query.clone().addresses(snat, backend).build(),
        "DNAT + SNAT, UDP checksum 0 kept, MACs untouched"
    );

    let answer = packet::udp(backend, snat)
        .payload(b"answer")
        .macs(REMOTE_MAC, NODE_MAC);
    let marked = {
        let mut frame = redirect_meta(dp.sl0);
        frame.extend_from_slice(&answer.build());
        frame
    };
    dp.check_all(&[
        Case::xdp(
            "the answer is reverse-translated and handed to tc_ingress",
            answer.build(),
            XDP_PASS,
            Expect::Redirect {
                ifindex: dp.sl0,
                frame: answer.clone().addresses(frontend, client(50000)).build(),
            },
        ),
        Case {
            description: "tc_ingress leaves packets without metadata alone",
            program: Program::TcIngress,
            input: answer.build(),
            verdict: TC_ACT_OK,
            output: Expect::Unchanged,
        },
    ]);
    // The metadata itself cannot be fed to an skb test run; it must still not be mistaken
    // for a frame header.
    assert_ne!(marked.len(), answer.build().len());
    let _ = TC_ACT_REDIRECT;
}

#[test]
fn remote_backend_without_snat_address_is_dropped() {
    let mut dp = Datapath::new(0);
    dp.set_config(Config::default());
    let syn = packet::tcp(client(40000), sock(REMOTE_SVC, 80), tcp::SYN);
    dp.check(&Case::xdp(
        "no SNAT address configured",
        syn.build(),
        XDP_DROP,
        Expect::Unchanged,
    ));
    assert_eq!(
        dp.conntrack_len(),
        0,
        "nothing is tracked for a dropped flow"
    );
}

#[test]
fn a_flow_whose_backend_is_gone_is_balanced_again() {
    let mut dp = Datapath::new(0);
    let frontend = sock(CLUSTER_IP, 80);
    let syn = packet::tcp(client(40000), frontend, tcp::SYN);
    let first = packet::parse(&dp.run(Program::Xdp, &syn.build()).frame)
        .expect("valid frame")
        .destination();
    let (gone, other) = if first == sock(LOCAL_A.1, LOCAL_A.2) {
        (LOCAL_A, LOCAL_B)
    } else {
        (LOCAL_B, LOCAL_A)
    };
    // The daemon removes the backend: slot 0 first (count 1), then the slot and the backend.
    dp.add_service(100, frontend, IPPROTO_TCP, 0, &[other.0]);
    let mut backends: HashMap<_, u32, Backend> = dp.hash_map(map_names::BACKENDS);
    backends.remove(&gone.0).expect("remove the backend");

    let backend = sock(other.1, other.2);
    dp.check(&Case::xdp(
        "the stale entry is dropped and the flow goes to a live backend",
        syn.build(),
        XDP_PASS,
        Expect::Frame(syn.clone().addresses(client(40000), backend).build()),
    ));
    let forward = dp
        .conntrack(forward_key(&syn, 40000, 80, IPPROTO_TCP))
        .expect("new forward entry");
    assert_eq!(forward.backend_id, other.0);
    assert!(
        dp.conntrack(reply_key(sock(gone.1, gone.2), client(40000), IPPROTO_TCP))
            .is_none(),
        "the old reply entry is deleted with its flow"
    );
}

fn arp_frame() -> Vec<u8> {
    packet::ethernet(ETH_P_ARP, &[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 2])
}

#[test]
fn traffic_that_is_not_ours_passes_untouched() {
    let mut dp = Datapath::new(CONFIG_F_XDP_TX);
    let service = sock(CLUSTER_IP, 80);
    let syn = packet::tcp(client(40000), service, tcp::SYN).build();
    let udp = packet::udp(client(40000), sock(CLUSTER_IP, 53)).build();
    let arp = arp_frame();
    let ipv6 = packet::ethernet(ETH_P_IPV6, &[0x60, 0, 0, 0, 0, 8, 17, 64]);
    let mut bad_ihl = syn.clone();
    bad_ihl[14] = 0x44;
    let mut not_v4 = syn.clone();
    not_v4[14] = 0x65;
    let cases = [
        Case::xdp(
            "TCP to an address that is no service",
            packet::tcp(client(40000), sock([198, 18, 0, 1], 22), tcp::SYN).build(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "TCP to a service address on another port",
            packet::tcp(client(40000), sock(CLUSTER_IP, 443), tcp::SYN).build(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp("ARP", arp, XDP_PASS, Expect::Unchanged),
        Case::xdp("IPv6", ipv6, XDP_PASS, Expect::Unchanged),
        Case::xdp(
            "ICMP to a service address",
            packet::icmp(Ipv4Addr::from(CLIENT_IP), Ipv4Addr::from(CLUSTER_IP), 8, 0).build(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "Ethernet header only",
            syn[..14].to_vec(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "IPv4 header cut",
            syn[..14 + 12].to_vec(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "TCP header cut",
            syn[..14 + 20 + 12].to_vec(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "UDP header cut",
            udp[..14 + 20 + 4].to_vec(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "IPv4 options longer than the frame",
            packet::tcp(client(40000), service, tcp::SYN)
                .options(&[1; 40])
                .build()[..14 + 40]
                .to_vec(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp("IHL below 5", bad_ihl, XDP_PASS, Expect::Unchanged),
        Case::xdp(
            "IP version 6 in an IPv4 frame",
            not_v4,
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "first fragment (MF set) to a service",
            packet::tcp(client(40000), service, tcp::SYN)
                .frag_off(IP_MF)
                .build(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "later fragment to a service",
            packet::udp(client(40000), sock(CLUSTER_IP, 53))
                .frag_off(185)
                .payload(b"fragment data")
                .build(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "last fragment (offset, no MF) to a service",
            packet::udp(client(40000), sock(CLUSTER_IP, 53))
                .frag_off(IP_DF | 1)
                .build(),
            XDP_PASS,
            Expect::Unchanged,
        ),
    ];
    dp.check_all(&cases);
    assert_eq!(dp.conntrack_len(), 0, "nothing that is not ours is tracked");
    // (The kernel refuses skb test runs whose IPv4 header is cut, so no such case for TC.)
    dp.check_all(&[
        Case::tc_egress(
            "tc_egress: TCP header cut",
            syn[..14 + 20 + 10].to_vec(),
            Expect::Unchanged,
        ),
        Case::tc_egress("tc_egress: ARP", arp_frame(), Expect::Unchanged),
    ]);
}

#[test]
fn service_without_endpoints_answers_rst_and_port_unreachable() {
    let mut dp = Datapath::new(CONFIG_F_XDP_TX);
    let tcp_frontend = sock(EMPTY_SVC, 80);
    let udp_frontend = sock(EMPTY_SVC, 53);
    let syn = packet::tcp(client(40000), tcp_frontend, tcp::SYN).seq_ack(1000, 0);
    let data = packet::tcp(client(40001), tcp_frontend, tcp::ACK | tcp::PSH)
        .seq_ack(2000, 3000)
        .payload(b"data");
    let fin = packet::tcp(client(40002), tcp_frontend, tcp::FIN)
        .seq_ack(4000, 0)
        .payload(b"bye");
    let optioned_syn = packet::tcp(client(40003), tcp_frontend, tcp::SYN)
        .options(&[1, 1, 1, 0])
        .seq_ack(1000, 0);
    let query = packet::udp(client(50000), udp_frontend).payload(b"some query bytes");
    let optioned_query = packet::udp(client(50001), udp_frontend)
        .options(&[1, 1, 1, 0, 1, 1, 1, 0])
        .payload(b"q");
    // A reset from the frontend to the client, sent back out of the ingress interface.
    let rst = |port: u16, flags: u8, seq: u32, ack: u32| {
        packet::tcp(tcp_frontend, client(port), flags)
            .seq_ack(seq, ack)
            .window(0)
            .id(0)
            .macs(NODE_MAC, CLIENT_MAC)
            .build()
    };
    let unreachable = |request: &Frame| {
        let request = request.build();
        packet::icmp_unreachable(*udp_frontend.ip(), Ipv4Addr::from(CLIENT_IP), 3, &request)
            .id(0)
            .frag_off(0)
            .macs(NODE_MAC, CLIENT_MAC)
            .build()
    };
    dp.check_all(&[
        Case::xdp(
            "SYN: RST|ACK acknowledging the SYN",
            syn.build(),
            XDP_TX,
            Expect::Frame(rst(40000, tcp::RST | tcp::ACK, 0, 1001)),
        ),
        Case::xdp(
            "segment with ACK: RST with the acknowledged sequence",
            data.build(),
            XDP_TX,
            Expect::Frame(rst(40001, tcp::RST, 3000, 0)),
        ),
        Case::xdp(
            "FIN with data and no ACK: RST|ACK for data + FIN",
            fin.build(),
            XDP_TX,
            Expect::Frame(rst(40002, tcp::RST | tcp::ACK, 0, 4004)),
        ),
        Case::xdp(
            "SYN with IP options: the RST has none",
            optioned_syn.build(),
            XDP_TX,
            Expect::Frame(rst(40003, tcp::RST | tcp::ACK, 0, 1001)),
        ),
        Case::xdp(
            "a RST is never answered",
            packet::tcp(client(40004), tcp_frontend, tcp::RST).build(),
            XDP_DROP,
            Expect::Unchanged,
        ),
        Case::xdp(
            "UDP: ICMP port unreachable quoting the IP header and 8 bytes",
            query.build(),
            XDP_TX,
            Expect::Frame(unreachable(&query)),
        ),
        Case::xdp(
            "UDP with IP options: the quote keeps them",
            optioned_query.build(),
            XDP_TX,
            Expect::Frame(unreachable(&optioned_query)),
        ),
    ]);
    assert_eq!(dp.conntrack_len(), 0, "rejected flows are not tracked");

    // Without XDP_TX the answer is handed to tc_ingress like any translated packet.
    dp.set_config(Config {
        snat_addr: u32::from_ne_bytes(NODE_IP),
        snat_port_min: SNAT_PORT_MIN,
        snat_port_max: SNAT_PORT_MAX,
        flags: 0,
        _pad: 0,
    });
    dp.check(&Case::xdp(
        "without XDP_TX the RST goes through tc_ingress",
        syn.build(),
        XDP_PASS,
        Expect::Redirect {
            ifindex: dp.sl0,
            frame: packet::tcp(tcp_frontend, client(40000), tcp::RST | tcp::ACK)
                .seq_ack(0, 1001)
                .window(0)
                .id(0)
                .macs(NODE_MAC, PEER_MAC)
                .build(),
        },
    ));
}
