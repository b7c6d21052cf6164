//! Cluster mode end to end: `sluice run --kubeconfig` on both nodes of the netns cluster,
//! following an in-process fake API server (there is no real one on these machines) that
//! speaks list/watch with real Kubernetes JSON. Real TCP and UDP traffic shows what reached
//! the datapath.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant, SystemTime},
};

use proxy_tests::{
    Cluster, Place, Proto, SluiceDaemon,
    cluster_mode::{
        ClusterMode, SYNC_TIMEOUT, daemon_config, echo_slice_a, pod_ip, start, start_api,
        start_with,
    },
    fake_apiserver::{
        FakeApiServer, Resource,
        objects::{self, ready, with_trigger_time},
    },
    http,
    netns::Netns,
    scenario::{ALL_PODS, SPREAD_REQUESTS, pods},
    wait_until,
};
use serde_json::{Value, json};

const ECHO_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const ECHO_NODE_PORT: u16 = 30080;
const EXTRA_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 30);
const OTHER_PROXY_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 40);
const LATE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 50);
const TIMED_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 60);
const ODD_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 70);
/// kube-proxy's network programming latency histogram.
const PROGRAMMING: &str = "kubeproxy_network_programming_duration_seconds";

/// Requests on the echo Service from a pod on each node, over TCP and UDP.
fn assert_echo_served_by(mode: &ClusterMode, expected: &[&str]) {
    for from in [Place::Pod("pod-1a"), Place::Pod("pod-2a")] {
        mode.wait_for_answers(from, Proto::Tcp, ECHO_IP, 80, expected);
        mode.wait_for_answers(from, Proto::Udp, ECHO_IP, 53, expected);
    }
}

#[test]
fn services_and_endpoints_from_the_watch_reach_the_datapath() {
    let mode = start();
    // The first list: both slices merged, TCP and UDP, from pods on both nodes, through the
    // socket-level balancer, and from off the cluster through a node's XDP NodePort.
    for from in [Place::Pod("pod-1a"), Place::Pod("pod-2a")] {
        assert_eq!(
            mode.answering(from, Proto::Tcp, ECHO_IP, 80, SPREAD_REQUESTS),
            pods(&ALL_PODS),
            "TCP from {from:?}"
        );
        assert_eq!(
            mode.answering(from, Proto::Udp, ECHO_IP, 53, SPREAD_REQUESTS),
            pods(&ALL_PODS),
            "UDP from {from:?}"
        );
    }
    let node1_ip = mode.cluster.node("node1").ip;
    assert_eq!(
        mode.answering(
            Place::Client,
            Proto::Tcp,
            node1_ip,
            ECHO_NODE_PORT,
            SPREAD_REQUESTS
        ),
        pods(&ALL_PODS),
        "NodePort (from the API server's nodePort) from the client"
    );

    // Endpoint changes on the watch: pod-2a starts terminating (still serving), so only the
    // ready pods get new connections...
    let terminating = (pod_ip(&mode.cluster, "pod-2a"), "node2", false, true, true);
    mode.api.apply(objects::endpoint_slice(
        "echo-b",
        "echo",
        &[terminating],
        &[("http", "TCP", 8080), ("dns", "UDP", 8053)],
    ));
    assert_echo_served_by(&mode, &["pod-1a", "pod-1b"]);
    // ... until no ready endpoint is left: then serving-terminating ones take over (KEP-1669).
    mode.api.delete("EndpointSlice", "default", "echo-a");
    assert_echo_served_by(&mode, &["pod-2a"]);
    mode.api.apply(echo_slice_a(&mode.cluster, &["pod-1b"]));
    assert_echo_served_by(&mode, &["pod-1b"]);

    // A new Service appears; one labelled for another proxy, a headless one and an
    // ExternalName one are listed but never programmed.
    mode.api
        .simple_service(&mode.cluster, "extra", EXTRA_IP, &["pod-2a"], &[]);
    mode.api.simple_service(
        &mode.cluster,
        "other-proxy",
        OTHER_PROXY_IP,
        &["pod-1a"],
        &[("service.kubernetes.io/service-proxy-name", "other")],
    );
    mode.api.apply(objects::service(
        "dns-only",
        "ClusterIP",
        "None",
        &[("http", "TCP", 81, 8080, 0)],
        &[],
    ));
    mode.api.apply(objects::endpoint_slice(
        "dns-only-1",
        "dns-only",
        &[ready(pod_ip(&mode.cluster, "pod-1a"), "node1")],
        &[("http", "TCP", 8080)],
    ));
    mode.api
        .apply(objects::external_name_service("outside", "example.org"));
    for from in [Place::Pod("pod-1b"), Place::Node("node2")] {
        mode.wait_for_answers(from, Proto::Tcp, EXTRA_IP, 81, &["pod-2a"]);
    }
    for node in ["node1", "node2"] {
        assert!(
            mode.frontends_of(node, "default/other-proxy:http")
                .is_empty(),
            "{node} programmed a Service labelled for another proxy"
        );
        assert!(
            mode.frontends_of(node, "default/dns-only:http").is_empty(),
            "{node}: headless"
        );
        assert!(
            mode.frontends_of(node, "default/outside").is_empty(),
            "{node}: ExternalName"
        );
    }
    let refused = mode
        .cluster
        .request(Place::Pod("pod-1b"), Proto::Tcp, OTHER_PROXY_IP, 81, 1);
    assert!(refused[0].is_err(), "other-proxy answered: {refused:?}");

    // The Service goes: its address stops answering.
    mode.api.delete("Service", "default", "extra");
    mode.wait_for_answers(Place::Pod("pod-1b"), Proto::Tcp, EXTRA_IP, 81, &[]);
}

