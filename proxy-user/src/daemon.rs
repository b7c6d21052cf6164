//! `sluice run`: start the datapath, then keep the maps equal to the desired state that a
//! source (manifests directory or Kubernetes API) publishes.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use proxy_common::klog::LogRecord;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::{Notify, watch},
};
use tracing::{error, info};

use crate::{
    affinity_gc::AffinityGc,
    clock,
    conntrack_gc::{self, CtTimeouts},
    datapath::{Datapath, DatapathOptions, HookCounts, Maps},
    health::{self, Health},
    health_check::{HealthCheckIndex, HealthCheckServers},
    klog,
    metrics::{self, Metrics, unix_seconds},
    model::DesiredState,
    programming_latency::ProgrammingLatency,
    reconcile::{Planner, Reconciler},
    sock_term::SockTerminator,
};

/// Where sources publish the complete desired state; `None` until their first full view,
/// so the daemon never deletes live services before it knows the whole picture.
pub type DesiredSender = watch::Sender<Option<Arc<DesiredState>>>;
pub type DesiredReceiver = watch::Receiver<Option<Arc<DesiredState>>>;

pub struct DaemonOptions {
    pub datapath: DatapathOptions,
    pub node_name: String,
    pub healthz_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    /// Idle timeouts of conntrack flows, and how often the GC looks.
    pub conntrack_timeouts: CtTimeouts,
    pub conntrack_gc_interval: Duration,
}

/// How often the map fill levels are counted for /metrics.
const MAP_FILL_INTERVAL: Duration = Duration::from_secs(10);

/// Runs until SIGTERM or SIGINT. The programs and maps stay pinned afterwards, so traffic keeps
/// flowing while the daemon is down or restarting.
pub async fn run(opts: DaemonOptions, mut desired: DesiredReceiver) -> Result<()> {
    let started = Instant::now();
    let mut programming = ProgrammingLatency::new(SystemTime::now());
    let mut datapath = Datapath::start(&opts.datapath)?;
    if let Some(ring) = datapath.kernel_log.take() {
        tokio::spawn(forward_kernel_logs(ring));
    }
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
    tokio::spawn(conntrack_gc::run(
        opts.datapath.pin_dir.clone(),
        opts.conntrack_timeouts,
        opts.conntrack_gc_interval,
    ));
    let metrics = Metrics::new(Some(opts.datapath.pin_dir.clone()));
    let mut sock_term = SockTerminator::new(
        datapath.sock_term.take(),
        &datapath.maps,
        &opts.datapath.cgroup,
        metrics.clone(),
    )?;
    let count_now = Arc::new(Notify::new());
    if let Some(addr) = opts.metrics_addr {
        let bound = metrics::serve(addr, metrics.clone()).await?;
        info!(%bound, "serving /metrics");
        tokio::spawn(count_map_fill(
            opts.datapath.pin_dir.clone(),
            metrics.clone(),
            count_now.clone(),
        ));
    }

    let mut health_checks = HealthCheckServers::default();
    let mut health_check_index = HealthCheckIndex::default();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut first_sync = true;
    // Keeps the plan of the last state: a change re-plans and rewrites only what it touches.
    let mut planner = Planner::new(&opts.node_name);
    let mut affinity_gc = AffinityGc::default();
    // The source's first complete state may already be waiting: handle it like a change.
    desired.mark_changed();
    loop {
        tokio::select! {
            changed = desired.changed() => {
                changed.context("the desired-state source stopped")?;
                let Some(state) = desired.borrow_and_update().clone() else {
                    continue;
                };
                health.queued();
                metrics.last_queued.set(unix_seconds(SystemTime::now()));
                let sync_started = Instant::now();
                let sync_started_ns = clock::monotonic_ns();
                let changes = planner.update(state.clone());
                health_check_index.update(&state, &changes);
                health_checks
                    .update(&health_check_index.wanted(&opts.node_name))
                    .await;
                match reconciler.apply_changes(&mut datapath.maps, planner.plan(), &changes) {
                    Ok(stats) => {
                        let view = reconciler.affinity_view();
                        affinity_gc.after_apply(&mut datapath.maps, &view, sync_started_ns);
                        sock_term.after_apply(planner.plan(), (!stats.full).then_some(&changes));
                        health.synced();
                        let took = sync_started.elapsed();
                        metrics.sync_duration.observe(took.as_secs_f64());
                        let now = SystemTime::now();
                        for latency in programming.programmed(&state.trigger_times, now) {
                            metrics.network_programming.observe(latency.as_secs_f64());
                        }
                        // Last: a change is fully accounted for once this moves.
                        metrics.last_sync.set(unix_seconds(now));
                        info!(?stats, micros = took.as_micros() as u64, "maps synced");
                        count_now.notify_one();
                        if first_sync {
                            first_sync = false;
                            announce_ready(&reconciler, datapath.hooks, started);
                        }
                    }
                    // The maps keep their last good content; the next change tries again.
                    Err(err) => {
                        metrics.sync_errors.inc();
                        error!("sync failed: {err:#}");
                    }
                }
            }
            () = affinity_gc.due(), if affinity_gc.is_scheduled() => {
                affinity_gc.run(&mut datapath.maps, &reconciler.affinity_view());
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    info!("stopping; the datapath keeps serving from the pinned programs and maps");
    Ok(())
}

/// Turns the programs' log records into log lines (target `kernel`) as they arrive. The
/// programs only write them when switched on (`--kernel-log-level`, `sluice log-level`).
async fn forward_kernel_logs(ring: RingBuf<MapData>) {
    // SAFETY: the ring buffer owns its fd, which stays open and the same until the AsyncFd
    // (which owns the ring buffer) is dropped.
    let registered = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) };
    let mut ring = match registered {
        Ok(ring) => ring,
        Err(err) => {
            tracing::warn!("kernel log lines cannot be read: {err}");
            return;
        }
    };
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(guard) => guard,
            Err(err) => {
                tracing::warn!("kernel log lines cannot be read: {err}");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<LogRecord>() {
                klog::log(&bytemuck::pod_read_unaligned(
                    &item[..size_of::<LogRecord>()],
                ));
            }
        }
        guard.clear_ready();
    }
}

/// Counts every map's entries after each sync and now and then, off the sync loop (a full
/// conntrack walk takes a while).
async fn count_map_fill(pin_dir: PathBuf, metrics: Metrics, count_now: Arc<Notify>) {
    let mut interval = tokio::time::interval(MAP_FILL_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = count_now.notified() => {}
        }
        let dir = pin_dir.clone();
        let fill = tokio::task::spawn_blocking(move || Maps::open_pinned(&dir)?.fill(&dir)).await;
        match fill {
            Ok(Ok(fill)) => {
                for map in fill {
                    metrics.set_map_fill(map.map, map.entries, map.max_entries);
                }
            }
            Ok(Err(err)) => tracing::warn!("counting map entries: {err:#}"),
            Err(err) => tracing::warn!("counting map entries: {err}"),
        }
    }
}

/// The one line a person or a test waits for: the first full sync is in the maps.
fn announce_ready(reconciler: &Reconciler, hooks: HookCounts, started: Instant) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "sluice ready: {} frontends, {} backends programmed in {} ms; hooks: {} replaced in \
         place, {} attached",
        reconciler.frontend_count(),
        reconciler.backend_count(),
        started.elapsed().as_millis(),
        hooks.replaced,
        hooks.attached,
    );
    let _ = stdout.flush();
}
