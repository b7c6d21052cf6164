//! Writes the difference between a plan and what the maps hold, keeping a mirror of the maps.
//! There is one write path: an apply covers a scope of plan entries, either those the planner
//! says changed (`apply_changes`, so a change costs what it changes) or every entry planned or
//! programmed (`apply`: the first sync, and after an error), and writes them in one order.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use anyhow::{Context as _, Result, bail};
use ipnet::IpNet;
use proxy_common::{
    Addr6, AffinityMatchKey, MetaFields, SVC_F_TWO_SCOPES, SVC_SCOPE_DEFAULT, SVC_SCOPE_INTERNAL,
    ServiceMeta, ServiceValue, SkippedKey, SkippedService,
};

pub use self::affinity::AffinityView;
use self::{
    affinity::AffinityMembers,
    batch::Pending,
    family::{
        AnyServiceKey, Family, backend_addr, check_range_family, frontend_of, remove_range,
        remove_service_key, service_key,
    },
    room::{Room, Unfit},
};
use super::{
    plan::{BackendAddr, Frontend, FrontendPlan, Plan, SkippedPlan},
    planner::PlanChanges,
    tables::ServiceTables,
};
use crate::model::Protocol;

mod affinity;
mod batch;
mod family;
mod room;

/// A backend that left a UDP frontend's slots, as (frontend id, backend id): the packet path's
/// flows of that pair must be forgotten, as kube-proxy deletes their conntrack entries.
pub type RetiredUdpSlot = (u32, u32);

/// A frontend as programmed: its id, flags and backend ids by slot.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Programmed {
    service_id: u32,
    flags: u16,
    affinity_timeout: u32,
    slots: Vec<u32>,
    meta: ServiceMeta,
    /// Source ranges in the frontend family's source-range map under `service_id`, sorted.
    source_ranges: Vec<IpNet>,
}

/// What one `apply` changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Everything was written (`apply`, or `apply_changes` when it had to), not just changes.
    pub full: bool,
    pub frontends_written: usize,
    pub frontends_removed: usize,
    pub backends_written: usize,
    pub backends_removed: usize,
    /// Planned frontends the maps have no room for, after the apply (see `Reconciler::unfit`).
    pub frontends_unfit: usize,
    /// Which frontends do not fit changed in this apply.
    pub unfit_changed: bool,
}

impl ApplyStats {
    /// Both applies' changes, as one.
    fn and(self, more: Self) -> Self {
        Self {
            full: self.full,
            frontends_written: self.frontends_written + more.frontends_written,
            frontends_removed: self.frontends_removed + more.frontends_removed,
            backends_written: self.backends_written + more.backends_written,
            backends_removed: self.backends_removed + more.backends_removed,
            frontends_unfit: more.frontends_unfit,
            unfit_changed: self.unfit_changed || more.unfit_changed,
        }
    }
}

/// What `write_frontend` did with a planned frontend.
enum Outcome {
    Unchanged,
    Changed,
    /// Left out: the maps have no room (see `room`).
    LeftOut,
}

/// A planned frontend the maps have room for: its backend ids by slot, its id, and its
/// services-map entries before and after.
struct Admitted {
    slots: Vec<u32>,
    service_id: u32,
    old_entries: usize,
    new_entries: usize,
}

/// A planned frontend the maps had no room for.
#[derive(Clone, Debug, PartialEq, Eq)]
struct UnfitFrontend {
    name: String,
    svc_type: u8,
    why: Unfit,
}

/// The daemon's mirror of the services and backends maps of both families.
#[derive(Debug, Default)]
pub struct Reconciler {
    frontends: HashMap<Frontend, Programmed>,
    backend_ids: HashMap<BackendAddr, u32>,
    /// Backend id → what its family's backends map holds: address, port and flags.
    backends: BTreeMap<u32, (BackendAddr, u8)>,
    /// The skipped-services map, by `namespace/name`.
    skipped: BTreeMap<String, SkippedService>,
    /// What an interrupted apply left unreachable, found in the maps: removed by the next apply.
    stale: Stale,
    next_service_id: u32,
    /// The ids of `frontends`, so allocating one costs O(1), not a walk over every frontend.
    service_ids: HashSet<u32>,
    next_backend_id: u32,
    /// Ids index the datapath's counter arrays, so they stay below the arrays' sizes.
    service_id_limit: u32,
    backend_id_limit: u32,
    /// Mirror of the affinity-match map.
    members: AffinityMembers,
    /// Service id → ClientIP timeout of the frontends with affinity on, for the affinity GC.
    affinity_timeouts: HashMap<u32, u32>,
    /// The maps hold the plan of the last apply and the mirror is exact: a following apply
    /// may write only what changed since. False until a full apply succeeded, and after errors.
    in_sync: bool,
    /// UDP frontends → the ids of their `FrontendPlan::serving` backends. The mirror's alone
    /// (no map holds them): unknown, so empty, after reading the maps.
    udp_serving: HashMap<Frontend, Vec<u32>>,
    /// What left UDP frontends since the last [`Reconciler::take_retired_udp_slots`].
    retired_udp_slots: Vec<RetiredUdpSlot>,
    /// Entries in use and capacity of the services maps.
    room: Room,
    /// Planned frontends the maps have no room for: an existing one keeps what it had, a new
    /// one is not programmed. Every apply tries them again; their Services are listed as
    /// skipped meanwhile.
    unfit: BTreeMap<Frontend, UnfitFrontend>,
    /// Names whose unfit frontends changed in this apply (their skipped entries follow).
    unfit_names: BTreeSet<String>,
    /// Planned backends that got no id (the backend maps were full): every apply tries again.
    unallocated: HashSet<BackendAddr>,
    /// Unplanned internal-scope frontends kept for the default-scope ones left out that still
    /// send to them: every apply looks at them again.
    lingering: BTreeSet<Frontend>,
    /// Unplanned backends kept for the frontends left out that still use them: every apply
    /// looks at them again.
    held_back: HashSet<BackendAddr>,
}

