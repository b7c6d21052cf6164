//! Packet tests of the two conntrack tiers through `BPF_PROG_TEST_RUN`: a flow starts in the
//! LRU map of new flows (`CT_V1`, `CT6_V1`) and its first established reply moves both of its
//! entries to the map of confirmed flows (`CT_EST_V1`, `CT6_EST_V1`), which a flood of new
//! flows cannot evict; a full established map leaves flows in the LRU and counts them
//! (`ct_established_full`); a SNAT port an established flow holds is not handed out again.
//! Needs root.

use std::net::{Ipv6Addr, SocketAddrV4};

use aya::maps::HashMap;
use proxy_common::{
    BACKEND_F_LOCAL, Backend, CONFIG_F_XDP_TX, CT_DIR_FORWARD, CT_DIR_REPLY, Config, CtKey,
    IPPROTO_TCP, IPPROTO_UDP, SVC_F_NODEPORT, TCP_STATE_ESTABLISHED, map_names,
    stats::{DropReason, PassReason},
    tcp,
};
use proxy_tests::{
    datapath::{
        CLIENT_IP, CLIENT_IP6, CLIENT_MAC, Case, Datapath, Expect, NEXT_HOP_IP, NEXT_HOP_MAC,
        NODE_IP, Program, SNAT_PORT_MIN, Tier, XDP_DROP, XDP_PASS, XDP_TX, ct_key, ct_key6, sock,
        sock6,
    },
    packet::{self, NODE_MAC, PEER_MAC},
};

const NODE_PORT: u16 = 30080;
/// A ClusterIP whose only backend is behind the next hop: its flows are SNATed.
const REMOTE_SVC: [u8; 4] = [198, 19, 0, 20];
/// Two local backends behind the NodePort: a flow balanced again may land on either.
const LOCAL_A: (u32, [u8; 4], u16) = (1, [198, 19, 100, 1], 8080);
const LOCAL_B: (u32, [u8; 4], u16) = (2, [198, 19, 100, 2], 8080);
const REMOTE: (u32, [u8; 4], u16) = (10, NEXT_HOP_IP, 8080);
/// A ClusterIP per local backend.
const CLUSTER_IP_A: [u8; 4] = [198, 19, 0, 11];
const CLUSTER_IP_B: [u8; 4] = [198, 19, 0, 12];
/// An IPv6 ClusterIP for UDP with one local backend.
const CLUSTER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x10);
const LOCAL_DNS6: (u32, Ipv6Addr, u16) = (3, Ipv6Addr::new(0xfd00, 0x19, 0x100, 0, 0, 0, 0, 1), 53);

fn client(port: u16) -> SocketAddrV4 {
    sock(CLIENT_IP, port)
}

fn node_port() -> SocketAddrV4 {
    sock(NODE_IP, NODE_PORT)
}

fn remote_backend() -> SocketAddrV4 {
    sock(REMOTE.1, REMOTE.2)
}

/// A NodePort to two local backends, a ClusterIP to the remote one, an IPv6 UDP ClusterIP;
/// `new_flows` and `established` entries in each family's conntrack maps.
fn datapath(new_flows: u32, established: u32) -> Datapath {
    let mut dp = Datapath::with_conntrack(CONFIG_F_XDP_TX, new_flows, established);
    for (id, ip, port) in [LOCAL_A, LOCAL_B] {
        dp.add_backend(id, sock(ip, port), BACKEND_F_LOCAL);
    }
    dp.add_backend(REMOTE.0, remote_backend(), 0);
    let any_node_address = sock([0; 4], NODE_PORT);
    let both = [LOCAL_A.0, LOCAL_B.0];
    dp.add_service(100, any_node_address, IPPROTO_TCP, SVC_F_NODEPORT, &both);
    dp.add_service(101, sock(REMOTE_SVC, 80), IPPROTO_TCP, 0, &[REMOTE.0]);
    dp.add_service(103, sock(CLUSTER_IP_A, 80), IPPROTO_TCP, 0, &[LOCAL_A.0]);
    dp.add_service(104, sock(CLUSTER_IP_B, 80), IPPROTO_TCP, 0, &[LOCAL_B.0]);
    let dns6 = sock6(LOCAL_DNS6.1, LOCAL_DNS6.2);
    dp.add_backend6(LOCAL_DNS6.0, dns6, BACKEND_F_LOCAL);
    dp.add_service6(
        102,
        sock6(CLUSTER_IP6, 53),
        IPPROTO_UDP,
        0,
        0,
        &[LOCAL_DNS6.0],
    );
    dp
}

