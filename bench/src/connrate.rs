//! Connection rate and latency through the netns test cluster: a Rust client doing
//! connect / request / read to EOF / close in a loop (a new source port every time), against
//! a server in pod-1a, through each path a Service can take, each next to the direct path
//! measured right before it in the same round.
//!
//! - on-node (client in pod-1b, in node1's cgroup): direct to pod-1a; Sluice socket-LB
//!   (ClusterIP rewritten at connect); kube-proxy iptables and nftables (ClusterIP DNAT in
//!   node1's PREROUTING).
//! - off-node (client namespace over the underlay): direct to pod-1a (routed via node1);
//!   Sluice XDP NodePort; kube-proxy iptables and nftables (the ClusterIP routed via node1).
//!
//! - over IPv6 (on-node): Sluice socket-LB to an IPv6 ClusterIP beside the direct IPv6 path,
//!   each round also timing the IPv4 socket-LB run, for IPv6 as a ratio against IPv4.
//!
//! The rule sets hold N services with the measured one last in KUBE-SERVICES, and are loaded
//! into node1's namespace only; Sluice runs as `sluice run --manifests` with the same N.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use proxy_tests::{
    Cluster, Place, SERVICE_CIDR6, SluiceDaemon, cluster_mode,
    fake_apiserver::{
        FakeApiServer,
        objects::{self, ready},
    },
    manifests::ManifestDir,
    sluice::DaemonConfig,
};

use crate::{
    fixture::{cluster_frontend, pod_addr},
    plot, rules,
    stats::{Samples, mib, ratio},
};

/// Each variant's backend port on pod-1a: one per variant, so no variant meets the server's
/// `TIME_WAIT` sockets of another. (A connection through iptables was made to the ClusterIP, so
/// its TCP timestamp offset differs from a socket-LB connection's to the pod; a SYN reusing the
/// 4-tuple of a `TIME_WAIT` socket then fails PAWS and stalls. With a shared port, the variant
/// measured after another lost 98% of its rate to this.)
const IPTABLES_PORT: u16 = 9000;
const NFT_PORT: u16 = 9002;
const SLUICE_PORT: u16 = 9004;
/// The direct path goes to a second server port. With one port, a direct connection reusing the
/// source port of a closed NodePort flow used to match its stale reply entry on node1's tc
/// egress (a bug this bench found, since fixed); a separate port also keeps each path clear of
/// the other's `TIME_WAIT` sockets.
const DIRECT_PORT: u16 = 9001;
/// The IPv6 server ports on pod-1a (socket-LB backend, direct), apart from the IPv4 ones.
const SLUICE_PORT6: u16 = 9006;
const DIRECT_PORT6: u16 = 9007;
/// The IPv6 ClusterIP measured, in the harness's `fd00:19::/108`.
const FRONTEND6: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0xe, 1), 80, 0, 0);
const FRONTEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 200, 1), 80);
const NODE_PORT: u16 = 30080;
const POD_1A: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const NODE1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);

#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub services: &'static [usize],
    pub rounds: usize,
    pub millis: u64,
}

/// A real `sluice run --manifests` daemon with `services` services: how long it took to get
/// ready (parse, plan, maps) and its memory, from /proc; and how long restarts took.
#[derive(Clone, Debug, Default)]
pub struct DaemonFootprint {
    pub services: usize,
    /// Process start to the ready line, first start (empty pins: every program verified).
    pub ready_secs: f64,
    /// Process start to the ready line after a `SIGKILL`, over the pins of the run before,
    /// per round.
    pub restart_secs: Samples,
    /// The last restart's ready line from `hooks:` on (how the programs were come by).
    pub restart_hooks: String,
    /// The same services from the API server (cluster mode, the fake one): restarts as
    /// above, per round, and the last one's ready line from `hooks:` on.
    pub cluster_restart_secs: Samples,
    pub cluster_restart_hooks: String,
    /// `VmRSS` after the connection runs.
    pub rss_bytes: u64,
    /// `VmHWM`: the peak, reached during the first sync.
    pub peak_bytes: u64,
    /// CPU time the daemon used while the connection runs went on (it should be idle).
    pub busy_secs: f64,
}

