//! Kernel log lines: aya-log records (target `kernel`), written only up to
//! `CONFIG_V1.log_level`: off by default, switched at run time by `sluice log-level` without
//! reloading anything. The daemon's `aya_log::EbpfLogger` turns them into log lines.
//!
//! aya-log's own level (`AYA_LOG_LEVEL`) is a read-only global the loader can only set before
//! the programs load, so it stays at "everything" and this gate is the level that counts.

use proxy_common::Config;

use crate::maps::CONFIG;

/// The target every kernel log line carries, as the daemon's log filter sees it.
pub const TARGET: &str = "kernel";

/// Whether lines of `level` (`proxy_common::LOG_LEVEL_*`) are switched on.
#[inline(always)]
pub fn enabled(level: u32) -> bool {
    CONFIG
        .get(0)
        .is_some_and(|config: &Config| config.log_level >= level)
}

/// A `debug` line (`aya_log_ebpf::debug!` arguments after the context), when switched on.
macro_rules! debug {
    ($ctx:expr, $($arg:tt)+) => {
        if $crate::klog::enabled(proxy_common::LOG_LEVEL_DEBUG) {
            aya_log_ebpf::debug!($ctx, target: $crate::klog::TARGET, $($arg)+);
        }
    };
}

/// A `trace` line, as [`debug!`].
macro_rules! trace {
    ($ctx:expr, $($arg:tt)+) => {
        if $crate::klog::enabled(proxy_common::LOG_LEVEL_TRACE) {
            aya_log_ebpf::trace!($ctx, target: $crate::klog::TARGET, $($arg)+);
        }
    };
}

pub(crate) use debug;
pub(crate) use trace;
