//! `sluice run`: start the datapath, then keep the maps equal to the desired state that a
//! source (manifests directory or Kubernetes API) publishes.

use std::{io::Write as _, net::SocketAddr, sync::Arc, time::Instant};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{error, info};

use crate::{
    datapath::{Datapath, DatapathOptions},
    health::{self, Health},
    health_check::{self, HealthCheckServers},
    model::DesiredState,
    reconcile::{Plan, Reconciler},
};

/// Where sources publish the complete desired state; `None` until their first full view,
/// so the daemon never deletes live services before it knows the whole picture.
pub type DesiredSender = watch::Sender<Option<Arc<DesiredState>>>;
pub type DesiredReceiver = watch::Receiver<Option<Arc<DesiredState>>>;

pub struct DaemonOptions {
    pub datapath: DatapathOptions,
    pub node_name: String,
    pub healthz_addr: Option<SocketAddr>,
}

/// Runs until SIGTERM or SIGINT. The programs and maps stay pinned afterwards, so traffic keeps
/// flowing while the daemon is down or restarting.
pub async fn run(opts: DaemonOptions, mut desired: DesiredReceiver) -> Result<()> {
    let started = Instant::now();
    let mut datapath = Datapath::start(&opts.datapath)?;
    let mut reconciler = Reconciler::from_maps(&datapath.maps)?;
    info!(
        frontends = reconciler.frontend_count(),
        backends = reconciler.backend_count(),
        "datapath attached; maps reopened"
    );

    let health = Health::default();
    if let Some(addr) = opts.healthz_addr {
        let bound = health::serve(addr, health.clone()).await?;
        info!(%bound, "serving /healthz");
    }

    let mut health_checks = HealthCheckServers::default();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut first_sync = true;
    // The source's first complete state may already be waiting: handle it like a change.
    desired.mark_changed();
    loop {
        tokio::select! {
            changed = desired.changed() => {
                changed.context("the desired-state source stopped")?;
                let Some(state) = desired.borrow_and_update().clone() else {
                    continue;
                };
                let sync_started = Instant::now();
                let plan = Plan::build(&state, &opts.node_name);
                health_checks
                    .update(&health_check::wanted(&state, &opts.node_name))
                    .await;
                match reconciler.apply(&mut datapath.maps, &plan) {
                    Ok(stats) => {
                        health.synced();
                        info!(
                            ?stats,
                            micros = sync_started.elapsed().as_micros() as u64,
                            "maps synced"
                        );
                        if first_sync {
                            first_sync = false;
                            announce_ready(&reconciler, started);
                        }
                    }
                    // The maps keep their last good content; the next change tries again.
                    Err(err) => error!("sync failed: {err:#}"),
                }
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    info!("stopping; the datapath keeps serving from the pinned programs and maps");
    Ok(())
}

/// The one line a person or a test waits for: the first full sync is in the maps.
fn announce_ready(reconciler: &Reconciler, started: Instant) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "sluice ready: {} frontends, {} backends programmed in {} ms",
        reconciler.frontend_count(),
        reconciler.backend_count(),
        started.elapsed().as_millis()
    );
    let _ = stdout.flush();
}
