//! NodePort end to end: from off-node through XDP on either node (both ways XDP can send a
//! packet back out), from node processes, on 127.0.0.1 without `route_localnet`, and a client
//! port reused for a direct connection while the NodePort flow's conntrack entries linger.

use std::{
    net::{Ipv4Addr, SocketAddr},
    ops::RangeInclusive,
    time::Duration,
};

use proxy_tests::{
    CLIENT_IP, Cluster, Place, Proto,
    manifests::{ECHO_NODE_PORT_TCP, ECHO_NODE_PORT_UDP},
    scenario::{ALL_PODS, SPREAD_REQUESTS, SYNC_TIMEOUT, Scenario, pods},
    wait_until,
};

/// From the client via each node: every pod answers, the client sees the node address it
/// used, local backends see the client and remote ones the entry node's SNAT address, from a
/// port of `snat_ports`.
fn node_port_from_the_client_reaches_every_pod(
    scenario: &Scenario,
    snat_ports: RangeInclusive<u16>,
) {
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
                assert!(
                    local || snat_ports.contains(&reply.peer.port()),
                    "{proto} via {node}: SNAT port outside {snat_ports:?}: {reply:?}"
                );
            }
        }
    }
}

#[test]
fn node_port_from_off_node_with_stack_forwarding() {
    // veth with a bare peer: `--xdp-tx auto` hands rewritten packets to tc_ingress.
    let scenario = Scenario::start(&[]);
    // `--snat-ports auto` below the nodes' ephemeral ports (Linux's default 32768-60999).
    node_port_from_the_client_reaches_every_pod(&scenario, 1024..=32767);
}

#[test]
fn node_port_from_off_node_with_xdp_tx() {
    // With XDP on the bridge side of every node link, XDP_TX frames arrive: use them.
    let mut cluster = Cluster::new();
    cluster
        .attach_underlay_xdp_pass()
        .unwrap_or_else(|e| panic!("attach XDP_PASS on the underlay: {e:#}"));
    cluster.start_pods();
    // A range of the user's, inside the ephemeral ports: taken, and warned about.
    let scenario = Scenario::start_on(cluster, &["--xdp-tx", "on", "--snat-ports", "40000-40099"]);
    node_port_from_the_client_reaches_every_pod(&scenario, 40000..=40099);
    let warning = "--snat-ports 40000-40099: 100 of its ports are also the node's ephemeral \
                   ports 32768-60999";
    for node in ["node1", "node2"] {
        let log = scenario.daemon(node).stderr();
        assert!(
            log.contains(warning),
            "{node}'s log lacks {warning:?}:\n{log}"
        );
    }
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

/// Client ports the reuse test takes (outside the client's ephemeral range, 32768-60999).
const REUSED_PORTS: std::ops::Range<u16> = 20000..20020;
/// Per connection: covers the first SYN retransmission (1 s), well under the 10 s the
/// conntrack GC leaves a closing flow, so stale entries are still there when they matter.
const REUSE_TIMEOUT: Duration = Duration::from_secs(3);

/// The client reaches a pod of node1 through the NodePort from a fixed port, closes, and at
/// once connects from the same port straight to that pod. The NodePort flow's entries are
/// still in conntrack (closing); the pod's SYN-ACK to the direct connection matches its reply
/// entry and must still leave as the pod's, not be rewritten to come from the NodePort.
#[test]
fn a_client_port_reused_for_a_direct_connection_reaches_the_pod() {
    let scenario = Scenario::start(&[]);
    let cluster = &scenario.cluster;
    let node_ip = cluster.node("node1").ip;
    // The backend is random and only a local one gets a reply entry in tc_egress: take ports
    // until a pod of node1 answers (2 of the 3 pods; 20 misses in a row: about 3e-10).
    let found = REUSED_PORTS.clone().find_map(|source_port| {
        let reply = cluster
            .request_from_port(
                Place::Client,
                source_port,
                node_ip,
                ECHO_NODE_PORT_TCP,
                REUSE_TIMEOUT,
            )
            .unwrap_or_else(|e| panic!("NodePort from client port {source_port}: {e}"));
        assert_eq!(
            reply.remote,
            SocketAddr::from((node_ip, ECHO_NODE_PORT_TCP)),
            "{reply:?}"
        );
        // DNAT only (the client's own address and port reach the pod): a local backend.
        let local = reply.peer == SocketAddr::from((CLIENT_IP, source_port));
        local.then_some((source_port, reply))
    });
    let (source_port, via_node_port) =
        found.unwrap_or_else(|| panic!("no pod of node1 answered from ports {REUSED_PORTS:?}"));
    let pod = cluster.pod(&via_node_port.name);
    let target = via_node_port.local;
    assert_eq!(target.ip(), pod.ip, "{via_node_port:?}");
    // The client closed first: once its FIN passed XDP, the flow is closing, and it stays in
    // conntrack until the GC's 10 s are up.
    wait_until(SYNC_TIMEOUT, Duration::from_millis(20), || {
        node1_flow_state(&scenario, source_port).as_deref() == Some("closing")
    });

    let direct = cluster
        .request_from_port(
            Place::Client,
            source_port,
            pod.ip,
            target.port(),
            REUSE_TIMEOUT,
        )
        .unwrap_or_else(|e| {
            panic!("direct connection from the reused client port {source_port} to {target}: {e}")
        });
    assert_eq!(direct.name, pod.name, "{direct:?}");
    assert_eq!(
        direct.remote, target,
        "the answer comes from the pod address, untranslated"
    );
    assert_eq!(
        direct.peer,
        SocketAddr::from((CLIENT_IP, source_port)),
        "{direct:?}"
    );
    assert_eq!(
        node1_flow_state(&scenario, source_port),
        None,
        "the pod's SYN-ACK retired the stale flow"
    );
}

/// The state `sluice conntrack` on node1 shows for the flow from the client's `port`.
fn node1_flow_state(scenario: &Scenario, port: u16) -> Option<String> {
    let client = format!("{CLIENT_IP}:{port}");
    let flows = scenario.node1.read_json("conntrack");
    let flow = flows.as_array()?.iter().find(|f| f["client"] == *client)?;
    Some(flow["state"].as_str().unwrap_or("?").to_owned())
}
