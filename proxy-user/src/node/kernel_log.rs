//! Kernel log lines: the programs' aya-log records, read as they arrive and logged through
//! `log` into this daemon's tracing subscriber (target `kernel`, formatted and filtered like
//! every other line).

use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::warn;

/// Logs the programs' records as they arrive. The programs only write them when switched on
/// (`--kernel-log-level`, `sluice log-level`).
pub async fn forward(logger: EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer's fd, which stays open and the same until the
    // AsyncFd (which owns the logger) is dropped.
    let registered = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) };
    let mut logger = match registered {
        Ok(logger) => logger,
        Err(err) => {
            warn!("kernel log lines cannot be read: {err}");
            return;
        }
    };
    loop {
        let mut guard = match logger.readable_mut().await {
            Ok(guard) => guard,
            Err(err) => {
                warn!("kernel log lines cannot be read: {err}");
                return;
            }
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
