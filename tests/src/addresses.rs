//! The test cluster's address plan: IPv4 in 198.18.0.0/15, IPv6 mirroring it in `fd00::/8`.
//!
//! Every link of the cluster carries both families:
//!
//! | | IPv4 | IPv6 |
//! |---|---|---|
//! | underlay (nodes, client) | `198.18.0.0/24` | `fd00:18::/64` |
//! | node1's pods, node2's pods | `198.18.1.0/24`, `198.18.2.0/24` | `fd00:18:1::/64`, `fd00:18:2::/64` |
//! | a pod's address | a /32 | a /128 |
//! | the pods' gateway (node end of each pod veth) | `169.254.1.1` | `fe80::1` |
//! | Service CIDR (the client routes it via node1) | `198.19.0.0/16` | `fd00:19::/108` (20 host bits, as kube allows) |
//!
//! Hosts and nodes keep the IPv4 host part in the IPv6 one, read as hex (`198.18.0.11` is
//! `fd00:18::11`, pod `198.18.1.10` is `fd00:18:1::10`), so either names the other.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The Service CIDR: the client routes it via node1, so ClusterIPs are reachable off-node.
pub const SERVICE_CIDR: &str = "198.19.0.0/16";
/// The off-cluster client's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// The underlay's prefix length.
pub const UNDERLAY_PREFIX: u8 = 24;
/// The pods' gateway, owned by every node-side pod veth.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The IPv6 Service CIDR: the client routes it via node1, like [`SERVICE_CIDR`].
pub const SERVICE_CIDR6: &str = "fd00:19::/108";
/// The off-cluster client's IPv6 address.
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x100);
/// The IPv6 underlay's prefix length (`fd00:18::/64`).
pub const UNDERLAY_PREFIX6: u8 = 64;
/// The pods' IPv6 gateway, a link-local address on every node-side pod veth.
pub const POD_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// An address family, to write one test for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// The family of `addr`; an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is IPv6 here.
    pub fn of(addr: IpAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// The Service CIDR of this family.
    pub fn service_cidr(self) -> &'static str {
        match self {
            Family::V4 => SERVICE_CIDR,
            Family::V6 => SERVICE_CIDR6,
        }
    }

    /// The off-cluster client's address of this family.
    pub fn client_ip(self) -> IpAddr {
        match self {
            Family::V4 => CLIENT_IP.into(),
            Family::V6 => CLIENT_IP6.into(),
        }
    }
}

/// One node of the address plan.
pub(crate) struct NodePlan {
    pub(crate) name: &'static str,
    pub(crate) ip: Ipv4Addr,
    pub(crate) pod_cidr: &'static str,
    pub(crate) ip6: Ipv6Addr,
    pub(crate) pod_cidr6: &'static str,
}

/// One pod of the address plan.
pub(crate) struct PodPlan {
    pub(crate) name: &'static str,
    pub(crate) ip: Ipv4Addr,
    pub(crate) ip6: Ipv6Addr,
    pub(crate) node: &'static str,
    /// The node-side end of the pod's veth.
    pub(crate) node_iface: &'static str,
}

pub(crate) const NODES: [NodePlan; 2] = [
    NodePlan {
        name: "node1",
        ip: Ipv4Addr::new(198, 18, 0, 11),
        pod_cidr: "198.18.1.0/24",
        ip6: Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x11),
        pod_cidr6: "fd00:18:1::/64",
    },
    NodePlan {
        name: "node2",
        ip: Ipv4Addr::new(198, 18, 0, 12),
        pod_cidr: "198.18.2.0/24",
        ip6: Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x12),
        pod_cidr6: "fd00:18:2::/64",
    },
];

pub(crate) const PODS: [PodPlan; 3] = [
    PodPlan {
        name: "pod-1a",
        ip: Ipv4Addr::new(198, 18, 1, 10),
        ip6: Ipv6Addr::new(0xfd00, 0x18, 1, 0, 0, 0, 0, 0x10),
        node: "node1",
        node_iface: "v-1a",
    },
    PodPlan {
        name: "pod-1b",
        ip: Ipv4Addr::new(198, 18, 1, 11),
        ip6: Ipv6Addr::new(0xfd00, 0x18, 1, 0, 0, 0, 0, 0x11),
        node: "node1",
        node_iface: "v-1b",
    },
    PodPlan {
        name: "pod-2a",
        ip: Ipv4Addr::new(198, 18, 2, 10),
        ip6: Ipv6Addr::new(0xfd00, 0x18, 2, 0, 0, 0, 0, 0x10),
        node: "node2",
        node_iface: "v-2a",
    },
];
