//! Memory: what the kernel charges per map element (`bpftool map show`'s `bytes_memlock` over
//! `max_entries`), hence bytes per service and per endpoint, at a given scale.

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use proxy_common::map_names;

use crate::{
    fixture::{self, Loaded, NODE_IP, NODE_PORT},
    stats::ToF64 as _,
};

/// One map as the kernel reports it.
#[derive(Clone, Debug)]
pub struct MapRow {
    pub name: &'static str,
    pub key: u64,
    pub value: u64,
    pub max_entries: u64,
    pub memlock: u64,
}

impl MapRow {
    pub fn per_element(&self) -> f64 {
        self.memlock.to_f64() / self.max_entries.to_f64()
    }
}

#[derive(Clone, Debug)]
pub struct Report {
    pub services: usize,
    pub endpoints: usize,
    pub maps: Vec<MapRow>,
    /// Kernel bytes one service costs (its slot-0 entry and meta entry).
    pub per_service: f64,
    /// Kernel bytes one endpoint costs (its slot and, if its pod is new, its backend).
    pub per_endpoint: f64,
    /// Key + value bytes only.
    pub payload_service: u64,
    pub payload_endpoint: u64,
}

pub fn run(services: usize, endpoints: usize) -> Result<Report> {
    let mut loaded = Loaded::new(&fixture::sizes(services, endpoints, 1)?)?;
    let identity = vec![std::net::SocketAddrV4::new(NODE_IP, NODE_PORT); endpoints];
    loaded.fill(services, endpoints, &identity)?;
    let mut maps = Vec::new();
    for name in [
        map_names::SERVICES,
        map_names::BACKENDS,
        map_names::SERVICE_META,
        map_names::CONNTRACK,
    ] {
        let map = loaded.ebpf.map(name).context("map missing")?;
        let (aya::maps::Map::HashMap(data) | aya::maps::Map::LruHashMap(data)) = map else {
            bail!("{name} is not a hash map");
        };
        let id = data.info()?.id();
        let out = Command::new("bpftool")
            .args(["map", "show", "id", &id.to_string(), "-j"])
            .output()
            .context("run bpftool (apt-get install bpftool)")?;
        if !out.status.success() {
            bail!(
                "bpftool map show id {id}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let field = |f: &str| {
            json.get(f)
                .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
                .with_context(|| format!("bpftool gave no {f} for {name}"))
        };
        maps.push(MapRow {
            name,
            key: field("bytes_key")?,
            value: field("bytes_value")?,
            max_entries: field("max_entries")?,
            memlock: field("bytes_memlock")?,
        });
    }
    let get = |name: &str| maps.iter().find(|m| m.name == name).expect("listed above");
    let (svc, backend, meta) = (
        get(map_names::SERVICES),
        get(map_names::BACKENDS),
        get(map_names::SERVICE_META),
    );
    Ok(Report {
        services,
        endpoints,
        per_service: svc.per_element() + meta.per_element(),
        per_endpoint: svc.per_element() + backend.per_element(),
        payload_service: svc.key + svc.value + meta.key + meta.value,
        payload_endpoint: svc.key + svc.value + backend.key + backend.value,
        maps,
    })
}
