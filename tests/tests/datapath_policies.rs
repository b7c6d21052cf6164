//! Packet tests of the service policies in `xdp_ingress` through `BPF_PROG_TEST_RUN`:
//! `loadBalancerSourceRanges`, `externalTrafficPolicy: Local` (local endpoints only, no SNAT,
//! and a drop on nodes without a local endpoint), and the internal scope off-node clients
//! never use. Needs root.

use std::net::SocketAddrV4;

use proxy_common::{
    BACKEND_F_LOCAL, CT_F_LOCAL, IPPROTO_TCP, IPPROTO_UDP, SVC_F_NO_LOCAL_ENDPOINT, SVC_F_NODEPORT,
    SVC_F_SOURCE_RANGES, SVC_F_TWO_SCOPES, SVC_SCOPE_DEFAULT, SVC_SCOPE_INTERNAL,
    stats::DropReason, tcp,
};
use proxy_tests::{
    datapath::{CLIENT_IP, Case, Datapath, Expect, NEXT_HOP_IP, NODE_IP, XDP_DROP, XDP_PASS, sock},
    packet,
};

/// A LoadBalancer IP with source ranges, and one without.
const LB_IP: [u8; 4] = [198, 18, 9, 1];
const OPEN_LB_IP: [u8; 4] = [198, 18, 9, 2];
const LB_ID: u32 = 200;
const OPEN_LB_ID: u32 = 201;
/// NodePorts with `externalTrafficPolicy: Local`: with a local endpoint, and without one.
const LOCAL_NODE_PORT: u16 = 30100;
const EMPTY_LOCAL_NODE_PORT: u16 = 30101;

const LOCAL: (u32, [u8; 4], u16) = (1, [198, 19, 100, 1], 8080);
const REMOTE: (u32, [u8; 4], u16) = (10, NEXT_HOP_IP, 8080);

fn client(port: u16) -> SocketAddrV4 {
    sock(CLIENT_IP, port)
}

fn local_backend() -> SocketAddrV4 {
    sock(LOCAL.1, LOCAL.2)
}

fn datapath() -> Datapath {
    let mut dp = Datapath::new(0);
    dp.add_backend(LOCAL.0, local_backend(), BACKEND_F_LOCAL);
    dp.add_backend(REMOTE.0, sock(REMOTE.1, REMOTE.2), 0);
    dp
}

#[test]
fn load_balancer_source_ranges_drop_and_count_other_clients() {
    let mut dp = datapath();
    let tcp_proto = IPPROTO_TCP;
    dp.add_service(
        LB_ID,
        sock(LB_IP, 80),
        tcp_proto,
        SVC_F_SOURCE_RANGES,
        &[LOCAL.0],
    );
    dp.add_service(OPEN_LB_ID, sock(OPEN_LB_IP, 80), tcp_proto, 0, &[LOCAL.0]);
    // Ranges of this frontend that do not hold the client, and one of another frontend that
    // does: neither lets it in.
    dp.add_source_range(LB_ID, [203, 0, 113, 0], 24);
    dp.add_source_range(LB_ID, [198, 18, 0, 128], 25);
    dp.add_source_range(OPEN_LB_ID, [198, 18, 0, 0], 24);

    let syn = packet::tcp(client(40000), sock(LB_IP, 80), tcp::SYN);
    let udp = packet::udp(client(50000), sock(LB_IP, 80)).payload(b"q");
    dp.check_all(&[
        Case::xdp(
            "a client outside the ranges is dropped",
            syn.build(),
            XDP_DROP,
            Expect::Unchanged,
        ),
        Case::xdp(
            "another protocol on the address is not this frontend: not ours",
            udp.build(),
            XDP_PASS,
            Expect::Unchanged,
        ),
    ]);
    assert_eq!(dp.drops(DropReason::SourceRange), 1, "the drop is counted");
    assert_eq!(
        dp.conntrack_len(),
        0,
        "nothing is tracked for a dropped flow"
    );

    // The client's /24 is allowed: the same packet is translated now.
    dp.add_source_range(LB_ID, [198, 18, 0, 0], 24);
    let open = packet::tcp(client(40001), sock(OPEN_LB_IP, 80), tcp::SYN);
    dp.check_all(&[
        Case::xdp(
            "a client inside a range reaches the backend",
            syn.build(),
            XDP_PASS,
            Expect::Frame(
                syn.clone()
                    .addresses(client(40000), local_backend())
                    .build(),
            ),
        ),
        Case::xdp(
            "a frontend without source ranges takes every client",
            open.build(),
            XDP_PASS,
            Expect::Frame(
                open.clone()
                    .addresses(client(40001), local_backend())
                    .build(),
            ),
        ),
    ]);
    assert_eq!(dp.drops(DropReason::SourceRange), 1);
}

