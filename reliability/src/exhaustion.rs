//! Exhaustion: the conntrack table flooded with new flows, a backend's SNAT ports used up,
//! and more Services than the maps hold. For each: what happened to the flows and Services
//! that were already there, and what the overflow got (a named drop counter or error).

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    ops::RangeInclusive,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use proxy_common::map_names;
use proxy_tests::{
    Place, Proto,
    manifests::pods_yaml,
    scenario::{ALL_PODS, SPREAD_REQUESTS, Scenario, pods},
};
use proxy_user::datapath::Maps;

use crate::flows::{self, AffinitySummary, ManySummary, Spec, Summary};

/// The section's sizes.
pub struct Params {
    /// `--ct-max-entries` (new flows) and `--ct-established-max-entries` (confirmed ones) of
    /// the flooded node: the flood's answered connections fill the established map too, and
    /// the held flows, confirmed before it, must keep their entries in both cases.
    pub ct_entries: u32,
    /// New connections of the flood.
    pub flood: usize,
    /// Long-lived flows held through the flood (TCP; a fifth as many UDP).
    pub held: usize,
    /// Connections held to the one backend whose SNAT ports (`--snat-ports`) run out.
    pub snat_flows: usize,
    pub snat_ports: RangeInclusive<u16>,
    /// `--max-backend-slots` of the node given too many Services, and how many it is given.
    pub slots: u32,
    pub services: usize,
    /// `--affinity-max-entries` of the node whose affinity Service gets more clients, and how
    /// many clients (each its own address).
    pub affinity_entries: u32,
    pub affinity_clients: u32,
}

pub struct Conntrack {
    pub capacity: u32,
    /// Most entries seen in the LRU map of new flows (`CT_V1`).
    pub peak: u64,
    /// Most entries seen in the map of confirmed flows (`CT_EST_V1`): the held flows, and
    /// the flood's answered connections while there is room.
    pub peak_established: u64,
    /// Replies that confirmed a flow the full established map had no room for
    /// (`ct_established_full`): those flows stayed in the LRU.
    pub established_full: u64,
    pub held: Summary,
    pub flood: ManySummary,
}

pub struct Snat {
    pub asked: usize,
    pub ports: RangeInclusive<u16>,
    pub opened: usize,
    pub failed: usize,
    pub no_snat_port: u64,
    /// Which pods answered new requests to the other Service meanwhile.
    pub others_answered_by: Vec<String>,
    pub examples: Vec<String>,
}

pub struct ServicesFull {
    pub error: String,
    /// The standard Service still answered by every pod.
    pub still_serving: bool,
    /// A change to another Service (a pod no longer ready) reached the maps while the
    /// overflow was there.
    pub later_change_applied: bool,
}

pub struct AffinityFull {
    pub capacity: u32,
    /// Entries of the affinity map after every client connected.
    pub entries: u64,
    pub clients: AffinitySummary,
    /// Every pod still answered echo afterwards.
    pub still_serving: bool,
}

pub struct Outcome {
    pub conntrack: Result<Conntrack, String>,
    pub snat: Result<Snat, String>,
    pub services: Result<ServicesFull, String>,
    pub affinity: Result<AffinityFull, String>,
}

/// Each part on a cluster of its own; one failing leaves the others' figures.
pub fn run(params: &Params) -> Outcome {
    Outcome {
        conntrack: crate::section(|| conntrack(params)),
        snat: crate::section(|| snat(params)),
        services: crate::section(|| services_full(params)),
        affinity: crate::section(|| affinity_full(params)),
    }
}

fn node_port(scenario: &Scenario, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(scenario.cluster.node("node1").ip), port)
}

/// Long-lived flows through node1's NodePort while a flood of new connections overfills a
/// small conntrack table.
fn conntrack(params: &Params) -> Result<Conntrack> {
    let ct = params.ct_entries.to_string();
    let scenario = Scenario::start(&["--ct-max-entries", &ct, "--ct-established-max-entries", &ct]);
    let spec = Spec {
        tcp_target: node_port(&scenario, 30080),
        udp_target: node_port(&scenario, 30053),
        tcp_flows: params.held,
        udp_flows: params.held / 5,
        seconds: 20,
        connect_timeout_ms: 3000,
    };
    let mut held = flows::spawn_at(&scenario.cluster, Place::Client, &spec.args())?;
    held.wait_for_stdout(Duration::from_secs(60), |l| l == "open")?;
    let pin_dir = scenario.node1.config().pin_dir.clone();
    let stop = AtomicBool::new(false);
    let peak = AtomicU64::new(0);
    let peak_established = AtomicU64::new(0);
    let flood = thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Ok((new, established)) = conntrack_entries(&pin_dir) {
                    peak.fetch_max(new, Ordering::Relaxed);
                    peak_established.fetch_max(established, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(200));
            }
        });
        let flood = flows::connect_many_at(
            &scenario.cluster,
            Place::Client,
            node_port(&scenario, 30080),
            params.flood,
        );
        stop.store(true, Ordering::Relaxed);
        flood
    })?;
    let held: Summary = flows::last_json_line(&mut held, Duration::from_secs(120))?;
    let established_full = scenario.node1.stats_count(
        "passes",
        proxy_common::stats::PassReason::CtEstablishedFull.as_str(),
    );
    Ok(Conntrack {
        capacity: params.ct_entries,
        peak: peak.into_inner(),
        peak_established: peak_established.into_inner(),
        established_full,
        held,
        flood,
    })
}

