//! Reads the datapath's per-CPU counters from the maps, summed over CPUs: for `sluice stats`
//! and for /metrics.

use std::net::IpAddr;

use anyhow::Result;
use proxy_common::stats::{DropReason, HOOK_SLOTS, Hook, PassReason, Traffic, VERDICTS_PER_HOOK};
use serde::Serialize;

use super::services;
use crate::datapath::Maps;

#[derive(Debug, Serialize)]
pub struct Stats {
    pub services: Vec<ServiceStats>,
    pub backends: Vec<BackendStats>,
    pub drops: Vec<DropStats>,
    /// Packets passed to the stack untranslated on purpose (not drops).
    pub passes: Vec<PassStats>,
    pub hooks: Vec<HookStats>,
}

#[derive(Debug, Serialize)]
pub struct ServiceStats {
    pub name: String,
    pub frontend: String,
    pub protocol: &'static str,
    #[serde(flatten)]
    pub traffic: TrafficRow,
}

#[derive(Debug, Serialize)]
pub struct BackendStats {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
    #[serde(flatten)]
    pub traffic: TrafficRow,
}

/// [`Traffic`] as the CLI and metrics show it.
#[derive(Debug, Default, Serialize)]
pub struct TrafficRow {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub connections: u64,
}

impl From<Traffic> for TrafficRow {
    fn from(t: Traffic) -> Self {
        Self {
            packets_in: t.packets_in,
            bytes_in: t.bytes_in,
            packets_out: t.packets_out,
            bytes_out: t.bytes_out,
            connections: t.connections,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DropStats {
    pub reason: &'static str,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct PassStats {
    pub reason: &'static str,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct HookStats {
    pub hook: &'static str,
    pub verdict: &'static str,
    pub count: u64,
}

fn sum(values: &[Traffic]) -> Traffic {
    values.iter().fold(Traffic::default(), |mut total, t| {
        total.add(t);
        total
    })
}

pub fn read(maps: &Maps) -> Result<Stats> {
    let mut services = Vec::new();
    for row in services::read(maps)?
        .into_iter()
        .filter(|row| row.programmed)
    {
        let traffic = maps
            .service_stats
            .get(&row.service_id, 0)
            .map(|values| sum(&values))
            .unwrap_or_default();
        services.push(ServiceStats {
            name: row.name,
            frontend: row.frontend,
            protocol: row.protocol,
            traffic: traffic.into(),
        });
    }

    let mut backends = Vec::new();
    for backend in super::all_backends(maps)? {
        let traffic = maps
            .backend_stats
            .get(&backend.id, 0)
            .map(|values| sum(&values))
            .unwrap_or_default();
        backends.push(BackendStats {
            id: backend.id,
            addr: backend.addr,
            port: backend.port,
            traffic: traffic.into(),
        });
    }
    backends.sort_by_key(|b| (b.addr, b.port));

    let drops = DropReason::ALL
        .iter()
        .map(|&reason| {
            let count = maps
                .drop_stats
                .get(&(reason as u32), 0)
                .map_or(0, |values| values.iter().sum());
            Ok(DropStats {
                reason: reason.as_str(),
                count,
            })
        })
        .collect::<Result<_>>()?;

    let passes = PassReason::ALL
        .iter()
        .map(|&reason| PassStats {
            reason: reason.as_str(),
            count: maps
                .pass_stats
                .get(&(reason as u32), 0)
                .map_or(0, |values| values.iter().sum()),
        })
        .collect();

    let mut hooks = Vec::new();
    for slot in 0..HOOK_SLOTS {
        let Some(&hook) = Hook::ALL.get((slot / VERDICTS_PER_HOOK) as usize) else {
            break;
        };
        let count: u64 = maps
            .hook_stats
            .get(&slot, 0)
            .map_or(0, |values| values.iter().sum());
        if count > 0 {
            hooks.push(HookStats {
                hook: hook.as_str(),
                verdict: hook.verdict_name(slot % VERDICTS_PER_HOOK),
                count,
            });
        }
    }
    Ok(Stats {
        services,
        backends,
        drops,
        passes,
        hooks,
    })
}
