//! Packet tests of the pod-side path (`tc_from_pod`, `tc_to_pod`) through `BPF_PROG_TEST_RUN`,
//! both families: a pod's packets to a cluster IP or to a NodePort on a node address are
//! translated to the backend (the source is kept), the backend's replies are turned back into the
//! frontend's on their way into the pod, and everything else (sockets the socket LB already
//! translated, flows XDP tracked, other traffic) passes byte for byte; refused flows are
//! answered (RST, ICMP port unreachable) back into the pod. Needs root.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use aya::maps::HashMap;
use proxy_common::{
    BACKEND_F_LOCAL, Backend, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_POD, IPPROTO_TCP, IPPROTO_UDP,
    SVC_ADDR_CLUSTER_IP, SVC_ADDR_SERVICE_CIDR, SVC_F_NODEPORT, map_names,
    net::ip6_to_net,
    stats::{DropReason, Hook},
    tcp,
};
use proxy_tests::{
    datapath::{
        Case, Datapath, Expect, NODE_IP, NODE_IP6, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
        XDP_PASS, be_addr, ct_key, ct_key6, sock, sock6,
    },
    packet::{self, ETH_P_ARP, NODE_MAC, PEER_MAC},
};

/// The client pod and the backends (one on this node, one elsewhere: the pod-side path only
/// rewrites the destination, so both are reached the same way).
const POD: [u8; 4] = [198, 18, 1, 10];
const LOCAL: (u32, [u8; 4], u16) = (1, [198, 18, 1, 20], 8080);
const LOCAL_DNS: (u32, [u8; 4], u16) = (2, [198, 18, 1, 20], 5353);
const REMOTE: (u32, [u8; 4], u16) = (3, [198, 18, 3, 20], 8080);

const CLUSTER_IP: [u8; 4] = [198, 19, 0, 10];
const EMPTY_SVC: [u8; 4] = [198, 19, 0, 30];
const NODE_PORT: u16 = 30080;

fn pod(port: u16) -> SocketAddrV4 {
    sock(POD, port)
}

fn addr((_, ip, port): (u32, [u8; 4], u16)) -> SocketAddrV4 {
    sock(ip, port)
}

fn datapath() -> Datapath {
    let mut dp = Datapath::new(0);
    for backend in [LOCAL, LOCAL_DNS] {
        dp.add_backend(backend.0, addr(backend), BACKEND_F_LOCAL);
    }
    dp.add_backend(REMOTE.0, addr(REMOTE), 0);
    let (tcp, udp) = (IPPROTO_TCP, IPPROTO_UDP);
    dp.add_service(100, sock(CLUSTER_IP, 80), tcp, 0, &[REMOTE.0]);
    dp.add_service(101, sock(CLUSTER_IP, 53), udp, 0, &[LOCAL_DNS.0]);
    let node_port = sock([0; 4], NODE_PORT);
    dp.add_service(102, node_port, tcp, SVC_F_NODEPORT, &[LOCAL.0]);
    dp.add_service(103, sock(EMPTY_SVC, 80), tcp, 0, &[]);
    dp.add_service_addr(CLUSTER_IP, 32, SVC_ADDR_CLUSTER_IP);
    dp.add_service_addr(EMPTY_SVC, 32, SVC_ADDR_CLUSTER_IP);
    dp.add_service_addr([198, 19, 0, 0], 16, SVC_ADDR_SERVICE_CIDR);
    dp
}