/// Entries no reader can reach (slots under no head; metadata, source ranges and affinity
/// members under no frontend's id), left by an interrupted apply.
#[derive(Debug, Default)]
struct Stale {
    slots: Vec<AnyServiceKey>,
    meta: Vec<u32>,
    ranges: Vec<(u32, IpNet)>,
    members: Vec<u32>,
}

/// The plan entries one apply writes (and removes where the plan no longer has them).
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// Every entry the plan has or the maps hold (walked in place: a cold start has millions).
    Everything,
    /// The entries one planner update changed.
    Changes(&'a PlanChanges),
}

impl<'a> Scope<'a> {
    /// The planned frontends in scope, in frontend order.
    fn planned_frontends<'p>(
        self,
        plan: &'p Plan,
    ) -> Box<dyn Iterator<Item = (&'p Frontend, &'p FrontendPlan)> + 'p>
    where
        'a: 'p,
    {
        match self {
            Self::Everything => Box::new(plan.frontends.iter()),
            Self::Changes(changes) => Box::new(
                changes
                    .frontends
                    .iter()
                    .filter_map(|frontend| plan.frontends.get_key_value(frontend)),
            ),
        }
    }

    /// The planned backends in scope.
    fn planned_backends<'p>(
        self,
        plan: &'p Plan,
    ) -> Box<dyn Iterator<Item = (&'p BackendAddr, &'p u8)> + 'p>
    where
        'a: 'p,
    {
        match self {
            Self::Everything => Box::new(plan.backends.iter()),
            Self::Changes(changes) => Box::new(
                changes
                    .backends
                    .iter()
                    .filter_map(|addr| plan.backends.get_key_value(addr)),
            ),
        }
    }

    /// The programmed frontends in scope.
    fn programmed_frontends<'p>(
        self,
        programmed: &'p HashMap<Frontend, Programmed>,
    ) -> Box<dyn Iterator<Item = (&'p Frontend, &'p Programmed)> + 'p>
    where
        'a: 'p,
    {
        match self {
            Self::Everything => Box::new(programmed.iter()),
            Self::Changes(changes) => Box::new(
                changes
                    .frontends
                    .iter()
                    .filter_map(|frontend| programmed.get_key_value(frontend)),
            ),
        }
    }

    /// The programmed backends in scope the plan no longer has.
    fn unplanned_backends(
        self,
        plan: &Plan,
        programmed: &HashMap<BackendAddr, u32>,
    ) -> Vec<BackendAddr> {
        let candidates: Box<dyn Iterator<Item = &BackendAddr>> = match self {
            Self::Everything => Box::new(programmed.keys()),
            Self::Changes(changes) => Box::new(changes.backends.iter()),
        };
        candidates
            .filter(|addr| !plan.backends.contains_key(addr) && programmed.contains_key(addr))
            .copied()
            .collect()
    }

    /// The skipped names in scope: listed by the plan, by the maps, or both.
    fn skipped(self, plan: &Plan, listed: &BTreeMap<String, SkippedService>) -> Vec<String> {
        match self {
            Self::Everything => {
                let mut names: BTreeSet<&String> = plan.skipped.keys().collect();
                names.extend(listed.keys());
                names.into_iter().cloned().collect()
            }
            Self::Changes(changes) => changes.skipped.iter().cloned().collect(),
        }
    }
}

