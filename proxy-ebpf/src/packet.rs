//! Bounds-checked packet access and the parser that describes an IPv4 TCP/UDP packet.

use core::mem::size_of;

use proxy_common::{CtKey, IPPROTO_TCP, IPPROTO_UDP};

use crate::error::Error;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const IPV4_HLEN: usize = 20;
pub const TCP_HLEN: usize = 20;
pub const IPPROTO_ICMP: u8 = 1;

/// Ethernet header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network byte order.
    pub ether_type: u16,
}

/// IPv4 header without options; multi-byte fields in network byte order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

/// TCP header without options; multi-byte fields in network byte order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpHdr {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack_seq: u32,
    /// Data offset in the high nibble.
    pub doff: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg_ptr: u16,
}

/// UDP header; fields in network byte order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    pub sport: u16,
    pub dport: u16,
    pub len: u16,
    pub check: u16,
}

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
            self.l4 + 16
        } else {
            self.l4 + 6
        }
    }
}

/// Parses Ethernet → IPv4 (honouring IHL) → TCP/UDP. Anything else, fragments included, is an
/// error the caller passes untouched.
#[inline(always)]
pub fn parse(data: usize, data_end: usize) -> Result<Packet, Error> {
    let eth: *const EthHdr = ptr_at(data, data_end, 0)?;
    // SAFETY: ptr_at checked that the header is inside the packet.
    if unsafe { (*eth).ether_type } != ETH_P_IP.to_be() {
        return Err(Error::NotIpv4);
    }
    let ip: *const Ipv4Hdr = ptr_at(data, data_end, ETH_HLEN)?;
    // SAFETY: ptr_at checked that the header is inside the packet.
    let ip = unsafe { *ip };
    if ip.version_ihl >> 4 != 4 {
        return Err(Error::Malformed);
    }
    let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
    if ihl < IPV4_HLEN {
        return Err(Error::Malformed);
    }
    let frag = u16::from_be(ip.frag_off);
    if frag & (IP_MF | IP_OFFSET) != 0 {
        return Err(Error::Fragment);
    }
    let tot_len = u16::from_be(ip.tot_len);
    if usize::from(tot_len) < ihl {
        return Err(Error::Malformed);
    }
    let l4 = ETH_HLEN + ihl;
    let (sport, dport, tcp_flags) = match ip.proto {
        IPPROTO_TCP => {
            let tcp: *const TcpHdr = ptr_at(data, data_end, l4)?;
            // SAFETY: ptr_at checked that the header is inside the packet.
            let tcp = unsafe { *tcp };
            (tcp.sport, tcp.dport, tcp.flags)
        }
        IPPROTO_UDP => {
            let udp: *const UdpHdr = ptr_at(data, data_end, l4)?;
            // SAFETY: ptr_at checked that the header is inside the packet.
            let udp = unsafe { *udp };
            (udp.sport, udp.dport, 0)
        }
        _ => return Err(Error::NotTcpUdp),
    };
    Ok(Packet {
        tuple: Tuple {
            saddr: ip.saddr,
            daddr: ip.daddr,
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