#[test]
fn a_pods_tcp_flow_to_a_cluster_ip_is_dnated_and_its_replies_turned_back() {
    let mut dp = datapath();
    let frontend = sock(CLUSTER_IP, 80);
    let backend = addr(REMOTE);
    let syn = packet::tcp(pod(40000), frontend, tcp::SYN);
    let ack = packet::tcp(pod(40000), frontend, tcp::ACK | tcp::PSH)
        .seq_ack(1001, 5001)
        .payload(b"GET / HTTP/1.1\r\n\r\n");
    let synack = packet::tcp(backend, pod(40000), tcp::SYN | tcp::ACK).seq_ack(5000, 1001);
    dp.check_all(&[
        Case::from_pod(
            "a pod's SYN to a cluster IP goes to the backend, from the pod itself",
            syn.build(),
            TC_ACT_OK,
            Expect::Frame(syn.clone().addresses(pod(40000), backend).build()),
        ),
        Case::from_pod(
            "the next segment follows the flow",
            ack.build(),
            TC_ACT_OK,
            Expect::Frame(ack.clone().addresses(pod(40000), backend).build()),
        ),
        Case::to_pod(
            "the backend's reply reaches the pod from the frontend",
            synack.build(),
            Expect::Frame(synack.clone().addresses(frontend, pod(40000)).build()),
        ),
        Case::tc_egress(
            "the node's egress leaves a pod's flow alone",
            synack.build(),
            Expect::Unchanged,
        ),
        Case::to_pod(
            "a packet of no tracked flow reaches the pod untouched",
            packet::tcp(backend, pod(40001), tcp::ACK).build(),
            Expect::Unchanged,
        ),
    ]);
    let forward = dp
        .conntrack(ct_key(pod(40000), frontend, IPPROTO_TCP, CT_DIR_FORWARD))
        .expect("a forward entry for the pod's flow");
    assert_eq!(forward.flags, CT_F_POD);
    assert_eq!(forward.backend_id, REMOTE.0);
    assert_eq!((forward.new_saddr, forward.new_sport), (0, 0), "no SNAT");
    let reply = dp
        .conntrack(ct_key(backend, pod(40000), IPPROTO_TCP, CT_DIR_REPLY))
        .expect("a reply entry keyed backend -> pod");
    assert_eq!(reply.flags, CT_F_POD);
    assert_eq!(
        (reply.new_saddr, reply.new_sport),
        (be_addr(frontend), 80u16.to_be())
    );
    assert_eq!(dp.conntrack_len(), 2, "one flow, two entries");
    assert!(dp.hook_count(Hook::FromPod, TC_ACT_OK) >= 2);
    assert!(dp.hook_count(Hook::ToPod, TC_ACT_OK) >= 2);
}

#[test]
fn udp_and_node_ports_on_node_addresses_are_translated_and_other_traffic_passes() {
    let mut dp = datapath();
    let dns = sock(CLUSTER_IP, 53);
    let query = packet::udp(pod(50000), dns).payload(b"query");
    let bare = packet::udp(pod(50001), dns)
        .payload(b"query")
        .without_udp_checksum();
    let node_port = sock(NODE_IP, NODE_PORT);
    let to_node_port = packet::tcp(pod(40000), node_port, tcp::SYN);
    let direct = packet::tcp(pod(40001), addr(LOCAL), tcp::SYN);
    dp.check_all(&[
        Case::from_pod(
            "UDP to a cluster IP goes to the backend",
            query.build(),
            TC_ACT_OK,
            Expect::Frame(query.clone().addresses(pod(50000), addr(LOCAL_DNS)).build()),
        ),
        Case::from_pod(
            "a UDP checksum of 0 stays 0",
            bare.build(),
            TC_ACT_OK,
            Expect::Frame(bare.clone().addresses(pod(50001), addr(LOCAL_DNS)).build()),
        ),
        Case::from_pod(
            "a NodePort on the node's address goes to the backend",
            to_node_port.build(),
            TC_ACT_OK,
            Expect::Frame(
                to_node_port
                    .clone()
                    .addresses(pod(40000), addr(LOCAL))
                    .build(),
            ),
        ),
    ]);
    let tracked = dp.conntrack_len();
    dp.check_all(&[
        Case::from_pod(
            "a NodePort on an address that is not the node's: not ours",
            packet::tcp(pod(40002), sock([198, 18, 0, 99], NODE_PORT), tcp::SYN).build(),
            TC_ACT_OK,
            Expect::Unchanged,
        ),
        Case::from_pod(
            "a socket the socket LB translated already goes to a backend: untouched",
            direct.build(),
            TC_ACT_OK,
            Expect::Unchanged,
        ),
        Case::from_pod(
            "outside the service CIDR: not ours",
            packet::udp(pod(50002), sock([198, 20, 0, 1], 53)).build(),
            TC_ACT_OK,
            Expect::Unchanged,
        ),
        Case::from_pod(
            "ARP passes",
            packet::ethernet(ETH_P_ARP, &[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 2]),
            TC_ACT_OK,
            Expect::Unchanged,
        ),
    ]);
    assert_eq!(dp.conntrack_len(), tracked, "nothing passed is tracked");
}

