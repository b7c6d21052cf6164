//! The maps the reconciler writes, as a small trait: the kernel's maps (`kernel`, through aya)
//! and an in-memory copy (`memory`) that checks what a datapath reader relies on after every
//! single write, so reconcile tests run without root.

use std::net::IpAddr;

use anyhow::Result;
use ipnet::{Ipv4Net, Ipv6Net};
use proxy_common::{
    Addr6, Address, AffinityMatchKey, Backend, Backend6, ServiceKey, ServiceKey6, ServiceMeta,
    ServiceValue, SkippedKey, SkippedService,
    net::{ip_from_net, ip_to_net, ip6_from_net, ip6_to_net},
};

pub use crate::datapath::BatchError;

mod kernel;
pub mod memory;

/// An address field of a map key or value, of either family, as the reconciler converts it.
pub trait MapAddr: Address + std::fmt::Debug + std::hash::Hash {
    /// The address the field holds.
    fn ip(self) -> IpAddr;
    /// The field of `ip`, when `ip` is of this family.
    fn from_ip(ip: IpAddr) -> Option<Self>;
}

impl MapAddr for u32 {
    fn ip(self) -> IpAddr {
        ip_from_net(self).into()
    }
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(ip) => Some(ip_to_net(ip)),
            IpAddr::V6(_) => None,
        }
    }
}

impl MapAddr for Addr6 {
    fn ip(self) -> IpAddr {
        ip6_from_net(self).into()
    }
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(ip) => Some(ip6_to_net(ip)),
            IpAddr::V4(_) => None,
        }
    }
}

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

/// A source range of one IPv4 frontend: its service id and an allowed client network.
pub type RangeKey = (u32, Ipv4Net);
/// A source range of one IPv6 frontend.
pub type RangeKey6 = (u32, Ipv6Net);

/// Every map the reconciler writes. The services, backends and source-range maps come in one
/// per family; the maps keyed by service or backend id serve both (one id space).
pub trait ServiceTables {
    fn services(&mut self) -> &mut dyn Table<ServiceKey, ServiceValue>;
    fn services6(&mut self) -> &mut dyn Table<ServiceKey6, ServiceValue>;
    fn backends(&mut self) -> &mut dyn Table<u32, Backend>;
    fn backends6(&mut self) -> &mut dyn Table<u32, Backend6>;
    fn service_meta(&mut self) -> &mut dyn Table<u32, ServiceMeta>;
    fn source_ranges(&mut self) -> &mut dyn Table<RangeKey, ()>;
    fn source_ranges6(&mut self) -> &mut dyn Table<RangeKey6, ()>;
    fn affinity_match(&mut self) -> &mut dyn Table<AffinityMatchKey, ()>;
    fn skipped(&mut self) -> &mut dyn Table<SkippedKey, SkippedService>;
    fn service_counters(&mut self) -> &mut dyn Counters;
    fn backend_counters(&mut self) -> &mut dyn Counters;
    /// The most entries each family's services map holds (IPv4, IPv6).
    fn services_capacity(&mut self) -> Result<[usize; 2]>;
}

impl BatchError {
    /// The error, saying what was being written (given the index of the failed entry).
    pub(super) fn with(self, what: impl FnOnce(usize) -> String) -> anyhow::Error {
        let what = what(self.index);
        anyhow::Error::new(self.error).context(what)
    }
}