/// IPv4 conntrack entries: of new flows, of confirmed ones.
fn conntrack_entries(pin_dir: &std::path::Path) -> Result<(u64, u64)> {
    let maps = Maps::open_pinned(pin_dir)?;
    let fill = maps.fill(pin_dir)?;
    let entries = |name: &str| {
        fill.iter()
            .find(|m| m.map == name)
            .map(|m| m.entries)
            .with_context(|| format!("no map {name}"))
    };
    Ok((
        entries(map_names::CONNTRACK)?,
        entries(map_names::CONNTRACK_ESTABLISHED)?,
    ))
}

/// A NodePort whose one backend is remote (pod-2a, SNATed by node1), held open by more
/// flows than node1 has SNAT ports for that backend.
fn snat(params: &Params) -> Result<Snat> {
    let ports = proxy_user::datapath::snat_ports::text(&params.snat_ports);
    let scenario = Scenario::start(&["--snat-ports", &ports]);
    let pod = scenario.cluster.pod("pod-2a").ip;
    scenario
        .manifests
        .write("snat.yaml", &one_backend_service(pod));
    let target = node_port(&scenario, 30400);
    // The Service is programmed once a connection to it is answered.
    let deadline = Instant::now() + Duration::from_secs(20);
    while flows::connect_many_at(&scenario.cluster, Place::Client, target, 1)?.failed > 0 {
        if Instant::now() > deadline {
            bail!("the NodePort {target} never answered");
        }
        thread::sleep(Duration::from_millis(200));
    }
    let spec = Spec {
        tcp_target: target,
        udp_target: target,
        tcp_flows: params.snat_flows,
        udp_flows: 0,
        seconds: 1,
        connect_timeout_ms: 1500,
    };
    let mut held = flows::spawn_at(&scenario.cluster, Place::Client, &spec.args())?;
    held.wait_for_stdout(Duration::from_secs(600), |l| l == "open")?;
    // While the ports are taken: the echo Service (whose pod-2a backend is another port)
    // from off the cluster.
    let others = scenario.answering_pods(
        Place::Client,
        Proto::Tcp,
        scenario.cluster.node("node1").ip,
        30080,
        SPREAD_REQUESTS,
    );
    let summary: Summary = flows::last_json_line(&mut held, Duration::from_secs(120))?;
    Ok(Snat {
        asked: params.snat_flows,
        ports: params.snat_ports.clone(),
        opened: params.snat_flows - summary.tcp_open_failed,
        failed: summary.tcp_open_failed,
        no_snat_port: scenario.node1.stats_count("drops", "no_snat_port"),
        others_answered_by: others.into_iter().collect(),
        examples: summary.examples,
    })
}

/// Service `snat`: NodePort 30400, its one endpoint `pod`:80 on node2.
fn one_backend_service(pod: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: snat, namespace: default}}\nspec:\n  \
         type: NodePort\n  ports:\n  - {{name: web, port: 80, protocol: TCP, nodePort: 30400}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: snat-1\n  \
         namespace: default\n  labels: {{kubernetes.io/service-name: snat}}\naddressType: IPv4\n\
         endpoints:\n- addresses: [\"{pod}\"]\n  nodeName: node2\n  conditions: {{ready: true}}\n\
         ports:\n- {{name: web, protocol: TCP, port: 80}}\n"
    )
}

