//! Bounds-checked packet access and the parsers that describe an IPv4 or IPv6 TCP/UDP packet.

use core::mem::{offset_of, size_of};

use network_types::{
    eth::EthHdr,
    ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};
use proxy_common::{Addr6, Address, CtKeyOf, IPPROTO_TCP, IPPROTO_UDP};

use crate::error::Error;

pub const ETH_HLEN: usize = EthHdr::LEN;
pub const IPV4_HLEN: usize = Ipv4Hdr::LEN;
pub const TCP_HLEN: usize = TcpHdr::LEN;
pub const IPV6_HLEN: usize = Ipv6Hdr::LEN;
pub const IPPROTO_ICMP: u8 = IpProto::Icmp as u8;

/// IPv6 extension headers (RFC 8200 §4): the ones the parser walks, and the Fragment header.
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
/// The most extension headers walked before TCP/UDP (Cilium walks 4 too); a longer chain goes
/// to the stack.
pub const IPV6_EXT_HEADERS_MAX: usize = 4;

/// IPv4 "more fragments" flag and fragment offset mask, host byte order.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;
/// The IPv6 Fragment header's "more fragments" bit (host order, below the offset's 13 bits and
/// 2 reserved bits) and its length.
const IP6_MF: u16 = 0x0001;
const IP6_FRAG_HLEN: usize = 8;

/// Returns a pointer to a `T` at `offset` in the packet `[data, data_end)`, or `Truncated` when
/// it does not fit. Dereferencing it is safe for `size_of::<T>()` bytes until the packet is
/// resized (any helper that moves `data` or `data_end` invalidates it). Headers after the
/// Ethernet header are only 2-byte aligned; BPF loads and stores do not fault on that, exactly
/// as with the kernel's own C headers.
#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, offset: usize) -> Result<*mut T, Error> {
    if data + offset + size_of::<T>() > data_end {
        return Err(Error::Truncated);
    }
    Ok((data + offset) as *mut T)
}

/// A copy of the `T` at `offset` in the packet `[data, data_end)`, or `Truncated`.
#[inline(always)]
pub fn read_at<T: Copy>(data: usize, data_end: usize, offset: usize) -> Result<T, Error> {
    let at: *const T = ptr_at(data, data_end, offset)?;
    // SAFETY: ptr_at checked that the `T` lies inside the packet.
    Ok(unsafe { read(at) })
}

/// Writes `value` at `offset` in the packet `[data, data_end)`, or fails with `Truncated`.
#[inline(always)]
pub fn write_at<T: Copy>(
    data: usize,
    data_end: usize,
    offset: usize,
    value: T,
) -> Result<(), Error> {
    let at: *mut T = ptr_at(data, data_end, offset)?;
    // SAFETY: as for `read_at`.
    unsafe { write(at, value) };
    Ok(())
}

/// Reads a `T` from the packet with whole-word loads. BPF loads do not fault on a misaligned
/// word (see [`ptr_at`]), while `read_unaligned` would make the BPF backend load byte by byte;
/// on the host (the unit tests) a misaligned `read` is undefined, so there it is unaligned.
///
/// # Safety
///
/// `at` points at a `T` inside the packet.
#[inline(always)]
unsafe fn read<T: Copy>(at: *const T) -> T {
    // SAFETY: the caller's.
    #[cfg(target_arch = "bpf")]
    unsafe {
        at.read()
    }
    #[cfg(not(target_arch = "bpf"))]
    unsafe {
        at.read_unaligned()
    }
}

/// Writes a `T` into the packet with whole-word stores; the counterpart of [`read`].
///
/// # Safety
///
/// As for [`read`].
#[inline(always)]
unsafe fn write<T: Copy>(at: *mut T, value: T) {
    // SAFETY: the caller's.
    #[cfg(target_arch = "bpf")]
    unsafe {
        at.write(value);
    }
    #[cfg(not(target_arch = "bpf"))]
    unsafe {
        at.write_unaligned(value);
    }
}

/// Reads the multi-byte header field at `field` as the word it holds, in network byte order
/// (as the maps keep addresses and ports), with one load. network-types declares these fields
/// as byte arrays, and the BPF backend reads anything of alignment 1 byte by byte (so do its
/// `read_unaligned` accessors): on the per-packet path that made `xdp_ingress` 9% longer.
///
/// # Safety
///
/// `field` lies inside the packet (a header from [`ptr_at`]); see there for its alignment.
#[inline(always)]
pub unsafe fn load<T: Copy, const N: usize>(field: *const [u8; N]) -> T {
    const { assert!(N == size_of::<T>()) };
    // SAFETY: the caller's; the sizes match.
    unsafe { read(field.cast::<T>()) }
}

