//! Every Service type and traffic policy end to end: LoadBalancer IPs (with source ranges),
//! externalIPs, `externalTrafficPolicy: Local` (with its health check port),
//! `internalTrafficPolicy: Local`, terminating endpoints (KEP-1669), publishNotReadyAddresses,
//! the proxy labels, headless and ExternalName, hairpin, and type changes. Each check says
//! which pod answered and which client address the pod saw.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use proxy_common::stats::DropReason;
use proxy_tests::{
    CLIENT_IP, Place, Proto, Reply, SluiceDaemon,
    manifests::pods_yaml,
    scenario::{ALL_PODS, SPREAD_REQUESTS, SYNC_TIMEOUT, Scenario, pods},
    wait_for,
};
use proxy_user::datapath::Maps;
use serde_json::Value;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("valid address")
}

/// Short per-request timeout for requests that must be dropped.
const DROP_TIMEOUT: Duration = Duration::from_millis(300);
const POLL: Duration = Duration::from_millis(50);

/// One endpoint of a hand-written EndpointSlice: pod, ready, serving, terminating.
type SliceEndpoint<'a> = (&'a str, bool, bool, bool);

/// An EndpointSlice for `service` (ports `http` TCP 8080 and `dns` UDP 8053) with `endpoints`.
fn slice_yaml(scenario: &Scenario, service: &str, endpoints: &[SliceEndpoint<'_>]) -> String {
    let mut out = format!(
        "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {service}-1
  namespace: default
  labels: {{kubernetes.io/service-name: {service}}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
- {{name: dns, port: 8053, protocol: UDP}}
endpoints:
"
    );
    for (pod, ready, serving, terminating) in endpoints {
        let pod = scenario.cluster.pod(pod);
        let _ = writeln!(
            out,
            "- addresses: [{ip}]\n  nodeName: {node}\n  conditions: {{ready: {ready}, serving: \
             {serving}, terminating: {terminating}}}",
            ip = pod.ip,
            node = pod.node,
        );
    }
    out
}

/// A Service with ports `http` (TCP 80 → 8080) and `dns` (UDP 53 → 8053); `spec` is extra
/// YAML indented under `spec:`, `meta` extra YAML under `metadata:`.
fn service_yaml(name: &str, meta: &str, spec: &str) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
{meta}spec:
{spec}  ports:
  - {{name: http, port: 80, targetPort: 8080}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: 8053}}
"
    )
}

/// The port of the (first) `protocol` NodePort frontend among `rows`.
fn node_port_of(rows: &[Value], protocol: &str) -> u16 {
    rows.iter()
        .find(|r| r["kind"] == "NodePort" && r["protocol"] == protocol)
        .and_then(|r| r["frontend"].as_str()?.strip_prefix("*:")?.parse().ok())
        .unwrap_or_else(|| panic!("no {protocol} NodePort in {rows:#?}"))
}

/// The `status` of a LoadBalancer Service whose load balancer published `ip`.
fn lb_status(ip: Ipv4Addr) -> String {
    format!("status:\n  loadBalancer:\n    ingress: [{{ip: {ip}}}]\n")
}

/// The rows of `sluice services -o json` named `namespace/name[:port]` for `service`, and its
/// listings of what is not served (`namespace/name (...)`).
fn rows_of(daemon: &SluiceDaemon, service: &str) -> Vec<Value> {
    let prefix = format!("default/{service}");
    daemon
        .services_json()
        .as_array()
        .expect("an array")
        .iter()
        .filter(|row| {
            let name = row["name"].as_str().unwrap_or("");
            name == prefix
                || name.starts_with(&format!("{prefix}:"))
                || name.starts_with(&format!("{prefix} ("))
        })
        .cloned()
        .collect()
}