/// What the connection-rate section measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub rows: Vec<Row>,
    pub daemons: Vec<DaemonFootprint>,
    /// Per size: the socket LB's IPv6 rate over its IPv4 rate, round by round.
    pub ipv6_vs_ipv4: Vec<(usize, Samples)>,
}

/// One client run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    pub rate: f64,
    pub p50: f64,
    pub p99: f64,
    pub errors: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Row {
    pub services: usize,
    pub variant: String,
    pub direct_rate: Samples,
    pub rate: Samples,
    pub direct_p50: Samples,
    pub p50: Samples,
    pub direct_p99: Samples,
    pub p99: Samples,
    pub errors: u64,
    /// Direct, measured in the same phase before the proxy was loaded (no rules, no Sluice).
    pub clean_rate: Samples,
    pub clean_p50: Samples,
    pub clean_p99: Samples,
}

impl Row {
    /// The variant against the clean direct path, round by round.
    pub fn rate_ratio(&self) -> Samples {
        ratio(&self.rate, &self.clean_rate)
    }

    /// The variant against the direct path measured right before it, with the proxy loaded.
    pub fn loaded_ratio(&self) -> Samples {
        ratio(&self.rate, &self.direct_rate)
    }

    /// What loading the proxy did to traffic that does not use it.
    pub fn collateral(&self) -> Samples {
        ratio(&self.direct_rate, &self.clean_rate)
    }
}

/// Clean direct runs per client place: (on-node, off-node).
type Clean = [Vec<Run>; 2];

struct Bench<'a> {
    cluster: &'a Cluster,
    exe: std::path::PathBuf,
    millis: u64,
}