#[test]
fn flows_xdp_tracked_are_left_to_xdp_and_tc_egress() {
    let mut dp = datapath();
    let client = sock([198, 18, 0, 100], 40000);
    let node_port = sock(NODE_IP, NODE_PORT);
    let syn = packet::tcp(client, node_port, tcp::SYN);
    // An off-node client's NodePort flow to the local backend, as XDP on the node's interface
    // translates it.
    dp.check(&Case::xdp(
        "XDP: NodePort to the local backend",
        syn.build(),
        XDP_PASS,
        Expect::Frame(syn.clone().addresses(client, addr(LOCAL)).build()),
    ));
    let synack = packet::tcp(addr(LOCAL), client, tcp::SYN | tcp::ACK).seq_ack(5000, 1);
    dp.check_all(&[
        Case::to_pod(
            "the translated SYN enters the backend pod as it is",
            syn.clone().addresses(client, addr(LOCAL)).build(),
            Expect::Unchanged,
        ),
        Case::from_pod(
            "the backend pod's reply leaves it as it is (tc_egress turns it back)",
            synack.build(),
            TC_ACT_OK,
            Expect::Unchanged,
        ),
        Case::tc_egress(
            "tc_egress: the reply leaves the node from the NodePort",
            synack.build(),
            Expect::Frame(synack.clone().addresses(node_port, client).build()),
        ),
    ]);
}

#[test]
fn a_pods_flow_whose_backend_is_gone_is_balanced_again() {
    let mut dp = datapath();
    let frontend = sock(CLUSTER_IP, 80);
    let syn = packet::tcp(pod(40000), frontend, tcp::SYN);
    dp.check(&Case::from_pod(
        "the first backend",
        syn.build(),
        TC_ACT_OK,
        Expect::Frame(syn.clone().addresses(pod(40000), addr(REMOTE)).build()),
    ));
    // The daemon replaces the backend: slots first, then the backend goes.
    dp.add_service(100, frontend, IPPROTO_TCP, 0, &[LOCAL.0]);
    let mut backends: HashMap<_, u32, Backend> = dp.hash_map(map_names::BACKENDS);
    backends.remove(&REMOTE.0).expect("remove the backend");
    dp.check(&Case::from_pod(
        "the stale entry is dropped and the flow goes to a live backend",
        syn.build(),
        TC_ACT_OK,
        Expect::Frame(syn.clone().addresses(pod(40000), addr(LOCAL)).build()),
    ));
    assert!(
        dp.conntrack(ct_key(addr(REMOTE), pod(40000), IPPROTO_TCP, CT_DIR_REPLY))
            .is_none(),
        "the old reply entry went with its flow"
    );
}

#[test]
fn a_pods_flows_without_endpoints_or_to_unserved_addresses_are_refused_into_the_pod() {
    let mut dp = datapath();
    let empty = sock(EMPTY_SVC, 80);
    let unserved = sock(CLUSTER_IP, 9999);
    let unallocated = sock([198, 19, 0, 99], 53);
    let query = packet::udp(pod(50000), unallocated).payload(b"query");
    // The answers go back out of the interface the request came in on, into the pod: the
    // request's MACs swapped.
    let rst = |from: SocketAddrV4, port: u16| {
        packet::tcp(from, pod(port), tcp::RST | tcp::ACK)
            .seq_ack(0, 1001)
            .window(0)
            .id(0)
            .macs(NODE_MAC, PEER_MAC)
            .build()
    };
    dp.check_all(&[
        Case::from_pod(
            "no endpoints: RST|ACK from the frontend",
            packet::tcp(pod(40000), empty, tcp::SYN).build(),
            TC_ACT_REDIRECT,
            Expect::Frame(rst(empty, 40000)),
        ),
        Case::from_pod(
            "a port the cluster IP does not serve: RST|ACK",
            packet::tcp(pod(40001), unserved, tcp::SYN).build(),
            TC_ACT_REDIRECT,
            Expect::Frame(rst(unserved, 40001)),
        ),
        Case::from_pod(
            "UDP to an address of the service CIDR no Service holds: ICMP port unreachable",
            query.build(),
            TC_ACT_REDIRECT,
            Expect::Frame(
                packet::icmp_unreachable(*unallocated.ip(), Ipv4Addr::from(POD), 3, &query.build())
                    .id(0)
                    .frag_off(0)
                    .macs(NODE_MAC, PEER_MAC)
                    .build(),
            ),
        ),
        Case::from_pod(
            "a RST is never answered",
            packet::tcp(pod(40002), empty, tcp::RST).build(),
            TC_ACT_SHOT,
            Expect::Unchanged,
        ),
    ]);
    assert_eq!(dp.drops(DropReason::NoEndpoints), 2);
    assert_eq!(dp.drops(DropReason::UnservedPort), 1);
    assert_eq!(dp.drops(DropReason::UnallocatedServiceIp), 1);
    assert_eq!(dp.conntrack_len(), 0, "refused flows are not tracked");
}

