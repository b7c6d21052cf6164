//! Kernel log records (`proxy_common::klog`) as structured log lines, target `kernel`.

use std::net::SocketAddrV4;

use proxy_common::{
    klog::{LogEvent, LogRecord},
    net::ip_from_net,
    stats::DropReason,
};
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
