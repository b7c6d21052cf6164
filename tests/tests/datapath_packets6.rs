//! IPv6 packet tests of the XDP and TC programs through `BPF_PROG_TEST_RUN`, the tables of
//! `datapath_packets.rs` for the other family: crafted frames in, verdict and exact output
//! bytes checked (the expected frames' checksums are summed from scratch by
//! `proxy_tests::packet`, not by the datapath's incremental code), conntrack (`CT6_V1`) and
//! counters inspected. Needs root.

use std::net::{Ipv6Addr, SocketAddrV6};

use aya::maps::HashMap;
use proxy_common::{
    AFFINITY_CLIENT_IP, AffinityKey6, AffinityMatchKey, AffinityValue, BACKEND_F_LOCAL,
    CONFIG_F_XDP_TX, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_LOCAL, CT_F_SNAT, CtKey6, IPPROTO_TCP,
    IPPROTO_UDP, SVC_F_NO_LOCAL_ENDPOINT, SVC_F_NODEPORT, SVC_F_SOURCE_RANGES,
    TCP_STATE_ESTABLISHED, TCP_STATE_SYN, map_names,
    net::ip6_to_net,
    stats::{DropReason, PassReason},
    tcp,
};
use proxy_tests::{
    datapath::{
        CLIENT_IP6, CLIENT_MAC, Case, Datapath, Expect, NEXT_HOP_IP6, NEXT_HOP_MAC, NODE_IP6,
        OTHER_LINK_IP6, OTHER_LINK_MAC, Program, SL2_MAC, SNAT_PORT_MAX, SNAT_PORT_MIN,
        TC_ACT_REDIRECT, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, ct_key6, handed_off, sock6,
    },
    packet::{
        self, ExtHeader, Frame6, IPPROTO_DSTOPTS, IPPROTO_HOPOPTS, IPPROTO_ROUTING, NODE_MAC,
        PEER_MAC, Transport,
    },
};

const fn svc(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, last)
}

// Frontends (fd00:19::/64 is not routed: services exist only in the maps).
const CLUSTER_IP: Ipv6Addr = svc(0x10);
const REMOTE_SVC: Ipv6Addr = svc(0x20);
const OTHER_LINK_SVC: Ipv6Addr = svc(0x21);
const NO_NEIGH_SVC: Ipv6Addr = svc(0x22);
const EMPTY_SVC: Ipv6Addr = svc(0x30);
const RANGED_SVC: Ipv6Addr = svc(0x40);
const LOCAL_ONLY_SVC: Ipv6Addr = svc(0x41);
const STICKY_SVC: Ipv6Addr = svc(0x42);
const NODE_PORT: u16 = 30080;

const fn pod(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x19, 0x100, 0, 0, 0, 0, last)
}

// Backends: ids (their own range: ids are shared with IPv4) and addresses.
const LOCAL_A: (u32, Ipv6Addr, u16) = (21, pod(1), 8080);
const LOCAL_B: (u32, Ipv6Addr, u16) = (22, pod(2), 8080);
const LOCAL_DNS: (u32, Ipv6Addr, u16) = (23, pod(1), 5353);
const REMOTE: (u32, Ipv6Addr, u16) = (30, NEXT_HOP_IP6, 8080);
const OTHER_LINK: (u32, Ipv6Addr, u16) = (31, OTHER_LINK_IP6, 8080);
const NO_NEIGH: (u32, Ipv6Addr, u16) = (32, Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x30), 8080);
const REMOTE_DNS: (u32, Ipv6Addr, u16) = (33, NEXT_HOP_IP6, 5353);

fn addr((_, ip, port): (u32, Ipv6Addr, u16)) -> SocketAddrV6 {
    sock6(ip, port)
}

fn client(port: u16) -> SocketAddrV6 {
    sock6(CLIENT_IP6, port)
}

const STICKY_TIMEOUT: u32 = 60;

