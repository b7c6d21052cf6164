//! The socket LB for `AF_INET6` sockets: IPv4-mapped addresses (`::ffff:a.b.c.d`, what the JVM
//! and other dual-stack clients use for an IPv4 Service) translated through the IPv4 maps and
//! shown back mapped, and IPv6 frontends translated through the IPv6 maps.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use proxy_tests::{
    Place, Proto, Reply,
    manifests::{ECHO_IP, ECHO_NODE_PORT_TCP, EMPTY_IP, pods_yaml},
    scenario::{ALL_PODS, SPREAD_REQUESTS, SYNC_TIMEOUT, Scenario, pods},
    wait_until,
    workload::REQUEST_TIMEOUT,
};

/// ECONNABORTED, what `bpf_sock_destroy` reports to the socket's owner.
const ECONNABORTED: &str = "(os error 103)";

fn mapped(ip: &str) -> IpAddr {
    let ip: Ipv4Addr = ip.parse().expect("valid address");
    IpAddr::V6(ip.to_ipv6_mapped())
}

/// `count` requests from `from`; panics on any failure, with both daemons' logs.
fn replies(
    scenario: &Scenario,
    from: Place<'_>,
    proto: Proto,
    addr: IpAddr,
    port: u16,
    count: usize,
) -> Vec<Reply> {
    scenario
        .cluster
        .request_detailed(from, proto, addr, port, count, REQUEST_TIMEOUT)
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|err| {
                panic!(
                    "{proto} [{addr}]:{port} from {from:?} failed: {err}\nnode1 stderr:\n{}\nnode2 \
                     stderr:\n{}",
                    scenario.node1.stderr(),
                    scenario.node2.stderr()
                )
            })
        })
        .collect()
}

/// The hook counters `sluice stats -o json` shows on `node`, as (hook, verdict) → count.
#[test]
fn an_ipv4_mapped_socket_reaches_an_ipv4_cluster_ip_and_sees_the_mapped_service_address() {
    let scenario = Scenario::start(&[]);
    let service = mapped(ECHO_IP);
    for from in ["pod-1a", "pod-2a"] {
        let client_ip = scenario.cluster.pod(from).ip;
        for (proto, port, target) in [
            (Proto::Tcp, 80, 8080),
            // sendto/recvfrom on an unconnected socket: the kernel hands a datagram to a
            // mapped address to IPv4 (sendmsg4), recvfrom shows it back through recvmsg6.
            (Proto::Udp, 53, 8053),
            // connect (connect6) and getpeername (getpeername6).
            (Proto::UdpConnected, 53, 8053),
        ] {
            let replies = replies(
                &scenario,
                Place::Pod(from),
                proto,
                service,
                port,
                SPREAD_REQUESTS,
            );
            let answered: BTreeSet<String> = replies.iter().map(|r| r.name.clone()).collect();
            assert_eq!(answered, pods(&ALL_PODS), "{proto} from {from}");
            for reply in &replies {
                // An IPv4 backend, reached over IPv4 without NAT: it sees the pod's address.
                assert_eq!(
                    reply.peer.ip(),
                    IpAddr::V4(client_ip),
                    "{proto} from {from}: {reply:?}"
                );
                assert_eq!(reply.local.port(), target, "{proto} from {from}: {reply:?}");
                // The application sees the mapped service address, not the pod's.
                assert_eq!(
                    reply.remote,
                    SocketAddr::new(service, port),
                    "{proto} from {from}: {reply:?}"
                );
            }
        }
    }

    // A node process, to the mapped loopback NodePort (`[::ffff:127.0.0.1]:30080`).
    let loopback = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
    let replies = replies(
        &scenario,
        Place::Node("node1"),
        Proto::Tcp,
        loopback,
        ECHO_NODE_PORT_TCP,
        SPREAD_REQUESTS,
    );
    let answered: BTreeSet<String> = replies.iter().map(|r| r.name.clone()).collect();
    assert_eq!(answered, pods(&ALL_PODS), "the mapped loopback NodePort");
    for reply in &replies {
        assert_eq!(reply.local.port(), 8080, "{reply:?}");
        assert_eq!(
            reply.remote,
            SocketAddr::new(loopback, ECHO_NODE_PORT_TCP),
            "{reply:?}"
        );
    }

    // Counted in the IPv6 hooks (and sendmsg4 for the unconnected datagrams).
    let counts = scenario.daemon("node1").hook_counts();
    for (hook, verdict, at_least) in [
        // TCP and connected UDP from pod-1a, TCP from node1.
        ("connect6", "pass", 3 * SPREAD_REQUESTS as u64),
        ("getpeername6", "pass", 3 * SPREAD_REQUESTS as u64),
        ("recvmsg6", "pass", SPREAD_REQUESTS as u64),
        ("sendmsg4", "pass", SPREAD_REQUESTS as u64),
    ] {
        let count = counts.of(hook, verdict);
        assert!(
            count >= at_least,
            "{hook} {verdict}: {count} < {at_least} in {counts:?}"
        );
    }
}

