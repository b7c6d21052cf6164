//! Session affinity (`sessionAffinity: ClientIP`) end to end: stickiness on the socket path
//! (pods, per network namespace) and the packet path (off-node client, per source address),
//! expiry, switching on and off, and backends leaving.

use std::{collections::BTreeSet, fmt::Write as _, net::Ipv4Addr, time::Duration};

use proxy_tests::{
    Place, Proto,
    manifests::pods_yaml,
    scenario::{ALL_PODS, SPREAD_REQUESTS, SYNC_TIMEOUT, Scenario, pods},
};

/// `sticky`: the pods' TCP 8080 and UDP 8053 behind a ClusterIP and NodePorts.
const STICKY_IP: &str = "198.19.0.40";
const STICKY_NODE_PORT_TCP: u16 = 30400;
const STICKY_NODE_PORT_UDP: u16 = 30453;
const STICKY: &str = "default/sticky";
/// `sticky-slice`: like `sticky`, TCP only, with endpoints from an EndpointSlice.
const SLICE_IP: &str = "198.19.0.41";
const SLICE: &str = "default/sticky-slice";

const POLL: Duration = Duration::from_millis(100);

fn ip(text: &str) -> Ipv4Addr {
    text.parse().expect("valid address")
}

/// The `sessionAffinity` of `sticky`.
#[derive(Clone, Copy)]
enum Affinity {
    None,
    /// ClientIP with the default timeout.
    ClientIp,
    /// ClientIP with `timeoutSeconds`.
    ClientIpFor(u32),
}

fn sticky_yaml(affinity: Affinity) -> String {
    let affinity = match affinity {
        Affinity::None => "  sessionAffinity: None\n".to_owned(),
        Affinity::ClientIp => "  sessionAffinity: ClientIP\n".to_owned(),
        Affinity::ClientIpFor(t) => format!(
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: \
             {t}}}}}\n"
        ),
    };
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: sticky, namespace: default}}
spec:
  type: NodePort
  clusterIP: {STICKY_IP}
  selector: {{app: echo}}
{affinity}  ports:
  - {{name: http, port: 80, targetPort: http, nodePort: {STICKY_NODE_PORT_TCP}}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: dns, nodePort: {STICKY_NODE_PORT_UDP}}}
"
    )
}

/// The cluster with `sticky` (affinity as [`sticky_yaml`] says) programmed on both nodes.
fn start(affinity: Affinity) -> Scenario {
    let scenario = Scenario::start(&[]);
    scenario
        .manifests
        .write("sticky.yaml", &sticky_yaml(affinity));
    let all = all_pod_ips(&scenario);
    for node in ["node1", "node2"] {
        scenario.wait_for_backends(node, &format!("{STICKY_IP}:80"), &all);
        scenario.wait_for_backends(node, &format!("*:{STICKY_NODE_PORT_UDP}"), &all);
    }
    scenario
}

fn all_pod_ips(scenario: &Scenario) -> Vec<Ipv4Addr> {
    ALL_PODS
        .iter()
        .map(|pod| scenario.cluster.pod(pod).ip)
        .collect()
}

/// The pod that answered every one of `SPREAD_REQUESTS` requests; panics if several did.
fn the_one_pod(
    scenario: &Scenario,
    from: Place<'_>,
    proto: Proto,
    addr: Ipv4Addr,
    port: u16,
) -> String {
    let answered = scenario.answering_pods(from, proto, addr, port, SPREAD_REQUESTS);
    assert_eq!(
        answered.len(),
        1,
        "{proto} {addr}:{port} from {from:?}: {SPREAD_REQUESTS} connections must all reach one \
         backend, reached {answered:?}"
    );
    answered.into_iter().next().expect("one pod")
}

/// `sluice affinity -o json` entries of `service` on `node`: (client kind, client, backend).
fn entries(scenario: &Scenario, node: &str, service: &str) -> Vec<(String, String, String)> {
    let rows = scenario.daemon(node).read_json("affinity");
    rows.as_array()
        .expect("affinity -o json prints an array")
        .iter()
        .filter(|row| {
            row["service"]
                .as_str()
                .is_some_and(|s| s.starts_with(service))
        })
        .map(|row| {
            let field = |name: &str| row[name].as_str().unwrap_or("?").to_owned();
            (field("client_kind"), field("client"), field("backend"))
        })
        .collect()
}

