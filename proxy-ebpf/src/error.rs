//! The closed set of reasons a packet or socket call leaves the normal path. What each does
//! (action, counter, log) is decided in one place, `outcome`.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Not an IPv4 frame (ARP, IPv6, ...).
    NotIpv4,
    /// IPv4, but neither TCP nor UDP.
    NotTcpUdp,
    /// A fragment: no L4 header to translate (first fragments with MF set included).
    Fragment,
    /// A header does not fit in the packet.
    Truncated,
    /// A header field is impossible (IP version, IHL, total length).
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
    /// The redirect metadata could not be prepended.
    Metadata,
    /// A kernel helper rewriting an skb failed.
    SkbRewrite,
    /// The client is outside the frontend's `loadBalancerSourceRanges`.
    SourceRangeDenied,
    /// A `Local` traffic policy left no endpoint on this node (others exist elsewhere).
    NoLocalEndpoint,
}

impl Error {
    #[cfg(test)]
    pub const ALL: [Error; 15] = [
        Self::NotIpv4,
        Self::NotTcpUdp,
        Self::Fragment,
        Self::Truncated,
        Self::Malformed,
        Self::NoEndpoints,
        Self::NoBackend,
        Self::NoSnatAddress,
        Self::NoSnatPort,
        Self::ConntrackUpdate,
        Self::Resize,
        Self::Metadata,
        Self::SkbRewrite,
        Self::SourceRangeDenied,
        Self::NoLocalEndpoint,
    ];

    /// What went wrong, for log lines.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotIpv4 => "not IPv4",
            Self::NotTcpUdp => "not TCP or UDP",
            Self::Fragment => "IPv4 fragment",
            Self::Truncated => "truncated header",
            Self::Malformed => "malformed header",
            Self::NoEndpoints => "no endpoints",
            Self::NoBackend => "service slot or backend missing",
            Self::NoSnatAddress => "remote backend without a SNAT address",
            Self::NoSnatPort => "no free SNAT port",
            Self::ConntrackUpdate => "conntrack update failed",
            Self::Resize => "packet resize failed",
            Self::Metadata => "XDP metadata not supported",
            Self::SkbRewrite => "skb rewrite failed",
            Self::SourceRangeDenied => "client outside loadBalancerSourceRanges",
            Self::NoLocalEndpoint => "traffic policy Local without a local endpoint",
        }
    }
}