impl Reconciler {
    /// Reads what the (possibly pinned, possibly from an earlier run) maps hold.
    pub fn from_maps(maps: &mut dyn ServiceTables) -> Result<Self> {
        let mut this = Self {
            service_id_limit: maps.service_counters().slots(),
            backend_id_limit: maps.backend_counters().slots(),
            ..Self::default()
        };
        this.read_backends::<u32>(maps)?;
        this.read_backends::<Addr6>(maps)?;
        let skipped = maps
            .skipped()
            .entries()
            .context("read the skipped-services map")?;
        for (key, value) in skipped {
            this.skipped.insert(key.name().to_owned(), value);
        }
        let mut ranges: HashMap<u32, Vec<IpNet>> = HashMap::new();
        read_ranges::<u32>(maps, &mut ranges)?;
        read_ranges::<Addr6>(maps, &mut ranges)?;
        let meta: HashMap<u32, ServiceMeta> = maps
            .service_meta()
            .entries()
            .context("read the service-meta map")?
            .into_iter()
            .collect();
        let mut slots: HashMap<Frontend, BTreeMap<u16, ServiceValue>> = HashMap::new();
        read_slots::<u32>(maps, &mut slots)?;
        read_slots::<Addr6>(maps, &mut slots)?;
        let mut used = [0; 2];
        for (frontend, slots) in &slots {
            used[usize::from(frontend.addr.is_ipv6())] += slots.len();
        }
        this.room = Room::new(used, maps.services_capacity()?);
        for (frontend, slots) in slots {
            // Slots without slot 0 are a remnant of an interrupted write, unreachable for a
            // reader: removed by the next apply (which writes the frontend anew if planned).
            let Some(&head) = slots.get(&0) else {
                this.stale
                    .slots
                    .extend(slots.keys().map(|&slot| service_key(frontend, slot.into())));
                continue;
            };
            // Readers use slots `1..=count`; those past it are left by an interrupted write
            // (grown slots whose head was not written, or a shrink whose removals were not).
            // A missing one (id 0: no backend) makes the next apply rewrite the frontend.
            let backend_slots = (1..=head.count)
                .map(|slot| slots.get(&slot).map_or(0, |value| value.backend_id))
                .collect();
            this.stale.slots.extend(
                slots
                    .range(head.count + 1..)
                    .map(|(&slot, _)| service_key(frontend, slot.into())),
            );
            let meta = meta
                .get(&head.service_id)
                .copied()
                .unwrap_or_else(|| ServiceMeta::new("", MetaFields::default()));
            let mut source_ranges = ranges.remove(&head.service_id).unwrap_or_default();
            source_ranges.sort_unstable();
            this.next_service_id = this.next_service_id.max(head.service_id);
            this.service_ids.insert(head.service_id);
            if head.affinity_timeout != 0 {
                this.affinity_timeouts
                    .insert(head.service_id, head.affinity_timeout);
            }
            this.frontends.insert(
                frontend,
                Programmed {
                    service_id: head.service_id,
                    flags: head.flags,
                    affinity_timeout: head.affinity_timeout,
                    slots: backend_slots,
                    meta,
                    source_ranges,
                },
            );
        }
        this.members = AffinityMembers::from_maps(maps)?;
        this.stale = Stale {
            slots: std::mem::take(&mut this.stale.slots),
            meta: meta
                .keys()
                .filter(|id| !this.service_ids.contains(id))
                .copied()
                .collect(),
            ranges: ranges
                .into_iter()
                .flat_map(|(id, nets)| nets.into_iter().map(move |net| (id, net)))
                .collect(),
            members: this
                .members
                .service_ids()
                .filter(|id| !this.service_ids.contains(id))
                .collect(),
        };
        Ok(this)
    }

    /// Adds one family's backends map to the mirror.
    fn read_backends<A: Family>(&mut self, maps: &mut dyn ServiceTables) -> Result<()> {
        let entries = A::backends(maps)
            .entries()
            .context("read the backends maps")?;
        for (id, backend) in entries {
            let addr = backend_addr(&backend);
            self.backend_ids.insert(addr, id);
            self.backends.insert(id, (addr, backend.flags));
            self.next_backend_id = self.next_backend_id.max(id);
        }
        Ok(())
    }

    /// Makes the maps hold exactly `plan`, walking all of it and all they hold. On error the
    /// mirror is re-read from the maps so the next apply starts from the truth.
    pub fn apply(&mut self, maps: &mut dyn ServiceTables, plan: &Plan) -> Result<ApplyStats> {
        let result = self.try_apply(maps, plan, Scope::Everything);
        let result = self.retry_unfit(maps, plan, result);
        self.after(maps, result)
    }

    /// Makes the maps hold `plan`, which differs from the plan of this reconciler's last
    /// successful apply only in the entries `changes` lists (what `Planner::update` returned
    /// along with `plan`). When the mirror is not known exact (the first apply, the first after
    /// an error) or everything changed, it writes everything, like `apply`.
    pub fn apply_changes(
        &mut self,
        maps: &mut dyn ServiceTables,
        plan: &Plan,
        changes: &PlanChanges,
    ) -> Result<ApplyStats> {
        if changes.everything || !self.in_sync {
            return self.apply(maps, plan);
        }
        let result = self.try_apply(maps, plan, Scope::Changes(changes));
        let result = self.retry_unfit(maps, plan, result);
        self.after(maps, result)
    }

    /// Once more for the frontends left out, when the apply made room (removed or shrank
    /// frontends: their entries are free only once removed, after the writes).
    fn retry_unfit(
        &mut self,
        maps: &mut dyn ServiceTables,
        plan: &Plan,
        result: Result<ApplyStats>,
    ) -> Result<ApplyStats> {
        let stats = result?;
        if self.unfit.is_empty() || stats.frontends_removed + stats.frontends_written == 0 {
            return Ok(stats);
        }
        let more = self.try_apply(maps, plan, Scope::Changes(&PlanChanges::default()))?;
        Ok(stats.and(more))
    }

    /// The planned frontends the maps have no room for, each as `name address:port/protocol:
    /// why`, in frontend order.
    pub fn unfit(&self) -> Vec<String> {
        self.unfit
            .iter()
            .map(|(frontend, unfit)| format!("{} {}: {}", unfit.name, show(frontend), unfit.why))
            .collect()
    }

