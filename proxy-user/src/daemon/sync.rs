//! One sync step: a desired state into the maps, and everything that follows from the maps
//! holding it, in one order. A failed apply is retried by the daemon through [`Syncer::retry`].

use std::sync::Arc;

use anyhow::Result;
use tracing::warn;

use crate::{
    datapath::{Maps, clock},
    model::{ChangeCounts, DesiredState, IpFamily},
    node::{
        affinity_gc::AffinityGc,
        conntrack_gc::RetiredUdpFlows,
        no_local_endpoints,
        service_addrs::ServiceAddrs,
        service_health::{self, HealthCheckServers},
        service_index::ServiceIndex,
        sock_term::SockTerminator,
    },
    reconcile::{ApplyStats, PlanChanges, PlanNode, Planner, Reconciler},
};

/// Owns the planner, the reconciler and what runs after each apply.
pub struct Syncer {
    node_name: String,
    planner: Planner,
    reconciler: Reconciler,
    health_check_index: ServiceIndex,
    health_checks: HealthCheckServers,
    local_policy_index: ServiceIndex,
    sock_term: SockTerminator,
    retired_udp_flows: RetiredUdpFlows,
    service_addrs: ServiceAddrs,
    affinity_gc: AffinityGc,
    /// Changes planned since the last [`Syncer::take_counted`], for the change totals.
    counted: ChangeCounts,
    /// Changes planned but not yet in the maps (their apply failed; a retry brings them).
    pending: ChangeCounts,
}

/// What one successful sync did.
#[derive(Debug)]
pub struct Synced {
    pub apply: ApplyStats,
    /// Connected UDP sockets closed because their backend left every frontend.
    pub udp_sockets_terminated: u64,
}

impl Syncer {
    pub fn new(
        node: PlanNode,
        reconciler: Reconciler,
        sock_term: SockTerminator,
        retired_udp_flows: RetiredUdpFlows,
        service_addrs: ServiceAddrs,
        health_checks: HealthCheckServers,
    ) -> Self {
        Self {
            node_name: node.name.clone(),
            planner: Planner::new(node),
            reconciler,
            health_check_index: service_health::index(),
            health_checks,
            local_policy_index: no_local_endpoints::index(),
            sock_term,
            retired_udp_flows,
            service_addrs,
            affinity_gc: AffinityGc::default(),
            counted: ChangeCounts::default(),
            pending: ChangeCounts::default(),
        }
    }

    /// Makes the maps hold `state`. The order:
    /// 1. plan `state` (only the Services that changed are re-planned);
    /// 2. apply the plan to the maps (only the changed entries, in the readers' order);
    ///
    /// then, only once the maps hold the plan (after a failed apply, on a [`Syncer::retry`]
    /// that succeeds):
    /// 3. the affinity GC learns the new frontends (and cleans those switched off), and the
    ///    service-address maps the cluster IPs (now that their frontends are in);
    /// 4. connected UDP sockets to backends gone from every frontend are closed (they are gone
    ///    from the maps, so no new socket is sent there while they close), and the packet
    ///    path's UDP flows to backends that left a frontend are queued for removal;
    /// 5. the health-check ports answer for the endpoints now programmed.
    pub async fn sync(&mut self, maps: &mut Maps, state: Arc<DesiredState>) -> Result<Synced> {
        let started_ns = clock::monotonic_ns();
        if let Some(cidrs) = &state.service_cidrs {
            self.service_addrs.set_cidrs(cidrs);
        }
        let changes = self.planner.update(state.clone());
        self.counted += changes.counts;
        self.pending += changes.counts;
        self.health_check_index.update(&state, &changes);
        self.local_policy_index.update(&state, &changes);
        let apply = self
            .reconciler
            .apply_changes(maps, self.planner.plan(), &changes)?;
        Ok(self.after_apply(maps, apply, &changes, started_ns).await)
    }