/// Writes `value` (network byte order) to the multi-byte header field at `field`, with one
/// store; the counterpart of [`load`].
///
/// # Safety
///
/// As for [`load`].
#[inline(always)]
pub unsafe fn store<T: Copy, const N: usize>(field: *mut [u8; N], value: T) {
    const { assert!(N == size_of::<T>()) };
    // SAFETY: the caller's; the sizes match.
    unsafe { write(field.cast::<T>(), value) }
}

/// A flow's addresses, ports (network byte order) and protocol, in one family's addresses.
#[derive(Clone, Copy)]
pub struct Tuple<A> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl<A: Address> Tuple<A> {
    /// The tuple of a packet going the other way (an answer, a reply).
    #[inline(always)]
    pub fn reversed(&self) -> Tuple<A> {
        Tuple {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    #[inline(always)]
    pub fn ct_key(&self, dir: u8) -> CtKeyOf<A> {
        CtKeyOf {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            dir,
            _pad: 0,
        }
    }
}

/// Where a packet stands in its datagram: whole, or one of its fragments, by the
/// identification they share (IPv4's 16 bits, the IPv6 Fragment header's 32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    Whole,
    /// Offset 0, more to come: it carries the L4 header.
    First {
        id: u32,
    },
    /// A later fragment: no L4 header; its ports are the first fragment's (`fragments`).
    Later {
        id: u32,
    },
}

/// What the datapath needs to know about a parsed packet.
#[derive(Clone, Copy)]
pub struct Packet<A> {
    pub tuple: Tuple<A>,
    /// Offset of the L4 header (the IP header is at `ETH_HLEN`).
    pub l4: usize,
    /// Bytes of IP headers before the L4 header: the IPv4 header with its options (20..=60),
    /// or the IPv6 header and the extension headers walked.
    pub ihl: usize,
    /// The IP packet's length in bytes, host order: the IPv4 total length, or 40 plus the IPv6
    /// payload length.
    pub tot_len: u16,
    /// TCP flags; 0 for UDP and later fragments.
    pub tcp_flags: u8,
    pub fragment: Fragment,
}

impl<A> Packet<A> {
    /// Whether the packet carries the L4 header (its ports and checksum): all but later
    /// fragments, whose ports come from their first fragment.
    #[inline(always)]
    pub fn has_l4(&self) -> bool {
        !matches!(self.fragment, Fragment::Later { .. })
    }

    /// `err`, or `Fragment` for a later fragment: a refusal answers the first fragment, which
    /// has the L4 header to answer; the rest of the datagram passes.
    #[inline(always)]
    pub fn unless_later(&self, err: Error) -> Error {
        if self.has_l4() { err } else { Error::Fragment }
    }

    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_check_offset(&self) -> usize {
        if self.tuple.proto == IPPROTO_TCP {
            self.l4 + offset_of!(TcpHdr, check)
        } else {
            self.l4 + offset_of!(UdpHdr, check)
        }
    }
}

/// The frame's EtherType as it lies in the header (network byte order: compare with
/// `EtherType::Ipv4 as u16`).
#[inline(always)]
pub fn ether_type(data: usize, data_end: usize) -> Result<u16, Error> {
    let eth: *const EthHdr = ptr_at(data, data_end, 0)?;
    // SAFETY: ptr_at checked that the header is inside the packet.
    Ok(unsafe { (*eth).ether_type })
}

/// The frame's Ethernet addresses: (destination, source).
#[inline(always)]
pub fn eth_addresses(data: usize, data_end: usize) -> Result<([u8; 6], [u8; 6]), Error> {
    let eth: *const EthHdr = ptr_at(data, data_end, 0)?;
    // SAFETY: ptr_at checked that the header is inside the packet.
    Ok(unsafe { ((*eth).dst_addr, (*eth).src_addr) })
}

/// Parses Ethernet → IPv4 (honouring IHL) → TCP/UDP. Anything else, fragments included, is an
/// error the caller passes untouched. The caller has checked the EtherType.
#[inline(always)]
pub fn parse_v4(data: usize, data_end: usize) -> Result<Packet<u32>, Error> {
    let ip: *const Ipv4Hdr = ptr_at(data, data_end, ETH_HLEN)?;
    // SAFETY: ptr_at checked that the header is inside the packet.
    let (ip, id, frags, tot_len, saddr, daddr) = unsafe {
        (
            &*ip,
            u16::from_be(load(&raw const (*ip).id)),
            u16::from_be(load(&raw const (*ip).frags)),
            u16::from_be(load(&raw const (*ip).tot_len)),
            load(&raw const (*ip).src_addr),
            load(&raw const (*ip).dst_addr),
        )
    };
    if ip.version() != 4 {
        return Err(Error::Malformed);
    }
    let ihl = usize::from(ip.ihl());
    if ihl < IPV4_HLEN {
        return Err(Error::Malformed);
    }
    if usize::from(tot_len) < ihl {
        return Err(Error::Malformed);
    }
    let l4 = ETH_HLEN + ihl;
    let id = u32::from(id);
    let fragment = if frags & IP_OFFSET != 0 {
        Fragment::Later { id }
    } else if frags & IP_MF != 0 {
        Fragment::First { id }
    } else {
        Fragment::Whole
    };
    let (sport, dport, tcp_flags) = match fragment {
        Fragment::Later { .. } => later_fragment(ip.proto)?,
        _ => ports(data, data_end, l4, ip.proto)?,
    };
    Ok(Packet {
        tuple: Tuple {
            saddr,
            daddr,
            sport,
            dport,
            proto: ip.proto,
        },
        l4,
        ihl,
        tot_len,
        tcp_flags,
        fragment,
    })
}

/// The ports and flags of a later fragment until its first fragment's are known: none, for a
/// TCP or UDP datagram.
#[inline(always)]
fn later_fragment(proto: u8) -> Result<(u16, u16, u8), Error> {
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => Ok((0, 0, 0)),
        _ => Err(Error::NotTcpUdp),
    }
}