fn forward_key(port: u16) -> CtKey {
    ct_key(client(port), node_port(), IPPROTO_TCP, CT_DIR_FORWARD)
}

/// The local backend the NodePort flow from `port` was balanced to.
fn backend_of(dp: &mut Datapath, port: u16) -> SocketAddrV4 {
    let forward = dp
        .conntrack(forward_key(port))
        .expect("the flow's forward entry");
    SocketAddrV4::new(
        u32::from_be(forward.new_daddr).into(),
        u16::from_be(forward.new_dport),
    )
}

fn reply_key(dp: &mut Datapath, port: u16) -> CtKey {
    ct_key(
        backend_of(dp, port),
        client(port),
        IPPROTO_TCP,
        CT_DIR_REPLY,
    )
}

/// Which map holds the NodePort flow from `port`: both entries in one, or `None` (checked
/// to be in neither).
fn tier_of(dp: &mut Datapath, port: u16) -> Option<Tier> {
    let forward = forward_key(port);
    let entry = dp.conntrack(forward)?;
    let reply = reply_key(dp, port);
    let tiers = [Tier::New, Tier::Established].map(|tier| {
        (
            dp.conntrack_in(tier, forward).is_some(),
            dp.conntrack_in(tier, reply).is_some(),
        )
    });
    assert!(entry.backend_id == LOCAL_A.0 || entry.backend_id == LOCAL_B.0);
    match tiers {
        [(true, true), (false, false)] => Some(Tier::New),
        [(false, false), (true, true)] => Some(Tier::Established),
        other => panic!("the flow from {port} is split: (new, established) = {other:?}"),
    }
}

/// The client's segment on the NodePort flow from `port`: XDP DNATs it to `backend`.
fn client_sends(dp: &mut Datapath, port: u16, backend: SocketAddrV4, flags: u8) {
    let segment = packet::tcp(client(port), node_port(), flags);
    dp.check(&Case::xdp(
        "the client's segment goes to the flow's local backend",
        segment.build(),
        XDP_PASS,
        Expect::Frame(segment.clone().addresses(client(port), backend).build()),
    ));
}

/// The backend's segment to the client at `port`: `tc_egress` gives it the NodePort as source.
fn backend_sends(dp: &mut Datapath, port: u16, backend: SocketAddrV4, flags: u8) {
    let segment = packet::tcp(backend, client(port), flags).macs(NODE_MAC, PEER_MAC);
    dp.check(&Case::tc_egress(
        "the backend's segment leaves from the NodePort",
        segment.build(),
        Expect::Frame(segment.clone().addresses(node_port(), client(port)).build()),
    ));
}

/// A new NodePort flow from `port`; returns the backend it went to.
fn open(dp: &mut Datapath, port: u16) -> SocketAddrV4 {
    let syn = packet::tcp(client(port), node_port(), tcp::SYN);
    let run = dp.run(Program::Xdp, &syn.build());
    assert_eq!(
        run.verdict, XDP_PASS,
        "the SYN is DNATed to a local backend"
    );
    backend_of(dp, port)
}

/// A handshake and the backend's first data on the NodePort flow from `port`: confirmed.
fn open_and_confirm(dp: &mut Datapath, port: u16) -> SocketAddrV4 {
    let backend = open(dp, port);
    backend_sends(dp, port, backend, tcp::SYN | tcp::ACK);
    client_sends(dp, port, backend, tcp::ACK);
    backend_sends(dp, port, backend, tcp::PSH | tcp::ACK);
    backend
}

