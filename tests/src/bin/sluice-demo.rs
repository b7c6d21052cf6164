//! `cargo xtask demo`: a two-node netns cluster running `sluice run` on the manifests in
//! examples/, traffic to its ClusterIPs and NodePorts, which pod answered each request, and
//! what the maps hold. Everything it creates is removed when it ends.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use proxy_tests::{
    Cluster, Place, Proto, SERVICE_CIDR6, SluiceDaemon, http, workload::REQUEST_TIMEOUT,
};

const REQUESTS: usize = 6;

/// Exits non-zero when anything fails, a request included: `.ci/run` runs the demo as a test.
fn main() -> ExitCode {
    match demo() {
        Ok(0) => ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!("sluice-demo: {failed} requests went unanswered");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("sluice-demo: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the demo; returns how many requests failed.
#[expect(
    clippy::too_many_lines,
    reason = "the demo's steps in the order it prints them"
)]
fn demo() -> Result<usize> {
    let examples: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let examples = examples
        .canonicalize()
        .with_context(|| format!("examples directory {}", examples.display()))?;

    let mut cluster = Cluster::try_new().context("building the demo cluster")?;
    // The example pods declare tcp-echo 8080/TCP and udp-echo 8081/UDP.
    cluster.try_start_pods_with(&[8080], &[8081])?;
    println!("Sluice demo: a two-node cluster in network namespaces, manifests from examples/\n");
    for node in cluster.nodes() {
        let pods: Vec<String> = cluster
            .pods_on(&node.name)
            .map(|pod| format!("{} {} {}", pod.name, pod.ip, pod.ip6))
            .collect();
        println!(
            "  {} {} {}: {}",
            node.name,
            node.ip,
            node.ip6,
            pods.join(", ")
        );
    }
    println!(
        "  client {} (off-node, reaches nodes over the underlay)\n",
        cluster.client().ip
    );

    // Dual-stack: each node's IPv6 address and the IPv6 Service CIDR beside the IPv4 ones.
    let start = |node: &str| {
        let ip6 = cluster.node(node).ip6.to_string();
        let args = ["--node-ip", &ip6, "--service-cidr", SERVICE_CIDR6];
        SluiceDaemon::try_start(&cluster, node, &examples, &args)
    };
    let node1 = start("node1")?;
    let node2 = start("node2")?;
    println!("node1: {}", node1.ready_line());
    println!("node2: {}\n", node2.ready_line());

    let node1_ip = cluster.node("node1").ip;
    let node2_ip = cluster.node("node2").ip;
    let echo = Ipv4Addr::new(198, 19, 0, 10);
    let echo_slice = Ipv4Addr::new(198, 19, 0, 12);
    let cases = [
        (
            "ClusterIP echo, from pod-1a (socket-level LB)",
            Place::Pod("pod-1a"),
            Proto::Tcp,
            echo,
            80,
        ),
        (
            "ClusterIP echo UDP, from pod-2a (socket-level LB)",
            Place::Pod("pod-2a"),
            Proto::Udp,
            echo,
            53,
        ),
        (
            "ClusterIP echo-slice (EndpointSlice), from node2",
            Place::Node("node2"),
            Proto::Tcp,
            echo_slice,
            80,
        ),
        (
            "NodePort echo-nodeport via node1, from the client (XDP)",
            Place::Client,
            Proto::Tcp,
            node1_ip,
            30080,
        ),
        (
            "NodePort echo-nodeport UDP via node2, from the client (XDP)",
            Place::Client,
            Proto::UdpConnected,
            node2_ip,
            30081,
        ),
        (
            "NodePort on 127.0.0.1 from a node1 process",
            Place::Node("node1"),
            Proto::Tcp,
            Ipv4Addr::LOCALHOST,
            30080,
        ),
        (
            "LoadBalancer echo-lb (externalTrafficPolicy: Local) via node1, from the client",
            Place::Client,
            Proto::Tcp,
            Ipv4Addr::new(198, 19, 200, 1),
            80,
        ),
    ];
    // An AF_INET6 socket (the JVM's default) to the IPv4-mapped ClusterIP: translated to an
    // IPv4 pod, shown back as `::ffff:198.19.0.10`.
    let mapped = [(
        "ClusterIP echo from an AF_INET6 socket in pod-1b (IPv4-mapped address)",
        Place::Pod("pod-1b"),
        Proto::Tcp,
        IpAddr::V6(echo.to_ipv6_mapped()),
        80,
    )];
    // A dual-stack Service: the same pods behind an IPv4 and an IPv6 cluster IP.
    let dual4 = Ipv4Addr::new(198, 19, 0, 14);
    let dual6 = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x14);
    let dual = [
        (
            "Dual-stack ClusterIP echo-dual over IPv4, from pod-1a",
            Place::Pod("pod-1a"),
            Proto::Tcp,
            IpAddr::V4(dual4),
            80,
        ),
        (
            "Dual-stack ClusterIP echo-dual over IPv6, from pod-2a",
            Place::Pod("pod-2a"),
            Proto::Tcp,
            IpAddr::V6(dual6),
            80,
        ),
        (
            "Dual-stack ClusterIP echo-dual UDP over IPv6, from pod-1b",
            Place::Pod("pod-1b"),
            Proto::Udp,
            IpAddr::V6(dual6),
            53,
        ),
    ];
    let cases = cases
        .map(|(title, from, proto, addr, port)| (title, from, proto, IpAddr::V4(addr), port))
        .into_iter()
        .chain(mapped)
        .chain(dual);
    let mut failed = 0;
    for (title, from, proto, addr, port) in cases {
        println!("{title}: {proto} {}", SocketAddr::new(addr, port));
        let mut tally: BTreeMap<String, usize> = BTreeMap::new();
        for (i, result) in cluster
            .request_detailed(from, proto, addr, port, REQUESTS, REQUEST_TIMEOUT)
            .into_iter()
            .enumerate()
        {
            // No NAT on the socket path: the pod sees the client in the target's family (an
            // IPv4-mapped target reaches an IPv4 pod from the client's IPv4 address).
            let ipv4_target = match addr {
                IpAddr::V4(_) => true,
                IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
            };
            match result {
                Ok(reply)
                    if matches!(from, Place::Pod(_)) && reply.peer.is_ipv4() != ipv4_target =>
                {
                    println!(
                        "  request {} -> {} saw the client as {}: the wrong family",
                        i + 1,
                        reply.name,
                        reply.peer.ip()
                    );
                    failed += 1;
                }
                Ok(reply) => {
                    println!(
                        "  request {} -> {}  (it saw the client as {}; the client saw the answer \
                         from {})",
                        i + 1,
                        reply.name,
                        reply.peer.ip(),
                        reply.remote
                    );
                    *tally.entry(reply.name).or_default() += 1;
                }
                Err(err) => {
                    println!("  request {} failed: {err}", i + 1);
                    failed += 1;
                }
            }
        }
        let tally: Vec<String> = tally.iter().map(|(pod, n)| format!("{pod} x{n}")).collect();
        println!("  answered by: {}\n", tally.join(", "));
    }

    let pin_dir = cluster.node("node1").pin_dir.to_string_lossy().into_owned();
    for (title, command) in [
        (
            "sluice services on node1 (read from the pinned maps)",
            "services",
        ),
        ("sluice stats on node1: what the datapath counted", "stats"),
        (
            "sluice conntrack on node1: the flows XDP tracked",
            "conntrack",
        ),
    ] {
        println!("{title}:");
        let out = node1.try_cli(&[command, "--pin-dir", &pin_dir])?;
        print!("{}", out.stdout);
        anyhow::ensure!(
            out.status.success(),
            "sluice {command} failed: {}",
            out.stderr
        );
        println!();
    }
    println!("/metrics on node1 (excerpt):");
    let (_, metrics) = http::try_get(&cluster.node("node1").netns, "127.0.0.1:10249", "/metrics")?;
    for line in metrics.lines().filter(|line| {
        line.starts_with("kubeproxy_sync_proxy_rules_duration_seconds_count")
            || line.starts_with("kubeproxy_sync_proxy_rules_last_timestamp")
            || line.starts_with(
                "sluice_service_connections_total{service=\"default/echo-nodeport:tcp\"",
            )
            || line.starts_with("sluice_drops_total{reason=\"no_endpoints\"")
            || line.starts_with("sluice_map_entries{map=\"SVC_V1\"")
    }) {
        println!("  {line}");
    }
    println!();
    drop((node1, node2));
    drop(cluster);
    println!("Demo cluster removed (namespaces, cgroups, pins, processes).");
    Ok(failed)
}