impl Bench<'_> {
    fn client(&self, place: Place<'_>, target: impl Into<SocketAddr>) -> Result<Run> {
        let target: SocketAddr = target.into();
        let mut cmd = Command::new(&self.exe);
        cmd.args([
            "client",
            "--target",
            &target.to_string(),
            "--millis",
            &self.millis.to_string(),
        ]);
        let finished = self
            .cluster
            .run(place, cmd, Duration::from_millis(self.millis + 30_000));
        if !finished.status.success() {
            let mut dump = Command::new("sh");
            dump.args(["-c", "iptables-save -c 2>&1 | tail -5; nft list ruleset 2>&1 | head -30; ip route; sysctl net.ipv4.ip_forward"]);
            let dump = self
                .cluster
                .run(Place::Node("node1"), dump, Duration::from_secs(20));
            bail!(
                "bench client to {target} at {place:?} failed: {}\nnode1: {}",
                finished.stderr.trim(),
                dump.stdout
            );
        }
        let json: serde_json::Value = serde_json::from_str(finished.stdout.trim())
            .with_context(|| format!("client output {:?}", finished.stdout))?;
        let num = |k: &str| json[k].as_f64().unwrap_or(f64::NAN);
        if num("count") < 1.0 {
            bail!("no connection to {target} from {place:?} succeeded");
        }
        Ok(Run {
            rate: num("count") / num("secs"),
            p50: num("p50"),
            p99: num("p99"),
            errors: json["errors"].as_u64().unwrap_or(0),
        })
    }

    /// Waits until `target` answers from `place` (links settle after programs attach).
    fn settle(&self, place: Place<'_>, target: impl Into<SocketAddr> + Copy) -> Result<()> {
        let target: SocketAddr = target.into();
        let started = std::time::Instant::now();
        loop {
            let quick = Bench {
                cluster: self.cluster,
                exe: self.exe.clone(),
                millis: 50,
            };
            match quick.client(place, target) {
                Ok(_) => return Ok(()),
                Err(err) if started.elapsed() > Duration::from_secs(30) => {
                    return Err(err.context(format!("{target} never answered from {place:?}")));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// Rounds of the direct path from both client places, before a proxy is loaded.
    fn clean(&self, rounds: usize) -> Result<Clean> {
        let direct = SocketAddrV4::new(POD_1A, DIRECT_PORT);
        let mut clean: Clean = [Vec::new(), Vec::new()];
        for (n, place) in [Place::Pod("pod-1b"), Place::Client]
            .into_iter()
            .enumerate()
        {
            self.settle(place, direct)?;
            for _ in 0..rounds {
                clean[n].push(self.client(place, direct)?);
            }
        }
        Ok(clean)
    }

    /// Rounds of (direct, variant) pairs for the on-node and the off-node client.
    fn pairs(
        &self,
        services: usize,
        rounds: usize,
        clean: &Clean,
        on_node: Option<(&str, SocketAddrV4)>,
        off_node: Option<(&str, SocketAddrV4)>,
    ) -> Result<Vec<Row>> {
        let direct = SocketAddrV4::new(POD_1A, DIRECT_PORT);
        let mut rows = Vec::new();
        for (n, (place, variant)) in [(Place::Pod("pod-1b"), on_node), (Place::Client, off_node)]
            .into_iter()
            .enumerate()
        {
            let Some((name, target)) = variant else {
                continue;
            };
            self.settle(place, direct)?;
            self.settle(place, target)?;
            let mut row = Row {
                services,
                variant: name.to_owned(),
                ..Row::default()
            };
            for run in &clean[n] {
                row.clean_rate.push(run.rate);
                row.clean_p50.push(run.p50);
                row.clean_p99.push(run.p99);
            }
            for _ in 0..rounds {
                let d = self.client(place, direct)?;
                let v = self.client(place, target)?;
                row.direct_rate.push(d.rate);
                row.rate.push(v.rate);
                row.direct_p50.push(d.p50);
                row.p50.push(v.p50);
                row.direct_p99.push(d.p99);
                row.p99.push(v.p99);
                row.errors += v.errors;
            }
            rows.push(row);
        }
        Ok(rows)
    }
}

impl Bench<'_> {
    /// Rounds of (direct IPv6, socket LB IPv6, socket LB IPv4) from pod-1b: the IPv6 row
    /// (against the IPv6 direct path, and the IPv4 clean direct path) and IPv6 / IPv4.
    fn ipv6_pairs(&self, services: usize, rounds: usize, clean: &Clean) -> Result<(Row, Samples)> {
        let place = Place::Pod("pod-1b");
        let pod_1a6 = self.cluster.pod("pod-1a").ip6;
        let direct = SocketAddrV6::new(pod_1a6, DIRECT_PORT6, 0, 0);
        self.settle(place, direct)?;
        self.settle(place, FRONTEND6)?;
        let mut row = Row {
            services,
            variant: "Sluice socket-LB IPv6 ClusterIP (pod → service)".to_owned(),
            ..Row::default()
        };
        for run in &clean[0] {
            row.clean_rate.push(run.rate);
            row.clean_p50.push(run.p50);
            row.clean_p99.push(run.p99);
        }
        let (mut v6, mut v4) = (Samples::default(), Samples::default());
        for _ in 0..rounds {
            let d = self.client(place, direct)?;
            let v = self.client(place, FRONTEND6)?;
            let four = self.client(place, FRONTEND)?;
            row.direct_rate.push(d.rate);
            row.rate.push(v.rate);
            row.direct_p50.push(d.p50);
            row.p50.push(v.p50);
            row.direct_p99.push(d.p99);
            row.p99.push(v.p99);
            row.errors += v.errors;
            v6.push(v.rate);
            v4.push(four.rate);
        }
        Ok((row, ratio(&v6, &v4)))
    }
}

fn node1(cluster: &Cluster, argv: &[&str]) -> Result<()> {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    cluster
        .run(Place::Node("node1"), cmd, Duration::from_secs(600))
        .check(&argv.join(" "))?;
    Ok(())
}

/// N-1 filler services plus the measured one, as manifests for `sluice run`.
fn manifests(services: usize, pod_1a6: Ipv6Addr) -> String {
    let mut out = String::with_capacity(services * 400);
    let _ = write!(
        out,
        "apiVersion: v1\nkind: Service\nmetadata: {{name: measured, namespace: bench}}\n\
         spec:\n  type: NodePort\n  clusterIP: {}\n  ports:\n  - {{port: {}, targetPort: {SLUICE_PORT}, nodePort: {NODE_PORT}}}\n\
         ---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: measured, namespace: bench}}\n\
         subsets:\n- addresses: [{{ip: {POD_1A}, nodeName: node1}}]\n  ports: [{{port: {SLUICE_PORT}}}]\n",
        FRONTEND.ip(),
        FRONTEND.port()
    );
    let _ = write!(
        out,
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: measured6, namespace: bench}}\n\
         spec:\n  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n  clusterIP: {ip}\n  \
         ports:\n  - {{name: http, port: {port}, targetPort: {SLUICE_PORT6}}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: measured6, namespace: bench, labels: {{kubernetes.io/service-name: measured6}}}}\n\
         addressType: IPv6\nports: [{{name: http, port: {SLUICE_PORT6}}}]\n\
         endpoints:\n- addresses: [\"{pod_1a6}\"]\n  nodeName: node1\n",
        ip = FRONTEND6.ip(),
        port = FRONTEND6.port()
    );
    for i in 1..services {
        let f = cluster_frontend(i);
        let (a, b) = (pod_addr(2 * i), pod_addr(2 * i + 1));
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: bench}}\n\
             spec:\n  clusterIP: {}\n  ports:\n  - {{port: {}, targetPort: 8080}}\n\
             ---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: s{i}, namespace: bench}}\n\
             subsets:\n- addresses: [{{ip: {}, nodeName: node2}}, {{ip: {}, nodeName: node2}}]\n  ports: [{{port: 8080}}]\n",
            f.ip(),
            f.port(),
            a.ip(),
            b.ip()
        );
    }
    out
}

