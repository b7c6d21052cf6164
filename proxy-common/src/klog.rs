//! Kernel log records: fixed-size, typed events the programs write to the `LOG_V1` ring
//! buffer and the daemon turns into structured log lines. Emitted only up to
//! `Config::log_level`, so they cost nothing while off.

use bytemuck::{Pod, Zeroable};

/// One kernel log line. `args` hold addresses (network byte order) and ports (host order, in
/// the low 16 bits) in the order the event's doc gives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct LogRecord {
    /// `LOG_LEVEL_*`.
    pub level: u32,
    /// `LogEvent` as a number.
    pub event: u32,
    pub args: [u32; 6],
}
const _: () = assert!(core::mem::size_of::<LogRecord>() == 32);

/// What a [`LogRecord`] says.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogEvent {
    /// XDP refused a flow: frontend addr, port, client addr, port.
    XdpNoEndpoints = 1,
    /// XDP balanced a new flow: client addr, port, frontend addr, port, backend addr, port.
    XdpNewFlow = 2,
    /// XDP dropped a packet: `DropReason` number.
    XdpDrop = 3,
    /// A socket's connect/sendmsg was refused: frontend addr, port.
    SocketRefused = 4,
    /// A socket was sent to a backend: frontend addr, port, backend addr, port.
    SocketBalanced = 5,
}

impl LogEvent {
    pub const fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            1 => Self::XdpNoEndpoints,
            2 => Self::XdpNewFlow,
            3 => Self::XdpDrop,
            4 => Self::SocketRefused,
            5 => Self::SocketBalanced,
            _ => return None,
        })
    }
}
