//! Packet tests of fragmented datagrams through `BPF_PROG_TEST_RUN`, both families: every
//! fragment of a datagram to a service is translated with its flow (the first fragment's
//! ports, remembered in `FRAG_V1` / `FRAG6_V1`, stand in for the later ones'), on XDP (DNAT to
//! a local backend, DNAT+SNAT to a remote one, the remote backend's fragmented reply), on
//! `tc_egress` (a local backend's fragmented reply) and on the pod-side path. The expected
//! fragments are the translated whole datagram, fragmented; the translated fragments are
//! reassembled and their checksums computed from scratch. Needs root.

use std::net::{Ipv6Addr, SocketAddrV4, SocketAddrV6};

use proxy_common::{
    BACKEND_F_LOCAL, CONFIG_F_XDP_TX, IPPROTO_UDP, SVC_F_NODEPORT, stats::PassReason,
};
use proxy_tests::{
    datapath::{
        CLIENT_IP, CLIENT_IP6, CLIENT_MAC, Case, Datapath, Expect, NEXT_HOP_IP, NEXT_HOP_MAC,
        NODE_IP, NODE_IP6, Program, TC_ACT_OK, XDP_PASS, XDP_TX, sock, sock6,
    },
    packet::{self, NODE_MAC, PEER_MAC},
};

const CLUSTER_IP: [u8; 4] = [198, 19, 0, 10];
const REMOTE_SVC: [u8; 4] = [198, 19, 0, 20];
const NODE_PORT: u16 = 30053;
const LOCAL: (u32, [u8; 4], u16) = (1, [198, 19, 100, 1], 5353);
const REMOTE: (u32, [u8; 4], u16) = (2, NEXT_HOP_IP, 5353);
/// The IP payload of each fragment but the last: a 1500-byte MTU's.
const CHUNK: usize = 1480;
/// A datagram that takes three fragments.
const BIG: usize = 4000;

fn client(port: u16) -> SocketAddrV4 {
    sock(CLIENT_IP, port)
}

fn addr((_, ip, port): (u32, [u8; 4], u16)) -> SocketAddrV4 {
    sock(ip, port)
}

fn datapath(config_flags: u32) -> Datapath {
    let mut dp = Datapath::new(config_flags);
    dp.add_backend(LOCAL.0, addr(LOCAL), BACKEND_F_LOCAL);
    dp.add_backend(REMOTE.0, addr(REMOTE), 0);
    dp.add_service(100, sock(CLUSTER_IP, 53), IPPROTO_UDP, 0, &[LOCAL.0]);
    dp.add_service(101, sock(REMOTE_SVC, 53), IPPROTO_UDP, 0, &[REMOTE.0]);
    let node_port = sock([0; 4], NODE_PORT);
    dp.add_service(102, node_port, IPPROTO_UDP, SVC_F_NODEPORT, &[LOCAL.0]);
    dp
}

/// Runs every fragment through `program`, each expected to come out as the matching one of
/// `expected` with `verdict`; returns the outputs, whose reassembly must be a valid datagram.
fn run_fragments(
    dp: &mut Datapath,
    program: Program,
    input: &[Vec<u8>],
    verdict: u32,
    expected: &[Vec<u8>],
) -> Vec<Vec<u8>> {
    assert_eq!(input.len(), expected.len());
    let outputs: Vec<Vec<u8>> = input
        .iter()
        .zip(expected)
        .map(|(fragment, expected)| {
            let case = Case {
                description: "a fragment of the datagram",
                program,
                input: fragment.clone(),
                verdict,
                output: Expect::Frame(expected.clone()),
            };
            dp.check(&case).frame
        })
        .collect();
    let whole = packet::reassemble(&outputs);
    if let Err(err) = packet::parse_any(&whole) {
        panic!("the translated fragments do not reassemble into a valid datagram: {err}");
    }
    outputs
}

