//! `/healthz` and `/livez` as kube-proxy serves them (its JSON, status codes and headers). Both
//! answer 503 until the first sync is in the maps, and while a change has waited too long to
//! reach them; `/healthz` also while the node is draining (being deleted, or tainted
//! `ToBeDeletedByClusterAutoscaler`), so load balancers stop sending to it before it goes.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use serde::Serialize;

use crate::{
    model::IpFamily,
    node::metrics::{Metrics, StatusCodeLabels},
};

/// A change queued this long without reaching the maps makes the node unhealthy, as in
/// kube-proxy (twice its default 30 s sync period).
const STALE_AFTER: Duration = Duration::from_secs(60);

/// Go's zero `time.Time`, which kube-proxy reports before its first sync.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

#[derive(Clone, Debug)]
struct HealthState {
    /// When the maps last matched the desired state; `None` before the first sync.
    last_synced: Option<SystemTime>,
    /// The oldest change not yet in the maps.
    pending_since: Option<SystemTime>,
    /// The families the node serves (one sync programs both): the per-family status.
    families: Vec<IpFamily>,
    /// kube-proxy's `nodeEligible`.
    node_eligible: bool,
}

/// What /healthz and /livez report, shared by the daemon loop (which updates it) and the
/// servers; also the `serviceProxyHealthy` of the health check NodePorts.
#[derive(Clone, Debug)]
pub struct Health(Arc<Mutex<HealthState>>);

impl Health {
    pub fn new(families: Vec<IpFamily>) -> Self {
        Self(Arc::new(Mutex::new(HealthState {
            last_synced: None,
            pending_since: None,
            families,
            node_eligible: true,
        })))
    }

    pub fn queued(&self) {
        let mut state = self.lock();
        state.pending_since.get_or_insert_with(SystemTime::now);
    }

    pub fn synced(&self) {
        let mut state = self.lock();
        state.last_synced = Some(SystemTime::now());
        state.pending_since = None;
    }

    /// Whether load balancers may send to this node (its Node is not draining).
    pub fn set_node_eligible(&self, eligible: bool) {
        let mut state = self.lock();
        if state.node_eligible != eligible {
            tracing::info!(eligible, "node eligibility for load balancers (/healthz)");
        }
        state.node_eligible = eligible;
    }

    /// The proxy's own health (synced, nothing stuck), without the node's eligibility.
    pub fn proxy_healthy(&self) -> bool {
        self.lock().proxy_healthy(SystemTime::now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.0.lock().expect("not poisoned")
    }
}

impl HealthState {
    /// Synced once, and no change has waited more than `STALE_AFTER`.
    fn proxy_healthy(&self, now: SystemTime) -> bool {
        let stale = self
            .pending_since
            .is_some_and(|since| now.duration_since(since).unwrap_or_default() > STALE_AFTER);
        self.last_synced.is_some() && !stale
    }

    /// kube-proxy's `ProxyHealth` body (field order as its JSON), and whether it is healthy.
    /// `with_node` is /healthz (the node's eligibility counts), else /livez.
    fn report(&self, now: SystemTime, with_node: bool) -> (bool, ProxyHealth) {
        let proxy_healthy = self.proxy_healthy(now);
        let healthy = proxy_healthy && (!with_node || self.node_eligible);
        let last_synced = self.last_synced.map_or_else(|| ZERO_TIME.into(), rfc3339);
        let status = self
            .families
            .iter()
            .map(|family| {
                let family_health = ProxierHealth {
                    last_updated: last_synced.clone(),
                    healthy: proxy_healthy,
                };
                (family.as_str(), family_health)
            })
            .collect();
        let body = ProxyHealth {
            // kube-proxy reports the current time as lastUpdated when healthy.
            last_updated: if healthy { rfc3339(now) } else { last_synced },
            current_time: rfc3339(now),
            node_eligible: with_node.then_some(self.node_eligible),
            healthy,
            status,
        };
        (healthy, body)
    }
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_nanos(time).to_string()
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ProxyHealth {
    last_updated: String,
    current_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
    healthy: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    status: BTreeMap<&'static str, ProxierHealth>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ProxierHealth {
    last_updated: String,
    healthy: bool,
}

#[derive(Clone)]
struct Served {
    health: Health,
    metrics: Metrics,
}

async fn healthz(State(served): State<Served>) -> impl IntoResponse {
    answer(&served, true)
}

async fn livez(State(served): State<Served>) -> impl IntoResponse {
    answer(&served, false)
}

fn answer(served: &Served, with_node: bool) -> impl IntoResponse + use<> {
    let (healthy, body) = served.health.lock().report(SystemTime::now(), with_node);
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let counters = if with_node {
        &served.metrics.proxy_healthz
    } else {
        &served.metrics.proxy_livez
    };
    counters
        .get_or_create(&StatusCodeLabels {
            code: status.as_u16().to_string(),
        })
        .inc();
    let json = serde_json::to_string(&body).expect("plain data serializes");
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        json,
    )
}

/// Binds `addr` and serves /healthz and /livez in the background; returns the bound address.
pub async fn serve(addr: SocketAddr, health: Health, metrics: Metrics) -> Result<SocketAddr> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(Served { health, metrics });
    let (bound, _) = crate::node::http_server::serve(addr, app, "health")
        .await
        .with_context(|| format!("bind the health address {addr} (--healthz-addr)"))?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(last_synced: Option<SystemTime>, pending_since: Option<SystemTime>) -> HealthState {
        HealthState {
            last_synced,
            pending_since,
            families: vec![IpFamily::V4, IpFamily::V6],
            node_eligible: true,
        }
    }