#[test]
fn external_policy_local_uses_only_local_endpoints_without_snat() {
    let mut dp = datapath();
    let frontend = sock([0; 4], LOCAL_NODE_PORT);
    let flags = SVC_F_NODEPORT | SVC_F_TWO_SCOPES;
    // Off-node clients: the local endpoint only. In-cluster clients: both (never used by XDP).
    dp.add_service_in_scope(
        300,
        frontend,
        IPPROTO_TCP,
        SVC_SCOPE_INTERNAL,
        SVC_F_NODEPORT,
        &[LOCAL.0, REMOTE.0],
    );
    dp.add_service_in_scope(
        301,
        frontend,
        IPPROTO_TCP,
        SVC_SCOPE_DEFAULT,
        flags,
        &[LOCAL.0],
    );
    let node_port = sock(NODE_IP, LOCAL_NODE_PORT);
    for port in 40000..40020 {
        let syn = packet::tcp(client(port), node_port, tcp::SYN);
        dp.check(&Case::xdp(
            "the local endpoint, and the client's own address kept",
            syn.build(),
            XDP_PASS,
            Expect::Frame(syn.clone().addresses(client(port), local_backend()).build()),
        ));
        let forward = dp
            .conntrack(proxy_tests::datapath::ct_key(
                client(port),
                node_port,
                IPPROTO_TCP,
                proxy_common::CT_DIR_FORWARD,
            ))
            .expect("forward entry");
        assert_eq!(forward.flags, CT_F_LOCAL, "no SNAT");
        assert_eq!(forward.service_id, 301, "the default scope's entry");
    }
}

#[test]
fn external_policy_local_without_a_local_endpoint_drops() {
    let mut dp = datapath();
    let frontend = sock([0; 4], EMPTY_LOCAL_NODE_PORT);
    dp.add_service_in_scope(
        400,
        frontend,
        IPPROTO_TCP,
        SVC_SCOPE_INTERNAL,
        SVC_F_NODEPORT,
        &[REMOTE.0],
    );
    dp.add_service_in_scope(
        401,
        frontend,
        IPPROTO_TCP,
        SVC_SCOPE_DEFAULT,
        SVC_F_NODEPORT | SVC_F_TWO_SCOPES | SVC_F_NO_LOCAL_ENDPOINT,
        &[],
    );
    dp.add_service_in_scope(
        402,
        frontend,
        IPPROTO_UDP,
        SVC_SCOPE_DEFAULT,
        SVC_F_NODEPORT | SVC_F_NO_LOCAL_ENDPOINT,
        &[],
    );
    let node_port = sock(NODE_IP, EMPTY_LOCAL_NODE_PORT);
    let syn = packet::tcp(client(40000), node_port, tcp::SYN);
    let query = packet::udp(client(50000), node_port).payload(b"q");
    dp.check_all(&[
        Case::xdp(
            "TCP: dropped, not reset, and never sent to the remote endpoint",
            syn.build(),
            XDP_DROP,
            Expect::Unchanged,
        ),
        Case::xdp(
            "UDP: dropped, no ICMP",
            query.build(),
            XDP_DROP,
            Expect::Unchanged,
        ),
    ]);
    assert_eq!(dp.drops(DropReason::NoLocalEndpoint), 2);
    assert_eq!(dp.conntrack_len(), 0);
}
