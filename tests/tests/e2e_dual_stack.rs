//! Dual-stack Services end to end through the socket LB: one Service answering on its IPv4
//! and its IPv6 cluster IP (TCP and UDP, pods on both nodes), ClientIP affinity over IPv6, a
//! restart with IPv6 flows open, and kube-proxy's family semantics (`PreferDualStack` on an
//! IPv4-only cluster, a dual-stack Service on a node without an IPv6 address).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use proxy_tests::{
    Cluster, Place, Proto, Reply, SERVICE_CIDR6, SluiceDaemon,
    manifests::{ManifestDir, PodAs, dual_stack_pods_yaml},
    scenario::{ALL_PODS, SPREAD_REQUESTS, pods},
    sluice::every_answer,
    workload::REQUEST_TIMEOUT,
};

/// `dual`: `RequireDualStack` with both cluster IPs given.
const DUAL4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 60);
const DUAL6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x60);
/// `sticky6`: IPv6-only with `sessionAffinity: ClientIP`.
const STICKY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x61);

const SERVICES_YAML: &str = "\
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: default}
spec:
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 198.19.0.60
  clusterIPs: [198.19.0.60, fd00:19::60]
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 8053}
---
apiVersion: v1
kind: Service
metadata: {name: sticky6, namespace: default}
spec:
  ipFamilyPolicy: SingleStack
  ipFamilies: [IPv6]
  clusterIP: fd00:19::61
  clusterIPs: [fd00:19::61]
  selector: {app: echo}
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: prefer, namespace: default}
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080}
";

/// What a daemon is told about IPv6.
#[derive(Clone, Copy)]
enum Stack {
    /// `--node-ip <node ip6> --service-cidr fd00:19::/108` beside the IPv4 ones.
    Dual,
    /// The IPv6 node address only: the cluster's Service CIDR is IPv4 only.
    Ipv4Cluster,
    /// The IPv6 Service CIDR only: the node has no IPv6 address.
    Ipv4Node,
}

/// Fields drop in order: the daemons first, the cluster last.
struct Dual {
    node1: SluiceDaemon,
    node2: SluiceDaemon,
    cluster: Cluster,
}

impl Dual {
    fn start(node1: Stack, node2: Stack) -> (Self, ManifestDir) {
        let mut cluster = Cluster::new();
        cluster.start_pods();
        let manifests = ManifestDir::new("manifests-dual");
        manifests.write(
            "pods.yaml",
            &dual_stack_pods_yaml(&cluster, |_| PodAs::BACKEND),
        );
        manifests.write("services.yaml", SERVICES_YAML);
        let daemon = |node: &str, stack: Stack| {
            let ip6 = cluster.node(node).ip6.to_string();
            let args: Vec<&str> = match stack {
                Stack::Dual => vec!["--node-ip", &ip6, "--service-cidr", SERVICE_CIDR6],
                Stack::Ipv4Cluster => vec!["--node-ip", &ip6],
                Stack::Ipv4Node => vec!["--service-cidr", SERVICE_CIDR6],
            };
            SluiceDaemon::start(&cluster, node, manifests.path(), &args)
        };
        let (node1, node2) = (daemon("node1", node1), daemon("node2", node2));
        (
            Self {
                node1,
                node2,
                cluster,
            },
            manifests,
        )
    }

    fn daemon(&self, node: &str) -> &SluiceDaemon {
        if node == "node1" {
            &self.node1
        } else {
            &self.node2
        }
    }

    /// `count` requests, each answered; panics with both daemons' stderr otherwise.
    fn replies(&self, from: Place<'_>, proto: Proto, target: SocketAddr, n: usize) -> Vec<Reply> {
        let answers = self
            .cluster
            .request_to(from, proto, target, n, REQUEST_TIMEOUT);
        let what = format!("{proto} {target} from {from:?}");
        every_answer(answers, &what, &[&self.node1, &self.node2])
    }

    /// `sluice services -o json` rows of `service` (`namespace/name`) on `node`.
    fn rows(&self, node: &str, service: &str) -> Vec<serde_json::Value> {
        let json = self.daemon(node).services_json();
        json.as_array()
            .expect("services -o json prints an array")
            .iter()
            .filter(|row| row["name"].as_str().is_some_and(|n| n.starts_with(service)))
            .cloned()
            .collect()
    }
}

