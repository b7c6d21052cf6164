//! Typed handles on every Sluice map, from a freshly loaded object or from the pins alone.

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuValues},
};
use proxy_common::{
    Addr6, AffinityKey, AffinityKey6, AffinityMatchKey, AffinityValue, Backend, Backend6, Config,
    Config6, CtEntry, CtEntry6, CtKey, CtKey6, NodeAddr, ServiceKey, ServiceKey6, ServiceMeta,
    ServiceValue, SkippedKey, SkippedService, SockRevNatKey, SockRevNatValue, SourceRange,
    SourceRange6, map_names, stats::Traffic,
};

pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub service_meta: HashMap<MapData, u32, ServiceMeta>,
    /// New flows (LRU); confirmed ones are in `conntrack_established`.
    pub conntrack: HashMap<MapData, CtKey, CtEntry>,
    /// Confirmed flows (plain hash, never evicted).
    pub conntrack_established: HashMap<MapData, CtKey, CtEntry>,
    pub sock_rev_nat: HashMap<MapData, SockRevNatKey, SockRevNatValue>,
    pub node_addrs: HashMap<MapData, u32, NodeAddr>,
    pub config: Array<MapData, Config>,
    /// Indexed by service id, like `service_meta`.
    pub service_stats: PerCpuArray<MapData, Traffic>,
    /// Indexed by backend id, like `backends`.
    pub backend_stats: PerCpuArray<MapData, Traffic>,
    pub drop_stats: PerCpuArray<MapData, u64>,
    pub hook_stats: PerCpuArray<MapData, u64>,
    /// Packets passed untranslated, indexed by `stats::PassReason`.
    pub pass_stats: PerCpuArray<MapData, u64>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub affinity_match: HashMap<MapData, AffinityMatchKey, u32>,
    pub source_ranges: LpmTrie<MapData, SourceRange, u32>,
    pub skipped: HashMap<MapData, SkippedKey, SkippedService>,
    /// Cluster IPs and service CIDRs → `SVC_ADDR_*`.
    pub service_addrs: LpmTrie<MapData, u32, u32>,
    pub services6: HashMap<MapData, ServiceKey6, ServiceValue>,
    pub backends6: HashMap<MapData, u32, Backend6>,
    pub source_ranges6: LpmTrie<MapData, SourceRange6, u32>,
    pub node_addrs6: HashMap<MapData, Addr6, NodeAddr>,
    pub config6: Array<MapData, Config6>,
    /// Written by the datapath; read by `sluice conntrack`.
    pub conntrack6: HashMap<MapData, CtKey6, CtEntry6>,
    pub conntrack_established6: HashMap<MapData, CtKey6, CtEntry6>,
    /// IPv6 clients of the packet path; written by the datapath, cleaned by the affinity GC.
    pub affinity6: HashMap<MapData, AffinityKey6, AffinityValue>,
    pub service_addrs6: LpmTrie<MapData, Addr6, u32>,
}

impl Maps {
    /// Takes the maps out of a loaded object (the programs keep their own references).
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Self> {
        Self::build(|name| {
            ebpf.take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
        })
    }