    /// The frontends left out, as the reconcile tests name them: (address, port, protocol,
    /// scope) → Service.
    #[cfg(test)]
    pub(super) fn unfit_frontends(&self) -> BTreeMap<(std::net::IpAddr, u16, u8, u8), String> {
        self.unfit
            .iter()
            .map(|(f, unfit)| {
                let key = (f.addr, f.port, f.protocol.ip_proto(), f.scope);
                (key, unfit.name.clone())
            })
            .collect()
    }

    /// How many planned backends got no id.
    #[cfg(test)]
    pub(super) fn unallocated_backends(&self) -> usize {
        self.unallocated.len()
    }

    /// `changes` and what did not fit before: the frontends left out (with their backends and
    /// names) and the backends that got no id, which every apply tries again.
    fn with_unfit(&self, plan: &Plan, changes: &PlanChanges) -> PlanChanges {
        let mut changes = changes.clone();
        changes.backends.extend(self.unallocated.iter().copied());
        for (frontend, unfit) in &self.unfit {
            changes.frontends.insert(*frontend);
            changes.skipped.insert(unfit.name.clone());
            if let Some(planned) = plan.frontends.get(frontend) {
                changes.backends.extend(planned.backends.iter().copied());
            }
        }
        changes
    }

    /// Forgets the left-out frontends the plan no longer has.
    fn forget_unplanned_unfit(&mut self, plan: &Plan) {
        let names = &mut self.unfit_names;
        self.unfit.retain(|frontend, unfit| {
            let planned = plan.frontends.contains_key(frontend);
            if !planned {
                names.insert(unfit.name.clone());
            }
            planned
        });
    }

    /// Marks the mirror exact after a success; re-reads it from the maps after an error, and
    /// then the next apply is a full one.
    fn after(
        &mut self,
        maps: &mut dyn ServiceTables,
        result: Result<ApplyStats>,
    ) -> Result<ApplyStats> {
        match result {
            Ok(stats) => {
                self.in_sync = true;
                Ok(stats)
            }
            Err(err) => {
                // Even if the maps cannot be read back, the next apply must write everything.
                self.in_sync = false;
                *self = Self::from_maps(maps)?;
                Err(err)
            }
        }
    }

    /// The write order, the one place it is decided: each step leaves the maps in a state a
    /// datapath reader can use (see `tables::memory`, whose tests check that after every entry).
    /// Every step covers both families: their own maps are written per stage through
    /// `family::Family` (`batch.rs`), the id-keyed maps they share once.
    fn try_apply(
        &mut self,
        maps: &mut dyn ServiceTables,
        plan: &Plan,
        scope: Scope<'_>,
    ) -> Result<ApplyStats> {
        let mut stats = ApplyStats {
            full: matches!(scope, Scope::Everything),
            ..ApplyStats::default()
        };
        self.forget_unplanned_unfit(plan);
        self.unallocated
            .retain(|addr| plan.backends.contains_key(addr));
        let with_unfit;
        let scope = match scope {
            Scope::Changes(changes) if !self.unfit.is_empty() || !self.unallocated.is_empty() => {
                with_unfit = self.with_unfit(plan, changes);
                Scope::Changes(&with_unfit)
            }
            scope => scope,
        };
        self.remove_stale(maps)?;

        // 1. Backends (with fresh counters), so every slot written below points at one.
        let mut pending = Pending::default();
        for (&addr, &flags) in scope.planned_backends(plan) {
            self.write_backend(&mut pending, addr, flags, &mut stats);
        }
        Self::flush_backends(maps, &mut pending)?;

        // 2. Affinity to a backend that leaves a frontend ends before its slot goes.
        let leaving: Vec<(u32, Vec<u32>)> = scope
            .programmed_frontends(&self.frontends)
            .filter_map(|(frontend, programmed)| {
                let mut held = self.members.of(programmed.service_id).peekable();
                held.peek()?;
                let wanted = self.wanted_members(plan.frontends.get(frontend));
                let gone: Vec<u32> = held.filter(|id| !wanted.contains(id)).collect();
                (!gone.is_empty()).then_some((programmed.service_id, gone))
            })
            .collect();
        for (service_id, gone) in leaving {
            self.members.remove(maps, service_id, gone)?;
        }

        // 3. Frontends: internal-scope entries before the default ones whose SVC_F_TWO_SCOPES
        // sends the socket path to them; each one's slots before its head (in `pending`).
        let planned = |internal: bool| {
            scope
                .planned_frontends(plan)
                .filter(move |(frontend, _)| (frontend.scope != SVC_SCOPE_DEFAULT) == internal)
        };
        for (frontend, planned) in planned(true).chain(planned(false)) {
            if let Outcome::Changed = self.write_frontend(&mut pending, *frontend, planned)? {
                stats.frontends_written += 1;
            }
        }
        self.flush_frontends(maps, &mut pending)?;
        self.room.settle();

        // 4. Frontends the plan no longer has, default-scope entries first, so no
        // SVC_F_TWO_SCOPES points at a removed entry.
        let mut gone: Vec<Frontend> = scope
            .programmed_frontends(&self.frontends)
            .map(|(frontend, _)| *frontend)
            .filter(|frontend| !plan.frontends.contains_key(frontend))
            .collect();
        gone.sort_by_key(|frontend| frontend.scope != SVC_SCOPE_DEFAULT);
        gone.extend(std::mem::take(&mut self.lingering));
        for frontend in gone {
            if self.sends_to(frontend) {
                self.lingering.insert(frontend);
                continue;
            }
            self.remove_frontend(maps, frontend)?;
            stats.frontends_removed += 1;
        }

        // 5. Affinity to the backends that joined a frontend, now that their slots exist (and
        // a new frontend has its id).
        let mut joined = Vec::new();
        for (frontend, planned) in scope.planned_frontends(plan) {
            let Some(programmed) = self.frontends.get(frontend) else {
                continue;
            };
            let service_id = programmed.service_id;
            joined.extend(
                self.wanted_members(Some(planned))
                    .into_iter()
                    .filter(|&backend_id| !self.members.holds(service_id, backend_id))
                    .map(|backend_id| AffinityMatchKey {
                        service_id,
                        backend_id,
                    }),
            );
        }
        self.members.add(maps, &joined)?;

        // 6. The skipped-services list, for the CLI: what the plan skips, and the Services
        // with frontends left out.
        stats.unfit_changed = self.write_skipped(maps, plan, scope)?;

        // 7. Backends last: no slot refers to them any more (a left-out frontend keeps the
        // backends it had).
        self.remove_unused_backends(maps, plan, scope, &mut stats)?;
        stats.frontends_unfit = self.unfit.len();
        Ok(stats)
    }

