//! Writes the difference between a plan and what the maps hold, keeping a mirror of the maps:
//! in full (`apply`: the first sync, and after an error) or only where the planner says the
//! plan changed (`apply_changes`, in `changes`), so a change costs what it changes.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddrV4,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::lpm_trie::Key;
use ipnet::Ipv4Net;
use proxy_common::{
    Backend, MetaFields, SVC_SCOPE_DEFAULT, ServiceKey, ServiceMeta, ServiceValue, SkippedKey,
    SkippedService, SourceRange,
    net::{ip_from_net, ip_to_net, port_from_net, port_to_net},
};

use self::affinity::AffinityMembers;
pub use self::affinity::AffinityView;
use self::batch::Pending;
use super::plan::{BackendAddr, Frontend, FrontendPlan, Plan, SkippedPlan};
use crate::{datapath::Maps, model::Protocol};

mod affinity;
mod batch;
mod changes;

/// A frontend as programmed: its id, flags and backend ids by slot.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Programmed {
    service_id: u32,
    flags: u16,
    affinity_timeout: u32,
    slots: Vec<u32>,
    meta: ServiceMeta,
    /// Source ranges in the source-range map under `service_id`, sorted.
    source_ranges: Vec<Ipv4Net>,
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
}

/// The daemon's mirror of the services and backends maps.
#[derive(Debug, Default)]
pub struct Reconciler {
    frontends: HashMap<Frontend, Programmed>,
    backend_ids: HashMap<BackendAddr, u32>,
    backends: BTreeMap<u32, Backend>,
    /// The skipped-services map, by `namespace/name`.
    skipped: BTreeMap<String, SkippedService>,
    /// Source ranges under no frontend's id, found in the maps: removed by the next apply.
    stale_ranges: Vec<(u32, Ipv4Net)>,
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
}