fn datapath(config_flags: u32) -> Datapath {
    let mut dp = Datapath::new(config_flags);
    for backend in [LOCAL_A, LOCAL_B, LOCAL_DNS] {
        dp.add_backend6(backend.0, addr(backend), BACKEND_F_LOCAL);
    }
    for backend in [REMOTE, OTHER_LINK, NO_NEIGH, REMOTE_DNS] {
        dp.add_backend6(backend.0, addr(backend), 0);
    }
    let (tcp, udp) = (IPPROTO_TCP, IPPROTO_UDP);
    let both = [LOCAL_A.0, LOCAL_B.0];
    dp.add_service6(200, sock6(CLUSTER_IP, 80), tcp, 0, 0, &both);
    dp.add_service6(201, sock6(CLUSTER_IP, 53), udp, 0, 0, &[LOCAL_DNS.0]);
    let node_port = sock6(Ipv6Addr::UNSPECIFIED, NODE_PORT);
    dp.add_service6(202, node_port, tcp, SVC_F_NODEPORT, 0, &[LOCAL_A.0]);
    dp.add_service6(203, sock6(REMOTE_SVC, 80), tcp, 0, 0, &[REMOTE.0]);
    dp.add_service6(204, sock6(REMOTE_SVC, 53), udp, 0, 0, &[REMOTE_DNS.0]);
    dp.add_service6(205, sock6(OTHER_LINK_SVC, 80), tcp, 0, 0, &[OTHER_LINK.0]);
    dp.add_service6(206, sock6(NO_NEIGH_SVC, 80), tcp, 0, 0, &[NO_NEIGH.0]);
    dp.add_service6(207, sock6(EMPTY_SVC, 80), tcp, 0, 0, &[]);
    dp.add_service6(208, sock6(EMPTY_SVC, 53), udp, 0, 0, &[]);
    let ranged = SVC_F_SOURCE_RANGES;
    dp.add_source_range6(209, Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x100), 120);
    dp.add_service6(209, sock6(RANGED_SVC, 80), tcp, ranged, 0, &[LOCAL_A.0]);
    let no_local = SVC_F_NO_LOCAL_ENDPOINT;
    dp.add_service6(210, sock6(LOCAL_ONLY_SVC, 80), tcp, no_local, 0, &[]);
    let mut members: HashMap<_, AffinityMatchKey, u32> = dp.hash_map(map_names::AFFINITY_MATCH);
    for backend_id in both {
        let key = AffinityMatchKey {
            service_id: 211,
            backend_id,
        };
        members.insert(&key, &0, 0).expect("write AFF_MATCH_V1");
    }
    dp.add_service6(211, sock6(STICKY_SVC, 80), tcp, 0, STICKY_TIMEOUT, &both);
    dp
}

fn ports(frame: &Frame6) -> (u16, u16, u8) {
    match frame.transport {
        Transport::Tcp { sport, dport, .. } => (sport, dport, IPPROTO_TCP),
        Transport::Udp { sport, dport, .. } => (sport, dport, IPPROTO_UDP),
        Transport::Icmp { .. } => unreachable!("requests are TCP or UDP"),
    }
}

fn forward_key(request: &Frame6) -> CtKey6 {
    let (sport, dport, proto) = ports(request);
    ct_key6(
        sock6(request.saddr, sport),
        sock6(request.daddr, dport),
        proto,
        CT_DIR_FORWARD,
    )
}

/// The frame `request` becomes when translated to `from` -> `to`.
fn translated(request: &Frame6, from: SocketAddrV6, to: SocketAddrV6) -> Vec<u8> {
    request.clone().addresses(from, to).build()
}

