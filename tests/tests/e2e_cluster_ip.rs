//! ClusterIP end to end: socket-level load balancing for pods and node processes, and the XDP
//! path for off-node clients routed through a node.

use std::net::{Ipv4Addr, SocketAddr};

use proxy_tests::{
    CLIENT_IP, Place, Proto,
    manifests::ECHO_IP,
    scenario::{ALL_PODS, SPREAD_REQUESTS, Scenario, pods},
};

fn echo_ip() -> Ipv4Addr {
    ECHO_IP.parse().expect("valid address")
}

#[test]
fn cluster_ip_from_pods_on_both_nodes_spreads_over_every_pod() {
    let scenario = Scenario::start(&[]);
    for from in ["pod-1a", "pod-2a"] {
        for proto in [Proto::Tcp, Proto::Udp, Proto::UdpConnected] {
            let port = if proto == Proto::Tcp { 80 } else { 53 };
            let replies =
                scenario.replies(Place::Pod(from), proto, echo_ip(), port, SPREAD_REQUESTS);
            let answered: std::collections::BTreeSet<String> =
                replies.iter().map(|r| r.name.clone()).collect();
            assert_eq!(answered, pods(&ALL_PODS), "{proto} from {from}");
            let client_ip = scenario.cluster.pod(from).ip;
            for reply in &replies {
                // Socket-level LB: no NAT, the backend sees the pod itself.
                assert_eq!(reply.peer.ip(), client_ip, "{proto} from {from}: {reply:?}");
                // The application sees the service address, not the backend's.
                assert_eq!(
                    reply.remote,
                    SocketAddr::from((echo_ip(), port)),
                    "{proto} from {from}: {reply:?}"
                );
                let target = if proto == Proto::Tcp { 8080 } else { 8053 };
                assert_eq!(reply.local.port(), target, "{proto} from {from}: {reply:?}");
            }
        }
    }
}

#[test]
fn cluster_ip_from_a_node_process() {
    let scenario = Scenario::start(&[]);
    for node in ["node1", "node2"] {
        let answered = scenario.answering_pods(
            Place::Node(node),
            Proto::Tcp,
            echo_ip(),
            80,
            SPREAD_REQUESTS,
        );
        assert_eq!(answered, pods(&ALL_PODS), "TCP from {node}");
        let answered = scenario.answering_pods(
            Place::Node(node),
            Proto::Udp,
            echo_ip(),
            53,
            SPREAD_REQUESTS,
        );
        assert_eq!(answered, pods(&ALL_PODS), "UDP from {node}");
    }
}

#[test]
fn cluster_ip_from_off_node_through_xdp() {
    let scenario = Scenario::start(&[]);
    // The client routes the service range via node1, like a router with a route to it.
    for proto in [Proto::Tcp, Proto::UdpConnected] {
        let port = if proto == Proto::Tcp { 80 } else { 53 };
        let replies = scenario.replies(Place::Client, proto, echo_ip(), port, SPREAD_REQUESTS);
        let answered: std::collections::BTreeSet<String> =
            replies.iter().map(|r| r.name.clone()).collect();
        assert_eq!(answered, pods(&ALL_PODS), "{proto} from the client");
        for reply in &replies {
            assert_eq!(
                reply.remote,
                SocketAddr::from((echo_ip(), port)),
                "{reply:?}"
            );
            // Local backends see the client; remote ones see node1's SNAT address.
            let expected_peer = if reply.name == "pod-2a" {
                scenario.cluster.node("node1").ip
            } else {
                CLIENT_IP
            };
            assert_eq!(reply.peer.ip(), expected_peer, "{reply:?}");
        }
    }
}

#[test]
fn multi_port_named_target_port_and_tcp_udp_on_one_port() {
    let scenario = Scenario::start(&[]);
    let from = Place::Pod("pod-1b");
    let cases = [
        // (protocol, service port, pod port it must reach)
        (Proto::Tcp, 80, 8080), // targetPort: http (named)
        (Proto::Tcp, 81, 80),   // targetPort: 80
        (Proto::Tcp, 53, 80),   // TCP 53 → targetPort: web (named)
        (Proto::Udp, 53, 8053), // UDP 53 → targetPort: dns (named)
    ];
    for (proto, port, target) in cases {
        for reply in scenario.replies(from, proto, echo_ip(), port, 10) {
            assert_eq!(reply.local.port(), target, "{proto} {port}: {reply:?}");
        }
    }
}
