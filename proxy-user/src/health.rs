//! `/healthz` like kube-proxy's: 503 until the first full sync is in the maps, then 200.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use anyhow::{Context as _, Result};
use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde::Serialize;

/// When the maps last matched the desired state; `None` before the first sync.
#[derive(Clone, Default)]
pub struct Health(Arc<Mutex<Option<SystemTime>>>);

impl Health {
    pub fn synced(&self) {
        *self.0.lock().expect("not poisoned") = Some(SystemTime::now());
    }

    fn last_synced(&self) -> Option<SystemTime> {
        *self.0.lock().expect("not poisoned")
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthBody {
    last_updated: Option<String>,
    current_time: String,
}

async fn healthz(State(health): State<Health>) -> (StatusCode, Json<HealthBody>) {
    let last = health.last_synced();
    let body = HealthBody {
        last_updated: last.map(|t| humantime::format_rfc3339_millis(t).to_string()),
        current_time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    };
    let status = if last.is_some() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Binds `addr` and serves /healthz in the background; returns the bound address.
pub async fn serve(addr: SocketAddr, health: Health) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind the health address {addr} (--healthz-addr)"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .with_state(health);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "health server stopped");
        }
    });
    Ok(bound)
}
