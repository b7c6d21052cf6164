//! The daemon's life with real traffic: refusing services without endpoints, following
//! endpoint changes, restarts that keep connections, an upgrade from the previous release,
//! bad manifests that lose nothing else, and /healthz.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::Ipv4Addr,
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use proxy_common::map_names;
use proxy_tests::{
    Cluster, HeldConn, Place, Proto, SluiceDaemon, bins, http,
    manifests::{
        ECHO_IP, ECHO_NODE_PORT_TCP, EMPTY_IP, EMPTY_NODE_PORT_TCP, EMPTY_NODE_PORT_UDP,
        ManifestDir, SERVICES_YAML, pods_yaml,
    },
    process,
    scenario::{ALL_PODS, SPREAD_REQUESTS, SYNC_TIMEOUT, Scenario, pods},
    sluice::DaemonConfig,
    wait_until,
};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("valid address")
}

/// `count` ClusterIP Services `PREFIX-i` with one TCP port and no endpoints, as one manifest.
fn services_without_endpoints(prefix: &str, count: usize) -> String {
    let mut out = String::new();
    for i in 0..count {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {prefix}-{i}, namespace: default}}\n\
             spec:\n  ports:\n  - {{port: 80, protocol: TCP}}\n"
        );
    }
    out
}

/// Requests from pod-1a to echo's ClusterIP reach every pod (`why` names the moment).
fn assert_echo_reaches_every_pod(scenario: &Scenario, why: &str) {
    let answered = scenario.answering_pods(
        Place::Pod("pod-1a"),
        Proto::Tcp,
        ip(ECHO_IP),
        80,
        SPREAD_REQUESTS,
    );
    assert_eq!(answered, pods(&ALL_PODS), "{why}");
}

/// Refusals must come back at once (RST, ICMP or ECONNREFUSED), never as a timeout.
const REFUSED_WITHIN: Duration = Duration::from_millis(500);

#[test]
fn a_service_without_endpoints_is_refused_at_once() {
    let scenario = Scenario::start(&[]);
    let node1 = scenario.cluster.node("node1").ip;
    let cases = [
        // Socket path (cgroup hooks): connect()/sendmsg() fail with ECONNREFUSED.
        (Place::Pod("pod-1a"), Proto::Tcp, ip(EMPTY_IP), 80),
        (Place::Pod("pod-1a"), Proto::UdpConnected, ip(EMPTY_IP), 53),
        (Place::Pod("pod-1a"), Proto::Udp, ip(EMPTY_IP), 53),
        (Place::Node("node2"), Proto::Tcp, node1, EMPTY_NODE_PORT_TCP),
        // Packet path (XDP): a TCP RST, an ICMP port unreachable.
        (Place::Client, Proto::Tcp, node1, EMPTY_NODE_PORT_TCP),
        (
            Place::Client,
            Proto::UdpConnected,
            node1,
            EMPTY_NODE_PORT_UDP,
        ),
        (Place::Client, Proto::Tcp, ip(EMPTY_IP), 80),
    ];
    for (from, proto, addr, port) in cases {
        let started = Instant::now();
        let results = scenario.cluster.request(from, proto, addr, port, 3);
        let elapsed = started.elapsed();
        for result in &results {
            let err = result.as_ref().expect_err(&format!(
                "{proto} {addr}:{port} from {from:?} must be refused"
            ));
            assert!(
                err.starts_with("refused"),
                "{proto} {addr}:{port} from {from:?}: expected refused, got {err}"
            );
        }
        assert!(
            elapsed < REFUSED_WITHIN * 3,
            "{proto} {addr}:{port} from {from:?}: 3 refusals took {elapsed:?}"
        );
    }
}