#[test]
fn a_relist_after_410_gone_loses_nothing() {
    let mut mode = start();
    mode.api
        .simple_service(&mode.cluster, "extra", EXTRA_IP, &["pod-2a"], &[]);
    mode.wait_for_answers(Place::Pod("pod-1a"), Proto::Tcp, EXTRA_IP, 81, &["pod-2a"]);
    let lists_before = mode.api.requests().len();

    // Changes the watches never deliver: an update, a deletion and an addition, then the
    // history is compacted and every watch ends with 410 Gone.
    mode.api.pause_watches();
    mode.api.apply(echo_slice_a(&mode.cluster, &["pod-1a"]));
    mode.api.delete("Service", "default", "extra");
    mode.api.delete("EndpointSlice", "default", "extra-1");
    mode.api
        .simple_service(&mode.cluster, "late", LATE_IP, &["pod-1b"], &[]);
    mode.api.expire_watches();

    for resource in [Resource::Services, Resource::EndpointSlices] {
        mode.api.wait_for_request(
            lists_before,
            SYNC_TIMEOUT,
            &format!("re-list of {resource:?} after 410"),
            |r| r.resource == Some(resource) && !r.watch,
        );
    }
    assert_echo_served_by(&mode, &["pod-1a", "pod-2a"]);
    mode.wait_for_answers(Place::Pod("pod-2a"), Proto::Tcp, LATE_IP, 81, &["pod-1b"]);
    mode.wait_for_answers(Place::Pod("pod-2a"), Proto::Tcp, EXTRA_IP, 81, &[]);
    for node in ["node1", "node2"] {
        assert!(
            mode.frontends_of(node, "default/extra:http").is_empty(),
            "{node} kept extra"
        );
    }
    assert!(mode.node1.is_running() && mode.node2.is_running());
}

#[test]
fn a_dropped_watch_resumes_from_its_resource_version() {
    let mut mode = start();
    // Changes the Node watch does not see (another resource): only bookmarks tell it how
    // far the server got.
    mode.api
        .simple_service(&mode.cluster, "extra", EXTRA_IP, &["pod-2a"], &[]);
    mode.wait_for_answers(Place::Pod("pod-1a"), Proto::Tcp, EXTRA_IP, 81, &["pod-2a"]);
    let bookmarked = mode.api.revision();
    // Both Node watches were told how far the server got.
    mode.api.wait_for_bookmarks(
        Resource::Nodes,
        &["metadata.name=node1", "metadata.name=node2"],
        bookmarked,
        SYNC_TIMEOUT,
    );

    // Changes held back, then every connection is cut mid-watch.
    mode.api.pause_watches();
    let revision_before = mode.api.revision();
    mode.api.apply(echo_slice_a(&mode.cluster, &["pod-1b"]));
    mode.api
        .simple_service(&mode.cluster, "late", LATE_IP, &["pod-2a"], &[]);
    let requests_before = mode.api.requests().len();
    mode.api.drop_connections();
    mode.api.resume_watches();

    // The watchers come back with the resourceVersion they had, and get what they missed.
    let resumed = mode.api.wait_for_request(
        requests_before,
        SYNC_TIMEOUT,
        "resumed Service watch",
        |r| r.resource == Some(Resource::Services) && r.watch,
    );
    let from: u64 = resumed
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or_else(|| panic!("resumed watch without a resourceVersion: {resumed:?}"));
    assert!(
        from > 0 && from <= revision_before,
        "resumed from {from}, before the cut the server was at {revision_before}"
    );
    let node_watch =
        mode.api
            .wait_for_request(requests_before, SYNC_TIMEOUT, "resumed Node watch", |r| {
                r.resource == Some(Resource::Nodes) && r.watch
            });
    assert_eq!(
        node_watch.resource_version,
        Some(bookmarked.to_string()),
        "the Node watch should resume from its last bookmark"
    );
    assert_echo_served_by(&mode, &["pod-1b", "pod-2a"]);
    mode.wait_for_answers(Place::Pod("pod-1a"), Proto::Tcp, LATE_IP, 81, &["pod-2a"]);
    let relisted = mode.api.requests()[requests_before..]
        .iter()
        .any(|r| r.resource == Some(Resource::Services) && !r.watch);
    assert!(!relisted, "a dropped connection should resume, not re-list");
    // Nothing restarted: the same daemons serve.
    assert!(mode.node1.is_running() && mode.node2.is_running());
}

#[test]
fn an_unreachable_api_server_leaves_traffic_flowing_and_the_daemon_catches_up() {
    const LOST: &str = "retrying with backoff";
    let mut mode = start();
    let mut held = mode
        .cluster
        .hold(Place::Pod("pod-1a"), ECHO_IP, 80)
        .unwrap_or_else(|e| panic!("hold a connection: {e}\n{}", mode.stderr()));
    let holder = held.greeting().name.clone();

    let lost_before = [&mode.node1, &mode.node2].map(|node| node.stderr().matches(LOST).count());
    mode.api.stop();
    // A change while the nodes cannot see it.
    mode.api.apply(echo_slice_a(&mode.cluster, &["pod-1a"]));
    mode.api
        .simple_service(&mode.cluster, "late", LATE_IP, &["pod-1b"], &[]);
    // Both daemons have noticed that the API server is gone.
    wait_until(SYNC_TIMEOUT, Duration::from_millis(50), || {
        [&mode.node1, &mode.node2]
            .iter()
            .zip(lost_before)
            .all(|(node, before)| node.stderr().matches(LOST).count() > before)
    });
    // The datapath keeps serving its last state: new and held connections alike.
    assert_eq!(
        mode.answering(
            Place::Pod("pod-2a"),
            Proto::Tcp,
            ECHO_IP,
            80,
            SPREAD_REQUESTS
        ),
        pods(&ALL_PODS)
    );
    assert_eq!(
        held.ping()
            .unwrap_or_else(|e| panic!("held connection broke: {e}"))
            .name,
        holder
    );
    assert!(
        mode.node1.is_running() && mode.node2.is_running(),
        "{}",
        mode.stderr()
    );
    assert!(
        mode.node1.stderr().contains("retrying"),
        "node1 does not say it is retrying:\n{}",
        mode.node1.stderr()
    );

    // The server comes back: the nodes catch up on what they missed.
    mode.api.start();
    assert_echo_served_by(&mode, &["pod-1a", "pod-2a"]);
    mode.wait_for_answers(Place::Pod("pod-2a"), Proto::Tcp, LATE_IP, 81, &["pod-1b"]);
    assert_eq!(
        held.ping()
            .unwrap_or_else(|e| panic!("held connection broke: {e}"))
            .name,
        holder
    );
}