#[test]
fn an_ipv4_mapped_socket_to_a_service_without_endpoints_is_refused() {
    let scenario = Scenario::start(&[]);
    let service = mapped(EMPTY_IP);
    for (proto, port) in [
        (Proto::Tcp, 80),
        (Proto::UdpConnected, 53),
        (Proto::Udp, 53),
    ] {
        let results = scenario
            .cluster
            .request(Place::Pod("pod-1a"), proto, service, port, 3);
        for result in &results {
            let err = result
                .as_ref()
                .expect_err(&format!("{proto} [{service}]:{port} must be refused"));
            assert!(
                err.starts_with("refused"),
                "{proto} [{service}]:{port}: expected refused, got {err}"
            );
        }
    }
    let counts = scenario.daemon("node1").hook_counts();
    // TCP and connected UDP are refused in connect6; the unconnected datagrams in sendmsg4.
    assert!(counts.of("connect6", "reject") >= 6, "{counts:?}");
    assert!(counts.of("sendmsg4", "reject") >= 3, "{counts:?}");
}

#[test]
fn an_ipv6_socket_connected_to_a_mapped_service_is_closed_when_its_ipv4_backend_goes() {
    let scenario = Scenario::start(&[]);
    let from = Place::Pod("pod-1b");
    let service = SocketAddr::new(mapped(ECHO_IP), 53);
    // An AF_INET6 datagram socket connected to `[::ffff:198.19.0.10]:53`: translated once,
    // at connect(), to an IPv4 pod.
    let mut doomed = scenario.cluster.udp_session_to(from, service);
    let first = doomed.ping().expect("the first ping is answered");
    assert_eq!(first.remote, service, "{first:?}");
    let leaving = first.name;

    // The pod turns not-ready: its IPv4 endpoint leaves the service.
    scenario.manifests.write(
        "pods.yaml",
        &pods_yaml(&scenario.cluster, |pod| pod != leaving),
    );
    let err = doomed
        .recv(SYNC_TIMEOUT)
        .expect_err("the socket to the removed backend is closed");
    assert!(
        err.contains(ECONNABORTED),
        "expected ECONNABORTED, got {err:?}\nnode1 stderr:\n{}",
        scenario.node1.stderr()
    );
    doomed.reconnect().expect("reconnect");
    let reply = doomed.ping().expect("the reconnected socket is answered");
    assert_ne!(reply.name, leaving, "reconnected to the removed backend");
    assert_eq!(reply.remote, service, "{reply:?}");
    // Logged with the IPv4 addresses the IPv4 maps hold.
    wait_until(SYNC_TIMEOUT, std::time::Duration::from_millis(50), || {
        let stderr = scenario.node1.stderr();
        stderr.contains("closed a connected UDP socket whose backend was removed")
            && stderr.contains(&format!("service={ECHO_IP}:53"))
    });
}

#[test]
fn a_restart_replaces_the_ipv6_hooks_in_place_and_keeps_mapped_connections() {
    let mut scenario = Scenario::start(&[]);
    let service = SocketAddr::new(mapped(ECHO_IP), 80);
    let mut held = scenario
        .cluster
        .hold_to(Place::Pod("pod-1a"), service)
        .expect("a mapped connection");
    let pod = held.greeting().name.clone();
    assert_eq!(held.greeting().remote, service, "{:?}", held.greeting());

    scenario.node1.restart();
    // Every hook, the IPv6 ones included, swapped inside its pinned link: none detached; and
    // every program taken from the pins of the first start, none verified again.
    scenario.node1.assert_ready_line_ends_with(
        "hooks: 11 replaced in place, 0 attached; programs: 0 verified, 11 reused",
    );
    assert_eq!(held.ping().expect("the held connection").name, pod);
    // New mapped connections are translated by the new programs and see the service back.
    for reply in replies(
        &scenario,
        Place::Pod("pod-1a"),
        Proto::Tcp,
        service.ip(),
        80,
        3,
    ) {
        assert_eq!(reply.remote, service, "{reply:?}");
    }
}
