//! Control-plane sync: how long it takes to get N services into the datapath (cold start) and
//! to change one service with N present, for Sluice's maps and for kube-proxy's rule sets
//! loaded with `iptables-restore` and `nft -f` into a network namespace the bench created.
//!
//! Sluice is measured two ways: the daemon's own path (`Planner::update` +
//! `Reconciler::apply_changes`, one bpf(2) call per map entry) and the same entries written
//! with `BPF_MAP_UPDATE_BATCH` in the same order (backends, slots, heads), which is what batching
//! would give the daemon.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use proxy_common::{MetaFields, ServiceMeta, ServiceValue, map_names};
use proxy_tests::isolated_netns::IsolatedNetns;
use proxy_user::{
    datapath::Maps,
    model::{
        DesiredState, Endpoint, IpFamily, Protocol, Service, ServiceName, ServicePort, ServiceType,
        TrafficPolicy,
    },
    reconcile::{Plan, PlanNode, Planner, Reconciler},
};

use crate::{
    fixture::{self, Loaded, cluster_frontend, pod_addr},
    rules,
    stats::Samples,
    sys,
};

#[derive(Clone, Debug)]
pub struct Params {
    pub services: Vec<usize>,
    pub endpoints: Vec<usize>,
    pub rounds: usize,
    /// iptables rule sets larger than this many rules are not loaded (they would not finish in
    /// time).
    pub max_rules: usize,
    /// nft scripts with more chains than this are not loaded: nft 1.0.6 takes time quadratic in
    /// the chains of one script (about 20 s for 30k chains here).
    pub max_nft_chains: usize,
    /// Sizes from this many services on are measured once, not `rounds` times.
    pub big: usize,
    pub timeout: Duration,
}

/// One (services, endpoints) row; seconds.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub services: usize,
    pub endpoints: usize,
    pub plan: Samples,
    pub apply: Samples,
    pub batched: Samples,
    /// One changed endpoint: plan rebuild and apply.
    pub change_plan: Samples,
    pub change_apply: Samples,
    pub iptables: Option<Samples>,
    pub iptables_change_full: Option<Samples>,
    pub iptables_change_partial: Option<Samples>,
    pub nft: Option<Samples>,
    pub nft_change: Option<Samples>,
    pub iptables_rules: usize,
    /// A load of the rule set was stopped at the timeout: these figures are only a bound.
    pub iptables_unfinished: Option<Duration>,
    pub nft_unfinished: Option<Duration>,
    /// Resident memory the reconciler's mirror and plan add to the daemon, bytes.
    pub rss_delta: f64,
}

pub fn desired(services: usize, endpoints: usize) -> DesiredState {
    let mut desired = DesiredState::default();
    for i in 0..services {
        let name = ServiceName {
            namespace: "bench".into(),
            name: format!("svc-{i}"),
        };
        let frontend = cluster_frontend(i);
        let service = Service {
            name: name.clone(),
            service_type: ServiceType::ClusterIP,
            cluster_ips: vec![(*frontend.ip()).into()],
            ip_families: vec![IpFamily::V4],
            external_ips: Vec::new(),
            ports: vec![ServicePort {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: frontend.port(),
                node_port: None,
                endpoints: (0..endpoints)
                    .map(|j| endpoint(pod_addr(i * endpoints + j)))
                    .collect(),
            }],
            unserved_ports: Vec::new(),
            skip_reason: None,
            affinity_timeout: None,
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            load_balancer_source_ranges: Vec::new(),
            load_balancer_ips: Vec::new(),
            health_check_node_port: None,
        };
        desired.services.insert(name, Arc::new(service));
    }
    desired
}

fn endpoint(addr: SocketAddrV4) -> Endpoint {
    Endpoint {
        addr: (*addr.ip()).into(),
        port: addr.port(),
        node_name: Some("node1".into()),
        ready: true,
        serving: true,
        terminating: false,
        hints: proxy_user::model::Hints::default(),
    }
}

/// Changes measured per round, each on another service: one sample of a change that costs
/// milliseconds is noisy on a shared machine.
const CHANGES: usize = 5;

/// Change number `k`: the last endpoint of one service replaced by a new pod.
#[expect(
    clippy::cast_possible_truncation,
    reason = "`k` is below `CHANGES` (5)"
)]
fn change(desired: &mut DesiredState, services: usize, endpoints: usize, k: usize) {
    let i = (services / 2 + k) % services;
    let new = SocketAddrV4::new(Ipv4Addr::new(198, 18, 64, 1 + k as u8), 9090);
    let service = Arc::make_mut(
        desired
            .services
            .get_mut(&ServiceName {
                namespace: "bench".into(),
                name: format!("svc-{i}"),
            })
            .expect("the service exists"),
    );
    service.ports[0].endpoints[endpoints - 1] = endpoint(new);
}

