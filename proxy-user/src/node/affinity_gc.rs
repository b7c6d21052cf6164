//! Background removal of session-affinity entries (`AFFINITY_V1`, and `AFFINITY6_V1` of IPv6
//! packet-path clients, by the same rules) that can no longer be used:
//! older than their frontend's timeout, of a frontend without affinity (or gone), or pointing
//! at a backend that left the frontend.
//!
//! The datapath already ignores such entries (it checks age and membership on every lookup),
//! so the GC only keeps the LRU map from filling with dead entries. It runs once per smallest
//! timeout (at least 1 s apart, at most 5 min), never when no frontend has affinity, and at
//! once when a frontend's affinity is switched on or off, so no entry of an earlier setting
//! survives the switch.

use std::{collections::HashMap, hash::BuildHasher, time::Duration};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, MapData};
use proxy_common::{AffinityKey, AffinityKey6, AffinityValue};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::{
    datapath::{Maps, clock::monotonic_ns},
    reconcile::AffinityView,
};

const NANOS_PER_SEC: u64 = 1_000_000_000;
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(300);

/// The key of an affinity map of either family: the frontend it belongs to.
pub trait AffinityMapKey: aya::Pod {
    fn service_id(&self) -> u32;
}

impl AffinityMapKey for AffinityKey {
    fn service_id(&self) -> u32 {
        self.service_id
    }
}

impl AffinityMapKey for AffinityKey6 {
    fn service_id(&self) -> u32 {
        self.service_id
    }
}

/// Whether an entry can no longer be used. `reset_before`: entries of a frontend whose
/// affinity was switched on are stale when last used before the switch.
pub fn is_stale(
    key: &impl AffinityMapKey,
    value: &AffinityValue,
    view: &AffinityView<'_>,
    reset_before: Option<u64>,
    now_ns: u64,
) -> bool {
    let service_id = key.service_id();
    let Some(&timeout) = view.timeouts.get(&service_id) else {
        return true;
    };
    let age = now_ns.saturating_sub(value.last_used_ns);
    age > u64::from(timeout) * NANOS_PER_SEC
        || !view.serves(service_id, value.backend_id)
        || reset_before.is_some_and(|switched| value.last_used_ns < switched)
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    pub kept: usize,
    pub removed: usize,
}

/// The GC's schedule and what it knew of the frontends at the last apply.
#[derive(Debug, Default)]
pub struct AffinityGc {
    started: bool,
    /// Service id → timeout at the last apply (affinity on only).
    timeouts: HashMap<u32, u32>,
    /// Frontends whose affinity was switched on, with the switch time (monotonic ns).
    resets: HashMap<u32, u64>,
    next: Option<Instant>,
}

impl AffinityGc {
    /// After every successful apply (`applied_ns`: monotonic time before it started): runs a
    /// pass at once when affinity was switched on or off somewhere (or on the first sync, to
    /// clean what accumulated while no daemon ran), and schedules the next one.
    pub fn after_apply(&mut self, maps: &mut Maps, view: &AffinityView<'_>, applied_ns: u64) {
        let mut urgent = !self.started;
        if self.started {
            // Switched off or removed: the datapath ignores their entries; delete them now.
            urgent |= self
                .timeouts
                .keys()
                .any(|id| !view.timeouts.contains_key(id));
            // Switched on: entries from an earlier ClientIP period must not come back.
            for id in view.timeouts.keys() {
                if !self.timeouts.contains_key(id) {
                    self.resets.insert(*id, applied_ns);
                    urgent = true;
                }
            }
        }
        self.started = true;
        self.timeouts.clone_from(view.timeouts);
        if urgent {
            self.run(maps, view);
        } else if let Some(interval) = self.interval() {
            // Keep an earlier deadline: frequent applies must not postpone the GC forever.
            let next = Instant::now() + interval;
            self.next = Some(self.next.map_or(next, |current| current.min(next)));
        } else {
            self.next = None;
        }
    }

    /// One pass now; then the next is scheduled.
    pub fn run(&mut self, maps: &mut Maps, view: &AffinityView<'_>) {
        match collect(maps, view, &self.resets) {
            Ok(stats) => {
                self.resets.clear();
                if stats.removed > 0 {
                    debug!(?stats, "affinity entries collected");
                }
            }
            Err(err) => warn!("affinity GC failed: {err:#}"),
        }
        self.next = self.interval().map(|interval| Instant::now() + interval);
    }

    /// Whether a pass is scheduled (there are frontends with affinity).
    pub fn is_scheduled(&self) -> bool {
        self.next.is_some()
    }

    /// Completes when the next pass is due (never when none is scheduled).
    pub async fn due(&self) {
        match self.next {
            Some(next) => tokio::time::sleep_until(next).await,
            None => std::future::pending().await,
        }
    }

    /// The smallest timeout, clamped: an entry outlives its expiry by at most one interval,
    /// and a node with only long timeouts is not scanned more than every few minutes.
    pub fn interval(&self) -> Option<Duration> {
        let smallest = self.timeouts.values().min()?;
        Some(Duration::from_secs(u64::from(*smallest)).clamp(MIN_INTERVAL, MAX_INTERVAL))
    }
}

/// Deletes every stale entry of both families' maps. Each is re-read just before its
/// deletion: a connection may have refreshed it meanwhile.
pub fn collect(
    maps: &mut Maps,
    view: &AffinityView<'_>,
    resets: &HashMap<u32, u64, impl BuildHasher>,
) -> Result<GcStats> {
    let v4 = collect_map(&mut maps.affinity, view, resets).context("AFFINITY_V1")?;
    let v6 = collect_map(&mut maps.affinity6, view, resets).context("AFFINITY6_V1")?;
    Ok(GcStats {
        kept: v4.kept + v6.kept,
        removed: v4.removed + v6.removed,
    })
}

