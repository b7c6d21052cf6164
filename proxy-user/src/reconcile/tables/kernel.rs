//! The reconciler's tables as the kernel holds them: aya's typed maps, read and written in
//! batches (a cold start writes millions of entries, and a call per entry took seconds).

use std::os::fd::AsFd as _;

use anyhow::Result;
use aya::maps::{HashMap, IterableMap, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key};
use ipnet::{Ipv4Net, Ipv6Net};
use proxy_common::{
    AffinityMatchKey, Backend, Backend6, ServiceKey, ServiceKey6, ServiceMeta, ServiceValue,
    SkippedKey, SkippedService, SourceRange, SourceRange6, SourceRangeOf,
    net::{ip_from_net, ip_to_net, ip6_from_net, ip6_to_net},
    stats::Traffic,
};

use super::{BatchError, Counters, RangeKey, RangeKey6, ServiceTables, Table};
use crate::datapath::{Maps, lookup_batch, update_batch, zero_traffic_slots};

impl ServiceTables for Maps {
    fn services(&mut self) -> &mut dyn Table<ServiceKey, ServiceValue> {
        &mut self.services
    }
    fn services6(&mut self) -> &mut dyn Table<ServiceKey6, ServiceValue> {
        &mut self.services6
    }
    fn backends(&mut self) -> &mut dyn Table<u32, Backend> {
        &mut self.backends
    }
    fn backends6(&mut self) -> &mut dyn Table<u32, Backend6> {
        &mut self.backends6
    }
    fn service_meta(&mut self) -> &mut dyn Table<u32, ServiceMeta> {
        &mut self.service_meta
    }
    fn source_ranges(&mut self) -> &mut dyn Table<RangeKey, ()> {
        &mut self.source_ranges
    }
    fn source_ranges6(&mut self) -> &mut dyn Table<RangeKey6, ()> {
        &mut self.source_ranges6
    }
    fn affinity_match(&mut self) -> &mut dyn Table<AffinityMatchKey, ()> {
        &mut self.affinity_match
    }
    fn skipped(&mut self) -> &mut dyn Table<SkippedKey, SkippedService> {
        &mut self.skipped
    }
    fn service_counters(&mut self) -> &mut dyn Counters {
        &mut self.service_stats
    }
    fn backend_counters(&mut self) -> &mut dyn Counters {
        &mut self.backend_stats
    }
    fn services_capacity(&mut self) -> Result<[usize; 2]> {
        let capacity = |map: &MapData| -> Result<usize> { Ok(map.info()?.max_entries() as usize) };
        Ok([
            capacity(IterableMap::map(&self.services))?,
            capacity(IterableMap::map(&self.services6))?,
        ])
    }
}

impl<K, V> Table<K, V> for HashMap<MapData, K, V>
where
    K: aya::Pod + bytemuck::Pod,
    V: aya::Pod + bytemuck::Pod,
{
    fn entries(&self) -> Result<Vec<(K, V)>> {
        Ok(lookup_batch(IterableMap::map(self).fd().as_fd())?)
    }

    fn write(&mut self, keys: &[K], values: &[V]) -> Result<(), BatchError> {
        update_batch(IterableMap::map(self).fd().as_fd(), keys, values)
    }

    fn remove(&mut self, key: &K) -> Result<()> {
        remove_if_present(HashMap::remove(self, key))
    }
}

/// The affinity-match map is a set: its values are unused (0).
impl Table<AffinityMatchKey, ()> for HashMap<MapData, AffinityMatchKey, u32> {
    fn entries(&self) -> Result<Vec<(AffinityMatchKey, ())>> {
        let entries = lookup_batch::<AffinityMatchKey, u32>(IterableMap::map(self).fd().as_fd())?;
        Ok(entries.into_iter().map(|(key, _)| (key, ())).collect())
    }

    fn write(&mut self, keys: &[AffinityMatchKey], _: &[()]) -> Result<(), BatchError> {
        update_batch(
            IterableMap::map(self).fd().as_fd(),
            keys,
            &vec![0u32; keys.len()],
        )
    }

    fn remove(&mut self, key: &AffinityMatchKey) -> Result<()> {
        remove_if_present(HashMap::remove(self, key))
    }
}

/// Source ranges are a longest-prefix-match trie keyed by (service id, client address): the
/// prefix covers the 32 bits of the id, then the network's own prefix. Its values are unused (1).
/// One impl per family: the key's address and the network type differ.
macro_rules! source_range_table {
    ($range:ty, $net:ident, $bits:literal, $to_net:ident, $from_net:ident) => {
        impl Table<(u32, $net), ()> for LpmTrie<MapData, $range, u32> {
            fn entries(&self) -> Result<Vec<((u32, $net), ())>> {
                let mut entries = Vec::new();
                for key in self.keys() {
                    let key = key?;
                    let data = key.data();
                    let prefix = key.prefix_len().saturating_sub(32).min($bits) as u8;
                    let net =
                        $net::new($from_net(data.addr), prefix).expect("prefix within the family");
                    entries.push(((data.service_id, net), ()));
                }
                Ok(entries)
            }

            fn write(&mut self, keys: &[(u32, $net)], _: &[()]) -> Result<(), BatchError> {
                // LPM tries take no batched updates.
                for (index, (service_id, net)) in keys.iter().enumerate() {
                    self.insert(
                        &trie_key(*service_id, net.prefix_len(), $to_net(net.network())),
                        &1,
                        0,
                    )
                    .map_err(|err| BatchError {
                        index,
                        error: std::io::Error::other(err),
                    })?;
                }
                Ok(())
            }

            fn remove(&mut self, (service_id, net): &(u32, $net)) -> Result<()> {
                let key = trie_key(*service_id, net.prefix_len(), $to_net(net.network()));
                remove_if_present(LpmTrie::remove(self, &key))
            }
        }
    };
}

source_range_table!(SourceRange, Ipv4Net, 32, ip_to_net, ip_from_net);
source_range_table!(SourceRange6, Ipv6Net, 128, ip6_to_net, ip6_from_net);

fn trie_key<A>(service_id: u32, prefix_len: u8, addr: A) -> Key<SourceRangeOf<A>>
where
    SourceRangeOf<A>: aya::Pod,
{
    Key::new(
        32 + u32::from(prefix_len),
        SourceRangeOf { service_id, addr },
    )
}

impl Counters for PerCpuArray<MapData, Traffic> {
    fn slots(&self) -> u32 {
        PerCpuArray::len(self)
    }

    fn reset(&mut self, ids: &[u32]) -> Result<(), BatchError> {
        let zeros = zero_traffic_slots(ids.len()).map_err(|err| BatchError {
            index: 0,
            error: std::io::Error::other(err),
        })?;
        update_batch(IterableMap::map(self).fd().as_fd(), ids, &zeros)
    }
}

/// Deleting what is already gone is not an error: the goal is its absence.
fn remove_if_present(result: Result<(), MapError>) -> Result<()> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(err)) if err.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        other => Ok(other?),
    }
}