#[track_caller]
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    proxy_tests::wait_for(what, timeout, POLL, || {
        cond().then_some(()).ok_or("not yet")
    });
}

#[test]
fn every_connection_of_a_client_reaches_the_same_backend() {
    let scenario = start(Affinity::ClientIp);
    let sticky = ip(STICKY_IP);

    // Socket path: ClusterIP from pods on both nodes, TCP and UDP (connected and not).
    for from in ["pod-1a", "pod-2a"] {
        for (proto, port) in [
            (Proto::Tcp, 80),
            (Proto::Udp, 53),
            (Proto::UdpConnected, 53),
        ] {
            the_one_pod(&scenario, Place::Pod(from), proto, sticky, port);
        }
    }
    // Packet path: NodePort from the off-node client through XDP on either node, and the
    // ClusterIP routed through node1.
    for node in ["node1", "node2"] {
        let node_ip = scenario.cluster.node(node).ip;
        for (proto, port) in [
            (Proto::Tcp, STICKY_NODE_PORT_TCP),
            (Proto::UdpConnected, STICKY_NODE_PORT_UDP),
            (Proto::Udp, STICKY_NODE_PORT_UDP),
        ] {
            the_one_pod(&scenario, Place::Client, proto, node_ip, port);
        }
    }
    the_one_pod(&scenario, Place::Client, Proto::Tcp, sticky, 80);

    // The table shows both kinds of client, with their backend.
    let node1 = entries(&scenario, "node1", STICKY);
    let client = proxy_tests::CLIENT_IP.to_string();
    assert!(
        node1
            .iter()
            .any(|(kind, c, _)| kind == "ip" && *c == client),
        "node1 lists the off-node client by address: {node1:?}"
    );
    assert!(
        node1.iter().any(|(kind, _, _)| kind == "netns"),
        "node1 lists pod-1a by its network namespace: {node1:?}"
    );
    let table = scenario.daemon("node1").cli(&[
        "affinity",
        "--pin-dir",
        scenario
            .daemon("node1")
            .config()
            .pin_dir
            .to_str()
            .expect("UTF-8"),
    ]);
    assert!(table.status.success(), "sluice affinity: {}", table.stderr);
    assert!(
        table.stdout.starts_with("SERVICE") && table.stdout.contains(STICKY),
        "sluice affinity prints a table:\n{}",
        table.stdout
    );
}

#[test]
fn after_the_timeout_a_client_may_move_and_over_many_expiries_reaches_every_backend() {
    let scenario = start(Affinity::ClientIpFor(2));
    let sticky = ip(STICKY_IP);
    let node1_ip = scenario.cluster.node("node1").ip;
    let mut from_pod = BTreeSet::new();
    let mut from_client = BTreeSet::new();
    for _ in 0..30 {
        if from_pod.len() == ALL_PODS.len() && from_client.len() == ALL_PODS.len() {
            break;
        }
        // Within the timeout a client sticks (each connection also refreshes the entry)...
        let count = 5;
        let answered = scenario.answering_pods(Place::Pod("pod-1a"), Proto::Tcp, sticky, 80, count);
        assert_eq!(answered.len(), 1, "pod-1a within the timeout: {answered:?}");
        from_pod.extend(answered);
        let answered = scenario.answering_pods(
            Place::Client,
            Proto::Tcp,
            node1_ip,
            STICKY_NODE_PORT_TCP,
            count,
        );
        assert_eq!(answered.len(), 1, "client within the timeout: {answered:?}");
        from_client.extend(answered);
        // ...and the daemon removes the expired entries in the background.
        wait_for(
            "the expired affinity entries leave node1's table",
            SYNC_TIMEOUT,
            || entries(&scenario, "node1", STICKY).is_empty(),
        );
    }
    assert_eq!(from_pod, pods(&ALL_PODS), "pod-1a over many expiries");
    assert_eq!(
        from_client,
        pods(&ALL_PODS),
        "the client over many expiries"
    );
}