    /// Step 6 of `try_apply`: lists or unlists the names in scope and those whose left-out
    /// frontends changed. Returns whether any of those did.
    fn write_skipped(
        &mut self,
        maps: &mut dyn ServiceTables,
        plan: &Plan,
        scope: Scope<'_>,
    ) -> Result<bool> {
        let unfit_names = std::mem::take(&mut self.unfit_names);
        let unfit_changed = !unfit_names.is_empty();
        let mut names: BTreeSet<String> = scope.skipped(plan, &self.skipped).into_iter().collect();
        names.extend(unfit_names);
        for name in names {
            let skipped = plan
                .skipped
                .get(&name)
                .cloned()
                .or_else(|| self.unfit_skipped(&name));
            self.write_skipped_entry(maps, &name, skipped.as_ref())?;
        }
        Ok(unfit_changed)
    }

    /// Step 7 of `try_apply`: removes the backends in scope the plan no longer has, except
    /// those a left-out frontend still uses (looked at again by every apply).
    fn remove_unused_backends(
        &mut self,
        maps: &mut dyn ServiceTables,
        plan: &Plan,
        scope: Scope<'_>,
        stats: &mut ApplyStats,
    ) -> Result<()> {
        let kept: HashSet<u32> = self
            .unfit
            .keys()
            .filter_map(|frontend| self.frontends.get(frontend))
            .flat_map(|programmed| programmed.slots.iter().copied())
            .collect();
        let mut unplanned = scope.unplanned_backends(plan, &self.backend_ids);
        unplanned.extend(
            std::mem::take(&mut self.held_back)
                .into_iter()
                .filter(|addr| !plan.backends.contains_key(addr)),
        );
        for addr in unplanned {
            if self
                .backend_ids
                .get(&addr)
                .is_some_and(|id| kept.contains(id))
            {
                self.held_back.insert(addr);
                continue;
            }
            self.remove_backend(maps, addr, stats)?;
        }
        Ok(())
    }

    /// The affinity members a planned frontend should have: the ids of its backends when
    /// affinity is on (the datapath looks for members of no other frontend), none otherwise.
    fn wanted_members(&self, planned: Option<&FrontendPlan>) -> HashSet<u32> {
        match planned {
            Some(planned) if planned.affinity_timeout != 0 => planned
                .backends
                .iter()
                .filter_map(|addr| self.backend_ids.get(addr).copied())
                .collect(),
            _ => HashSet::new(),
        }
    }

    /// Whether `frontend` is an internal-scope entry that a programmed default-scope one still
    /// sends in-cluster clients to: one left out keeps its old state, which may.
    fn sends_to(&self, frontend: Frontend) -> bool {
        frontend.scope == SVC_SCOPE_INTERNAL
            && self
                .frontends
                .get(&Frontend {
                    scope: SVC_SCOPE_DEFAULT,
                    ..frontend
                })
                .is_some_and(|default| default.flags & SVC_F_TWO_SCOPES != 0)
    }

    /// The skipped entry of a Service with frontends left out: the first of them and why.
    fn unfit_skipped(&self, name: &str) -> Option<SkippedPlan> {
        let mut unfit = self.unfit.iter().filter(|(_, unfit)| unfit.name == name);
        let (frontend, first) = unfit.next()?;
        let more = match unfit.count() {
            0 => String::new(),
            n => format!(" (and {n} more)"),
        };
        Some(SkippedPlan {
            svc_type: first.svc_type,
            reason: format!("{}{more} not programmed: {}", show(frontend), first.why),
        })
    }