fn collect_map<K: AffinityMapKey>(
    map: &mut BpfHashMap<MapData, K, AffinityValue>,
    view: &AffinityView<'_>,
    resets: &HashMap<u32, u64, impl BuildHasher>,
) -> Result<GcStats> {
    let now = monotonic_ns();
    let mut stats = GcStats::default();
    let mut stale = Vec::new();
    for entry in map.iter() {
        let (key, value) = entry.context("read the affinity map")?;
        if is_stale(
            &key,
            &value,
            view,
            resets.get(&key.service_id()).copied(),
            now,
        ) {
            stale.push(key);
        } else {
            stats.kept += 1;
        }
    }
    for key in stale {
        if let Ok(value) = map.get(&key, 0) {
            let reset = resets.get(&key.service_id()).copied();
            if !is_stale(&key, &value, view, reset, monotonic_ns()) {
                stats.kept += 1;
                continue;
            }
        }
        match map.remove(&key) {
            Ok(()) => stats.removed += 1,
            // Evicted by the LRU or deleted meanwhile: the goal is its absence.
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(aya::maps::MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(err) => return Err(err).context("delete an affinity entry"),
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proxy_common::AFFINITY_CLIENT_IP;

    use super::*;

    const SECOND: u64 = NANOS_PER_SEC;

    fn key(service_id: u32) -> AffinityKey {
        AffinityKey {
            client: 1,
            service_id,
            client_kind: AFFINITY_CLIENT_IP,
            _pad: [0; 3],
        }
    }

    fn value(backend_id: u32, last_used_ns: u64) -> AffinityValue {
        AffinityValue {
            last_used_ns,
            backend_id,
            _pad: 0,
        }
    }

    fn key6(service_id: u32) -> AffinityKey6 {
        AffinityKey6 {
            client: proxy_common::net::ip6_to_net("fd00:10:1::2".parse().unwrap()),
            service_id,
            client_kind: AFFINITY_CLIENT_IP,
            _pad: [0; 3],
        }
    }

    /// Backends 1 and 2 serve service 7.
    fn members() -> HashMap<u32, HashSet<u32>> {
        [(7, [1, 2].into())].into()
    }

    #[test]
    fn entries_expire_after_their_frontends_timeout() {
        let members = members();
        let timeouts = [(7, 10)].into();
        let view = AffinityView::new(&timeouts, &members);
        let now = 1_000 * SECOND;
        assert!(!is_stale(
            &key(7),
            &value(1, now - 10 * SECOND),
            &view,
            None,
            now
        ));
        assert!(is_stale(
            &key(7),
            &value(1, now - 11 * SECOND),
            &view,
            None,
            now
        ));
        // Refreshed by another CPU after `now` was read: fresh.
        assert!(!is_stale(
            &key(7),
            &value(1, now + SECOND),
            &view,
            None,
            now
        ));
    }

    #[test]
    fn entries_of_frontends_without_affinity_or_left_backends_are_stale() {
        let members = members();
        let timeouts = [(7, 10)].into();
        let view = AffinityView::new(&timeouts, &members);
        let now = 1_000 * SECOND;
        assert!(
            is_stale(&key(8), &value(1, now), &view, None, now),
            "no affinity"
        );
        assert!(
            is_stale(&key(7), &value(3, now), &view, None, now),
            "backend left"
        );
        assert!(!is_stale(&key(7), &value(2, now), &view, None, now));
    }

    #[test]
    fn switching_affinity_on_drops_entries_from_before_the_switch() {
        let members = members();
        let timeouts = [(7, 10)].into();
        let view = AffinityView::new(&timeouts, &members);
        let now = 1_000 * SECOND;
        let switched = Some(now - SECOND);
        assert!(is_stale(
            &key(7),
            &value(1, now - 2 * SECOND),
            &view,
            switched,
            now
        ));
        assert!(!is_stale(&key(7), &value(1, now), &view, switched, now));
    }

    #[test]
    fn ipv6_client_entries_follow_the_same_rules() {
        let members = members();
        let timeouts = [(7, 10)].into();
        let view = AffinityView::new(&timeouts, &members);
        let now = 1_000 * SECOND;
        assert!(!is_stale(
            &key6(7),
            &value(1, now - 10 * SECOND),
            &view,
            None,
            now
        ));
        assert!(
            is_stale(&key6(7), &value(1, now - 11 * SECOND), &view, None, now),
            "expired"
        );
        assert!(
            is_stale(&key6(8), &value(1, now), &view, None, now),
            "frontend gone or without affinity"
        );
        assert!(
            is_stale(&key6(7), &value(3, now), &view, None, now),
            "backend left"
        );
        assert!(!is_stale(&key6(7), &value(2, now), &view, None, now));
        let switched = Some(now - SECOND);
        assert!(
            is_stale(&key6(7), &value(1, now - 2 * SECOND), &view, switched, now),
            "used before affinity was switched on"
        );
        assert!(!is_stale(&key6(7), &value(1, now), &view, switched, now));
    }

    #[test]
    fn the_interval_follows_the_smallest_timeout_within_bounds() {
        let mut gc = AffinityGc::default();
        assert_eq!(gc.interval(), None, "no affinity: no periodic pass");
        gc.timeouts = [(1, 10_800), (2, 30)].into();
        assert_eq!(gc.interval(), Some(Duration::from_secs(30)));
        gc.timeouts = [(1, 10_800)].into();
        assert_eq!(gc.interval(), Some(MAX_INTERVAL));
        gc.timeouts = [(1, 1)].into();
        assert_eq!(gc.interval(), Some(MIN_INTERVAL));
    }
}