#[test]
fn switching_affinity_off_spreads_and_back_on_sticks_again() {
    let scenario = start(Affinity::ClientIp);
    let sticky = ip(STICKY_IP);
    let node1_ip = scenario.cluster.node("node1").ip;
    the_one_pod(&scenario, Place::Pod("pod-1a"), Proto::Tcp, sticky, 80);
    the_one_pod(
        &scenario,
        Place::Client,
        Proto::Tcp,
        node1_ip,
        STICKY_NODE_PORT_TCP,
    );
    assert!(
        !entries(&scenario, "node1", STICKY).is_empty(),
        "node1 has affinity entries for the sticky service"
    );

    // Off: the entries go at once and connections spread.
    scenario
        .manifests
        .write("sticky.yaml", &sticky_yaml(Affinity::None));
    wait_for("node1 drops every sticky entry", SYNC_TIMEOUT, || {
        entries(&scenario, "node1", STICKY).is_empty()
    });
    let answered = scenario.answering_pods(
        Place::Pod("pod-1a"),
        Proto::Tcp,
        sticky,
        80,
        SPREAD_REQUESTS,
    );
    assert_eq!(answered, pods(&ALL_PODS), "pod-1a with affinity off");
    let answered = scenario.answering_pods(
        Place::Client,
        Proto::Tcp,
        node1_ip,
        STICKY_NODE_PORT_TCP,
        SPREAD_REQUESTS,
    );
    assert_eq!(answered, pods(&ALL_PODS), "the client with affinity off");
    assert!(
        entries(&scenario, "node1", STICKY).is_empty(),
        "no entries are written with affinity off"
    );

    // On again: as soon as a connection leaves an entry, every next one sticks to it.
    scenario
        .manifests
        .write("sticky.yaml", &sticky_yaml(Affinity::ClientIpFor(600)));
    wait_for("node1 remembers pod-1a again", SYNC_TIMEOUT, || {
        scenario.answering_pods(Place::Pod("pod-1a"), Proto::Tcp, sticky, 80, 1);
        !entries(&scenario, "node1", STICKY).is_empty()
    });
    the_one_pod(&scenario, Place::Pod("pod-1a"), Proto::Tcp, sticky, 80);
    the_one_pod(
        &scenario,
        Place::Client,
        Proto::Tcp,
        node1_ip,
        STICKY_NODE_PORT_TCP,
    );
}

#[test]
fn a_client_pinned_to_a_backend_that_stops_being_ready_moves() {
    let scenario = start(Affinity::ClientIp);
    let sticky = ip(STICKY_IP);
    let node1_ip = scenario.cluster.node("node1").ip;
    let pinned = the_one_pod(&scenario, Place::Pod("pod-1a"), Proto::Tcp, sticky, 80);
    let client_pinned = the_one_pod(
        &scenario,
        Place::Client,
        Proto::Tcp,
        node1_ip,
        STICKY_NODE_PORT_TCP,
    );

    scenario.manifests.write(
        "pods.yaml",
        &pods_yaml(&scenario.cluster, |pod| pod != pinned),
    );
    let staying: Vec<Ipv4Addr> = ALL_PODS
        .iter()
        .filter(|pod| **pod != pinned)
        .map(|pod| scenario.cluster.pod(pod).ip)
        .collect();
    for node in ["node1", "node2"] {
        scenario.wait_for_backends(node, &format!("{STICKY_IP}:80"), &staying);
        scenario.wait_for_backends(node, &format!("*:{STICKY_NODE_PORT_TCP}"), &staying);
    }
    let moved = the_one_pod(&scenario, Place::Pod("pod-1a"), Proto::Tcp, sticky, 80);
    assert_ne!(moved, pinned, "pod-1a left {pinned}, which is not ready");
    let client_now = the_one_pod(
        &scenario,
        Place::Client,
        Proto::Tcp,
        node1_ip,
        STICKY_NODE_PORT_TCP,
    );
    if client_pinned == pinned {
        assert_ne!(client_now, pinned, "the client left {pinned}");
    } else {
        assert_eq!(
            client_now, client_pinned,
            "another backend leaving does not move the client"
        );
    }
}