/// Waits until both daemons have logged `text` more often than `before` counted.
fn wait_for_log(mode: &ClusterMode, text: &str, before: [usize; 2]) {
    wait_until(SYNC_TIMEOUT, Duration::from_millis(50), || {
        [&mode.node1, &mode.node2]
            .iter()
            .zip(before)
            .all(|(node, before)| node.stderr().matches(text).count() > before)
    });
}

fn log_counts(mode: &ClusterMode, text: &str) -> [usize; 2] {
    [&mode.node1, &mode.node2].map(|node| node.stderr().matches(text).count())
}

#[test]
fn an_object_sluice_cannot_decode_is_logged_and_holds_back_only_what_it_must() {
    const CHANGE: &str = "the API server sent a change sluice cannot decode";
    const LIST: &str = "the API server sent a list with an object sluice cannot decode";
    let mut mode = start();
    // A port as a string: the API server never sends it, k8s-openapi (so kube-rs) rejects it.
    let mut odd = objects::service(
        "odd",
        "ClusterIP",
        &ODD_IP.to_string(),
        &[("http", "TCP", 81, 8080, 0)],
        &[],
    );
    odd["spec"]["ports"][0]["port"] = json!("eighty-one");
    let (changes_before, lists_before) = (log_counts(&mode, CHANGE), log_counts(&mode, LIST));

    // In a watch: that change is skipped, said so, and the watch goes on.
    mode.api.apply(odd.clone());
    mode.api
        .simple_service(&mode.cluster, "extra", EXTRA_IP, &["pod-2a"], &[]);
    mode.wait_for_answers(Place::Pod("pod-1a"), Proto::Tcp, EXTRA_IP, 81, &["pod-2a"]);
    wait_for_log(&mode, CHANGE, changes_before);

    // In a list (a re-list after 410 Gone): the Services stay as last listed, and only they.
    let requests_before = mode.api.requests().len();
    mode.api.pause_watches();
    mode.api
        .simple_service(&mode.cluster, "late", LATE_IP, &["pod-1b"], &[]);
    mode.api.apply(echo_slice_a(&mode.cluster, &["pod-1a"]));
    mode.api.expire_watches();
    mode.api
        .wait_for_request(requests_before, SYNC_TIMEOUT, "re-list of Services", |r| {
            r.resource == Some(Resource::Services) && !r.watch
        });
    wait_for_log(&mode, LIST, lists_before);
    // The EndpointSlices re-listed: echo lost pod-1b.
    assert_echo_served_by(&mode, &["pod-1a", "pod-2a"]);
    mode.wait_for_answers(Place::Pod("pod-2a"), Proto::Tcp, EXTRA_IP, 81, &["pod-2a"]);
    for node in ["node1", "node2"] {
        assert!(
            mode.frontends_of(node, "default/late:http").is_empty(),
            "{node} programmed a Service from a list it could not read"
        );
    }
    assert!(
        mode.node1.is_running() && mode.node2.is_running(),
        "{}",
        mode.stderr()
    );

    // Fixed on the API server: the retried list reads, and what it held back arrives.
    odd["spec"]["ports"][0]["port"] = json!(81);
    mode.api.apply(odd);
    mode.wait_for_answers(Place::Pod("pod-2a"), Proto::Tcp, LATE_IP, 81, &["pod-1b"]);
    for node in ["node1", "node2"] {
        assert_eq!(
            mode.frontends_of(node, "default/odd:http"),
            BTreeSet::from([format!("{ODD_IP}:81")]),
            "{node}"
        );
    }
}

#[test]
fn a_restart_while_the_api_server_is_down_deletes_nothing_before_the_first_list() {
    let mut mode = start();
    mode.node1.kill();
    mode.api.stop();
    mode.node1.spawn_again();
    // The new daemon tried to list and failed: it must leave the pinned maps serving and not
    // say it is ready.
    wait_until(SYNC_TIMEOUT, Duration::from_millis(50), || {
        mode.node1.stderr().contains("retrying")
    });
    let answers = mode
        .cluster
        .request(Place::Pod("pod-1a"), Proto::Tcp, ECHO_IP, 80, 10);
    assert!(
        answers.iter().all(Result::is_ok),
        "services were disturbed while the API server was unreachable: {answers:?}"
    );
    assert!(
        !mode
            .node1
            .stdout()
            .contains(proxy_tests::sluice::READY_PREFIX),
        "sluice said it was ready before it listed anything:\n{}",
        mode.node1.stdout()
    );
    mode.api.start();
    mode.node1.wait_until_ready();
    assert_echo_served_by(&mode, &ALL_PODS);
}

/// Slice `name` of the `timed` Service with `pods`, stamped with `trigger` when given.
fn timed_slice(cluster: &Cluster, name: &str, pods: &[&str], trigger: Option<SystemTime>) -> Value {
    let endpoints: Vec<_> = pods
        .iter()
        .map(|pod| ready(pod_ip(cluster, pod), &cluster.pod(pod).node))
        .collect();
    let slice = objects::endpoint_slice(name, "timed", &endpoints, &[("http", "TCP", 8080)]);
    match trigger {
        Some(time) => with_trigger_time(slice, time),
        None => slice,
    }
}

/// /metrics of the daemon in `netns` once it has finished a sync after the one that set
/// `last_sync` (each change below is one sync).
fn metrics_after_sync(netns: &Netns, last_sync: f64) -> String {
    let mut text = String::new();
    wait_until(SYNC_TIMEOUT, Duration::from_millis(20), || {
        text = http::metrics(netns);
        http::last_sync(&text) > last_sync
    });
    text
}