/// Parses Ethernet → IPv6 → at most [`IPV6_EXT_HEADERS_MAX`] hop-by-hop, routing, destination
/// options, AH or Fragment headers → TCP/UDP (a later fragment: the Fragment header ends the
/// walk). ESP, ICMPv6, unknown headers and longer chains are `NotTcpUdp` or
/// `ExtensionHeaders`: the stack's, untouched. The caller has checked the EtherType.
#[inline(always)]
pub fn parse_v6(data: usize, data_end: usize) -> Result<Packet<Addr6>, Error> {
    let ip: *const Ipv6Hdr = ptr_at(data, data_end, ETH_HLEN)?;
    // SAFETY: ptr_at checked that the header is inside the packet.
    let (version, payload_len, mut next, saddr, daddr) = unsafe {
        (
            (*ip).vcf[0] >> 4,
            u16::from_be(load(&raw const (*ip).payload_len)),
            (*ip).next_hdr,
            load::<Addr6, 16>(&raw const (*ip).src_addr),
            load::<Addr6, 16>(&raw const (*ip).dst_addr),
        )
    };
    if version != 6 {
        return Err(Error::Malformed);
    }
    let mut ihl = IPV6_HLEN;
    let mut walked = 0;
    let mut fragment = Fragment::Whole;
    while next != IPPROTO_TCP && next != IPPROTO_UDP {
        if walked == IPV6_EXT_HEADERS_MAX {
            return Err(Error::ExtensionHeaders);
        }
        walked += 1;
        let len = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let header: [u8; 2] = read_at(data, data_end, ETH_HLEN + ihl)?;
                next = header[0];
                (usize::from(header[1]) + 1) * 8
            }
            IPPROTO_AH => {
                let header: [u8; 2] = read_at(data, data_end, ETH_HLEN + ihl)?;
                next = header[0];
                (usize::from(header[1]) + 2) * 4
            }
            IPPROTO_FRAGMENT => {
                // Next header, reserved, offset (13 bits) | 2 reserved | M, identification.
                let header: [u8; 8] = read_at(data, data_end, ETH_HLEN + ihl)?;
                next = header[0];
                let offset_flags = u16::from_be_bytes([header[2], header[3]]);
                let id = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
                if offset_flags >> 3 != 0 {
                    fragment = Fragment::Later { id };
                    ihl += IP6_FRAG_HLEN;
                    break;
                }
                // Offset 0 without M is an atomic fragment (RFC 6946): a whole datagram.
                if offset_flags & IP6_MF != 0 {
                    fragment = Fragment::First { id };
                }
                IP6_FRAG_HLEN
            }
            _ => return Err(Error::NotTcpUdp),
        };
        ihl += len;
    }
    // A payload length of 0 is a jumbogram (RFC 2675): not for us.
    let tot_len = IPV6_HLEN as u16 + payload_len;
    if payload_len == 0 || usize::from(tot_len) < ihl {
        return Err(Error::Malformed);
    }
    let l4 = ETH_HLEN + ihl;
    let (sport, dport, tcp_flags) = if matches!(fragment, Fragment::Later { .. }) {
        later_fragment(next)?
    } else {
        let ports = ports(data, data_end, l4, next)?;
        if next == IPPROTO_UDP {
            // The UDP checksum is mandatory in IPv6 (RFC 8200 §8.1): the stack drops a
            // datagram without one, and an incremental update of 0 would invent a checksum.
            let check: u16 = read_at(data, data_end, l4 + offset_of!(UdpHdr, check))?;
            if check == 0 {
                return Err(Error::Malformed);
            }
        }
        ports
    };
    Ok(Packet {
        tuple: Tuple {
            saddr,
            daddr,
            sport,
            dport,
            proto: next,
        },
        l4,
        ihl,
        tot_len,
        tcp_flags,
        fragment,
    })
}