pub fn run(params: &Params, log: &mut dyn FnMut(&str)) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &services in &params.services {
        for &endpoints in &params.endpoints {
            let row = run_one(params, services, endpoints)
                .with_context(|| format!("sync at {services} x {endpoints}"))?;
            log(&format!(
                "sync: {services} x {endpoints}: apply {:.3} s, batched {:.3} s, change {:.3} ms, \
                 iptables-restore {}, nft -f {}",
                row.apply.median(),
                row.batched.median(),
                row.change_apply.median() * 1e3,
                row.iptables
                    .as_ref()
                    .map_or("skipped".into(), |s| format!("{:.3} s", s.median())),
                row.nft
                    .as_ref()
                    .map_or("skipped".into(), |s| format!("{:.3} s", s.median())),
            ));
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The daemon's planner and reconciler, then the same entries batched, `rounds` times.
fn sluice_rounds(row: &mut Row, sizes: &[(&str, u32)], rounds: usize) -> Result<()> {
    let (services, endpoints) = (row.services, row.endpoints);
    for _ in 0..rounds {
        // The state is shared with the planner, as the daemon shares the source's.
        let mut desired = Arc::new(desired(services, endpoints));
        // The daemon's path.
        {
            let rss_before = rss_bytes();
            let mut loaded = Loaded::new(sizes)?;
            let mut maps = Maps::take_from(&mut loaded.ebpf)?;
            let mut reconciler = Reconciler::from_maps(&mut maps)?;
            let mut planner = Planner::new(PlanNode::new("node1", [IpFamily::V4]));
            let started = Instant::now();
            let changes = planner.update(desired.clone());
            row.plan.push(started.elapsed().as_secs_f64());
            let started = Instant::now();
            reconciler.apply_changes(&mut maps, planner.plan(), &changes)?;
            row.apply.push(started.elapsed().as_secs_f64());
            if reconciler.frontend_count() != services {
                bail!(
                    "the reconciler programmed {} of {services} services",
                    reconciler.frontend_count()
                );
            }
            row.rss_delta = rss_bytes() - rss_before;

            for k in 0..CHANGES {
                // A source publishes a new state sharing the unchanged services with the last
                // (`DesiredState::share_unchanged`; the source's work is not timed here).
                let mut next = (*desired).clone();
                change(&mut next, services, endpoints, k);
                desired = Arc::new(next);
                let started = Instant::now();
                let changes = planner.update(desired.clone());
                row.change_plan.push(started.elapsed().as_secs_f64());
                let started = Instant::now();
                let stats = reconciler.apply_changes(&mut maps, planner.plan(), &changes)?;
                row.change_apply.push(started.elapsed().as_secs_f64());
                if stats.frontends_written != 1 {
                    bail!("one changed service rewrote {stats:?}");
                }
            }
            if planner.plan() != &Plan::build(&desired, &PlanNode::new("node1", [IpFamily::V4])) {
                bail!("the planner's plan differs from a full build after the changes");
            }
        }
        // The same entries, batched.
        {
            let desired = self::desired(services, endpoints);
            let loaded = Loaded::new(sizes)?;
            let started = Instant::now();
            let plan = Plan::build(&desired, &PlanNode::new("node1", [IpFamily::V4]));
            apply_batched(&loaded, &plan)?;
            row.batched.push(started.elapsed().as_secs_f64());
        }
    }
    Ok(())
}

fn run_one(params: &Params, services: usize, endpoints: usize) -> Result<Row> {
    let mut row = Row {
        services,
        endpoints,
        ..Row::default()
    };
    let sizes = fixture::sizes(services, endpoints, 1)?;
    // At 100k the biggest rule sets take minutes to load: one round there keeps the bench
    // inside its time budget.
    let rounds = if services >= params.big {
        1
    } else {
        params.rounds
    };
    sluice_rounds(&mut row, &sizes, rounds)?;

    let rule_count = rules::iptables_rule_count(services, endpoints);
    row.iptables_rules = rule_count;
    let nft_chains = services * (endpoints + 1);
    let (base, changed, delta) = (
        rules::iptables(services, endpoints, None),
        rules::iptables(services, endpoints, Some(services / 2)),
        rules::iptables_change(services, endpoints, services / 2),
    );
    let (nft_base, nft_delta) = (
        rules::nft(services, endpoints),
        rules::nft_change(services, endpoints, services / 2),
    );
    let (mut cold, mut full, mut partial) =
        (Samples::default(), Samples::default(), Samples::default());
    let (mut nft_cold, mut nft_change) = (Samples::default(), Samples::default());
    for round in 0..rounds {
        'iptables: {
            if rule_count > params.max_rules || row.iptables_unfinished.is_some() {
                break 'iptables;
            }
            let netns = IsolatedNetns::enter()?;
            // A load that does not finish in time is a finding (kube-proxy would be that
            // slow), not a failure of the bench: it is reported as a bound.
            let Some(seconds) = timed(&["iptables-restore", "-w"], &base, params.timeout)? else {
                row.iptables_unfinished = Some(params.timeout);
                break 'iptables;
            };
            cold.push(seconds);
            loaded_check(&[
                "iptables",
                "-w",
                "-t",
                "nat",
                "-S",
                &rules::svc_chain(services - 1),
            ])?;
            let partial_run = timed(
                &["iptables-restore", "-w", "--noflush"],
                &delta,
                params.timeout,
            )?;
            // A full resync after the change: what kube-proxy before 1.28 did on every change.
            let full_run = timed(&["iptables-restore", "-w"], &changed, params.timeout)?;
            match (partial_run, full_run) {
                (Some(p), Some(f)) => {
                    partial.push(p);
                    full.push(f);
                }
                _ => row.iptables_unfinished = Some(params.timeout),
            }
            drop(netns);
        }
        'nft: {
            // nft at 30k chains takes most of a minute per load: one round.
            if nft_chains > params.max_nft_chains
                || (round > 0 && nft_chains > 10_000)
                || row.nft_unfinished.is_some()
            {
                break 'nft;
            }
            let netns = IsolatedNetns::enter()?;
            let Some(seconds) = timed(&["nft", "-f", "-"], &nft_base, params.timeout)? else {
                row.nft_unfinished = Some(params.timeout);
                break 'nft;
            };
            nft_cold.push(seconds);
            loaded_check(&[
                "nft",
                "list",
                "chain",
                "ip",
                "kube-proxy",
                &format!("service-{}", services - 1),
            ])?;
            match timed(&["nft", "-f", "-"], &nft_delta, params.timeout)? {
                Some(seconds) => nft_change.push(seconds),
                None => row.nft_unfinished = Some(params.timeout),
            }
            drop(netns);
        }
    }
    let some = |s: Samples| (!s.0.is_empty()).then_some(s);
    row.iptables = some(cold);
    row.iptables_change_full = some(full);
    row.iptables_change_partial = some(partial);
    row.nft = some(nft_cold);
    row.nft_change = some(nft_change);
    Ok(row)
}

