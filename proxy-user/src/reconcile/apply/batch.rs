//! An apply's writes collected per map and stage, then sent with one bpf(2) call per chunk
//! (BPF_MAP_UPDATE_BATCH): a cold start writes millions of entries, and a call per entry made
//! it take seconds. The stages keep the order readers rely on: counters and backends before
//! the slots that point at them, slots before the heads that count them, internal-scope heads
//! before the default-scope heads that send the socket path to them, and removals of slots and
//! source ranges a head no longer needs after that head.

use std::os::fd::AsFd;

use anyhow::{Context as _, Result};
use ipnet::Ipv4Net;
use proxy_common::{Backend, ServiceKey, ServiceMeta, ServiceValue};

use super::{Reconciler, frontend_of, range_key, remove_if_present};
use crate::datapath::{Maps, update_batch, zero_traffic_slots};

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
    pub(super) fn flush_backends(&self, maps: &Maps, pending: &mut Pending) -> Result<()> {
        let zeros = zero_traffic_slots(pending.backend_counters.len())?;
        let ids = &pending.backend_counters;
        update_batch(maps.batch.backend_stats.as_fd(), ids, &zeros).map_err(|err| {
            anyhow::Error::new(err.error).context(format!(
                "zero the counters of backend id {}",
                ids[err.index]
            ))
        })?;
        pending.backend_counters.clear();
        let backends = &pending.backends;
        update_batch(
            maps.batch.backends.as_fd(),
            &backends.keys,
            &backends.values,
        )
        .map_err(|err| {
            let backend = backends.values[err.index];
            anyhow::Error::new(err.error).context(format!(
                "write backend {}:{}",
                proxy_common::net::ip_from_net(backend.addr),
                proxy_common::net::port_from_net(backend.port)
            ))
        })?;
        pending.backends = Writes::default();
        Ok(())
    }

    /// Writes the pending frontends, stage by stage, then removes what they no longer need.
    pub(super) fn flush_frontends(&self, maps: &mut Maps, pending: &mut Pending) -> Result<()> {
        let counters = &pending.service_counters;
        let zeros = zero_traffic_slots(counters.keys.len())?;
        update_batch(maps.batch.service_stats.as_fd(), &counters.keys, &zeros).map_err(|err| {
            anyhow::Error::new(err.error).context(format!(
                "zero the counters of service {}",
                counters.values[err.index]
            ))
        })?;
        let meta = &pending.meta;
        update_batch(maps.batch.service_meta.as_fd(), &meta.keys, &meta.values).map_err(|err| {
            anyhow::Error::new(err.error)
                .context(format!("write service {}", meta.values[err.index].name()))
        })?;
        for writes in [
            &pending.slots,
            &pending.internal_heads,
            &pending.default_heads,
        ] {
            update_batch(maps.batch.services.as_fd(), &writes.keys, &writes.values).map_err(
                |err| {
                    let key = writes.keys[err.index];
                    let full = if err.error.raw_os_error() == Some(libc::E2BIG) {
                        " (the services map is full: see --max-backend-slots)"
                    } else {
                        ""
                    };
                    let what = if key.slot == 0 {
                        "its head".to_owned()
                    } else {
                        format!("backend slot {}", key.slot)
                    };
                    anyhow::Error::new(err.error).context(format!(
                        "write service {} ({what}){full}",
                        self.name_of(&key)
                    ))
                },
            )?;
        }
        for key in std::mem::take(&mut pending.slot_removals) {
            remove_if_present(maps.services.remove(&key))
                .with_context(|| format!("remove slot {} of {}", key.slot, self.name_of(&key)))?;
        }
        for (service_id, net) in std::mem::take(&mut pending.range_removals) {
            remove_if_present(maps.source_ranges.remove(&range_key(service_id, &net)))
                .with_context(|| format!("remove source range {net} of service id {service_id}"))?;
        }
        *pending = Pending::default();
        Ok(())
    }

    /// The name of the frontend a services-map key belongs to, for errors.
    fn name_of(&self, key: &ServiceKey) -> String {
        frontend_of(key)
            .and_then(|frontend| self.frontends.get(&frontend))
            .map_or_else(|| format!("{key:?}"), |p| p.meta.name().to_owned())
    }
}
