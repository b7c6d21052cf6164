//! IPv6 ClusterIP end to end through the socket LB: an IPv6-only Service programmed by the
//! daemon from manifests, reached from pods on both nodes and from node processes, refused
//! without endpoints, its connected UDP sockets closed when a backend goes.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use proxy_tests::{
    Cluster, Place, Proto, Reply, SERVICE_CIDR6, SluiceDaemon,
    manifests::{ManifestDir, PodAs, dual_stack_pods_yaml},
    scenario::{ALL_PODS, SPREAD_REQUESTS, SYNC_TIMEOUT, pods},
    wait_until,
    workload::REQUEST_TIMEOUT,
};

const ECHO6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x10);
const EMPTY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x20);
const NODE_PORT_TCP: u16 = 30180;
/// ECONNABORTED, what `bpf_sock_destroy` reports to the socket's owner.
const ECONNABORTED: &str = "(os error 103)";
const POLL: Duration = Duration::from_millis(50);

/// IPv6-only Services: `echo6` (TCP 80 → 8080 with a NodePort, UDP 53 → 8053) and `empty6`.
const SERVICES_YAML: &str = "\
apiVersion: v1
kind: Service
metadata: {name: echo6, namespace: default}
spec:
  type: NodePort
  ipFamilyPolicy: SingleStack
  ipFamilies: [IPv6]
  clusterIP: fd00:19::10
  clusterIPs: [fd00:19::10]
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30180}
  - {name: dns, port: 53, protocol: UDP, targetPort: 8053, nodePort: 30153}
---
apiVersion: v1
kind: Service
metadata: {name: empty6, namespace: default}
spec:
  ipFamilyPolicy: SingleStack
  ipFamilies: [IPv6]
  clusterIP: fd00:19::20
  clusterIPs: [fd00:19::20]
  selector: {app: nothing}
  ports:
  - {name: http, port: 80}
  - {name: dns, port: 53, protocol: UDP}
";

/// Fields drop in order: the daemons first, the cluster last.
struct Dual {
    node1: SluiceDaemon,
    node2: SluiceDaemon,
    manifests: ManifestDir,
    cluster: Cluster,
}

impl Dual {
    /// The cluster with pods serving and both daemons given the node's IPv6 address too.
    fn start() -> Self {
        let mut cluster = Cluster::new();
        cluster.start_pods();
        let manifests = ManifestDir::new("manifests-v6");
        manifests.write(
            "pods.yaml",
            &dual_stack_pods_yaml(&cluster, |_| PodAs::BACKEND),
        );
        manifests.write("services.yaml", SERVICES_YAML);
        let daemon = |node: &str| {
            let ip6 = cluster.node(node).ip6.to_string();
            let args = ["--node-ip", &ip6, "--service-cidr", SERVICE_CIDR6];
            SluiceDaemon::start(&cluster, node, manifests.path(), &args)
        };
        let (node1, node2) = (daemon("node1"), daemon("node2"));
        Self {
            node1,
            node2,
            manifests,
            cluster,
        }
    }

    fn replies(&self, from: Place<'_>, proto: Proto, ip: Ipv6Addr, port: u16) -> Vec<Reply> {
        self.cluster
            .request_detailed(from, proto, ip, port, SPREAD_REQUESTS, REQUEST_TIMEOUT)
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|err| {
                    panic!(
                        "{proto} [{ip}]:{port} from {from:?}: {err}\nnode1 stderr:\n{}\nnode2 \
                         stderr:\n{}",
                        self.node1.stderr(),
                        self.node2.stderr()
                    )
                })
            })
            .collect()
    }
}