#[test]
fn a_flows_first_established_reply_moves_both_entries_to_the_established_map() {
    let mut dp = datapath(4096, 4096);
    let port = 40000;
    let backend = open(&mut dp, port);
    assert_eq!(
        tier_of(&mut dp, port),
        Some(Tier::New),
        "a new flow is in the LRU"
    );
    backend_sends(&mut dp, port, backend, tcp::SYN | tcp::ACK);
    assert_eq!(
        tier_of(&mut dp, port),
        Some(Tier::New),
        "a SYN-ACK does not confirm the flow: the handshake is not complete"
    );
    client_sends(&mut dp, port, backend, tcp::ACK);
    assert_eq!(
        tier_of(&mut dp, port),
        Some(Tier::New),
        "the client's packets do not confirm it"
    );
    backend_sends(&mut dp, port, backend, tcp::PSH | tcp::ACK);
    assert_eq!(
        tier_of(&mut dp, port),
        Some(Tier::Established),
        "the backend's first segment after the handshake confirms it"
    );
    let reply = reply_key(&mut dp, port);
    let entry = dp
        .conntrack_in(Tier::Established, reply)
        .expect("the reply entry");
    assert_eq!(entry.tcp_state, TCP_STATE_ESTABLISHED);
    assert_eq!(
        (
            dp.conntrack_len_in(Tier::New),
            dp.conntrack_len_in(Tier::Established)
        ),
        (0, 2)
    );

    // The confirmed flow keeps being translated both ways, from the established map.
    client_sends(&mut dp, port, backend, tcp::PSH | tcp::ACK);
    backend_sends(&mut dp, port, backend, tcp::ACK);
    assert_eq!(tier_of(&mut dp, port), Some(Tier::Established));
    assert_eq!(dp.passes(PassReason::CtEstablishedFull), 0);

    // Its backend removed (as the daemon does: slots first, then the backend), the next
    // packet deletes both established entries and the flow is balanced again, as a new one.
    let (gone, other) = if backend == sock(LOCAL_A.1, LOCAL_A.2) {
        (LOCAL_A, LOCAL_B)
    } else {
        (LOCAL_B, LOCAL_A)
    };
    dp.add_service(
        100,
        sock([0; 4], NODE_PORT),
        IPPROTO_TCP,
        SVC_F_NODEPORT,
        &[other.0],
    );
    let mut backends: HashMap<_, u32, Backend> = dp.hash_map(map_names::BACKENDS);
    backends.remove(&gone.0).expect("remove the backend");
    client_sends(&mut dp, port, sock(other.1, other.2), tcp::SYN);
    assert_eq!(dp.conntrack_in(Tier::Established, reply), None);
    assert_eq!(
        dp.conntrack_len_in(Tier::Established),
        0,
        "the old flow's entries are gone"
    );
    assert_eq!(tier_of(&mut dp, port), Some(Tier::New));
}

#[test]
fn a_udp_flows_first_reply_confirms_it_in_either_family() {
    let mut dp = datapath(4096, 4096);
    // IPv6: a query to the ClusterIP, the local backend's answer leaving through tc_egress.
    let frontend = sock6(CLUSTER_IP6, 53);
    let backend = sock6(LOCAL_DNS6.1, LOCAL_DNS6.2);
    let client6 = |port| sock6(CLIENT_IP6, port);
    let query = packet::udp6(client6(50000), frontend).payload(b"query");
    let answer = packet::udp6(backend, client6(50000))
        .payload(b"answer")
        .macs(NODE_MAC, PEER_MAC);
    let forward6 = ct_key6(client6(50000), frontend, IPPROTO_UDP, CT_DIR_FORWARD);
    let reply6 = ct_key6(backend, client6(50000), IPPROTO_UDP, CT_DIR_REPLY);
    dp.check(&Case::xdp(
        "the query is DNATed",
        query.build(),
        XDP_PASS,
        Expect::Frame(query.clone().addresses(client6(50000), backend).build()),
    ));
    let in_tiers = |dp: &mut Datapath, forward: bool| -> (bool, bool) {
        let key = if forward { forward6 } else { reply6 };
        (
            dp.conntrack6_in(Tier::New, key).is_some(),
            dp.conntrack6_in(Tier::Established, key).is_some(),
        )
    };
    assert_eq!(
        (in_tiers(&mut dp, true), in_tiers(&mut dp, false)),
        ((true, false), (true, false))
    );
    dp.check(&Case::tc_egress(
        "the answer leaves from the frontend",
        answer.build(),
        Expect::Frame(answer.clone().addresses(frontend, client6(50000)).build()),
    ));
    assert_eq!(
        (in_tiers(&mut dp, true), in_tiers(&mut dp, false)),
        ((false, true), (false, true)),
        "the first answer moved both entries"
    );
    dp.check(&Case::xdp(
        "the next query takes the established flow",
        query.build(),
        XDP_PASS,
        Expect::Frame(query.clone().addresses(client6(50000), backend).build()),
    ));

    // IPv4, a SNATed flow: its replies arrive at XDP.
    let frontend = sock(REMOTE_SVC, 80);
    let syn = packet::tcp(client(40000), frontend, tcp::SYN);
    assert_eq!(dp.run(Program::Xdp, &syn.build()).verdict, XDP_TX);
    let forward = ct_key(client(40000), frontend, IPPROTO_TCP, CT_DIR_FORWARD);
    let snat_port = u16::from_be(dp.conntrack(forward).expect("forward entry").new_sport);
    let reply = ct_key(
        remote_backend(),
        sock(NODE_IP, snat_port),
        IPPROTO_TCP,
        CT_DIR_REPLY,
    );
    for (flags, confirmed) in [(tcp::SYN | tcp::ACK, false), (tcp::ACK, true)] {
        let segment = packet::tcp(remote_backend(), sock(NODE_IP, snat_port), flags)
            .macs(NEXT_HOP_MAC, NODE_MAC);
        dp.check(&Case::xdp(
            "the remote backend's segment goes back to the client from the frontend",
            segment.build(),
            XDP_TX,
            Expect::Frame(
                segment
                    .clone()
                    .addresses(frontend, client(40000))
                    .ttl(63)
                    .macs(NODE_MAC, CLIENT_MAC)
                    .build(),
            ),
        ));
        for key in [forward, reply] {
            assert_eq!(dp.conntrack_in(Tier::Established, key).is_some(), confirmed);
            assert_eq!(dp.conntrack_in(Tier::New, key).is_some(), !confirmed);
        }
    }
}

