//! Applying only what one planner update changed: the writes of a full apply, in the same
//! order, restricted to the changed entries, so a change costs what it changes.

use std::collections::HashSet;

use anyhow::Result;
use proxy_common::{AffinityMatchKey, SVC_SCOPE_DEFAULT};

use super::{ApplyStats, Reconciler, batch::Pending};
use crate::{
    datapath::Maps,
    reconcile::{Frontend, Plan, PlanChanges},
};

impl Reconciler {
    /// Makes the maps hold `plan`, which differs from the plan of this reconciler's last
    /// successful apply only in the entries `changes` lists (what `Planner::update` returned
    /// along with `plan`). When the mirror is not known exact (the first apply, the first after
    /// an error) or everything changed, it writes everything, like `apply`.
    pub fn apply_changes(
        &mut self,
        maps: &mut Maps,
        plan: &Plan,
        changes: &PlanChanges,
    ) -> Result<ApplyStats> {
        if changes.everything || !self.in_sync {
            return self.apply(maps, plan);
        }
        let result = self.try_apply_changes(maps, plan, changes);
        self.after(maps, result)
    }

    fn try_apply_changes(
        &mut self,
        maps: &mut Maps,
        plan: &Plan,
        changes: &PlanChanges,
    ) -> Result<ApplyStats> {
        let mut stats = ApplyStats::default();
        self.remove_stale_ranges(maps)?;

        // Backends first, so every slot written below points at an existing backend.
        let mut pending = Pending::default();
        for addr in &changes.backends {
            if let Some(&flags) = plan.backends.get(addr) {
                self.write_backend(&mut pending, *addr, flags, &mut stats)?;
            }
        }
        self.flush_backends(maps, &mut pending)?;

        // Affinity to a backend that leaves a frontend ends before its slot goes. The members
        // of a programmed frontend with affinity on are its slots (every apply leaves them so);
        // other frontends have none.
        let (mut gone, mut new) = (Vec::new(), Vec::new());
        for frontend in &changes.frontends {
            let Some(programmed) = self.frontends.get(frontend) else {
                continue;
            };
            let held: HashSet<u32> = if programmed.affinity_timeout != 0 {
                programmed.slots.iter().copied().collect()
            } else {
                HashSet::new()
            };
            let wanted: HashSet<u32> = match plan.frontends.get(frontend) {
                Some(p) if p.affinity_timeout != 0 => p
                    .backends
                    .iter()
                    .filter_map(|addr| self.backend_ids.get(addr).copied())
                    .collect(),
                _ => HashSet::new(),
            };
            let key = |backend_id| AffinityMatchKey {
                service_id: programmed.service_id,
                backend_id,
            };
            gone.extend(held.difference(&wanted).copied().map(key));
            new.extend(wanted.difference(&held).copied().map(key));
        }
        self.members.update(maps, gone, new)?;

        // Internal-scope entries before the default ones whose SVC_F_TWO_SCOPES sends the socket
        // path to them.
        let planned = |internal: bool| {
            changes
                .frontends
                .iter()
                .filter(move |frontend| (frontend.scope != SVC_SCOPE_DEFAULT) == internal)
                .filter_map(|frontend| plan.frontends.get_key_value(frontend))
        };
        let mut added = Vec::new();
        for (frontend, planned) in planned(true).chain(planned(false)) {
            let is_new = !self.frontends.contains_key(frontend);
            if self.write_frontend(maps, &mut pending, frontend, planned)? {
                stats.frontends_written += 1;
            }
            if is_new {
                added.push(*frontend);
            }
        }
        self.flush_frontends(maps, &mut pending)?;

        // Default-scope entries first, so no SVC_F_TWO_SCOPES points at a removed entry.
        let mut removed: Vec<Frontend> = changes
            .frontends
            .iter()
            .filter(|frontend| {
                !plan.frontends.contains_key(frontend) && self.frontends.contains_key(frontend)
            })
            .copied()
            .collect();
        removed.sort_by_key(|frontend| frontend.scope != SVC_SCOPE_DEFAULT);
        for frontend in removed {
            self.remove_frontend(maps, &frontend)?;
            stats.frontends_removed += 1;
        }
        // New frontends got their id with their slots; their members follow.
        let new: Vec<AffinityMatchKey> = added
            .iter()
            .map(|frontend| &self.frontends[frontend])
            .filter(|programmed| programmed.affinity_timeout != 0)
            .flat_map(|programmed| {
                programmed.slots.iter().map(|&backend_id| AffinityMatchKey {
                    service_id: programmed.service_id,
                    backend_id,
                })
            })
            .collect();
        self.members.update(maps, Vec::new(), new)?;

        for name in &changes.skipped {
            self.write_skipped_entry(maps, name, plan.skipped.get(name))?;
        }

        // Backends last: no slot refers to them any more.
        for addr in &changes.backends {
            if !plan.backends.contains_key(addr) {
                self.remove_backend(maps, *addr, &mut stats)?;
            }
        }
        Ok(stats)
    }
}
