//! The closed set of reasons a packet or socket call leaves the normal path. What each does
//! (action, counter, log) is decided in one place, `outcome`.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Neither an IPv4 nor an IPv6 frame (ARP, ...).
    NotIp,
    /// IP, but neither TCP nor UDP (ICMP, ICMPv6, ESP, an unknown IPv6 next header, ...).
    NotTcpUdp,
    /// A later fragment that cannot be translated: its first fragment was not seen here (or
    /// did not start a flow), so its ports and flow are unknown.
    Fragment,
    /// More IPv6 extension headers before TCP/UDP than the parser walks.
    ExtensionHeaders,
    /// A header does not fit in the packet.
    Truncated,
    /// A header field is impossible (IP version, IHL, total or payload length, an IPv6 UDP
    /// checksum of 0).
    Malformed,
    /// The service has no endpoint to choose (`count` 0 without a `Local` policy's reason).
    NoEndpoints,
    /// The chosen service slot or its backend is missing (a concurrent update).
    NoBackend,
    /// A remote backend was chosen but no SNAT address is configured.
    NoSnatAddress,
    /// The SNAT port range is empty or every port tried was taken.
    NoSnatPort,
    /// A conntrack entry could not be written.
    ConntrackUpdate,
    /// Growing or shrinking the packet failed.
    Resize,
    /// A kernel helper rewriting an skb failed.
    SkbRewrite,
    /// The client is outside the frontend's `loadBalancerSourceRanges`.
    SourceRangeDenied,
    /// A `Local` traffic policy left no endpoint on this node (others exist elsewhere).
    NoLocalEndpoint,
    /// A cluster IP, on a port or protocol none of its frontends serves.
    UnservedPort,
    /// An address of a service CIDR that no Service holds.
    UnallocatedServiceIp,
}

impl Error {
    #[cfg(test)]
    pub const ALL: [Error; 17] = [
        Self::NotIp,
        Self::NotTcpUdp,
        Self::Fragment,
        Self::ExtensionHeaders,
        Self::Truncated,
        Self::Malformed,
        Self::NoEndpoints,
        Self::NoBackend,
        Self::NoSnatAddress,
        Self::NoSnatPort,
        Self::ConntrackUpdate,
        Self::Resize,
        Self::SkbRewrite,
        Self::SourceRangeDenied,
        Self::NoLocalEndpoint,
        Self::UnservedPort,
        Self::UnallocatedServiceIp,
    ];

    /// What went wrong, for log lines.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotIp => "not IPv4 or IPv6",
            Self::NotTcpUdp => "not TCP or UDP",
            Self::Fragment => "IP fragment",
            Self::ExtensionHeaders => "too many IPv6 extension headers",
            Self::Truncated => "truncated header",
            Self::Malformed => "malformed header",
            Self::NoEndpoints => "no endpoints",
            Self::NoBackend => "service slot or backend missing",
            Self::NoSnatAddress => "remote backend without a SNAT address",
            Self::NoSnatPort => "no free SNAT port",
            Self::ConntrackUpdate => "conntrack update failed",
            Self::Resize => "packet resize failed",
            Self::SkbRewrite => "skb rewrite failed",
            Self::SourceRangeDenied => "client outside loadBalancerSourceRanges",
            Self::NoLocalEndpoint => "traffic policy Local without a local endpoint",
            Self::UnservedPort => "a port the cluster IP does not serve",
            Self::UnallocatedServiceIp => "a service CIDR address no Service holds",
        }
    }
}
