//! The node services around the datapath: /healthz and /livez, service health-check ports,
//! /metrics, Events, the conntrack and affinity GC tasks, socket termination and kernel log
//! forwarding.

pub mod affinity_gc;
pub mod conntrack_gc;
pub mod events;
pub mod healthz;
pub mod http_server;
pub mod kernel_log;
pub mod map_fill;
pub mod metrics;
pub mod no_local_endpoints;
pub mod programming_latency;
pub mod service_addrs;
pub mod service_health;
pub mod service_index;
pub mod sock_term;
