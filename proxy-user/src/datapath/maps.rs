//! Typed handles on every Sluice map, from a freshly loaded object or from the pins alone.

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray},
};
use proxy_common::{
    Backend, Config, CtEntry, CtKey, NodeAddr, ServiceKey, ServiceMeta, ServiceValue, SkippedKey,
    SkippedService, SockRevNatKey, SockRevNatValue, SourceRange, map_names,
};

pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub service_meta: HashMap<MapData, u32, ServiceMeta>,
    pub conntrack: HashMap<MapData, CtKey, CtEntry>,
    pub sock_rev_nat: HashMap<MapData, SockRevNatKey, SockRevNatValue>,
    pub node_addrs: HashMap<MapData, u32, NodeAddr>,
    pub config: Array<MapData, Config>,
    pub source_ranges: LpmTrie<MapData, SourceRange, u32>,
    pub skipped: HashMap<MapData, SkippedKey, SkippedService>,
    pub drops: PerCpuArray<MapData, u64>,
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
            sock_rev_nat: typed!(map_names::SOCK_REV_NAT),
            node_addrs: typed!(map_names::NODE_ADDRS),
            config: typed!(map_names::CONFIG),
            source_ranges: typed!(map_names::SOURCE_RANGES),
            skipped: typed!(map_names::SKIPPED),
            drops: typed!(map_names::DROPS),
        })
    }
}
