//! Packet tests of ICMP and ICMPv6 errors about translated flows through `BPF_PROG_TEST_RUN`:
//! an error quotes the packet it is about as it was sent, translated, and must reach the other
//! end of the flow quoting the packet as that end knows it, with every checksum right (the
//! expected frames are built from scratch). On XDP: fragmentation needed / packet too big for a
//! SNATed flow's packet to its backend, sent on to the client; an error about a reply, sent on
//! to the local backend. On `tc_egress`: the node's own error about a packet it forwarded to a
//! local backend. On `tc_to_pod`: an error about a pod's flow. Errors about no flow, and other
//! ICMP, pass untouched. Needs root.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

use proxy_common::{BACKEND_F_LOCAL, CONFIG_F_XDP_TX, IPPROTO_TCP, IPPROTO_UDP, tcp};
use proxy_tests::{
    datapath::{
        CLIENT_IP, CLIENT_IP6, CLIENT_MAC, Case, Datapath, Expect, NEXT_HOP_IP, NEXT_HOP_IP6,
        NODE_IP, NODE_IP6, Program, TC_ACT_OK, XDP_PASS, XDP_TX, sock, sock6,
    },
    packet::{self, NODE_MAC},
};

const CLUSTER_IP: [u8; 4] = [198, 19, 0, 10];
const REMOTE_SVC: [u8; 4] = [198, 19, 0, 20];
const LOCAL: (u32, [u8; 4], u16) = (1, [198, 19, 100, 1], 8080);
const REMOTE: (u32, [u8; 4], u16) = (2, NEXT_HOP_IP, 8080);
/// A router on the way that reports the error (not a neighbour: only the destination is
/// routed).
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 30);
/// ICMP destination unreachable, fragmentation needed.
const FRAG_NEEDED: u8 = 4;

fn client(port: u16) -> SocketAddrV4 {
    sock(CLIENT_IP, port)
}

fn addr((_, ip, port): (u32, [u8; 4], u16)) -> SocketAddrV4 {
    sock(ip, port)
}

fn datapath() -> Datapath {
    let mut dp = Datapath::new(CONFIG_F_XDP_TX);
    dp.add_backend(LOCAL.0, addr(LOCAL), BACKEND_F_LOCAL);
    dp.add_backend(REMOTE.0, addr(REMOTE), 0);
    dp.add_service(100, sock(CLUSTER_IP, 80), IPPROTO_TCP, 0, &[LOCAL.0]);
    dp.add_service(101, sock(REMOTE_SVC, 80), IPPROTO_TCP, 0, &[REMOTE.0]);
    dp.add_service(102, sock(CLUSTER_IP, 53), IPPROTO_UDP, 0, &[LOCAL.0]);
    dp
}

#[test]
fn fragmentation_needed_for_a_snated_flow_reaches_the_client_quoting_its_own_packet() {
    let mut dp = datapath();
    let frontend = sock(REMOTE_SVC, 80);
    let data = packet::tcp(client(40000), frontend, tcp::ACK | tcp::PSH)
        .seq_ack(1000, 1)
        .payload(&[0x5a; 1400]);
    // The flow, opened by its SYN: the SNAT port is random, read it from the output.
    let syn = packet::tcp(client(40000), frontend, tcp::SYN);
    let run = dp.run(Program::Xdp, &syn.build());
    assert_eq!(run.verdict, XDP_TX);
    let port = u16::from_be_bytes([run.frame[34], run.frame[35]]);
    let snat = sock(NODE_IP, port);
    let backend = addr(REMOTE);

    // A router between the node and the backend reports the SNATed segment too big.
    let sent = data.clone().addresses(snat, backend).ttl(62).build();
    let error = packet::icmp_unreachable(ROUTER, Ipv4Addr::from(NODE_IP), FRAG_NEEDED, &sent);
    let as_client_sent = data.clone().ttl(62).build();
    let expected = packet::icmp_unreachable(
        ROUTER,
        Ipv4Addr::from(CLIENT_IP),
        FRAG_NEEDED,
        &as_client_sent,
    )
    .ttl(63)
    .macs(NODE_MAC, CLIENT_MAC);
    dp.check(&Case::xdp(
        "the error goes on to the client, quoting client -> frontend",
        error.build(),
        XDP_TX,
        Expect::Frame(expected.build()),
    ));
}

