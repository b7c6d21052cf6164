//! The packet path end to end on a dual-stack NodePort Service. The pod-side path
//! (`--pod-iface-prefix`): a process in a pod that the socket LB does not see (outside
//! `--cgroup`) reaches the Service's cluster IPs and its NodePort on the node's own addresses,
//! TCP and UDP, through TC on the pod's host interface; the replies come from the service
//! address; sockets the socket LB translated are left alone; pods that appear later get the
//! path; what no Service serves is refused at once. Fragments: a 4000-byte datagram, split by
//! the sender's stack, arrives whole at every backend through XDP and the pod-side path. ICMP:
//! backends behind a small-MTU link lower an off-node client's path MTU through the NodePort.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use proxy_common::stats::PassReason;
use proxy_tests::{
    Cluster, Place, Proto, Reply, SluiceDaemon, http,
    manifests::{ManifestDir, PodAs, dual_stack_pods_yaml},
    scenario::{SPREAD_REQUESTS, SYNC_TIMEOUT, pods},
    sluice::{DaemonConfig, every_answer},
    wait_until,
    workload::REQUEST_TIMEOUT,
};

const DUAL4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 60);
const DUAL6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x60);
const NODE_PORT_TCP: u16 = 30180;
const NODE_PORT_UDP: u16 = 30153;
/// A UDP datagram three 1500-byte-MTU fragments long.
const BIG: usize = 4000;

const SERVICES_YAML: &str = "\
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: default}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 198.19.0.60
  clusterIPs: [198.19.0.60, fd00:19::60]
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30180}
  - {name: dns, port: 53, protocol: UDP, targetPort: 8053, nodePort: 30153}
";

/// The client pod: not a backend (a pod reaching itself through a Service needs SNAT, which
/// the pod-side path does not do; see docs/packet-path.md).
const CLIENT: &str = "pod-1a";
/// The backends: one on the client's node, one on the other.
const BACKENDS: [&str; 2] = ["pod-1b", "pod-2a"];

/// Fields drop in order: the daemons first, the cluster last.
struct PodPath {
    node1: SluiceDaemon,
    node2: SluiceDaemon,
    cluster: Cluster,
    _manifests: ManifestDir,
}

impl PodPath {
    fn start() -> Self {
        let mut cluster = Cluster::new();
        cluster.start_pods();
        let manifests = ManifestDir::new("manifests-pod-path");
        manifests.write(
            "pods.yaml",
            &dual_stack_pods_yaml(&cluster, |name| {
                if name == CLIENT {
                    PodAs {
                        app: "client",
                        ready: true,
                    }
                } else {
                    PodAs::BACKEND
                }
            }),
        );
        manifests.write("services.yaml", SERVICES_YAML);
        let daemon = |node: &str| {
            let config = DaemonConfig::new(
                &cluster,
                node,
                manifests.path(),
                &["--pod-iface-prefix", "v-"],
            )
            .dual_stack(&cluster);
            SluiceDaemon::launch(config).unwrap_or_else(|e| panic!("starting sluice: {e:#}"))
        };
        let (node1, node2) = (daemon("node1"), daemon("node2"));
        Self {
            node1,
            node2,
            cluster,
            _manifests: manifests,
        }
    }

    /// `count` requests from `from` to `target`, each answered; panics with both daemons'
    /// stderr otherwise.
    fn replies(&self, from: Place<'_>, proto: Proto, target: SocketAddr, n: usize) -> Vec<Reply> {
        let answers = self
            .cluster
            .request_to(from, proto, target, n, REQUEST_TIMEOUT);
        let what = format!("{proto} {target} from {from:?}");
        every_answer(answers, &what, &[&self.node1, &self.node2])
    }

    /// The client pod's address of `target`'s family.
    fn client_ip(&self, target: IpAddr) -> IpAddr {
        let pod = self.cluster.pod(CLIENT);
        match target {
            IpAddr::V4(_) => pod.ip.into(),
            IpAddr::V6(_) => pod.ip6.into(),
        }
    }

