//! Prometheus metrics: kube-proxy's sync metrics (same names, so existing alerts keep working)
//! and Sluice's map fill levels.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::Histogram,
    },
    registry::Registry,
};

use crate::{
    datapath::{
        Maps,
        view::{socket, stats},
    },
    model::ChangeCounts,
};

/// Labels of the per-map gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: String,
}

/// Labels of kube-proxy's `proxy_healthz_total` and `proxy_livez_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusCodeLabels {
    pub code: String,
}

/// kube-proxy's `ip_family` label (1.33+): one series per family the node serves.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabels {
    pub ip_family: &'static str,
}

/// Labels of `sync_proxy_rules_no_local_endpoints_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyFamilyLabels {
    /// `internal` or `external`.
    pub traffic_policy: &'static str,
    pub ip_family: &'static str,
}

type Histograms = Family<FamilyLabels, Histogram, fn() -> Histogram>;
type TimeGauges = Family<FamilyLabels, Gauge<f64, AtomicU64>>;

/// kube-proxy's buckets for sync durations: 1 ms doubling to about 16 s.
fn sync_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    ))
}

/// kube-proxy's network programming buckets: `MergeBuckets(LinearBuckets(0.25, 0.25, 2),
/// LinearBuckets(1, 1, 59), LinearBuckets(60, 5, 12), LinearBuckets(120, 30, 7))`, which
/// starts with a 0 bound: 0, 0.25, 0.5, 1 .. 59, 60 .. 115 by 5, 120 .. 300 by 30.
fn network_programming_buckets() -> Histogram {
    Histogram::new(network_programming_bounds())
}

fn network_programming_bounds() -> Vec<f64> {
    let linear =
        |start: f64, width: f64, count: u32| (0..count).map(move |i| start + width * f64::from(i));
    std::iter::once(0.0)
        .chain(linear(0.25, 0.25, 2))
        .chain(linear(1.0, 1.0, 59))
        .chain(linear(60.0, 5.0, 12))
        .chain(linear(120.0, 30.0, 7))
        .collect()
}

/// Every metric the daemon exports; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// The families the node serves: the `ip_family` values of kube-proxy's metrics.
    families: Vec<&'static str>,
    sync_duration: Histograms,
    sync_full_duration: Histograms,
    sync_partial_duration: Histograms,
    network_programming: Histograms,
    last_sync: TimeGauges,
    last_queued: TimeGauges,
    endpoint_changes_pending: Gauge,
    endpoint_changes: Counter,
    service_changes_pending: Gauge,
    service_changes: Counter,
    pub no_local_endpoints: Family<PolicyFamilyLabels, Gauge>,
    pub sync_errors: Counter,
    pub udp_sockets_terminated: Counter,
    pub map_entries: Family<MapLabels, Gauge>,
    pub map_max_entries: Family<MapLabels, Gauge>,
    pub proxy_healthz: Family<StatusCodeLabels, Counter>,
    pub proxy_livez: Family<StatusCodeLabels, Counter>,
    pub drift_repaired: Counter,
    conntrack_reconciler_duration: Histograms,
    conntrack_reconciler_deleted: Family<FamilyLabels, Counter>,
}

