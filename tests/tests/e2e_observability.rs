//! Inspection from the pins (`sluice conntrack`, `backends`, `stats`) and /metrics, after
//! known traffic: the counters must equal what was sent.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, SystemTime},
};

use proxy_tests::{
    CLIENT_IP, Cluster, Place, Proto, http,
    manifests::{
        ECHO_IP, ECHO_NODE_PORT_TCP, ECHO_NODE_PORT_UDP, EMPTY_NODE_PORT_TCP, EMPTY_NODE_PORT_UDP,
    },
    scenario::{ALL_PODS, SPREAD_REQUESTS, SYNC_TIMEOUT, Scenario},
    wait_until,
};

#[test]
fn conntrack_and_backends_show_what_the_datapath_holds() {
    let scenario = Scenario::start(&[]);
    let node1_ip = scenario.cluster.node("node1").ip;
    let mut held = scenario
        .cluster
        .hold(Place::Client, node1_ip, ECHO_NODE_PORT_TCP)
        .expect("open a connection through node1's NodePort");
    held.ping().expect("the connection answers");
    let pod = scenario.cluster.pod(&held.greeting().name);
    let remote = pod.node != "node1";

    let flows = scenario.node1.read_json("conntrack");
    let flows = flows.as_array().expect("an array");
    let flow = flows
        .iter()
        .find(|f| {
            f["client"]
                .as_str()
                .is_some_and(|c| c.starts_with(&format!("{CLIENT_IP}:")))
        })
        .unwrap_or_else(|| panic!("no flow from the client in {flows:#?}"));
    assert_eq!(flow["frontend"], format!("{node1_ip}:{ECHO_NODE_PORT_TCP}"));
    assert_eq!(flow["backend"], format!("{}:8080", pod.ip));
    assert_eq!(flow["service"], "default/echo:http");
    assert_eq!(flow["protocol"], "TCP");
    assert_eq!(flow["state"], "established");
    assert_eq!(
        flow["tier"], "established",
        "the backend's answers confirmed the flow: {flow}"
    );
    assert_eq!(
        flow["snat"].is_string(),
        remote,
        "SNAT only to a remote backend: {flow}"
    );

    // Filters.
    let pin_dir = scenario
        .cluster
        .node("node1")
        .pin_dir
        .to_string_lossy()
        .into_owned();
    let filtered = |args: &[&str]| -> usize {
        let mut all = vec!["conntrack", "-o", "json", "--pin-dir", &pin_dir];
        all.extend_from_slice(args);
        let out = scenario.node1.cli(&all);
        assert!(out.status.success(), "{}", out.stderr);
        let rows: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
        rows.as_array().expect("an array").len()
    };
    assert!(filtered(&["--client", &CLIENT_IP.to_string()]) >= 1);
    assert_eq!(filtered(&["--client", "198.18.0.99"]), 0);
    assert!(filtered(&["--service", "default/echo"]) >= 1);
    assert_eq!(filtered(&["--service", "default/empty"]), 0);

    let backends = scenario.node1.read_json("backends");
    let backends = backends.as_array().expect("an array");
    // Three pods, three target ports each (8080, 80, 8053).
    assert_eq!(backends.len(), 9, "{backends:#?}");
    let http_backend = backends
        .iter()
        .find(|b| b["addr"] == pod.ip.to_string() && b["port"] == 8080)
        .expect("the pod's 8080 backend");
    assert_eq!(http_backend["local"], !remote);
    let used_by: Vec<&str> = http_backend["used_by"]
        .as_array()
        .expect("used_by")
        .iter()
        .filter_map(|u| u.as_str())
        .collect();
    assert!(
        used_by.iter().any(|u| u.contains("198.19.0.10:80 TCP"))
            && used_by
                .iter()
                .any(|u| u.contains(&format!("*:{ECHO_NODE_PORT_TCP} TCP"))),
        "{used_by:?}"
    );
}