    /// Removes what an interrupted apply left unreachable: entries under no frontend's id,
    /// slots under no head.
    fn remove_stale(&mut self, maps: &mut dyn ServiceTables) -> Result<()> {
        let stale = std::mem::take(&mut self.stale);
        for key in stale.slots {
            remove_service_key(maps, key).context("remove a slot left without its frontend")?;
            self.room.free(matches!(key, AnyServiceKey::V6(_)), 1);
        }
        for id in stale.meta {
            maps.service_meta()
                .remove(&id)
                .context("remove metadata left without its frontend")?;
        }
        for (service_id, net) in stale.ranges {
            remove_range(maps, service_id, net)
                .context("remove a source range left without its frontend")?;
        }
        for service_id in stale.members {
            let members: Vec<u32> = self.members.of(service_id).collect();
            self.members.remove(maps, service_id, members)?;
        }
        Ok(())
    }

    /// Writes one backend if it differs, giving it an id (and zeroed counters) when new.
    fn write_backend(
        &mut self,
        pending: &mut Pending,
        addr: BackendAddr,
        flags: u8,
        stats: &mut ApplyStats,
    ) {
        let value = (addr, flags);
        let id = if let Some(&id) = self.backend_ids.get(&addr) {
            id
        } else {
            // Out of ids: the frontends that use it are left out (`write_frontend`).
            let Some(id) = self.allocate_backend_id() else {
                self.unallocated.insert(addr);
                return;
            };
            self.backend_ids.insert(addr, id);
            self.unallocated.remove(&addr);
            id
        };
        if !self.backends.contains_key(&id) {
            // Counters start with the backend: a reused id never inherits old traffic.
            pending.zero_backend_counters(id);
        }
        if self.backends.get(&id) != Some(&value) {
            pending.backend(id, addr, flags);
            self.backends.insert(id, value);
            stats.backends_written += 1;
        }
    }

    /// Removes a backend no slot refers to any more.
    fn remove_backend(
        &mut self,
        maps: &mut dyn ServiceTables,
        addr: BackendAddr,
        stats: &mut ApplyStats,
    ) -> Result<()> {
        let Some(id) = self.backend_ids.remove(&addr) else {
            return Ok(());
        };
        self.backends.remove(&id);
        let removed = if addr.addr.is_ipv4() {
            maps.backends().remove(&id)
        } else {
            maps.backends6().remove(&id)
        };
        removed.with_context(|| format!("remove backend {}:{}", addr.addr, addr.port))?;
        stats.backends_removed += 1;
        Ok(())
    }

    /// Writes one frontend if it differs: new slots first, then slot 0 (count), then deletes
    /// the slots past the new count, so slots `1..=count` always exist for a reader. The slots,
    /// the head and the removals go through `pending`, whose flush keeps that order.
    fn write_frontend(
        &mut self,
        pending: &mut Pending,
        frontend: Frontend,
        planned: &FrontendPlan,
    ) -> Result<Outcome> {
        let Admitted {
            slots,
            service_id,
            old_entries,
            new_entries,
        } = match self.admit(frontend, planned)? {
            Ok(admitted) => admitted,
            Err(why) => return Ok(self.left_out(frontend, planned, why)),
        };
        let ipv6 = frontend.addr.is_ipv6();
        if self.unfit.remove(&frontend).is_some() {
            self.unfit_names.insert(planned.name.clone());
        }
        let meta = ServiceMeta::new(
            &planned.name,
            MetaFields {
                kind: planned.kind,
                svc_type: planned.svc_type,
                policy: planned.policy,
                proto: frontend.protocol.ip_proto(),
                port: frontend.port,
                health_check_port: planned.health_check_port,
            },
        );
        let mut source_ranges = planned.source_ranges.clone();
        for net in &source_ranges {
            check_range_family(&frontend, net)
                .with_context(|| format!("program service {}", planned.name))?;
        }
        source_ranges.sort_unstable();
        source_ranges.dedup();
        let wanted = Programmed {
            service_id,
            flags: planned.flags,
            affinity_timeout: planned.affinity_timeout,
            slots,
            meta,
            source_ranges,
        };
        let old = self.frontends.get(&frontend).cloned();
        if frontend.protocol == Protocol::Udp {
            self.update_udp_serving(frontend, planned, old.as_ref(), &wanted);
        }
        if old.as_ref() == Some(&wanted) {
            return Ok(Outcome::Unchanged);
        }
        if new_entries < old_entries {
            self.room.free_later(ipv6, old_entries - new_entries);
        }
        let old_slots = old.as_ref().map_or(&[][..], |old| &old.slots[..]);
        let old_ranges = old.as_ref().map_or(&[][..], |old| &old.source_ranges[..]);

        if old.is_none() {
            pending.zero_service_counters(service_id, &planned.name);
        }
        if old.as_ref().map(|old| old.meta) != Some(meta) {
            pending.meta(service_id, meta);
        }
        let count = u16::try_from(wanted.slots.len())
            .with_context(|| format!("{} has more than 65535 endpoints", planned.name))?;
        let head = ServiceValue::head(service_id, count, planned.flags, planned.affinity_timeout);
        // New ranges before slot 0 enables them, removed ones after it no longer needs them.
        for net in &wanted.source_ranges {
            if !old_ranges.contains(net) {
                pending.add_range(service_id, *net);
            }
        }
        for (index, &backend_id) in wanted.slots.iter().enumerate() {
            if old_slots.get(index) != Some(&backend_id) {
                pending.slot(service_key(frontend, index + 1), head.slot(backend_id));
            }
        }
        let internal = frontend.scope != SVC_SCOPE_DEFAULT;
        pending.head(service_key(frontend, 0), head, internal);
        for index in wanted.slots.len()..old_slots.len() {
            pending.remove_slot(service_key(frontend, index + 1));
        }
        for net in old_ranges {
            if !wanted.source_ranges.contains(net) {
                pending.remove_range(service_id, *net);
            }
        }
        if planned.affinity_timeout == 0 {
            self.affinity_timeouts.remove(&service_id);
        } else {
            self.affinity_timeouts
                .insert(service_id, planned.affinity_timeout);
        }
        self.frontends.insert(frontend, wanted);
        Ok(Outcome::Changed)
    }

