//! The soak: long-lived TCP and connected-UDP flows and a stream of new connections through
//! XDP (node1's NodePort from off the cluster; local and remote backends) and the socket LB
//! (pods on both nodes to the ClusterIP), in cluster mode, while the daemons are SIGKILLed and
//! restarted on alternating nodes, Services churn, the flows' own Service scales up and down,
//! and the API server goes away and comes back.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use proxy_tests::{
    Cluster, Place, SluiceDaemon,
    cluster_mode::{self, ClusterMode, SYNC_TIMEOUT, pod_ip},
    fake_apiserver::{
        FakeApiServer,
        objects::{self, ready},
    },
};

use crate::flows::{self, Spec, Summary};

/// The soak's sizes.
pub struct Params {
    pub seconds: u64,
    /// Long-lived flows through XDP (from off the cluster); the socket LB gets the same count,
    /// split over a pod on each node.
    pub tcp_flows: usize,
    pub udp_flows: usize,
    pub restart_every: Duration,
    /// Services created or deleted a second.
    pub churn_per_second: u32,
    /// How often the flows' Service gains or loses its extra endpoints.
    pub scale_every: Duration,
    pub api_outage: Duration,
}

/// One traffic generator's place and what it saw.
pub struct Generator {
    pub path: &'static str,
    pub summary: Summary,
}

/// What the soak measured.
pub struct Outcome {
    pub generators: Vec<Generator>,
    /// Each restart: the node and how long from the restart to its ready line.
    pub restarts: Vec<(&'static str, Duration)>,
    /// Restarts left out while the API server was away (a daemon gets ready only after its
    /// first list).
    pub restarts_skipped: usize,
    pub churn_changes: u64,
    pub scale_changes: u64,
    pub api_outage: Duration,
    /// From the end of the disturbances until both nodes held exactly the API's Services.
    pub converged_in: Duration,
    pub seconds: u64,
}

const CHURN_SERVICES: u32 = 50;
/// How long the generators may take to open their flows.
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);

pub fn run(params: &Params) -> Result<Outcome> {
    let mut mode = cluster_mode::start();
    let node1_ip = mode.cluster.node("node1").ip;
    let echo = Ipv4Addr::new(198, 19, 0, 10);
    let socket_tcp = params.tcp_flows / 2;
    let socket_udp = params.udp_flows / 2;
    let plans = [
        (
            "XDP: off-node client to node1's NodePort",
            Place::Client,
            sock(node1_ip, 30080),
            sock(node1_ip, 30053),
            params.tcp_flows,
            params.udp_flows,
        ),
        (
            "socket LB: pod-1b (node1) to the ClusterIP",
            Place::Pod("pod-1b"),
            sock(echo, 80),
            sock(echo, 53),
            socket_tcp,
            socket_udp,
        ),
        (
            "socket LB: pod-2a (node2) to the ClusterIP",
            Place::Pod("pod-2a"),
            sock(echo, 80),
            sock(echo, 53),
            params.tcp_flows - socket_tcp,
            params.udp_flows - socket_udp,
        ),
    ];
    let mut children = Vec::new();
    for (path, place, tcp_target, udp_target, tcp_flows, udp_flows) in plans {
        let spec = Spec {
            tcp_target,
            udp_target,
            tcp_flows,
            udp_flows,
            seconds: params.seconds,
            connect_timeout_ms: 3000,
        };
        children.push((path, flows::spawn_at(&mode.cluster, place, &spec.args())?));
    }
    for (path, child) in &mut children {
        child
            .wait_for_stdout(OPEN_TIMEOUT, |line| line == "open")
            .with_context(|| {
                format!("{path}: the flows did not open\n{}", child.output_report())
            })?;
    }

    let disturbed = disturb(&mut mode, params)?;
    let mut generators = Vec::new();
    for (path, mut child) in children {
        let summary: Summary = flows::last_json_line(&mut child, Duration::from_secs(60))
            .with_context(|| format!("{path}: the generator"))?;
        generators.push(Generator { path, summary });
    }
    Ok(Outcome {
        generators,
        seconds: params.seconds,
        ..disturbed
    })
}

fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// Runs every disturbance for the soak's duration; returns what happened (generators empty).
fn disturb(mode: &mut ClusterMode, params: &Params) -> Result<Outcome> {
    let stop = AtomicBool::new(false);
    let churn_changes = AtomicU64::new(0);
    let scale_changes = AtomicU64::new(0);
    let began = Instant::now();
    let end = began + Duration::from_secs(params.seconds);
    let outage_at = began + Duration::from_secs(params.seconds) / 2;
    let ClusterMode {
        node1,
        node2,
        api,
        cluster,
    } = mode;
    let (api, cluster) = (&*api, &*cluster);
    let mut restarts = Vec::new();
    let mut restarts_skipped = 0;
    let mut api_outage = Duration::ZERO;
    thread::scope(|scope| -> Result<()> {
        scope.spawn(|| {
            let gap = Duration::from_secs(1) / params.churn_per_second.max(1);
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                churn_once(api, cluster, i);
                churn_changes.fetch_add(1, Ordering::Relaxed);
                i += 1;
                thread::sleep(gap);
            }
        });
        scope.spawn(|| {
            let mut up = false;
            while !sleep_unless(&stop, params.scale_every) {
                up = !up;
                scale(api, cluster, up);
                scale_changes.fetch_add(1, Ordering::Relaxed);
            }
            if up {
                scale(api, cluster, false);
            }
        });
        let mut next_restart = began + params.restart_every;
        let mut outage_done = false;
        let mut turn = 0;
        while Instant::now() < end {
            let now = Instant::now();
            if !outage_done && now >= outage_at {
                api.stop();
                thread::sleep(params.api_outage);
                api.start();
                api_outage = params.api_outage;
                outage_done = true;
                let missed =
                    params.api_outage.as_millis() / params.restart_every.as_millis().max(1);
                restarts_skipped += usize::try_from(missed).unwrap_or(0);
                next_restart = Instant::now() + params.restart_every;
            } else if now >= next_restart {
                let (name, daemon) = if turn % 2 == 0 {
                    ("node1", &mut *node1)
                } else {
                    ("node2", &mut *node2)
                };
                turn += 1;
                daemon.kill();
                let killed = Instant::now();
                daemon.start_again();
                restarts.push((name, killed.elapsed()));
                next_restart += params.restart_every;
            }
            thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        Ok(())
    })?;
    let settled = Instant::now();
    let churn_changes = churn_changes.into_inner();
    wait_converged(node1, node2, churn_changes)?;
    Ok(Outcome {
        generators: Vec::new(),
        restarts,
        restarts_skipped,
        churn_changes,
        scale_changes: scale_changes.into_inner(),
        api_outage,
        converged_in: settled.elapsed(),
        seconds: params.seconds,
    })
}

/// Sleeps `how_long` in small steps; true once `stop` is set.
fn sleep_unless(stop: &AtomicBool, how_long: Duration) -> bool {
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    stop.load(Ordering::Relaxed)
}

fn churn_name(n: u32) -> String {
    format!("churn-{n}")
}

/// The `i`th change of the churn: Service `churn-(i/2 % 50)` created with its slice (even
/// `i`) or deleted (odd).
fn churn_once(api: &FakeApiServer, cluster: &Cluster, i: u32) {
    let n = (i / 2) % CHURN_SERVICES;
    let name = churn_name(n);
    if i.is_multiple_of(2) {
        let ip = format!("198.19.1.{}", n + 1);
        api.apply(objects::service(
            &name,
            "ClusterIP",
            &ip,
            &[("http", "TCP", 80, 8080, 0)],
            &[],
        ));
        api.apply(objects::endpoint_slice(
            &format!("{name}-a"),
            &name,
            &[ready(pod_ip(cluster, "pod-1a"), "node1")],
            &[("http", "TCP", 8080)],
        ));
    } else {
        api.delete("EndpointSlice", "default", &format!("{name}-a"));
        api.delete("Service", "default", &name);
    }
}

/// The flows' own Service gains (`up`) or loses a third slice: every pod on its other ports
/// (TCP 80, UDP 53, which the echo servers also serve).
fn scale(api: &FakeApiServer, cluster: &Cluster, up: bool) {
    if up {
        let endpoints: Vec<_> = cluster
            .pods()
            .iter()
            .map(|pod| ready(pod.ip, pod.node.as_str()))
            .collect();
        api.apply(objects::endpoint_slice(
            "echo-c",
            "echo",
            &endpoints,
            &[("http", "TCP", 80), ("dns", "UDP", 53)],
        ));
    } else {
        api.delete("EndpointSlice", "default", "echo-c");
    }
}

/// Waits until both nodes program exactly the churn Services the API server holds after
/// `changes` churn changes.
fn wait_converged(node1: &SluiceDaemon, node2: &SluiceDaemon, changes: u64) -> Result<()> {
    let expected = churn_alive(changes);
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        let seen = [node1, node2].map(churn_services_on);
        if seen.iter().all(|s| *s == expected) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the nodes did not converge: API {expected:?}, nodes {seen:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The churn Services that exist after the first `changes` changes of [`churn_once`].
fn churn_alive(changes: u64) -> BTreeSet<String> {
    let mut alive = BTreeSet::new();
    for i in 0..changes {
        let name = churn_name(u32::try_from((i / 2) % u64::from(CHURN_SERVICES)).unwrap_or(0));
        if i.is_multiple_of(2) {
            alive.insert(name);
        } else {
            alive.remove(&name);
        }
    }
    alive
}

fn churn_services_on(daemon: &SluiceDaemon) -> BTreeSet<String> {
    let services = daemon.services_json();
    services
        .as_array()
        .into_iter()
        .flatten()
        .filter(|row| row["programmed"] == true)
        .filter_map(|row| row["name"].as_str())
        .filter_map(|name| name.strip_prefix("default/"))
        .filter_map(|name| name.split(':').next())
        .filter(|name| name.starts_with("churn-"))
        .map(str::to_owned)
        .collect()
}