#[test]
fn cluster_ip_to_local_backend_is_dnated_and_replies_reverse_translated() {
    let mut dp = datapath(0);
    let frontend = sock6(CLUSTER_IP, 80);
    let syn = packet::tcp6(client(40000), frontend, tcp::SYN);

    // The backend is random: learn it from the first run, then require the exact bytes.
    let run = dp.run(Program::Xdp, &syn.build());
    assert_eq!(
        run.verdict, XDP_PASS,
        "local backend: the stack delivers it"
    );
    let backend = packet::parse6(&run.frame)
        .expect("valid translated frame")
        .destination();
    assert!(
        [addr(LOCAL_A), addr(LOCAL_B)].contains(&backend),
        "destination {backend} is not a backend of the service"
    );
    assert_eq!(
        run.frame,
        translated(&syn, client(40000), backend),
        "only the destination changes (hop limit and flow label kept)"
    );

    let forward = dp
        .conntrack6(forward_key(&syn))
        .expect("forward entry in CT6_V1");
    assert_eq!(forward.flags, CT_F_LOCAL);
    assert_eq!(forward.tcp_state, TCP_STATE_SYN);
    assert_eq!(
        (forward.new_daddr, forward.new_dport),
        (ip6_to_net(*backend.ip()), 8080u16.to_be())
    );
    assert_eq!((forward.new_saddr, forward.new_sport), ([0; 4], 0));
    assert_eq!(forward.service_id, 200);
    let reply = dp
        .conntrack6(ct_key6(backend, client(40000), IPPROTO_TCP, CT_DIR_REPLY))
        .expect("reply entry keyed backend -> client");
    assert_eq!(reply.flags, CT_F_LOCAL);
    assert_eq!(
        (reply.new_saddr, reply.new_sport),
        (ip6_to_net(CLUSTER_IP), 80u16.to_be())
    );

    let ack = packet::tcp6(client(40000), frontend, tcp::ACK | tcp::PSH)
        .seq_ack(1001, 5001)
        .payload(b"GET / HTTP/1.1\r\n\r\n");
    let synack = packet::tcp6(backend, client(40000), tcp::SYN | tcp::ACK)
        .seq_ack(5000, 1001)
        .macs(NODE_MAC, PEER_MAC);
    dp.check_all(&[
        Case::xdp(
            "the next segment of the flow goes to the same backend",
            ack.build(),
            XDP_PASS,
            Expect::Frame(translated(&ack, client(40000), backend)),
        ),
        Case::tc_egress(
            "tc_egress: the backend's reply leaves from the frontend",
            synack.build(),
            Expect::Frame(translated(&synack, frontend, client(40000))),
        ),
        Case::tc_egress(
            "tc_egress: a packet of no tracked flow leaves untouched",
            packet::tcp6(backend, client(40001), tcp::ACK).build(),
            Expect::Unchanged,
        ),
    ]);
    let forward = dp.conntrack6(forward_key(&syn)).expect("forward entry");
    assert_eq!(forward.tcp_state, TCP_STATE_ESTABLISHED);
    assert_eq!(dp.conntrack6_len(), 2, "one flow, two entries");
    assert_eq!(dp.conntrack_len(), 0, "nothing in the IPv4 table");
}

#[test]
fn udp_to_a_local_backend_and_back_keeps_valid_checksums() {
    let mut dp = datapath(0);
    let frontend = sock6(CLUSTER_IP, 53);
    let backend = addr(LOCAL_DNS);
    let query = packet::udp6(client(50000), frontend).payload(b"query");
    let answer = packet::udp6(backend, client(50000))
        .payload(b"answer")
        .macs(NODE_MAC, PEER_MAC);
    let mut zero = query.clone().build();
    let at = zero.len() - 5 - 2;
    zero[at..at + 2].copy_from_slice(&[0, 0]);
    dp.check_all(&[
        Case::xdp(
            "UDP to an IPv6 ClusterIP is DNATed",
            query.build(),
            XDP_PASS,
            Expect::Frame(translated(&query, client(50000), backend)),
        ),
        Case::tc_egress(
            "tc_egress: the answer leaves from the frontend",
            answer.build(),
            Expect::Frame(translated(&answer, frontend, client(50000))),
        ),
        Case::xdp(
            "a UDP checksum of 0 is invalid in IPv6: passed to the stack untouched",
            zero,
            XDP_PASS,
            Expect::Unchanged,
        ),
    ]);
}

#[test]
fn a_udp_checksum_that_comes_out_zero_goes_out_as_all_ones() {
    let mut dp = datapath(0);
    let frontend = sock6(CLUSTER_IP, 53);
    let backend = addr(LOCAL_DNS);
    // Search a payload whose translated datagram sums to zero: its checksum must then be
    // 0xffff, never 0 (RFC 8200 §8.1).
    let (query, expected) = (0u16..=u16::MAX)
        .find_map(|word| {
            let query = packet::udp6(client(50000), frontend).payload(&word.to_be_bytes());
            let expected = translated(&query, client(50000), backend);
            let at = expected.len() - 2 - 2;
            (expected[at..at + 2] == [0xff, 0xff]).then_some((query, expected))
        })
        .expect("a payload whose checksum is 0xffff");
    dp.check(&Case::xdp(
        "the rewritten checksum is 0xffff",
        query.build(),
        XDP_PASS,
        Expect::Frame(expected),
    ));
}