/// Fails unless `argv` succeeds: a rule set really was loaded.
fn loaded_check(argv: &[&str]) -> Result<()> {
    let out = Command::new(argv[0]).args(&argv[1..]).output()?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!(
            "`{}` shows the rule set was not loaded: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `argv` with `input` on stdin in the current (bench-made) namespace; seconds, or `None`
/// when it had not finished after `timeout` (it is then killed).
fn timed(argv: &[&str], input: &str, timeout: Duration) -> Result<Option<f64>> {
    let started = Instant::now();
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {} (is it installed?)", argv[0]))?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    loop {
        if let Some(status) = child.try_wait()? {
            let elapsed = started.elapsed().as_secs_f64();
            let _ = writer.join();
            if !status.success() {
                let mut err = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    use std::io::Read as _;
                    let _ = stderr.read_to_string(&mut err);
                }
                bail!("{} failed ({status}): {}", argv.join(" "), err.trim());
            }
            return Ok(Some(elapsed));
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let _ = writer.join();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Writes a plan into empty maps with one `BPF_MAP_UPDATE_BATCH` per map and stage.
fn apply_batched(loaded: &Loaded, plan: &Plan) -> Result<()> {
    let mut ids = BTreeMap::new();
    let (mut bkeys, mut bvalues) = (Vec::new(), Vec::new());
    for (id, (addr, flags)) in (1..).zip(&plan.backends) {
        ids.insert(*addr, id);
        bkeys.push(id);
        let IpAddr::V4(ip) = addr.addr else {
            bail!("the bench's services are IPv4 only");
        };
        bvalues.push(fixture::backend(SocketAddrV4::new(ip, addr.port), *flags));
    }
    let (mut keys, mut values, mut heads, mut head_values) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut meta_keys, mut metas) = (Vec::new(), Vec::new());
    for (service_id, (frontend, planned)) in (1..).zip(&plan.frontends) {
        let IpAddr::V4(ip) = frontend.addr else {
            bail!("the bench's services are IPv4 only");
        };
        let addr = SocketAddrV4::new(ip, frontend.port);
        let count = u16::try_from(planned.backends.len())
            .with_context(|| format!("{} has more than 65535 endpoints", planned.name))?;
        let head = ServiceValue::head(service_id, count, planned.flags, 0);
        for (slot, backend) in (1..).zip(&planned.backends) {
            keys.push(fixture::service_key(addr, slot));
            values.push(head.slot(ids[backend]));
        }
        heads.push(fixture::service_key(addr, 0));
        head_values.push(head);
        meta_keys.push(service_id);
        metas.push(ServiceMeta::new(
            &planned.name,
            MetaFields {
                kind: planned.kind,
                svc_type: planned.svc_type,
                policy: planned.policy,
                proto: frontend.protocol.ip_proto(),
                port: frontend.port,
                health_check_port: planned.health_check_port,
            },
        ));
    }
    let fd = |name| sys::map_fd(&loaded.ebpf, name);
    sys::update_batch(fd(map_names::BACKENDS)?, &bkeys, &bvalues)?;
    sys::update_batch(fd(map_names::SERVICE_META)?, &meta_keys, &metas)?;
    sys::update_batch(fd(map_names::SERVICES)?, &keys, &values)?;
    sys::update_batch(fd(map_names::SERVICES)?, &heads, &head_values)?;
    Ok(())
}

/// This process's resident set size, bytes.
pub fn rss_bytes() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |kb| kb * 1024.0)
}