#[test]
fn an_error_about_a_reply_goes_on_to_the_local_backend() {
    let mut dp = datapath();
    let frontend = sock(CLUSTER_IP, 80);
    let backend = addr(LOCAL);
    let syn = packet::tcp(client(40000), frontend, tcp::SYN);
    dp.check(&Case::xdp(
        "the flow to the local backend",
        syn.build(),
        XDP_PASS,
        Expect::Frame(syn.clone().addresses(client(40000), backend).build()),
    ));
    // The client's side says the reply (from the frontend, as tc_egress sent it) was too big.
    let reply = packet::tcp(frontend, client(40000), tcp::ACK).payload(&[1; 1400]);
    let error = packet::icmp_unreachable(
        ROUTER,
        Ipv4Addr::from(CLUSTER_IP),
        FRAG_NEEDED,
        &reply.build(),
    );
    let as_backend_sent = reply.clone().addresses(backend, client(40000)).build();
    let expected = packet::icmp_unreachable(ROUTER, *backend.ip(), FRAG_NEEDED, &as_backend_sent);
    dp.check(&Case::xdp(
        "the error goes to the backend, quoting backend -> client",
        error.build(),
        XDP_PASS,
        Expect::Frame(expected.build()),
    ));
    // The same quote in an error addressed to someone else than the quoted packet's source:
    // no error of this flow's (RFC 792 sends errors to the source), passed as it is.
    let misaddressed =
        packet::icmp_unreachable(ROUTER, Ipv4Addr::from(NODE_IP), FRAG_NEEDED, &reply.build());
    dp.check(&Case::xdp(
        "an error not addressed to the quoted packet's source",
        misaddressed.build(),
        XDP_PASS,
        Expect::Unchanged,
    ));
}

#[test]
fn the_nodes_own_error_about_a_translated_packet_leaves_quoting_the_frontend() {
    let mut dp = datapath();
    let frontend = sock(CLUSTER_IP, 80);
    let backend = addr(LOCAL);
    let syn = packet::tcp(client(40000), frontend, tcp::SYN);
    dp.run(Program::Xdp, &syn.build());
    // The node could not forward the translated segment to the backend's small-MTU link.
    let data = packet::tcp(client(40000), frontend, tcp::ACK).payload(&[2; 1400]);
    let translated = data
        .clone()
        .addresses(client(40000), backend)
        .ttl(63)
        .build();
    let node = Ipv4Addr::from(NODE_IP);
    let error = packet::icmp_unreachable(node, Ipv4Addr::from(CLIENT_IP), FRAG_NEEDED, &translated);
    let expected = packet::icmp_unreachable(
        node,
        Ipv4Addr::from(CLIENT_IP),
        FRAG_NEEDED,
        &data.clone().ttl(63).build(),
    );
    // UDP port unreachable from the backend's node about the DNATed datagram, too.
    let query = packet::udp(client(50000), sock(CLUSTER_IP, 53)).payload(b"query");
    dp.run(Program::Xdp, &query.build());
    let dnated = query.clone().addresses(client(50000), backend).build();
    let unreachable = packet::icmp_unreachable(node, Ipv4Addr::from(CLIENT_IP), 3, &dnated);
    dp.check_all(&[
        Case::tc_egress(
            "fragmentation needed leaves quoting client -> frontend",
            error.build(),
            Expect::Frame(expected.build()),
        ),
        Case::tc_egress(
            "port unreachable leaves quoting client -> frontend",
            unreachable.build(),
            Expect::Frame(
                packet::icmp_unreachable(node, Ipv4Addr::from(CLIENT_IP), 3, &query.build())
                    .build(),
            ),
        ),
    ]);
}

#[test]
fn an_error_about_a_pods_flow_reaches_the_pod_quoting_the_frontend() {
    let mut dp = datapath();
    let pod = sock([198, 18, 1, 10], 40000);
    let frontend = sock(REMOTE_SVC, 80);
    let backend = addr(REMOTE);
    let syn = packet::tcp(pod, frontend, tcp::SYN);
    dp.check(&Case::from_pod(
        "a pod's flow to a remote backend",
        syn.build(),
        TC_ACT_OK,
        Expect::Frame(syn.clone().addresses(pod, backend).build()),
    ));
    let data = packet::tcp(pod, frontend, tcp::ACK).payload(&[3; 1400]);
    let error = packet::icmp_unreachable(
        ROUTER,
        *pod.ip(),
        FRAG_NEEDED,
        &data.clone().addresses(pod, backend).build(),
    );
    let expected = packet::icmp_unreachable(ROUTER, *pod.ip(), FRAG_NEEDED, &data.build());
    dp.check(&Case::to_pod(
        "the error reaches the pod quoting pod -> frontend",
        error.build(),
        Expect::Frame(expected.build()),
    ));
}