#[test]
fn metrics_report_syncs_and_map_fill() {
    let scenario = Scenario::start(&[]);
    let services = scenario.node1.services_json();
    let slots: usize = services
        .as_array()
        .expect("an array")
        .iter()
        .map(|row| 1 + row["backends"].as_array().map_or(0, Vec::len))
        .sum();
    let netns = &scenario.cluster.node("node1").netns;
    let mut text = String::new();
    // Samples are f64; a count below 2^32 converts exactly.
    let want = f64::from(u32::try_from(slots).expect("a few slots"));
    wait_until(SYNC_TIMEOUT, Duration::from_millis(50), || {
        let (status, body) = http::get(netns, "127.0.0.1:10249", "/metrics");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        text = body;
        http::sample(&text, "sluice_map_entries{map=\"SVC_V1\"}") == Some(want)
    });
    let (syncs, _) = http::histogram(&text, "kubeproxy_sync_proxy_rules_duration_seconds");
    assert!(syncs >= 1.0, "{text}");
    let last = http::last_sync(&text);
    assert!(last > 1.7e9, "a Unix time: {last}");
    assert_eq!(
        http::sample(&text, "sluice_map_max_entries{map=\"SVC_V1\"}"),
        Some(f64::from(proxy_common::map_sizes::SERVICES)),
        "{text}"
    );
    assert_eq!(
        http::sample(&text, "sluice_sync_errors_total"),
        Some(0.0),
        "{text}"
    );
}

