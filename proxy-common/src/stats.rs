//! Per-CPU counters: traffic per service frontend and per backend, drops by reason, verdicts
//! per hook. The same reasons and hooks name the CLI's rows and the metrics' labels.

use bytemuck::{Pod, Zeroable};

/// Traffic of one frontend or backend, summed by the reader over CPUs. Packets "in" go from
/// clients to backends, "out" are the replies; bytes are IPv4 total lengths.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Traffic {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// New flows (packet path) or translated sockets (socket path).
    pub connections: u64,
}
const _: () = assert!(core::mem::size_of::<Traffic>() == 40);

impl Traffic {
    pub fn add(&mut self, other: &Traffic) {
        self.packets_in += other.packets_in;
        self.bytes_in += other.bytes_in;
        self.packets_out += other.packets_out;
        self.bytes_out += other.bytes_out;
        self.connections += other.connections;
    }
}

/// Why the datapath dropped or refused a packet or a connection; the index in `DROP_STATS_V1`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The service has no endpoints: refused (TCP RST, ICMP port unreachable, ECONNREFUSED).
    NoEndpoints = 0,
    /// The client is outside the service's loadBalancerSourceRanges.
    SourceRange = 1,
    /// externalTrafficPolicy Local and no endpoint on this node.
    NoLocalEndpoint = 2,
    /// A remote backend was chosen but no SNAT address is configured.
    NoSnatAddress = 3,
    /// Every SNAT port tried was taken.
    NoSnatPort = 4,
    /// A conntrack entry could not be written (map full or busy).
    ConntrackFull = 5,
    /// The chosen slot or backend vanished under a concurrent update.
    NoBackend = 6,
    /// The packet could not be resized or rewritten.
    Rewrite = 7,
    /// To a cluster IP, on a port (or protocol) none of its frontends serves: refused.
    UnservedPort = 8,
    /// To an address of a service CIDR that no Service holds: refused.
    UnallocatedServiceIp = 9,
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
        Self::NoEndpoints,
        Self::SourceRange,
        Self::NoLocalEndpoint,
        Self::NoSnatAddress,
        Self::NoSnatPort,
        Self::ConntrackFull,
        Self::NoBackend,
        Self::Rewrite,
        Self::UnservedPort,
        Self::UnallocatedServiceIp,
    ];

    /// The label in the CLI and in metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoEndpoints => "no_endpoints",
            Self::SourceRange => "source_range",
            Self::NoLocalEndpoint => "no_local_endpoint",
            Self::NoSnatAddress => "no_snat_address",
            Self::NoSnatPort => "no_snat_port",
            Self::ConntrackFull => "conntrack_full",
            Self::NoBackend => "no_backend",
            Self::Rewrite => "rewrite_failed",
            Self::UnservedPort => "unserved_port",
            Self::UnallocatedServiceIp => "unallocated_service_ip",
        }
    }
}

/// Slots in `DROP_STATS_V1` (room to add reasons without a new map).
pub const DROP_SLOTS: u32 = 16;

/// Why `xdp_ingress` or `tc_egress` passed a packet on with less than the full treatment,
/// although it may be for a service: not a drop (the stack still handles it), but worth
/// seeing. Mostly traffic Sluice cannot translate (passed untranslated); `CtEstablishedFull`
/// is a translated packet whose flow could not be made safe from eviction. The index in
/// `PASS_STATS_V1`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassReason {
    /// A later fragment of a service's datagram whose first fragment was not seen here (or
    /// started no flow): no L4 header to place it by.
    Fragment = 0,
    /// An IPv6 chain of more extension headers than the parser walks before TCP/UDP.
    Ipv6ExtensionHeaders = 1,
    /// A flow's reply confirmed it, but the established conntrack map (`CT_EST_V1`,
    /// `CT6_EST_V1`, `--ct-established-max-entries`) is full: the packet is translated and
    /// the flow stays in the LRU map of new flows, where a flood of new flows may evict it.
    /// Counted once per reply packet that found it so.
    CtEstablishedFull = 2,
}