    /// The flows node1's conntrack holds for the client pod.
    fn client_flows(&self) -> usize {
        let client = self.cluster.pod(CLIENT);
        let ips = [IpAddr::V4(client.ip), IpAddr::V6(client.ip6)];
        self.node1
            .read_json("conntrack")
            .as_array()
            .expect("conntrack -o json prints an array")
            .iter()
            .filter(|row| {
                row["client"]
                    .as_str()
                    .and_then(|c| c.parse::<SocketAddr>().ok())
                    .is_some_and(|c| ips.contains(&c.ip()))
            })
            .count()
    }
}

/// Checks every reply came from `target`, saw the client pod itself as the peer (the pod-side
/// path translates the destination only) and was served on `port`; returns who answered.
fn answered(replies: &[Reply], target: SocketAddr, client: IpAddr, port: u16) -> BTreeSet<String> {
    for reply in replies {
        assert_eq!(reply.remote, target, "{reply:?}");
        assert_eq!(reply.peer.ip(), client, "{reply:?}");
        assert_eq!(reply.local.port(), port, "{reply:?}");
    }
    replies.iter().map(|r| r.name.clone()).collect()
}

#[test]
fn a_pod_outside_the_socket_lb_reaches_cluster_ips_and_node_ports_of_both_families() {
    let path = PodPath::start();
    let from = Place::PodOutsideCgroup(CLIENT);
    let node1 = path.cluster.node("node1");
    let before = (path.node1.hook_counts(), path.node2.hook_counts());
    let mut requests = 0;
    for (addr, tcp_port, udp_port) in [
        (IpAddr::V4(DUAL4), 80, 53),
        (IpAddr::V6(DUAL6), 80, 53),
        (IpAddr::V4(node1.ip), NODE_PORT_TCP, NODE_PORT_UDP),
        (IpAddr::V6(node1.ip6), NODE_PORT_TCP, NODE_PORT_UDP),
    ] {
        for (proto, port, target_port) in [
            (Proto::Tcp, tcp_port, 8080),
            (Proto::Udp, udp_port, 8053),
            (Proto::UdpConnected, udp_port, 8053),
        ] {
            let target = SocketAddr::new(addr, port);
            let replies = path.replies(from, proto, target, SPREAD_REQUESTS);
            requests += replies.len() as u64;
            assert_eq!(
                answered(&replies, target, path.client_ip(addr), target_port),
                pods(&BACKENDS),
                "{proto} {target} from {CLIENT} outside the cgroup"
            );
        }
    }
    let after = (path.node1.hook_counts(), path.node2.hook_counts());
    // Every request went through node1's pod-side path both ways (TCP: several packets each).
    for hook in ["tc_from_pod", "tc_to_pod"] {
        let grown = after.0.of(hook, "ok") - before.0.of(hook, "ok");
        assert!(
            grown >= requests,
            "{hook} ok +{grown} < {requests}: {:?}",
            after.0
        );
    }
    assert_eq!(after.0.of("tc_from_pod", "shot"), 0, "{:?}", after.0);
    // pod-2a's packets passed node2's pod-side path untranslated.
    assert!(after.1.of("tc_from_pod", "ok") > before.1.of("tc_from_pod", "ok"));
    assert!(
        path.client_flows() > 0,
        "the flows are in node1's conntrack"
    );
}

#[test]
fn sockets_the_socket_lb_translated_pass_the_pod_side_path_untouched() {
    let path = PodPath::start();
    // The same pod, in the node's cgroup: connect4/connect6 and sendmsg choose the backend.
    let from = Place::Pod(CLIENT);
    for addr in [IpAddr::V4(DUAL4), IpAddr::V6(DUAL6)] {
        for (proto, port, target_port) in [(Proto::Tcp, 80, 8080), (Proto::Udp, 53, 8053)] {
            let target = SocketAddr::new(addr, port);
            let replies = path.replies(from, proto, target, SPREAD_REQUESTS);
            assert_eq!(
                answered(&replies, target, path.client_ip(addr), target_port),
                pods(&BACKENDS),
                "{proto} {target} from {CLIENT} in the cgroup"
            );
        }
    }
    assert_eq!(
        path.client_flows(),
        0,
        "the pod-side path tracked flows the socket LB translated"
    );
}

