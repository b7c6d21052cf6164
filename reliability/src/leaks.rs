//! Leaks: Services created and deleted, and flows opened and closed, round after round on a
//! running node; after each round every map must be back at its baseline entry count (the
//! daemon's sync and conntrack GC put it there) and the daemon's RSS is sampled.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use proxy_tests::{Place, SluiceDaemon, scenario::Scenario};
use proxy_user::datapath::Maps;

use crate::flows;

/// The leak section's sizes.
pub struct Params {
    pub rounds: usize,
    pub services: usize,
    pub flows: usize,
}

/// One kind of churn: the RSS after each round and how long each round took to drain.
pub struct Rounds {
    pub what: String,
    pub rss_kib: Vec<u64>,
    pub drained_in: Vec<Duration>,
}

pub struct Outcome {
    pub baseline_rss_kib: u64,
    /// Every map's entries before the rounds (all back there after each).
    pub baseline: BTreeMap<&'static str, u64>,
    pub services: Rounds,
    pub flows: Rounds,
}

/// The daemon's conntrack closing timeout and GC interval here: shorter than the defaults (10 s
/// each), so a round of closed flows drains in seconds. What is measured is the same: every
/// entry goes once its timeout passes.
pub const CLOSING_TIMEOUT: &str = "2s";
const GC_INTERVAL: &str = "1s";
/// How long counts must stay the same to be the baseline: past a closing timeout and a GC.
const SETTLED_AFTER: Duration = Duration::from_secs(4);

/// How long a round's leftovers may take to go: the closing timeout and many GC passes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

pub fn run(params: &Params) -> Result<Outcome> {
    let scenario = Scenario::start(&[
        "--ct-tcp-closing-timeout",
        CLOSING_TIMEOUT,
        "--ct-gc-interval",
        GC_INTERVAL,
    ]);
    let node = &scenario.node1;
    let pin_dir = node.config().pin_dir.clone();
    // The standard Services' first flows (the readiness checks) settle before the baseline.
    let baseline = wait_stable(&pin_dir)?;
    let baseline_rss_kib = settled_rss_kib(node)?;

    let mut services = Rounds {
        what: format!("{} Services created, then deleted", params.services),
        rss_kib: Vec::new(),
        drained_in: Vec::new(),
    };
    let frontends = proxy_common::map_names::SERVICE_META;
    for round in 0..params.rounds {
        scenario
            .manifests
            .write("leak.yaml", &services_yaml(params.services));
        let want = baseline[frontends] + params.services as u64;
        wait_for(&pin_dir, DRAIN_TIMEOUT, |fill| fill[frontends] >= want).with_context(|| {
            format!(
                "round {round}: the {} Services never all programmed",
                params.services
            )
        })?;
        scenario.manifests.remove("leak.yaml");
        let removed = Instant::now();
        wait_for(&pin_dir, DRAIN_TIMEOUT, |fill| fill == &baseline)
            .with_context(|| format!("round {round}: the maps did not return to the baseline"))?;
        services.drained_in.push(removed.elapsed());
        services.rss_kib.push(settled_rss_kib(node)?);
    }

    let mut flows = Rounds {
        what: format!(
            "{} TCP connections through node1's NodePort (XDP), each closed",
            params.flows
        ),
        rss_kib: Vec::new(),
        drained_in: Vec::new(),
    };
    let target = SocketAddr::new(IpAddr::V4(scenario.cluster.node("node1").ip), 30080);
    for round in 0..params.rounds {
        let before = node.all_counters();
        let made = flows::connect_many_at(&scenario.cluster, Place::Client, target, params.flows)?;
        if made.failed > 0 {
            bail!(
                "round {round}: {} of {} connections failed: {:?}; node1's counters meanwhile: \
                 {:?}; node1's flows of their source ports {:?}: {}",
                made.failed,
                made.made,
                made.examples,
                grown_since(&before, &node.all_counters()),
                made.failed_ports,
                flows_from(node, &made.failed_ports)
            );
        }
        let closed = Instant::now();
        wait_for(&pin_dir, DRAIN_TIMEOUT, |fill| fill == &baseline)
            .with_context(|| format!("round {round}: conntrack did not return to the baseline"))?;
        flows.drained_in.push(closed.elapsed());
        flows.rss_kib.push(settled_rss_kib(node)?);
    }
    Ok(Outcome {
        baseline_rss_kib,
        baseline,
        services,
        flows,
    })
}