#[test]
fn errors_about_no_flow_and_other_icmp_pass_untouched() {
    let mut dp = datapath();
    let stranger = packet::tcp(client(40001), sock(CLUSTER_IP, 80), tcp::ACK)
        .addresses(client(40001), addr(LOCAL))
        .build();
    let error = packet::icmp_unreachable(ROUTER, Ipv4Addr::from(NODE_IP), FRAG_NEEDED, &stranger);
    let echo = packet::icmp(Ipv4Addr::from(CLIENT_IP), Ipv4Addr::from(CLUSTER_IP), 8, 0).build();
    dp.check_all(&[
        Case::xdp(
            "an error about no flow",
            error.build(),
            XDP_PASS,
            Expect::Unchanged,
        ),
        Case::xdp("an echo request", echo.clone(), XDP_PASS, Expect::Unchanged),
        Case::tc_egress("an error about no flow", error.build(), Expect::Unchanged),
        Case::tc_egress("an echo request", echo, Expect::Unchanged),
    ]);
}

#[test]
fn ipv6_packet_too_big_for_a_snated_flow_reaches_the_client_and_the_nodes_own_leaves_translated() {
    let mut dp = Datapath::new(CONFIG_F_XDP_TX);
    let cluster_ip = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x10);
    let remote_svc = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x20);
    let local = sock6(Ipv6Addr::new(0xfd00, 0x19, 0x100, 0, 0, 0, 0, 1), 8080);
    let remote = sock6(NEXT_HOP_IP6, 8080);
    dp.add_backend6(21, local, BACKEND_F_LOCAL);
    dp.add_backend6(22, remote, 0);
    dp.add_service6(200, sock6(cluster_ip, 80), IPPROTO_TCP, 0, 0, &[21]);
    dp.add_service6(201, sock6(remote_svc, 80), IPPROTO_TCP, 0, 0, &[22]);
    let client6 = |port| sock6(CLIENT_IP6, port);
    let router = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x30);
    let mtu = 1280u32.to_be_bytes();

    let frontend = sock6(remote_svc, 80);
    let syn = packet::tcp6(client6(40000), frontend, tcp::SYN);
    let run = dp.run(Program::Xdp, &syn.build());
    assert_eq!(run.verdict, XDP_TX);
    let port = u16::from_be_bytes([run.frame[54], run.frame[55]]);
    let snat = sock6(NODE_IP6, port);
    let data = packet::tcp6(client6(40000), frontend, tcp::ACK).payload(&[4; 1400]);
    let sent = data.clone().addresses(snat, remote).hop_limit(62).build();
    let too_big = |from: Ipv6Addr, to: Ipv6Addr, quoted: &[u8]| {
        packet::icmp6(from, to, 2, 0, mtu).payload(&quoted[14..14 + 1232])
    };
    let error = too_big(router, NODE_IP6, &sent);
    let expected = too_big(router, CLIENT_IP6, &data.clone().hop_limit(62).build())
        .hop_limit(63)
        .macs(NODE_MAC, CLIENT_MAC);
    dp.check(&Case::xdp(
        "packet too big goes on to the client, quoting client -> frontend",
        error.build(),
        XDP_TX,
        Expect::Frame(expected.build()),
    ));

    let frontend = sock6(cluster_ip, 80);
    let syn = packet::tcp6(client6(40001), frontend, tcp::SYN);
    dp.run(Program::Xdp, &syn.build());
    let data = packet::tcp6(client6(40001), frontend, tcp::ACK).payload(&[5; 1400]);
    let translated = data
        .clone()
        .addresses(client6(40001), local)
        .hop_limit(63)
        .build();
    let error = too_big(NODE_IP6, CLIENT_IP6, &translated);
    let expected = too_big(NODE_IP6, CLIENT_IP6, &data.clone().hop_limit(63).build());
    dp.check(&Case::tc_egress(
        "the node's packet too big leaves quoting client -> frontend",
        error.build(),
        Expect::Frame(expected.build()),
    ));
}
