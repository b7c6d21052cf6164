//! `/healthz` like kube-proxy's: 503 until the first full sync is in the maps, and again while
//! a change has waited too long to reach them; 200 otherwise.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde::Serialize;

/// A change queued this long without reaching the maps makes the node unhealthy, as in
/// kube-proxy (twice its default 30 s sync period).
const STALE_AFTER: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Default)]
struct SyncTimes {
    /// When the maps last matched the desired state; `None` before the first sync.
    last_synced: Option<SystemTime>,
    /// The oldest change not yet in the maps.
    pending_since: Option<SystemTime>,
}

/// What /healthz reports: synced once, and no change waiting too long.
#[derive(Clone, Default)]
pub struct Health(Arc<Mutex<SyncTimes>>);

impl Health {
    pub fn queued(&self) {
        let mut times = self.0.lock().expect("not poisoned");
        times.pending_since.get_or_insert_with(SystemTime::now);
    }

    pub fn synced(&self) {
        let mut times = self.0.lock().expect("not poisoned");
        times.last_synced = Some(SystemTime::now());
        times.pending_since = None;
    }

    fn times(&self) -> SyncTimes {
        *self.0.lock().expect("not poisoned")
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthBody {
    last_updated: Option<String>,
    current_time: String,
}

impl SyncTimes {
    /// 200 once a sync is in and no change has waited more than `STALE_AFTER`; else 503.
    fn status(self, now: SystemTime) -> StatusCode {
        let stale = self
            .pending_since
            .is_some_and(|since| now.duration_since(since).unwrap_or_default() > STALE_AFTER);
        if self.last_synced.is_some() && !stale {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

async fn healthz(State(health): State<Health>) -> (StatusCode, Json<HealthBody>) {
    let times = health.times();
    let now = SystemTime::now();
    let body = HealthBody {
        last_updated: times
            .last_synced
            .map(|t| humantime::format_rfc3339_millis(t).to_string()),
        current_time: humantime::format_rfc3339_millis(now).to_string(),
    };
    (times.status(now), Json(body))
}

/// Binds `addr` and serves /healthz in the background; returns the bound address.
pub async fn serve(addr: SocketAddr, health: Health) -> Result<SocketAddr> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .with_state(health);
    let (bound, _) = crate::node::http_server::serve(addr, app, "health")
        .await
        .with_context(|| format!("bind the health address {addr} (--healthz-addr)"))?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_first_sync_and_the_oldest_pending_change() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ago = |secs: u64| Some(now - Duration::from_secs(secs));
        let ok = StatusCode::OK;
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        // (last synced, pending since, status)
        let table = [
            (None, None, unavailable),       // starting: nothing synced yet
            (None, ago(1), unavailable),     // the first state is being synced
            (None, ago(120), unavailable),   // the first sync never finished
            (ago(5), None, ok),              // synced, nothing waiting
            (ago(5), ago(1), ok),            // a change on its way
            (ago(5), ago(60), ok),           // waited exactly the limit
            (ago(90), ago(61), unavailable), // a change stuck past the limit (failing syncs)
            (ago(3600), None, ok),           // long idle is healthy
            (ago(5), Some(now + Duration::from_secs(5)), ok), // clock stepped back
        ];
        for (last_synced, pending_since, want) in table {
            let times = SyncTimes {
                last_synced,
                pending_since,
            };
            assert_eq!(
                times.status(now),
                want,
                "last synced {last_synced:?}, pending since {pending_since:?}"
            );
        }
    }

    #[test]
    fn a_sync_clears_the_pending_change() {
        let health = Health::default();
        health.queued();
        let first = health.times().pending_since;
        health.queued();
        assert_eq!(
            health.times().pending_since,
            first,
            "the oldest change counts"
        );
        health.synced();
        assert_eq!(health.times().pending_since, None);
        assert_eq!(health.times().status(SystemTime::now()), StatusCode::OK);
    }
}
