//! Internet checksum arithmetic (RFC 1071, RFC 1624), shared by the eBPF programs and the tests.
//!
//! Every value is taken exactly as it lies in memory: a 16-bit word is read with
//! `u16::from_ne_bytes` from two packet bytes, an address is the `u32` whose in-memory bytes are
//! the octets. One's complement sums do not depend on byte order (RFC 1071 §2B), so a checksum
//! computed this way and stored back in native order is the right bytes on the wire.

/// Adds `data` to a running one's complement sum, 16 bits at a time in memory order; an odd
/// trailing byte is padded with a zero byte, as RFC 1071 asks.
pub fn accumulate(mut sum: u64, data: &[u8]) -> u64 {
    let (words, rest) = data.as_chunks::<2>();
    for word in words {
        sum += u64::from(u16::from_ne_bytes(*word));
    }
    if let [last] = rest {
        sum += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    sum
}

/// Adds a 32-bit value (an IPv4 address, as it lies in memory) to a running sum.
pub const fn accumulate_u32(sum: u64, value: u32) -> u64 {
    sum + (value & 0xffff) as u64 + (value >> 16) as u64
}

/// Folds the carries of a running sum into 16 bits (not complemented).
#[expect(
    clippy::cast_possible_truncation,
    reason = "the last step leaves at most 0xffff"
)]
pub const fn fold(sum: u64) -> u16 {
    // A fixed number of steps instead of a loop, so the eBPF verifier sees straight-line code.
    let sum = (sum & 0xffff_ffff) + (sum >> 32); // <= 0x1_ffff_fffe
    let sum = (sum & 0xffff) + (sum >> 16); // <= 0x2_fffe
    let sum = (sum & 0xffff) + (sum >> 16); // <= 0x1_0001
    let sum = (sum & 0xffff) + (sum >> 16); // <= 0xffff
    sum as u16
}

/// The checksum field value for a running sum: the complement of the folded sum.
pub const fn finish(sum: u64) -> u16 {
    !fold(sum)
}

/// The checksum of `data` computed from scratch (the field itself must be zero in `data`).
pub fn compute(data: &[u8]) -> u16 {
    finish(accumulate(0, data))
}

/// Sum of the TCP/UDP pseudo header: addresses, protocol and L4 length (host order).
pub const fn pseudo_header(saddr: u32, daddr: u32, proto: u8, l4_len: u16) -> u64 {
    let sum = accumulate_u32(accumulate_u32(0, saddr), daddr);
    // The protocol and length words are big-endian on the wire; convert them to memory order.
    sum + (proto as u16).to_be() as u64 + l4_len.to_be() as u64
}

/// Incremental update of checksum field `check` when a 16-bit word changes from `old` to `new`
/// (RFC 1624, equation 3: `HC' = ~(~HC + ~m + m')`).
pub const fn update_u16(check: u16, old: u16, new: u16) -> u16 {
    finish(!check as u64 + !old as u64 + new as u64)
}

/// Incremental update of checksum field `check` when a 32-bit field changes (two words).
#[expect(
    clippy::cast_possible_truncation,
    reason = "splits each 32-bit field into its two 16-bit words"
)]
pub const fn update_u32(check: u16, old: u32, new: u32) -> u16 {
    let (old_low, old_high) = (old as u16, (old >> 16) as u16);
    let (new_low, new_high) = (new as u16, (new >> 16) as u16);
    let sum = !check as u64 + !old_low as u64 + !old_high as u64 + new_low as u64 + new_high as u64;
    finish(sum)
}

/// Incremental update of checksum field `check` when an IPv6 address (four words as they lie
/// in memory, see [`crate::Addr6`]) changes: the eight 16-bit words of the pseudo-header's
/// address (RFC 1624, equation 3).
pub const fn update_addr6(check: u16, old: &[u32; 4], new: &[u32; 4]) -> u16 {
    let mut sum = !check as u64;
    let mut word = 0;
    while word < 4 {
        sum = accumulate_u32(sum, !old[word]);
        sum = accumulate_u32(sum, new[word]);
        word += 1;
    }
    finish(sum)
}

/// Sum of the IPv6 pseudo header (RFC 8200 §8.1): addresses, upper-layer length (host order)
/// and next header.
pub const fn pseudo_header6(saddr: &[u32; 4], daddr: &[u32; 4], proto: u8, l4_len: u32) -> u64 {
    let mut sum = 0;
    let mut word = 0;
    while word < 4 {
        sum = accumulate_u32(sum, saddr[word]);
        sum = accumulate_u32(sum, daddr[word]);
        word += 1;
    }
    sum = accumulate_u32(sum, l4_len.to_be());
    sum + (proto as u16).to_be() as u64
}