    /// Whether the maps have room for `frontend` as planned: then its entries and (when new)
    /// its id are reserved; otherwise nothing is, and why.
    fn admit(
        &mut self,
        frontend: Frontend,
        planned: &FrontendPlan,
    ) -> Result<Result<Admitted, Unfit>> {
        let mut slots = Vec::with_capacity(planned.backends.len());
        for addr in &planned.backends {
            match self.backend_ids.get(addr) {
                Some(&id) => slots.push(id),
                None if self.unallocated.contains(addr) => {
                    return Ok(Err(Unfit::BackendIds));
                }
                None => bail!(
                    "program service {}: its backend {}:{} was not written first",
                    planned.name,
                    addr.addr,
                    addr.port
                ),
            }
        }
        // A default-scope entry that sends in-cluster clients to the internal-scope one needs
        // it programmed (written before it, in step 3).
        if planned.flags & SVC_F_TWO_SCOPES != 0 {
            let internal = Frontend {
                scope: SVC_SCOPE_INTERNAL,
                ..frontend
            };
            if !self.frontends.contains_key(&internal)
                && let Some(why) = self.unfit.get(&internal).map(|unfit| unfit.why)
            {
                return Ok(Err(why));
            }
        }
        // Room first (a head and a slot per backend), then an id for a new frontend.
        let ipv6 = frontend.addr.is_ipv6();
        let old_entries = self
            .frontends
            .get(&frontend)
            .map_or(0, |old| old.slots.len() + 1);
        let new_entries = slots.len() + 1;
        if new_entries > old_entries && !self.room.take(ipv6, new_entries - old_entries) {
            return Ok(Err(Unfit::Slots));
        }
        let service_id = if let Some(existing) = self.frontends.get(&frontend) {
            existing.service_id
        } else if let Some(id) = self.allocate_service_id() {
            id
        } else {
            self.room.free(ipv6, new_entries);
            return Ok(Err(Unfit::FrontendIds));
        };
        Ok(Ok(Admitted {
            slots,
            service_id,
            old_entries,
            new_entries,
        }))
    }

    /// Records that `frontend` is left out of this apply (it keeps what it had, if anything).
    fn left_out(&mut self, frontend: Frontend, planned: &FrontendPlan, why: Unfit) -> Outcome {
        let unfit = UnfitFrontend {
            name: planned.name.clone(),
            svc_type: planned.svc_type,
            why,
        };
        if self.unfit.insert(frontend, unfit.clone()) != Some(unfit) {
            self.unfit_names.insert(planned.name.clone());
        }
        Outcome::LeftOut
    }

    /// Remembers the serving backends of the UDP frontend `planned`, and retires what `old`
    /// (its programmed state) kept flows for and `wanted` keeps none for.
    fn update_udp_serving(
        &mut self,
        frontend: Frontend,
        planned: &FrontendPlan,
        old: Option<&Programmed>,
        wanted: &Programmed,
    ) {
        let serving: Vec<u32> = planned
            .serving
            .iter()
            .filter_map(|addr| self.backend_ids.get(addr).copied())
            .collect();
        let old_serving = self.udp_serving.remove(&frontend).unwrap_or_default();
        if let Some(old) = old {
            self.retire_udp_slots(
                wanted.service_id,
                [&old.slots, &old_serving],
                Some([&wanted.slots, &serving]),
            );
        }
        self.udp_serving.insert(frontend, serving);
    }

    /// Records the backends a UDP frontend kept flows for (`old`: its slots and its serving
    /// backends) that `new` (the same; `None`: the frontend goes) keeps none for.
    fn retire_udp_slots(&mut self, service_id: u32, old: [&[u32]; 2], new: Option<[&[u32]; 2]>) {
        let held = |id: &u32| new.is_some_and(|new| new.iter().any(|ids| ids.contains(id)));
        let mut retired: Vec<RetiredUdpSlot> = old
            .into_iter()
            .flatten()
            .filter(|&id| *id != 0 && !held(id))
            .map(|&id| (service_id, id))
            .collect();
        retired.sort_unstable();
        retired.dedup();
        self.retired_udp_slots.extend(retired);
    }