#[test]
fn network_programming_latency_is_timed_from_each_slices_trigger_time() {
    // The latency measured is real time passing: the trigger time must be after the daemon
    // started (kube-proxy does not time older changes), and this old when the change
    // reaches the API server, so that it stands out from a sync's few milliseconds.
    const AGE: Duration = Duration::from_secs(2);
    let mut cluster = Cluster::new();
    cluster.start_pods();
    let api = start_api(&cluster);
    api.apply(objects::service(
        "timed",
        "ClusterIP",
        &TIMED_IP.to_string(),
        &[("http", "TCP", 81, 8080, 0)],
        &[],
    ));
    // Changed a few seconds before the daemon started, e.g. the last change before a
    // restart: the first list must not report it (nor the echo slices, which have no time).
    let before_start = SystemTime::now() - Duration::from_secs(5);
    api.apply(timed_slice(
        &cluster,
        "timed-1",
        &["pod-1a"],
        Some(before_start),
    ));
    let node1 = SluiceDaemon::launch(daemon_config(&cluster, &api, "node1"))
        .unwrap_or_else(|e| panic!("starting sluice on node1 in cluster mode: {e:#}"));
    let ready_at = SystemTime::now();
    let netns = &cluster.node("node1").netns;
    let text = http::metrics(netns);
    assert_eq!(http::histogram(&text, PROGRAMMING), (0.0, 0.0), "{text}");

    // A slice change without a trigger time: synced, not timed (nothing is made up).
    api.apply(objects::endpoint_slice(
        "echo-b",
        "echo",
        &[(pod_ip(&cluster, "pod-2a"), "node2", false, true, true)],
        &[("http", "TCP", 8080), ("dns", "UDP", 8053)],
    ));
    let text = metrics_after_sync(netns, http::last_sync(&text));
    assert_eq!(http::histogram(&text, PROGRAMMING), (0.0, 0.0), "{text}");

    // Two slices change for a Pod change at `ready_at`: one sample each, at least as old as
    // the trigger time was when the API server got them.
    let age = ready_at.elapsed().unwrap_or_default();
    std::thread::sleep(AGE.saturating_sub(age));
    let injected_age = ready_at.elapsed().expect("the clock does not go back");
    api.apply(timed_slice(
        &cluster,
        "timed-1",
        &["pod-1a", "pod-1b"],
        Some(ready_at),
    ));
    api.apply(timed_slice(
        &cluster,
        "timed-2",
        &["pod-2a"],
        Some(ready_at),
    ));
    let mut text = String::new();
    wait_until(SYNC_TIMEOUT, Duration::from_millis(20), || {
        text = http::metrics(netns);
        http::histogram(&text, PROGRAMMING).0 >= 2.0
    });
    let (count, sum) = http::histogram(&text, PROGRAMMING);
    assert_eq!(count, 2.0, "{text}");
    assert!(
        sum >= 2.0 * injected_age.as_secs_f64(),
        "two changes {injected_age:?} old when the API server got them sum to {sum} s:\n{text}"
    );

    // timed-2 changes again (pod-2a terminates) with the same trigger time: synced, but
    // already timed.
    let terminating = (pod_ip(&cluster, "pod-2a"), "node2", false, true, true);
    let slice =
        objects::endpoint_slice("timed-2", "timed", &[terminating], &[("http", "TCP", 8080)]);
    api.apply(with_trigger_time(slice, ready_at));
    let text = metrics_after_sync(netns, http::last_sync(&text));
    assert_eq!(http::histogram(&text, PROGRAMMING), (count, sum), "{text}");
    let services = node1.services_json();
    let timed = services
        .as_array()
        .expect("services -o json is an array")
        .iter()
        .find(|row| row["name"] == "default/timed:http" && row["programmed"] == true)
        .unwrap_or_else(|| panic!("timed is not programmed: {services:#}"));
    let backends: BTreeSet<&str> = timed["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .filter_map(|backend| backend["addr"].as_str())
        .collect();
    let ready_pods: BTreeSet<String> = ["pod-1a", "pod-1b"]
        .iter()
        .map(|pod| pod_ip(&cluster, pod).to_string())
        .collect();
    assert_eq!(
        backends,
        ready_pods.iter().map(String::as_str).collect(),
        "timed-1's ready pods, not the terminating one: {timed:#}"
    );
}

/// `dual`: a dual-stack NodePort Service (198.19.0.80 and `fd00:19::80`, port 80 → 8080,
/// NodePort 30081) with pod-1a behind it, by a slice of each family.
fn apply_dual_stack_service(api: &FakeApiServer, cluster: &Cluster) {
    let mut service = objects::service(
        "dual",
        "NodePort",
        "198.19.0.80",
        &[("http", "TCP", 80, 8080, 30081)],
        &[],
    );
    service["spec"]["clusterIPs"] = json!(["198.19.0.80", "fd00:19::80"]);
    service["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
    service["spec"]["ipFamilyPolicy"] = json!("RequireDualStack");
    api.apply(service);
    let pod = cluster.pod("pod-1a");
    api.apply(objects::endpoint_slice(
        "dual-v4",
        "dual",
        &[ready(pod.ip, "node1")],
        &[("http", "TCP", 8080)],
    ));
    let mut slice6 = objects::endpoint_slice(
        "dual-v6",
        "dual",
        &[ready(pod.ip, "node1")],
        &[("http", "TCP", 8080)],
    );
    slice6["addressType"] = json!("IPv6");
    slice6["endpoints"][0]["addresses"] = json!([pod.ip6.to_string()]);
    api.apply(slice6);
}

/// Without `--node-ip`, a node's addresses are its Node's `InternalIP` addresses, as
/// kube-proxy takes them: node1 reports both families and serves the IPv6 NodePort; node2
/// reports only IPv4, so it serves IPv4 only though its interface has an IPv6 address too.
#[test]
fn without_node_ip_the_nodes_internal_ips_decide_its_addresses_and_families() {
    let mut cluster = Cluster::new();
    cluster.start_pods();
    let api =
        FakeApiServer::start_in(&[&cluster.node("node1").netns, &cluster.node("node2").netns]);
    let node1 = cluster.node("node1");
    api.apply(objects::node("node1", &[node1.ip.into(), node1.ip6.into()]));
    api.apply(objects::node("node2", &[cluster.node("node2").ip.into()]));
    apply_dual_stack_service(&api, &cluster);
    let start = |node: &str| {
        SluiceDaemon::launch(daemon_config(&cluster, &api, node).without_node_ip())
            .unwrap_or_else(|e| panic!("starting sluice on {node} in cluster mode: {e:#}"))
    };
    let daemon1 = start("node1");
    let daemon2 = start("node2");

    // node1: the IPv6 NodePort on its IPv6 InternalIP, from off the cluster, reaches pod-1a.
    let pod = cluster.pod("pod-1a");
    for target in [
        SocketAddr::new(node1.ip.into(), 30081),
        SocketAddr::new(node1.ip6.into(), 30081),
    ] {
        let replies =
            cluster.request_to(Place::Client, Proto::Tcp, target, 3, Duration::from_secs(5));
        for reply in replies {
            let reply = reply.unwrap_or_else(|e| panic!("{target}: {e}\n{}", daemon1.stderr()));
            assert_eq!(reply.name, "pod-1a", "{target}");
            assert_eq!(
                reply.local,
                SocketAddr::new(
                    if target.is_ipv4() {
                        pod.ip.into()
                    } else {
                        pod.ip6.into()
                    },
                    8080,
                ),
                "{target}"
            );
        }
    }

    // node2: the IPv6 cluster IP is listed as skipped, for the node has no IPv6 address.
    let rows = daemon2.read_json("services");
    let skipped: Vec<&Value> = rows
        .as_array()
        .expect("services -o json prints an array")
        .iter()
        .filter(|row| {
            row["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("default/dual"))
                && row["programmed"] == false
        })
        .collect();
    assert_eq!(skipped.len(), 1, "{rows:#}");
    let reason = skipped[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("fd00:19::80") && reason.contains("no IPv6 address"),
        "{reason}"
    );
}

const WIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 80);
const MIXED_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 81);
const LB_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 82);
/// Published by the load balancer with `ipMode: VIP`, with `ipMode: Proxy`, and requested in
/// `spec.loadBalancerIP` only.
const LB_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 81);
const LB_PROXY: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 82);
const LB_REQUESTED: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 83);