/// Source port, destination port (network byte order) and TCP flags of the TCP or UDP header
/// at `l4`.
#[inline(always)]
fn ports(data: usize, data_end: usize, l4: usize, proto: u8) -> Result<(u16, u16, u8), Error> {
    match proto {
        IPPROTO_TCP => {
            let tcp: *const TcpHdr = ptr_at(data, data_end, l4)?;
            // SAFETY: ptr_at checked that the header is inside the packet.
            Ok(unsafe {
                (
                    load(&raw const (*tcp).source),
                    load(&raw const (*tcp).dest),
                    tcp_flags(&*tcp),
                )
            })
        }
        IPPROTO_UDP => {
            let udp: *const UdpHdr = ptr_at(data, data_end, l4)?;
            // SAFETY: ptr_at checked that the header is inside the packet.
            Ok(unsafe { (load(&raw const (*udp).src), load(&raw const (*udp).dst), 0) })
        }
        _ => Err(Error::NotTcpUdp),
    }
}

/// The TCP flags byte (`proxy_common::tcp`'s bits: FIN, SYN, RST, PSH, ACK, ...).
#[inline(always)]
pub fn tcp_flags(tcp: &TcpHdr) -> u8 {
    // The second byte of network-types' bitfield holds the eight flags, FIN lowest.
    tcp._bitfield_1.get(8, 8) as u8
}

/// Frames built byte by byte, for the host tests of the parser and the rewrites.
#[cfg(test)]
pub mod frames {
    use proxy_common::checksum;

    use super::{ETH_HLEN, IPPROTO_TCP};

    /// A frame in an 8-byte aligned buffer, as the kernel hands packets over (the Ethernet
    /// header starts aligned; the IPv4 header then sits at offset 14).
    #[repr(C, align(8))]
    pub struct Frame {
        pub bytes: [u8; 256],
        pub len: usize,
    }

    impl Frame {
        pub fn data(&self) -> (usize, usize) {
            let start = self.bytes.as_ptr() as usize;
            (start, start + self.len)
        }

        /// As [`Frame::data`], for a frame the code under test writes through the pointers.
        pub fn data_mut(&mut self) -> (usize, usize) {
            let start = self.bytes.as_mut_ptr() as usize;
            (start, start + self.len)
        }

        pub fn l4(&self) -> usize {
            ETH_HLEN + usize::from(self.bytes[ETH_HLEN] & 0x0f) * 4
        }

        /// Whether the IPv4 and L4 checksums verify.
        pub fn checksums_hold(&self) -> bool {
            let ip = &self.bytes[ETH_HLEN..self.l4()];
            let l4 = &self.bytes[self.l4()..self.len];
            let proto = self.bytes[ETH_HLEN + 9];
            let addr =
                |at: usize| u32::from_ne_bytes(self.bytes[at..at + 4].try_into().expect("4 bytes"));
            let pseudo = checksum::pseudo_header(
                addr(ETH_HLEN + 12),
                addr(ETH_HLEN + 16),
                proto,
                l4.len() as u16,
            );
            let udp_unchecked = proto != IPPROTO_TCP && l4[6..8] == [0, 0];
            checksum::fold(checksum::accumulate(0, ip)) == 0xffff
                && (udp_unchecked || checksum::fold(checksum::accumulate(pseudo, l4)) == 0xffff)
        }
    }

