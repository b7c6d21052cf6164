//! An apply's writes collected per map and stage, then sent with one batched write per stage
//! (`BPF_MAP_UPDATE_BATCH` for the kernel's maps): a cold start writes millions of entries, and
//! a call per entry made it take seconds. The stages are the write order readers rely on:
//! counters and backends before the slots that point at them, new source ranges and slots
//! before the heads that enable and count them, internal-scope heads before the default-scope
//! heads that send the socket path to them, and removals of slots and source ranges a head no
//! longer needs after that head. Each stage is written in both families' maps before the next.

use anyhow::{Context as _, Result};
use ipnet::IpNet;
use proxy_common::{Addr6, BackendOf, ServiceKeyOf, ServiceMeta, ServiceValue};

use super::{
    Reconciler,
    family::{AnyServiceKey, Family, backend_socket, frontend_of},
};
use crate::reconcile::{plan::BackendAddr, tables::ServiceTables};

/// Keys and values of one map, in write order.
struct Writes<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
}

impl<K, V> Default for Writes<K, V> {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            values: Vec::new(),
        }
    }
}

impl<K, V> Writes<K, V> {
    fn push(&mut self, key: K, value: V) {
        self.keys.push(key);
        self.values.push(value);
    }
}

/// The pending writes to one family's own maps (services, backends, source ranges).
struct FamilyWrites<A: Family> {
    backends: Writes<u32, BackendOf<A>>,
    new_ranges: Vec<(u32, A::Net)>,
    slots: Writes<ServiceKeyOf<A>, ServiceValue>,
    internal_heads: Writes<ServiceKeyOf<A>, ServiceValue>,
    default_heads: Writes<ServiceKeyOf<A>, ServiceValue>,
    slot_removals: Vec<ServiceKeyOf<A>>,
    range_removals: Vec<(u32, A::Net)>,
}

impl<A: Family> Default for FamilyWrites<A> {
    fn default() -> Self {
        Self {
            backends: Writes::default(),
            new_ranges: Vec::new(),
            slots: Writes::default(),
            internal_heads: Writes::default(),
            default_heads: Writes::default(),
            slot_removals: Vec::new(),
            range_removals: Vec::new(),
        }
    }
}

/// What `write_backend` and `write_frontend` decided to write, not written yet: the maps both
/// families share (counters, metadata), and each family's own.
#[derive(Default)]
pub(super) struct Pending {
    /// Backend ids whose counters start from zero.
    backend_counters: Vec<u32>,
    /// Service ids whose counters start from zero, with the service's name.
    service_counters: Writes<u32, String>,
    meta: Writes<u32, ServiceMeta>,
    v4: FamilyWrites<u32>,
    v6: FamilyWrites<Addr6>,
}

impl Pending {
    pub(super) fn zero_backend_counters(&mut self, id: u32) {
        self.backend_counters.push(id);
    }

    /// Queues backend `id` in its family's map.
    pub(super) fn backend(&mut self, id: u32, addr: BackendAddr, flags: u8) {
        fn push<A: Family>(writes: &mut FamilyWrites<A>, id: u32, addr: BackendAddr, flags: u8) {
            let value = super::family::backend_value(addr, flags).expect("family checked");
            writes.backends.push(id, value);
        }
        if addr.addr.is_ipv4() {
            push(&mut self.v4, id, addr, flags);
        } else {
            push(&mut self.v6, id, addr, flags);
        }
    }

    pub(super) fn zero_service_counters(&mut self, id: u32, name: &str) {
        self.service_counters.push(id, name.to_owned());
    }

    pub(super) fn meta(&mut self, id: u32, meta: ServiceMeta) {
        self.meta.push(id, meta);
    }

    pub(super) fn add_range(&mut self, service_id: u32, net: IpNet) {
        match net {
            IpNet::V4(net) => self.v4.new_ranges.push((service_id, net)),
            IpNet::V6(net) => self.v6.new_ranges.push((service_id, net)),
        }
    }

    pub(super) fn slot(&mut self, key: AnyServiceKey, value: ServiceValue) {
        match key {
            AnyServiceKey::V4(key) => self.v4.slots.push(key, value),
            AnyServiceKey::V6(key) => self.v6.slots.push(key, value),
        }
    }

    pub(super) fn head(&mut self, key: AnyServiceKey, value: ServiceValue, internal: bool) {
        match (key, internal) {
            (AnyServiceKey::V4(key), true) => self.v4.internal_heads.push(key, value),
            (AnyServiceKey::V4(key), false) => self.v4.default_heads.push(key, value),
            (AnyServiceKey::V6(key), true) => self.v6.internal_heads.push(key, value),
            (AnyServiceKey::V6(key), false) => self.v6.default_heads.push(key, value),
        }
    }