#[test]
fn pod_interfaces_that_appear_later_get_the_pod_side_path_and_lose_it_when_they_go() {
    let path = PodPath::start();
    let node1 = path.cluster.node("node1");
    let links = node1.pin_dir.join("links");
    let pinned = |iface: &str| {
        ["tc_from_pod", "tc_to_pod"]
            .iter()
            .filter(|program| links.join(format!("{program}@{iface}")).exists())
            .count()
    };
    for pod in ["v-1a", "v-1b"] {
        assert_eq!(pinned(pod), 2, "{pod} has the pod-side path at start");
    }
    // A new pod's host end (its peer stays in the node, under a name no prefix matches).
    node1
        .netns
        .ip(&[
            "link", "add", "v-late", "type", "veth", "peer", "name", "p-late",
        ])
        .expect("add a veth in node1");
    wait_until(SYNC_TIMEOUT, Duration::from_millis(50), || {
        pinned("v-late") == 2
    });
    assert_eq!(pinned("p-late"), 0, "an interface no prefix matches");
    node1
        .netns
        .ip(&["link", "del", "v-late"])
        .expect("delete the veth");
    wait_until(SYNC_TIMEOUT, Duration::from_millis(50), || {
        pinned("v-late") == 0
    });
    // The path still serves the pods it had.
    let target = SocketAddr::new(DUAL4.into(), 80);
    let replies = path.replies(Place::PodOutsideCgroup(CLIENT), Proto::Tcp, target, 5);
    assert_eq!(replies.len(), 5);
}

#[test]
fn a_pods_flows_to_ports_and_addresses_no_service_serves_are_refused_at_once() {
    let path = PodPath::start();
    let from = Place::PodOutsideCgroup(CLIENT);
    // Inside the service CIDRs, held by no Service.
    let unallocated4 = IpAddr::V4(Ipv4Addr::new(198, 19, 0, 99));
    let unallocated6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x99));
    for (proto, addr, port) in [
        (Proto::Tcp, IpAddr::V4(DUAL4), 9999),
        (Proto::UdpConnected, IpAddr::V4(DUAL4), 9999),
        (Proto::Tcp, unallocated4, 80),
        (Proto::UdpConnected, unallocated4, 53),
        (Proto::Tcp, IpAddr::V6(DUAL6), 9999),
        (Proto::UdpConnected, IpAddr::V6(DUAL6), 9999),
        (Proto::Tcp, unallocated6, 80),
        (Proto::UdpConnected, unallocated6, 53),
    ] {
        let target = SocketAddr::new(addr, port);
        for result in path
            .cluster
            .request_to(from, proto, target, 2, REQUEST_TIMEOUT)
        {
            let err = result.expect_err(&format!("{proto} {target} from {CLIENT}"));
            // A drop would time out instead.
            assert!(
                err.starts_with("refused"),
                "{proto} {target} from {CLIENT}: expected refused, got {err}"
            );
        }
    }
    for reason in ["unserved_port", "unallocated_service_ip"] {
        assert!(
            path.node1.stats_count("drops", reason) >= 8,
            "{reason} counted on node1"
        );
    }
    let counts = path.node1.hook_counts();
    assert!(counts.of("tc_from_pod", "redirect") >= 16, "{counts:?}");
}

