//! The affinity-match map (`AFF_MATCH_V1`): one (service id, backend id) entry per backend
//! slot, so the datapath drops affinity to a backend the moment it leaves a frontend. Also
//! what the affinity GC needs to know about the programmed frontends.

use std::{
    collections::{HashMap, HashSet},
    os::fd::AsFd,
};

use anyhow::{Context as _, Result};
use proxy_common::AffinityMatchKey;

use super::{Reconciler, remove_if_present};
use crate::{
    datapath::{Maps, update_batch},
    reconcile::Plan,
};

/// The daemon's mirror of the affinity-match map.
#[derive(Debug, Default)]
pub(super) struct AffinityMembers {
    held: HashSet<AffinityMatchKey>,
}

impl AffinityMembers {
    pub(super) fn from_maps(maps: &Maps) -> Result<Self> {
        let held = maps
            .affinity_match
            .keys()
            .collect::<Result<_, _>>()
            .context("read the affinity-match map")?;
        Ok(Self { held })
    }

    /// Makes the map hold exactly `wanted`.
    pub(super) fn sync(
        &mut self,
        maps: &mut Maps,
        wanted: HashSet<AffinityMatchKey>,
    ) -> Result<()> {
        let gone: Vec<AffinityMatchKey> = self.held.difference(&wanted).copied().collect();
        let new: Vec<AffinityMatchKey> = wanted.difference(&self.held).copied().collect();
        self.update(maps, gone, new)
    }

    /// Deletes `gone`, then adds `new`: deletions first, so a leaving backend stops being a
    /// valid affinity target as early as possible.
    pub(super) fn update(
        &mut self,
        maps: &mut Maps,
        gone: Vec<AffinityMatchKey>,
        new: Vec<AffinityMatchKey>,
    ) -> Result<()> {
        for key in gone {
            remove_if_present(maps.affinity_match.remove(&key)).with_context(|| {
                format!(
                    "remove backend {} of service id {} from the affinity-match map",
                    key.backend_id, key.service_id
                )
            })?;
            self.held.remove(&key);
        }
        // One batched write: a cold start adds one entry per backend slot.
        let values = vec![0u32; new.len()];
        let written = update_batch(maps.batch.affinity_match.as_fd(), &new, &values);
        let done = written
            .as_ref()
            .map_or_else(|err| err.index, |()| new.len());
        self.held.extend(new[..done].iter().copied());
        written.map_err(|err| {
            let key = new[err.index];
            anyhow::Error::new(err.error).context(format!(
                "add backend {} of service id {} to the affinity-match map",
                key.backend_id, key.service_id
            ))
        })
    }
}

/// What the affinity GC checks entries against: the timeout of every frontend with affinity
/// on, and which backends serve which frontend.
#[derive(Debug)]
pub struct AffinityView<'a> {
    /// Service id → ClientIP timeout in seconds (only frontends with affinity on).
    pub timeouts: &'a HashMap<u32, u32>,
    members: &'a HashSet<AffinityMatchKey>,
}

impl<'a> AffinityView<'a> {
    pub fn new(timeouts: &'a HashMap<u32, u32>, members: &'a HashSet<AffinityMatchKey>) -> Self {
        Self { timeouts, members }
    }

    /// Whether `backend_id` is one of the backend slots of `service_id`.
    pub fn serves(&self, service_id: u32, backend_id: u32) -> bool {
        self.members.contains(&AffinityMatchKey {
            service_id,
            backend_id,
        })
    }
}

impl Reconciler {
    /// Memberships of the plan's frontends with affinity on that are already programmed (new
    /// frontends have no id yet; they get theirs after their slots are written). Only
    /// frontends with affinity on have members: the datapath looks there for no other.
    pub(super) fn planned_members(&self, plan: &Plan) -> HashSet<AffinityMatchKey> {
        let mut wanted = HashSet::new();
        for (frontend, planned) in &plan.frontends {
            let Some(programmed) = self.frontends.get(frontend) else {
                continue;
            };
            if planned.affinity_timeout == 0 {
                continue;
            }
            for addr in &planned.backends {
                if let Some(&backend_id) = self.backend_ids.get(addr) {
                    wanted.insert(AffinityMatchKey {
                        service_id: programmed.service_id,
                        backend_id,
                    });
                }
            }
        }
        wanted
    }

    /// Memberships of every programmed frontend with affinity on, as the services map now
    /// holds them.
    pub(super) fn programmed_members(&self) -> HashSet<AffinityMatchKey> {
        self.frontends
            .values()
            .filter(|programmed| programmed.affinity_timeout != 0)
            .flat_map(|programmed| {
                programmed
                    .slots
                    .iter()
                    .map(move |&backend_id| AffinityMatchKey {
                        service_id: programmed.service_id,
                        backend_id,
                    })
            })
            .collect()
    }

    /// The frontends with affinity on and their members, for the affinity GC (kept up to
    /// date by every write, so this costs nothing).
    pub fn affinity_view(&self) -> AffinityView<'_> {
        AffinityView::new(&self.affinity_timeouts, &self.members.held)
    }
}