impl Reconciler {
    /// Reads what the (possibly pinned, possibly from an earlier run) maps hold.
    pub fn from_maps(maps: &Maps) -> Result<Self> {
        let mut this = Self {
            service_id_limit: maps.service_stats.len(),
            backend_id_limit: maps.backend_stats.len(),
            ..Self::default()
        };
        for entry in maps.backends.iter() {
            let (id, backend) = entry.context("read the backends map")?;
            this.backend_ids.insert(backend_addr(&backend), id);
            this.backends.insert(id, backend);
            this.next_backend_id = this.next_backend_id.max(id);
        }
        for entry in maps.skipped.iter() {
            let (key, value) = entry.context("read the skipped-services map")?;
            this.skipped.insert(key.name().to_owned(), value);
        }
        let mut ranges: HashMap<u32, Vec<Ipv4Net>> = HashMap::new();
        for key in maps.source_ranges.keys() {
            let key = key.context("read the source-range map")?;
            let data = key.data();
            let prefix = key.prefix_len().saturating_sub(32).min(32) as u8;
            let net = Ipv4Net::new(ip_from_net(data.addr), prefix).expect("prefix at most 32");
            ranges.entry(data.service_id).or_default().push(net);
        }
        let mut slots: HashMap<Frontend, BTreeMap<u16, ServiceValue>> = HashMap::new();
        for entry in maps.services.iter() {
            let (key, value) = entry.context("read the services map")?;
            let Some(frontend) = frontend_of(&key) else {
                continue;
            };
            slots.entry(frontend).or_default().insert(key.slot, value);
        }
        for (frontend, slots) in slots {
            // A frontend without slot 0 is a remnant of an interrupted write: drop it on apply.
            let head = slots.get(&0).copied().unwrap_or_default();
            let backend_slots = slots
                .iter()
                .filter(|(slot, _)| **slot != 0)
                .map(|(_, value)| value.backend_id)
                .collect();
            let meta = maps
                .service_meta
                .get(&head.service_id, 0)
                .unwrap_or_else(|_| ServiceMeta::new("", MetaFields::default()));
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
        // Ranges of no frontend (an interrupted removal) go on the next apply.
        this.stale_ranges = ranges
            .into_iter()
            .flat_map(|(id, nets)| nets.into_iter().map(move |net| (id, net)))
            .collect();
        Ok(this)
    }

    /// Makes the maps hold exactly `plan`, walking all of it. On error the mirror is re-read
    /// from the maps so the next apply starts from the truth.
    pub fn apply(&mut self, maps: &mut Maps, plan: &Plan) -> Result<ApplyStats> {
        let result = self.try_apply(maps, plan);
        self.after(maps, result)
    }

    /// Marks the mirror exact after a success; re-reads it from the maps after an error, and
    /// then the next apply is a full one.
    fn after(&mut self, maps: &Maps, result: Result<ApplyStats>) -> Result<ApplyStats> {
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

    fn try_apply(&mut self, maps: &mut Maps, plan: &Plan) -> Result<ApplyStats> {
        let mut stats = ApplyStats {
            full: true,
            ..ApplyStats::default()
        };
        self.remove_stale_ranges(maps)?;

        // Backends first, so every slot written below points at an existing backend.
        let mut pending = Pending::default();
        for (&addr, &flags) in &plan.backends {
            self.write_backend(&mut pending, addr, flags, &mut stats)?;
        }
        self.flush_backends(maps, &mut pending)?;

        // Affinity to a backend that leaves a frontend ends before its slot goes.
        let members = self.planned_members(plan);
        self.members.sync(maps, members)?;
        // Internal-scope entries before the default ones whose SVC_F_TWO_SCOPES sends the socket
        // path to them.
        let (internal, default): (Vec<_>, Vec<_>) = plan
            .frontends
            .iter()
            .partition(|(frontend, _)| frontend.scope != SVC_SCOPE_DEFAULT);
        for (frontend, planned) in internal.into_iter().chain(default) {
            if self.write_frontend(maps, &mut pending, frontend, planned)? {
                stats.frontends_written += 1;
            }
        }
        self.flush_frontends(maps, &mut pending)?;

        // Default-scope entries first, so no SVC_F_TWO_SCOPES points at a removed entry.
        let mut gone: Vec<Frontend> = self
            .frontends
            .keys()
            .filter(|frontend| !plan.frontends.contains_key(frontend))
            .copied()
            .collect();
        gone.sort_by_key(|frontend| frontend.scope != SVC_SCOPE_DEFAULT);
        for frontend in gone {
            self.remove_frontend(maps, &frontend)?;
            stats.frontends_removed += 1;
        }
        let members = self.programmed_members();
        self.members.sync(maps, members)?;
        self.write_skipped(maps, plan)?;

        // Backends last: no slot refers to them any more.
        let unused: Vec<BackendAddr> = self
            .backend_ids
            .keys()
            .filter(|addr| !plan.backends.contains_key(addr))
            .copied()
            .collect();
        for addr in unused {
            self.remove_backend(maps, addr, &mut stats)?;
        }
        Ok(stats)
    }

    fn remove_stale_ranges(&mut self, maps: &mut Maps) -> Result<()> {
        for (service_id, net) in std::mem::take(&mut self.stale_ranges) {
            remove_if_present(maps.source_ranges.remove(&range_key(service_id, &net)))
                .context("remove a stale source range")?;
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
    ) -> Result<()> {
        let value = Backend {
            addr: ip_to_net(addr.addr),
            port: port_to_net(addr.port),
            flags,
            _pad: 0,
        };
        let id = match self.backend_ids.get(&addr) {
            Some(&id) => id,
            None => {
                let id = self.allocate_backend_id()?;
                self.backend_ids.insert(addr, id);
                id
            }
        };
        if !self.backends.contains_key(&id) {
            // Counters start with the backend: a reused id never inherits old traffic.
            pending.zero_backend_counters(id);
        }
        if self.backends.get(&id) != Some(&value) {
            pending.backend(id, value);
            self.backends.insert(id, value);
            stats.backends_written += 1;
        }
        Ok(())
    }

    /// Removes a backend no slot refers to any more.
    fn remove_backend(
        &mut self,
        maps: &mut Maps,
        addr: BackendAddr,
        stats: &mut ApplyStats,
    ) -> Result<()> {
        let Some(id) = self.backend_ids.remove(&addr) else {
            return Ok(());
        };
        self.backends.remove(&id);
        remove_if_present(maps.backends.remove(&id))
            .with_context(|| format!("remove backend {}:{}", addr.addr, addr.port))?;
        stats.backends_removed += 1;
        Ok(())
    }

    /// Writes one frontend if it differs: new slots first, then slot 0 (count), then deletes
    /// the slots past the new count, so slots `1..=count` always exist for a reader. The slots,
    /// the head and the removals go through `pending`, whose flush keeps that order.
    fn write_frontend(
        &mut self,
        maps: &mut Maps,
        pending: &mut Pending,
        frontend: &Frontend,
        planned: &FrontendPlan,
    ) -> Result<bool> {
        let slots = planned
            .backends
            .iter()
            .map(|addr| {
                self.backend_ids.get(addr).copied().with_context(|| {
                    format!(
                        "program service {}: its backend {}:{} was not written first",
                        planned.name, addr.addr, addr.port
                    )
                })
            })
            .collect::<Result<Vec<u32>>>()?;
        let service_id = match self.frontends.get(frontend) {
            Some(existing) => existing.service_id,
            None => self
                .allocate_service_id()
                .with_context(|| format!("program service {}", planned.name))?,
        };
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
        let old = self.frontends.get(frontend).cloned();
        if old.as_ref() == Some(&wanted) {
            return Ok(false);
        }
        let old_slots = old.as_ref().map_or(&[][..], |old| &old.slots[..]);
        let old_ranges = old.as_ref().map_or(&[][..], |old| &old.source_ranges[..]);
        let context = || format!("write service {} ({frontend:?})", planned.name);

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
                maps.source_ranges
                    .insert(&range_key(service_id, net), &1, 0)
                    .with_context(context)?;
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
        self.frontends.insert(*frontend, wanted);
        Ok(true)
    }

    /// Removes slot 0 first: from then on lookups miss and the slots are unreachable.
    fn remove_frontend(&mut self, maps: &mut Maps, frontend: &Frontend) -> Result<()> {
        let programmed = self.frontends.remove(frontend).expect("caller checked");
        self.service_ids.remove(&programmed.service_id);
        self.affinity_timeouts.remove(&programmed.service_id);
        let context = || format!("remove service {} ({frontend:?})", programmed.meta.name());
        remove_if_present(maps.services.remove(&service_key(frontend, 0))).with_context(context)?;
        for index in 0..programmed.slots.len() {
            remove_if_present(maps.services.remove(&service_key(frontend, index + 1)))
                .with_context(context)?;
        }
        for net in &programmed.source_ranges {
            remove_if_present(
                maps.source_ranges
                    .remove(&range_key(programmed.service_id, net)),
            )
            .with_context(context)?;
        }
        remove_if_present(maps.service_meta.remove(&programmed.service_id))
            .with_context(context)?;
        Ok(())
    }

    /// Makes the skipped-services map list exactly the plan's skipped services.
    fn write_skipped(&mut self, maps: &mut Maps, plan: &Plan) -> Result<()> {
        for (name, skipped) in &plan.skipped {
            self.write_skipped_entry(maps, name, Some(skipped))?;
        }
        let gone: Vec<String> = self
            .skipped
            .keys()
            .filter(|name| !plan.skipped.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            self.write_skipped_entry(maps, &name, None)?;
        }
        Ok(())
    }

    /// Lists `name` as `skipped`, or unlists it (`None`), if the map says otherwise.
    fn write_skipped_entry(
        &mut self,
        maps: &mut Maps,
        name: &str,
        skipped: Option<&SkippedPlan>,
    ) -> Result<()> {
        let Some(skipped) = skipped else {
            if self.skipped.remove(name).is_some() {
                remove_if_present(maps.skipped.remove(&SkippedKey::new(name)))
                    .with_context(|| format!("unlist skipped service {name}"))?;
            }
            return Ok(());
        };
        let value = SkippedService::new(skipped.svc_type, &skipped.reason);
        if self.skipped.get(name) != Some(&value) {
            maps.skipped
                .insert(&SkippedKey::new(name), &value, 0)
                .with_context(|| format!("list skipped service {name}"))?;
            self.skipped.insert(name.to_owned(), value);
        }
        Ok(())
    }

    /// Ids go round `1..limit`, so a conntrack entry does not find its old backend id reused
    /// by another pod right after a removal: only after every other id had its turn.
    fn allocate_backend_id(&mut self) -> Result<u32> {
        let limit = self.backend_id_limit;
        if self.backends.len() + 1 >= limit as usize {
            bail!(
                "all {} backend ids are in use: the backend maps are full",
                limit.saturating_sub(1)
            );
        }
        loop {
            self.next_backend_id = next_id(self.next_backend_id, limit);
            if !self.backends.contains_key(&self.next_backend_id) {
                return Ok(self.next_backend_id);
            }
        }
    }

    /// Ids go round `1..limit` like backend ids; the id is reserved at once.
    fn allocate_service_id(&mut self) -> Result<u32> {
        let limit = self.service_id_limit;
        if self.service_ids.len() + 1 >= limit as usize {
            bail!(
                "all {} frontend ids are in use: the service maps are full",
                limit.saturating_sub(1)
            );
        }
        loop {
            self.next_service_id = next_id(self.next_service_id, limit);
            if self.service_ids.insert(self.next_service_id) {
                return Ok(self.next_service_id);
            }
        }
    }

    pub fn frontend_count(&self) -> usize {
        self.frontends.len()
    }

    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }
}

/// The id after `id` in `1..limit`, round.
fn next_id(id: u32, limit: u32) -> u32 {
    if id.saturating_add(1) >= limit {
        1
    } else {
        id + 1
    }
}

fn service_key(frontend: &Frontend, slot: usize) -> ServiceKey {
    ServiceKey::new(
        SocketAddrV4::new(frontend.addr, frontend.port),
        frontend.protocol.ip_proto(),
        frontend.scope,
        slot as u16,
    )
}

/// The source-range map key of `net` for the frontend `service_id`.
fn range_key(service_id: u32, net: &Ipv4Net) -> Key<SourceRange> {
    Key::new(
        32 + u32::from(net.prefix_len()),
        SourceRange {
            service_id,
            addr: ip_to_net(net.network()),
        },
    )
}

fn frontend_of(key: &ServiceKey) -> Option<Frontend> {
    let protocol = match key.proto {
        proxy_common::IPPROTO_TCP => Protocol::Tcp,
        proxy_common::IPPROTO_UDP => Protocol::Udp,
        _ => return None,
    };
    Some(Frontend {
        addr: ip_from_net(key.addr),
        port: port_from_net(key.port),
        protocol,
        scope: key.scope,
    })
}

fn backend_addr(backend: &Backend) -> BackendAddr {
    BackendAddr {
        addr: ip_from_net(backend.addr),
        port: port_from_net(backend.port),
    }
}

/// Deleting what is already gone is not an error: the goal is its absence.
fn remove_if_present(result: Result<(), aya::maps::MapError>) -> Result<()> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(err))
            if err.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => Ok(other?),
    }
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
