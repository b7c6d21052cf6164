//! Map capacities chosen at start (`sluice run --max-*`), and the check that pinned maps from an
//! earlier run have the same ones.

use std::path::Path;

use anyhow::{Result, bail};
use aya::{EbpfLoader, maps::MapData};
use proxy_common::{map_names, map_sizes};

/// How many entries the sized maps hold. Each field sizes the maps indexed by the same thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Args)]
pub struct MapSizes {
    /// Most frontends (service address, port and protocol; a NodePort counts once per scope):
    /// sizes the per-frontend maps, including the per-CPU counters.
    #[arg(long = "max-frontends", value_name = "N", default_value_t = map_sizes::SERVICE_META)]
    pub frontends: u32,
    /// Most distinct endpoints (pod address and port): sizes the backend maps.
    #[arg(long = "max-backends", value_name = "N", default_value_t = map_sizes::BACKENDS)]
    pub backends: u32,
    /// Most backend slots: the sum over frontends of their endpoints, plus one per frontend.
    #[arg(long = "max-backend-slots", value_name = "N", default_value_t = map_sizes::SERVICES)]
    pub backend_slots: u32,
    /// Conntrack entries of the packet path: two per tracked flow.
    #[arg(long = "ct-max-entries", value_name = "N", default_value_t = map_sizes::CONNTRACK)]
    pub conntrack: u32,
    /// Conntrack entries of confirmed flows (two per flow), apart from the new flows'
    /// `--ct-max-entries`: a flood of new flows cannot evict them. When it is full, further
    /// confirmed flows stay with the new ones (counted as `ct_established_full`).
    #[arg(
        long = "ct-established-max-entries",
        value_name = "N",
        default_value_t = map_sizes::CONNTRACK_ESTABLISHED
    )]
    pub ct_established: u32,
    /// Clients remembered for ClientIP session affinity (least recently used go first).
    #[arg(long = "affinity-max-entries", value_name = "N", default_value_t = map_sizes::AFFINITY)]
    pub affinity: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            frontends: map_sizes::SERVICE_META,
            backends: map_sizes::BACKENDS,
            backend_slots: map_sizes::SERVICES,
            conntrack: map_sizes::CONNTRACK,
            ct_established: map_sizes::CONNTRACK_ESTABLISHED,
            affinity: map_sizes::AFFINITY,
        }
    }
}

impl MapSizes {
    /// Every sized map with its capacity and the flag that sets it. One flag sizes both
    /// families' maps of a kind (each family may fill its map alone, and the id-indexed maps
    /// they share hold both families' ids).
    pub fn per_map(&self) -> [(&'static str, u32, &'static str); 16] {
        [
            (map_names::SERVICE_META, self.frontends, "--max-frontends"),
            (map_names::SERVICE_STATS, self.frontends, "--max-frontends"),
            (map_names::SERVICE_ADDRS, self.frontends, "--max-frontends"),
            (map_names::SERVICE_ADDRS6, self.frontends, "--max-frontends"),
            (map_names::BACKENDS, self.backends, "--max-backends"),
            (map_names::BACKENDS6, self.backends, "--max-backends"),
            (map_names::BACKEND_STATS, self.backends, "--max-backends"),
            (
                map_names::SERVICES,
                self.backend_slots,
                "--max-backend-slots",
            ),
            (
                map_names::SERVICES6,
                self.backend_slots,
                "--max-backend-slots",
            ),
            (
                map_names::AFFINITY_MATCH,
                self.backend_slots,
                "--max-backend-slots",
            ),
            (map_names::CONNTRACK, self.conntrack, "--ct-max-entries"),
            (map_names::CONNTRACK6, self.conntrack, "--ct-max-entries"),
            (
                map_names::CONNTRACK_ESTABLISHED,
                self.ct_established,
                "--ct-established-max-entries",
            ),
            (
                map_names::CONNTRACK_ESTABLISHED6,
                self.ct_established,
                "--ct-established-max-entries",
            ),
            (map_names::AFFINITY, self.affinity, "--affinity-max-entries"),
            (
                map_names::AFFINITY6,
                self.affinity,
                "--affinity-max-entries",
            ),
        ]
    }

    pub fn validate(&self) -> Result<()> {
        for (_, size, flag) in self.per_map() {
            // Ids 1.. index the counter arrays, so a map of one entry holds nothing.
            if size < 2 {
                bail!("{flag} must be at least 2, not {size}");
            }
        }
        Ok(())
    }

    /// Sizes the maps the loader creates (maps already pinned keep theirs: see [`Self::check_pins`]).
    pub fn configure(&self, loader: &mut EbpfLoader<'_>) {
        for (name, size, _) in self.per_map() {
            loader.map_max_entries(name, size);
        }
    }

    /// Fails when a map pinned under `pin_dir` by an earlier run has another capacity: the
    /// loader would reuse it as it is. Resizing means removing the pin, which forgets what it
    /// holds (for conntrack: the tracked connections), so it is the operator's call.
    pub fn check_pins(&self, pin_dir: &Path) -> Result<()> {
        let mut problems = Vec::new();
        for (name, size, flag) in self.per_map() {
            let path = pin_dir.join(name);
            if !path.exists() {
                continue;
            }
            let pinned = MapData::from_pin(&path)
                .and_then(|data| data.info())
                .map(|info| info.max_entries());
            match pinned {
                Ok(pinned) if pinned == size => {}
                Ok(pinned) => problems.push(format!(
                    "{} holds {pinned} entries but {flag} asks for {size}",
                    path.display()
                )),
                Err(err) => problems.push(format!("{}: {err}", path.display())),
            }
        }
        if !problems.is_empty() {
            bail!(
                "the pinned maps of an earlier run have other sizes:\n  {}\nstart with the sizes \
                 they were made with, or remove those pins (they are recreated empty: removing \
                 {} or {} forgets the tracked connections)",
                problems.join("\n  "),
                map_names::CONNTRACK,
                map_names::CONNTRACK_ESTABLISHED
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_object_sizes_and_valid() {
        let sizes = MapSizes::default();
        sizes.validate().unwrap();
        assert!(
            sizes.per_map().iter().any(
                |&(name, size, _)| name == map_names::CONNTRACK && size == map_sizes::CONNTRACK
            )
        );
    }

    #[test]
    fn a_size_below_two_names_its_flag() {
        let sizes = MapSizes {
            backends: 1,
            ..MapSizes::default()
        };
        let err = sizes.validate().unwrap_err().to_string();
        assert_eq!(err, "--max-backends must be at least 2, not 1");
    }
}
