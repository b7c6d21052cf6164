//! Typed read views of the pinned maps: what the CLI prints and /metrics exports, read the
//! same way for both.

pub mod services;
pub mod stats;