    /// An IPv4 frame from `src` to `dst` with `options` bytes of IP options and `l4`, whose
    /// checksum (bytes 16..18 for TCP, 6..8 for UDP) is filled in unless `l4_checksum` is
    /// false.
    pub fn ipv4(
        proto: u8,
        src: [u8; 4],
        dst: [u8; 4],
        options: &[u8],
        l4: &[u8],
        l4_checksum: bool,
    ) -> Frame {
        let mut frame = Frame {
            bytes: [0; 256],
            len: 0,
        };
        let b = &mut frame.bytes;
        b[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        b[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        b[12..14].copy_from_slice(&[0x08, 0x00]);
        let ihl = 20 + options.len();
        let tot_len = (ihl + l4.len()) as u16;
        let ip = ETH_HLEN;
        b[ip] = 0x40 | (ihl / 4) as u8;
        b[ip + 2..ip + 4].copy_from_slice(&tot_len.to_be_bytes());
        b[ip + 6] = 0x40; // DF
        b[ip + 8] = 64;
        b[ip + 9] = proto;
        b[ip + 12..ip + 16].copy_from_slice(&src);
        b[ip + 16..ip + 20].copy_from_slice(&dst);
        b[ip + 20..ip + ihl].copy_from_slice(options);
        let check = checksum::compute(&b[ip..ip + ihl]);
        b[ip + 10..ip + 12].copy_from_slice(&check.to_ne_bytes());
        let l4_at = ip + ihl;
        b[l4_at..l4_at + l4.len()].copy_from_slice(l4);
        frame.len = l4_at + l4.len();
        if l4_checksum {
            let at = l4_at + if proto == IPPROTO_TCP { 16 } else { 6 };
            let pseudo = checksum::pseudo_header(
                u32::from_ne_bytes(src),
                u32::from_ne_bytes(dst),
                proto,
                l4.len() as u16,
            );
            let sum =
                checksum::finish(checksum::accumulate(pseudo, &frame.bytes[l4_at..frame.len]));
            frame.bytes[at..at + 2].copy_from_slice(&sum.to_ne_bytes());
        }
        frame
    }

    /// The words of an IPv6 address as the maps and the parser hold them.
    pub fn addr6(octets: [u8; 16]) -> [u32; 4] {
        let mut words = [0; 4];
        for (word, chunk) in words.iter_mut().zip(octets.as_chunks::<4>().0) {
            *word = u32::from_ne_bytes(*chunk);
        }
        words
    }

    /// An IPv6 frame from `src` to `dst`: `ext` is a chain of extension headers (each one's
    /// first byte its next header) that starts with `first` and ends in `proto`, then `l4`,
    /// whose checksum is computed over the IPv6 pseudo-header.
    pub fn ipv6(
        first: u8,
        proto: u8,
        src: [u8; 16],
        dst: [u8; 16],
        ext: &[u8],
        l4: &[u8],
    ) -> Frame {
        let mut frame = Frame {
            bytes: [0; 256],
            len: 0,
        };
        let b = &mut frame.bytes;
        b[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        b[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        b[12..14].copy_from_slice(&[0x86, 0xdd]);
        let ip = ETH_HLEN;
        b[ip] = 0x60;
        let payload_len = (ext.len() + l4.len()) as u16;
        b[ip + 4..ip + 6].copy_from_slice(&payload_len.to_be_bytes());
        b[ip + 6] = if ext.is_empty() { proto } else { first };
        b[ip + 7] = 64;
        b[ip + 8..ip + 24].copy_from_slice(&src);
        b[ip + 24..ip + 40].copy_from_slice(&dst);
        let l4_at = ip + 40 + ext.len();
        b[ip + 40..l4_at].copy_from_slice(ext);
        b[l4_at..l4_at + l4.len()].copy_from_slice(l4);
        frame.len = l4_at + l4.len();
        let at = l4_at + if proto == IPPROTO_TCP { 16 } else { 6 };
        let pseudo = checksum::pseudo_header6(&addr6(src), &addr6(dst), proto, l4.len() as u32);
        let sum = checksum::finish(checksum::accumulate(pseudo, &frame.bytes[l4_at..frame.len]));
        frame.bytes[at..at + 2].copy_from_slice(&checksum::udp_wire(sum).to_ne_bytes());
        frame
    }

    impl Frame {
        /// Whether the `proto` checksum of an IPv6 frame whose L4 header is at `l4` verifies.
        pub fn checksum6_holds(&self, l4: usize, proto: u8) -> bool {
            let word =
                |at: usize| -> [u8; 16] { self.bytes[at..at + 16].try_into().expect("16 bytes") };
            let segment = &self.bytes[l4..self.len];
            let pseudo = checksum::pseudo_header6(
                &addr6(word(ETH_HLEN + 8)),
                &addr6(word(ETH_HLEN + 24)),
                proto,
                segment.len() as u32,
            );
            checksum::fold(checksum::accumulate(pseudo, segment)) == 0xffff
        }
    }

    /// A TCP header (no options) from `sport` to `dport` with `flags`, and `payload`.
    pub fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut l4 = vec![0; 20];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        l4[4..8].copy_from_slice(&1000u32.to_be_bytes());
        l4[12] = 5 << 4;
        l4[13] = flags;
        l4[14..16].copy_from_slice(&512u16.to_be_bytes());
        l4.extend_from_slice(payload);
        l4
    }

    /// A UDP header from `sport` to `dport`, and `payload`.
    pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut l4 = vec![0; 8];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        l4[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(payload);
        l4
    }
}

#[cfg(test)]
mod tests {
    use proxy_common::{IPPROTO_UDP, tcp};

    use super::{frames::*, *};

    const CLIENT: [u8; 4] = [198, 18, 0, 100];
    const SERVICE: [u8; 4] = [198, 19, 0, 10];

    fn parsed(frame: &Frame) -> Result<Packet<u32>, Error> {
        let (data, end) = frame.data();
        parse_v4(data, end)
    }

    fn parsed6(frame: &Frame) -> Result<Packet<Addr6>, Error> {
        let (data, end) = frame.data();
        parse_v6(data, end)
    }

    #[test]
    fn a_tcp_segment_parses_into_its_tuple_and_flags() {
        let frame = ipv4(
            IPPROTO_TCP,
            CLIENT,
            SERVICE,
            &[],
            &tcp(40000, 80, tcp::SYN, b"hi"),
            true,
        );
        let pkt = parsed(&frame).expect("parses");
        assert_eq!(pkt.tuple.saddr, u32::from_ne_bytes(CLIENT));
        assert_eq!(pkt.tuple.daddr, u32::from_ne_bytes(SERVICE));
        assert_eq!(u16::from_be(pkt.tuple.sport), 40000);
        assert_eq!(u16::from_be(pkt.tuple.dport), 80);
        assert_eq!(pkt.tuple.proto, IPPROTO_TCP);
        assert_eq!((pkt.l4, pkt.ihl, pkt.tot_len), (34, 20, 42));
        assert_eq!(pkt.tcp_flags, tcp::SYN);
        assert_eq!(pkt.l4_check_offset(), 34 + 16);
    }

    #[test]
    fn ip_options_move_the_l4_header() {
        let frame = ipv4(
            IPPROTO_UDP,
            CLIENT,
            SERVICE,
            &[1; 8],
            &udp(5353, 53, b"q"),
            true,
        );
        let pkt = parsed(&frame).expect("parses");
        assert_eq!((pkt.l4, pkt.ihl), (42, 28));
        assert_eq!(u16::from_be(pkt.tuple.dport), 53);
        assert_eq!(pkt.l4_check_offset(), 42 + 6);
    }

    #[test]
    fn fragments_parse_with_their_id_and_only_the_first_has_ports() {
        let datagram = udp(5353, 53, b"query");
        let mut first = ipv4(IPPROTO_UDP, CLIENT, SERVICE, &[], &datagram, true);
        first.bytes[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&0x1234u16.to_be_bytes());
        first.bytes[ETH_HLEN + 6] = 0x20; // MF
        let pkt = parsed(&first).expect("a first fragment parses");
        assert_eq!(pkt.fragment, Fragment::First { id: 0x1234 });
        assert_eq!(u16::from_be(pkt.tuple.dport), 53);
        assert!(pkt.has_l4());
        let mut later = ipv4(IPPROTO_UDP, CLIENT, SERVICE, &[], b"rest of it", true);
        later.bytes[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&0x1234u16.to_be_bytes());
        later.bytes[ETH_HLEN + 6] = 0;
        later.bytes[ETH_HLEN + 7] = 8; // offset 64
        let pkt = parsed(&later).expect("a later fragment parses");
        assert_eq!(pkt.fragment, Fragment::Later { id: 0x1234 });
        assert_eq!((pkt.tuple.sport, pkt.tuple.dport, pkt.l4), (0, 0, 34));
        assert!(!pkt.has_l4());
        let mut icmp = ipv4(1, CLIENT, SERVICE, &[], b"rest of it", true);
        icmp.bytes[ETH_HLEN + 7] = 8;
        assert_eq!(parsed(&icmp).err(), Some(Error::NotTcpUdp));
    }

    #[test]
    fn ipv6_fragments_parse_with_their_id_and_an_atomic_fragment_is_whole() {
        let datagram = udp(5353, 53, b"query");
        // Next header, reserved, offset 0 | M, id 7.
        let first = ipv6(
            44,
            IPPROTO_UDP,
            CLIENT6,
            SERVICE6,
            &[IPPROTO_UDP, 0, 0, 1, 0, 0, 0, 7],
            &datagram,
        );
        let pkt = parsed6(&first).expect("a first fragment parses");
        assert_eq!(pkt.fragment, Fragment::First { id: 7 });
        assert_eq!((u16::from_be(pkt.tuple.dport), pkt.l4), (53, ETH_HLEN + 48));
        // Offset 185 (1480 bytes), last.
        let later = ipv6(
            44,
            IPPROTO_UDP,
            CLIENT6,
            SERVICE6,
            &[IPPROTO_UDP, 0, 0x05, 0xc8, 0, 0, 0, 7],
            b"tail",
        );
        let pkt = parsed6(&later).expect("a later fragment parses");
        assert_eq!(pkt.fragment, Fragment::Later { id: 7 });
        assert_eq!((pkt.tuple.dport, pkt.tuple.proto), (0, IPPROTO_UDP));
        let atomic = ipv6(
            44,
            IPPROTO_UDP,
            CLIENT6,
            SERVICE6,
            &[IPPROTO_UDP, 0, 0, 0, 0, 0, 0, 7],
            &datagram,
        );
        assert_eq!(parsed6(&atomic).expect("parses").fragment, Fragment::Whole);
    }

    #[test]
    fn what_is_not_a_whole_tcp_or_udp_packet_is_an_error() {
        let segment = tcp(40000, 80, tcp::ACK, &[]);

        let mut truncated = ipv4(IPPROTO_TCP, CLIENT, SERVICE, &[], &segment, true);
        truncated.len -= 1;
        assert_eq!(parsed(&truncated).err(), Some(Error::Truncated));

        let mut arp = ipv4(IPPROTO_TCP, CLIENT, SERVICE, &[], &segment, true);
        arp.bytes[12..14].copy_from_slice(&[0x08, 0x06]);
        let (data, end) = arp.data();
        assert_eq!(ether_type(data, end), Ok(0x0806u16.to_be()));

        let icmp = ipv4(1, CLIENT, SERVICE, &[], &[8, 0, 0, 0, 0, 0, 0, 0], false);
        assert_eq!(parsed(&icmp).err(), Some(Error::NotTcpUdp));

        let mut version6 = ipv4(IPPROTO_TCP, CLIENT, SERVICE, &[], &segment, true);
        version6.bytes[ETH_HLEN] = 0x65;
        assert_eq!(parsed(&version6).err(), Some(Error::Malformed));
        let mut short_ihl = ipv4(IPPROTO_TCP, CLIENT, SERVICE, &[], &segment, true);
        short_ihl.bytes[ETH_HLEN] = 0x44;
        assert_eq!(parsed(&short_ihl).err(), Some(Error::Malformed));
        let mut short_total = ipv4(IPPROTO_TCP, CLIENT, SERVICE, &[], &segment, true);
        short_total.bytes[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(parsed(&short_total).err(), Some(Error::Malformed));
    }

    const CLIENT6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64];
    const SERVICE6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0x19, 0, 0, 0, 0, 0, 0, 0, 0x0a];
    const HOPOPTS: u8 = 0;
    const DSTOPTS: u8 = 60;

    /// An extension header of 8 bytes (`PadN` options) whose next header is `next`.
    fn ext(next: u8) -> [u8; 8] {
        [next, 0, 1, 4, 0, 0, 0, 0]
    }

    #[test]
    fn an_ipv6_segment_parses_into_its_tuple() {
        let frame = ipv6(
            IPPROTO_TCP,
            IPPROTO_TCP,
            CLIENT6,
            SERVICE6,
            &[],
            &tcp(40000, 80, tcp::SYN, b"hi"),
        );
        assert!(frame.checksum6_holds(54, IPPROTO_TCP));
        let pkt = parsed6(&frame).expect("parses");
        assert_eq!(pkt.tuple.saddr, addr6(CLIENT6));
        assert_eq!(pkt.tuple.daddr, addr6(SERVICE6));
        assert_eq!(u16::from_be(pkt.tuple.dport), 80);
        assert_eq!((pkt.l4, pkt.ihl, pkt.tot_len), (54, 40, 62));
        assert_eq!(pkt.tcp_flags, tcp::SYN);
    }

    #[test]
    fn ipv6_extension_headers_are_walked_up_to_the_bound() {
        let mut chain = Vec::new();
        chain.extend_from_slice(&ext(DSTOPTS));
        chain.extend_from_slice(&ext(IPPROTO_UDP));
        let frame = ipv6(
            HOPOPTS,
            IPPROTO_UDP,
            CLIENT6,
            SERVICE6,
            &chain,
            &udp(5353, 53, b"q"),
        );
        let pkt = parsed6(&frame).expect("parses");
        assert_eq!((pkt.l4, pkt.ihl), (54 + 16, 56));
        assert_eq!(pkt.tuple.proto, IPPROTO_UDP);
        assert_eq!(pkt.l4_check_offset(), 70 + 6);

        // A routing header of 24 bytes (length field 2) and AH (length counted in 4 bytes).
        let mut long = vec![51, 2, 0, 0, 0, 0, 0, 0];
        long.extend_from_slice(&[0; 16]);
        long.extend_from_slice(&[IPPROTO_TCP, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let frame = ipv6(
            43,
            IPPROTO_TCP,
            CLIENT6,
            SERVICE6,
            &long,
            &tcp(1, 2, 0, &[]),
        );
        assert_eq!(parsed6(&frame).map(|pkt| pkt.ihl), Ok(40 + 24 + 12));

        let mut five = Vec::new();
        for _ in 0..4 {
            five.extend_from_slice(&ext(DSTOPTS));
        }
        five.extend_from_slice(&ext(IPPROTO_TCP));
        let frame = ipv6(
            HOPOPTS,
            IPPROTO_TCP,
            CLIENT6,
            SERVICE6,
            &five,
            &tcp(1, 2, 0, &[]),
        );
        assert_eq!(parsed6(&frame).err(), Some(Error::ExtensionHeaders));
    }

    #[test]
    fn what_is_not_a_whole_ipv6_tcp_or_udp_packet_is_an_error() {
        let segment = tcp(40000, 80, tcp::ACK, &[]);
        let icmp = ipv6(58, 58, CLIENT6, SERVICE6, &[], &[135, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parsed6(&icmp).err(), Some(Error::NotTcpUdp));
        let esp = ipv6(50, 50, CLIENT6, SERVICE6, &[], &[0; 16]);
        assert_eq!(parsed6(&esp).err(), Some(Error::NotTcpUdp));
        let no_next = ipv6(HOPOPTS, 59, CLIENT6, SERVICE6, &ext(59), &[]);
        assert_eq!(parsed6(&no_next).err(), Some(Error::NotTcpUdp));

        let whole = ipv6(
            HOPOPTS,
            IPPROTO_TCP,
            CLIENT6,
            SERVICE6,
            &ext(IPPROTO_TCP),
            &segment,
        );
        for len in [ETH_HLEN, ETH_HLEN + 39, ETH_HLEN + 41, ETH_HLEN + 48 + 19] {
            let mut truncated = ipv6(
                HOPOPTS,
                IPPROTO_TCP,
                CLIENT6,
                SERVICE6,
                &ext(IPPROTO_TCP),
                &segment,
            );
            truncated.len = len;
            assert_eq!(
                parsed6(&truncated).err(),
                Some(Error::Truncated),
                "{len} bytes"
            );
        }
        assert!(parsed6(&whole).is_ok());

        let mut version4 = ipv6(IPPROTO_TCP, IPPROTO_TCP, CLIENT6, SERVICE6, &[], &segment);
        version4.bytes[ETH_HLEN] = 0x40;
        assert_eq!(parsed6(&version4).err(), Some(Error::Malformed));
        let mut jumbo = ipv6(IPPROTO_TCP, IPPROTO_TCP, CLIENT6, SERVICE6, &[], &segment);
        jumbo.bytes[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&[0, 0]);
        assert_eq!(parsed6(&jumbo).err(), Some(Error::Malformed));
        let mut unchecked = ipv6(
            IPPROTO_UDP,
            IPPROTO_UDP,
            CLIENT6,
            SERVICE6,
            &[],
            &udp(1, 53, b"q"),
        );
        unchecked.bytes[54 + 6..54 + 8].copy_from_slice(&[0, 0]);
        assert_eq!(parsed6(&unchecked).err(), Some(Error::Malformed));
    }
}