    pub(super) fn remove_slot(&mut self, key: AnyServiceKey) {
        match key {
            AnyServiceKey::V4(key) => self.v4.slot_removals.push(key),
            AnyServiceKey::V6(key) => self.v6.slot_removals.push(key),
        }
    }

    pub(super) fn remove_range(&mut self, service_id: u32, net: IpNet) {
        match net {
            IpNet::V4(net) => self.v4.range_removals.push((service_id, net)),
            IpNet::V6(net) => self.v6.range_removals.push((service_id, net)),
        }
    }
}

/// The stages of the frontends' writes to one family's maps, in order.
#[derive(Clone, Copy)]
enum Stage {
    NewRanges,
    Slots,
    InternalHeads,
    DefaultHeads,
    Removals,
}

impl Reconciler {
    /// Writes the pending backends of both families and their counters.
    pub(super) fn flush_backends(
        maps: &mut dyn ServiceTables,
        pending: &mut Pending,
    ) -> Result<()> {
        let ids = std::mem::take(&mut pending.backend_counters);
        maps.backend_counters()
            .reset(&ids)
            .map_err(|err| err.with(|at| format!("zero the counters of backend id {}", ids[at])))?;
        write_backends(maps, &std::mem::take(&mut pending.v4.backends))?;
        write_backends(maps, &std::mem::take(&mut pending.v6.backends))
    }

    /// Writes the pending frontends, stage by stage (each stage in both families before the
    /// next), then removes what they no longer need.
    pub(super) fn flush_frontends(
        &self,
        maps: &mut dyn ServiceTables,
        pending: &mut Pending,
    ) -> Result<()> {
        let pending = std::mem::take(pending);
        let counters = &pending.service_counters;
        maps.service_counters()
            .reset(&counters.keys)
            .map_err(|err| {
                err.with(|at| format!("zero the counters of service {}", counters.values[at]))
            })?;
        let meta = &pending.meta;
        maps.service_meta()
            .write(&meta.keys, &meta.values)
            .map_err(|err| err.with(|at| format!("write service {}", meta.values[at].name())))?;
        for stage in [
            Stage::NewRanges,
            Stage::Slots,
            Stage::InternalHeads,
            Stage::DefaultHeads,
            Stage::Removals,
        ] {
            self.flush_stage(maps, &pending.v4, stage)?;
            self.flush_stage(maps, &pending.v6, stage)?;
        }
        Ok(())
    }

    /// One stage of the frontends' writes to one family's maps.
    fn flush_stage<A: Family>(
        &self,
        maps: &mut dyn ServiceTables,
        pending: &FamilyWrites<A>,
        stage: Stage,
    ) -> Result<()> {
        let services = match stage {
            Stage::NewRanges => {
                let ranges = &pending.new_ranges;
                return A::source_ranges(maps)
                    .write(ranges, &vec![(); ranges.len()])
                    .map_err(|err| {
                        err.with(|at| {
                            let (service_id, net) = ranges[at];
                            format!("add source range {net} of service id {service_id}")
                        })
                    });
            }
            Stage::Removals => {
                for key in &pending.slot_removals {
                    A::services(maps).remove(key).with_context(|| {
                        format!("remove slot {} of {}", key.slot, self.name_of(key))
                    })?;
                }
                for (service_id, net) in &pending.range_removals {
                    A::source_ranges(maps)
                        .remove(&(*service_id, *net))
                        .with_context(|| {
                            format!("remove source range {net} of service id {service_id}")
                        })?;
                }
                return Ok(());
            }
            Stage::Slots => &pending.slots,
            Stage::InternalHeads => &pending.internal_heads,
            Stage::DefaultHeads => &pending.default_heads,
        };
        A::services(maps)
            .write(&services.keys, &services.values)
            .map_err(|err| {
                let full = if err.error.raw_os_error() == Some(libc::E2BIG) {
                    " (the services map is full: see --max-backend-slots)"
                } else {
                    ""
                };
                err.with(|at| {
                    let key = services.keys[at];
                    let what = if key.slot == 0 {
                        "its head".to_owned()
                    } else {
                        format!("backend slot {}", key.slot)
                    };
                    format!("write service {} ({what}){full}", self.name_of(&key))
                })
            })
    }

    /// The name of the frontend a services-map key belongs to, for errors.
    fn name_of<A: Family>(&self, key: &ServiceKeyOf<A>) -> String {
        frontend_of(key)
            .and_then(|frontend| self.frontends.get(&frontend))
            .map_or_else(|| format!("{key:?}"), |p| p.meta.name().to_owned())
    }
}

fn write_backends<A: Family>(
    maps: &mut dyn ServiceTables,
    backends: &Writes<u32, BackendOf<A>>,
) -> Result<()> {
    A::backends(maps)
        .write(&backends.keys, &backends.values)
        .map_err(|err| {
            err.with(|at| format!("write backend {}", backend_socket(&backends.values[at])))
        })
}