/// The rows `sluice services -o json` lists under `name` (programmed or not).
fn listed(daemon: &SluiceDaemon, name: &str) -> Vec<Value> {
    daemon
        .services_json()
        .as_array()
        .expect("services -o json is an array")
        .iter()
        .filter(|row| row["name"] == name)
        .cloned()
        .collect()
}

/// Services the API server accepts but sluice's standalone checks would not, programmed as
/// kube-proxy programs them: a nodePort outside 30000-32767 (clusters set
/// `--service-node-port-range`), an SCTP port beside a TCP one (only the SCTP port is left
/// out, and listed), and LoadBalancer IPs as kube-proxy picks them (only `ipMode: VIP` ingress
/// IPs; not `ipMode: Proxy`, not `spec.loadBalancerIP`).
#[test]
fn every_service_the_api_server_accepts_is_programmed_as_far_as_the_datapath_can() {
    let mode = start();
    let all = ["pod-1a", "pod-1b", "pod-2a"];
    let endpoints: Vec<_> = all
        .iter()
        .map(|pod| ready(pod_ip(&mode.cluster, pod), &mode.cluster.pod(pod).node))
        .collect();
    mode.api.apply(objects::service(
        "wide",
        "NodePort",
        &WIDE_IP.to_string(),
        &[("http", "TCP", 80, 8080, 40000)],
        &[],
    ));
    mode.api.apply(objects::endpoint_slice(
        "wide-1",
        "wide",
        &endpoints,
        &[("http", "TCP", 8080)],
    ));
    mode.api.apply(objects::service(
        "mixed",
        "ClusterIP",
        &MIXED_IP.to_string(),
        &[
            ("http", "TCP", 81, 8080, 0),
            ("signalling", "SCTP", 9000, 9000, 0),
        ],
        &[],
    ));
    mode.api.apply(objects::endpoint_slice(
        "mixed-1",
        "mixed",
        &endpoints,
        &[("http", "TCP", 8080), ("signalling", "SCTP", 9000)],
    ));
    let mut lb = objects::service(
        "lb",
        "LoadBalancer",
        &LB_CLUSTER_IP.to_string(),
        &[("http", "TCP", 80, 8080, 31081)],
        &[],
    );
    lb["spec"]["loadBalancerIP"] = json!(LB_REQUESTED.to_string());
    lb["status"]["loadBalancer"]["ingress"] = json!([
        {"ip": LB_VIP.to_string(), "ipMode": "VIP"},
        {"ip": LB_PROXY.to_string(), "ipMode": "Proxy"},
    ]);
    mode.api.apply(lb);
    mode.api.apply(objects::endpoint_slice(
        "lb-1",
        "lb",
        &endpoints,
        &[("http", "TCP", 8080)],
    ));

    // nodePort 40000, from off the cluster through each node's XDP.
    for node in ["node1", "node2"] {
        let node_ip = mode.cluster.node(node).ip;
        mode.wait_for_answers(Place::Client, Proto::Tcp, node_ip, 40000, &all);
    }
    // The TCP port of the Service with an SCTP port; the SCTP port listed with the reason.
    mode.wait_for_answers(Place::Pod("pod-1a"), Proto::Tcp, MIXED_IP, 81, &all);
    for daemon in [&mode.node1, &mode.node2] {
        let sctp = listed(daemon, "default/mixed (port signalling 9000/SCTP)");
        assert_eq!(sctp.len(), 1, "{sctp:#?}\n{}", mode.stderr());
        assert_eq!(sctp[0]["programmed"], false);
        let reason = sctp[0]["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("SCTP is not served by sluice"),
            "{reason}"
        );
    }
    // Only the VIP-mode address of the load balancer answers on the nodes.
    mode.wait_for_answers(Place::Pod("pod-2a"), Proto::Tcp, LB_VIP, 80, &all);
    for node in ["node1", "node2"] {
        let lb_frontends: BTreeSet<String> = mode
            .frontends_of(node, "default/lb:http")
            .into_iter()
            .filter(|frontend| frontend.starts_with("198.19.200."))
            .collect();
        assert_eq!(
            lb_frontends,
            BTreeSet::from([format!("{LB_VIP}:80")]),
            "{node}"
        );
    }
    // A pod's connection to the Proxy-mode address is not short-circuited to a pod: it is
    // left to the network, where (in this test) no load balancer answers.
    let to_proxy = mode
        .cluster
        .request(Place::Pod("pod-1b"), Proto::Tcp, LB_PROXY, 80, 1);
    assert!(
        to_proxy[0].is_err(),
        "a pod answered {LB_PROXY}: {to_proxy:?}"
    );
}