const fn ip6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x18, 1, 0, 0, 0, 0, last)
}

#[test]
fn ipv6_a_pods_flows_to_a_cluster_ip_and_a_node_port_are_dnated_and_turned_back() {
    let mut dp = Datapath::new(0);
    let pod6 = |port| sock6(ip6(0x10), port);
    let backend = sock6(ip6(0x20), 8080);
    let dns_backend = sock6(ip6(0x20), 5353);
    dp.add_backend6(21, backend, BACKEND_F_LOCAL);
    dp.add_backend6(22, dns_backend, BACKEND_F_LOCAL);
    let cluster_ip = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x10);
    let frontend = sock6(cluster_ip, 80);
    let dns = sock6(cluster_ip, 53);
    dp.add_service6(200, frontend, IPPROTO_TCP, 0, 0, &[21]);
    dp.add_service6(201, dns, IPPROTO_UDP, 0, 0, &[22]);
    let node_port = sock6(Ipv6Addr::UNSPECIFIED, NODE_PORT);
    dp.add_service6(202, node_port, IPPROTO_TCP, SVC_F_NODEPORT, 0, &[21]);

    let syn = packet::tcp6(pod6(40000), frontend, tcp::SYN);
    let synack = packet::tcp6(backend, pod6(40000), tcp::SYN | tcp::ACK).seq_ack(5000, 1);
    let query = packet::udp6(pod6(50000), dns).payload(b"query");
    let answer = packet::udp6(dns_backend, pod6(50000)).payload(b"answer");
    let on_node: SocketAddrV6 = sock6(NODE_IP6, NODE_PORT);
    let to_node_port = packet::tcp6(pod6(40001), on_node, tcp::SYN);
    dp.check_all(&[
        Case::from_pod(
            "a pod's SYN to an IPv6 cluster IP goes to the backend",
            syn.build(),
            TC_ACT_OK,
            Expect::Frame(syn.clone().addresses(pod6(40000), backend).build()),
        ),
        Case::to_pod(
            "the reply reaches the pod from the frontend",
            synack.build(),
            Expect::Frame(synack.clone().addresses(frontend, pod6(40000)).build()),
        ),
        Case::from_pod(
            "UDP to the cluster IP goes to the backend",
            query.build(),
            TC_ACT_OK,
            Expect::Frame(query.clone().addresses(pod6(50000), dns_backend).build()),
        ),
        Case::to_pod(
            "the answer reaches the pod from the frontend",
            answer.build(),
            Expect::Frame(answer.clone().addresses(dns, pod6(50000)).build()),
        ),
        Case::from_pod(
            "a NodePort on the node's IPv6 address goes to the backend",
            to_node_port.build(),
            TC_ACT_OK,
            Expect::Frame(to_node_port.clone().addresses(pod6(40001), backend).build()),
        ),
        Case::from_pod(
            "a socket the socket LB translated: untouched",
            packet::tcp6(pod6(40002), backend, tcp::SYN).build(),
            TC_ACT_OK,
            Expect::Unchanged,
        ),
    ]);
    let forward = dp
        .conntrack6(ct_key6(pod6(40000), frontend, IPPROTO_TCP, CT_DIR_FORWARD))
        .expect("a forward entry for the pod's flow");
    assert_eq!(forward.flags, CT_F_POD);
    assert_eq!(
        (forward.new_daddr, forward.new_dport),
        (ip6_to_net(*backend.ip()), 8080u16.to_be())
    );
    assert_eq!(dp.conntrack6_len(), 6, "three flows, two entries each");

    dp.add_service6(203, sock6(cluster_ip, 8053), IPPROTO_UDP, 0, 0, &[]);
    let empty = sock6(cluster_ip, 8053);
    let refused = packet::udp6(pod6(50001), empty).payload(b"query");
    dp.check(&Case::from_pod(
        "UDP to an IPv6 frontend without endpoints: ICMPv6 port unreachable into the pod",
        refused.build(),
        TC_ACT_REDIRECT,
        Expect::Frame(
            packet::icmp6_unreachable(cluster_ip, ip6(0x10), 4, &refused.build())
                .flow_label(0)
                .macs(NODE_MAC, PEER_MAC)
                .build(),
        ),
    ));
}
