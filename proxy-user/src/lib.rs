//! Sluice's daemon and CLI as a library, so the tests drive the same code the binary runs.

pub mod affinity_gc;
pub mod cli;
pub mod clock;
pub mod conntrack_gc;
pub mod daemon;
pub mod datapath;
pub mod health;
pub mod health_check;
pub mod http_server;
pub mod klog;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod programming_latency;
pub mod reconcile;
pub mod sock_term;
pub mod source;
pub mod stats;

/// The eBPF object built from `proxy-ebpf`, embedded so one binary is all a node needs.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice.bpf.o"));