/// More Services than `--max-backend-slots` holds, then a change to another Service.
fn services_full(params: &Params) -> Result<ServicesFull> {
    let slots = params.slots.to_string();
    let scenario = Scenario::start(&["--max-backend-slots", &slots]);
    let mut many = String::new();
    for i in 0..params.services {
        let _ = write!(
            many,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: over-{i}, namespace: default}}\n\
             spec:\n  selector: {{app: echo}}\n  ports:\n  - {{port: 80, targetPort: 8080, protocol: TCP}}\n"
        );
    }
    scenario.manifests.write("many.yaml", &many);
    let deadline = Instant::now() + Duration::from_secs(20);
    let error = loop {
        if let Some(line) = scenario
            .node1
            .stderr()
            .lines()
            .find(|l| l.contains("is full"))
        {
            break line.trim().to_owned();
        }
        if Instant::now() > deadline {
            bail!("no error about the full map:\n{}", scenario.node1.stderr());
        }
        thread::sleep(Duration::from_millis(100));
    };
    let echo: Ipv4Addr = proxy_tests::manifests::ECHO_IP.parse()?;
    let still_serving =
        scenario.answering_pods(Place::Pod("pod-1a"), Proto::Tcp, echo, 80, SPREAD_REQUESTS)
            == pods(&ALL_PODS);
    // pod-2a no longer ready: echo's backends on node1 must lose it.
    scenario.manifests.write(
        "pods.yaml",
        &pods_yaml(&scenario.cluster, |name| name != "pod-2a"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let later_change_applied = loop {
        let backends = proxy_tests::scenario::backends_of(&scenario.node1, "198.19.0.10:80");
        if backends.is_some_and(|b| !b.contains(&scenario.cluster.pod("pod-2a").ip)) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        thread::sleep(Duration::from_millis(100));
    };
    Ok(ServicesFull {
        error,
        still_serving,
        later_change_applied,
    })
}

/// Where the affinity clients' addresses start: outside the underlay's /24, routed to the
/// client by both nodes.
const AFFINITY_CLIENTS: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);
const AFFINITY_CLIENTS_NET: &str = "198.18.200.0/22";
/// The last clients that connect a second time, expecting the pod of their first connection.
const AFFINITY_RECHECK: u32 = 32;

/// A ClientIP-affinity NodePort given more clients (each from its own address) than
/// `--affinity-max-entries` remembers.
fn affinity_full(params: &Params) -> Result<AffinityFull> {
    let capacity = params.affinity_entries.to_string();
    let scenario = Scenario::start(&["--affinity-max-entries", &capacity]);
    let cluster = &scenario.cluster;
    let clients = params.affinity_clients.min(1000);
    let mut batch = String::new();
    for i in 0..clients {
        let addr = Ipv4Addr::from(u32::from(AFFINITY_CLIENTS) + i);
        let _ = writeln!(batch, "addr add {addr}/32 dev eth0");
    }
    let dir = std::env::temp_dir().join(format!("sluice-affinity-{}", std::process::id()));
    std::fs::write(&dir, batch)?;
    let added = proxy_tests::netns::ip(&[
        "-n",
        cluster.client().netns.name(),
        "-batch",
        &dir.display().to_string(),
    ]);
    let _ = std::fs::remove_file(&dir);
    added?;
    let client_ip = proxy_tests::topology::CLIENT_IP.to_string();
    for node in ["node1", "node2"] {
        cluster
            .node(node)
            .netns
            .ip(&["route", "add", AFFINITY_CLIENTS_NET, "via", &client_ip])?;
    }
    scenario.manifests.write(
        "sticky.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: sticky, namespace: default}\nspec:\n  \
         type: NodePort\n  selector: {app: echo}\n  sessionAffinity: ClientIP\n  ports:\n  - \
         {port: 80, targetPort: 8080, protocol: TCP, nodePort: 30410}\n",
    );
    let target = node_port(&scenario, 30410);
    scenario.wait_for_backends(
        "node1",
        &format!("*:{}", target.port()),
        &ALL_PODS.map(|pod| cluster.pod(pod).ip),
    );
    let args = [
        "affinity-clients".to_owned(),
        "--target".to_owned(),
        target.to_string(),
        "--first".to_owned(),
        AFFINITY_CLIENTS.to_string(),
        "--clients".to_owned(),
        clients.to_string(),
        "--recheck".to_owned(),
        AFFINITY_RECHECK.to_string(),
    ];
    let mut child = flows::spawn_at(cluster, Place::Client, &args)?;
    let summary: AffinitySummary = flows::last_json_line(&mut child, Duration::from_secs(300))?;
    let maps = Maps::open_pinned(&scenario.node1.config().pin_dir)?;
    let entries = maps.affinity.keys().flatten().count() as u64;
    let echo: Ipv4Addr = proxy_tests::manifests::ECHO_IP.parse()?;
    let still_serving =
        scenario.answering_pods(Place::Pod("pod-1a"), Proto::Tcp, echo, 80, SPREAD_REQUESTS)
            == pods(&ALL_PODS);
    Ok(AffinityFull {
        capacity: params.affinity_entries,
        entries,
        clients: summary,
        still_serving,
    })
}
