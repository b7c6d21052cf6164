//! UDP flows and backends that stop serving. The socket LB translated a connected socket once,
//! at `connect()`, so when its backend leaves the service Sluice must close the socket (the
//! application sees an error and reconnects) instead of leaving it sending to the old pod; on
//! the packet path it must forget the flow's conntrack entries, as kube-proxy does.

use std::{net::Ipv4Addr, time::Duration};

use proxy_tests::{
    Place, UdpSession, http,
    manifests::{ECHO_IP, ECHO_NODE_PORT_UDP, pods_yaml},
    scenario::{ALL_PODS, SPREAD_REQUESTS, SYNC_TIMEOUT, Scenario},
    wait_for, wait_until,
};

/// The `echo` service's UDP port (targetPort `dns`, 8053 in the pods).
const DNS_PORT: u16 = 53;
const POD_DNS_PORT: u16 = 8053;
/// ECONNABORTED, what `bpf_sock_destroy` reports to the socket's owner.
const ECONNABORTED: &str = "(os error 103)";
const POLL: Duration = Duration::from_millis(50);

fn echo_ip() -> Ipv4Addr {
    ECHO_IP.parse().expect("valid address")
}

/// Opens sessions to the service from `from` until one lands on a pod other than `not`.
fn session_not_on(scenario: &Scenario, from: Place<'_>, not: &str) -> (UdpSession, String) {
    for _ in 0..SPREAD_REQUESTS {
        let mut session = scenario.cluster.udp_session(from, echo_ip(), DNS_PORT);
        let pod = session.ping().expect("a fresh session gets an answer").name;
        if pod != not {
            return (session, pod);
        }
    }
    panic!("{SPREAD_REQUESTS} sessions all landed on {not}");
}

fn terminated_count(scenario: &Scenario, node: &str) -> u64 {
    let text = http::metrics(&scenario.cluster.node(node).netns);
    text.lines()
        .find_map(|line| line.strip_prefix("sluice_udp_sockets_terminated_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sluice_udp_sockets_terminated_total in:\n{text}"))
}

#[test]
fn connected_udp_socket_to_a_removed_backend_is_closed_and_reconnects_elsewhere() {
    let scenario = Scenario::start(&[]);
    // A pod on node1 (its own network namespace, under node1's cgroup) is the client.
    let from = Place::Pod("pod-1b");

    // The socket the test follows: connected through the service, so translated at connect().
    let mut doomed = scenario.cluster.udp_session(from, echo_ip(), DNS_PORT);
    let leaving = doomed.ping().expect("the first ping is answered").name;
    // Through the service to a pod that stays: it must keep working.
    let (mut staying, staying_pod) = session_not_on(&scenario, from, &leaving);
    // Straight to the leaving pod, no service: not Sluice's to close, and that pod still serves.
    let leaving_ip = scenario.cluster.pod(&leaving).ip;
    let mut direct = scenario.cluster.udp_session(from, leaving_ip, POD_DNS_PORT);
    assert_eq!(direct.ping().expect("direct ping").name, leaving);
    assert_eq!(terminated_count(&scenario, "node1"), 0);

    // The pod turns not-ready: its endpoint leaves the service (its server keeps running).
    scenario.manifests.write(
        "pods.yaml",
        &pods_yaml(&scenario.cluster, |pod| pod != leaving),
    );

    // The same socket, sending nothing, learns at once that it was aborted: not a timeout.
    let closed = doomed.recv(SYNC_TIMEOUT);
    let err = closed.expect_err("the socket to the removed backend is closed");
    assert!(
        err.contains(ECONNABORTED),
        "expected ECONNABORTED, got {err:?}\nnode1 stderr:\n{}",
        scenario.node1.stderr()
    );
    // Sending on it fails too (it is no longer connected), instead of reaching the old pod.
    let err = doomed.ping().expect_err("the closed socket cannot send");
    assert!(err.starts_with("other: "), "{err}");
    // The application reconnects the same socket and reaches a pod that is still a backend.
    doomed.reconnect().expect("reconnect");
    let reply = doomed.ping().expect("the reconnected socket is answered");
    assert_ne!(reply.name, leaving, "reconnected to the removed backend");
    assert!(ALL_PODS.contains(&reply.name.as_str()), "{reply:?}");
    assert_eq!(reply.remote.ip(), echo_ip(), "{reply:?}");

    // The other sockets were left alone.
    assert_eq!(
        staying.ping().expect("the socket to a staying pod").name,
        staying_pod
    );
    assert_eq!(direct.ping().expect("the direct socket").name, leaving);
    // Counted and logged once the daemon has read the iterator's report.
    wait_until(SYNC_TIMEOUT, POLL, || {
        terminated_count(&scenario, "node1") == 1
            && scenario
                .node1
                .stderr()
                .contains("closed a connected UDP socket whose backend was removed")
    });
    // Nothing to do on node2: none of its processes had such a socket.
    assert_eq!(terminated_count(&scenario, "node2"), 0);
}

