//! Kernel log records (`proxy_common::klog`) as structured log lines, target `kernel`.

use std::net::SocketAddrV4;

use aya::maps::{MapData, RingBuf};

use proxy_common::{
    klog::{LogEvent, LogRecord},
    net::ip_from_net,
    stats::DropReason,
};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{debug, trace, warn};

fn addr(ip: u32, port: u32) -> SocketAddrV4 {
    SocketAddrV4::new(ip_from_net(ip), port as u16)
}

pub fn log(record: &LogRecord) {
    let a = record.args;
    match LogEvent::from_u32(record.event) {
        Some(LogEvent::XdpNoEndpoints) => debug!(
            target: "kernel",
            frontend = %addr(a[0], a[1]),
            client = %addr(a[2], a[3]),
            "xdp: no endpoints, flow refused"
        ),
        Some(LogEvent::XdpNewFlow) => trace!(
            target: "kernel",
            client = %addr(a[0], a[1]),
            frontend = %addr(a[2], a[3]),
            backend = %addr(a[4], a[5]),
            "xdp: new flow"
        ),
        Some(LogEvent::XdpDrop) => {
            let reason = DropReason::ALL
                .iter()
                .find(|reason| **reason as u32 == a[0])
                .map_or("?", |reason| reason.as_str());
            debug!(target: "kernel", reason, "xdp: packet dropped");
        }
        Some(LogEvent::SocketRefused) => debug!(
            target: "kernel",
            frontend = %addr(a[0], a[1]),
            "socket: no endpoints, connection refused"
        ),
        Some(LogEvent::SocketBalanced) => trace!(
            target: "kernel",
            frontend = %addr(a[0], a[1]),
            backend = %addr(a[2], a[3]),
            "socket: sent to a backend"
        ),
        None => warn!(target: "kernel", event = record.event, "unknown kernel log record"),
    }
}

/// Turns the programs' log records into log lines (target `kernel`) as they arrive. The
/// programs only write them when switched on (`--kernel-log-level`, `sluice log-level`).
pub async fn forward(ring: RingBuf<MapData>) {
    // SAFETY: the ring buffer owns its fd, which stays open and the same until the AsyncFd
    // (which owns the ring buffer) is dropped.
    let registered = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) };
    let mut ring = match registered {
        Ok(ring) => ring,
        Err(err) => {
            tracing::warn!("kernel log lines cannot be read: {err}");
            return;
        }
    };
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(guard) => guard,
            Err(err) => {
                tracing::warn!("kernel log lines cannot be read: {err}");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<LogRecord>() {
                log(&bytemuck::pod_read_unaligned(
                    &item[..size_of::<LogRecord>()],
                ));
            }
        }
        guard.clear_ready();
    }
}