/// A UDP checksum as it must be sent: a computed zero is sent as all ones (RFC 768), because
/// zero on the wire means "no checksum".
pub const fn udp_wire(check: u16) -> u16 {
    if check == 0 { 0xffff } else { check }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 header from RFC 1071-style worked examples (checksum 0xb861 at bytes 10..12).
    const IPV4_HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    fn header_without_checksum() -> [u8; 20] {
        let mut header = IPV4_HEADER;
        header[10] = 0;
        header[11] = 0;
        header
    }

    fn field(header: &[u8]) -> u16 {
        u16::from_ne_bytes([header[10], header[11]])
    }

    fn address(header: &[u8], offset: usize) -> u32 {
        u32::from_ne_bytes(header[offset..offset + 4].try_into().unwrap())
    }

    #[test]
    fn computes_a_known_ipv4_header_checksum() {
        assert_eq!(compute(&header_without_checksum()), field(&IPV4_HEADER));
        assert_eq!(
            compute(&header_without_checksum()).to_ne_bytes(),
            [0xb8, 0x61]
        );
    }

    #[test]
    fn a_valid_header_sums_to_all_ones() {
        assert_eq!(fold(accumulate(0, &IPV4_HEADER)), 0xffff);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(
            accumulate(0, &[0x01, 0x02, 0x03]),
            accumulate(0, &[0x01, 0x02, 0x03, 0])
        );
    }

    #[test]
    fn fold_carries_until_sixteen_bits() {
        assert_eq!(fold(0x1_fffe), 0xffff);
        assert_eq!(fold(0xffff_ffff), 0xffff);
        assert_eq!(fold(0x2_0001), 0x0003);
        assert_eq!(fold(u64::MAX), 0xffff);
        assert_eq!(fold(0), 0);
    }

    #[test]
    fn incremental_address_update_matches_full_compute() {
        let addresses = [
            [10, 0, 0, 1],
            [198, 18, 0, 1],
            [255, 255, 255, 255],
            [0, 0, 0, 0],
            [1, 2, 3, 4],
            [0, 0, 0, 1],
        ];
        for new in addresses {
            let mut header = IPV4_HEADER;
            let old = address(&header, 16);
            header[16..20].copy_from_slice(&new);
            let updated = update_u32(field(&IPV4_HEADER), old, address(&header, 16));
            header[10] = 0;
            header[11] = 0;
            assert_eq!(updated, compute(&header), "new address {new:?}");
        }
    }

    #[test]
    fn incremental_word_update_matches_full_compute() {
        for new in [0u16, 1, 0x8000, 0xffff, 0x1234] {
            let mut header = IPV4_HEADER;
            let old = u16::from_ne_bytes([header[4], header[5]]);
            header[4..6].copy_from_slice(&new.to_ne_bytes());
            let updated = update_u16(field(&IPV4_HEADER), old, new);
            header[10] = 0;
            header[11] = 0;
            assert_eq!(updated, compute(&header), "new word {new:#x}");
        }
    }

    #[test]
    fn pseudo_header_matches_its_bytes() {
        let saddr = u32::from_ne_bytes([192, 168, 0, 1]);
        let daddr = u32::from_ne_bytes([10, 1, 2, 3]);
        let bytes = [192, 168, 0, 1, 10, 1, 2, 3, 0, 17, 0x01, 0x02];
        assert_eq!(
            fold(pseudo_header(saddr, daddr, 17, 0x0102)),
            fold(accumulate(0, &bytes))
        );
    }

    fn addr6(octets: [u8; 16]) -> [u32; 4] {
        let mut words = [0; 4];
        for (word, chunk) in words.iter_mut().zip(octets.as_chunks::<4>().0) {
            *word = u32::from_ne_bytes(*chunk);
        }
        words
    }

    #[test]
    fn ipv6_pseudo_header_matches_its_bytes() {
        let src = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let dst = [0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0xab, 0xcd, 0, 0x10];
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src);
        bytes.extend_from_slice(&dst);
        bytes.extend_from_slice(&0x0001_0203u32.to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 6]);
        assert_eq!(
            fold(pseudo_header6(&addr6(src), &addr6(dst), 6, 0x0001_0203)),
            fold(accumulate(0, &bytes))
        );
    }

    #[test]
    fn incremental_ipv6_address_update_matches_full_compute() {
        let data = [0x12u8, 0x34, 0x56, 0x78, 0x9a, 0xbc];
        let old = addr6([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64]);
        let check = finish(pseudo_header6(&old, &old, 17, 6) + accumulate(0, &data));
        for new in [
            [0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x0a],
            [0xff; 16],
            [0; 16],
            [0xfd, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ] {
            let new = addr6(new);
            let updated = update_addr6(check, &old, &new);
            let expected = finish(pseudo_header6(&new, &old, 17, 6) + accumulate(0, &data));
            assert_eq!(
                fold(u64::from(updated)),
                fold(u64::from(expected)),
                "{new:x?}"
            );
        }
    }

    #[test]
    fn udp_zero_goes_out_as_all_ones() {
        assert_eq!(udp_wire(0), 0xffff);
        assert_eq!(udp_wire(0x1234), 0x1234);
    }
}
