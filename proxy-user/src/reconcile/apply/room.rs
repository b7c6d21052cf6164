//! What the maps have room for: a frontend that would overfill them is left out of an apply
//! (and listed) instead of failing it, so every other change still lands.

use std::fmt;

/// Why a planned frontend is not (or not as planned) in the maps. An existing frontend keeps
/// what it had; a new one is not programmed. Every apply tries again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unfit {
    /// Its slots would overfill its family's services map.
    Slots,
    /// No frontend id is free.
    FrontendIds,
    /// One of its backends got no id.
    BackendIds,
}

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Slots => "the services map is full (raise --max-backend-slots)",
            Self::FrontendIds => "all frontend ids are in use (raise --max-frontends)",
            Self::BackendIds => "all backend ids are in use (raise --max-backends)",
        })
    }
}

/// Entries of each family's services map (heads and slots): in use as the mirror counts them,
/// and the most it holds. Entries an apply removes count as used until they are removed, so
/// the map never holds more than its capacity part way through the apply either.
#[derive(Clone, Debug, Default)]
pub(super) struct Room {
    used: [usize; 2],
    capacity: [usize; 2],
    /// Entries this apply's queued removals free once written.
    freeing: [usize; 2],
}

impl Room {
    /// `used` entries of `capacity` per family (IPv4, IPv6).
    pub(super) fn new(used: [usize; 2], capacity: [usize; 2]) -> Self {
        Self {
            used,
            capacity,
            freeing: [0; 2],
        }
    }

    /// Takes `grow` more entries of a family's map (`ipv6` or not), if they fit.
    pub(super) fn take(&mut self, ipv6: bool, grow: usize) -> bool {
        let family = usize::from(ipv6);
        let fits = self.used[family] + grow <= self.capacity[family];
        if fits {
            self.used[family] += grow;
        }
        fits
    }

    /// `entries` of a family's map go with the removals queued in this apply.
    pub(super) fn free_later(&mut self, ipv6: bool, entries: usize) {
        self.freeing[usize::from(ipv6)] += entries;
    }

    /// `entries` of a family's map are removed.
    pub(super) fn free(&mut self, ipv6: bool, entries: usize) {
        let family = usize::from(ipv6);
        self.used[family] = self.used[family].saturating_sub(entries);
    }

    /// The queued removals are written.
    pub(super) fn settle(&mut self) {
        for family in 0..2 {
            self.used[family] = self.used[family].saturating_sub(self.freeing[family]);
        }
        self.freeing = [0; 2];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_fills_its_own_map_and_removals_free_room_once_written() {
        let (v4, v6) = (false, true);
        let mut room = Room::new([8, 0], [10, 4]);
        assert!(room.take(v4, 2));
        assert!(!room.take(v4, 1), "10 of 10 used");
        assert!(room.take(v6, 4));
        room.free_later(v4, 3);
        assert!(!room.take(v4, 1), "the removal is not written yet");
        room.settle();
        assert!(room.take(v4, 3));
        room.free(v6, 1);
        assert!(room.take(v6, 1));
        assert!(!room.take(v6, 1));
    }
}
