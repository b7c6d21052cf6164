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

use crate::datapath::{
    Maps,
    view::{socket, stats},
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

/// Every metric the daemon exports; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub sync_duration: Histogram,
    pub network_programming: Histogram,
    pub last_sync: Gauge<f64, AtomicU64>,
    pub last_queued: Gauge<f64, AtomicU64>,
    pub sync_errors: Counter,
    pub udp_sockets_terminated: Counter,
    pub map_entries: Family<MapLabels, Gauge>,
    pub map_max_entries: Family<MapLabels, Gauge>,
    pub proxy_healthz: Family<StatusCodeLabels, Counter>,
    pub proxy_livez: Family<StatusCodeLabels, Counter>,
    pub drift_repaired: Counter,
}

impl Metrics {
    /// The daemon's metrics; with `pin_dir`, also the datapath's counters read from the maps
    /// pinned there at each scrape.
    pub fn new(pin_dir: Option<PathBuf>) -> Self {
        // kube-proxy's buckets: 1 ms doubling to about 16 s.
        let buckets = || prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15);
        let sync_duration = Histogram::new(buckets());
        let network_programming = Histogram::new(buckets());
        let last_sync = Gauge::<f64, AtomicU64>::default();
        let last_queued = Gauge::<f64, AtomicU64>::default();
        let sync_errors = Counter::default();
        let udp_sockets_terminated = Counter::default();
        let map_entries = Family::<MapLabels, Gauge>::default();
        let map_max_entries = Family::<MapLabels, Gauge>::default();
        let proxy_healthz = Family::<StatusCodeLabels, Counter>::default();
        let proxy_livez = Family::<StatusCodeLabels, Counter>::default();
        let drift_repaired = Counter::default();

        let mut registry = Registry::default();
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "How long one sync of the desired state into the BPF maps took",
            sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_network_programming_duration_seconds",
            "From the Pod or Service change behind an EndpointSlice update \
             (endpoints.kubernetes.io/last-change-trigger-time) to the datapath serving it",
            network_programming.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "When the maps last matched the desired state (Unix time)",
            last_sync.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "When the last change was queued for the maps (Unix time)",
            last_queued.clone(),
        );
        registry.register(
            "sluice_sync_errors",
            "Syncs that failed; the maps kept their last good content",
            sync_errors.clone(),
        );
        registry.register(
            "sluice_udp_sockets_terminated",
            "Connected UDP sockets closed because the backend the socket LB had given them left \
             every frontend",
            udp_sockets_terminated.clone(),
        );
        registry.register(
            "sluice_map_entries",
            "Entries in each BPF map",
            map_entries.clone(),
        );
        registry.register(
            "sluice_map_max_entries",
            "Capacity of each BPF map",
            map_max_entries.clone(),
        );
        // prometheus-client appends `_total` to counters.
        registry.register(
            "kubeproxy_proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            proxy_healthz.clone(),
        );
        registry.register(
            "kubeproxy_proxy_livez",
            "Cumulative proxy livez HTTP status",
            proxy_livez.clone(),
        );
        registry.register(
            "sluice_drift_repaired_entries",
            "Frontend and backend entries written again because the maps had changed behind \
             sluice's back (found by the periodic read-back, --resync-period)",
            drift_repaired.clone(),
        );
        if let Some(pin_dir) = pin_dir {
            registry.register_collector(Box::new(DatapathCounters { pin_dir }));
        }
        Self {
            registry: Arc::new(registry),
            sync_duration,
            network_programming,
            last_sync,
            last_queued,
            sync_errors,
            udp_sockets_terminated,
            map_entries,
            map_max_entries,
            proxy_healthz,
            proxy_livez,
            drift_repaired,
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
            "Packets passed to the stack untranslated on purpose (not drops), by reason",
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
    fn exports_kube_proxy_names() {
        let metrics = Metrics::new(None);
        metrics.sync_duration.observe(0.002);
        metrics.set_map_fill("SVC_V1", 3, 10);
        let text = metrics.encode();
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("sluice_map_entries{map=\"SVC_V1\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("sluice_map_max_entries{map=\"SVC_V1\"} 10"),
            "{text}"
        );
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds"),
            "{text}"
        );
    }
}