#[test]
fn a_flood_of_new_flows_leaves_an_established_flow_in_place() {
    const LRU: u32 = 64;
    const FLOOD: u16 = 2000;
    let mut dp = datapath(LRU, 64);
    let port = 40000;
    let backend = open_and_confirm(&mut dp, port);
    assert_eq!(tier_of(&mut dp, port), Some(Tier::Established));
    let established = dp
        .conntrack_in(Tier::Established, forward_key(port))
        .expect("the confirmed flow's forward entry");
    // A flow opened but not confirmed before the flood: the LRU's to evict.
    let unconfirmed = 40001;
    open(&mut dp, unconfirmed);

    // Every new flow of the flood is served.
    for flood_port in 0..FLOOD {
        let syn = packet::tcp(client(41000 + flood_port), node_port(), tcp::SYN);
        let run = dp.run(Program::Xdp, &syn.build());
        assert_eq!(run.verdict, XDP_PASS, "flood flow {flood_port} is DNATed");
    }
    assert!(dp.conntrack_len_in(Tier::New) <= LRU as usize);
    assert_eq!(
        dp.conntrack(forward_key(unconfirmed)),
        None,
        "the flood evicted the unconfirmed flow"
    );
    assert_eq!(
        tier_of(&mut dp, port),
        Some(Tier::Established),
        "the confirmed one is in place"
    );
    assert_eq!(
        dp.conntrack_in(Tier::Established, forward_key(port))
            .map(|entry| entry.backend_id),
        Some(established.backend_id)
    );
    assert_eq!(
        dp.conntrack_len_in(Tier::Established),
        2,
        "only the confirmed flow"
    );

    // Its next packets still go to its backend and its replies are still translated.
    client_sends(&mut dp, port, backend, tcp::PSH | tcp::ACK);
    backend_sends(&mut dp, port, backend, tcp::PSH | tcp::ACK);
    client_sends(&mut dp, port, backend, tcp::ACK);
}

#[test]
fn a_full_established_map_leaves_flows_in_the_lru_and_counts_them() {
    // Room for one flow's two entries: the second confirmed flow finds the map full.
    let mut dp = datapath(4096, 2);
    let first = 40000;
    open_and_confirm(&mut dp, first);
    assert_eq!(tier_of(&mut dp, first), Some(Tier::Established));
    assert_eq!(dp.passes(PassReason::CtEstablishedFull), 0);

    let second = 40001;
    let backend = open_and_confirm(&mut dp, second);
    assert_eq!(
        tier_of(&mut dp, second),
        Some(Tier::New),
        "stays in the LRU"
    );
    assert_eq!(dp.passes(PassReason::CtEstablishedFull), 1);
    // It keeps working from the LRU; each reply that cannot move it is counted.
    client_sends(&mut dp, second, backend, tcp::PSH | tcp::ACK);
    backend_sends(&mut dp, second, backend, tcp::ACK);
    assert_eq!(dp.passes(PassReason::CtEstablishedFull), 2);
    assert_eq!(tier_of(&mut dp, second), Some(Tier::New));
    assert_eq!(dp.conntrack_len_in(Tier::Established), 2);

    // Room for three entries: the second flow's reply entry fits, its forward entry does not;
    // the reply entry is taken back, nothing is left half moved.
    let mut dp = datapath(4096, 3);
    open_and_confirm(&mut dp, first);
    open_and_confirm(&mut dp, second);
    assert_eq!(tier_of(&mut dp, second), Some(Tier::New));
    assert_eq!(dp.passes(PassReason::CtEstablishedFull), 1);
    assert_eq!(dp.conntrack_len_in(Tier::Established), 2);
}

