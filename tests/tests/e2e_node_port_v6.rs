//! Off-node IPv6 through XDP/TC with the real daemon: NodePort via each node's IPv6 address
//! (local and remote backends, SNAT to the node's IPv6 address), ClusterIP from the client,
//! no endpoints rejected (RST, ICMPv6 port unreachable), `externalTrafficPolicy: Local`,
//! session affinity, a restart with a flow open, and IPv6 `loadBalancerSourceRanges`.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use proxy_tests::{
    CLIENT_IP6, Cluster, Place, Proto, Reply, SERVICE_CIDR6, SluiceDaemon,
    manifests::{ManifestDir, PodAs, dual_stack_pods_yaml},
    scenario::{ALL_PODS, SPREAD_REQUESTS, SYNC_TIMEOUT, backend_ips_of, pods},
    wait_until,
    workload::REQUEST_TIMEOUT,
};

const ECHO6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x10);
const EMPTY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x20);
const AFFINITY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x40);
/// LoadBalancer IPs inside `fd00:19::/108`, which the client routes via node1.
const LOCAL_LB6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0xe, 0x10);
const ALLOWED_LB6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0xe, 0x20);
const DENIED_LB6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0xe, 0x30);
const NODE_PORT_TCP: u16 = 30180;
const NODE_PORT_UDP: u16 = 30153;
const EMPTY_NODE_PORT_TCP: u16 = 30190;
const EMPTY_NODE_PORT_UDP: u16 = 30191;
const LOCAL_NODE_PORT: u16 = 30280;
const AFFINITY_NODE_PORT: u16 = 30240;
/// A dropped request: no answer and no rejection within this.
const DROP_TIMEOUT: Duration = Duration::from_millis(300);

/// IPv6-only Services for the off-node client.
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
  type: NodePort
  ipFamilyPolicy: SingleStack
  ipFamilies: [IPv6]
  clusterIP: fd00:19::20
  clusterIPs: [fd00:19::20]
  selector: {app: nothing}
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30190}
  - {name: dns, port: 53, protocol: UDP, targetPort: 8053, nodePort: 30191}
---
apiVersion: v1
kind: Service
metadata: {name: local6, namespace: default}
spec:
  type: LoadBalancer
  ipFamilyPolicy: SingleStack
  ipFamilies: [IPv6]
  clusterIP: fd00:19::30
  clusterIPs: [fd00:19::30]
  externalTrafficPolicy: Local
  healthCheckNodePort: 30281
  selector: {pod: pod-2a}
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30280}
status:
  loadBalancer:
    ingress: [{ip: 'fd00:19::e:10'}]
---
apiVersion: v1
kind: Service
metadata: {name: affinity6, namespace: default}
spec:
  type: NodePort
  ipFamilyPolicy: SingleStack
  ipFamilies: [IPv6]
  clusterIP: fd00:19::40
  clusterIPs: [fd00:19::40]
  sessionAffinity: ClientIP
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30240}
---
apiVersion: v1
kind: Service
metadata: {name: allowed6, namespace: default}
spec:
  type: LoadBalancer
  ipFamilyPolicy: SingleStack
  ipFamilies: [IPv6]
  clusterIP: fd00:19::50
  clusterIPs: [fd00:19::50]
  loadBalancerSourceRanges: [fd00:18::/64]
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30250}
status:
  loadBalancer:
    ingress: [{ip: 'fd00:19::e:20'}]
---
apiVersion: v1
kind: Service
metadata: {name: denied6, namespace: default}
spec:
  type: LoadBalancer
  ipFamilyPolicy: SingleStack
  ipFamilies: [IPv6]
  clusterIP: fd00:19::60
  clusterIPs: [fd00:19::60]
  loadBalancerSourceRanges: [fd00:18::200/120]
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30260}
status:
  loadBalancer:
    ingress: [{ip: 'fd00:19::e:30'}]
";

/// Fields drop in order: the daemons first, the cluster last.
struct Dual {
    node1: SluiceDaemon,
    node2: SluiceDaemon,
    _manifests: ManifestDir,
    cluster: Cluster,
}

impl Dual {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// With `extra` arguments for both daemons.
    fn start_with(extra: &[&str]) -> Self {
        let mut cluster = Cluster::new();
        cluster.start_pods();
        let manifests = ManifestDir::new("manifests-v6-offnode");
        manifests.write(
            "pods.yaml",
            &dual_stack_pods_yaml(&cluster, |_| PodAs::BACKEND),
        );
        manifests.write("services.yaml", SERVICES_YAML);
        let daemon = |node: &str| {
            let ip6 = cluster.node(node).ip6.to_string();
            let mut args = vec!["--node-ip", ip6.as_str(), "--service-cidr", SERVICE_CIDR6];
            args.extend_from_slice(extra);
            SluiceDaemon::start(&cluster, node, manifests.path(), &args)
        };
        let (node1, node2) = (daemon("node1"), daemon("node2"));
        Self {
            node1,
            node2,
            _manifests: manifests,
            cluster,
        }
    }