#[test]
fn every_fragment_of_a_datagram_to_a_local_backend_is_translated_and_so_is_the_reply() {
    let mut dp = datapath(0);
    let frontend = sock(CLUSTER_IP, 53);
    let backend = addr(LOCAL);
    let query = packet::udp(client(50000), frontend).payload(&[0x5a; BIG]);
    let input = packet::fragments(&query.build(), CHUNK);
    assert_eq!(input.len(), 3);
    let expected = packet::fragments(
        &query.clone().addresses(client(50000), backend).build(),
        CHUNK,
    );
    run_fragments(&mut dp, Program::Xdp, &input, XDP_PASS, &expected);
    assert_eq!(dp.conntrack_len(), 2, "one flow for the whole datagram");

    let answer = packet::udp(backend, client(50000))
        .payload(&[0xa5; BIG])
        .id(0x4321)
        .macs(NODE_MAC, PEER_MAC);
    let input = packet::fragments(&answer.build(), CHUNK);
    let expected = packet::fragments(
        &answer.clone().addresses(frontend, client(50000)).build(),
        CHUNK,
    );
    run_fragments(&mut dp, Program::TcEgress, &input, TC_ACT_OK, &expected);
    assert_eq!(
        dp.passes(PassReason::Fragment),
        0,
        "nothing passed untranslated"
    );
}

#[test]
fn fragments_to_a_node_port_go_to_its_backend() {
    let mut dp = datapath(0);
    let query = packet::udp(client(50000), sock(NODE_IP, NODE_PORT)).payload(&[7; BIG]);
    let input = packet::fragments(&query.build(), CHUNK);
    let expected = packet::fragments(
        &query.clone().addresses(client(50000), addr(LOCAL)).build(),
        CHUNK,
    );
    run_fragments(&mut dp, Program::Xdp, &input, XDP_PASS, &expected);
}

#[test]
fn fragments_to_a_remote_backend_are_snated_and_so_is_its_fragmented_reply() {
    let mut dp = datapath(CONFIG_F_XDP_TX);
    let frontend = sock(REMOTE_SVC, 53);
    let backend = addr(REMOTE);
    let query = packet::udp(client(50000), frontend).payload(&[0x5a; BIG]);
    let input = packet::fragments(&query.build(), CHUNK);
    // The SNAT port is random: read it from the first fragment's output.
    let first = dp.run(Program::Xdp, &input[0]);
    assert_eq!(first.verdict, XDP_TX);
    let l4 = 14 + 20;
    let port = u16::from_be_bytes([first.frame[l4], first.frame[l4 + 1]]);
    let snat = sock(NODE_IP, port);
    let to_backend = query
        .clone()
        .addresses(snat, backend)
        .ttl(63)
        .macs(NODE_MAC, NEXT_HOP_MAC);
    let expected = packet::fragments(&to_backend.build(), CHUNK);
    assert_eq!(first.frame, expected[0], "the first fragment: DNAT + SNAT");
    let mut outputs = vec![first.frame];
    outputs.extend(run_fragments_from(
        &mut dp,
        &input[1..],
        XDP_TX,
        &expected[1..],
    ));
    packet::parse_any(&packet::reassemble(&outputs)).expect("a valid datagram to the backend");

    let answer = packet::udp(backend, snat)
        .payload(&[0xa5; BIG])
        .id(0x4321)
        .macs(NEXT_HOP_MAC, NODE_MAC);
    let input = packet::fragments(&answer.build(), CHUNK);
    let to_client = answer
        .clone()
        .addresses(frontend, client(50000))
        .ttl(63)
        .macs(NODE_MAC, CLIENT_MAC);
    let expected = packet::fragments(&to_client.build(), CHUNK);
    run_fragments(&mut dp, Program::Xdp, &input, XDP_TX, &expected);
}

/// [`run_fragments`] for fragments whose reassembly the caller checks.
fn run_fragments_from(
    dp: &mut Datapath,
    input: &[Vec<u8>],
    verdict: u32,
    expected: &[Vec<u8>],
) -> Vec<Vec<u8>> {
    input
        .iter()
        .zip(expected)
        .map(|(fragment, expected)| {
            let case = Case::xdp(
                "a later fragment follows the first",
                fragment.clone(),
                verdict,
                Expect::Frame(expected.clone()),
            );
            dp.check(&case).frame
        })
        .collect()
}

