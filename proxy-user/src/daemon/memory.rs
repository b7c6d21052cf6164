//! The daemon's heap: few arenas, and memory freed after a large removal given back.
//!
//! glibc's allocator keeps what a thread frees in that thread's arena for reuse. A daemon that
//! once held 10k Services and now holds a handful would keep their peak RSS for good, and each
//! tokio worker that happened to build a large state keeps its own peak: RSS then steps up
//! round after round of create-and-delete although nothing leaks. `malloc_trim` returns the
//! free pages of every arena.

/// Arenas glibc may create: one per thread by default (up to 8 per core), each keeping its own
/// peak. The daemon allocates little per second, off the packet path, so contention does not
/// matter and two arenas keep its RSS close to what it holds.
const ARENAS: i32 = 2;

/// Caps the allocator's arenas; call before the runtime starts its threads.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX takes any positive count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Syncs that wrote or removed fewer frontends than this leave freed memory to be reused:
/// trimming walks every arena, which a churn of a few Services a second should not pay for.
/// A larger one followed a large change of the sources, whose parsing (manifests as YAML
/// trees, several times their size) freed far more than the state kept.
pub const TRIM_AFTER_CHANGED: usize = 256;

/// Returns freed heap pages to the kernel (glibc only; elsewhere the allocator decides).
pub fn return_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
