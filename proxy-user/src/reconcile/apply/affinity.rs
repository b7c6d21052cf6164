//! The affinity-match map (`AFF_MATCH_V1`): one (service id, backend id) entry per backend
//! slot of a frontend with affinity on, so the datapath drops affinity to a backend the moment
//! it leaves a frontend. Also what the affinity GC needs to know about the programmed frontends.

use std::collections::{HashMap, HashSet};

use anyhow::{Context as _, Result};
use proxy_common::AffinityMatchKey;

use crate::reconcile::tables::ServiceTables;

/// The daemon's mirror of the affinity-match map: service id → backend ids.
#[derive(Debug, Default)]
pub(super) struct AffinityMembers {
    held: HashMap<u32, HashSet<u32>>,
}

impl AffinityMembers {
    pub(super) fn from_maps(maps: &mut dyn ServiceTables) -> Result<Self> {
        let mut held: HashMap<u32, HashSet<u32>> = HashMap::new();
        let entries = maps
            .affinity_match()
            .entries()
            .context("read the affinity-match map")?;
        for (key, ()) in entries {
            held.entry(key.service_id)
                .or_default()
                .insert(key.backend_id);
        }
        Ok(Self { held })
    }

    /// The members of `service_id`.
    pub(super) fn of(&self, service_id: u32) -> impl Iterator<Item = u32> + '_ {
        self.held.get(&service_id).into_iter().flatten().copied()
    }

    /// Whether `backend_id` is a member of `service_id`.
    pub(super) fn holds(&self, service_id: u32, backend_id: u32) -> bool {
        is_member(&self.held, service_id, backend_id)
    }

    /// The service ids with members, for finding those of no frontend.
    pub(super) fn service_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.held.keys().copied()
    }

    /// Removes `backend_ids` from the members of `service_id`.
    pub(super) fn remove(
        &mut self,
        maps: &mut dyn ServiceTables,
        service_id: u32,
        backend_ids: impl IntoIterator<Item = u32>,
    ) -> Result<()> {
        for backend_id in backend_ids {
            let key = AffinityMatchKey {
                service_id,
                backend_id,
            };
            maps.affinity_match().remove(&key).with_context(|| {
                format!(
                    "remove backend {backend_id} of service id {service_id} from the \
                     affinity-match map"
                )
            })?;
            if let Some(members) = self.held.get_mut(&service_id) {
                members.remove(&backend_id);
                if members.is_empty() {
                    self.held.remove(&service_id);
                }
            }
        }
        Ok(())
    }

    /// Adds `new` with one batched write (a cold start adds one entry per backend slot).
    pub(super) fn add(
        &mut self,
        maps: &mut dyn ServiceTables,
        new: &[AffinityMatchKey],
    ) -> Result<()> {
        let written = maps.affinity_match().write(new, &vec![(); new.len()]);
        let done = written
            .as_ref()
            .map_or_else(|err| err.index, |()| new.len());
        for key in &new[..done] {
            self.held
                .entry(key.service_id)
                .or_default()
                .insert(key.backend_id);
        }
        written.map_err(|err| {
            err.with(|at| {
                format!(
                    "add backend {} of service id {} to the affinity-match map",
                    new[at].backend_id, new[at].service_id
                )
            })
        })
    }

    pub(super) fn view<'a>(&'a self, timeouts: &'a HashMap<u32, u32>) -> AffinityView<'a> {
        AffinityView::new(timeouts, &self.held)
    }
}

/// What the affinity GC checks entries against: the timeout of every frontend with affinity
/// on, and which backends serve which frontend.
#[derive(Debug)]
pub struct AffinityView<'a> {
    /// Service id → ClientIP timeout in seconds (only frontends with affinity on).
    pub timeouts: &'a HashMap<u32, u32>,
    /// Service id → the backend ids in its slots.
    members: &'a HashMap<u32, HashSet<u32>>,
}

impl<'a> AffinityView<'a> {
    pub fn new(timeouts: &'a HashMap<u32, u32>, members: &'a HashMap<u32, HashSet<u32>>) -> Self {
        Self { timeouts, members }
    }

    /// Whether `backend_id` is one of the backend slots of `service_id`.
    pub fn serves(&self, service_id: u32, backend_id: u32) -> bool {
        is_member(self.members, service_id, backend_id)
    }
}

fn is_member(members: &HashMap<u32, HashSet<u32>>, service_id: u32, backend_id: u32) -> bool {
    members
        .get(&service_id)
        .is_some_and(|members| members.contains(&backend_id))
}