/// Checks every reply came from `target` and saw `client` as the peer; returns who answered.
fn answered(replies: &[Reply], target: SocketAddr, client: IpAddr, port: u16) -> BTreeSet<String> {
    for reply in replies {
        assert_eq!(reply.remote, target, "{reply:?}");
        assert_eq!(
            reply.peer.ip(),
            client,
            "no NAT on the socket path: {reply:?}"
        );
        assert_eq!(reply.local.port(), port, "{reply:?}");
    }
    replies.iter().map(|r| r.name.clone()).collect()
}

#[test]
fn a_dual_stack_service_answers_on_both_cluster_ips_from_pods_on_both_nodes() {
    let (dual, _manifests) = Dual::start(Stack::Dual, Stack::Dual);
    for name in ["pod-1a", "pod-2a"] {
        let pod = dual.cluster.pod(name);
        let from = Place::Pod(name);
        for (ip, client) in [
            (IpAddr::V4(DUAL4), IpAddr::V4(pod.ip)),
            (IpAddr::V6(DUAL6), IpAddr::V6(pod.ip6)),
        ] {
            for (proto, port, target_port) in [
                (Proto::Tcp, 80, 8080),
                (Proto::Udp, 53, 8053),
                (Proto::UdpConnected, 53, 8053),
            ] {
                let target = SocketAddr::new(ip, port);
                let replies = dual.replies(from, proto, target, SPREAD_REQUESTS);
                assert_eq!(
                    answered(&replies, target, client, target_port),
                    pods(&ALL_PODS),
                    "{proto} {target} from {name}"
                );
            }
        }
    }
    for node in ["node1", "node2"] {
        let rows = dual.rows(node, "default/dual");
        let frontends: BTreeSet<&str> =
            rows.iter().filter_map(|r| r["frontend"].as_str()).collect();
        for frontend in [
            "198.19.0.60:80",
            "198.19.0.60:53",
            "[fd00:19::60]:80",
            "[fd00:19::60]:53",
        ] {
            assert!(
                frontends.contains(frontend),
                "{node}: {frontend} in {rows:#?}"
            );
        }
        assert!(
            rows.iter().all(|r| r["programmed"] == true),
            "{node}: nothing of dual is skipped on a dual-stack node: {rows:#?}"
        );
        let table = dual.daemon(node).cli(&[
            "services",
            "--pin-dir",
            dual.daemon(node).config().pin_dir.to_str().expect("UTF-8"),
        ]);
        assert!(table.status.success(), "sluice services: {}", table.stderr);
        for frontend in ["198.19.0.60:80", "[fd00:19::60]:80"] {
            assert!(
                table.stdout.contains(frontend),
                "{frontend}: {}",
                table.stdout
            );
        }
    }
}

#[test]
fn client_ip_affinity_over_ipv6_sticks_on_the_socket_path() {
    let (dual, _manifests) = Dual::start(Stack::Dual, Stack::Dual);
    for name in ["pod-1b", "pod-2a"] {
        let client = IpAddr::V6(dual.cluster.pod(name).ip6);
        let target = SocketAddr::new(STICKY6.into(), 80);
        let replies = dual.replies(Place::Pod(name), Proto::Tcp, target, SPREAD_REQUESTS);
        let answered = answered(&replies, target, client, 8080);
        assert_eq!(
            answered.len(),
            1,
            "{name}: every connection to {target}: {answered:?}"
        );
    }
    for node in ["node1", "node2"] {
        // The socket path keys affinity by the pod's netns (in AFFINITY_V1 for both
        // families), under the IPv6 frontend's service id.
        let rows = dual.daemon(node).read_json("affinity");
        let sticky: Vec<_> = rows
            .as_array()
            .expect("affinity -o json prints an array")
            .iter()
            .filter(|row| {
                row["service"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("default/sticky6"))
            })
            .collect();
        assert_eq!(sticky.len(), 1, "{node}: one entry, its pod's: {rows:#}");
        assert_eq!(sticky[0]["client_kind"], "netns", "{rows:#}");
        let pin_dir = dual.daemon(node).config().pin_dir.to_str().expect("UTF-8");
        let table = dual.daemon(node).cli(&["affinity", "--pin-dir", pin_dir]);
        assert!(table.status.success(), "sluice affinity: {}", table.stderr);
        assert!(table.stdout.contains("default/sticky6"), "{}", table.stdout);
    }
}

