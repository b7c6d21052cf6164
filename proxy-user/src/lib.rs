//! Sluice's daemon and CLI as a library, so the tests drive the same code the binary runs.

//!
//! Layers, each a folder, every import pointing down (docs/architecture.md):
//! `datapath` (the kernel side: loader, maps, read views, iterators) < `model` (the desired
//! state) < `reconcile` (desired state to map entries) < `source` (manifests, the Kubernetes
//! API) < `node` (health, metrics, GC tasks, socket termination) < `daemon` (the sync loop) <
//! `cli` (printing).

pub mod cli;
pub mod daemon;
pub mod datapath;
/// The fuzz targets' entries (`fuzz/`), beside the layers: each drives one of them on raw input.
pub mod fuzz_input;
pub mod model;
pub mod node;
/// Below every layer: the one parser of `LOW-HIGH` port ranges, for flags of any of them.
pub mod port_range;
pub mod reconcile;
pub mod source;

/// The eBPF object built from `proxy-ebpf`, embedded so one binary is all a node needs.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice.bpf.o"));