/// `count` ClusterIP Services selecting the echo pods (addresses allocated by Sluice).
fn services_yaml(count: usize) -> String {
    let mut out = String::new();
    for i in 0..count {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: leak-{i}, namespace: default}}\n\
             spec:\n  selector: {{app: echo}}\n  ports:\n  - {{port: 80, targetPort: 8080, protocol: TCP}}\n"
        );
    }
    out
}

/// Every map's entry count on the node whose pins are at `pin_dir`.
fn fill(pin_dir: &Path) -> Result<BTreeMap<&'static str, u64>> {
    let maps = Maps::open_pinned(pin_dir)?;
    Ok(maps
        .fill(pin_dir)?
        .into_iter()
        .map(|m| (m.map, m.entries))
        .collect())
}

/// Polls the maps until `done` holds for them; the last counts in the error.
fn wait_for(
    pin_dir: &Path,
    timeout: Duration,
    done: impl Fn(&BTreeMap<&'static str, u64>) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = fill(pin_dir)?;
        if done(&now) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("after {timeout:?} the maps held {now:?}");
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// The counts once they stop changing (the same on two reads [`SETTLED_AFTER`] apart).
fn wait_stable(pin_dir: &Path) -> Result<BTreeMap<&'static str, u64>> {
    let mut last = fill(pin_dir)?;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        thread::sleep(SETTLED_AFTER);
        let now = fill(pin_dir)?;
        if now == last {
            return Ok(now);
        }
        if Instant::now() > deadline {
            bail!("the maps never settled: {last:?}, then {now:?}");
        }
        last = now;
    }
}

/// `sluice conntrack` rows of flows from the client source `ports` (to see where a failed
/// connection's packets went).
fn flows_from(daemon: &SluiceDaemon, ports: &[u16]) -> String {
    let flows = daemon.read_json("conntrack");
    let rows: Vec<String> = flows
        .as_array()
        .into_iter()
        .flatten()
        .filter(|row| {
            row["client"].as_str().is_some_and(|client| {
                ports
                    .iter()
                    .any(|port| client.ends_with(&format!(":{port}")))
            })
        })
        .map(ToString::to_string)
        .collect();
    rows.join("; ")
}

/// The counters that grew from `before` to `after`, and by how much.
fn grown_since(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(reason, &count)| {
            // A daemon restarted meanwhile starts its counters again: no growth, not a wrap.
            let grew = count.saturating_sub(before.get(reason).copied().unwrap_or(0));
            (grew > 0).then(|| (reason.clone(), grew))
        })
        .collect()
}

/// The daemon's RSS once it stops changing: the maps reach their baseline when a sync is
/// applied, and the daemon gives freed memory back only after that (a sample taken in between
/// read 67 MiB in a round of 27). Stable: the last five samples, 100 ms apart, within 1 %.
fn settled_rss_kib(daemon: &SluiceDaemon) -> Result<u64> {
    const SAMPLES: usize = 5;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut samples = Vec::new();
    loop {
        samples.push(rss_kib(daemon)?);
        let last = &samples[samples.len().saturating_sub(SAMPLES)..];
        let (low, high) = (
            *last.iter().min().expect("a sample"),
            *last.iter().max().expect("a sample"),
        );
        if last.len() == SAMPLES && high - low <= high / 100 || Instant::now() > deadline {
            return Ok(*last.last().expect("a sample"));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The daemon's resident set (`VmRSS`), KiB.
fn rss_kib(daemon: &SluiceDaemon) -> Result<u64> {
    let pid = daemon.pid().context("the daemon is not running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}
