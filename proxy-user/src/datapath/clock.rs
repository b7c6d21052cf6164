//! The datapath's clock on the user side.

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`, which stamps conntrack
/// and affinity entries.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    // CLOCK_MONOTONIC counts up from boot: both fields are non-negative.
    ts.tv_sec.cast_unsigned() * NANOS_PER_SEC + ts.tv_nsec.cast_unsigned()
}