#[test]
fn a_fragment_that_overtakes_its_first_passes_untranslated_and_counted() {
    let mut dp = datapath(0);
    let frontend = sock(CLUSTER_IP, 53);
    let query = packet::udp(client(50000), frontend).payload(&[1; BIG]);
    let input = packet::fragments(&query.build(), CHUNK);
    let expected = packet::fragments(
        &query.clone().addresses(client(50000), addr(LOCAL)).build(),
        CHUNK,
    );
    dp.check(&Case::xdp(
        "a later fragment before its first: untranslated",
        input[1].clone(),
        XDP_PASS,
        Expect::Unchanged,
    ));
    assert_eq!(dp.passes(PassReason::Fragment), 1);
    run_fragments(&mut dp, Program::Xdp, &input, XDP_PASS, &expected);

    // Fragments of a datagram to no service: not ours, untouched and uncounted.
    let other = packet::udp(client(50001), sock([198, 20, 0, 1], 53)).payload(&[2; BIG]);
    for fragment in packet::fragments(&other.build(), CHUNK) {
        dp.check(&Case::xdp(
            "a fragment to no service",
            fragment,
            XDP_PASS,
            Expect::Unchanged,
        ));
    }
    assert_eq!(dp.passes(PassReason::Fragment), 1);
}

#[test]
fn a_pods_fragmented_datagram_to_a_cluster_ip_is_translated_on_the_pod_side_path() {
    let mut dp = datapath(0);
    let pod = sock([198, 18, 1, 10], 50000);
    let frontend = sock(CLUSTER_IP, 53);
    let query = packet::udp(pod, frontend).payload(&[3; BIG]);
    let input = packet::fragments(&query.build(), CHUNK);
    let expected = packet::fragments(&query.clone().addresses(pod, addr(LOCAL)).build(), CHUNK);
    run_fragments(&mut dp, Program::FromPod, &input, TC_ACT_OK, &expected);
    let answer = packet::udp(addr(LOCAL), pod).payload(&[4; BIG]).id(0x4321);
    let input = packet::fragments(&answer.build(), CHUNK);
    let expected = packet::fragments(&answer.clone().addresses(frontend, pod).build(), CHUNK);
    run_fragments(&mut dp, Program::ToPod, &input, TC_ACT_OK, &expected);
}

#[test]
fn ipv6_fragments_to_a_local_backend_and_their_reply_are_translated() {
    let mut dp = Datapath::new(0);
    let cluster_ip = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x10);
    let frontend = sock6(cluster_ip, 53);
    let backend = sock6(Ipv6Addr::new(0xfd00, 0x19, 0x100, 0, 0, 0, 0, 1), 5353);
    dp.add_backend6(21, backend, BACKEND_F_LOCAL);
    dp.add_service6(200, frontend, IPPROTO_UDP, 0, 0, &[21]);
    let node_port = sock6(Ipv6Addr::UNSPECIFIED, NODE_PORT);
    dp.add_service6(201, node_port, IPPROTO_UDP, SVC_F_NODEPORT, 0, &[21]);
    let client6 = |port| sock6(CLIENT_IP6, port);

    let query = packet::udp6(client6(50000), frontend).payload(&[0x5a; BIG]);
    let input = packet::fragments6(&query.build(), 1448, 7);
    assert_eq!(input.len(), 3);
    let expected = packet::fragments6(
        &query.clone().addresses(client6(50000), backend).build(),
        1448,
        7,
    );
    run_fragments(&mut dp, Program::Xdp, &input, XDP_PASS, &expected);

    let answer = packet::udp6(backend, client6(50000))
        .payload(&[0xa5; BIG])
        .macs(NODE_MAC, PEER_MAC);
    let input = packet::fragments6(&answer.build(), 1448, 9);
    let expected = packet::fragments6(
        &answer.clone().addresses(frontend, client6(50000)).build(),
        1448,
        9,
    );
    run_fragments(&mut dp, Program::TcEgress, &input, TC_ACT_OK, &expected);

    let to_node_port: SocketAddrV6 = sock6(NODE_IP6, NODE_PORT);
    let query = packet::udp6(client6(50001), to_node_port).payload(&[1; BIG]);
    let input = packet::fragments6(&query.build(), 1448, 11);
    let expected = packet::fragments6(
        &query.clone().addresses(client6(50001), backend).build(),
        1448,
        11,
    );
    run_fragments(&mut dp, Program::Xdp, &input, XDP_PASS, &expected);
    assert_eq!(dp.passes(PassReason::Fragment), 0);
}
