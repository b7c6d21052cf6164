//! The address types of the maps: `u32` for IPv4 and [`Addr6`] for IPv6, both holding the
//! address's octets in memory (network byte order).

use bytemuck::Pod;

/// An IPv6 address as a map field: its in-memory bytes are the 16 octets. Four words rather
/// than 16 bytes, so keys holding one stay 4-byte aligned and compare and copy by word.
pub type Addr6 = [u32; 4];

/// An address field of either family: plain bytes whose all-zero value means "none" (a
/// NodePort key's address, an unset rewrite).
pub trait Address: Pod + Default + Eq {
    /// Whether the field is all zero.
    #[inline]
    fn is_unset(&self) -> bool {
        *self == Self::default()
    }
}

impl Address for u32 {}
impl Address for Addr6 {}

/// The IPv4 address inside an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), as a `u32` map
/// field: what an `AF_INET6` socket connecting to an IPv4 service holds.
#[inline]
pub fn mapped_ipv4(addr: &Addr6) -> Option<u32> {
    // The words hold octets in memory order: `::ffff:` is words 0, 0, then the bytes
    // 00 00 ff ff, which is `0xffff_0000` read little-endian or `0x0000_ffff` big-endian.
    let marker = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    (addr[0] == 0 && addr[1] == 0 && addr[2] == marker).then_some(addr[3])
}

/// `::ffff:a.b.c.d` of an IPv4 map field.
#[inline]
pub fn ipv4_mapped(addr: u32) -> Addr6 {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), addr]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr6(octets: [u8; 16]) -> Addr6 {
        bytemuck::cast(octets)
    }

    #[test]
    fn mapped_addresses_round_trip() {
        let v4 = u32::from_ne_bytes([198, 19, 0, 10]);
        let mapped = addr6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 19, 0, 10]);
        assert_eq!(ipv4_mapped(v4), mapped);
        assert_eq!(mapped_ipv4(&mapped), Some(v4));
        let native = addr6([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 19, 0, 10]);
        assert_eq!(mapped_ipv4(&native), None);
        assert!(Addr6::default().is_unset() && !mapped.is_unset() && 0u32.is_unset());
    }
}