/// kube-proxy's iptables rules for `svc_count` services, then the measured one last.
fn iptables_with_measured(svc_count: usize) -> String {
    let mut ipt = rules::iptables(svc_count, 2, None);
    let measured = ":KUBE-SVC-MEASURED - [0:0]\n:KUBE-SEP-MEASURED - [0:0]\n";
    ipt = ipt.replacen("*nat\n", &format!("*nat\n{measured}"), 1);
    ipt.replacen(
        "COMMIT\n",
        &format!(
            "-A KUBE-SERVICES -d {}/32 -p tcp -m tcp --dport {} -j KUBE-SVC-MEASURED\n\
             -A KUBE-SVC-MEASURED -j KUBE-SEP-MEASURED\n\
             -A KUBE-SEP-MEASURED -p tcp -m tcp -j DNAT --to-destination {POD_1A}:{IPTABLES_PORT}\n\
             COMMIT\n",
            FRONTEND.ip(),
            FRONTEND.port()
        ),
        1,
    )
}

/// kube-proxy's nftables table for `svc_count` services, then the measured one.
fn nft_with_measured(svc_count: usize) -> String {
    let mut nft = rules::nft(svc_count, 2);
    let _ = writeln!(
        nft,
        "add chain ip kube-proxy service-measured\n\
         add rule ip kube-proxy service-measured meta l4proto tcp dnat to {POD_1A}:{NFT_PORT}\n\
         add element ip kube-proxy service-ips {{ {} . tcp . {} : goto service-measured }}",
        FRONTEND.ip(),
        FRONTEND.port()
    );
    nft
}