#[test]
fn a_snat_port_held_by_an_established_flow_is_not_handed_out_again() {
    let mut dp = datapath(4096, 4096);
    let only_port = SNAT_PORT_MIN;
    dp.set_config(Config {
        snat_addr: u32::from_ne_bytes(NODE_IP),
        snat_port_min: only_port,
        snat_port_max: only_port,
        flags: CONFIG_F_XDP_TX | proxy_common::CONFIG_F_COUNTERS,
        log_level: 0,
    });
    let frontend = sock(REMOTE_SVC, 80);
    let syn = packet::tcp(client(40000), frontend, tcp::SYN);
    dp.check(&Case::xdp(
        "the only SNAT port goes to the first flow",
        syn.build(),
        XDP_TX,
        Expect::Frame(
            syn.clone()
                .addresses(sock(NODE_IP, only_port), remote_backend())
                .ttl(63)
                .macs(NODE_MAC, NEXT_HOP_MAC)
                .build(),
        ),
    ));
    for flags in [tcp::SYN | tcp::ACK, tcp::ACK] {
        let segment = packet::tcp(remote_backend(), sock(NODE_IP, only_port), flags)
            .macs(NEXT_HOP_MAC, NODE_MAC);
        assert_eq!(dp.run(Program::Xdp, &segment.build()).verdict, XDP_TX);
    }
    let reply = ct_key(
        remote_backend(),
        sock(NODE_IP, only_port),
        IPPROTO_TCP,
        CT_DIR_REPLY,
    );
    assert!(
        dp.conntrack_in(Tier::Established, reply).is_some(),
        "the flow is confirmed"
    );
    assert!(
        dp.conntrack_in(Tier::New, reply).is_none(),
        "and left the LRU"
    );

    dp.check(&Case::xdp(
        "a second flow to the same backend finds the established flow's port taken",
        packet::tcp(client(40001), frontend, tcp::SYN).build(),
        XDP_DROP,
        Expect::Unchanged,
    ));
    assert_eq!(dp.drops(DropReason::NoSnatPort), 1);
    let second = ct_key(client(40001), frontend, IPPROTO_TCP, CT_DIR_FORWARD);
    assert_eq!(dp.conntrack(second), None);
    assert_eq!(
        dp.conntrack_in(Tier::Established, reply)
            .map(|entry| entry.new_dport),
        Some(40000u16.to_be()),
        "the port still belongs to the first flow"
    );
}

#[test]
fn a_new_flow_on_a_finished_established_flows_backend_tuple_gets_its_own_replies() {
    let mut dp = datapath(4096, 4096);
    let port = 40000;
    let backend = open_and_confirm(&mut dp, port);
    // The flow ends (FIN both ways); its entries linger in the established map until the GC.
    client_sends(&mut dp, port, backend, tcp::FIN | tcp::ACK);
    backend_sends(&mut dp, port, backend, tcp::FIN | tcp::ACK);
    client_sends(&mut dp, port, backend, tcp::ACK);
    assert_eq!(tier_of(&mut dp, port), Some(Tier::Established));

    // The client reuses its port towards a ClusterIP of the same backend: the backend sees
    // the same tuple, and its answers must go back from the ClusterIP, not the NodePort.
    let cluster_ip = if backend == sock(LOCAL_A.1, LOCAL_A.2) {
        sock(CLUSTER_IP_A, 80)
    } else {
        sock(CLUSTER_IP_B, 80)
    };
    let syn = packet::tcp(client(port), cluster_ip, tcp::SYN);
    dp.check(&Case::xdp(
        "the new flow's SYN goes to the same backend",
        syn.build(),
        XDP_PASS,
        Expect::Frame(syn.clone().addresses(client(port), backend).build()),
    ));
    for flags in [tcp::SYN | tcp::ACK, tcp::PSH | tcp::ACK] {
        let segment = packet::tcp(backend, client(port), flags).macs(NODE_MAC, PEER_MAC);
        dp.check(&Case::tc_egress(
            "the backend's answer leaves from the ClusterIP",
            segment.build(),
            Expect::Frame(segment.clone().addresses(cluster_ip, client(port)).build()),
        ));
    }
    let forward = ct_key(client(port), cluster_ip, IPPROTO_TCP, CT_DIR_FORWARD);
    assert!(
        dp.conntrack_in(Tier::Established, forward).is_some(),
        "the new flow is confirmed in its turn"
    );
}
