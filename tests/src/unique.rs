//! Collision-free name prefixes: `sl-<pid>-<counter>`, unique per harness instance.

use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A new prefix such as `sl-4242-0`. The pid keeps concurrent test binaries apart, the
/// counter keeps concurrent tests inside one binary apart.
pub fn next_prefix() -> String {
    format!(
        "sl-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