#[test]
fn a_restart_keeps_ipv6_connections_and_serves_new_ones() {
    let (mut dual, _manifests) = Dual::start(Stack::Dual, Stack::Dual);
    let target = SocketAddr::new(DUAL6.into(), 80);
    let mut held: Vec<_> = ["pod-1a", "pod-1b"]
        .into_iter()
        .map(|name| {
            let conn = dual
                .cluster
                .hold_to(Place::Pod(name), target)
                .unwrap_or_else(|e| panic!("hold {target} from {name}: {e}"));
            let pod = conn.greeting().name.clone();
            (name, conn, pod)
        })
        .collect();
    let before = dual.node1.services_json();
    dual.node1.restart();
    for (name, conn, pod) in &mut held {
        let reply = conn
            .ping()
            .unwrap_or_else(|e| panic!("{name}'s IPv6 flow after the restart: {e}"));
        assert_eq!(&reply.name, pod, "{name}");
        assert_eq!(reply.remote, target, "{reply:?}");
    }
    assert_eq!(
        dual.node1.services_json(),
        before,
        "a restart keeps every frontend"
    );
    let client = IpAddr::V6(dual.cluster.pod("pod-1a").ip6);
    let replies = dual.replies(Place::Pod("pod-1a"), Proto::Tcp, target, SPREAD_REQUESTS);
    assert_eq!(answered(&replies, target, client, 8080), pods(&ALL_PODS));
}

#[test]
fn prefer_dual_stack_on_an_ipv4_cluster_and_dual_stack_on_an_ipv4_node_serve_ipv4_only() {
    let (dual, _manifests) = Dual::start(Stack::Ipv4Cluster, Stack::Ipv4Node);
    // node1: the cluster's only Service CIDR is IPv4, so `prefer` gets an IPv4 cluster IP only.
    let prefer = dual.rows("node1", "default/prefer");
    assert_eq!(prefer.len(), 1, "{prefer:#?}");
    let frontend: SocketAddr = prefer[0]["frontend"]
        .as_str()
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("a programmed frontend: {prefer:#?}"));
    assert!(frontend.is_ipv4(), "{prefer:#?}");
    let pod = dual.cluster.pod("pod-1a");
    let replies = dual.replies(Place::Pod("pod-1a"), Proto::Tcp, frontend, SPREAD_REQUESTS);
    assert_eq!(
        answered(&replies, frontend, IpAddr::V4(pod.ip), 8080),
        pods(&ALL_PODS)
    );

    // node2: no IPv6 node address, so `dual`'s IPv6 cluster IP is listed as skipped, and why.
    let rows = dual.rows("node2", "default/dual");
    let skipped: Vec<_> = rows.iter().filter(|r| r["programmed"] == false).collect();
    assert_eq!(skipped.len(), 1, "{rows:#?}");
    let reason = skipped[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("fd00:19::60") && reason.contains("no IPv6 address"),
        "{reason}"
    );
    assert!(
        rows.iter()
            .filter(|r| r["programmed"] == true)
            .all(|r| r["frontend"].as_str().is_some_and(|f| !f.starts_with('['))),
        "node2 programs no IPv6 frontend of dual: {rows:#?}"
    );
    let pod = dual.cluster.pod("pod-2a");
    for (proto, port, target_port) in [(Proto::Tcp, 80, 8080), (Proto::Udp, 53, 8053)] {
        let target = SocketAddr::new(DUAL4.into(), port);
        let replies = dual.replies(Place::Pod("pod-2a"), proto, target, SPREAD_REQUESTS);
        assert_eq!(
            answered(&replies, target, IpAddr::V4(pod.ip), target_port),
            pods(&ALL_PODS),
            "{proto} {target} from pod-2a"
        );
    }
}