/// `/healthz` and `/livez` as kube-proxy answers them: healthy once synced; when the Node is
/// tainted `ToBeDeletedByClusterAutoscaler` or being deleted, /healthz says 503 with
/// `nodeEligible: false` (load balancers drain the node) while /livez stays 200 (the proxy
/// itself is fine, so it is not restarted); each answer is counted in
/// `kubeproxy_proxy_healthz_total` / `kubeproxy_proxy_livez_total`.
#[test]
fn a_node_tainted_or_being_deleted_fails_healthz_but_not_livez() {
    let mode = start();
    let netns = &mode.cluster.node("node1").netns;
    let get = |path: &str| {
        let (status, body) = http::get(netns, "127.0.0.1:10256", path);
        let body: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body:?}"));
        (status, body)
    };
    let (status, body) = get("/healthz");
    assert!(status.starts_with("HTTP/1.1 200"), "{status} {body}");
    assert_eq!(
        (body["healthy"].clone(), body["nodeEligible"].clone()),
        (json!(true), json!(true)),
        "{body}"
    );
    assert_eq!(body["status"]["IPv4"]["healthy"], true, "{body}");
    let (status, body) = get("/livez");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(body.get("nodeEligible").is_none(), "{body}");

    let node1_ip = mode.cluster.node("node1").ip;
    let mut tainted = objects::node("node1", &[node1_ip.into()]);
    tainted["spec"]["taints"] = json!([
        {"key": "ToBeDeletedByClusterAutoscaler", "value": "1700000000", "effect": "NoSchedule"}
    ]);
    mode.api.apply(tainted);
    wait_until(SYNC_TIMEOUT, Duration::from_millis(100), || {
        get("/healthz").0.starts_with("HTTP/1.1 503")
    });
    let (_, body) = get("/healthz");
    assert_eq!(
        (body["healthy"].clone(), body["nodeEligible"].clone()),
        (json!(false), json!(false)),
        "{body}"
    );
    let (status, body) = get("/livez");
    assert!(status.starts_with("HTTP/1.1 200"), "{status} {body}");
    // Traffic is served all the while.
    assert_eq!(
        mode.answering(
            Place::Pod("pod-1a"),
            Proto::Tcp,
            ECHO_IP,
            80,
            SPREAD_REQUESTS
        ),
        pods(&ALL_PODS)
    );

    // The taint goes: eligible again. Then the Node is being deleted: not eligible.
    mode.api.apply(objects::node("node1", &[node1_ip.into()]));
    wait_until(SYNC_TIMEOUT, Duration::from_millis(100), || {
        get("/healthz").0.starts_with("HTTP/1.1 200")
    });
    let mut deleting = objects::node("node1", &[node1_ip.into()]);
    deleting["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
    mode.api.apply(deleting);
    wait_until(SYNC_TIMEOUT, Duration::from_millis(100), || {
        get("/healthz").0.starts_with("HTTP/1.1 503")
    });
    assert!(get("/livez").0.starts_with("HTTP/1.1 200"));

    let metrics = http::metrics(netns);
    for series in [
        r#"kubeproxy_proxy_healthz_total{code="200"}"#,
        r#"kubeproxy_proxy_healthz_total{code="503"}"#,
        r#"kubeproxy_proxy_livez_total{code="200"}"#,
    ] {
        assert!(
            http::sample(&metrics, series).is_some_and(|n| n >= 1.0),
            "{series} in:\n{metrics}"
        );
    }
}