#[test]
fn a_4000_byte_datagram_arrives_whole_at_every_backend_through_xdp_and_the_pod_side_path() {
    let path = PodPath::start();
    let node1 = path.cluster.node("node1");
    let client = path.cluster.client();
    // From off-node to node1's NodePort (XDP: DNAT to pod-1b, DNAT+SNAT to pod-2a), and from
    // the client pod outside the cgroup to the cluster IPs (the pod-side path); each sender's
    // stack splits the datagram at its 1500-byte MTU.
    let cases = [
        (
            Place::Client,
            SocketAddr::new(node1.ip.into(), NODE_PORT_UDP),
            IpAddr::from(client.ip),
        ),
        (
            Place::Client,
            SocketAddr::new(node1.ip6.into(), NODE_PORT_UDP),
            client.ip6.into(),
        ),
        (
            Place::PodOutsideCgroup(CLIENT),
            SocketAddr::new(DUAL4.into(), 53),
            path.client_ip(DUAL4.into()),
        ),
        (
            Place::PodOutsideCgroup(CLIENT),
            SocketAddr::new(DUAL6.into(), 53),
            path.client_ip(DUAL6.into()),
        ),
    ];
    for (from, target, sender) in cases {
        for proto in [Proto::Udp, Proto::UdpConnected] {
            let replies: Vec<Reply> = path
                .cluster
                .request_sized(from, proto, target, SPREAD_REQUESTS, BIG)
                .into_iter()
                .map(|result| {
                    result.unwrap_or_else(|err| panic!("{proto} {target} from {from:?}: {err}"))
                })
                .collect();
            let mut answered = BTreeSet::new();
            for reply in &replies {
                assert_eq!(reply.received, Some(BIG), "{reply:?}");
                assert_eq!(reply.remote, target, "{reply:?}");
                if from != Place::Client || reply.name == "pod-1b" {
                    // Local backends and the pod-side path keep the source; pod-2a sees node1's
                    // SNAT address.
                    assert_eq!(reply.peer.ip(), sender, "{reply:?}");
                }
                answered.insert(reply.name.clone());
            }
            assert_eq!(answered, pods(&BACKENDS), "{proto} {target} from {from:?}");
        }
    }
    // Nothing passed untranslated, here and in /metrics.
    assert_eq!(
        path.node1
            .stats_count("passes", PassReason::Fragment.as_str()),
        0
    );
    let (_, text) = http::get(&node1.netns, "127.0.0.1:10249", "/metrics");
    let sample = http::sample(&text, "sluice_packets_passed_total{reason=\"fragment\"}");
    assert_eq!(sample, Some(0.0), "{text}");
}

#[test]
fn backends_behind_a_small_mtu_link_lower_the_clients_path_mtu_through_a_node_port() {
    let path = PodPath::start();
    // The nodes' ends of the backends' veths carry 1280 bytes; the pods still announce an MSS
    // for 1500, so full-size segments from the client meet the small link on the way: node1
    // (to its pod-1b) or node2 (to pod-2a, SNATed by node1) answers "fragmentation needed" /
    // "packet too big" about the translated segment, and only translated back does the
    // client's TCP see it.
    for (node, iface) in [("node1", "v-1b"), ("node2", "v-2a")] {
        path.cluster
            .node(node)
            .netns
            .ip(&["link", "set", iface, "mtu", "1280"])
            .unwrap_or_else(|e| panic!("set {iface}'s MTU on {node}: {e:#}"));
    }
    let node1 = path.cluster.node("node1");
    let client = &path.cluster.client().netns;
    let line = "x".repeat(20_000);
    for (target, family) in [
        (SocketAddr::new(node1.ip.into(), NODE_PORT_TCP), "-4"),
        (SocketAddr::new(node1.ip6.into(), NODE_PORT_TCP), "-6"),
    ] {
        let mut answered = BTreeSet::new();
        // Random backends: enough connections that both are reached (a miss: 2^-15).
        for _ in 0..16 {
            // Each connection learns the path MTU afresh.
            client
                .ip(&[family, "route", "flush", "cache"])
                .expect("flush the client's route cache");
            let mut conn = path
                .cluster
                .hold_to(Place::Client, target)
                .unwrap_or_else(|e| panic!("connect to {target}: {e}"));
            let reply = conn.send(&line).unwrap_or_else(|e| {
                panic!(
                    "20 kB to {target} (first landed on {}): {e}\nnode1 stderr:\n{}",
                    conn.greeting().name,
                    path.node1.stderr()
                )
            });
            assert_eq!(reply.name, conn.greeting().name);
            answered.insert(reply.name);
            let route = client
                .ip(&[family, "route", "get", &target.ip().to_string()])
                .expect("ip route get");
            assert!(
                route.contains("mtu 1280"),
                "the client's route to {target}: {route}"
            );
        }
        assert_eq!(answered, pods(&BACKENDS), "{target}");
    }
}