    #[test]
    fn health_follows_the_first_sync_and_the_oldest_pending_change() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ago = |secs: u64| Some(now - Duration::from_secs(secs));
        // (last synced, pending since, healthy)
        let table = [
            (None, None, false),       // starting: nothing synced yet
            (None, ago(1), false),     // the first state is being synced
            (None, ago(120), false),   // the first sync never finished
            (ago(5), None, true),      // synced, nothing waiting
            (ago(5), ago(1), true),    // a change on its way
            (ago(5), ago(60), true),   // waited exactly the limit
            (ago(90), ago(61), false), // a change stuck past the limit (failing syncs)
            (ago(3600), None, true),   // long idle is healthy
            (ago(5), Some(now + Duration::from_secs(5)), true), // clock stepped back
        ];
        for (last_synced, pending_since, want) in table {
            let state = state(last_synced, pending_since);
            assert_eq!(
                state.proxy_healthy(now),
                want,
                "last synced {last_synced:?}, pending since {pending_since:?}"
            );
            for with_node in [true, false] {
                assert_eq!(state.report(now, with_node).0, want);
            }
        }
    }

    #[test]
    fn the_bodies_are_kube_proxys() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let synced = now - Duration::from_secs(5);
        let mut state = state(Some(synced), None);
        let json = |with_node| serde_json::to_value(state.report(now, with_node).1).unwrap();
        let expected = serde_json::json!({
            "lastUpdated": "2023-11-14T22:13:20.000000000Z",
            "currentTime": "2023-11-14T22:13:20.000000000Z",
            "nodeEligible": true,
            "healthy": true,
            "status": {
                "IPv4": {"lastUpdated": "2023-11-14T22:13:15.000000000Z", "healthy": true},
                "IPv6": {"lastUpdated": "2023-11-14T22:13:15.000000000Z", "healthy": true},
            },
        });
        assert_eq!(json(true), expected);
        let mut livez = expected.clone();
        livez.as_object_mut().unwrap().remove("nodeEligible");
        assert_eq!(json(false), livez);

        // A draining node: /healthz fails (lastUpdated is the last sync), /livez does not.
        state.node_eligible = false;
        let (healthy, body) = state.report(now, true);
        assert!(!healthy);
        let body = serde_json::to_value(body).unwrap();
        assert_eq!(body["nodeEligible"], false);
        assert_eq!(body["lastUpdated"], "2023-11-14T22:13:15.000000000Z");
        assert!(state.report(now, false).0);

        // Before the first sync: Go's zero time.
        let starting = super::tests::state(None, None);
        let body = serde_json::to_value(starting.report(now, true).1).unwrap();
        assert_eq!(body["lastUpdated"], ZERO_TIME);
        assert_eq!(body["status"]["IPv4"]["healthy"], false);
    }

    #[test]
    fn a_sync_clears_the_pending_change() {
        let health = Health::new(vec![IpFamily::V4]);
        health.queued();
        let first = health.lock().pending_since;
        health.queued();
        assert_eq!(
            health.lock().pending_since,
            first,
            "the oldest change counts"
        );
        health.synced();
        assert_eq!(health.lock().pending_since, None);
        assert!(health.proxy_healthy());
    }
}
