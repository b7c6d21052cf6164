//! NodePort end to end: from off-node through XDP on either node (both ways XDP can send a
//! packet back out), from node processes, and on 127.0.0.1 without route_localnet.

use std::net::{Ipv4Addr, SocketAddr};

use proxy_tests::{
    CLIENT_IP, Cluster, Place, Proto,
    manifests::{ECHO_NODE_PORT_TCP, ECHO_NODE_PORT_UDP},
    scenario::{ALL_PODS, SPREAD_REQUESTS, Scenario, pods},
};

/// From the client via each node: every pod answers, the client sees the node address it
/// used, local backends see the client and remote ones the entry node's SNAT address.
fn node_port_from_the_client_reaches_every_pod(scenario: &Scenario) {
    for node in ["node1", "node2"] {
        let node_ip = scenario.cluster.node(node).ip;
        for (proto, port) in [
            (Proto::Tcp, ECHO_NODE_PORT_TCP),
            (Proto::UdpConnected, ECHO_NODE_PORT_UDP),
            (Proto::Udp, ECHO_NODE_PORT_UDP),
        ] {
            let replies = scenario.replies(Place::Client, proto, node_ip, port, SPREAD_REQUESTS);
            let answered: std::collections::BTreeSet<String> =
                replies.iter().map(|r| r.name.clone()).collect();
            assert_eq!(answered, pods(&ALL_PODS), "{proto} via {node}");
            for reply in &replies {
                assert_eq!(reply.remote, SocketAddr::from((node_ip, port)), "{reply:?}");
                let local = scenario.cluster.node_of(&reply.name).name == node;
                let expected_peer = if local { CLIENT_IP } else { node_ip };
                assert_eq!(
                    reply.peer.ip(),
                    expected_peer,
                    "{proto} via {node}: {reply:?}"
                );
            }
        }
    }
}

#[test]
fn node_port_from_off_node_with_stack_forwarding() {
    // veth with a bare peer: `--xdp-tx auto` hands rewritten packets to tc_ingress.
    let scenario = Scenario::start(&[]);
    node_port_from_the_client_reaches_every_pod(&scenario);
}

#[test]
fn node_port_from_off_node_with_xdp_tx() {
    // With XDP on the bridge side of every node link, XDP_TX frames arrive: use them.
    let mut cluster = Cluster::new();
    cluster
        .attach_underlay_xdp_pass()
        .unwrap_or_else(|e| panic!("attach XDP_PASS on the underlay: {e:#}"));
    cluster.start_pods();
    let scenario = Scenario::start_on(cluster, &["--xdp-tx", "on"]);
    node_port_from_the_client_reaches_every_pod(&scenario);
}

#[test]
fn node_port_from_node_processes_and_localhost() {
    let scenario = Scenario::start(&[]);
    for node in ["node1", "node2"] {
        let node_ip = scenario.cluster.node(node).ip;
        for addr in [node_ip, Ipv4Addr::LOCALHOST] {
            for (proto, port) in [
                (Proto::Tcp, ECHO_NODE_PORT_TCP),
                (Proto::Udp, ECHO_NODE_PORT_UDP),
            ] {
                let answered =
                    scenario.answering_pods(Place::Node(node), proto, addr, port, SPREAD_REQUESTS);
                assert_eq!(answered, pods(&ALL_PODS), "{proto} {addr}:{port} on {node}");
            }
        }
    }
    // A pod reaches a NodePort on a node address too.
    let node2_ip = scenario.cluster.node("node2").ip;
    let answered = scenario.answering_pods(
        Place::Pod("pod-1a"),
        Proto::Tcp,
        node2_ip,
        ECHO_NODE_PORT_TCP,
        SPREAD_REQUESTS,
    );
    assert_eq!(answered, pods(&ALL_PODS));
}
