//! `sluice run`: start the datapath and the node services, then keep the maps equal to the
//! desired state that a source (manifests directory or Kubernetes API) publishes, one
//! [`Syncer::sync`] per change, retrying a failed one with backoff.

pub mod memory;
mod sync;

use std::{
    io::Write as _,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Notify,
    time::sleep_until,
};
use tracing::{error, info, warn};

pub use self::sync::{Synced, Syncer};
use crate::{
    datapath::{Datapath, DatapathOptions, HookCounts, netlink_watch::NetlinkWatch},
    model::{DesiredReceiver, IpFamily},
    node::{
        conntrack_gc::{self, CtTimeouts},
        events::Events,
        healthz::{self, Health},
        kernel_log, map_fill,
        metrics::{self, Metrics},
        programming_latency::ProgrammingLatency,
        service_addrs::ServiceAddrs,
        service_health::HealthCheckServers,
        sock_term::SockTerminator,
    },
    reconcile::{PlanNode, Reconciler},
};

pub struct DaemonOptions {
    pub datapath: DatapathOptions,
    pub node_name: String,
    pub healthz_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    /// Idle timeouts of conntrack flows, and how often the GC looks.
    pub conntrack_timeouts: CtTimeouts,
    pub conntrack_gc_interval: Duration,
    /// How often the maps are read back and drift repaired (`Syncer::repair`).
    pub resync_period: Duration,
    /// Kubernetes Events (cluster mode).
    pub events: Option<Events>,
    /// The service CIDRs, whose unallocated addresses are refused (standalone mode's
    /// `--service-cidr`; empty in cluster mode).
    pub service_cidrs: Vec<ipnet::IpNet>,
}

/// The wait before retrying a failed sync: doubled after each failure up to the last, reset
/// by a success. A new desired state does not wait: it is synced at once.
const RETRY_BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(500),
    max: Duration::from_secs(30),
};