    fn node_ip6(&self, node: &str) -> Ipv6Addr {
        self.cluster.node(node).ip6
    }

    fn is_on(&self, pod: &str, node: &str) -> bool {
        self.cluster.node_of(pod).name == node
    }

    fn replies(&self, proto: Proto, ip: Ipv6Addr, port: u16, count: usize) -> Vec<Reply> {
        self.cluster
            .request_detailed(Place::Client, proto, ip, port, count, REQUEST_TIMEOUT)
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|err| {
                    panic!(
                        "{proto} [{ip}]:{port} from the client: {err}\nnode1 stderr:\n{}\nnode2 \
                         stderr:\n{}",
                        self.node1.stderr(),
                        self.node2.stderr()
                    )
                })
            })
            .collect()
    }

    /// Waits until `node` programs `frontend` (`[ADDR]:PORT`, `[::]:PORT` for a NodePort), so
    /// that a drop is the datapath's and not a Service not there yet.
    fn wait_programmed(&self, node: &str, frontend: &str) {
        let daemon = if node == "node1" {
            &self.node1
        } else {
            &self.node2
        };
        wait_until(SYNC_TIMEOUT, Duration::from_millis(50), || {
            backend_ips_of(daemon, frontend).is_some()
        });
    }

    /// Every request from the client times out: dropped, neither answered nor rejected.
    fn assert_dropped(&self, ip: Ipv6Addr, port: u16) {
        let results =
            self.cluster
                .request_detailed(Place::Client, Proto::Tcp, ip, port, 3, DROP_TIMEOUT);
        for result in results {
            let err = result.expect_err(&format!("[{ip}]:{port} must be dropped"));
            assert!(
                err.starts_with("timeout"),
                "[{ip}]:{port}: expected a drop (timeout), got {err}"
            );
        }
    }
}

fn names(replies: &[Reply]) -> BTreeSet<String> {
    replies.iter().map(|r| r.name.clone()).collect()
}

/// Via `node`: every pod answers; a local pod sees the client, a remote one the entry node's
/// IPv6 address (SNAT); the client sees the answer come from the address it used.
fn assert_spread_with_snat(dual: &Dual, via: &str, replies: &[Reply], target: SocketAddr) {
    assert_eq!(names(replies), pods(&ALL_PODS), "via {via} to {target}");
    for reply in replies {
        assert_eq!(reply.remote, target, "{reply:?}");
        let expected: IpAddr = if dual.is_on(&reply.name, via) {
            CLIENT_IP6.into()
        } else {
            dual.node_ip6(via).into()
        };
        assert_eq!(
            reply.peer.ip(),
            expected,
            "via {via} to {target}: {reply:?}"
        );
    }
}

#[test]
fn an_ipv6_node_port_from_off_node_reaches_local_and_remote_pods_via_each_node() {
    let dual = Dual::start();
    for node in ["node1", "node2"] {
        let node_ip6 = dual.node_ip6(node);
        for (proto, port, target_port) in [
            (Proto::Tcp, NODE_PORT_TCP, 8080),
            (Proto::UdpConnected, NODE_PORT_UDP, 8053),
            (Proto::Udp, NODE_PORT_UDP, 8053),
        ] {
            let replies = dual.replies(proto, node_ip6, port, SPREAD_REQUESTS);
            for reply in &replies {
                assert_eq!(reply.local.port(), target_port, "{reply:?}");
                // A UDP server shows its bound address ([::]); TCP the pod's own.
                if proto == Proto::Tcp {
                    assert_eq!(
                        reply.local.ip(),
                        IpAddr::V6(dual.cluster.pod(&reply.name).ip6),
                        "{reply:?}"
                    );
                }
            }
            assert_spread_with_snat(
                &dual,
                node,
                &replies,
                SocketAddr::new(node_ip6.into(), port),
            );
        }
    }
}

#[test]
fn an_ipv6_cluster_ip_from_off_node_is_served_by_node1() {
    let dual = Dual::start();
    for (proto, port) in [
        (Proto::Tcp, 80),
        (Proto::UdpConnected, 53),
        (Proto::Udp, 53),
    ] {
        let replies = dual.replies(proto, ECHO6, port, SPREAD_REQUESTS);
        assert_spread_with_snat(
            &dual,
            "node1",
            &replies,
            SocketAddr::new(ECHO6.into(), port),
        );
    }
}

#[test]
fn an_ipv6_service_without_endpoints_is_rejected_from_off_node() {
    let dual = Dual::start();
    let mut targets = vec![(Proto::Tcp, EMPTY6, 80), (Proto::UdpConnected, EMPTY6, 53)];
    for node in ["node1", "node2"] {
        let ip6 = dual.node_ip6(node);
        targets.push((Proto::Tcp, ip6, EMPTY_NODE_PORT_TCP));
        targets.push((Proto::UdpConnected, ip6, EMPTY_NODE_PORT_UDP));
    }
    for (proto, ip, port) in targets {
        // RST / ICMPv6 port unreachable: refused at once, well before the request timeout.
        for result in
            dual.cluster
                .request_detailed(Place::Client, proto, ip, port, 3, Duration::from_secs(1))
        {
            let err = result.expect_err("no endpoints");
            assert!(
                err.starts_with("refused"),
                "{proto} [{ip}]:{port}: expected refused, got {err}"
            );
        }
    }
}