impl PassReason {
    pub const ALL: [PassReason; 3] = [
        Self::Fragment,
        Self::Ipv6ExtensionHeaders,
        Self::CtEstablishedFull,
    ];

    /// The label in the CLI and in metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Fragment => "fragment",
            Self::Ipv6ExtensionHeaders => "ipv6_extension_headers",
            Self::CtEstablishedFull => "ct_established_full",
        }
    }
}

/// Slots in `PASS_STATS_V1`.
pub const PASS_SLOTS: u32 = 16;

/// A program whose verdicts are counted in `HOOK_STATS_V2`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp = 0,
    TcIngress = 1,
    TcEgress = 2,
    Connect4 = 3,
    Sendmsg4 = 4,
    Recvmsg4 = 5,
    Getpeername4 = 6,
    Connect6 = 7,
    Sendmsg6 = 8,
    Recvmsg6 = 9,
    Getpeername6 = 10,
    FromPod = 11,
    ToPod = 12,
}

impl Hook {
    pub const ALL: [Hook; 13] = [
        Self::Xdp,
        Self::TcIngress,
        Self::TcEgress,
        Self::Connect4,
        Self::Sendmsg4,
        Self::Recvmsg4,
        Self::Getpeername4,
        Self::Connect6,
        Self::Sendmsg6,
        Self::Recvmsg6,
        Self::Getpeername6,
        Self::FromPod,
        Self::ToPod,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::TcIngress => "tc_ingress",
            Self::TcEgress => "tc_egress",
            Self::Connect4 => "connect4",
            Self::Sendmsg4 => "sendmsg4",
            Self::Recvmsg4 => "recvmsg4",
            Self::Getpeername4 => "getpeername4",
            Self::Connect6 => "connect6",
            Self::Sendmsg6 => "sendmsg6",
            Self::Recvmsg6 => "recvmsg6",
            Self::Getpeername6 => "getpeername6",
            Self::FromPod => "tc_from_pod",
            Self::ToPod => "tc_to_pod",
        }
    }

    /// The name of a verdict (the program's raw return value) of this hook.
    #[expect(
        clippy::match_same_arms,
        reason = "one arm per hook's verdict reads as the kernel's tables of return values"
    )]
    pub const fn verdict_name(self, verdict: u32) -> &'static str {
        match (self, verdict) {
            (Self::Xdp, 0) => "aborted",
            (Self::Xdp, 1) => "drop",
            (Self::Xdp, 2) => "pass",
            (Self::Xdp, 3) => "tx",
            (Self::Xdp, 4) => "redirect",
            (Self::TcIngress | Self::TcEgress | Self::FromPod | Self::ToPod, 0) => "ok",
            (Self::TcIngress | Self::TcEgress | Self::FromPod | Self::ToPod, 2) => "shot",
            (Self::TcIngress | Self::TcEgress | Self::FromPod | Self::ToPod, 7) => "redirect",
            (_, 0) => "reject",
            (_, 1) => "pass",
            _ => "other",
        }
    }
}

/// Verdicts kept per hook: return values 0..=7 (larger ones share the last slot).
pub const VERDICTS_PER_HOOK: u32 = 8;
/// Slots in `HOOK_STATS_V2` (room for 16 hooks).
pub const HOOK_SLOTS: u32 = 128;

/// The `HOOK_STATS_V2` slot of a hook's verdict.
pub const fn hook_slot(hook: Hook, verdict: u32) -> u32 {
    let verdict = if verdict < VERDICTS_PER_HOOK {
        verdict
    } else {
        VERDICTS_PER_HOOK - 1
    };
    hook as u32 * VERDICTS_PER_HOOK + verdict
}
const _: () = assert!(hook_slot(Hook::ToPod, 99) < HOOK_SLOTS);