    /// Removes slot 0 first: from then on lookups miss and the slots are unreachable.
    fn remove_frontend(&mut self, maps: &mut dyn ServiceTables, frontend: Frontend) -> Result<()> {
        let programmed = self.frontends.remove(&frontend).expect("caller checked");
        if frontend.protocol == Protocol::Udp {
            let serving = self.udp_serving.remove(&frontend).unwrap_or_default();
            self.retire_udp_slots(programmed.service_id, [&programmed.slots, &serving], None);
        }
        self.service_ids.remove(&programmed.service_id);
        self.affinity_timeouts.remove(&programmed.service_id);
        let context = || format!("remove service {} ({frontend:?})", programmed.meta.name());
        for slot in 0..=programmed.slots.len() {
            remove_service_key(maps, service_key(frontend, slot)).with_context(context)?;
        }
        for net in &programmed.source_ranges {
            remove_range(maps, programmed.service_id, *net).with_context(context)?;
        }
        maps.service_meta()
            .remove(&programmed.service_id)
            .with_context(context)?;
        self.room
            .free(frontend.addr.is_ipv6(), programmed.slots.len() + 1);
        Ok(())
    }

    /// Lists `name` as `skipped`, or unlists it (`None`), if the map says otherwise.
    fn write_skipped_entry(
        &mut self,
        maps: &mut dyn ServiceTables,
        name: &str,
        skipped: Option<&SkippedPlan>,
    ) -> Result<()> {
        let Some(skipped) = skipped else {
            if self.skipped.remove(name).is_some() {
                maps.skipped()
                    .remove(&SkippedKey::new(name))
                    .with_context(|| format!("unlist skipped service {name}"))?;
            }
            return Ok(());
        };
        let value = SkippedService::new(skipped.svc_type, &skipped.reason);
        if self.skipped.get(name) != Some(&value) {
            maps.skipped()
                .write(&[SkippedKey::new(name)], &[value])
                .map_err(|err| err.with(|_| format!("list skipped service {name}")))?;
            self.skipped.insert(name.to_owned(), value);
        }
        Ok(())
    }

    /// Ids go round `1..limit`, so a conntrack entry does not find its old backend id reused
    /// by another pod right after a removal: only after every other id had its turn.
    fn allocate_backend_id(&mut self) -> Option<u32> {
        let limit = self.backend_id_limit;
        if self.backends.len() + 1 >= limit as usize {
            return None;
        }
        loop {
            self.next_backend_id = next_id(self.next_backend_id, limit);
            if !self.backends.contains_key(&self.next_backend_id) {
                return Some(self.next_backend_id);
            }
        }
    }

    /// Ids go round `1..limit` like backend ids; the id is reserved at once.
    fn allocate_service_id(&mut self) -> Option<u32> {
        let limit = self.service_id_limit;
        if self.service_ids.len() + 1 >= limit as usize {
            return None;
        }
        loop {
            self.next_service_id = next_id(self.next_service_id, limit);
            if self.service_ids.insert(self.next_service_id) {
                return Some(self.next_service_id);
            }
        }
    }

    /// The frontends with affinity on and their members, for the affinity GC (kept up to
    /// date by every write, so this costs nothing).
    pub fn affinity_view(&self) -> AffinityView<'_> {
        self.members.view(&self.affinity_timeouts)
    }

    /// The backends that left UDP frontends (or went with them) in the applies since the last
    /// call. An apply that failed forgets its own: the full apply that follows finds them again
    /// against what it reads back from the maps.
    pub fn take_retired_udp_slots(&mut self) -> Vec<RetiredUdpSlot> {
        std::mem::take(&mut self.retired_udp_slots)
    }

    pub fn frontend_count(&self) -> usize {
        self.frontends.len()
    }

    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }
}

/// A frontend as the skipped list and the log name it: `address:port/protocol`.
fn show(frontend: &Frontend) -> String {
    let addr = std::net::SocketAddr::new(frontend.addr, frontend.port);
    format!("{addr}/{}", frontend.protocol)
}

/// The id after `id` in `1..limit`, round.
fn next_id(id: u32, limit: u32) -> u32 {
    if id.saturating_add(1) >= limit {
        1
    } else {
        id + 1
    }
}

/// Adds one family's source ranges to `ranges`, by service id.
fn read_ranges<A: Family>(
    maps: &mut dyn ServiceTables,
    ranges: &mut HashMap<u32, Vec<IpNet>>,
) -> Result<()> {
    let entries = A::source_ranges(maps)
        .entries()
        .context("read the source-range maps")?;
    for ((service_id, net), ()) in entries {
        ranges.entry(service_id).or_default().push(A::ip_net(net));
    }
    Ok(())
}

/// Adds one family's services map to `slots`, by frontend and slot.
fn read_slots<A: Family>(
    maps: &mut dyn ServiceTables,
    slots: &mut HashMap<Frontend, BTreeMap<u16, ServiceValue>>,
) -> Result<()> {
    let entries = A::services(maps)
        .entries()
        .context("read the services maps")?;
    for (key, value) in entries {
        if let Some(frontend) = frontend_of(&key) {
            slots.entry(frontend).or_default().insert(key.slot, value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::next_id;

    #[test]
    fn ids_go_round_below_the_limit_and_skip_zero() {
        assert_eq!(next_id(0, 4), 1);
        assert_eq!(next_id(1, 4), 2);
        assert_eq!(next_id(3, 4), 1);
        // An id from an earlier run with bigger maps starts the round again.
        assert_eq!(next_id(70_000, 65_536), 1);
        assert_eq!(next_id(u32::MAX, u32::MAX), 1);
    }
}
