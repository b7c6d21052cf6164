//! Kernel log lines: typed records in the `LOG_V1` ring buffer (`proxy_common::klog`),
//! written only up to `CONFIG_V1.log_level`: off by default, switched at run time by
//! `sluice log-level` without reloading anything. The daemon turns them into log lines.

use aya_ebpf::{btf_maps::RingBuf, macros::btf_map};
use proxy_common::klog::{LogEvent, LogRecord};

use crate::maps::CONFIG;

/// 256 KiB: a burst of 8192 records before the oldest unread ones are lost.
#[btf_map(name = "LOG_V1")]
static LOG: RingBuf<LogRecord, { 256 * 1024 }> = RingBuf::new();

/// Writes one record when `level` (`proxy_common::LOG_LEVEL_*`) is switched on.
#[inline(always)]
pub fn emit(level: u32, event: LogEvent, args: [u32; 6]) {
    let wanted = CONFIG
        .get(0)
        .is_some_and(|config| config.log_level >= level);
    if wanted {
        let record = LogRecord {
            level,
            event: event as u32,
            args,
        };
        // A full ring buffer loses the line, never the packet.
        let _ = LOG.output(&record, 0);
    }
}