    /// Writes the last planned state again, in full (after a failed apply the reconciler
    /// trusts nothing it did not read back), then steps 3 to 5 of [`Syncer::sync`].
    pub async fn retry(&mut self, maps: &mut Maps) -> Result<Synced> {
        let started_ns = clock::monotonic_ns();
        let apply = self.reconciler.apply(maps, self.planner.plan())?;
        Ok(self
            .after_apply(maps, apply, &PlanChanges::everything(), started_ns)
            .await)
    }

    /// Reads the maps back and writes again what differs from the last plan: entries changed or
    /// removed behind the daemon's back (bpftool, another process), as a restart would find and
    /// mend them. Returns how many frontend and backend entries it wrote or removed (0 when the
    /// maps hold the plan, the usual case: then nothing else runs).
    pub async fn repair(&mut self, maps: &mut Maps) -> Result<usize> {
        let started_ns = clock::monotonic_ns();
        self.reconciler = Reconciler::from_maps(maps)?;
        let apply = self.reconciler.apply(maps, self.planner.plan())?;
        let repaired = apply.frontends_written
            + apply.frontends_removed
            + apply.backends_written
            + apply.backends_removed;
        if repaired > 0 {
            warn!(
                stats = ?apply,
                "the maps had drifted from the desired state (changed behind sluice's back): \
                 repaired"
            );
            self.after_apply(maps, apply, &PlanChanges::everything(), started_ns)
                .await;
        }
        Ok(repaired)
    }

    async fn after_apply(
        &mut self,
        maps: &mut Maps,
        apply: ApplyStats,
        changes: &PlanChanges,
        started_ns: u64,
    ) -> Synced {
        self.pending = ChangeCounts::default();
        let view = self.reconciler.affinity_view();
        self.affinity_gc.after_apply(maps, &view, started_ns);
        // A full apply may have written anything: what follows then compares everything.
        let changes = (!apply.full).then_some(changes);
        self.service_addrs
            .after_apply(maps, self.planner.plan(), changes);
        let udp_sockets_terminated = self.sock_term.after_apply(self.planner.plan(), changes);
        self.retired_udp_flows
            .remove(self.reconciler.take_retired_udp_slots());
        self.serve_health_checks().await;
        Synced {
            apply,
            udp_sockets_terminated,
        }
    }

    /// Completes when the affinity GC's next pass is due (never when none is scheduled).
    pub async fn affinity_gc_due(&self) {
        if self.affinity_gc.is_scheduled() {
            self.affinity_gc.due().await;
        } else {
            std::future::pending::<()>().await;
        }
    }

    /// One pass of the affinity GC.
    pub fn collect_affinity(&mut self, maps: &mut Maps) {
        self.affinity_gc.run(maps, &self.reconciler.affinity_view());
    }

    /// The NodePort addresses changed: the health check ports move to `addrs`.
    pub async fn node_addrs_changed(&mut self, addrs: Vec<std::net::IpAddr>) {
        self.health_checks.set_addrs(addrs);
        self.serve_health_checks().await;
    }

    /// The health check ports answer for the last programmed state.
    async fn serve_health_checks(&mut self) {
        let wanted = service_health::wanted_in(&self.health_check_index, &self.node_name);
        self.health_checks.update(&wanted).await;
    }

    /// The changes planned since the last call (counted once each, applied or not).
    pub fn take_counted(&mut self) -> ChangeCounts {
        std::mem::take(&mut self.counted)
    }

    /// The changes planned but not yet in the maps.
    pub fn pending(&self) -> ChangeCounts {
        self.pending
    }

    /// kube-proxy's no-local-endpoints counts (internal, external) of `family` for the last
    /// state.
    pub fn no_local_endpoints(&self, family: IpFamily) -> (i64, i64) {
        no_local_endpoints::count(&self.local_policy_index, &self.node_name, family)
    }

    pub fn reconciler(&self) -> &Reconciler {
        &self.reconciler
    }
}
