//! An apply's writes collected per map and stage, then sent with one batched write per stage
//! (`BPF_MAP_UPDATE_BATCH` for the kernel's maps): a cold start writes millions of entries, and
//! a call per entry made it take seconds. The stages are the write order readers rely on:
//! counters and backends before the slots that point at them, new source ranges and slots
//! before the heads that enable and count them, internal-scope heads before the default-scope
//! heads that send the socket path to them, and removals of slots and source ranges a head no
//! longer needs after that head.

use anyhow::{Context as _, Result};
use ipnet::Ipv4Net;
use proxy_common::{Backend, ServiceKey, ServiceMeta, ServiceValue};

use super::{Reconciler, frontend_of};
use crate::reconcile::tables::{RangeKey, ServiceTables};

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

/// What `write_backend` and `write_frontend` decided to write, not written yet.
#[derive(Default)]
pub(super) struct Pending {
    /// Backend ids whose counters start from zero.
    backend_counters: Vec<u32>,
    backends: Writes<u32, Backend>,
    /// Service ids whose counters start from zero, with the service's name.
    service_counters: Writes<u32, String>,
    meta: Writes<u32, ServiceMeta>,
    new_ranges: Vec<RangeKey>,
    slots: Writes<ServiceKey, ServiceValue>,
    internal_heads: Writes<ServiceKey, ServiceValue>,
    default_heads: Writes<ServiceKey, ServiceValue>,
    slot_removals: Vec<ServiceKey>,
    range_removals: Vec<(u32, Ipv4Net)>,
}

impl Pending {
    pub(super) fn zero_backend_counters(&mut self, id: u32) {
        self.backend_counters.push(id);
    }

    pub(super) fn backend(&mut self, id: u32, value: Backend) {
        self.backends.push(id, value);
    }

    pub(super) fn zero_service_counters(&mut self, id: u32, name: &str) {
        self.service_counters.push(id, name.to_owned());
    }

    pub(super) fn meta(&mut self, id: u32, meta: ServiceMeta) {
        self.meta.push(id, meta);
    }

    pub(super) fn add_range(&mut self, service_id: u32, net: Ipv4Net) {
        self.new_ranges.push((service_id, net));
    }

    pub(super) fn slot(&mut self, key: ServiceKey, value: ServiceValue) {
        self.slots.push(key, value);
    }

    pub(super) fn head(&mut self, key: ServiceKey, value: ServiceValue, internal: bool) {
        if internal {
            self.internal_heads.push(key, value);
        } else {
            self.default_heads.push(key, value);
        }
    }

    pub(super) fn remove_slot(&mut self, key: ServiceKey) {
        self.slot_removals.push(key);
    }

    pub(super) fn remove_range(&mut self, service_id: u32, net: Ipv4Net) {
        self.range_removals.push((service_id, net));
    }
}

impl Reconciler {
    /// Writes the pending backends and their counters.
    pub(super) fn flush_backends(
        maps: &mut dyn ServiceTables,
        pending: &mut Pending,
    ) -> Result<()> {
        let ids = std::mem::take(&mut pending.backend_counters);
        maps.backend_counters()
            .reset(&ids)
            .map_err(|err| err.with(|at| format!("zero the counters of backend id {}", ids[at])))?;
        let backends = std::mem::take(&mut pending.backends);
        maps.backends()
            .write(&backends.keys, &backends.values)
            .map_err(|err| {
                err.with(|at| {
                    let backend = backends.values[at];
                    format!(
                        "write backend {}:{}",
                        proxy_common::net::ip_from_net(backend.addr),
                        proxy_common::net::port_from_net(backend.port)
                    )
                })
            })
    }

    /// Writes the pending frontends, stage by stage, then removes what they no longer need.
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
        let ranges = &pending.new_ranges;
        maps.source_ranges()
            .write(ranges, &vec![(); ranges.len()])
            .map_err(|err| {
                err.with(|at| {
                    let (service_id, net) = ranges[at];
                    format!("add source range {net} of service id {service_id}")
                })
            })?;
        for writes in [
            &pending.slots,
            &pending.internal_heads,
            &pending.default_heads,
        ] {
            maps.services()
                .write(&writes.keys, &writes.values)
                .map_err(|err| {
                    let full = if err.error.raw_os_error() == Some(libc::E2BIG) {
                        " (the services map is full: see --max-backend-slots)"
                    } else {
                        ""
                    };
                    err.with(|at| {
                        let key = writes.keys[at];
                        let what = if key.slot == 0 {
                            "its head".to_owned()
                        } else {
                            format!("backend slot {}", key.slot)
                        };
                        format!("write service {} ({what}){full}", self.name_of(&key))
                    })
                })?;
        }
        for key in &pending.slot_removals {
            maps.services()
                .remove(key)
                .with_context(|| format!("remove slot {} of {}", key.slot, self.name_of(key)))?;
        }
        for (service_id, net) in &pending.range_removals {
            maps.source_ranges()
                .remove(&(*service_id, *net))
                .with_context(|| format!("remove source range {net} of service id {service_id}"))?;
        }
        Ok(())
    }

    /// The name of the frontend a services-map key belongs to, for errors.
    fn name_of(&self, key: &ServiceKey) -> String {
        frontend_of(key)
            .and_then(|frontend| self.frontends.get(&frontend))
            .map_or_else(|| format!("{key:?}"), |p| p.meta.name().to_owned())
    }
}