#[test]
fn nodeport_on_a_node_address_is_dnated_across_extension_headers() {
    let mut dp = datapath(0);
    let node_port = sock6(NODE_IP6, NODE_PORT);
    let backend = addr(LOCAL_A);
    let syn = packet::tcp6(client(40000), node_port, tcp::SYN);
    let elsewhere = packet::tcp6(
        client(40000),
        sock6(Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x99), NODE_PORT),
        tcp::SYN,
    );
    let with_options = packet::tcp6(client(40002), node_port, tcp::SYN)
        .ext(ExtHeader::options(IPPROTO_HOPOPTS, 8))
        .ext(ExtHeader::options(IPPROTO_DSTOPTS, 16));
    let routed = packet::udp6(client(40003), sock6(CLUSTER_IP, 53))
        .ext(ExtHeader {
            kind: IPPROTO_ROUTING,
            body: vec![0; 22],
        })
        .payload(b"q");
    let reply = packet::tcp6(backend, client(40000), tcp::SYN | tcp::ACK).macs(NODE_MAC, PEER_MAC);
    let reply_ext = packet::tcp6(backend, client(40002), tcp::SYN | tcp::ACK)
        .ext(ExtHeader::options(IPPROTO_DSTOPTS, 8))
        .macs(NODE_MAC, PEER_MAC);
    dp.check_all(&[
        Case::xdp(
            "NodePort on an IPv6 node address goes to the backend",
            syn.build(),
            XDP_PASS,
            Expect::Frame(translated(&syn, client(40000), backend)),
        ),
        Case::xdp(
            "the NodePort on an address that is not the node's is not ours",
            elsewhere.build(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "hop-by-hop and destination options are walked and kept",
            with_options.build(),
            XDP_PASS,
            Expect::Frame(translated(&with_options, client(40002), backend)),
        ),
        Case::xdp(
            "a routing header (24 bytes) is walked",
            routed.build(),
            XDP_PASS,
            Expect::Frame(translated(&routed, client(40003), addr(LOCAL_DNS))),
        ),
        Case::tc_egress(
            "tc_egress: the reply leaves from the node address and NodePort",
            reply.build(),
            Expect::Frame(translated(&reply, node_port, client(40000))),
        ),
        Case::tc_egress(
            "tc_egress: a reply with destination options is reverse-translated",
            reply_ext.build(),
            Expect::Frame(translated(&reply_ext, node_port, client(40002))),
        ),
    ]);
}

/// The SNAT port conntrack chose for a client flow, checking both entries.
fn snat_port(
    dp: &mut Datapath,
    request: &Frame6,
    client: SocketAddrV6,
    backend: SocketAddrV6,
) -> u16 {
    let (_, dport, proto) = ports(request);
    let forward = dp.conntrack6(forward_key(request)).expect("forward entry");
    assert_eq!(forward.flags, CT_F_SNAT);
    assert_eq!(forward.new_saddr, ip6_to_net(NODE_IP6), "SNAT to CONFIG6");
    assert_eq!(
        (forward.new_daddr, forward.new_dport),
        (ip6_to_net(*backend.ip()), backend.port().to_be())
    );
    let port = u16::from_be(forward.new_sport);
    assert!(
        (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&port),
        "SNAT port {port} outside the range shared with IPv4"
    );
    let reply = dp
        .conntrack6(ct_key6(backend, sock6(NODE_IP6, port), proto, CT_DIR_REPLY))
        .expect("reply entry keyed backend -> SNAT address and port");
    assert_eq!(reply.flags, CT_F_SNAT);
    assert_eq!(
        (reply.new_saddr, reply.new_sport),
        (ip6_to_net(request.daddr), dport.to_be())
    );
    assert_eq!(
        (reply.new_daddr, reply.new_dport),
        (ip6_to_net(*client.ip()), client.port().to_be())
    );
    port
}