/// A selectorless Service `timed` with two slices: `timed-1` (pod-1a) stamped with
/// `trigger`, and `timed-2` with `timed_2_pods` and no trigger time.
fn timed_yaml(cluster: &Cluster, trigger: SystemTime, timed_2_pods: &[&str]) -> String {
    let endpoints = |pods: &[&str]| -> String {
        let mut out = String::new();
        for pod in pods {
            let _ = writeln!(out, "  - {{addresses: [{}]}}", cluster.pod(pod).ip);
        }
        out
    };
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: timed, namespace: default}}
spec:
  clusterIP: 198.19.0.60
  ports: [{{name: http, port: 81, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: timed-1
  namespace: default
  labels: {{kubernetes.io/service-name: timed}}
  annotations: {{endpoints.kubernetes.io/last-change-trigger-time: \"{trigger}\"}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
{timed_1}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: timed-2
  namespace: default
  labels: {{kubernetes.io/service-name: timed}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
{timed_2}",
        trigger = humantime::format_rfc3339_nanos(trigger),
        timed_1 = endpoints(&["pod-1a"]),
        timed_2 = endpoints(timed_2_pods),
    )
}

#[test]
fn manifest_slices_with_a_trigger_time_are_timed() {
    const PROGRAMMING: &str = "kubeproxy_network_programming_duration_seconds";
    // Real time passing is what is measured; the trigger time must be after the daemons
    // started, or it is not timed (as in kube-proxy).
    const AGE: Duration = Duration::from_secs(1);
    let scenario = Scenario::start(&[]);
    let ready_at = SystemTime::now();
    let nodes = ["node1", "node2"];
    let netns = |node: &str| &scenario.cluster.node(node).netns;
    // The standard manifests have Pods, no slices: nothing timed.
    for node in nodes {
        let text = http::metrics(netns(node));
        assert_eq!(
            http::histogram(&text, PROGRAMMING),
            (0.0, 0.0),
            "{node}: {text}"
        );
    }
    std::thread::sleep(AGE.saturating_sub(ready_at.elapsed().unwrap_or_default()));
    let written_age = ready_at.elapsed().expect("the clock does not go back");
    scenario.manifests.write(
        "timed.yaml",
        &timed_yaml(&scenario.cluster, ready_at, &["pod-2a"]),
    );
    let mut last_sync = BTreeMap::new();
    for node in nodes {
        let mut text = String::new();
        wait_until(SYNC_TIMEOUT, Duration::from_millis(20), || {
            text = http::metrics(netns(node));
            http::histogram(&text, PROGRAMMING).0 >= 1.0
        });
        // One sample: timed-2 has no trigger time and gives none.
        let (count, sum) = http::histogram(&text, PROGRAMMING);
        assert_eq!(count, 1.0, "{node}: {text}");
        assert!(
            sum >= written_age.as_secs_f64(),
            "{node}: a change {written_age:?} old when written was timed at {sum} s"
        );
        last_sync.insert(node, (http::last_sync(&text), sum));
    }

    // Only the unstamped slice changes: synced, nothing more timed.
    scenario.manifests.write(
        "timed.yaml",
        &timed_yaml(&scenario.cluster, ready_at, &["pod-2a", "pod-1b"]),
    );
    for node in nodes {
        let (last, sum) = last_sync[node];
        let mut text = String::new();
        wait_until(SYNC_TIMEOUT, Duration::from_millis(20), || {
            text = http::metrics(netns(node));
            http::last_sync(&text) > last
        });
        assert_eq!(
            http::histogram(&text, PROGRAMMING),
            (1.0, sum),
            "{node}: {text}"
        );
    }
}

#[test]
fn counters_match_the_traffic_sent() {
    let scenario = Scenario::start(&[]);
    let node1_ip = scenario.cluster.node("node1").ip;

    // UDP through node1's NodePort: one datagram in and one reply out per request, each on a
    // new socket. A new socket is a new flow unless the kernel hands out a source port an
    // earlier one had (the flow's entry is still there): the flows are the distinct client
    // tuples the pods saw (the client's own, or node1's SNAT address and port).
    let replies = scenario.replies(
        Place::Client,
        Proto::UdpConnected,
        node1_ip,
        ECHO_NODE_PORT_UDP,
        SPREAD_REQUESTS,
    );
    let mut per_pod: BTreeMap<String, u64> = BTreeMap::new();
    let mut flows: BTreeMap<String, BTreeSet<SocketAddr>> = BTreeMap::new();
    for reply in &replies {
        *per_pod.entry(reply.name.clone()).or_default() += 1;
        flows
            .entry(reply.name.clone())
            .or_default()
            .insert(reply.peer);
    }
    // Refused: TCP and UDP to the service without endpoints.
    for (proto, port, count) in [
        (Proto::Tcp, EMPTY_NODE_PORT_TCP, 5),
        (Proto::UdpConnected, EMPTY_NODE_PORT_UDP, 3),
    ] {
        let results = scenario
            .cluster
            .request(Place::Client, proto, node1_ip, port, count);
        assert!(
            results
                .iter()
                .all(|r| r.as_ref().is_err_and(|e| e.starts_with("refused")))
        );
    }
    // Socket level: ten connections from a pod on node1 to the ClusterIP.
    let echo: Ipv4Addr = ECHO_IP.parse().expect("address");
    scenario.replies(Place::Pod("pod-1a"), Proto::Tcp, echo, 80, 10);

    let stats = scenario.node1.read_json("stats");
    for pod in ALL_PODS {
        let ip = scenario.cluster.pod(pod).ip.to_string();
        let backend = stats["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .find(|b| b["addr"] == ip && b["port"] == 8053)
            .unwrap_or_else(|| panic!("no stats for {pod}:8053 in {stats:#}"));
        let sent = per_pod.get(pod).copied().unwrap_or(0);
        assert_eq!(backend["packets_in"], sent, "{pod}: {backend}");
        assert_eq!(backend["packets_out"], sent, "{pod}: {backend}");
        let new_flows = flows.get(pod).map_or(0, BTreeSet::len) as u64;
        assert_eq!(backend["connections"], new_flows, "{pod}: {backend}");
    }
    let service = |frontend: &str, protocol: &str| {
        stats["services"]
            .as_array()
            .expect("services")
            .iter()
            .find(|s| s["frontend"] == frontend && s["protocol"] == protocol)
            .unwrap_or_else(|| panic!("no stats for {frontend} in {stats:#}"))
            .clone()
    };
    let node_port = service(&format!("*:{ECHO_NODE_PORT_UDP}"), "UDP");
    assert_eq!(node_port["packets_in"], SPREAD_REQUESTS, "{node_port}");
    assert_eq!(node_port["packets_out"], SPREAD_REQUESTS, "{node_port}");
    assert_eq!(service(&format!("{ECHO_IP}:80"), "TCP")["connections"], 10);
    let drops = stats["drops"].as_array().expect("drops");
    let no_endpoints = drops
        .iter()
        .find(|d| d["reason"] == "no_endpoints")
        .expect("the no_endpoints counter");
    assert_eq!(no_endpoints["count"], 8, "{drops:?}");

    // The same numbers in /metrics.
    let netns = &scenario.cluster.node("node1").netns;
    let (_, text) = http::get(netns, "127.0.0.1:10249", "/metrics");
    assert_eq!(
        http::sample(&text, "sluice_drops_total{reason=\"no_endpoints\"}"),
        Some(8.0),
        "{text}"
    );
    for (pod, sent) in &per_pod {
        let ip = scenario.cluster.pod(pod).ip;
        let series =
            format!("sluice_backend_packets_total{{backend=\"{ip}:8053\",direction=\"in\"}}");
        let sent = f64::from(u32::try_from(*sent).expect("a few packets"));
        assert_eq!(http::sample(&text, &series), Some(sent), "{series}\n{text}");
    }
}

#[test]
fn kernel_log_lines_switch_on_and_off_at_run_time() {
    let mut scenario = Scenario::start(&[]);
    let node1_ip = scenario.cluster.node("node1").ip;
    let pin_dir = scenario
        .cluster
        .node("node1")
        .pin_dir
        .to_string_lossy()
        .into_owned();
    let refuse = || {
        let results =
            scenario
                .cluster
                .request(Place::Client, Proto::Tcp, node1_ip, EMPTY_NODE_PORT_TCP, 1);
        assert!(results[0].as_ref().is_err_and(|e| e.starts_with("refused")));
    };
    let set_level = |level: &str| {
        let out = scenario
            .node1
            .cli(&["log-level", level, "--pin-dir", &pin_dir]);
        assert!(out.status.success(), "{}", out.stderr);
    };
    let lines = || scenario.node1.stderr().matches("xdp: flow refused").count();

    refuse(); // Off by default: no line.
    set_level("debug");
    refuse();
    wait_until(SYNC_TIMEOUT, Duration::from_millis(50), || lines() == 1);
    set_level("off");
    refuse();
    set_level("debug");
    refuse();
    // Records arrive in order: had either refusal while off written one, the count would
    // pass 2 before the last refusal's line arrives.
    wait_until(SYNC_TIMEOUT, Duration::from_millis(50), || lines() == 2);
    let stderr = scenario.node1.stderr();
    assert!(
        stderr.contains(&format!("frontend={node1_ip}:{EMPTY_NODE_PORT_TCP}"))
            && stderr.contains(&format!("client={CLIENT_IP}:")),
        "{stderr}"
    );

    // After a restart the programs are the same ones, taken from their pins: their lines go
    // to the pinned ring buffer, which the new daemon reads.
    scenario.node1.restart();
    scenario
        .node1
        .assert_ready_line_ends_with("programs: 0 verified, 11 reused");
    let out = scenario
        .node1
        .cli(&["log-level", "debug", "--pin-dir", &pin_dir]);
    assert!(out.status.success(), "{}", out.stderr);
    let results =
        scenario
            .cluster
            .request(Place::Client, Proto::Tcp, node1_ip, EMPTY_NODE_PORT_TCP, 1);
    assert!(results[0].as_ref().is_err_and(|e| e.starts_with("refused")));
    wait_until(SYNC_TIMEOUT, Duration::from_millis(50), || {
        scenario.node1.stderr().matches("xdp: flow refused").count() == 1
    });
}