#[test]
fn a_backend_removed_while_the_daemon_was_down_has_its_sockets_closed_after_the_restart() {
    let mut scenario = Scenario::start(&[]);
    let from = Place::Pod("pod-1a");
    let mut session = scenario.cluster.udp_session(from, echo_ip(), DNS_PORT);
    let leaving = session.ping().expect("the first ping is answered").name;

    // The endpoint goes while node1's daemon is stopped; the datapath keeps its translation.
    scenario.node1.stop();
    scenario.manifests.write(
        "pods.yaml",
        &pods_yaml(&scenario.cluster, |pod| pod != leaving),
    );
    scenario.node1.start_again();

    // The restarted daemon compares its first sync with what the pinned maps held.
    let err = session
        .recv(SYNC_TIMEOUT)
        .expect_err("the socket to the removed backend is closed after the restart");
    assert!(
        err.contains(ECONNABORTED),
        "expected ECONNABORTED, got {err:?}\nnode1 stderr:\n{}",
        scenario.node1.stderr()
    );
    session.reconnect().expect("reconnect");
    let reply = session.ping().expect("the reconnected socket is answered");
    assert_ne!(reply.name, leaving, "reconnected to the removed backend");
}

/// Opens sessions from the client to node1's UDP NodePort (the packet path: XDP and
/// conntrack) until one lands on a pod not in `not`.
fn node_port_session_not_on(scenario: &Scenario, not: &[&str]) -> (UdpSession, String) {
    let node1 = scenario.cluster.node("node1").ip;
    for _ in 0..SPREAD_REQUESTS {
        let mut session = scenario
            .cluster
            .udp_session(Place::Client, node1, ECHO_NODE_PORT_UDP);
        let pod = session.ping().expect("a fresh session gets an answer").name;
        if !not.contains(&pod.as_str()) {
            return (session, pod);
        }
    }
    panic!("{SPREAD_REQUESTS} sessions all landed on {not:?}");
}

/// The packet path's UDP flows as kube-proxy's conntrack cleanup leaves them: a flow whose
/// backend stops serving (its pod turns not-ready) is forgotten, so its next datagram is
/// balanced again; a flow to a pod that is terminating but still serving keeps its pod; both
/// counted in `kubeproxy_conntrack_reconciler_deleted_entries_total`.
#[test]
fn a_udp_flow_through_the_node_port_moves_when_its_backend_stops_serving() {
    let scenario = Scenario::start(&[]);
    let (mut moving, leaving) = node_port_session_not_on(&scenario, &[]);
    let (mut kept, draining) = node_port_session_not_on(&scenario, &[&leaving]);
    for _ in 0..3 {
        assert_eq!(
            moving.ping().expect("ping").name,
            leaving,
            "a flow keeps its pod"
        );
    }
    let deleted = |scenario: &Scenario| {
        let text = http::metrics(&scenario.cluster.node("node1").netns);
        let series = r#"kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family="IPv4"}"#;
        http::sample(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    assert_eq!(deleted(&scenario), 0.0);

    // `leaving` turns not-ready; `draining` is being deleted but still ready (serving).
    let pods = pods_yaml(&scenario.cluster, |pod| pod != leaving).replace(
        &format!("  name: {draining}\n"),
        &format!("  name: {draining}\n  deletionTimestamp: \"2026-12-01T00:00:00Z\"\n"),
    );
    scenario.manifests.write("pods.yaml", &pods);
    wait_for(
        "the flow to leave its not-ready pod",
        SYNC_TIMEOUT,
        POLL,
        || match moving.ping() {
            Ok(reply) if reply.name != leaving => Ok(reply.name),
            other => Err(format!("{other:?}")),
        },
    );
    let now = moving.ping().expect("ping").name;
    assert!(
        now != leaving && now != draining,
        "new datagrams go to a ready pod, not {now}"
    );
    assert_eq!(
        kept.ping().expect("the terminating pod's flow").name,
        draining,
        "a serving terminating pod keeps its flows"
    );
    // The flow's two entries (forward and reply).
    wait_until(SYNC_TIMEOUT, POLL, || deleted(&scenario) >= 2.0);
}
