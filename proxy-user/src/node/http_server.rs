//! The daemon's small HTTP endpoints (/healthz, /metrics, health check NodePorts), each served
//! in the background.

use std::net::SocketAddr;

use axum::Router;
use tokio::task::JoinHandle;

/// Binds `addr` and serves `app` in a background task; returns the bound address and the task
/// (abort it to close the port). `what` names the server in the log if it stops.
pub async fn serve(
    addr: SocketAddr,
    app: Router,
    what: &'static str,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|err| {
        if err.kind() == std::io::ErrorKind::AddrInUse {
            std::io::Error::new(
                err.kind(),
                "the address is in use (kube-proxy serves the same ports): stop what listens \
                 there, or choose another address",
            )
        } else {
            err
        }
    })?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "{what} server stopped");
        }
    });
    Ok((bound, task))
}
