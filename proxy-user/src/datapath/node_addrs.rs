//! This node's addresses per family: which a NodePort answers on (`NODE_ADDR_V1`,
//! `NODE_ADDR6_V1`), which is each family's SNAT source (`CONFIG_V1`, `CONFIG6_V1`), and so
//! which families the node serves at all.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
    str::FromStr,
};

use ipnet::IpNet;

/// `--nodeport-addresses`, as kube-proxy's flag: which of the node's addresses NodePorts
/// answer on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every node address (kube-proxy's iptables default when the flag is unset).
    #[default]
    All,
    /// The node's primary address of each family (`primary`).
    Primary,
    /// The node addresses inside one of these ranges; a family none of them is of keeps all
    /// its addresses, as in kube-proxy.
    Cidrs(Vec<IpNet>),
}

impl NodePortAddresses {
    /// From the flag's values: `primary` alone, or CIDRs.
    pub fn parse(values: &[String]) -> Result<Self, String> {
        if values.is_empty() {
            return Ok(Self::All);
        }
        if values.iter().any(|value| value == "primary") {
            if values.len() > 1 {
                return Err("--nodeport-addresses: can't use both 'primary' and CIDRs".to_owned());
            }
            return Ok(Self::Primary);
        }
        values
            .iter()
            .map(|value| {
                IpNet::from_str(value.trim()).map_err(|_| {
                    format!(
                        "--nodeport-addresses: {value:?} must be a valid CIDR (like \
                         198.18.0.0/24 or fd00::/64) or the single value 'primary'"
                    )
                })
            })
            .collect::<Result<_, _>>()
            .map(Self::Cidrs)
    }

    /// Whether `addr`, one of `node`'s addresses, answers NodePorts.
    fn admits(&self, addr: IpAddr, node: &NodeAddrs) -> bool {
        match self {
            Self::All => true,
            Self::Primary => node.is_primary(addr),
            Self::Cidrs(cidrs) => {
                let of_family: Vec<&IpNet> = cidrs
                    .iter()
                    .filter(|net| net.addr().is_ipv4() == addr.is_ipv4())
                    .collect();
                of_family.is_empty() || of_family.iter().any(|net| net.contains(&addr))
            }
        }
    }
}

impl fmt::Display for NodePortAddresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Primary => f.write_str("primary"),
            Self::Cidrs(cidrs) => {
                let cidrs: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
                f.write_str(&cidrs.join(","))
            }
        }
    }
}

/// The node's addresses of both families.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAddrs {
    /// Every address NodePorts answer on (`--nodeport-addresses` of the node's addresses), in
    /// the order given (distinct).
    pub addrs: Vec<IpAddr>,
    /// Every address of the node (`--node-ip`, or the local ones): which families it serves.
    pub node_addrs: Vec<IpAddr>,
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
        this.node_addrs = this.addrs.clone();
        this
    }

    /// Only the addresses `node_ports` admits answer NodePorts; the families served and the
    /// SNAT sources stay those of every node address.
    #[must_use]
    pub fn with_node_ports(mut self, node_ports: &NodePortAddresses) -> Self {
        let admitted: Vec<IpAddr> = self
            .addrs
            .iter()
            .copied()
            .filter(|addr| node_ports.admits(*addr, &self))
            .collect();
        self.addrs = admitted;
        self
    }

    /// Whether this node serves IPv4 (`true`) or IPv6 (`false`), as kube-proxy runs a proxier
    /// per family the node has: the families of `--node-ip`, or those with a local address
    /// other hosts can reach (a node with only IPv6 link-local addresses is IPv4-only).
    pub fn serves(&self, v4: bool) -> bool {
        self.node_addrs
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

    #[test]
    fn nodeport_addresses_filter_as_kube_proxy_does() {
        let given = [
            ip("198.18.0.11"),
            ip("198.18.0.21"),
            ip("fd00:18::11"),
            ip("fd00:18::21"),
        ];
        let node = NodeAddrs::choose(&given, &[], None);
        let parse = |values: &[&str]| {
            NodePortAddresses::parse(&values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>())
        };
        let admitted =
            |values: &[&str]| node.clone().with_node_ports(&parse(values).unwrap()).addrs;
        assert_eq!(admitted(&[]), given);
        assert_eq!(
            admitted(&["primary"]),
            [ip("198.18.0.11"), ip("fd00:18::11")]
        );
        // An IPv4 range only: IPv6 keeps every address, as in kube-proxy.
        assert_eq!(
            admitted(&["198.18.0.16/28"]),
            [ip("198.18.0.21"), ip("fd00:18::11"), ip("fd00:18::21")]
        );
        assert_eq!(
            admitted(&["198.18.0.11/32", "fd00:18::21/128"]),
            [ip("198.18.0.11"), ip("fd00:18::21")]
        );
        // The families served and the SNAT sources do not change.
        let filtered = node
            .clone()
            .with_node_ports(&parse(&["203.0.113.0/24"]).unwrap());
        assert!(filtered.addrs.iter().all(IpAddr::is_ipv6));
        assert!(filtered.serves(true) && filtered.primary_v4 == Some(ip("198.18.0.11")));
        assert!(parse(&["primary", "198.18.0.0/24"]).is_err());
        assert!(
            parse(&["198.18.0.11"]).is_err(),
            "a bare address is not a CIDR"
        );
    }
}
