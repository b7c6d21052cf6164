//! Prometheus metrics: kube-proxy's sync metrics (same names, so existing alerts keep working)
//! and Sluice's map fill levels.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels of the per-map gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: String,
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
    pub map_entries: Family<MapLabels, Gauge>,
    pub map_max_entries: Family<MapLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        // kube-proxy's buckets: 1 ms doubling to about 16 s.
        let buckets = || prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15);
        let sync_duration = Histogram::new(buckets());
        let network_programming = Histogram::new(buckets());
        let last_sync = Gauge::<f64, AtomicU64>::default();
        let last_queued = Gauge::<f64, AtomicU64>::default();
        let sync_errors = Counter::default();
        let map_entries = Family::<MapLabels, Gauge>::default();
        let map_max_entries = Family::<MapLabels, Gauge>::default();

        let mut registry = Registry::default();
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "How long one sync of the desired state into the BPF maps took",
            sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_network_programming_duration_seconds",
            "From a change reaching the daemon to the datapath serving it",
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
            "sluice_map_entries",
            "Entries in each BPF map",
            map_entries.clone(),
        );
        registry.register(
            "sluice_map_max_entries",
            "Capacity of each BPF map",
            map_max_entries.clone(),
        );
        Self {
            registry: Arc::new(registry),
            sync_duration,
            network_programming,
            last_sync,
            last_queued,
            sync_errors,
            map_entries,
            map_max_entries,
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
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind the metrics address {addr} (--metrics-addr)"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "metrics server stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_kube_proxy_names() {
        let metrics = Metrics::new();
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