/// What no Service serves inside the service CIDR is refused at once, as kube-proxy's
/// nftables mode rejects it, instead of leaking out or timing out: a cluster IP on a port (or
/// protocol) none of its frontends serves, and an address of the CIDR no Service holds; on
/// the socket path (ECONNREFUSED) and the packet path (RST, ICMP port unreachable), each
/// counted by its drop reason. Addresses outside the CIDR are not touched.
#[test]
fn a_cluster_ip_port_or_address_no_service_serves_is_refused_at_once() {
    let scenario = Scenario::start(&[]);
    let echo = ip(ECHO_IP);
    // Inside --service-cidr 198.19.0.0/16, held by no Service.
    let unallocated = ip("198.19.0.99");
    let socket_cases = [
        (Proto::Tcp, echo, 9999),
        (Proto::UdpConnected, echo, 9999),
        (Proto::Udp, echo, 9999),
        // `alt` is TCP 81: UDP 81 is no frontend.
        (Proto::Udp, echo, 81),
        (Proto::Tcp, unallocated, 80),
        (Proto::Udp, unallocated, 53),
    ];
    let mut cases: Vec<(Place<'_>, Proto, Ipv4Addr, u16)> = Vec::new();
    for (proto, addr, port) in socket_cases {
        cases.push((Place::Pod("pod-1a"), proto, addr, port));
        cases.push((Place::Node("node1"), proto, addr, port));
    }
    // The client reaches the service CIDR through node1's XDP.
    cases.push((Place::Client, Proto::Tcp, echo, 9999));
    cases.push((Place::Client, Proto::UdpConnected, echo, 9999));
    cases.push((Place::Client, Proto::Tcp, unallocated, 80));
    for (from, proto, addr, port) in cases {
        let started = Instant::now();
        for result in scenario.cluster.request(from, proto, addr, port, 2) {
            let err = result.expect_err(&format!("{proto} {addr}:{port} from {from:?}"));
            assert!(
                err.starts_with("refused"),
                "{proto} {addr}:{port} from {from:?}: expected refused, got {err}"
            );
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed < REFUSED_WITHIN * 2,
            "{proto} {addr}:{port} from {from:?}: 2 refusals took {elapsed:?}"
        );
    }
    for reason in ["unserved_port", "unallocated_service_ip"] {
        assert!(
            scenario.node1.stats_count("drops", reason) > 0,
            "{reason} counted"
        );
    }
    // The served ports still answer.
    assert_echo_reaches_every_pod(&scenario, "beside the refusals");
}

#[test]
fn endpoint_changes_reach_the_datapath_while_traffic_flows() {
    let scenario = Scenario::start(&[]);
    let echo = ip(ECHO_IP);
    let frontend = format!("{ECHO_IP}:80");
    let node_port = format!("*:{ECHO_NODE_PORT_TCP}");
    let node2_ip = scenario.cluster.node("node2").ip;

    // A long-lived connection to a pod that stays: it must not notice the changes.
    let mut held = scenario
        .cluster
        .hold(Place::Pod("pod-2a"), echo, 81)
        .expect("open a held connection");
    let held_pod = held.greeting().name.clone();
    let leaving = ALL_PODS
        .into_iter()
        .find(|pod| *pod != held_pod)
        .expect("three pods");
    let staying: Vec<&str> = ALL_PODS.into_iter().filter(|p| *p != leaving).collect();

    // The pod turns not-ready: it leaves every service on both nodes.
    scenario.manifests.write(
        "pods.yaml",
        &pods_yaml(&scenario.cluster, |pod| pod != leaving),
    );
    let staying_ips: Vec<Ipv4Addr> = staying
        .iter()
        .map(|pod| scenario.cluster.pod(pod).ip)
        .collect();
    for node in ["node1", "node2"] {
        scenario.wait_for_backends(node, &frontend, &staying_ips);
        scenario.wait_for_backends(node, &node_port, &staying_ips);
    }
    let answered =
        scenario.answering_pods(Place::Pod("pod-1a"), Proto::Tcp, echo, 80, SPREAD_REQUESTS);
    assert_eq!(answered, pods(&staying), "ClusterIP after {leaving} left");
    let answered = scenario.answering_pods(
        Place::Client,
        Proto::Tcp,
        node2_ip,
        ECHO_NODE_PORT_TCP,
        SPREAD_REQUESTS,
    );
    assert_eq!(answered, pods(&staying), "NodePort after {leaving} left");
    let reply = held
        .ping()
        .expect("the held connection survives the change");
    assert_eq!(reply.name, held_pod);

    // It comes back: new connections reach it again.
    scenario
        .manifests
        .write("pods.yaml", &pods_yaml(&scenario.cluster, |_| true));
    let all_ips: Vec<Ipv4Addr> = ALL_PODS
        .iter()
        .map(|pod| scenario.cluster.pod(pod).ip)
        .collect();
    for node in ["node1", "node2"] {
        scenario.wait_for_backends(node, &frontend, &all_ips);
    }
    let answered =
        scenario.answering_pods(Place::Pod("pod-1a"), Proto::Tcp, echo, 80, SPREAD_REQUESTS);
    assert_eq!(
        answered,
        pods(&ALL_PODS),
        "ClusterIP after {leaving} came back"
    );
    assert_eq!(held.ping().expect("still open").name, held_pod);
}

#[test]
fn restarting_or_killing_the_daemon_keeps_connections_and_traffic() {
    let mut scenario = Scenario::start(&[]);
    let echo = ip(ECHO_IP);
    let node1_ip = scenario.cluster.node("node1").ip;
    let services_before = scenario.node1.services_json();

    // One connection per path: XDP (client via node1's NodePort), socket LB (pod on node1).
    let mut via_xdp = scenario
        .cluster
        .hold(Place::Client, node1_ip, ECHO_NODE_PORT_TCP)
        .expect("open a connection through node1's NodePort");
    let mut via_socket = scenario
        .cluster
        .hold(Place::Pod("pod-1b"), echo, 81)
        .expect("open a connection to the ClusterIP");
    let xdp_pod = via_xdp.greeting().name.clone();
    let socket_pod = via_socket.greeting().name.clone();

    scenario.node1.restart();
    assert_eq!(
        via_xdp.ping().expect("XDP flow after restart").name,
        xdp_pod
    );
    assert_eq!(
        via_socket.ping().expect("socket flow after restart").name,
        socket_pod
    );
    assert_eq!(
        scenario.node1.services_json(),
        services_before,
        "a restart keeps every frontend, id and backend"
    );

    // With the daemon gone, the pinned programs and maps keep serving.
    scenario.node1.kill();
    assert_eq!(via_xdp.ping().expect("XDP flow, daemon down").name, xdp_pod);
    let answered = scenario.answering_pods(
        Place::Client,
        Proto::Tcp,
        node1_ip,
        ECHO_NODE_PORT_TCP,
        SPREAD_REQUESTS,
    );
    assert_eq!(
        answered,
        pods(&ALL_PODS),
        "new connections while the daemon is down"
    );
    scenario.node1.start_again();
    assert_eq!(via_xdp.ping().expect("XDP flow after start").name, xdp_pod);
    assert_eq!(
        via_socket.ping().expect("socket flow after start").name,
        socket_pod
    );
}

#[test]
fn a_bad_manifest_is_reported_and_everything_else_keeps_serving() {
    let scenario = Scenario::start(&[]);

    // A new file with a wrong field: reported with file, document, object and field.
    scenario.manifests.write(
        "bad.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: default}\n\
         spec:\n  ports:\n  - {port: eighty}\n",
    );
    let expected = "bad.yaml: document 1 (Service default/broken): spec.ports[0].port";
    wait_until(SYNC_TIMEOUT, Duration::from_millis(50), || {
        scenario.node1.stderr().contains(expected)
    });

    // The file that defines `echo` breaks mid-edit: the last good `echo` keeps serving.
    scenario.manifests.write(
        "services.yaml",
        &format!("{SERVICES_YAML}\n  - {{unclosed: [\n"),
    );
    wait_until(SYNC_TIMEOUT, Duration::from_millis(50), || {
        let stderr = scenario.node1.stderr();
        stderr.matches("services.yaml").count() > 1 && stderr.contains("ERROR")
    });
    assert_echo_reaches_every_pod(&scenario, "echo keeps its last good state");

    // `sluice validate` reports both problems and fails.
    let mut validate = Command::new(bins::sluice_bin().expect("sluice binary"));
    validate.arg("validate").arg(scenario.manifests.path());
    let finished = process::run("sluice validate", validate, Duration::from_secs(10))
        .expect("run sluice validate");
    assert!(
        !finished.status.success(),
        "validate must fail:\n{}",
        finished.stdout
    );
    assert!(finished.stdout.contains(expected), "{}", finished.stdout);
    assert!(
        finished.stdout.contains("services.yaml"),
        "validate names the broken file:\n{}",
        finished.stdout
    );
}

#[test]
fn healthz_is_ok_once_synced() {
    let scenario = Scenario::start(&[]);
    let netns = &scenario.cluster.node("node1").netns;
    let (status, body) = http::get(netns, "127.0.0.1:10256", "/healthz");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(body.contains("\"lastUpdated\":\"20"), "{body}");
}

#[test]
fn finished_flows_leave_conntrack_and_live_ones_stay() {
    let scenario = Scenario::start(&[
        "--ct-tcp-closing-timeout",
        "1s",
        "--ct-udp-timeout",
        "1s",
        "--ct-gc-interval",
        "200ms",
    ]);
    let node1_ip = scenario.cluster.node("node1").ip;
    let mut held = scenario
        .cluster
        .hold(Place::Client, node1_ip, ECHO_NODE_PORT_TCP)
        .expect("open a connection through node1's NodePort");
    scenario.replies(Place::Client, Proto::Tcp, node1_ip, ECHO_NODE_PORT_TCP, 5);
    scenario.replies(Place::Client, Proto::UdpConnected, node1_ip, 30053, 3);
    let flows = || {
        scenario
            .node1
            .read_json("conntrack")
            .as_array()
            .map_or(0, Vec::len)
    };
    assert!(
        flows() > 1,
        "the finished flows are tracked until their timeout"
    );

    wait_until(SYNC_TIMEOUT, Duration::from_millis(100), || flows() == 1);
    let left = scenario.node1.read_json("conntrack");
    assert_eq!(left[0]["state"], "established", "{left:#}");
    assert_eq!(left[0]["tier"], "established", "{left:#}");
    assert_eq!(
        held.ping().expect("the live flow still works").name,
        held.greeting().name
    );
}

#[test]
fn map_sizes_are_set_at_start_and_kept_across_restarts() {
    let mut scenario = Scenario::start(&[
        "--max-frontends",
        "48",
        "--ct-max-entries",
        "2048",
        "--ct-established-max-entries",
        "1024",
    ]);
    let netns = &scenario.cluster.node("node1").netns;
    let (_, text) = http::get(netns, "127.0.0.1:10249", "/metrics");
    let max_entries =
        |map: &str| http::sample(&text, &format!("sluice_map_max_entries{{map=\"{map}\"}}"));
    assert_eq!(max_entries("SVC_META_V2"), Some(48.0));
    assert_eq!(max_entries("SVC_STATS_V2"), Some(48.0));
    assert_eq!(max_entries("CT_V1"), Some(2048.0));
    assert_eq!(max_entries("CT6_V1"), Some(2048.0));
    assert_eq!(max_entries("CT_EST_V1"), Some(1024.0));
    assert_eq!(max_entries("CT6_EST_V1"), Some(1024.0));
    assert_eq!(max_entries("BACKEND_V1"), Some(131_072.0), "default size");
    assert_echo_reaches_every_pod(&scenario, "with the sizes set");

    // More frontends than the maps hold: those that do not fit are left out and named, the
    // rest keeps serving.
    overfill(
        &scenario,
        "extra",
        "all frontend ids are in use (raise --max-frontends)",
    );

    // Other sizes over the pins of this run: refused before anything is touched.
    scenario.node1.stop();
    let mut config = scenario.node1.config().clone();
    let at = config
        .args
        .iter()
        .position(|arg| arg == "--max-frontends")
        .expect("the scenario passed --max-frontends");
    config.args[at + 1] = "96".into();
    let refused = match proxy_tests::SluiceDaemon::launch(config) {
        Ok(_) => panic!("sluice started over pins of another size"),
        Err(err) => format!("{err:#}"),
    };
    assert!(
        refused.contains("SVC_META_V2 holds 48 entries but --max-frontends asks for 96"),
        "{refused}"
    );
    scenario.manifests.remove("many.yaml");
    scenario.node1.start_again();
    assert_echo_reaches_every_pod(&scenario, "the old sizes start again");
}

#[test]
fn a_full_services_map_leaves_out_what_does_not_fit_and_takes_it_in_when_there_is_room() {
    let scenario = Scenario::start(&["--max-backend-slots", "64"]);
    overfill(
        &scenario,
        "slot",
        "the services map is full (raise --max-backend-slots)",
    );
    // Room again: what was left out lands at once, with no change of its own.
    let few = services_without_endpoints("slot", 3);
    scenario.manifests.write("many.yaml", &few);
    wait_until(SYNC_TIMEOUT, Duration::from_millis(50), || {
        scenario
            .node1
            .stderr()
            .contains("every planned frontend is programmed")
    });
    assert_eq!(left_out(&scenario, "default/slot-"), Vec::<String>::new());
}

/// Adds 60 Services more than the maps hold; waits for the warning that names those left out
/// (`why`), checks that `sluice services` lists them as not programmed, that echo keeps serving,
/// and that a later change (echo losing a pod) still lands.
fn overfill(scenario: &Scenario, prefix: &str, why: &str) {
    scenario
        .manifests
        .write("many.yaml", &services_without_endpoints(prefix, 60));
    wait_until(SYNC_TIMEOUT, Duration::from_millis(50), || {
        scenario.node1.stderr().contains(why)
    });
    let stderr = scenario.node1.stderr();
    let warning = stderr
        .lines()
        .find(|line| line.contains("frontends not programmed"))
        .unwrap_or_else(|| panic!("no warning names what was left out:\n{stderr}"));
    assert!(warning.contains(&format!("default/{prefix}-")), "{warning}");
    let listed = left_out(scenario, &format!("default/{prefix}-"));
    assert!(
        !listed.is_empty(),
        "sluice services lists none as not programmed"
    );
    assert!(
        listed
            .iter()
            .all(|reason| reason.contains("not programmed") && reason.contains(why)),
        "{listed:#?}"
    );
    assert!(!stderr.contains("sync failed"), "{stderr}");
    assert_echo_reaches_every_pod(scenario, "echo keeps serving");

    // A later change lands while the maps are full: echo loses pod-2a.
    let pod = scenario.cluster.pod("pod-2a").ip;
    scenario.manifests.write(
        "pods.yaml",
        &proxy_tests::manifests::pods_yaml(&scenario.cluster, |name| name != "pod-2a"),
    );
    wait_until(SYNC_TIMEOUT, Duration::from_millis(50), || {
        proxy_tests::scenario::backends_of(&scenario.node1, "198.19.0.10:80")
            .is_some_and(|backends| !backends.contains(&pod))
    });
    scenario.manifests.write(
        "pods.yaml",
        &proxy_tests::manifests::pods_yaml(&scenario.cluster, |_| true),
    );
}

/// The reasons `sluice services` gives for the Services named `prefix*` it lists as not
/// programmed.
fn left_out(scenario: &Scenario, prefix: &str) -> Vec<String> {
    let rows = scenario.node1.read_json("services");
    rows.as_array()
        .expect("services -o json prints an array")
        .iter()
        .filter(|row| {
            row["name"].as_str().is_some_and(|n| n.starts_with(prefix))
                && row["programmed"] == false
        })
        .map(|row| row["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_restart_unpins_maps_a_new_version_replaced() {
    let mut scenario = Scenario::start(&[]);
    let pin_dir = scenario.node1.config().pin_dir.clone();
    scenario.node1.stop();
    // An earlier version's map, as an upgrade leaves it: a pin under a retired name.
    let retired = pin_dir.join("SVC_STATS_V1");
    let status = Command::new("bpftool")
        .args(["map", "pin", "pinned"])
        .arg(pin_dir.join("DROP_STATS_V1"))
        .arg(&retired)
        .status()
        .expect("run bpftool");
    assert!(status.success(), "bpftool map pin");
    let unrelated = pin_dir.join("not-ours");
    std::fs::create_dir(&unrelated).expect("a directory that is not a map pin");

    scenario.node1.start_again();
    assert!(!retired.exists(), "the retired map's pin is removed");
    assert!(
        unrelated.exists(),
        "what is not shaped like a map pin stays"
    );
    for name in ["CT_V1", "SVC_V1", "SVC_STATS_V2"] {
        assert!(pin_dir.join(name).exists(), "{name} stays pinned");
    }
    assert_echo_reaches_every_pod(&scenario, "after the restart");
    std::fs::remove_dir(&unrelated).expect("remove the test directory");
}

/// The maps the IPv6 datapath added (`SOCK_TERM6_V1` is never pinned).
const IPV6_MAPS: [&str; 8] = [
    map_names::SERVICES6,
    map_names::BACKENDS6,
    map_names::CONNTRACK6,
    map_names::SOCK_REV_NAT6,
    map_names::NODE_ADDRS6,
    map_names::CONFIG6,
    map_names::AFFINITY6,
    map_names::SOURCE_RANGES6,
];
/// The conntrack maps of confirmed flows, added after the previous release: its flows (in
/// `CT_V1`) keep working from there and move at their next established reply.
const ESTABLISHED_CT_MAPS: [&str; 2] = [
    map_names::CONNTRACK_ESTABLISHED,
    map_names::CONNTRACK_ESTABLISHED6,
];
/// The previous release's name of the hook counters (`HOOK_STATS_V2` now).
const RETIRED_HOOK_STATS: &str = "HOOK_STATS_V1";

/// Every frontend `daemon` shows, with its backend addresses (the fields both releases print).
fn frontends(daemon: &SluiceDaemon) -> BTreeMap<String, BTreeSet<String>> {
    let services = daemon.services_json();
    let rows = services.as_array().expect("services -o json is an array");
    rows.iter()
        .map(|row| {
            let frontend = row["frontend"].as_str().expect("a frontend").to_owned();
            let backends = row["backends"].as_array().expect("backends is an array");
            let addrs = backends
                .iter()
                .map(|b| b["addr"].as_str().expect("a backend addr").to_owned())
                .collect();
            (frontend, addrs)
        })
        .collect()
}

/// Holds connections from `from` to `addr:port` until one lands on a pod `wanted` accepts;
/// every other one is closed again.
fn hold_one(
    cluster: &Cluster,
    from: Place<'_>,
    addr: Ipv4Addr,
    port: u16,
    wanted: impl Fn(&str) -> bool,
) -> HeldConn {
    let mut seen = Vec::new();
    for _ in 0..SPREAD_REQUESTS {
        let held = cluster
            .hold(from, addr, port)
            .unwrap_or_else(|e| panic!("hold {addr}:{port} from {from:?}: {e}"));
        if wanted(&held.greeting().name) {
            return held;
        }
        seen.push(held.greeting().name.clone());
    }
    panic!("{SPREAD_REQUESTS} connections to {addr}:{port} from {from:?} all went to {seen:?}");
}

/// Traffic kept flowing by a thread until `stop`: `done` counts its successes; a failure
/// ends it (and sets `failed`, so the test stops waiting for more).
struct Flowing<'a> {
    stop: &'a AtomicBool,
    failed: &'a AtomicBool,
    done: AtomicUsize,
    /// When the traffic began: a failure says how far into the run it came.
    began: Instant,
}

impl Flowing<'_> {
    /// Runs `once` until stopped or failed; the first error, naming how many went before and
    /// when the attempt that failed started.
    fn run(&self, mut once: impl FnMut() -> Result<(), String>) -> Result<(), String> {
        while !self.stop.load(Ordering::Relaxed) {
            let attempt = self.began.elapsed();
            if let Err(e) = once() {
                self.failed.store(true, Ordering::Relaxed);
                let done = self.done.load(Ordering::Relaxed);
                return Err(format!(
                    "after {done} successes, in the attempt begun {attempt:.2?} after the \
                     traffic: {e}"
                ));
            }
            self.done.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One ping over `held`: its pod must answer.
fn ping_same_pod(held: &mut HeldConn) -> Result<(), String> {
    let pod = &held.greeting().name.clone();
    match held.ping() {
        Ok(reply) if reply.name == *pod => Ok(()),
        Ok(reply) => Err(format!("answered by {reply:?}, not {pod}")),
        Err(e) => Err(e),
    }
}

/// One new TCP connection from `from` to `addr:port`: some pod must answer.
fn connect_once(
    cluster: &Cluster,
    from: Place<'_>,
    addr: Ipv4Addr,
    port: u16,
) -> Result<(), String> {
    let mut answers = cluster.request(from, Proto::Tcp, addr, port, 1);
    answers.remove(0).map(drop)
}

fn assert_pinned(pin_dir: &Path, names: &[&str], pinned: bool, when: &str) {
    for name in names {
        assert_eq!(
            pin_dir.join(name).exists(),
            pinned,
            "{when}: {name} pinned should be {pinned}"
        );
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "one upgrade, step by step")]
fn an_upgrade_from_the_previous_release_keeps_ipv4_flows_and_adds_the_ipv6_maps() {
    let previous = bins::previous_sluice_bin().unwrap_or_else(|e| panic!("{e:#}"));
    // Declared before the daemons, dropped after them.
    let mut cluster = Cluster::new();
    cluster.start_pods();
    let manifests = ManifestDir::standard(&cluster);
    let echo = ip(ECHO_IP);
    let node1_ip = cluster.node("node1").ip;

    // node1 runs the previous release (node2 the current one, as in a rolling upgrade).
    let current_config = DaemonConfig::new(&cluster, "node1", manifests.path(), &[]);
    let mut previous_config = current_config.clone();
    previous_config.bin = previous;
    let mut old = SluiceDaemon::launch(previous_config).expect("the previous release starts");
    let _node2 = SluiceDaemon::start(&cluster, "node2", manifests.path(), &[]);
    let pin_dir = current_config.pin_dir.clone();
    assert_pinned(&pin_dir, &[RETIRED_HOOK_STATS], true, "previous release");
    assert_pinned(&pin_dir, &IPV6_MAPS, false, "previous release");
    assert_pinned(&pin_dir, &ESTABLISHED_CT_MAPS, false, "previous release");
    let frontends_before = frontends(&old);

    // Long-lived IPv4 flows over every path node1 serves: the socket LB (a pod on node1 to
    // the ClusterIP), XDP to the ClusterIP from off-node, and XDP to the NodePort with a
    // local backend and with a remote one (SNAT to node1).
    let on_node1 = |pod: &str| pod != "pod-2a";
    let flows = vec![
        (
            "socket LB",
            hold_one(&cluster, Place::Pod("pod-1b"), echo, 81, |_| true),
        ),
        (
            "XDP ClusterIP",
            hold_one(&cluster, Place::Client, echo, 80, |_| true),
        ),
        (
            "XDP NodePort, local backend",
            hold_one(
                &cluster,
                Place::Client,
                node1_ip,
                ECHO_NODE_PORT_TCP,
                on_node1,
            ),
        ),
        (
            "XDP NodePort, remote backend",
            hold_one(
                &cluster,
                Place::Client,
                node1_ip,
                ECHO_NODE_PORT_TCP,
                |pod| pod == "pod-2a",
            ),
        ),
    ];

    // The upgrade, while every flow is pinged and new connections are made without pause:
    // none of them may fail, before, during or after the switch.
    let new_connections = [
        (Place::Pod("pod-1a"), echo, 80),
        (Place::Client, echo, 80),
        (Place::Client, node1_ip, ECHO_NODE_PORT_TCP),
    ];
    let (stop, failed) = (AtomicBool::new(false), AtomicBool::new(false));
    let began = Instant::now();
    let flowing = || Flowing {
        stop: &stop,
        failed: &failed,
        done: AtomicUsize::new(0),
        began,
    };
    let flows_kept: Vec<Flowing> = flows.iter().map(|_| flowing()).collect();
    let connections_made: Vec<Flowing> = new_connections.iter().map(|_| flowing()).collect();
    let (mut flows, new) = std::thread::scope(|scope| {
        // Whatever happens below (a panic too), the threads stop before the scope joins them.
        let _stop = StopOnDrop(&stop);
        let pingers: Vec<_> = flows
            .into_iter()
            .zip(&flows_kept)
            .map(|((path, mut held), flowing)| {
                let pinger = scope.spawn(move || {
                    let result = flowing.run(|| ping_same_pod(&mut held));
                    (held, result)
                });
                (path, pinger)
            })
            .collect();
        let cluster = &cluster;
        let connectors: Vec<_> = new_connections
            .into_iter()
            .zip(&connections_made)
            .map(|((from, addr, port), flowing)| {
                let what = format!("new connections from {from:?} to {addr}:{port}");
                let connector =
                    scope.spawn(move || flowing.run(|| connect_once(cluster, from, addr, port)));
                (what, connector)
            })
            .collect();
        old.stop();
        let stopped = began.elapsed();
        let new = SluiceDaemon::launch(current_config.clone());
        let when = format!(
            "the previous release stopped {stopped:.2?} after the traffic began, the current \
             one was ready at {:.2?}",
            began.elapsed()
        );
        // Traffic of every kind flows after the new daemon is ready too (or something failed).
        let at_ready: Vec<usize> = flows_kept
            .iter()
            .chain(&connections_made)
            .map(|f| f.done.load(Ordering::Relaxed))
            .collect();
        if new.is_ok() {
            wait_until(SYNC_TIMEOUT, Duration::from_millis(20), || {
                failed.load(Ordering::Relaxed)
                    || flows_kept
                        .iter()
                        .chain(&connections_made)
                        .zip(&at_ready)
                        .all(|(f, &ready)| f.done.load(Ordering::Relaxed) >= ready + 3)
            });
        }
        stop.store(true, Ordering::Relaxed);
        // Every failure, with the times and the new daemon's log: one flaky run must be
        // enough to tell what broke when.
        let mut failures = Vec::new();
        let flows: Vec<(&str, HeldConn)> = pingers
            .into_iter()
            .map(|(path, pinger)| {
                let (held, result) = pinger.join().expect("pinger thread");
                if let Err(e) = result {
                    failures.push(format!("the {path} flow broke while upgrading: {e}"));
                }
                (path, held)
            })
            .collect();
        for (what, connector) in connectors {
            let result = connector.join().expect("connector thread");
            if let Err(e) = result {
                failures.push(format!("{what} failed while upgrading: {e}"));
            }
        }
        assert!(
            failures.is_empty(),
            "{}\n{when}\nthe current release's log:\n{}",
            failures.join("\n"),
            new.as_ref().map(SluiceDaemon::stderr).unwrap_or_default()
        );
        (flows, new)
    });
    let new = new.expect("the current release starts over the previous release's pins");

    // After it: the same flows on the same pods, new connections reach every pod, the same
    // frontends and backends, the IPv6 maps created and the retired pin gone.
    for (path, held) in &mut flows {
        let pod = held.greeting().name.clone();
        let reply = held
            .ping()
            .unwrap_or_else(|e| panic!("{path} after the upgrade: {e}"));
        assert_eq!(reply.name, pod, "{path} after the upgrade");
    }
    for (from, addr, port) in [
        (Place::Pod("pod-1a"), echo, 80),
        (Place::Client, echo, 80),
        (Place::Client, node1_ip, ECHO_NODE_PORT_TCP),
    ] {
        let answered: BTreeSet<String> = cluster
            .request(from, Proto::Tcp, addr, port, SPREAD_REQUESTS)
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("{from:?} -> {addr}:{port}: {e}")))
            .collect();
        assert_eq!(answered, pods(&ALL_PODS), "{from:?} -> {addr}:{port}");
    }
    assert_eq!(frontends(&new), frontends_before, "frontends and backends");
    assert_pinned(&pin_dir, &IPV6_MAPS, true, "current release");
    assert_pinned(&pin_dir, &ESTABLISHED_CT_MAPS, true, "current release");
    assert_pinned(&pin_dir, &[map_names::HOOK_STATS], true, "current release");
    assert_pinned(&pin_dir, &[RETIRED_HOOK_STATS], false, "current release");
}

/// An entry deleted behind the daemon's back (here with bpftool, as an operator or another
/// tool might) is found by the periodic read-back (`--resync-period`) and written again: the
/// Service answers as before, the log says so, and `sluice_drift_repaired_entries_total`
/// counts it.
#[test]
fn drift_in_the_maps_is_found_and_repaired() {
    let scenario = Scenario::start(&["--resync-period", "1s"]);
    assert_echo_reaches_every_pod(&scenario, "before");
    let pin_dir = scenario.node1.config().pin_dir.clone();
    // The head entry of echo's TCP cluster IP frontend (ServiceKey: address and port in
    // network order, slot 0, TCP, the default scope).
    let echo = ip(ECHO_IP);
    let mut key: Vec<u8> = echo.octets().to_vec();
    key.extend(80u16.to_be_bytes());
    key.extend([
        0,
        0,
        proxy_common::IPPROTO_TCP,
        proxy_common::SVC_SCOPE_DEFAULT,
        0,
        0,
    ]);
    let mut delete = Command::new("bpftool");
    delete
        .args(["map", "delete", "pinned"])
        .arg(pin_dir.join(map_names::SERVICES))
        .arg("key")
        .args(key.iter().map(u8::to_string));
    let status = delete.status().expect("run bpftool");
    assert!(status.success(), "bpftool map delete {delete:?}");

    let netns = &scenario.cluster.node("node1").netns;
    let series = "sluice_drift_repaired_entries_total";
    wait_until(SYNC_TIMEOUT, Duration::from_millis(100), || {
        http::sample(&http::metrics(netns), series).is_some_and(|n| n >= 1.0)
    });
    assert!(
        scenario
            .node1
            .stderr()
            .contains("the maps had drifted from the desired state"),
        "{}",
        scenario.node1.stderr()
    );
    assert_echo_reaches_every_pod(&scenario, "after the repair");
}

/// The pinned programs' build directories (`programs/<hash>`) under node1's pin directory.
fn program_builds(scenario: &Scenario) -> Vec<String> {
    let dir = scenario.cluster.node("node1").pin_dir.join("programs");
    let mut builds: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    builds.sort();
    builds
}

/// A restart takes the verified programs from their pins (no verifier run), unless a map they
/// use was made anew: then they are verified again against the new map, and the other build's
/// pins go.
#[test]
fn a_restart_reuses_the_verified_programs_unless_a_map_they_use_was_recreated() {
    let mut scenario = Scenario::start(&[]);
    scenario
        .node1
        .assert_ready_line_ends_with("programs: 11 verified, 0 reused");
    let first = program_builds(&scenario);
    assert_eq!(first.len(), 1, "{first:?}");

    scenario.node1.restart();
    scenario.node1.assert_ready_line_ends_with(
        "hooks: 11 replaced in place, 0 attached; programs: 0 verified, 11 reused",
    );
    assert_eq!(program_builds(&scenario), first);
    assert_echo_reaches_every_pod(&scenario, "with the reused programs");

    // The operator removes a map's pin (to forget what it holds): it is made anew, empty.
    scenario.node1.stop();
    let pin = scenario.cluster.node("node1").pin_dir.join("AFFINITY_V1");
    std::fs::remove_file(&pin).unwrap_or_else(|e| panic!("remove {}: {e}", pin.display()));
    scenario.node1.start_again();
    scenario.node1.assert_ready_line_ends_with(
        "hooks: 11 replaced in place, 0 attached; programs: 11 verified, 0 reused",
    );
    let second = program_builds(&scenario);
    assert_eq!(
        second.len(),
        1,
        "the first build's pins are gone: {second:?}"
    );
    assert_ne!(second, first);
    assert_echo_reaches_every_pod(&scenario, "with the programs verified again");
}