impl Metrics {
    /// The daemon's metrics for a node serving `families`; with `pin_dir`, also the
    /// datapath's counters read from the maps pinned there at each scrape.
    #[expect(
        clippy::too_many_lines,
        reason = "one registration per metric, in the order docs/observability.md lists them"
    )]
    pub fn new(pin_dir: Option<PathBuf>, families: &[crate::model::IpFamily]) -> Self {
        let this = Self {
            registry: Arc::default(),
            families: families.iter().map(|family| family.as_str()).collect(),
            sync_duration: Family::new_with_constructor(sync_buckets),
            sync_full_duration: Family::new_with_constructor(sync_buckets),
            sync_partial_duration: Family::new_with_constructor(sync_buckets),
            network_programming: Family::new_with_constructor(network_programming_buckets),
            last_sync: TimeGauges::default(),
            last_queued: TimeGauges::default(),
            endpoint_changes_pending: Gauge::default(),
            endpoint_changes: Counter::default(),
            service_changes_pending: Gauge::default(),
            service_changes: Counter::default(),
            no_local_endpoints: Family::default(),
            sync_errors: Counter::default(),
            udp_sockets_terminated: Counter::default(),
            map_entries: Family::default(),
            map_max_entries: Family::default(),
            proxy_healthz: Family::default(),
            proxy_livez: Family::default(),
            drift_repaired: Counter::default(),
            conntrack_reconciler_duration: Family::new_with_constructor(sync_buckets),
            conntrack_reconciler_deleted: Family::default(),
        };
        let mut registry = Registry::default();
        // kube-proxy's (pkg/proxy/metrics), with its names, help texts, labels and buckets;
        // prometheus-client appends `_total` to counters.
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            this.sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            this.sync_full_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            this.sync_partial_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            this.last_sync.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            this.last_queued.clone(),
        );
        registry.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            this.network_programming.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            this.endpoint_changes_pending.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            this.endpoint_changes.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            this.service_changes_pending.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            this.service_changes.clone(),
        );
        // A gauge despite its name, as in kube-proxy (registered as such there).
        registry.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            this.no_local_endpoints.clone(),
        );
        registry.register(
            "kubeproxy_conntrack_reconciler_sync_duration_seconds",
            "ReconcileConntrackFlowsLatency latency in seconds",
            this.conntrack_reconciler_duration.clone(),
        );
        registry.register(
            "kubeproxy_conntrack_reconciler_deleted_entries",
            "Cumulative conntrack flows deleted by conntrack reconciler",
            this.conntrack_reconciler_deleted.clone(),
        );
        registry.register(
            "kubeproxy_proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            this.proxy_healthz.clone(),
        );
        registry.register(
            "kubeproxy_proxy_livez",
            "Cumulative proxy livez HTTP status",
            this.proxy_livez.clone(),
        );
        // Sluice's own.
        registry.register(
            "sluice_sync_errors",
            "Syncs that failed; the maps kept their last good content",
            this.sync_errors.clone(),
        );
        registry.register(
            "sluice_udp_sockets_terminated",
            "Connected UDP sockets closed because the backend the socket LB had given them left \
             every frontend",
            this.udp_sockets_terminated.clone(),
        );
        registry.register(
            "sluice_map_entries",
            "Entries in each BPF map",
            this.map_entries.clone(),
        );
        registry.register(
            "sluice_map_max_entries",
            "Capacity of each BPF map",
            this.map_max_entries.clone(),
        );
        registry.register(
            "sluice_drift_repaired_entries",
            "Frontend and backend entries written again because the maps had changed behind \
             sluice's back (found by the periodic read-back, --resync-period)",
            this.drift_repaired.clone(),
        );
        if let Some(pin_dir) = pin_dir {
            registry.register_collector(Box::new(DatapathCounters { pin_dir }));
        }
        // Every family's series from the start (at 0), as a scrape before the first sync
        // should show them.
        for labels in this.each_family() {
            for histograms in [
                &this.sync_duration,
                &this.sync_full_duration,
                &this.sync_partial_duration,
                &this.network_programming,
            ] {
                drop(histograms.get_or_create(&labels));
            }
            drop(this.conntrack_reconciler_duration.get_or_create(&labels));
            drop(this.conntrack_reconciler_deleted.get_or_create(&labels));
            drop(this.last_sync.get_or_create(&labels));
            drop(this.last_queued.get_or_create(&labels));
            for traffic_policy in ["internal", "external"] {
                let ip_family = labels.ip_family;
                drop(this.no_local_endpoints.get_or_create(&PolicyFamilyLabels {
                    traffic_policy,
                    ip_family,
                }));
            }
        }
        Self {
            registry: Arc::new(registry),
            ..this
        }
    }

    fn each_family(&self) -> impl Iterator<Item = FamilyLabels> + '_ {
        self.families
            .iter()
            .map(|&ip_family| FamilyLabels { ip_family })
    }

    /// A pass removing the UDP flows of retired backends took `took` and removed `removed`
    /// IPv4 and `removed6` IPv6 conntrack entries.
    pub fn conntrack_reconciled(&self, took: Duration, removed: usize, removed6: usize) {
        for labels in self.each_family() {
            self.conntrack_reconciler_duration
                .get_or_create(&labels)
                .observe(took.as_secs_f64());
            let count = if labels.ip_family == crate::model::IpFamily::V4.as_str() {
                removed
            } else {
                removed6
            };
            self.conntrack_reconciler_deleted
                .get_or_create(&labels)
                .inc_by(count as u64);
        }
    }

    /// A change was queued for the maps (one sync programs every family).
    pub fn queued(&self, at: SystemTime) {
        for labels in self.each_family() {
            self.last_queued
                .get_or_create(&labels)
                .set(unix_seconds(at));
        }
    }

    /// A sync took `took`; `full` when it wrote everything.
    pub fn synced(&self, took: Duration, full: bool) {
        let by_kind = if full {
            &self.sync_full_duration
        } else {
            &self.sync_partial_duration
        };
        for labels in self.each_family() {
            self.sync_duration
                .get_or_create(&labels)
                .observe(took.as_secs_f64());
            by_kind.get_or_create(&labels).observe(took.as_secs_f64());
        }
    }

    /// One change's network programming latency (see `programming_latency`).
    pub fn programmed(&self, latency: Duration) {
        for labels in self.each_family() {
            self.network_programming
                .get_or_create(&labels)
                .observe(latency.as_secs_f64());
        }
    }

    /// Changes `counted` since the last call, and those still `pending` (planned, not yet in
    /// the maps).
    pub fn changes(&self, counted: ChangeCounts, pending: ChangeCounts) {
        self.service_changes.inc_by(counted.services);
        self.endpoint_changes.inc_by(counted.endpoints);
        let gauge = |count: u64| i64::try_from(count).unwrap_or(i64::MAX);
        self.service_changes_pending.set(gauge(pending.services));
        self.endpoint_changes_pending.set(gauge(pending.endpoints));
    }

    /// kube-proxy's no-local-endpoints gauges of `family`.
    pub fn set_no_local_endpoints(
        &self,
        family: crate::model::IpFamily,
        internal: i64,
        external: i64,
    ) {
        for (traffic_policy, count) in [("internal", internal), ("external", external)] {
            let labels = PolicyFamilyLabels {
                traffic_policy,
                ip_family: family.as_str(),
            };
            self.no_local_endpoints.get_or_create(&labels).set(count);
        }
    }

    /// The maps hold the desired state as of `at`. Last in a sync: a change is fully
    /// accounted for once this moves.
    pub fn last_synced(&self, at: SystemTime) {
        for labels in self.each_family() {
            self.last_sync.get_or_create(&labels).set(unix_seconds(at));
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn set_map_fill(&self, map: &str, entries: u64, max_entries: u64) {
        let labels = MapLabels {
            map: map.to_owned(),
        };
        self.map_entries
            .get_or_create(&labels)
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.map_max_entries
            .get_or_create(&labels)
            .set(i64::try_from(max_entries).unwrap_or(i64::MAX));
    }
}

/// The datapath's per-CPU counters, summed and exported as counters at each scrape.
#[derive(Debug)]
struct DatapathCounters {
    pin_dir: PathBuf,
}

type Labels = Vec<(&'static str, String)>;

impl Collector for DatapathCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = match Maps::open_pinned(&self.pin_dir).and_then(|maps| stats::read(&maps)) {
            Ok(stats) => stats,
            Err(err) => {
                tracing::warn!("reading datapath counters for /metrics: {err:#}");
                return Ok(());
            }
        };
        let service = |s: &stats::ServiceStats, direction: Option<&'static str>| {
            let mut labels: Labels = vec![
                ("service", s.name.clone()),
                ("frontend", s.frontend.clone()),
                ("protocol", s.protocol.to_owned()),
            ];
            labels.extend(direction.map(|d| ("direction", d.to_owned())));
            labels
        };
        let backend = |b: &stats::BackendStats, direction: Option<&'static str>| {
            let mut labels: Labels = vec![("backend", socket(b.addr, b.port))];
            labels.extend(direction.map(|d| ("direction", d.to_owned())));
            labels
        };
        counters(
            &mut encoder,
            "sluice_service_packets",
            "Packets translated per frontend (in: to backends, out: replies)",
            stats.services.iter().flat_map(|s| {
                [
                    (service(s, Some("in")), s.traffic.packets_in),
                    (service(s, Some("out")), s.traffic.packets_out),
                ]
            }),
        )?;
        counters(
            &mut encoder,
            "sluice_service_bytes",
            "IPv4 bytes translated per frontend",
            stats.services.iter().flat_map(|s| {
                [
                    (service(s, Some("in")), s.traffic.bytes_in),
                    (service(s, Some("out")), s.traffic.bytes_out),
                ]
            }),
        )?;
        counters(
            &mut encoder,
            "sluice_service_connections",
            "New flows (packet path) and translated sockets (socket path) per frontend",
            stats
                .services
                .iter()
                .map(|s| (service(s, None), s.traffic.connections)),
        )?;
        counters(
            &mut encoder,
            "sluice_backend_packets",
            "Packets translated per backend",
            stats.backends.iter().flat_map(|b| {
                [
                    (backend(b, Some("in")), b.traffic.packets_in),
                    (backend(b, Some("out")), b.traffic.packets_out),
                ]
            }),
        )?;
        counters(
            &mut encoder,
            "sluice_backend_connections",
            "New flows and translated sockets per backend",
            stats
                .backends
                .iter()
                .map(|b| (backend(b, None), b.traffic.connections)),
        )?;
        by_reason(
            &mut encoder,
            "sluice_drops",
            "Packets and connections dropped or refused, by reason",
            stats.drops.iter().map(|d| (d.reason, d.count)),
        )?;
        by_reason(
            &mut encoder,
            "sluice_packets_passed",
            "Packets passed on with less than the full treatment, on purpose (not drops), by \
             reason: untranslated (fragment, ipv6_extension_headers) or translated with a flow \
             the established conntrack map had no room for (ct_established_full)",
            stats.passes.iter().map(|p| (p.reason, p.count)),
        )?;
        counters(
            &mut encoder,
            "sluice_hook_verdicts",
            "Verdicts of each datapath program",
            stats.hooks.iter().map(|h| {
                let labels: Labels = vec![
                    ("hook", h.hook.to_owned()),
                    ("verdict", h.verdict.to_owned()),
                ];
                (labels, h.count)
            }),
        )
    }
}

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A counter family with one `reason` label.
fn by_reason(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (&'static str, u64)>,
) -> Result<(), std::fmt::Error> {
    counters(
        encoder,
        name,
        help,
        samples.map(|(reason, count)| (vec![("reason", reason.to_owned())], count)),
    )
}

/// Seconds since the Unix epoch, for timestamp gauges.
pub fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

async fn scrape(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

/// Binds `addr` and serves /metrics in the background; returns the bound address.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> Result<SocketAddr> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics);
    let (bound, _) = crate::node::http_server::serve(addr, app, "metrics")
        .await
        .with_context(|| format!("bind the metrics address {addr} (--metrics-addr)"))?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_kube_proxy_names_labels_and_buckets() {
        let metrics = Metrics::new(
            None,
            &[crate::model::IpFamily::V4, crate::model::IpFamily::V6],
        );
        metrics.synced(Duration::from_millis(2), false);
        metrics.programmed(Duration::from_millis(700));
        metrics.last_synced(UNIX_EPOCH + Duration::from_secs(5));
        metrics.set_map_fill("SVC_V1", 3, 10);
        metrics.set_no_local_endpoints(crate::model::IpFamily::V4, 1, 0);
        let text = metrics.encode();
        for line in [
            r#"kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"} 1"#,
            r#"kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv6"} 1"#,
            r#"kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family="IPv4"} 1"#,
            r#"kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.002",ip_family="IPv4"} 1"#,
            r#"kubeproxy_network_programming_duration_seconds_bucket{le="0.5",ip_family="IPv4"} 0"#,
            r#"kubeproxy_network_programming_duration_seconds_bucket{le="1.0",ip_family="IPv4"} 1"#,
            r#"kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 5.0"#,
            r#"kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy="internal",ip_family="IPv4"} 1"#,
            "# TYPE kubeproxy_sync_proxy_rules_no_local_endpoints_total gauge",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total 0",
            "kubeproxy_sync_proxy_rules_service_changes_pending 0",
            r#"sluice_map_entries{map="SVC_V1"} 3"#,
            r#"sluice_map_max_entries{map="SVC_V1"} 10"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }

    #[test]
    fn network_programming_buckets_are_kube_proxys() {
        let bounds = network_programming_bounds();
        assert_eq!(bounds.len(), 81);
        assert_eq!(bounds[..5], [0.0, 0.25, 0.5, 1.0, 2.0]);
        assert_eq!(bounds[60..65], [58.0, 59.0, 60.0, 65.0, 70.0]);
        assert_eq!(
            bounds[73..],
            [115.0, 120.0, 150.0, 180.0, 210.0, 240.0, 270.0, 300.0]
        );
        assert_eq!(bounds.last(), Some(&300.0));
    }
}