#[test]
fn remote_backend_is_snated_and_sent_back_out_with_xdp_tx() {
    let mut dp = datapath(CONFIG_F_XDP_TX);
    let frontend = sock6(REMOTE_SVC, 80);
    let backend = addr(REMOTE);
    let syn = packet::tcp6(client(40000), frontend, tcp::SYN);

    let run = dp.run(Program::Xdp, &syn.build());
    let port = snat_port(&mut dp, &syn, client(40000), backend);
    let snat = sock6(NODE_IP6, port);
    let to_backend = |frame: &Frame6| {
        frame
            .clone()
            .addresses(snat, backend)
            .hop_limit(63)
            .macs(NODE_MAC, NEXT_HOP_MAC)
            .build()
    };
    assert_eq!(
        run.verdict, XDP_TX,
        "the backend is behind the ingress interface"
    );
    assert_eq!(
        run.frame,
        to_backend(&syn),
        "DNAT + SNAT + hop limit + MACs"
    );

    let synack = packet::tcp6(backend, snat, tcp::SYN | tcp::ACK)
        .seq_ack(7000, 1001)
        .macs(NEXT_HOP_MAC, NODE_MAC);
    let ack = packet::tcp6(client(40000), frontend, tcp::ACK).seq_ack(1001, 7001);
    dp.check_all(&[
        Case::xdp(
            "the backend's reply is reverse-translated and sent to the client",
            synack.build(),
            XDP_TX,
            Expect::Frame(
                synack
                    .clone()
                    .addresses(frontend, client(40000))
                    .hop_limit(63)
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
        Case::xdp(
            "hop limit 1: to the stack translated, hop limit kept (ICMPv6 time exceeded)",
            ack.clone().hop_limit(1).build(),
            XDP_PASS,
            Expect::Frame(ack.clone().hop_limit(1).addresses(snat, backend).build()),
        ),
        Case::xdp(
            "hop limit 2 leaves with 1",
            ack.clone().hop_limit(2).build(),
            XDP_TX,
            Expect::Frame(
                ack.clone()
                    .addresses(snat, backend)
                    .hop_limit(1)
                    .macs(NODE_MAC, NEXT_HOP_MAC)
                    .build(),
            ),
        ),
    ]);

    let other_link = packet::tcp6(client(40001), sock6(OTHER_LINK_SVC, 80), tcp::SYN);
    let run = dp.run(Program::Xdp, &other_link.build());
    assert_eq!(run.verdict, XDP_REDIRECT, "backend behind sl2");
    let port = snat_port(&mut dp, &other_link, client(40001), addr(OTHER_LINK));
    assert_eq!(
        run.frame,
        other_link
            .clone()
            .addresses(sock6(NODE_IP6, port), addr(OTHER_LINK))
            .hop_limit(63)
            .macs(SL2_MAC, OTHER_LINK_MAC)
            .build()
    );

    let no_neigh = packet::tcp6(client(40002), sock6(NO_NEIGH_SVC, 80), tcp::SYN);
    let run = dp.run(Program::Xdp, &no_neigh.build());
    assert_eq!(run.verdict, XDP_PASS, "unresolved neighbour");
    let port = snat_port(&mut dp, &no_neigh, client(40002), addr(NO_NEIGH));
    assert_eq!(
        run.frame,
        handed_off(
            &no_neigh
                .clone()
                .addresses(sock6(NODE_IP6, port), addr(NO_NEIGH))
                .hop_limit(63)
                .build(),
            dp.sl0
        ),
        "translated and marked for tc_ingress (bpf_redirect_neigh writes the MACs)"
    );
}

#[test]
fn remote_backend_without_xdp_tx_is_handed_to_tc_ingress() {
    let mut dp = datapath(0);
    let frontend = sock6(REMOTE_SVC, 53);
    let backend = addr(REMOTE_DNS);
    let query = packet::udp6(client(50000), frontend).payload(b"query");
    let run = dp.run(Program::Xdp, &query.build());
    assert_eq!(run.verdict, XDP_PASS);
    let port = snat_port(&mut dp, &query, client(50000), backend);
    let snat = sock6(NODE_IP6, port);
    let translated = query.clone().addresses(snat, backend).hop_limit(63).build();
    assert_eq!(run.frame, handed_off(&translated, dp.sl0));
    let answer = packet::udp6(backend, snat)
        .payload(b"answer")
        .macs(NEXT_HOP_MAC, NODE_MAC);
    dp.check(&Case::xdp(
        "the answer is reverse-translated and handed to tc_ingress",
        answer.build(),
        XDP_PASS,
        Expect::Redirect {
            ifindex: dp.sl0,
            frame: answer
                .clone()
                .addresses(frontend, client(50000))
                .hop_limit(63)
                .build(),
        },
    ));
    dp.check(&Case {
        description: "tc_ingress redirects a handed-off IPv6 packet (bpf_redirect_neigh)",
        program: Program::TcIngress,
        input: handed_off(&translated, dp.sl0),
        verdict: TC_ACT_REDIRECT,
        output: Expect::Unchanged,
    });
}

#[test]
fn remote_backend_without_an_ipv6_snat_address_is_dropped() {
    let mut dp = datapath(0);
    dp.set_config6(Ipv6Addr::UNSPECIFIED);
    let syn = packet::tcp6(client(40000), sock6(REMOTE_SVC, 80), tcp::SYN);
    dp.check(&Case::xdp(
        "no IPv6 SNAT address configured (CONFIG6_V1)",
        syn.build(),
        XDP_DROP,
        Expect::Unchanged,
    ));
    assert_eq!(dp.drops(DropReason::NoSnatAddress), 1);
    assert_eq!(dp.conntrack6_len(), 0);
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one case per kind of foreign traffic and per header boundary"
)]
fn traffic_that_is_not_ours_passes_untouched() {
    let mut dp = datapath(CONFIG_F_XDP_TX);
    let service = sock6(CLUSTER_IP, 80);
    let syn = packet::tcp6(client(40000), service, tcp::SYN);
    let with_ext = syn
        .clone()
        .ext(ExtHeader::options(IPPROTO_HOPOPTS, 8))
        .build();
    let udp = packet::udp6(client(40000), sock6(CLUSTER_IP, 53)).build();
    let syn = syn.build();
    let node = NODE_IP6;
    let solicited = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 1);
    let mut target = NODE_IP6.octets().to_vec();
    // Source link-layer address option.
    target.extend_from_slice(&[1, 1, 2, 0, 0, 0, 0, 0xaa]);
    let solicitation = packet::icmp6(CLIENT_IP6, solicited, 135, 0, [0; 4])
        .hop_limit(255)
        .payload(&target);
    let advertisement = packet::icmp6(CLIENT_IP6, node, 136, 0, [0x60, 0, 0, 0])
        .hop_limit(255)
        .payload(&CLIENT_IP6.octets());
    let echo = packet::icmp6(CLIENT_IP6, CLUSTER_IP, 128, 0, [0, 1, 0, 1]).payload(b"ping");
    let unreachable = packet::icmp6_unreachable(
        CLIENT_IP6,
        CLUSTER_IP,
        4,
        &packet::udp6(service, client(1)).build(),
    );
    let mut five = packet::tcp6(client(40000), service, tcp::SYN);
    for _ in 0..5 {
        five = five.ext(ExtHeader::options(IPPROTO_DSTOPTS, 8));
    }
    // First fragments are translated (datapath_fragments); later ones only with them.
    let later_tcp_fragment = packet::tcp6(client(40000), service, tcp::SYN)
        .ext(ExtHeader::fragment(100, true, 7))
        .build();
    let later_fragment = packet::udp6(client(40000), sock6(CLUSTER_IP, 53))
        .ext(ExtHeader::fragment(185, false, 7))
        .payload(b"fragment data")
        .build();
    let fragment_after_options = packet::tcp6(client(40000), service, tcp::SYN)
        .ext(ExtHeader::options(IPPROTO_HOPOPTS, 8))
        .ext(ExtHeader::fragment(100, false, 8))
        .build();
    let mut esp = packet::ethernet(0x86dd, &syn[14..54]);
    esp[14 + 6] = 50;
    esp.extend_from_slice(&[0; 16]);
    esp[18..20].copy_from_slice(&16u16.to_be_bytes());
    let mut unknown = esp.clone();
    unknown[14 + 6] = 253;
    let mut version4 = syn.clone();
    version4[14] = 0x40;
    let mut jumbo = syn.clone();
    jumbo[18..20].copy_from_slice(&[0, 0]);
    let cases = [
        Case::xdp(
            "neighbour solicitation",
            solicitation.build(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "neighbour advertisement",
            advertisement.build(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "echo request to a service",
            echo.build(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "an ICMPv6 error",
            unreachable.build(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp("ESP to a service", esp, XDP_PASS, Expect::Unchanged),
        Case::xdp(
            "an unknown next header",
            unknown,
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "TCP to an IPv6 address that is no service",
            packet::tcp6(client(40000), sock6(NODE_IP6, 22), tcp::SYN).build(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "five extension headers: more than the parser walks",
            five.build(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "a later TCP fragment to a service, its first not seen",
            later_tcp_fragment,
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "a later UDP fragment to a service, its first not seen",
            later_fragment,
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "a later fragment's Fragment header after hop-by-hop options",
            fragment_after_options,
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "IP version 4 in an IPv6 frame",
            version4,
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "payload length 0 (jumbogram)",
            jumbo,
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
            "IPv6 header cut",
            syn[..14 + 39].to_vec(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "TCP header cut",
            syn[..14 + 40 + 19].to_vec(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "UDP header cut",
            udp[..14 + 40 + 7].to_vec(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "extension header cut before its length",
            with_ext[..=14 + 40].to_vec(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp(
            "TCP header cut after an extension header",
            with_ext[..14 + 40 + 8 + 12].to_vec(),
            XDP_PASS,
            Expect::Unchanged,
        ),
    ];
    dp.check_all(&cases);
    assert_eq!(
        dp.conntrack6_len(),
        0,
        "nothing that is not ours is tracked"
    );
    assert_eq!(
        dp.passes(PassReason::Fragment),
        3,
        "fragments are counted as passed"
    );
    assert_eq!(dp.passes(PassReason::Ipv6ExtensionHeaders), 1);
    for reason in DropReason::ALL {
        assert_eq!(dp.drops(reason), 0, "passing is not dropping: {reason:?}");
    }
    dp.check_all(&[
        Case::tc_egress(
            "tc_egress: TCP header cut",
            syn[..14 + 40 + 10].to_vec(),
            Expect::Unchanged,
        ),
        Case::tc_egress(
            "tc_egress: neighbour advertisement",
            advertisement.clone().macs(NODE_MAC, PEER_MAC).build(),
            Expect::Unchanged,
        ),
    ]);
}

#[test]
fn service_without_endpoints_answers_rst_and_icmpv6_port_unreachable() {
    let mut dp = datapath(CONFIG_F_XDP_TX);
    let tcp_frontend = sock6(EMPTY_SVC, 80);
    let udp_frontend = sock6(EMPTY_SVC, 53);
    let syn = packet::tcp6(client(40000), tcp_frontend, tcp::SYN).seq_ack(1000, 0);
    let data = packet::tcp6(client(40001), tcp_frontend, tcp::ACK | tcp::PSH)
        .seq_ack(2000, 3000)
        .payload(b"data");
    let fin = packet::tcp6(client(40002), tcp_frontend, tcp::FIN)
        .seq_ack(4000, 0)
        .ext(ExtHeader::options(IPPROTO_DSTOPTS, 8))
        .payload(b"bye");
    let rst = |port: u16, flags: u8, seq: u32, ack: u32| {
        packet::tcp6(tcp_frontend, client(port), flags)
            .seq_ack(seq, ack)
            .window(0)
            .flow_label(0)
            .macs(NODE_MAC, CLIENT_MAC)
            .build()
    };
    let query = packet::udp6(client(50000), udp_frontend).payload(b"some query bytes");
    let big = packet::udp6(client(50001), udp_frontend).payload(&[0x5a; 1400]);
    let odd = packet::udp6(client(50002), udp_frontend).payload(b"odd");
    let unreachable = |request: &Frame6| {
        packet::icmp6_unreachable(EMPTY_SVC, CLIENT_IP6, 4, &request.build())
            .flow_label(0)
            .macs(NODE_MAC, CLIENT_MAC)
            .build()
    };
    let quoted_big = unreachable(&big);
    assert_eq!(
        quoted_big.len(),
        14 + 1280,
        "the quote fills the minimum MTU"
    );
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
            "FIN with data after destination options: RST|ACK, no extension header",
            fin.build(),
            XDP_TX,
            Expect::Frame(rst(40002, tcp::RST | tcp::ACK, 0, 4004)),
        ),
        Case::xdp(
            "a RST is never answered",
            packet::tcp6(client(40004), tcp_frontend, tcp::RST).build(),
            XDP_DROP,
            Expect::Unchanged,
        ),
        Case::xdp(
            "UDP: ICMPv6 port unreachable quoting the whole datagram",
            query.build(),
            XDP_TX,
            Expect::Frame(unreachable(&query)),
        ),
        Case::xdp(
            "a datagram of an odd length is quoted whole",
            odd.build(),
            XDP_TX,
            Expect::Frame(unreachable(&odd)),
        ),
        Case::xdp(
            "a large datagram is quoted up to the minimum MTU",
            big.build(),
            XDP_TX,
            Expect::Frame(quoted_big),
        ),
    ]);
    assert_eq!(dp.conntrack6_len(), 0, "rejected flows are not tracked");
    assert_eq!(dp.drops(DropReason::NoEndpoints), 7);
}

#[test]
fn source_ranges_and_local_policy_apply_to_ipv6_clients() {
    let mut dp = datapath(0);
    let frontend = sock6(RANGED_SVC, 80);
    let inside = packet::tcp6(client(40000), frontend, tcp::SYN);
    let outsider = sock6(Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x2ff), 40000);
    let outside = packet::tcp6(outsider, frontend, tcp::SYN);
    let local_only = packet::tcp6(client(40001), sock6(LOCAL_ONLY_SVC, 80), tcp::SYN);
    dp.check_all(&[
        Case::xdp(
            "a client inside fd00:18::100/120 is translated",
            inside.build(),
            XDP_PASS,
            Expect::Frame(translated(&inside, client(40000), addr(LOCAL_A))),
        ),
        Case::xdp(
            "a client outside the IPv6 source ranges is dropped",
            outside.build(),
            XDP_DROP,
            Expect::Unchanged,
        ),
        Case::xdp(
            "externalTrafficPolicy Local without a local endpoint drops",
            local_only.build(),
            XDP_DROP,
            Expect::Unchanged,
        ),
    ]);
    assert_eq!(dp.drops(DropReason::SourceRange), 1);
    assert_eq!(dp.drops(DropReason::NoLocalEndpoint), 1);
}

#[test]
fn session_affinity_keeps_an_ipv6_client_on_one_backend() {
    let mut dp = datapath(0);
    let frontend = sock6(STICKY_SVC, 80);
    let first = packet::tcp6(client(41000), frontend, tcp::SYN);
    let run = dp.run(Program::Xdp, &first.build());
    assert_eq!(run.verdict, XDP_PASS);
    let backend = packet::parse6(&run.frame)
        .expect("valid frame")
        .destination();
    let key = AffinityKey6 {
        client: ip6_to_net(CLIENT_IP6),
        service_id: 211,
        client_kind: AFFINITY_CLIENT_IP,
        _pad: [0; 3],
    };
    let affinity: HashMap<_, AffinityKey6, AffinityValue> = dp.hash_map(map_names::AFFINITY6);
    let remembered = affinity
        .get(&key, 0)
        .expect("AFFINITY6_V1 entry for the client");
    let expected_id = if backend == addr(LOCAL_A) {
        LOCAL_A.0
    } else {
        LOCAL_B.0
    };
    assert_eq!(remembered.backend_id, expected_id);
    // Twenty more new flows from other ports: random choice would leave the backend with
    // probability 1 - 2^-20.
    for port in 41001..41021 {
        let syn = packet::tcp6(client(port), frontend, tcp::SYN);
        dp.check(&Case::xdp(
            "a new flow of the same client goes to the remembered backend",
            syn.build(),
            XDP_PASS,
            Expect::Frame(translated(&syn, client(port), backend)),
        ));
    }
}

/// What the kernel charges per entry (`memlock` of the map's fdinfo) for the services,
/// backends and conntrack maps of each family, all preallocated with the same number of
/// entries: the measurement behind keeping IPv4 in maps of its own (docs/datapath.md). Run
/// with `--nocapture` to see the figures.
#[test]
fn ipv6_entries_cost_more_than_ipv4_ones() {
    use std::os::fd::{AsFd as _, AsRawFd as _};

    const ENTRIES: u32 = 65_536;
    let names = [
        map_names::SERVICES,
        map_names::SERVICES6,
        map_names::BACKENDS,
        map_names::BACKENDS6,
        map_names::CONNTRACK,
        map_names::CONNTRACK6,
        map_names::CONNTRACK_ESTABLISHED,
        map_names::CONNTRACK_ESTABLISHED6,
    ];
    let mut loader = aya::EbpfLoader::new();
    for name in names {
        loader.map_max_entries(name, ENTRIES);
    }
    let ebpf = loader
        .load(proxy_user::EBPF_OBJECT)
        .expect("load the eBPF object");
    let per_entry = |name: &str| -> u64 {
        let map = ebpf.map(name).unwrap_or_else(|| panic!("no map {name}"));
        let data: &aya::maps::MapData = match map {
            aya::maps::Map::HashMap(data) | aya::maps::Map::LruHashMap(data) => data,
            other => panic!("{name} is not a hash map: {other:?}"),
        };
        let fd = data.fd().as_fd().as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .expect("read the map's fdinfo");
        let memlock: u64 = info
            .lines()
            .find_map(|line| line.strip_prefix("memlock:"))
            .expect("a memlock line")
            .trim()
            .parse()
            .expect("a number");
        memlock / u64::from(ENTRIES)
    };
    let mut figures = Vec::new();
    for pair in names.chunks(2) {
        let (v4, v6) = (per_entry(pair[0]), per_entry(pair[1]));
        println!("{}: {v4} bytes per entry, {}: {v6}", pair[0], pair[1]);
        figures.push((v4, v6));
    }
    for (v4, v6) in figures {
        assert!(
            v6 > v4,
            "an IPv6 entry ({v6} B) must cost more than an IPv4 one ({v4} B)"
        );
    }
}