#[expect(
    clippy::too_many_lines,
    reason = "per size one cluster, in which iptables, nftables and Sluice are measured in turn"
)]
pub fn run(params: &Params, log: &mut dyn FnMut(&str)) -> Result<Outcome> {
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    let mut daemons = Vec::new();
    let mut ipv6_vs_ipv4 = Vec::new();
    for &services in params.services {
        let cluster = Cluster::try_new().context("build the netns cluster")?;
        cluster.client().netns.ip(&[
            "route",
            "replace",
            "198.18.1.0/24",
            "via",
            &NODE1.to_string(),
        ])?;
        let _servers: Vec<_> = [
            (IPTABLES_PORT, false),
            (NFT_PORT, false),
            (SLUICE_PORT, false),
            (DIRECT_PORT, false),
            (SLUICE_PORT6, true),
            (DIRECT_PORT6, true),
        ]
        .iter()
        .map(|&(port, ipv6)| {
            let mut cmd = Command::new(&exe);
            cmd.args(["serve", "--port", &port.to_string()]);
            if ipv6 {
                cmd.arg("--ipv6");
            }
            cluster.spawn(Place::Pod("pod-1a"), &format!("bench-server-{port}"), cmd)
        })
        .collect();
        std::thread::sleep(Duration::from_millis(300));
        let bench = Bench {
            cluster: &cluster,
            exe: exe.clone(),
            millis: params.millis,
        };
        let dir = tempdir("rules")?;
        let svc_count = services.saturating_sub(1);

        // kube-proxy iptables.
        let path = dir.join("iptables.rules");
        std::fs::write(&path, iptables_with_measured(svc_count))?;
        let clean = bench.clean(params.rounds)?;
        // `-w` would take the next word as its wait time: the file goes first.
        node1(
            &cluster,
            &["iptables-restore", path.to_str().context("path")?, "-w"],
        )?;
        rows.extend(bench.pairs(
            services,
            params.rounds,
            &clean,
            Some(("iptables ClusterIP (pod → service)", FRONTEND)),
            Some(("iptables ClusterIP (off-node → service)", FRONTEND)),
        )?);
        node1(&cluster, &["nft", "flush", "ruleset"])?;

        // kube-proxy nftables.
        let path = dir.join("nft.rules");
        std::fs::write(&path, nft_with_measured(svc_count))?;
        let clean = bench.clean(params.rounds)?;
        node1(&cluster, &["nft", "-f", path.to_str().context("path")?])?;
        rows.extend(bench.pairs(
            services,
            params.rounds,
            &clean,
            Some(("nftables ClusterIP (pod → service)", FRONTEND)),
            Some(("nftables ClusterIP (off-node → service)", FRONTEND)),
        )?);
        node1(&cluster, &["nft", "flush", "ruleset"])?;

        // Sluice.
        let manifest_dir = ManifestDir::new("bench");
        let pod_1a6 = cluster.pod("pod-1a").ip6;
        manifest_dir.write("services.yaml", &manifests(services, pod_1a6));
        let node1_ip6 = cluster.node("node1").ip6.to_string();
        let dual_stack = ["--node-ip", &node1_ip6, "--service-cidr", SERVICE_CIDR6];
        let mut config = DaemonConfig::new(&cluster, "node1", manifest_dir.path(), &dual_stack);
        config.ready_timeout = Duration::from_secs(300);
        let clean = bench.clean(params.rounds)?;
        let started = std::time::Instant::now();
        let daemon = SluiceDaemon::launch(config).context("start sluice")?;
        let ready_secs = started.elapsed().as_secs_f64();
        let pid = daemon.pid().context("sluice stopped after getting ready")?;
        let cpu_before = proc_cpu_secs(pid)?;
        log(&format!(
            "connrate: sluice ready with {services} services in {ready_secs:.1} s"
        ));
        rows.extend(bench.pairs(
            services,
            params.rounds,
            &clean,
            Some(("Sluice socket-LB ClusterIP (pod → service)", FRONTEND)),
            Some((
                "Sluice XDP NodePort (off-node → node)",
                SocketAddrV4::new(NODE1, NODE_PORT),
            )),
        )?);
        let (ipv6_row, v6_vs_v4) = bench.ipv6_pairs(services, params.rounds, &clean)?;
        rows.push(ipv6_row);
        log(&format!(
            "connrate: {services} services, Sluice socket-LB IPv6 / IPv4: {:.3} x",
            v6_vs_v4.median()
        ));
        ipv6_vs_ipv4.push((services, v6_vs_v4));
        let mut footprint = DaemonFootprint {
            services,
            ready_secs,
            rss_bytes: proc_status_bytes(pid, "VmRSS")?,
            peak_bytes: proc_status_bytes(pid, "VmHWM")?,
            busy_secs: proc_cpu_secs(pid)? - cpu_before,
            ..DaemonFootprint::default()
        };
        // A node's restart: killed, then started over its own pins (maps full, programs
        // verified by the first start).
        let mut daemon = daemon;
        (footprint.restart_secs, footprint.restart_hooks) = restarts(&mut daemon, params.rounds);
        log(&format!(
            "connrate: sluice with {services} services restarted in {} s ({})",
            footprint.restart_secs.show(3),
            footprint.restart_hooks
        ));
        log(&format!(
            "connrate: sluice with {services} services: RSS {:.1} MiB, peak {:.1} MiB, \
             {:.2} s CPU during the runs",
            mib(footprint.rss_bytes),
            mib(footprint.peak_bytes),
            footprint.busy_secs
        ));
        daemons.push(footprint);
        drop(daemon);
        let (restarts, hooks) = cluster_mode_restarts(&cluster, services, params.rounds)?;
        log(&format!(
            "connrate: sluice in cluster mode with {services} services restarted in {} s ({hooks})",
            restarts.show(3)
        ));
        if let Some(footprint) = daemons.last_mut() {
            footprint.cluster_restart_secs = restarts;
            footprint.cluster_restart_hooks = hooks;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    for row in &rows {
        log(&format!(
            "connrate: {} services, {}: {:.0} conn/s = {:.3} x direct, p50 {} us, p99 {} us",
            row.services,
            row.variant,
            row.rate.median(),
            row.rate_ratio().median(),
            row.p50.median(),
            row.p99.median()
        ));
    }
    for (services, v6_vs_v4) in &ipv6_vs_ipv4 {
        log(&format!(
            "connrate: {services} services, Sluice socket-LB IPv6 / IPv4 conn/s: {:.3} x",
            v6_vs_v4.median()
        ));
    }
    Ok(Outcome {
        rows,
        daemons,
        ipv6_vs_ipv4,
    })
}

/// A node's restarts in cluster mode: `services` ClusterIPs of two endpoints each (as the
/// manifests' filler services) served by the fake API server in node1's namespace, a daemon
/// on node1 following it, then killed (`SIGKILL`) and started again `rounds` times; process
/// start to ready each time, and the last ready line from `hooks:` on.
fn cluster_mode_restarts(
    cluster: &Cluster,
    services: usize,
    rounds: usize,
) -> Result<(Samples, String)> {
    let api = FakeApiServer::start_in(&[&cluster.node("node1").netns]);
    for node in cluster.nodes() {
        api.apply(objects::node(&node.name, &[node.ip.into()]));
    }
    for i in 1..=services {
        let frontend = cluster_frontend(i);
        let name = format!("s{i}");
        api.apply(objects::service(
            &name,
            "ClusterIP",
            &frontend.ip().to_string(),
            &[("http", "TCP", frontend.port(), 8080, 0)],
            &[],
        ));
        let (a, b) = (pod_addr(2 * i), pod_addr(2 * i + 1));
        api.apply(objects::endpoint_slice(
            &format!("{name}-a"),
            &name,
            &[ready(*a.ip(), "node2"), ready(*b.ip(), "node2")],
            &[("http", "TCP", 8080)],
        ));
    }
    let mut config = cluster_mode::daemon_config(cluster, &api, "node1");
    config.ready_timeout = Duration::from_secs(300);
    let mut daemon = SluiceDaemon::launch(config).context("start sluice in cluster mode")?;
    Ok(restarts(&mut daemon, rounds))
}

/// Kills `daemon` (`SIGKILL`) and starts it again over its pins, `rounds` times: process start
/// to ready each time, and the last ready line from `hooks:` on (how the programs were come by).
fn restarts(daemon: &mut SluiceDaemon, rounds: usize) -> (Samples, String) {
    let mut restarts = Samples::default();
    for _ in 0..rounds {
        daemon.kill();
        let started = std::time::Instant::now();
        daemon.start_again();
        restarts.push(started.elapsed().as_secs_f64());
    }
    let ready = daemon.ready_line();
    let hooks = ready.find("hooks:").map_or(ready, |at| &ready[at..]);
    (restarts, hooks.to_owned())
}

/// User plus system CPU time of a process so far, from /proc/PID/stat.
fn proc_cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed /proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc/PID/stat")?
            .parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the command name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = f64::from(u32::try_from(hz).context("sysconf(_SC_CLK_TCK)")?);
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// A `kB` field of /proc/PID/status, in bytes.
fn proc_status_bytes(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

fn tempdir(name: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("sluice-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub fn report(
    md: &mut String,
    outcome: &Outcome,
    error: Option<&str>,
    plots: &Path,
    rel: &str,
) -> Result<()> {
    md.push_str(
        "## 2. Connection rate and latency (netns cluster)\n\n\
         A Rust client opens a TCP connection, sends a request, reads the answer to EOF and \
         closes, in a loop, one connection at a time, each from a new source port; latency per \
         connection goes into an HDR histogram. The server in pod-1a answers and closes. Each \
         variant is compared with the direct path (to pod-1a's address, from the same client \
         place) measured twice in the same phase: **clean**, before the proxy is loaded (no \
         rules, no Sluice), round i against round i; and right before each variant run with \
         the proxy loaded — every new connection, even one not to a service, passes through \
         kube-proxy's PREROUTING rules, so the last column shows what loading a rule set does \
         to unrelated traffic. The direct \
         path uses a second server port on pod-1a: with one port, direct connections from the \
         off-node client started timing out once Sluice had served NodePort flows — Sluice \
         keeps closed flows' conntrack entries until its GC removes them, 10 s after FIN/RST, \
         and a direct connection reusing a source port meanwhile matched a stale reply entry on node1's TC egress and was answered from \
         the NodePort address. That was a Sluice bug this bench found (fixed: `tc_egress` now \
         drops a closed flow's entries when a new handshake reuses its tuple); the ports stay \
         apart so each variant meets none of the others' TIME_WAIT sockets. On-node \
         client: pod-1b on node1 (Sluice's socket-LB applies in node1's cgroup; kube-proxy's \
         rules DNAT in node1's PREROUTING). Off-node client: the client namespace, over the \
         underlay bridge (Sluice: XDP NodePort on node1; kube-proxy: the ClusterIP routed via \
         node1). kube-proxy's rule sets hold N services with the measured one **last** in \
         KUBE-SERVICES; they exist only in node1's namespace, and only while their variant \
         runs; Sluice runs as `sluice run --manifests` with the same N services.\n\n",
    );
    if let Some(error) = error {
        let _ = writeln!(md, "**Not measured in this run**: {error}\n");
        return Ok(());
    }
    let rows = &outcome.rows;
    md.push_str(
        "| services | variant | conn/s | clean direct conn/s | **ratio to clean direct** | \
         ratio to direct with the proxy loaded | direct with proxy loaded / clean | p50 µs \
         (clean direct) | p99 µs (clean direct) | errors |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {:.0} ({:.0}) | {:.0} ({:.0}) | {} |",
            row.services,
            row.variant,
            row.rate.median(),
            row.clean_rate.median(),
            row.rate_ratio().show(3),
            row.loaded_ratio().show(3),
            row.collateral().show(3),
            row.p50.median(),
            row.clean_p50.median(),
            row.p99.median(),
            row.clean_p99.median(),
            row.errors
        );
    }
    for (services, v6_vs_v4) in &outcome.ipv6_vs_ipv4 {
        let _ = writeln!(
            md,
            "\nSocket LB over IPv6 against IPv4 at {services} services (the same pod, each \
             round's IPv6 run over the IPv4 run right after it): **{}**",
            v6_vs_v4.show(3)
        );
    }
    let bars: Vec<(String, f64, f64, f64)> = rows
        .iter()
        .map(|row| {
            let r = row.rate_ratio();
            let short = row.variant.split(" (").next().unwrap_or(&row.variant);
            let place = if row.variant.contains("off-node") {
                "off-node"
            } else {
                "pod"
            };
            (
                format!("{} svc: {short} ({place})", row.services),
                r.median(),
                r.min(),
                r.max(),
            )
        })
        .collect();
    if !bars.is_empty() {
        plot::bars(
            &plots.join("connrate.png"),
            "Connections/s relative to direct-to-pod",
            "ratio to direct (1.0 = no cost)",
            &bars,
        )?;
        let _ = writeln!(md, "\n![connection rate]({rel}/connrate.png)\n");
    }
    Ok(())
}