/// Every kube-proxy metric sluice exports, scraped under its name, with its `ip_family`
/// labels and the values a change leaves: changes counted and none pending once synced, and a
/// Service with `internalTrafficPolicy: Local` whose only endpoint is on node2 counted on node1
/// in `sync_proxy_rules_no_local_endpoints_total`.
#[test]
fn kube_proxys_metrics_are_scraped_under_their_names() {
    let mode = start();
    let mut local = objects::service(
        "local-only",
        "ClusterIP",
        &LATE_IP.to_string(),
        &[("http", "TCP", 81, 8080, 0)],
        &[],
    );
    local["spec"]["internalTrafficPolicy"] = json!("Local");
    mode.api.apply(local);
    mode.api.apply(objects::endpoint_slice(
        "local-only-1",
        "local-only",
        &[ready(pod_ip(&mode.cluster, "pod-2a"), "node2")],
        &[("http", "TCP", 8080)],
    ));
    let netns = &mode.cluster.node("node1").netns;
    let no_local = r#"kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy="internal",ip_family="IPv4"}"#;
    let mut text = String::new();
    wait_until(SYNC_TIMEOUT, Duration::from_millis(100), || {
        text = http::metrics(netns);
        http::sample(&text, no_local) == Some(1.0)
    });
    let ipv4 = |name: &str| format!("{name}{}", http::IPV4);
    for series in [
        ipv4("kubeproxy_sync_proxy_rules_duration_seconds_count"),
        ipv4("kubeproxy_sync_full_proxy_rules_duration_seconds_count"),
        ipv4("kubeproxy_sync_partial_proxy_rules_duration_seconds_count"),
        ipv4("kubeproxy_sync_proxy_rules_last_timestamp_seconds"),
        ipv4("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"),
        ipv4("kubeproxy_network_programming_duration_seconds_count"),
        "kubeproxy_sync_proxy_rules_endpoint_changes_pending".to_owned(),
        "kubeproxy_sync_proxy_rules_endpoint_changes_total".to_owned(),
        "kubeproxy_sync_proxy_rules_service_changes_pending".to_owned(),
        "kubeproxy_sync_proxy_rules_service_changes_total".to_owned(),
        r#"kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy="external",ip_family="IPv4"}"#.to_owned(),
        r#"kubeproxy_proxy_healthz_total{code="200"}"#.to_owned(),
    ] {
        // /healthz is counted once it is asked.
        if series.starts_with("kubeproxy_proxy_healthz") {
            http::get(netns, "127.0.0.1:10256", "/healthz");
            text = http::metrics(netns);
        }
        assert!(http::sample(&text, &series).is_some(), "{series} in:\n{text}");
    }
    let value = |series: &str| http::sample(&text, series).unwrap_or_default();
    assert!(
        value("kubeproxy_sync_proxy_rules_service_changes_total") >= 2.0,
        "{text}"
    );
    assert!(
        value("kubeproxy_sync_proxy_rules_endpoint_changes_total") >= 2.0,
        "{text}"
    );
    assert_eq!(
        value("kubeproxy_sync_proxy_rules_service_changes_pending"),
        0.0
    );
    assert_eq!(
        value("kubeproxy_sync_proxy_rules_endpoint_changes_pending"),
        0.0
    );
    // The buckets are kube-proxy's: 0 first, then 0.25, ... 300.
    let programming = "kubeproxy_network_programming_duration_seconds_bucket";
    for le in ["0.0", "0.25", "59.0", "65.0", "300.0", "+Inf"] {
        let series = format!(r#"{programming}{{le="{le}",ip_family="IPv4"}}"#);
        assert!(
            http::sample(&text, &series).is_some(),
            "{series} in:\n{text}"
        );
    }
    // node2 has the endpoint: nothing counted there.
    let text2 = http::metrics(&mode.cluster.node("node2").netns);
    assert_eq!(http::sample(&text2, no_local), Some(0.0), "{text2}");
}

const ZONAL_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 90);

/// Topology as kube-proxy does it: the endpoint-slice controller's hints (`forZones` from
/// `trafficDistribution: PreferClose`/`PreferSameZone` or `topology-mode: Auto`, `forNodes`
/// from `PreferSameNode`) keep a node's Cluster traffic on its zone's or its own endpoints,
/// matched against the Node's `topology.kubernetes.io/zone`; when an endpoint has no hint, or
/// none is for this node or zone, every ready endpoint is used.
#[test]
fn topology_hints_keep_traffic_in_the_zone_and_on_the_node() {
    let mode = start();
    for (node, zone) in [("node1", "zone-a"), ("node2", "zone-b")] {
        let mut object = objects::node(node, &[mode.cluster.node(node).ip.into()]);
        object["metadata"]["labels"]["topology.kubernetes.io/zone"] = json!(zone);
        mode.api.apply(object);
    }
    let mut service = objects::service(
        "zonal",
        "ClusterIP",
        &ZONAL_IP.to_string(),
        &[("http", "TCP", 81, 8080, 0)],
        &[],
    );
    service["spec"]["trafficDistribution"] = json!("PreferSameZone");
    mode.api.apply(service);
    let pods = ["pod-1a", "pod-1b", "pod-2a"];
    // Hints per pod: (forZones, forNodes).
    let apply_slice = |hints: [(Option<&str>, Option<&str>); 3]| {
        let endpoints: Vec<_> = pods
            .iter()
            .map(|pod| ready(pod_ip(&mode.cluster, pod), &mode.cluster.pod(pod).node))
            .collect();
        let mut slice =
            objects::endpoint_slice("zonal-1", "zonal", &endpoints, &[("http", "TCP", 8080)]);
        for (i, (zone, node)) in hints.into_iter().enumerate() {
            let mut value = json!({});
            if let Some(zone) = zone {
                value["forZones"] = json!([{"name": zone}]);
            }
            if let Some(node) = node {
                value["forNodes"] = json!([{"name": node}]);
            }
            slice["endpoints"][i]["hints"] = value;
        }
        mode.api.apply(slice);
    };
    let from_each_node = |node1: &[&str], node2: &[&str]| {
        mode.wait_for_answers(Place::Pod("pod-1b"), Proto::Tcp, ZONAL_IP, 81, node1);
        mode.wait_for_answers(Place::Pod("pod-2a"), Proto::Tcp, ZONAL_IP, 81, node2);
    };

    // forZones: each zone keeps its traffic.
    apply_slice([
        (Some("zone-a"), None),
        (Some("zone-a"), None),
        (Some("zone-b"), None),
    ]);
    from_each_node(&["pod-1a", "pod-1b"], &["pod-2a"]);
    // One endpoint without a hint: hints are not trusted, every endpoint serves everyone.
    apply_slice([(Some("zone-a"), None), (None, None), (Some("zone-b"), None)]);
    from_each_node(&pods, &pods);
    // No endpoint for zone-b: node2 uses every endpoint, node1 its zone's.
    apply_slice([
        (Some("zone-a"), None),
        (Some("zone-a"), None),
        (Some("zone-a"), None),
    ]);
    from_each_node(&pods, &pods);
    // forNodes (PreferSameNode): this node's endpoints first.
    apply_slice([
        (Some("zone-a"), Some("node1")),
        (Some("zone-a"), Some("node2")),
        (Some("zone-b"), Some("node2")),
    ]);
    from_each_node(&["pod-1a"], &["pod-1b", "pod-2a"]);
    // The node moves to zone-b: node1 now follows zone-b's hints.
    apply_slice([
        (Some("zone-a"), None),
        (Some("zone-b"), None),
        (Some("zone-b"), None),
    ]);
    from_each_node(&["pod-1a"], &["pod-1b", "pod-2a"]);
    let mut moved = objects::node("node1", &[mode.cluster.node("node1").ip.into()]);
    moved["metadata"]["labels"]["topology.kubernetes.io/zone"] = json!("zone-b");
    mode.api.apply(moved);
    from_each_node(&["pod-1b", "pod-2a"], &["pod-1b", "pod-2a"]);
}

