//! This node's addresses per family: which a NodePort answers on (`NODE_ADDR_V1`,
//! `NODE_ADDR6_V1`), which is each family's SNAT source (`CONFIG_V1`, `CONFIG6_V1`), and so
//! which families the node serves at all.

use std::net::{IpAddr, Ipv6Addr};

/// The node's addresses of both families.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAddrs {
    /// Every address NodePorts answer on, in the order given (distinct).
    pub addrs: Vec<IpAddr>,
    /// The SNAT source of each family, when the node has one.
    pub primary_v4: Option<IpAddr>,
    pub primary_v6: Option<IpAddr>,
}

impl NodeAddrs {
    /// From `--node-ip` (either family, repeatable; the first of each family is its primary),
    /// or, without any, every local address but loopback, the primaries being the first of each
    /// family on `first_iface` that a remote host can answer (not IPv6 link-local).
    pub fn choose(
        node_ips: &[IpAddr],
        local: &[(String, IpAddr)],
        first_iface: Option<&str>,
    ) -> Self {
        let mut this = Self::default();
        if node_ips.is_empty() {
            for (_, addr) in local {
                if !addr.is_loopback() && !this.addrs.contains(addr) {
                    this.addrs.push(*addr);
                }
            }
            let on_first = |v4: bool| {
                local
                    .iter()
                    .filter(|(name, _)| Some(name.as_str()) == first_iface)
                    .map(|(_, addr)| *addr)
                    .find(|addr| addr.is_ipv4() == v4 && routable(*addr))
            };
            this.primary_v4 = on_first(true);
            this.primary_v6 = on_first(false);
        } else {
            for addr in node_ips {
                if !this.addrs.contains(addr) {
                    this.addrs.push(*addr);
                }
            }
            let first = |v4: bool| node_ips.iter().copied().find(|addr| addr.is_ipv4() == v4);
            this.primary_v4 = first(true);
            this.primary_v6 = first(false);
        }
        this
    }

    /// Whether this node serves IPv4 (`true`) or IPv6 (`false`), as kube-proxy runs a proxier
    /// per family the node has: the families of `--node-ip`, or those with a local address
    /// other hosts can reach (a node with only IPv6 link-local addresses is IPv4-only).
    pub fn serves(&self, v4: bool) -> bool {
        self.addrs
            .iter()
            .any(|addr| addr.is_ipv4() == v4 && routable(*addr))
    }

    /// Whether `addr` is its family's SNAT source.
    pub fn is_primary(&self, addr: IpAddr) -> bool {
        Some(addr) == self.primary_v4 || Some(addr) == self.primary_v6
    }
}

/// Not loopback, and not IPv6 link-local (`fe80::/10`: scoped to one link, never a source or
/// service address for another network).
fn routable(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(addr) => !addr.is_loopback(),
        IpAddr::V6(addr) => !addr.is_loopback() && !is_link_local(addr),
    }
}

fn is_link_local(addr: Ipv6Addr) -> bool {
    addr.segments()[0] & 0xffc0 == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn node_ips_pick_the_first_of_each_family_as_its_primary() {
        let given = [ip("fd00:1::2"), ip("198.18.0.2"), ip("fd00:1::3")];
        let addrs = NodeAddrs::choose(&given, &[], None);
        assert_eq!(addrs.addrs, given);
        assert_eq!(addrs.primary_v4, Some(ip("198.18.0.2")));
        assert_eq!(addrs.primary_v6, Some(ip("fd00:1::2")));
        assert!(addrs.serves(true) && addrs.serves(false));
        let v4_only = NodeAddrs::choose(&[ip("198.18.0.2")], &[], None);
        assert!(v4_only.serves(true) && !v4_only.serves(false));
        assert_eq!(v4_only.primary_v6, None);
    }

    #[test]
    fn local_addresses_without_node_ips_skip_loopback_and_link_local_primaries() {
        let local = [
            ("lo".to_owned(), ip("127.0.0.1")),
            ("lo".to_owned(), ip("::1")),
            ("eth0".to_owned(), ip("fe80::1")),
            ("eth0".to_owned(), ip("198.18.0.2")),
            ("eth1".to_owned(), ip("198.18.1.2")),
        ];
        let addrs = NodeAddrs::choose(&[], &local, Some("eth0"));
        assert_eq!(
            addrs.addrs,
            [ip("fe80::1"), ip("198.18.0.2"), ip("198.18.1.2")]
        );
        assert_eq!(addrs.primary_v4, Some(ip("198.18.0.2")));
        assert_eq!(addrs.primary_v6, None);
        // Only a link-local IPv6 address: the node does not serve IPv6.
        assert!(addrs.serves(true) && !addrs.serves(false));
    }
}
