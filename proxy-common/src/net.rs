//! Conversions between Rust's address types and the network-byte-order fields of the maps.

use core::net::{Ipv4Addr, Ipv6Addr};

use crate::Addr6;

/// An IPv4 address as a map field: its in-memory bytes are the octets.
pub fn ip_to_net(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// The inverse of [`ip_to_net`].
pub fn ip_from_net(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}

/// An IPv6 address as a map field: its in-memory bytes are the octets.
pub fn ip6_to_net(addr: Ipv6Addr) -> Addr6 {
    bytemuck::cast(addr.octets())
}

/// The inverse of [`ip6_to_net`].
pub fn ip6_from_net(addr: Addr6) -> Ipv6Addr {
    Ipv6Addr::from(bytemuck::cast::<Addr6, [u8; 16]>(addr))
}

/// A port as a map field (network byte order).
pub fn port_to_net(port: u16) -> u16 {
    port.to_be()
}

/// The inverse of [`port_to_net`].
pub fn port_from_net(port: u16) -> u16 {
    u16::from_be(port)
}

/// `tcp`, `udp` or the number.
pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        crate::IPPROTO_TCP => "TCP",
        crate::IPPROTO_UDP => "UDP",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_bytes_are_octets() {
        let addr = Ipv4Addr::new(198, 18, 0, 1);
        assert_eq!(ip_to_net(addr).to_ne_bytes(), [198, 18, 0, 1]);
        assert_eq!(ip_from_net(ip_to_net(addr)), addr);
        assert_eq!(port_to_net(80).to_ne_bytes(), [0, 80]);
        assert_eq!(port_from_net(port_to_net(30080)), 30080);
        let addr6: Ipv6Addr = "fd00::1:2".parse().unwrap();
        let field = ip6_to_net(addr6);
        assert_eq!(bytemuck::cast::<Addr6, [u8; 16]>(field), addr6.octets());
        assert_eq!(ip6_from_net(field), addr6);
    }
}
