//! Per-CPU counters (`proxy_common::stats`): each program adds to its own CPU's slot, so no
//! atomics; readers sum over CPUs. Frontend and backend traffic live in arrays indexed by the
//! daemon's service and backend ids (it keeps them below the arrays' sizes and zeroes a slot
//! when it hands out its id): an array lookup is inlined by the verifier, a hash lookup is not.

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};
use proxy_common::{
    CONFIG_F_COUNTERS, map_sizes,
    stats::{DROP_SLOTS, DropReason, HOOK_SLOTS, Hook, PASS_SLOTS, PassReason, Traffic, hook_slot},
};

use crate::{maps::CONFIG, outcome::Outcome};

#[btf_map(name = "SVC_STATS_V2")]
static SERVICE_STATS: PerCpuArray<Traffic, { map_sizes::SERVICE_META as usize }> =
    PerCpuArray::new();

#[btf_map(name = "BE_STATS_V2")]
static BACKEND_STATS: PerCpuArray<Traffic, { map_sizes::BACKENDS as usize }> = PerCpuArray::new();

#[btf_map(name = "DROP_STATS_V1")]
static DROP_STATS: PerCpuArray<u64, { DROP_SLOTS as usize }> = PerCpuArray::new();

#[btf_map(name = "PASS_STATS_V1")]
static PASS_STATS: PerCpuArray<u64, { PASS_SLOTS as usize }> = PerCpuArray::new();

#[btf_map(name = "HOOK_STATS_V2")]
static HOOK_STATS: PerCpuArray<u64, { HOOK_SLOTS as usize }> = PerCpuArray::new();

#[inline(always)]
fn enabled() -> bool {
    CONFIG
        .get(0)
        .is_some_and(|config| config.flags & CONFIG_F_COUNTERS != 0)
}

#[inline(always)]
fn bump(counter: Option<*mut u64>) {
    if let Some(counter) = counter {
        // SAFETY: a per-CPU slot: only this CPU writes it, and the pointer is the map's.
        unsafe { *counter += 1 };
    }
}

/// Counts a hook's verdict (its raw return value).
#[inline(always)]
pub fn verdict(hook: Hook, verdict: u32) {
    if enabled() {
        bump(HOOK_STATS.get_ptr_mut(hook_slot(hook, verdict)));
    }
}

#[inline(always)]
pub fn drop(reason: DropReason) {
    if enabled() {
        bump(DROP_STATS.get_ptr_mut(reason as u32));
    }
}

/// Counts what `outcome` says an error is counted as: a drop, or a packet passed untranslated.
#[inline(always)]
pub fn outcome(outcome: Outcome) {
    if let Some(reason) = outcome.counted {
        drop(reason);
    }
    if let Some(reason) = outcome.passed {
        pass(reason);
    }
}

/// Counts a packet passed untranslated for `reason`.
#[inline(always)]
pub fn pass(reason: PassReason) {
    if enabled() {
        bump(PASS_STATS.get_ptr_mut(reason as u32));
    }
}

/// Which way a packet of a flow goes.
#[derive(Clone, Copy)]
pub enum Direction {
    /// Client to backend; `new` when it opens the flow.
    In { new: bool },
    /// Backend to client.
    Out,
}

/// Adds one packet of `bytes` (or one new socket, with `bytes` 0 and `In { new: true }`) to
/// the frontend's and the backend's traffic.
#[inline(always)]
pub fn traffic(service_id: u32, backend_id: u32, direction: Direction, bytes: u16) {
    if !enabled() {
        return;
    }
    // Two separate updates: each pointer gets its own null check, which the verifier needs.
    add(SERVICE_STATS.get_ptr_mut(service_id), direction, bytes);
    add(BACKEND_STATS.get_ptr_mut(backend_id), direction, bytes);
}

#[inline(always)]
fn add(counter: Option<*mut Traffic>, direction: Direction, bytes: u16) {
    let Some(counter) = counter else {
        return;
    };
    // SAFETY: a per-CPU value: only this CPU writes it, and the pointer is the map's.
    let traffic = unsafe { &mut *counter };
    match direction {
        Direction::In { new } => {
            if bytes > 0 {
                traffic.packets_in += 1;
                traffic.bytes_in += u64::from(bytes);
            }
            if new {
                traffic.connections += 1;
            }
        }
        Direction::Out => {
            traffic.packets_out += 1;
            traffic.bytes_out += u64::from(bytes);
        }
    }
}