    /// Opens the maps pinned under `pin_dir` by a running or stopped `sluice run`.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self> {
        Self::build(|name| {
            let path = pin_dir.join(name);
            let data = MapData::from_pin(&path).with_context(|| {
                format!(
                    "cannot open the pinned map {}: is `sluice run` using --pin-dir {}?",
                    path.display(),
                    pin_dir.display()
                )
            })?;
            Map::from_map_data(data).with_context(|| format!("map {}", path.display()))
        })
    }

    fn build(mut take: impl FnMut(&str) -> Result<Map>) -> Result<Self> {
        macro_rules! typed {
            ($name:expr) => {
                take($name)?
                    .try_into()
                    .with_context(|| format!("map {} has an unexpected type or layout", $name))?
            };
        }
        Ok(Self {
            services: typed!(map_names::SERVICES),
            backends: typed!(map_names::BACKENDS),
            service_meta: typed!(map_names::SERVICE_META),
            conntrack: typed!(map_names::CONNTRACK),
            conntrack_established: typed!(map_names::CONNTRACK_ESTABLISHED),
            sock_rev_nat: typed!(map_names::SOCK_REV_NAT),
            node_addrs: typed!(map_names::NODE_ADDRS),
            config: typed!(map_names::CONFIG),
            service_stats: typed!(map_names::SERVICE_STATS),
            backend_stats: typed!(map_names::BACKEND_STATS),
            drop_stats: typed!(map_names::DROP_STATS),
            hook_stats: typed!(map_names::HOOK_STATS),
            pass_stats: typed!(map_names::PASS_STATS),
            affinity: typed!(map_names::AFFINITY),
            affinity_match: typed!(map_names::AFFINITY_MATCH),
            source_ranges: typed!(map_names::SOURCE_RANGES),
            skipped: typed!(map_names::SKIPPED),
            service_addrs: typed!(map_names::SERVICE_ADDRS),
            services6: typed!(map_names::SERVICES6),
            backends6: typed!(map_names::BACKENDS6),
            source_ranges6: typed!(map_names::SOURCE_RANGES6),
            node_addrs6: typed!(map_names::NODE_ADDRS6),
            config6: typed!(map_names::CONFIG6),
            conntrack6: typed!(map_names::CONNTRACK6),
            conntrack_established6: typed!(map_names::CONNTRACK_ESTABLISHED6),
            affinity6: typed!(map_names::AFFINITY6),
            service_addrs6: typed!(map_names::SERVICE_ADDRS6),
        })
    }
}

/// A zero per-CPU traffic value, to reset a counter slot with.
pub fn zero_traffic() -> Result<PerCpuValues<Traffic>> {
    Ok(PerCpuValues::try_from(zero_traffic_slots(1)?)?)
}

/// Zero per-CPU traffic values for `slots` counter slots, one per CPU each, as a batched
/// update of a per-CPU map takes them.
pub fn zero_traffic_slots(slots: usize) -> Result<Vec<Traffic>> {
    let cpus = aya::util::nr_cpus().map_err(|(what, err)| anyhow::anyhow!("{what}: {err}"))?;
    Ok(vec![Traffic::default(); slots * cpus.get() as usize])
}

/// How full one map is.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: u64,
    pub max_entries: u64,
}

impl Maps {
    /// Entries and capacity of every map under `pin_dir` (entries by walking the keys).
    pub fn fill(&self, pin_dir: &Path) -> Result<Vec<MapFill>> {
        fn count<K, E>(keys: impl Iterator<Item = Result<K, E>>) -> u64 {
            keys.flatten().count() as u64
        }
        let frontends = count(self.service_meta.keys());
        let backends = count(self.backends.keys()) + count(self.backends6.keys());
        let counts = [
            (map_names::SERVICES, count(self.services.keys())),
            (map_names::SERVICES6, count(self.services6.keys())),
            (map_names::BACKENDS, count(self.backends.keys())),
            (map_names::BACKENDS6, count(self.backends6.keys())),
            (map_names::SERVICE_META, frontends),
            (map_names::CONNTRACK, count(self.conntrack.keys())),
            (map_names::CONNTRACK6, count(self.conntrack6.keys())),
            (
                map_names::CONNTRACK_ESTABLISHED,
                count(self.conntrack_established.keys()),
            ),
            (
                map_names::CONNTRACK_ESTABLISHED6,
                count(self.conntrack_established6.keys()),
            ),
            (map_names::SOCK_REV_NAT, count(self.sock_rev_nat.keys())),
            (map_names::NODE_ADDRS, count(self.node_addrs.keys())),
            (map_names::NODE_ADDRS6, count(self.node_addrs6.keys())),
            (map_names::SERVICE_ADDRS, count(self.service_addrs.keys())),
            (map_names::SERVICE_ADDRS6, count(self.service_addrs6.keys())),
            // Arrays: the slots in use are those of the ids in use.
            (map_names::SERVICE_STATS, frontends),
            (map_names::BACKEND_STATS, backends),
        ];
        counts
            .into_iter()
            .map(|(map, entries)| {
                let path = pin_dir.join(map);
                let info = MapData::from_pin(&path)
                    .and_then(|data| data.info())
                    .with_context(|| format!("map info of {}", path.display()))?;
                Ok(MapFill {
                    map,
                    entries,
                    max_entries: u64::from(info.max_entries()),
                })
            })
            .collect()
    }
}