/// Runs until SIGTERM or SIGINT. The programs and maps stay pinned afterwards, so traffic keeps
/// flowing while the daemon is down or restarting.
#[expect(
    clippy::too_many_lines,
    reason = "start-up, then the one loop that picks a sync, a retry or a stop: read in order"
)]
pub async fn run(opts: DaemonOptions, mut desired: DesiredReceiver) -> Result<()> {
    let started = Instant::now();
    let mut programming = ProgrammingLatency::new(SystemTime::now());
    let mut datapath = Datapath::start(&opts.datapath)?;
    if let Some(logger) = datapath.kernel_log.take() {
        tokio::spawn(kernel_log::forward(logger));
    }
    let reconciler = Reconciler::from_maps(&mut datapath.maps)?;
    info!(
        frontends = reconciler.frontend_count(),
        backends = reconciler.backend_count(),
        "datapath attached; maps reopened"
    );

    let node = PlanNode::new(
        &opts.node_name,
        [(true, IpFamily::V4), (false, IpFamily::V6)]
            .into_iter()
            .filter(|(v4, _)| datapath.node_addrs.serves(*v4))
            .map(|(_, family)| family),
    );
    info!(node = %opts.node_name, families = ?node.families, "serving these IP families");
    let metrics = Metrics::new(Some(opts.datapath.pin_dir.clone()), &node.families);
    let health = Health::new(node.families.clone());
    if let Some(addr) = opts.healthz_addr {
        let bound = healthz::serve(addr, health.clone(), metrics.clone()).await?;
        info!(%bound, "serving /healthz and /livez");
    }
    tokio::spawn(conntrack_gc::run(
        opts.datapath.pin_dir.clone(),
        opts.conntrack_timeouts,
        opts.conntrack_gc_interval,
    ));
    let sock_term = SockTerminator::new(
        datapath.sock_term.take(),
        &datapath.maps,
        &opts.datapath.cgroup,
    )?;
    let count_now = Arc::new(Notify::new());
    if let Some(addr) = opts.metrics_addr {
        let bound = metrics::serve(addr, metrics.clone()).await?;
        info!(%bound, "serving /metrics");
        tokio::spawn(map_fill::run(
            opts.datapath.pin_dir.clone(),
            metrics.clone(),
            count_now.clone(),
        ));
    }

    let node_families = node.families.clone();
    let health_checks = HealthCheckServers::new(
        datapath.node_addrs.addrs.clone(),
        health.clone(),
        opts.events.clone(),
    );
    let retired_udp_flows =
        conntrack_gc::RetiredUdpFlows::spawn(opts.datapath.pin_dir.clone(), metrics.clone());
    let mut syncer = Syncer::new(
        node,
        reconciler,
        sock_term,
        retired_udp_flows,
        ServiceAddrs::new(opts.service_cidrs.clone()),
        health_checks,
    );
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut first_sync = true;
    // Set while the maps do not hold the last state (its sync failed): when to try again.
    let mut retry: Option<(Instant, Duration)> = None;
    // Without `--node-ip` (or InternalIPs) NodePorts answer on the local addresses: follow
    // them.
    let mut addr_watch = if opts.datapath.node_ips.is_empty() {
        NetlinkWatch::addresses()
            .inspect_err(|err| {
                warn!(%err, "cannot follow address changes: NodePort addresses are read once");
            })
            .ok()
    } else {
        None
    };
    let mut link_watch = if opts.datapath.pod_iface_prefixes.is_empty() {
        None
    } else {
        let watch = NetlinkWatch::links().context("follow pod interfaces (--pod-iface-prefix)")?;
        // Interfaces that came between the start's listing and the subscription.
        refresh_pod_ifaces(&mut datapath, &opts.datapath);
        Some(watch)
    };
    let mut resync = tokio::time::interval(opts.resync_period);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The source's first complete state may already be waiting: handle it like a change.
    desired.mark_changed();
    loop {
        let retry_at = retry.map(|(at, _)| at);
        // The state to sync, and whether it is the retry of one whose sync failed.
        let (state, retrying) = tokio::select! {
            changed = desired.changed() => {
                changed.context("the desired-state source stopped")?;
                let Some(state) = desired.borrow_and_update().clone() else {
                    continue;
                };
                // Without a Node object (standalone mode) the node is eligible.
                health.set_node_eligible(!state.node.as_ref().is_some_and(|node| node.draining));
                health.queued();
                metrics.queued(SystemTime::now());
                (state, false)
            }
            () = sleep_until(retry_at.unwrap_or_else(Instant::now).into()), if retry_at.is_some() => {
                let Some(state) = desired.borrow().clone() else {
                    continue;
                };
                (state, true)
            }
            // Only once the maps hold a state (a failed sync's retry repairs everything anyway).
            _ = resync.tick(), if !first_sync && retry.is_none() => {
                match syncer.repair(&mut datapath.maps).await {
                    Ok(repaired) => {
                        metrics.drift_repaired.inc_by(repaired as u64);
                        if repaired > 0 {
                            count_now.notify_one();
                        }
                    }
                    Err(err) => {
                        metrics.sync_errors.inc();
                        let wait = RETRY_BACKOFF.next(None);
                        error!(retry_in = ?wait, "reading back the maps failed: {err:#}");
                        retry = Some((Instant::now() + wait, wait));
                    }
                }
                continue;
            }
            changed = async { addr_watch.as_mut().expect("guarded").changed().await },
                if addr_watch.is_some() =>
            {
                if let Err(err) = changed {
                    warn!(%err, "following address changes stopped");
                    addr_watch = None;
                    continue;
                }
                // An address change comes as a burst of messages: let it finish.
                tokio::time::sleep(ADDRESS_SETTLE).await;
                match datapath.refresh_node_addrs(&opts.datapath) {
                    Ok(true) => {
                        info!(node_port_addrs = ?datapath.node_addrs.addrs, "node addresses changed");
                        syncer
                            .node_addrs_changed(datapath.node_addrs.addrs.clone())
                            .await;
                    }
                    Ok(false) => {}
                    Err(err) => error!("writing the new node addresses: {err:#}"),
                }
                continue;
            }
            changed = async { link_watch.as_mut().expect("guarded").changed().await },
                if link_watch.is_some() =>
            {
                if let Err(err) = changed {
                    error!(%err, "following pod interfaces stopped: new pods get no pod-side path");
                    link_watch = None;
                    continue;
                }
                refresh_pod_ifaces(&mut datapath, &opts.datapath);
                continue;
            }
            () = syncer.affinity_gc_due() => {
                syncer.collect_affinity(&mut datapath.maps);
                continue;
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        };
        let sync_started = Instant::now();
        let result = if retrying {
            syncer.retry(&mut datapath.maps).await
        } else {
            syncer.sync(&mut datapath.maps, state.clone()).await
        };
        metrics.changes(syncer.take_counted(), syncer.pending());
        match result {
            Ok(done) => {
                retry = None;
                metrics
                    .udp_sockets_terminated
                    .inc_by(done.udp_sockets_terminated);
                health.synced();
                let took = sync_started.elapsed();
                metrics.synced(took, done.apply.full);
                for &family in &node_families {
                    let (internal, external) = syncer.no_local_endpoints(family);
                    metrics.set_no_local_endpoints(family, internal, external);
                }
                let now = SystemTime::now();
                for latency in programming.programmed(&state.trigger_times, now) {
                    metrics.programmed(latency);
                }
                // Last: a change is fully accounted for once this moves.
                metrics.last_synced(now);
                let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                info!(stats = ?done.apply, micros, "maps synced");
                if done.apply.full
                    || done.apply.frontends_written + done.apply.frontends_removed
                        >= memory::TRIM_AFTER_CHANGED
                {
                    memory::return_freed();
                }
                if done.apply.unfit_changed {
                    report_unfit(syncer.reconciler());
                }
                count_now.notify_one();
                if first_sync {
                    first_sync = false;
                    announce_ready(syncer.reconciler(), datapath.hooks, started);
                    if let Some(events) = &opts.events {
                        events.starting();
                    }
                }
            }
            // The maps keep what the failed apply left; the retry writes everything again.
            Err(err) => {
                metrics.sync_errors.inc();
                let wait = RETRY_BACKOFF.next(retry.map(|(_, wait)| wait));
                error!(retry_in = ?wait, "sync failed: {err:#}");
                retry = Some((Instant::now() + wait, wait));
            }
        }
    }
    if retry.is_some() {
        warn!("stopping with the last state not in the maps (its sync failed)");
    }
    info!("stopping; the datapath keeps serving from the pinned programs and maps");
    Ok(())
}

/// Says which planned frontends the maps have no room for (each sync retries them), or that
/// none is left out any more.
fn report_unfit(reconciler: &crate::reconcile::Reconciler) {
    /// Named in the log line; `sluice services` lists them all.
    const SHOWN: usize = 10;
    let unfit = reconciler.unfit();
    if unfit.is_empty() {
        info!("every planned frontend is programmed");
        return;
    }
    let more = unfit.len().saturating_sub(SHOWN);
    let shown = unfit[..unfit.len().min(SHOWN)].join("; ");
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    warn!(
        count = unfit.len(),
        "frontends not programmed (they keep what they had, and land once there is room): \
         {shown}{more}"
    );
}

/// How long after an address change message the addresses are read again.
const ADDRESS_SETTLE: Duration = Duration::from_millis(100);

/// Doubling waits between `first` and `max`.
struct Backoff {
    first: Duration,
    max: Duration,
}

impl Backoff {
    /// The wait after `last` (`None`: the first failure).
    fn next(&self, last: Option<Duration>) -> Duration {
        last.map_or(self.first, |last| (last * 2).min(self.max))
    }
}

/// The one line a person or a test waits for: the first full sync is in the maps.
fn announce_ready(reconciler: &Reconciler, hooks: HookCounts, started: Instant) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "sluice ready: {} frontends, {} backends programmed in {} ms; hooks: {} replaced in \
         place, {} attached; programs: {} verified, {} reused",
        reconciler.frontend_count(),
        reconciler.backend_count(),
        started.elapsed().as_millis(),
        hooks.replaced,
        hooks.attached,
        hooks.programs.verified,
        hooks.programs.reused,
    );
    let _ = stdout.flush();
}

/// Attaches the pod-side path to new pod interfaces and forgets vanished ones, logging what
/// changed; a failure is logged and retried at the next interface change.
fn refresh_pod_ifaces(datapath: &mut Datapath, opts: &DatapathOptions) {
    match datapath.refresh_pod_ifaces(opts) {
        Ok((0, 0)) => {}
        Ok((attached, detached)) => info!(attached, detached, "pod interfaces changed"),
        Err(err) => error!("attaching the pod-side path: {err:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_the_maximum() {
        let mut wait = None;
        let waits: Vec<u64> = (0..9)
            .map(|_| {
                let next = RETRY_BACKOFF.next(wait);
                wait = Some(next);
                u64::try_from(next.as_millis()).expect("at most 30 s")
            })
            .collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
    }
}