#[test]
fn ipv6_external_traffic_policy_local_keeps_the_client_address() {
    let dual = Dual::start();
    let node2_ip6 = dual.node_ip6("node2");
    let replies = dual.replies(Proto::Tcp, node2_ip6, LOCAL_NODE_PORT, 5);
    assert_eq!(names(&replies), pods(&["pod-2a"]), "eTP Local via node2");
    for reply in &replies {
        // No SNAT: pod-2a sees the client's IPv6 address.
        assert_eq!(reply.peer.ip(), IpAddr::V6(CLIENT_IP6), "{reply:?}");
        assert_eq!(
            reply.remote,
            SocketAddr::new(node2_ip6.into(), LOCAL_NODE_PORT),
            "{reply:?}"
        );
    }
    // node1 has no local endpoint: its NodePort and the LoadBalancer IP (routed via node1)
    // drop.
    dual.wait_programmed("node1", &format!("[::]:{LOCAL_NODE_PORT}"));
    dual.wait_programmed("node1", &format!("[{LOCAL_LB6}]:80"));
    dual.assert_dropped(dual.node_ip6("node1"), LOCAL_NODE_PORT);
    dual.assert_dropped(LOCAL_LB6, 80);
}

#[test]
fn ipv6_session_affinity_from_off_node_sticks_to_one_backend() {
    let dual = Dual::start();
    for (ip, port) in [
        (AFFINITY6, 80),
        (dual.node_ip6("node1"), AFFINITY_NODE_PORT),
        (dual.node_ip6("node2"), AFFINITY_NODE_PORT),
    ] {
        let replies = dual.replies(Proto::Tcp, ip, port, 10);
        assert_eq!(
            names(&replies).len(),
            1,
            "ClientIP affinity to [{ip}]:{port}: {replies:?}"
        );
    }
}

#[test]
fn a_restart_keeps_an_ipv6_node_port_flow_to_a_remote_backend() {
    let mut dual = Dual::start();
    let node1_ip6 = dual.node_ip6("node1");
    let target = SocketAddr::new(node1_ip6.into(), NODE_PORT_TCP);
    // Three backends at random, one remote from node1: 30 misses in a row, about 5e-6.
    let mut held = (0..30)
        .map(|_| {
            dual.cluster
                .hold_to(Place::Client, target)
                .unwrap_or_else(|e| panic!("hold {target}: {e}"))
        })
        .find(|conn| conn.greeting().name == "pod-2a")
        .expect("a held connection to pod-2a");
    assert_eq!(held.greeting().peer.ip(), IpAddr::V6(node1_ip6), "SNAT");
    dual.node1.restart();
    for _ in 0..3 {
        let reply = held
            .ping()
            .expect("the held IPv6 flow survives the restart");
        assert_eq!(reply.name, "pod-2a", "{reply:?}");
        assert_eq!(reply.peer.ip(), IpAddr::V6(node1_ip6), "{reply:?}");
    }
}

#[test]
fn ipv6_load_balancer_source_ranges_allow_and_drop() {
    let dual = Dual::start();
    let replies = dual.replies(Proto::Tcp, ALLOWED_LB6, 80, SPREAD_REQUESTS);
    assert_spread_with_snat(
        &dual,
        "node1",
        &replies,
        SocketAddr::new(ALLOWED_LB6.into(), 80),
    );
    dual.wait_programmed("node1", &format!("[{DENIED_LB6}]:80"));
    dual.assert_dropped(DENIED_LB6, 80);
}

/// The conntrack GC walks the IPv6 table too: finished IPv6 flows through the NodePort leave
/// `CT6_V1` after their timeout (before, only `CT_V1` was collected and IPv6 entries waited
/// for LRU eviction).
#[test]
fn idle_ipv6_flows_leave_conntrack_after_their_timeout() {
    let dual = Dual::start_with(&["--ct-udp-timeout", "1s", "--ct-gc-interval", "200ms"]);
    let node1 = dual.node_ip6("node1");
    dual.replies(Proto::UdpConnected, node1, NODE_PORT_UDP, 3);
    let ipv6_flows = || {
        let flows = dual.node1.read_json("conntrack");
        flows
            .as_array()
            .expect("conntrack -o json prints an array")
            .iter()
            .filter(|flow| flow["client"].as_str().is_some_and(|c| c.starts_with('[')))
            .count()
    };
    assert!(ipv6_flows() > 0, "{:#}", dual.node1.read_json("conntrack"));
    wait_until(SYNC_TIMEOUT, Duration::from_millis(100), || {
        ipv6_flows() == 0
    });
}
