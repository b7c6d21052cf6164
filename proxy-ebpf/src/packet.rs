//! Bounds-checked packet access and the parser that describes an IPv4 TCP/UDP packet.

use core::mem::{offset_of, size_of};

use network_types::{
    eth::{EthHdr, EtherType},
    ip::{IpProto, Ipv4Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};
use proxy_common::{CtKey, IPPROTO_TCP, IPPROTO_UDP};

use crate::error::Error;

pub const ETH_HLEN: usize = EthHdr::LEN;
pub const IPV4_HLEN: usize = Ipv4Hdr::LEN;
pub const TCP_HLEN: usize = TcpHdr::LEN;
pub const IPPROTO_ICMP: u8 = IpProto::Icmp as u8;

/// IPv4 "more fragments" flag and fragment offset mask, host byte order.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

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

/// Reads the multi-byte header field at `field` as the word it holds, in network byte order
/// (as the maps keep addresses and ports), with one load. network-types declares these fields
/// as byte arrays, and the BPF backend reads anything of alignment 1 byte by byte (so do its
/// `read_unaligned` accessors): on the per-packet path that made xdp_ingress 9% longer.
///
/// # Safety
///
/// `field` lies inside the packet (a header from [`ptr_at`]); see there for its alignment.
#[inline(always)]
pub unsafe fn load<T: Copy, const N: usize>(field: *const [u8; N]) -> T {
    const { assert!(N == size_of::<T>()) };
    // SAFETY: the caller's; the sizes match.
    unsafe { field.cast::<T>().read() }
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
    unsafe { field.cast::<T>().write(value) }
}

/// A flow's addresses, ports (network byte order) and protocol.
#[derive(Clone, Copy)]
pub struct Tuple {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Tuple {
    pub fn ct_key(&self, dir: u8) -> CtKey {
        CtKey {
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

/// What the datapath needs to know about a parsed packet.
#[derive(Clone, Copy)]
pub struct Packet {
    pub tuple: Tuple,
    /// Offset of the L4 header (the IPv4 header is at `ETH_HLEN`).
    pub l4: usize,
    /// IPv4 header length in bytes (20..=60).
    pub ihl: usize,
    /// IPv4 total length, host byte order.
    pub tot_len: u16,
    /// TCP flags; 0 for UDP.
    pub tcp_flags: u8,
}

impl Packet {
    /// Offset of the L4 checksum field.
    pub fn l4_check_offset(&self) -> usize {
        if self.tuple.proto == IPPROTO_TCP {
            self.l4 + offset_of!(TcpHdr, check)
        } else {
            self.l4 + offset_of!(UdpHdr, check)
        }
    }
}

/// Parses Ethernet → IPv4 (honouring IHL) → TCP/UDP. Anything else, fragments included, is an
/// error the caller passes untouched.
#[inline(always)]
pub fn parse(data: usize, data_end: usize) -> Result<Packet, Error> {
    let eth: *const EthHdr = ptr_at(data, data_end, 0)?;
    // SAFETY: ptr_at checked that the header is inside the packet.
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
        return Err(Error::NotIpv4);
    }
    let ip: *const Ipv4Hdr = ptr_at(data, data_end, ETH_HLEN)?;
    // SAFETY: ptr_at checked that the header is inside the packet.
    let (ip, frags, tot_len, saddr, daddr) = unsafe {
        (
            &*ip,
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
    if frags & (IP_MF | IP_OFFSET) != 0 {
        return Err(Error::Fragment);
    }
    if usize::from(tot_len) < ihl {
        return Err(Error::Malformed);
    }
    let l4 = ETH_HLEN + ihl;
    let (sport, dport, tcp_flags) = match ip.proto {
        IPPROTO_TCP => {
            let tcp: *const TcpHdr = ptr_at(data, data_end, l4)?;
            // SAFETY: ptr_at checked that the header is inside the packet.
            unsafe {
                (
                    load(&raw const (*tcp).source),
                    load(&raw const (*tcp).dest),
                    tcp_flags(&*tcp),
                )
            }
        }
        IPPROTO_UDP => {
            let udp: *const UdpHdr = ptr_at(data, data_end, l4)?;
            // SAFETY: ptr_at checked that the header is inside the packet.
            unsafe { (load(&raw const (*udp).src), load(&raw const (*udp).dst), 0) }
        }
        _ => return Err(Error::NotTcpUdp),
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
    })
}

/// The TCP flags byte (`proxy_common::tcp`'s bits: FIN, SYN, RST, PSH, ACK, ...).
#[inline(always)]
pub fn tcp_flags(tcp: &TcpHdr) -> u8 {
    // The second byte of network-types' bitfield holds the eight flags, FIN lowest.
    tcp._bitfield_1.get(8, 8) as u8
}
