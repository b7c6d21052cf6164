//! The maps the reconciler writes, as a small trait: the kernel's maps (`kernel`, through aya)
//! and an in-memory copy (`memory`) that checks what a datapath reader relies on after every
//! single write, so reconcile tests run without root.

use anyhow::Result;
use ipnet::Ipv4Net;
use proxy_common::{
    AffinityMatchKey, Backend, ServiceKey, ServiceMeta, ServiceValue, SkippedKey, SkippedService,
};

pub use crate::datapath::BatchError;

mod kernel;
pub mod memory;

/// One map: a key-value table.
pub trait Table<K, V> {
    /// Every entry, in no particular order.
    fn entries(&self) -> Result<Vec<(K, V)>>;
    /// Writes `keys[i] -> values[i]` in order. On failure says which entry was not written
    /// (those before it were), as a batched kernel update does.
    fn write(&mut self, keys: &[K], values: &[V]) -> Result<(), BatchError>;
    /// Removes `key`. Removing an absent key is not an error: the goal is its absence.
    fn remove(&mut self, key: &K) -> Result<()>;
}

/// A per-id traffic counter array (indexed by service or backend id).
pub trait Counters {
    /// The array's length: ids stay below it.
    fn slots(&self) -> u32;
    /// Starts the counters of `ids` from zero.
    fn reset(&mut self, ids: &[u32]) -> Result<(), BatchError>;
}

/// A source range of one frontend: its service id and an allowed client network.
pub type RangeKey = (u32, Ipv4Net);

/// Every map the reconciler writes.
pub trait ServiceTables {
    fn services(&mut self) -> &mut dyn Table<ServiceKey, ServiceValue>;
    fn backends(&mut self) -> &mut dyn Table<u32, Backend>;
    fn service_meta(&mut self) -> &mut dyn Table<u32, ServiceMeta>;
    fn source_ranges(&mut self) -> &mut dyn Table<RangeKey, ()>;
    fn affinity_match(&mut self) -> &mut dyn Table<AffinityMatchKey, ()>;
    fn skipped(&mut self) -> &mut dyn Table<SkippedKey, SkippedService>;
    fn service_counters(&mut self) -> &mut dyn Counters;
    fn backend_counters(&mut self) -> &mut dyn Counters;
}

impl BatchError {
    /// The error, saying what was being written (given the index of the failed entry).
    pub(super) fn with(self, what: impl FnOnce(usize) -> String) -> anyhow::Error {
        let what = what(self.index);
        anyhow::Error::new(self.error).context(what)
    }
}