/// Events like kube-proxy's, through events.k8s.io/v1 (the fake API server keeps them):
/// `Starting` on each node's Node once it serves, and `FailedToStartServiceHealthcheck` on a
/// Service whose healthCheckNodePort is taken on the node, sent once however many syncs fail
/// to bind it (repeats within a minute are held back).
#[test]
fn events_are_published_like_kube_proxys() {
    const HC_PORT: u16 = 31999;
    let mode = start();
    let events_where = |pred: &dyn Fn(&Value) -> bool| -> Vec<Value> {
        mode.api.events().into_iter().filter(|e| pred(e)).collect()
    };
    wait_until(SYNC_TIMEOUT, Duration::from_millis(100), || {
        events_where(&|e| e["reason"] == "Starting").len() == 2
    });
    for node in ["node1", "node2"] {
        let starting =
            events_where(&|e| e["reason"] == "Starting" && e["regarding"]["name"] == node);
        assert_eq!(starting.len(), 1, "{starting:#?}");
        let event = &starting[0];
        assert_eq!(event["type"], "Normal");
        assert_eq!(event["regarding"]["kind"], "Node");
        assert_eq!(event["reportingController"], "sluice");
        assert_eq!(event["reportingInstance"], format!("sluice-{node}"));
        assert_eq!(event["metadata"]["namespace"], "default");
    }

    // Something on node1 holds the health check port already.
    let node1_ip = mode.cluster.node("node1").ip;
    let _taken = mode
        .cluster
        .node("node1")
        .netns
        .run_in(|| std::net::TcpListener::bind((node1_ip, HC_PORT)))
        .expect("enter node1")
        .expect("bind the health check port first");
    let mut lb = objects::service(
        "lb-local",
        "LoadBalancer",
        "198.19.0.95",
        &[("http", "TCP", 80, 8080, 31095)],
        &[],
    );
    lb["spec"]["externalTrafficPolicy"] = json!("Local");
    lb["spec"]["healthCheckNodePort"] = json!(HC_PORT);
    mode.api.apply(lb);
    wait_until(SYNC_TIMEOUT, Duration::from_millis(100), || {
        !events_where(&|e| e["reason"] == "FailedToStartServiceHealthcheck").is_empty()
    });
    // More syncs that fail to bind it: no more Events.
    mode.api
        .simple_service(&mode.cluster, "extra", EXTRA_IP, &["pod-1a"], &[]);
    mode.wait_for_answers(Place::Pod("pod-1b"), Proto::Tcp, EXTRA_IP, 81, &["pod-1a"]);
    let failed = events_where(&|e| e["reason"] == "FailedToStartServiceHealthcheck");
    assert_eq!(failed.len(), 1, "{failed:#?}");
    let event = &failed[0];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["action"], "Listen");
    assert_eq!(
        (
            event["regarding"]["kind"].clone(),
            event["regarding"]["name"].clone()
        ),
        (json!("Service"), json!("lb-local"))
    );
    let note = event["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with(
            "node node1 failed to start healthcheck \"default/lb-local\" on port 31999:"
        ),
        "{note}"
    );
    assert!(event["series"].is_null(), "sent once: {event:#}");
}

/// Waits until a TCP request to `addr:80` from pod-1a (the socket path) and from the client
/// (node1's XDP) is refused at once (`refused`), or is not (`!refused`: it times out or is
/// unreachable, as without Sluice).
fn wait_for_refusal(mode: &ClusterMode, addr: Ipv4Addr, refused: bool) {
    let start = Instant::now();
    loop {
        let results: Vec<Result<String, String>> = [Place::Pod("pod-1a"), Place::Client]
            .into_iter()
            .flat_map(|from| mode.cluster.request(from, Proto::Tcp, addr, 80, 1))
            .collect();
        let done = results.iter().all(|r| {
            r.as_ref()
                .is_err_and(|err| err.starts_with("refused") == refused)
        });
        if done {
            return;
        }
        assert!(
            start.elapsed() < SYNC_TIMEOUT,
            "{addr}:80: {results:?}, expected refused: {refused}\n{}",
            mode.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn service_cidrs_from_the_api_server_refuse_the_addresses_no_service_holds() {
    let mode = start_with(|api| api.apply(objects::service_cidr("kubernetes", &["198.19.0.0/24"])));
    // In the ServiceCIDR, held by no Service: refused; outside it: not Sluice's.
    let unallocated = Ipv4Addr::new(198, 19, 0, 99);
    let beyond = Ipv4Addr::new(198, 19, 1, 99);
    wait_for_refusal(&mode, unallocated, true);
    wait_for_refusal(&mode, beyond, false);
    // The CIDR grows: the address beyond is refused too.
    mode.api
        .apply(objects::service_cidr("kubernetes", &["198.19.0.0/16"]));
    wait_for_refusal(&mode, beyond, true);
    // The ServiceCIDR goes: nothing is refused for being unallocated any more.
    mode.api.delete("ServiceCIDR", "", "kubernetes");
    wait_for_refusal(&mode, unallocated, false);
    assert_echo_served_by(&mode, &ALL_PODS);
}

#[test]
fn an_api_server_without_service_cidrs_holds_nothing_up() {
    // Before Kubernetes 1.33 (or without the RBAC rule) the list is answered 404 / 403.
    let mode = start_with(|api| api.withhold(Resource::ServiceCidrs));
    assert_echo_served_by(&mode, &ALL_PODS);
    let stderr = mode.node1.stderr();
    assert!(stderr.contains("watching ServiceCIDRs"), "{stderr}");
}