#[test]
fn an_ipv6_cluster_ip_from_pods_on_both_nodes_and_node_processes_spreads_over_every_pod() {
    let dual = Dual::start();
    for name in ["pod-1a", "pod-2a"] {
        let from = Place::Pod(name);
        let client = IpAddr::V6(dual.cluster.pod(name).ip6);
        for (proto, port, target) in [
            (Proto::Tcp, 80, 8080),
            (Proto::Udp, 53, 8053),
            (Proto::UdpConnected, 53, 8053),
        ] {
            let replies = dual.replies(from, proto, ECHO6, port);
            let answered: BTreeSet<String> = replies.iter().map(|r| r.name.clone()).collect();
            assert_eq!(answered, pods(&ALL_PODS), "{proto} from {name}");
            for reply in &replies {
                // No NAT: the pod sees the client pod's IPv6 address.
                assert_eq!(reply.peer.ip(), client, "{proto} from {name}: {reply:?}");
                assert_eq!(reply.local.port(), target, "{proto} from {name}: {reply:?}");
                assert_eq!(
                    reply.remote,
                    SocketAddr::new(ECHO6.into(), port),
                    "{proto} from {name}: {reply:?}"
                );
            }
        }
    }
    for node in ["node1", "node2"] {
        let node_ip6 = dual.cluster.node(node).ip6;
        for (ip, port) in [
            (ECHO6, 80),
            (Ipv6Addr::LOCALHOST, NODE_PORT_TCP),
            (node_ip6, NODE_PORT_TCP),
        ] {
            let replies = dual.replies(Place::Node(node), Proto::Tcp, ip, port);
            let answered: BTreeSet<String> = replies.iter().map(|r| r.name.clone()).collect();
            assert_eq!(answered, pods(&ALL_PODS), "TCP [{ip}]:{port} from {node}");
            for reply in &replies {
                assert_eq!(reply.local.port(), 8080, "{reply:?}");
                assert_eq!(reply.remote, SocketAddr::new(ip.into(), port), "{reply:?}");
            }
        }
    }
}

#[test]
fn an_ipv6_cluster_ip_without_endpoints_is_refused() {
    let dual = Dual::start();
    for (proto, port) in [
        (Proto::Tcp, 80),
        (Proto::UdpConnected, 53),
        (Proto::Udp, 53),
    ] {
        for from in [Place::Pod("pod-1a"), Place::Node("node2")] {
            for result in dual.cluster.request(from, proto, EMPTY6, port, 3) {
                let err = result.expect_err("no endpoints");
                assert!(
                    err.starts_with("refused"),
                    "{proto} [{EMPTY6}]:{port} from {from:?}: {err}"
                );
            }
        }
    }
}

/// As for IPv4: an IPv6 cluster IP on a port it does not serve, and an address of the IPv6
/// service CIDR no Service holds, are refused at once.
#[test]
fn an_ipv6_cluster_ip_port_or_address_no_service_serves_is_refused() {
    let dual = Dual::start();
    let unallocated = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x99);
    for (proto, addr, port) in [
        (Proto::Tcp, ECHO6, 9999),
        (Proto::UdpConnected, ECHO6, 9999),
        (Proto::Udp, ECHO6, 9999),
        (Proto::Tcp, unallocated, 80),
        (Proto::Udp, unallocated, 53),
    ] {
        for from in [Place::Pod("pod-1a"), Place::Node("node2")] {
            for result in dual.cluster.request(from, proto, addr, port, 2) {
                let err = result.expect_err("nothing serves it");
                assert!(
                    err.starts_with("refused"),
                    "{proto} [{addr}]:{port} from {from:?}: {err}"
                );
            }
        }
    }
}

#[test]
fn a_connected_ipv6_udp_socket_to_a_removed_backend_is_closed() {
    let dual = Dual::start();
    let from = Place::Pod("pod-1b");
    let service = SocketAddr::new(ECHO6.into(), 53);
    let mut doomed = dual.cluster.udp_session_to(from, service);
    let first = doomed.ping().expect("the first ping is answered");
    assert_eq!(first.remote, service, "{first:?}");
    let leaving = first.name;
    let direct_addr = SocketAddr::new(dual.cluster.pod(&leaving).ip6.into(), 8053);
    let mut direct = dual.cluster.udp_session_to(from, direct_addr);
    assert_eq!(direct.ping().expect("direct ping").name, leaving);

    dual.manifests.write(
        "pods.yaml",
        &dual_stack_pods_yaml(&dual.cluster, |pod| PodAs {
            app: "echo",
            ready: pod != leaving,
        }),
    );
    let err = doomed
        .recv(SYNC_TIMEOUT)
        .expect_err("the socket to the removed backend is closed");
    assert!(
        err.contains(ECONNABORTED),
        "expected ECONNABORTED, got {err:?}\nnode1 stderr:\n{}",
        dual.node1.stderr()
    );
    doomed.reconnect().expect("reconnect");
    let reply = doomed.ping().expect("the reconnected socket is answered");
    assert_ne!(reply.name, leaving, "reconnected to the removed backend");
    assert_eq!(reply.remote, service, "{reply:?}");
    // Not the socket LB's: the direct socket stays.
    assert_eq!(direct.ping().expect("the direct socket").name, leaving);
    wait_until(SYNC_TIMEOUT, POLL, || {
        dual.node1
            .stderr()
            .contains(&format!("service=[{ECHO6}]:53"))
    });
}