/// The (kind, frontend) pairs programmed for `service` on `daemon`.
fn frontends_of(daemon: &SluiceDaemon, service: &str) -> BTreeSet<(String, String)> {
    rows_of(daemon, service)
        .iter()
        .filter(|row| row["programmed"] == true)
        .map(|row| {
            (
                row["kind"].as_str().unwrap_or("").to_owned(),
                row["frontend"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Waits until `check` holds for the services rows of `service` on both nodes.
fn wait_rows(scenario: &Scenario, service: &str, what: &str, check: impl Fn(&[Value]) -> bool) {
    for node in ["node1", "node2"] {
        wait_for(
            &format!("{node}: {service}: {what}"),
            SYNC_TIMEOUT,
            POLL,
            || {
                let rows = rows_of(scenario.daemon(node), service);
                if check(&rows) {
                    return Ok(());
                }
                let stderr = scenario.daemon(node).stderr();
                Err(format!("rows: {rows:#?}\nstderr:\n{stderr}"))
            },
        );
    }
}

/// Waits until `service` is programmed on both nodes with `frontends` exactly.
fn wait_frontends(scenario: &Scenario, service: &str, frontends: &[(&str, String)]) {
    let wanted: BTreeSet<(String, String)> = frontends
        .iter()
        .map(|(kind, frontend)| ((*kind).to_owned(), frontend.clone()))
        .collect();
    for node in ["node1", "node2"] {
        let what = format!("{node}: {service} with frontends {wanted:?}");
        wait_for(&what, SYNC_TIMEOUT, POLL, || {
            let current = frontends_of(scenario.daemon(node), service);
            if current == wanted {
                return Ok(());
            }
            let stderr = scenario.daemon(node).stderr();
            Err(format!("frontends {current:?}\nstderr:\n{stderr}"))
        });
    }
}

/// Requests that must all time out (dropped, never answered nor refused).
fn assert_dropped(scenario: &Scenario, from: Place<'_>, addr: Ipv4Addr, port: u16) {
    let results = scenario
        .cluster
        .request_detailed(from, Proto::Tcp, addr, port, 3, DROP_TIMEOUT);
    for result in results {
        let err = result.expect_err(&format!("{addr}:{port} from {from:?} must be dropped"));
        assert!(
            err.starts_with("timeout"),
            "{addr}:{port} from {from:?}: expected a drop (timeout), got {err}"
        );
    }
}

/// Checks that every reply came from `expected` pods (all of them answering) and that each pod
/// saw `peer(reply)` as the client.
fn assert_replies(
    replies: &[Reply],
    expected: &[&str],
    peer: impl Fn(&Reply) -> Ipv4Addr,
    what: &str,
) {
    let answered: BTreeSet<String> = replies.iter().map(|r| r.name.clone()).collect();
    assert_eq!(answered, pods(expected), "{what}: which pods answered");
    for reply in replies {
        assert_eq!(
            reply.peer.ip(),
            peer(reply),
            "{what}: client seen by {reply:?}"
        );
    }
}

/// Entries in the node's service, metadata, source-range and skipped-service maps, read from
/// the pins: what a Service leaves behind when it goes.
fn map_entries(daemon: &SluiceDaemon) -> [usize; 4] {
    let maps = Maps::open_pinned(&daemon.config().pin_dir).expect("open the pinned maps");
    [
        maps.services.keys().count(),
        maps.service_meta.keys().count(),
        maps.source_ranges.keys().count(),
        maps.skipped.keys().count(),
    ]
}

/// `GET /` on `addr:port` from the client; returns (status code, body).
fn http_get(scenario: &Scenario, addr: Ipv4Addr, port: u16) -> (u16, Value) {
    let response = scenario
        .cluster
        .client()
        .netns
        .run_in(|| {
            let mut stream = TcpStream::connect_timeout(
                &SocketAddr::from((addr, port)),
                Duration::from_secs(2),
            )?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            stream.write_all(b"GET / HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            std::io::Result::Ok(response)
        })
        .expect("enter the client namespace")
        .unwrap_or_else(|e| panic!("GET {addr}:{port}: {e}"));
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {response}"));
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"));
    (status, body)
}

#[test]
fn load_balancer_ips_are_served_on_every_node_with_node_port_and_cluster_ip() {
    let scenario = Scenario::start(&[]);
    let (lb1, lb2) = (ip("198.19.200.1"), ip("198.19.200.2"));
    // The client reaches lb1 via node1 (the service range route) and lb2 via node2.
    let node2_ip = scenario.cluster.node("node2").ip;
    scenario
        .cluster
        .client()
        .netns
        .ip(&[
            "route",
            "add",
            "198.19.200.2/32",
            "via",
            &node2_ip.to_string(),
        ])
        .expect("route lb2 via node2");
    scenario.manifests.write(
        "lb.yaml",
        &format!(
            "{}status:\n  loadBalancer:\n    ingress: [{{ip: {lb1}}}, {{ip: {lb2}, ipMode: VIP}}]\n",
            service_yaml(
                "lb",
                "",
                "  type: LoadBalancer\n  clusterIP: 198.19.0.30\n  selector: {app: echo}\n"
            )
        ),
    );
    let rows_ready = |rows: &[Value]| {
        rows.iter().filter(|r| r["kind"] == "LoadBalancer").count() == 4
            && rows
                .iter()
                .all(|r| r["backends"].as_array().map_or(0, Vec::len) == 3)
    };
    wait_rows(
        &scenario,
        "lb",
        "4 LB frontends with 3 backends",
        rows_ready,
    );
    let rows = rows_of(&scenario.node1, "lb");
    assert!(
        rows.iter().all(|r| r["type"] == "LoadBalancer"),
        "{rows:#?}"
    );
    let node_port = node_port_of(&rows, "TCP");

    // Off-node clients: each LB IP through the node it is routed to; local backends see the
    // client, remote ones the entry node.
    for (lb, node) in [(lb1, "node1"), (lb2, "node2")] {
        let entry_ip = scenario.cluster.node(node).ip;
        for proto in [Proto::Tcp, Proto::UdpConnected] {
            let port = if proto == Proto::Tcp { 80 } else { 53 };
            let replies = scenario.replies(Place::Client, proto, lb, port, SPREAD_REQUESTS);
            let peer = |r: &Reply| {
                if scenario.cluster.node_of(&r.name).name == node {
                    CLIENT_IP
                } else {
                    entry_ip
                }
            };
            assert_replies(
                &replies,
                &ALL_PODS,
                peer,
                &format!("{proto} {lb} via {node}"),
            );
            for reply in &replies {
                assert_eq!(reply.remote, SocketAddr::from((lb, port)), "{reply:?}");
            }
        }
        // Its NodePort too.
        let replies = scenario.replies(Place::Client, Proto::Tcp, entry_ip, node_port, 20);
        let answered: BTreeSet<String> = replies.iter().map(|r| r.name.clone()).collect();
        assert_eq!(answered, pods(&ALL_PODS), "NodePort via {node}");
    }
    // In-cluster clients: the LB IPs and the cluster IP, no NAT.
    for target in [lb1, lb2, ip("198.19.0.30")] {
        let replies = scenario.replies(
            Place::Pod("pod-2a"),
            Proto::Tcp,
            target,
            80,
            SPREAD_REQUESTS,
        );
        let pod_ip = scenario.cluster.pod("pod-2a").ip;
        assert_replies(
            &replies,
            &ALL_PODS,
            |_| pod_ip,
            &format!("pod-2a to {target}"),
        );
    }
}

#[test]
fn load_balancer_source_ranges_drop_other_clients() {
    let scenario = Scenario::start(&[]);
    let lb = ip("198.19.200.5");
    let write = |ranges: &str| {
        scenario.manifests.write(
            "lb.yaml",
            &format!(
                "{}{}",
                service_yaml(
                    "ranged",
                    "",
                    &format!(
                        "  type: LoadBalancer\n  clusterIP: 198.19.0.31\n  \
                         loadBalancerSourceRanges: [{ranges}]\n  selector: {{app: echo}}\n"
                    ),
                ),
                lb_status(lb)
            ),
        );
    };
    // The client's own address is in range: it is served.
    write("203.0.113.0/24, 198.18.0.96/28");
    wait_rows(&scenario, "ranged", "source ranges programmed", |rows| {
        rows.iter().any(|r| {
            r["kind"] == "LoadBalancer"
                && r["source_ranges"].as_array().map_or(0, Vec::len) == 2
                && r["backends"].as_array().map_or(0, Vec::len) == 3
        })
    });
    let replies = scenario.replies(Place::Client, Proto::Tcp, lb, 80, SPREAD_REQUESTS);
    let node1_ip = scenario.cluster.node("node1").ip;
    let peer = |r: &Reply| {
        if r.name == "pod-2a" {
            node1_ip
        } else {
            CLIENT_IP
        }
    };
    assert_replies(&replies, &ALL_PODS, peer, "client inside the ranges");

    // The ranges move away from the client: its packets are dropped, nothing answers.
    write("203.0.113.0/24");
    wait_rows(&scenario, "ranged", "one source range", |rows| {
        rows.iter().any(|r| {
            r["kind"] == "LoadBalancer"
                && r["source_ranges"] == serde_json::json!(["203.0.113.0/24"])
        })
    });
    let dropped_before = scenario
        .node1
        .stats_count("drops", DropReason::SourceRange.as_str());
    assert_dropped(&scenario, Place::Client, lb, 80);
    assert!(
        scenario
            .node1
            .stats_count("drops", DropReason::SourceRange.as_str())
            >= dropped_before + 3,
        "node1 counts the drops"
    );
    // The cluster IP of the same service is not restricted.
    let answered = scenario.answering_pods(Place::Client, Proto::Tcp, ip("198.19.0.31"), 80, 10);
    assert!(!answered.is_empty());
}

#[test]
fn external_ips_are_served_from_off_node_and_from_local_processes() {
    let scenario = Scenario::start(&[]);
    let external = ip("198.19.210.1");
    scenario.manifests.write(
        "ext.yaml",
        &service_yaml(
            "ext",
            "",
            &format!(
                "  clusterIP: 198.19.0.32\n  externalIPs: [{external}]\n  selector: {{app: echo}}\n"
            ),
        ),
    );
    wait_frontends(
        &scenario,
        "ext",
        &[
            ("ClusterIP", "198.19.0.32:80".into()),
            ("ClusterIP", "198.19.0.32:53".into()),
            ("ExternalIP", format!("{external}:80")),
            ("ExternalIP", format!("{external}:53")),
        ],
    );
    scenario.wait_for_backends(
        "node1",
        &format!("{external}:80"),
        &ALL_PODS.map(|p| scenario.cluster.pod(p).ip),
    );
    // Arriving at node1 from the client.
    let node1_ip = scenario.cluster.node("node1").ip;
    for proto in [Proto::Tcp, Proto::UdpConnected] {
        let port = if proto == Proto::Tcp { 80 } else { 53 };
        let replies = scenario.replies(Place::Client, proto, external, port, SPREAD_REQUESTS);
        let peer = |r: &Reply| {
            if r.name == "pod-2a" {
                node1_ip
            } else {
                CLIENT_IP
            }
        };
        assert_replies(
            &replies,
            &ALL_PODS,
            peer,
            &format!("{proto} from the client"),
        );
    }
    // From local processes: a pod and a node process on each node.
    for from in [Place::Pod("pod-1a"), Place::Node("node2")] {
        let replies = scenario.replies(from, Proto::Tcp, external, 80, SPREAD_REQUESTS);
        let answered: BTreeSet<String> = replies.iter().map(|r| r.name.clone()).collect();
        assert_eq!(answered, pods(&ALL_PODS), "from {from:?}");
        if let Place::Pod(pod) = from {
            let pod_ip = scenario.cluster.pod(pod).ip;
            assert_replies(&replies, &ALL_PODS, |_| pod_ip, "from a pod");
        }
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn external_traffic_policy_local_keeps_the_client_address_and_answers_health_checks() {
    let scenario = Scenario::start(&[]);
    let node1_ip = scenario.cluster.node("node1").ip;
    let node2_ip = scenario.cluster.node("node2").ip;
    let spec = |cluster_ip: &str, hc: u16, selector: &str| {
        format!(
            "  type: LoadBalancer\n  clusterIP: {cluster_ip}\n  externalTrafficPolicy: Local\n  \
             healthCheckNodePort: {hc}\n{selector}"
        )
    };
    // `everywhere` has pods on both nodes; `only2a` only on node2 (an EndpointSlice).
    let everywhere = service_yaml(
        "everywhere",
        "",
        &spec("198.19.0.33", 30201, "  selector: {app: echo}\n"),
    )
    .replace("targetPort: 8080}", "targetPort: 8080, nodePort: 30200}")
        + &lb_status(ip("198.19.200.10"));
    let only2a = service_yaml("only2a", "", &spec("198.19.0.34", 30211, ""))
        .replace("targetPort: 8080}", "targetPort: 8080, nodePort: 30210}")
        + &lb_status(ip("198.19.200.11"));
    scenario.manifests.write(
        "local.yaml",
        &format!(
            "{everywhere}{only2a}{}",
            slice_yaml(&scenario, "only2a", &[("pod-2a", true, true, false)])
        ),
    );
    wait_rows(
        &scenario,
        "only2a",
        "programmed with its endpoint",
        |rows| {
            rows.iter().any(|r| {
                r["frontend"] == "*:30210"
                    && r["internal_backends"].as_array().map_or(0, Vec::len) == 1
            })
        },
    );
    wait_rows(&scenario, "everywhere", "programmed", |rows| {
        rows.iter().any(|r| {
            r["frontend"] == "*:30200" && r["internal_backends"].as_array().map_or(0, Vec::len) == 3
        })
    });
    let row = rows_of(&scenario.node1, "only2a")
        .into_iter()
        .find(|r| r["frontend"] == "*:30210")
        .expect("the NodePort row");
    assert_eq!(row["external_traffic_policy"], "Local");
    assert_eq!(row["health_check_node_port"], 30211);
    assert_eq!(row["no_local_endpoint"], true, "{row:#?}");

    // Off-node clients through each node: only that node's pods, and they see the client.
    for (node, node_ip) in [("node1", node1_ip), ("node2", node2_ip)] {
        let local: Vec<&str> = ALL_PODS
            .into_iter()
            .filter(|p| scenario.cluster.node_of(p).name == node)
            .collect();
        for proto in [Proto::Tcp, Proto::UdpConnected] {
            let port = if proto == Proto::Tcp { 30200 } else { 0 };
            if port == 0 {
                continue;
            }
            let replies = scenario.replies(Place::Client, proto, node_ip, port, SPREAD_REQUESTS);
            assert_replies(
                &replies,
                &local,
                |_| CLIENT_IP,
                &format!("NodePort via {node}"),
            );
        }
    }
    // The LB IP (routed via node1): node1's pods only, client address kept.
    let replies = scenario.replies(
        Place::Client,
        Proto::Tcp,
        ip("198.19.200.10"),
        80,
        SPREAD_REQUESTS,
    );
    assert_replies(
        &replies,
        &["pod-1a", "pod-1b"],
        |_| CLIENT_IP,
        "LB IP via node1",
    );

    // `only2a`: node2 serves it, node1 has no local endpoint and drops.
    let replies = scenario.replies(Place::Client, Proto::Tcp, node2_ip, 30210, 10);
    assert_replies(&replies, &["pod-2a"], |_| CLIENT_IP, "only2a via node2");
    assert_dropped(&scenario, Place::Client, node1_ip, 30210);
    assert_dropped(&scenario, Place::Client, ip("198.19.200.11"), 80);
    // In-cluster clients are not limited by the external policy: node1 reaches pod-2a.
    let replies = scenario.replies(Place::Node("node1"), Proto::Tcp, node1_ip, 30210, 10);
    let answered: BTreeSet<String> = replies.iter().map(|r| r.name.clone()).collect();
    assert_eq!(
        answered,
        pods(&["pod-2a"]),
        "node1 process to its own NodePort"
    );

    // Health checks, kube-proxy's shape.
    let (status, body) = http_get(&scenario, node2_ip, 30211);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"service": {"namespace": "default", "name": "only2a"},
            "localEndpoints": 1, "serviceProxyHealthy": true})
    );
    let (status, body) = http_get(&scenario, node1_ip, 30211);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["localEndpoints"], 0);
    let (status, body) = http_get(&scenario, node1_ip, 30201);
    assert_eq!((status, body["localEndpoints"].clone()), (200, 2.into()));
    // Only on the NodePort addresses (--node-ip here), as kube-proxy on its
    // --nodeport-addresses: not on loopback, where no load balancer probes.
    let loopback = scenario.cluster.node("node2").netns.run_in(|| {
        TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, 30211)),
            Duration::from_secs(2),
        )
        .map(drop)
    });
    assert!(
        loopback.expect("enter node2").is_err(),
        "the health check answers on 127.0.0.1"
    );
}

#[test]
fn internal_traffic_policy_local_keeps_clients_on_their_node() {
    let scenario = Scenario::start(&[]);
    scenario.manifests.write(
        "itp.yaml",
        &format!(
            "{}{}{}",
            service_yaml(
                "itp",
                "",
                "  clusterIP: 198.19.0.35\n  internalTrafficPolicy: Local\n  selector: {app: echo}\n"
            ),
            service_yaml(
                "itp2a",
                "",
                "  clusterIP: 198.19.0.36\n  internalTrafficPolicy: Local\n"
            ),
            slice_yaml(&scenario, "itp2a", &[("pod-2a", true, true, false)])
        ),
    );
    scenario.wait_for_backends(
        "node1",
        "198.19.0.35:80",
        &[ip("198.18.1.10"), ip("198.18.1.11")],
    );
    scenario.wait_for_backends("node2", "198.19.0.35:80", &[ip("198.18.2.10")]);
    scenario.wait_for_backends("node2", "198.19.0.36:80", &[ip("198.18.2.10")]);
    for (from, local) in [
        ("pod-1a", &["pod-1a", "pod-1b"][..]),
        ("pod-1b", &["pod-1a", "pod-1b"][..]),
        ("pod-2a", &["pod-2a"][..]),
    ] {
        let pod_ip = scenario.cluster.pod(from).ip;
        for proto in [Proto::Tcp, Proto::Udp] {
            let port = if proto == Proto::Tcp { 80 } else { 53 };
            let replies = scenario.replies(
                Place::Pod(from),
                proto,
                ip("198.19.0.35"),
                port,
                SPREAD_REQUESTS,
            );
            assert_replies(&replies, local, |_| pod_ip, &format!("{proto} from {from}"));
        }
    }
    let replies = scenario.replies(Place::Pod("pod-2a"), Proto::Tcp, ip("198.19.0.36"), 80, 5);
    assert_replies(
        &replies,
        &["pod-2a"],
        |_| ip("198.18.2.10"),
        "itp2a from pod-2a",
    );
    // node1 has no local endpoint for itp2a: its clients get nothing.
    let results =
        scenario
            .cluster
            .request(Place::Pod("pod-1a"), Proto::Tcp, ip("198.19.0.36"), 80, 3);
    assert!(results.iter().all(Result::is_err), "{results:?}");
}

#[test]
fn terminating_endpoints_serve_only_when_no_endpoint_is_ready_and_keep_their_connections() {
    let scenario = Scenario::start(&[]);
    let svc = ip("198.19.0.37");
    let node1_ip = scenario.cluster.node("node1").ip;
    let write = |endpoints: &[SliceEndpoint<'_>]| {
        scenario.manifests.write(
            "term.yaml",
            &format!(
                "{}{}",
                service_yaml("term", "", "  type: NodePort\n  clusterIP: 198.19.0.37\n")
                    .replace("targetPort: 8080}", "targetPort: 8080, nodePort: 30300}"),
                slice_yaml(&scenario, "term", endpoints)
            ),
        );
    };
    // pod-1b alone is ready: connections through both paths land on it and are held.
    write(&[
        ("pod-1a", false, false, false),
        ("pod-1b", true, true, false),
        ("pod-2a", false, false, false),
    ]);
    for node in ["node1", "node2"] {
        scenario.wait_for_backends(node, "198.19.0.37:80", &[ip("198.18.1.11")]);
    }
    let mut via_socket = scenario
        .cluster
        .hold(Place::Pod("pod-2a"), svc, 80)
        .expect("hold via the cluster IP");
    let mut via_xdp = scenario
        .cluster
        .hold(Place::Client, node1_ip, 30300)
        .expect("hold via node1's NodePort");
    assert_eq!(via_socket.greeting().name, "pod-1b");
    assert_eq!(via_xdp.greeting().name, "pod-1b");

    // pod-1b starts terminating while pod-1a and pod-2a are ready: new connections avoid it,
    // established ones keep working.
    write(&[
        ("pod-1a", true, true, false),
        ("pod-1b", false, true, true),
        ("pod-2a", true, true, false),
    ]);
    for node in ["node1", "node2"] {
        scenario.wait_for_backends(
            node,
            "198.19.0.37:80",
            &[ip("198.18.1.10"), ip("198.18.2.10")],
        );
    }
    let answered =
        scenario.answering_pods(Place::Pod("pod-2a"), Proto::Tcp, svc, 80, SPREAD_REQUESTS);
    assert_eq!(
        answered,
        pods(&["pod-1a", "pod-2a"]),
        "ready endpoints only"
    );
    let answered =
        scenario.answering_pods(Place::Client, Proto::Tcp, node1_ip, 30300, SPREAD_REQUESTS);
    assert_eq!(
        answered,
        pods(&["pod-1a", "pod-2a"]),
        "ready endpoints only, via XDP"
    );
    assert_eq!(
        via_socket
            .ping()
            .expect("socket flow to a terminating pod")
            .name,
        "pod-1b"
    );
    assert_eq!(
        via_xdp.ping().expect("XDP flow to a terminating pod").name,
        "pod-1b"
    );

    // No endpoint is ready any more: the serving-terminating one takes new connections.
    write(&[
        ("pod-1a", false, false, true),
        ("pod-1b", false, true, true),
        ("pod-2a", false, false, false),
    ]);
    scenario.wait_for_backends("node2", "198.19.0.37:80", &[ip("198.18.1.11")]);
    scenario.wait_for_backends("node1", "*:30300", &[ip("198.18.1.11")]);
    let replies = scenario.replies(Place::Client, Proto::Tcp, node1_ip, 30300, 10);
    assert_replies(
        &replies,
        &["pod-1b"],
        |_| CLIENT_IP,
        "terminating fallback via XDP",
    );
    let answered = scenario.answering_pods(Place::Pod("pod-2a"), Proto::Tcp, svc, 80, 10);
    assert_eq!(
        answered,
        pods(&["pod-1b"]),
        "terminating fallback via the socket path"
    );
    assert_eq!(via_xdp.ping().expect("still held").name, "pod-1b");
}

#[test]
fn publish_not_ready_addresses_serves_pods_that_are_not_ready() {
    let scenario = Scenario::start(&[]);
    // pod-1b is not ready: `echo` drops it, `pnr` keeps it.
    scenario.manifests.write(
        "pods.yaml",
        &pods_yaml(&scenario.cluster, |pod| pod != "pod-1b"),
    );
    scenario.manifests.write(
        "pnr.yaml",
        &service_yaml(
            "pnr",
            "",
            "  clusterIP: 198.19.0.38\n  publishNotReadyAddresses: true\n  selector: {app: echo}\n",
        ),
    );
    let all: Vec<Ipv4Addr> = ALL_PODS
        .iter()
        .map(|p| scenario.cluster.pod(p).ip)
        .collect();
    scenario.wait_for_backends("node1", "198.19.0.38:80", &all);
    scenario.wait_for_backends("node1", "198.19.0.10:80", &[all[0], all[2]]);
    let answered = scenario.answering_pods(
        Place::Pod("pod-1a"),
        Proto::Tcp,
        ip("198.19.0.38"),
        80,
        SPREAD_REQUESTS,
    );
    assert_eq!(answered, pods(&ALL_PODS));
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn proxy_labels_headless_and_external_name_are_listed_but_not_programmed() {
    let scenario = Scenario::start(&[]);
    let labelled = |label: &str| {
        service_yaml(
            "labelled",
            &format!("  labels: {{{label}}}\n"),
            "  clusterIP: 198.19.0.39\n  selector: {app: echo}\n",
        )
    };
    scenario.manifests.write(
        "skip.yaml",
        &format!(
            "{}{}---
apiVersion: v1
kind: Service
metadata: {{name: dns-only, namespace: default}}
spec: {{type: ExternalName, externalName: example.com}}
",
            labelled("service.kubernetes.io/service-proxy-name: other"),
            service_yaml(
                "headless",
                "",
                "  clusterIP: None\n  selector: {app: echo}\n"
            ),
        ),
    );
    let not_programmed = |service: &str, service_type: &str, reason: &str| {
        let reason = reason.to_owned();
        let service_type = service_type.to_owned();
        wait_rows(
            &scenario,
            service,
            "listed as not programmed",
            move |rows| {
                rows.len() == 1
                    && rows[0]["programmed"] == false
                    && rows[0]["type"] == service_type.as_str()
                    && rows[0]["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains(&reason))
            },
        );
    };
    not_programmed("labelled", "ClusterIP", "service-proxy-name");
    not_programmed("headless", "Headless", "headless");
    not_programmed("dns-only", "ExternalName", "ExternalName");
    let results = scenario.cluster.request_detailed(
        Place::Pod("pod-1a"),
        Proto::Tcp,
        ip("198.19.0.39"),
        80,
        2,
        DROP_TIMEOUT,
    );
    assert!(
        results.iter().all(Result::is_err),
        "not programmed: {results:?}"
    );
    // The table shows them too.
    let pin_dir = scenario
        .node1
        .config()
        .pin_dir
        .to_str()
        .expect("UTF-8")
        .to_owned();
    let table = scenario.node1.cli(&["services", "--pin-dir", &pin_dir]);
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with("default/headless") && l.contains("not programmed")),
        "{}",
        table.stdout
    );

    // The other label, then none: programmed again once the label goes.
    scenario.manifests.write(
        "skip.yaml",
        &labelled("service.kubernetes.io/headless: \"\""),
    );
    not_programmed("labelled", "ClusterIP", "service.kubernetes.io/headless");
    wait_rows(&scenario, "headless", "unlisted once deleted", |rows| {
        rows.is_empty()
    });
    scenario.manifests.write("skip.yaml", &labelled("team: a"));
    wait_frontends(
        &scenario,
        "labelled",
        &[
            ("ClusterIP", "198.19.0.39:80".into()),
            ("ClusterIP", "198.19.0.39:53".into()),
        ],
    );
    scenario.wait_for_backends(
        "node1",
        "198.19.0.39:80",
        &ALL_PODS.map(|p| scenario.cluster.pod(p).ip),
    );
    let answered = scenario.answering_pods(
        Place::Pod("pod-1a"),
        Proto::Tcp,
        ip("198.19.0.39"),
        80,
        SPREAD_REQUESTS,
    );
    assert_eq!(answered, pods(&ALL_PODS));
}

#[test]
fn hairpin_and_the_client_address_through_a_cluster_ip() {
    let scenario = Scenario::start(&[]);
    scenario.manifests.write(
        "hairpin.yaml",
        &format!(
            "{}{}",
            service_yaml("self", "", "  type: NodePort\n  clusterIP: 198.19.0.40\n")
                .replace("targetPort: 8080}", "targetPort: 8080, nodePort: 30400}"),
            slice_yaml(&scenario, "self", &[("pod-1a", true, true, false)])
        ),
    );
    for node in ["node1", "node2"] {
        scenario.wait_for_backends(node, "198.19.0.40:80", &[ip("198.18.1.10")]);
    }
    // pod-1a reaches itself through its service: by the cluster IP and by its node's NodePort.
    let pod_ip = scenario.cluster.pod("pod-1a").ip;
    let node1_ip = scenario.cluster.node("node1").ip;
    for (addr, port) in [(ip("198.19.0.40"), 80), (node1_ip, 30400)] {
        for proto in [Proto::Tcp, Proto::Udp] {
            let port = if proto == Proto::Udp && port == 80 {
                53
            } else {
                port
            };
            if proto == Proto::Udp && port == 30400 {
                continue;
            }
            let replies = scenario.replies(Place::Pod("pod-1a"), proto, addr, port, 5);
            assert_replies(
                &replies,
                &["pod-1a"],
                |_| pod_ip,
                &format!("{proto} {addr}:{port}"),
            );
        }
    }
    // Other pods keep their own address too (no SNAT for cluster IP traffic).
    for from in ["pod-1b", "pod-2a"] {
        let from_ip = scenario.cluster.pod(from).ip;
        let replies = scenario.replies(Place::Pod(from), Proto::Tcp, ip("198.19.0.40"), 80, 5);
        assert_replies(&replies, &["pod-1a"], |_| from_ip, &format!("from {from}"));
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn changing_the_type_reprograms_cleanly() {
    let scenario = Scenario::start(&[]);
    let write = |spec: &str| {
        scenario.manifests.write(
            "morph.yaml",
            // The status is read for type LoadBalancer only.
            &(service_yaml("morph", "", &format!("{spec}  selector: {{app: echo}}\n"))
                .replace("targetPort: 8080}", "targetPort: 8080, nodePort: 30500}")
                .replace("targetPort: 8053}", "targetPort: 8053, nodePort: 30501}")
                + &lb_status(ip("198.19.200.20"))),
        );
    };
    let cluster_ip = |port: u16| ("ClusterIP", format!("198.19.0.41:{port}"));
    let all: Vec<Ipv4Addr> = ALL_PODS
        .iter()
        .map(|p| scenario.cluster.pod(p).ip)
        .collect();
    let node2_ip = scenario.cluster.node("node2").ip;
    let check_node_port = |serving: bool| {
        if serving {
            let answered = scenario.answering_pods(
                Place::Client,
                Proto::Tcp,
                node2_ip,
                30500,
                SPREAD_REQUESTS,
            );
            assert_eq!(answered, pods(&ALL_PODS));
        } else {
            let results = scenario.cluster.request_detailed(
                Place::Client,
                Proto::Tcp,
                node2_ip,
                30500,
                2,
                DROP_TIMEOUT,
            );
            assert!(
                results.iter().all(Result::is_err),
                "NodePort must be gone: {results:?}"
            );
        }
    };

    let before = [map_entries(&scenario.node1), map_entries(&scenario.node2)];
    // A ClusterIP Service may not have nodePorts: written without them.
    scenario.manifests.write(
        "morph.yaml",
        &service_yaml(
            "morph",
            "",
            "  clusterIP: 198.19.0.41\n  selector: {app: echo}\n",
        ),
    );
    wait_frontends(&scenario, "morph", &[cluster_ip(80), cluster_ip(53)]);
    check_node_port(false);

    write("  type: NodePort\n  clusterIP: 198.19.0.41\n");
    wait_frontends(
        &scenario,
        "morph",
        &[
            cluster_ip(80),
            cluster_ip(53),
            ("NodePort", "*:30500".into()),
            ("NodePort", "*:30501".into()),
        ],
    );
    scenario.wait_for_backends("node2", "*:30500", &all);
    check_node_port(true);

    write(
        "  type: LoadBalancer\n  clusterIP: 198.19.0.41\n  externalTrafficPolicy: Local\n  \
         loadBalancerSourceRanges: [198.18.0.0/24]\n",
    );
    wait_frontends(
        &scenario,
        "morph",
        &[
            cluster_ip(80),
            cluster_ip(53),
            ("NodePort", "*:30500".into()),
            ("NodePort", "*:30501".into()),
            ("LoadBalancer", "198.19.200.20:80".into()),
            ("LoadBalancer", "198.19.200.20:53".into()),
        ],
    );
    let replies = scenario.replies(Place::Client, Proto::Tcp, node2_ip, 30500, 10);
    assert_replies(&replies, &["pod-2a"], |_| CLIENT_IP, "eTP Local via node2");

    // To ExternalName: nothing programmed, listed instead.
    scenario.manifests.write(
        "morph.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: morph, namespace: default}\n\
         spec: {type: ExternalName, externalName: example.com}\n",
    );
    wait_rows(&scenario, "morph", "only listed", |rows| {
        rows.len() == 1 && rows[0]["programmed"] == false
    });
    // Nothing of the LoadBalancer is left: no frontend, scope, metadata or source range; one
    // skipped-service entry more.
    let after = [map_entries(&scenario.node1), map_entries(&scenario.node2)];
    for (before, after) in before.iter().zip(after) {
        assert_eq!(after, [before[0], before[1], before[2], before[3] + 1]);
    }
    check_node_port(false);
    let results = scenario.cluster.request_detailed(
        Place::Pod("pod-1a"),
        Proto::Tcp,
        ip("198.19.200.20"),
        80,
        2,
        DROP_TIMEOUT,
    );
    assert!(
        results.iter().all(Result::is_err),
        "LB IP gone: {results:?}"
    );

    // And back to NodePort with the Cluster policy: every pod, the internal scope gone.
    write("  type: NodePort\n  clusterIP: 198.19.0.41\n");
    wait_frontends(
        &scenario,
        "morph",
        &[
            cluster_ip(80),
            cluster_ip(53),
            ("NodePort", "*:30500".into()),
            ("NodePort", "*:30501".into()),
        ],
    );
    scenario.wait_for_backends("node2", "*:30500", &all);
    for node in ["node1", "node2"] {
        let rows = rows_of(scenario.daemon(node), "morph");
        assert_eq!(rows.len(), 4, "{node}: {rows:#?}");
        assert!(
            rows.iter()
                .all(|r| r["internal_backends"].is_null() && r["programmed"] == true),
            "{node}: {rows:#?}"
        );
    }
    check_node_port(true);
}

#[test]
fn a_restart_keeps_scopes_source_ranges_and_skipped_services() {
    let mut scenario = Scenario::start(&[]);
    let lb = ip("198.19.200.30");
    scenario.manifests.write(
        "restart.yaml",
        &format!(
            "{}{}{}",
            service_yaml(
                "kept",
                "",
                "  type: LoadBalancer\n  clusterIP: 198.19.0.42\n  externalTrafficPolicy: Local\n  \
                 loadBalancerSourceRanges: [198.18.0.0/24]\n  selector: {app: echo}\n",
            ),
            lb_status(lb),
            service_yaml(
                "gone-dns",
                "",
                "  clusterIP: None\n  selector: {app: echo}\n"
            ),
        ),
    );
    wait_rows(&scenario, "kept", "programmed with ranges", |rows| {
        rows.iter().any(|r| {
            r["kind"] == "LoadBalancer"
                && r["source_ranges"].as_array().map_or(0, Vec::len) == 1
                && r["internal_backends"].as_array().map_or(0, Vec::len) == 3
        })
    });
    wait_rows(&scenario, "gone-dns", "listed", |rows| rows.len() == 1);
    let before = scenario.node1.services_json();
    let entries = map_entries(&scenario.node1);
    scenario.node1.restart();
    assert_eq!(
        scenario.node1.services_json(),
        before,
        "same rows, ids and backends"
    );
    assert_eq!(
        map_entries(&scenario.node1),
        entries,
        "no entry added or lost"
    );
    let replies = scenario.replies(Place::Client, Proto::Tcp, lb, 80, SPREAD_REQUESTS);
    assert_replies(
        &replies,
        &["pod-1a", "pod-1b"],
        |_| CLIENT_IP,
        "LB IP via node1 after a restart",
    );
}

/// Standalone mode with a NodePort range like a cluster's `--service-node-port-range`: an
/// explicit nodePort of 40000 and an allocated one, both from the range, served on every node;
/// an SCTP port beside them is listed as not served and leaves the TCP and UDP ports be.
#[test]
fn node_ports_follow_the_configured_range_and_an_sctp_port_leaves_the_others_served() {
    let scenario = Scenario::start(&["--service-node-port-range", "40000-40999"]);
    scenario.manifests.write(
        "wide.yaml",
        "apiVersion: v1
kind: Service
metadata: {name: wide, namespace: default}
spec:
  type: NodePort
  clusterIP: 198.19.0.45
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 40000}
  - {name: dns, port: 53, protocol: UDP, targetPort: 8053}
  - {name: signalling, port: 9000, protocol: SCTP, targetPort: 9000}
",
    );
    wait_rows(
        &scenario,
        "wide",
        "NodePorts and the SCTP listing",
        |rows| {
            rows.iter().filter(|r| r["kind"] == "NodePort").count() == 2
                && rows
                    .iter()
                    .any(|r| r["name"] == "default/wide (port signalling 9000/SCTP)")
        },
    );
    let rows = rows_of(&scenario.node1, "wide");
    let udp_node_port = node_port_of(&rows, "UDP");
    assert!(
        (40_000..=40_999).contains(&udp_node_port),
        "allocated from the range: {udp_node_port}"
    );
    let sctp = rows
        .iter()
        .find(|r| r["name"] == "default/wide (port signalling 9000/SCTP)")
        .expect("listed");
    assert_eq!(sctp["programmed"], false);
    assert!(
        sctp["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("SCTP is not served by sluice")),
        "{sctp:#}"
    );
    for node in ["node1", "node2"] {
        let node_ip = scenario.cluster.node(node).ip;
        for (proto, port) in [(Proto::Tcp, 40000), (Proto::UdpConnected, udp_node_port)] {
            let replies = scenario.replies(Place::Client, proto, node_ip, port, SPREAD_REQUESTS);
            let answered: BTreeSet<String> = replies.iter().map(|r| r.name.clone()).collect();
            assert_eq!(answered, pods(&ALL_PODS), "{proto} {node_ip}:{port}");
        }
    }
}

/// `--nodeport-addresses` as kube-proxy's: node1 has a second address, but NodePorts answer
/// only on the one inside the given range; the other is left to the node's own stack (no
/// listener there: refused). The cluster IP is not affected.
#[test]
fn nodeport_addresses_limit_where_node_ports_answer() {
    const SECOND: &str = "198.18.0.21";
    let mut cluster = proxy_tests::Cluster::new();
    cluster.start_pods();
    let node1 = cluster.node("node1");
    node1
        .netns
        .ip(&["addr", "add", &format!("{SECOND}/24"), "dev", "eth0"])
        .expect("a second address on node1");
    let node1_ip = node1.ip;
    let manifests = proxy_tests::manifests::ManifestDir::standard(&cluster);
    let daemon = SluiceDaemon::start(
        &cluster,
        "node1",
        manifests.path(),
        &[
            "--node-ip",
            SECOND,
            "--nodeport-addresses",
            &format!("{node1_ip}/32"),
        ],
    );
    assert!(
        daemon
            .stderr()
            .contains(&format!("node_port_addrs=[{node1_ip}")),
        "{}",
        daemon.stderr()
    );
    let node_port = proxy_tests::manifests::ECHO_NODE_PORT_TCP;
    assert_every_pod_answers(
        &cluster,
        Place::Client,
        node1_ip,
        node_port,
        &format!("NodePort on {node1_ip}"),
    );
    let refused = cluster.request(Place::Client, Proto::Tcp, ip(SECOND), node_port, 2);
    assert!(
        refused.iter().all(Result::is_err),
        "a NodePort answered on {SECOND}: {refused:?}"
    );
    // From a pod, the cluster IP is served as before.
    assert_every_pod_answers(
        &cluster,
        Place::Pod("pod-1a"),
        ip(proxy_tests::manifests::ECHO_IP),
        80,
        "cluster IP",
    );
}

/// Without `--node-ip`, NodePorts answer on the node's local addresses, and follow them:
/// an address added while the daemon runs serves NodePorts within moments (rtnetlink tells
/// the daemon), and one removed stops being a NodePort address.
#[test]
fn node_ports_follow_addresses_added_at_run_time() {
    const ADDED: &str = "198.18.0.22";
    let mut cluster = proxy_tests::Cluster::new();
    cluster.start_pods();
    let manifests = proxy_tests::manifests::ManifestDir::standard(&cluster);
    let config = proxy_tests::sluice::DaemonConfig::new(&cluster, "node1", manifests.path(), &[])
        .without_node_ip();
    let daemon = SluiceDaemon::launch(config).expect("sluice starts on node1");
    let node_port = proxy_tests::manifests::ECHO_NODE_PORT_TCP;
    let before = cluster.request(Place::Client, Proto::Tcp, ip(ADDED), node_port, 1);
    assert!(
        before[0].is_err(),
        "{ADDED} answered before it existed: {before:?}"
    );

    let node1 = cluster.node("node1");
    node1
        .netns
        .ip(&["addr", "add", &format!("{ADDED}/24"), "dev", "eth0"])
        .expect("add an address to node1");
    wait_for(&format!("NodePorts on {ADDED}"), SYNC_TIMEOUT, POLL, || {
        let answers = cluster.request(Place::Client, Proto::Tcp, ip(ADDED), node_port, 3);
        if answers.iter().all(Result::is_ok) {
            Ok(())
        } else {
            Err(format!("{answers:?}\n{}", daemon.stderr()))
        }
    });
    assert!(
        daemon.stderr().contains("node addresses changed"),
        "{}",
        daemon.stderr()
    );
    assert_every_pod_answers(
        &cluster,
        Place::Client,
        ip(ADDED),
        node_port,
        &format!("NodePort on {ADDED}"),
    );

    node1
        .netns
        .ip(&["addr", "del", &format!("{ADDED}/24"), "dev", "eth0"])
        .expect("remove it");
    wait_for(
        "the removed address leaves the node-address map",
        SYNC_TIMEOUT,
        POLL,
        || {
            let stderr = daemon.stderr();
            let changes: Vec<&str> = stderr
                .lines()
                .filter(|line| line.contains("node addresses changed"))
                .collect();
            match changes.as_slice() {
                [.., added, removed] if added.contains(ADDED) && !removed.contains(ADDED) => Ok(()),
                _ => Err(format!("{changes:#?}")),
            }
        },
    );
}

/// `SPREAD_REQUESTS` TCP requests from `from` to `addr:port` all succeed, and every pod
/// answers some (`what` names the target in a failure).
fn assert_every_pod_answers(
    cluster: &proxy_tests::Cluster,
    from: Place<'_>,
    addr: Ipv4Addr,
    port: u16,
    what: &str,
) {
    let answered: BTreeSet<String> = cluster
        .request(from, Proto::Tcp, addr, port, SPREAD_REQUESTS)
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{what}: {e}")))
        .collect();
    assert_eq!(answered, pods(&ALL_PODS), "{what}");
}

/// Node manifests with `nodes` as (name, zone, tainted for deletion).
fn nodes_yaml(nodes: &[(&str, &str, bool)]) -> String {
    let mut out = String::new();
    for (name, zone, tainted) in nodes {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: \
             {{topology.kubernetes.io/zone: {zone}}}\n"
        );
        if *tainted {
            out.push_str(
                "spec:\n  taints: [{key: ToBeDeletedByClusterAutoscaler, effect: NoSchedule}]\n",
            );
        }
    }
    out
}

/// Standalone topology: Node manifests give each node its zone and the Pods' endpoints the
/// hints the endpoint-slice controller would write for `trafficDistribution`
/// (`PreferSameZone`: the zone of the pod's node; `PreferSameNode`: its node, too), so each
/// node keeps its clients in its zone or on itself; a Node tainted for deletion fails
/// /healthz (not /livez), as in cluster mode.
#[test]
fn traffic_distribution_and_node_manifests_keep_traffic_close_and_drain_the_node() {
    const ZONAL: &str = "198.19.0.37";
    let scenario = Scenario::start(&[]);
    let zonal = |distribution: &str| {
        service_yaml(
            "zonal",
            "",
            &format!(
                "  clusterIP: {ZONAL}\n  selector: {{app: echo}}\n  trafficDistribution: \
                 {distribution}\n"
            ),
        )
    };
    let from_each_node = |node1: &[&str], node2: &[&str]| {
        let ips = |names: &[&str]| -> Vec<Ipv4Addr> {
            names
                .iter()
                .map(|name| scenario.cluster.pod(name).ip)
                .collect()
        };
        scenario.wait_for_backends("node1", &format!("{ZONAL}:80"), &ips(node1));
        scenario.wait_for_backends("node2", &format!("{ZONAL}:80"), &ips(node2));
        for (from, expected) in [("pod-1b", node1), ("pod-2a", node2)] {
            for proto in [Proto::Tcp, Proto::Udp] {
                let port = if proto == Proto::Tcp { 80 } else { 53 };
                let answering = scenario.answering_pods(
                    Place::Pod(from),
                    proto,
                    ip(ZONAL),
                    port,
                    SPREAD_REQUESTS,
                );
                assert_eq!(answering, pods(expected), "{proto} from {from}");
            }
        }
    };

    scenario.manifests.write(
        "nodes.yaml",
        &nodes_yaml(&[("node1", "zone-a", false), ("node2", "zone-b", false)]),
    );
    scenario
        .manifests
        .write("zonal.yaml", &zonal("PreferSameZone"));
    from_each_node(&["pod-1a", "pod-1b"], &["pod-2a"]);
    // node2 joins zone-a: one zone, every endpoint for both.
    scenario.manifests.write(
        "nodes.yaml",
        &nodes_yaml(&[("node1", "zone-a", false), ("node2", "zone-a", false)]),
    );
    from_each_node(&ALL_PODS, &ALL_PODS);
    // PreferSameNode: each node its own endpoints.
    scenario
        .manifests
        .write("zonal.yaml", &zonal("PreferSameNode"));
    from_each_node(&["pod-1a", "pod-1b"], &["pod-2a"]);

    let netns = &scenario.cluster.node("node1").netns;
    let get = |path: &str| {
        let (status, body) = proxy_tests::http::get(netns, "127.0.0.1:10256", path);
        let body: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body:?}"));
        (status, body)
    };
    let (status, body) = get("/healthz");
    assert!(status.starts_with("HTTP/1.1 200"), "{status} {body}");
    assert_eq!(body["nodeEligible"], true, "{body}");
    scenario.manifests.write(
        "nodes.yaml",
        &nodes_yaml(&[("node1", "zone-a", true), ("node2", "zone-a", false)]),
    );
    wait_for("node1's /healthz to fail", SYNC_TIMEOUT, POLL, || {
        let (status, body) = get("/healthz");
        if status.starts_with("HTTP/1.1 503") && body["nodeEligible"] == false {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    });
    let (status, body) = get("/livez");
    assert!(status.starts_with("HTTP/1.1 200"), "{status} {body}");
    // Still serving while it drains.
    from_each_node(&["pod-1a", "pod-1b"], &["pod-2a"]);
}