/// `sticky-slice` with endpoints from an EndpointSlice listing `members`.
fn slice_yaml(scenario: &Scenario, members: &[&str]) -> String {
    let mut out = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: sticky-slice, namespace: default}}
spec:
  clusterIP: {SLICE_IP}
  sessionAffinity: ClientIP
  ports:
  - {{name: http, port: 80}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: sticky-slice-1
  namespace: default
  labels: {{kubernetes.io/service-name: sticky-slice}}
addressType: IPv4
ports:
- {{name: http, protocol: TCP, port: 8080}}
endpoints:
"
    );
    for member in members {
        let pod = scenario.cluster.pod(member);
        let _ = writeln!(
            out,
            "- {{addresses: [\"{}\"], nodeName: {}, conditions: {{ready: true}}}}",
            pod.ip, pod.node
        );
    }
    out
}

#[test]
fn a_client_pinned_to_a_backend_removed_from_the_service_moves() {
    // The pods also serve `echo` on the same port: a backend removed from `sticky-slice`
    // stays in the backends map, so only the match check can end the affinity.
    let scenario = Scenario::start(&[]);
    scenario
        .manifests
        .write("slice.yaml", &slice_yaml(&scenario, &ALL_PODS));
    let all = all_pod_ips(&scenario);
    scenario.wait_for_backends("node1", &format!("{SLICE_IP}:80"), &all);
    let slice = ip(SLICE_IP);
    let pinned = the_one_pod(&scenario, Place::Pod("pod-1a"), Proto::Tcp, slice, 80);

    let staying: Vec<&str> = ALL_PODS.into_iter().filter(|p| *p != pinned).collect();
    scenario
        .manifests
        .write("slice.yaml", &slice_yaml(&scenario, &staying));
    let staying_ips: Vec<Ipv4Addr> = staying
        .iter()
        .map(|pod| scenario.cluster.pod(pod).ip)
        .collect();
    scenario.wait_for_backends("node1", &format!("{SLICE_IP}:80"), &staying_ips);
    let pinned_ip = scenario.cluster.pod(&pinned).ip;
    assert!(
        proxy_tests::scenario::backends_of(scenario.daemon("node1"), "198.19.0.10:80")
            .is_some_and(|echo| echo.contains(&pinned_ip)),
        "{pinned} still serves echo"
    );
    let moved = the_one_pod(&scenario, Place::Pod("pod-1a"), Proto::Tcp, slice, 80);
    assert_ne!(
        moved, pinned,
        "pod-1a left {pinned}, removed from the slice"
    );
    assert!(
        entries(&scenario, "node1", SLICE)
            .iter()
            .all(|(_, _, backend)| !backend.starts_with(&format!("{pinned_ip}:"))),
        "no entry points at {pinned} any more"
    );
}

#[test]
fn a_restart_keeps_every_client_on_its_backend() {
    let mut scenario = start(Affinity::ClientIp);
    let sticky = ip(STICKY_IP);
    let node1_ip = scenario.cluster.node("node1").ip;
    let from_pod = the_one_pod(&scenario, Place::Pod("pod-1a"), Proto::Tcp, sticky, 80);
    let from_client = the_one_pod(
        &scenario,
        Place::Client,
        Proto::Tcp,
        node1_ip,
        STICKY_NODE_PORT_TCP,
    );
    let before = entries(&scenario, "node1", STICKY);

    scenario.node1.restart();
    assert_eq!(
        entries(&scenario, "node1", STICKY),
        before,
        "the pinned affinity table survives a restart"
    );
    let pod_now = the_one_pod(&scenario, Place::Pod("pod-1a"), Proto::Tcp, sticky, 80);
    assert_eq!(pod_now, from_pod, "pod-1a after the restart");
    let client_now = the_one_pod(
        &scenario,
        Place::Client,
        Proto::Tcp,
        node1_ip,
        STICKY_NODE_PORT_TCP,
    );
    assert_eq!(client_now, from_client, "the client after the restart");
}
