//! Builds Ethernet + IPv4 + TCP/UDP/ICMP and Ethernet + IPv6 (+ extension headers) +
//! TCP/UDP/ICMPv6 frames with correct checksums, and parses frames back while recomputing every
//! checksum from scratch: the fixtures of the packet tests. The IPv6 checksums are summed here,
//! big-endian word by word, independently of `proxy_common::checksum`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use proxy_common::{IPPROTO_TCP, IPPROTO_UDP, checksum};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_ICMP: u8 = 1;
pub const ETH_HLEN: usize = 14;

/// IPv4 "don't fragment" and "more fragments" flags (host order, in the `frag_off` word).
pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;

pub type Mac = [u8; 6];

/// The transport part of a frame under construction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
    },
    Udp {
        sport: u16,
        dport: u16,
        /// `false` sends checksum 0 ("none").
        checksum: bool,
    },
    Icmp {
        kind: u8,
        code: u8,
        /// The 4 bytes after the checksum (unused / next-hop MTU for unreachables).
        rest: [u8; 4],
    },
}

/// An IPv4 frame description; [`Frame::build`] turns it into bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub eth_src: Mac,
    pub eth_dst: Mac,
    pub saddr: Ipv4Addr,
    pub daddr: Ipv4Addr,
    pub tos: u8,
    pub id: u16,
    /// Flags and fragment offset, host order.
    pub frag_off: u16,
    pub ttl: u8,
    /// IPv4 options, a multiple of 4 bytes.
    pub options: Vec<u8>,
    pub transport: Transport,
    pub payload: Vec<u8>,
}

/// Default MACs: the frames come from `PEER_MAC` and are addressed to `NODE_MAC`.
pub const NODE_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
pub const PEER_MAC: Mac = [0x02, 0, 0, 0, 0, 0x02];

fn frame(src: SocketAddrV4, dst: SocketAddrV4, transport: Transport) -> Frame {
    Frame {
        eth_src: PEER_MAC,
        eth_dst: NODE_MAC,
        saddr: *src.ip(),
        daddr: *dst.ip(),
        tos: 0,
        id: 0x1234,
        frag_off: IP_DF,
        ttl: 64,
        options: Vec::new(),
        transport,
        payload: Vec::new(),
    }
}

/// A TCP segment from `src` to `dst` with the given flags, seq 1000, ack 0, window 65535.
pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Frame {
    frame(
        src,
        dst,
        Transport::Tcp {
            sport: src.port(),
            dport: dst.port(),
            seq: 1000,
            ack: 0,
            flags,
            window: 65535,
        },
    )
}

/// A UDP datagram from `src` to `dst` with a checksum.
pub fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> Frame {
    frame(
        src,
        dst,
        Transport::Udp {
            sport: src.port(),
            dport: dst.port(),
            checksum: true,
        },
    )
}

/// An ICMP message from `src` to `dst` (ports ignored).
pub fn icmp(src: Ipv4Addr, dst: Ipv4Addr, kind: u8, code: u8) -> Frame {
    frame(
        SocketAddrV4::new(src, 0),
        SocketAddrV4::new(dst, 0),
        Transport::Icmp {
            kind,
            code,
            rest: [0; 4],
        },
    )
}

impl Frame {
    #[must_use]
    pub fn macs(mut self, src: Mac, dst: Mac) -> Self {
        self.eth_src = src;
        self.eth_dst = dst;
        self
    }

    #[must_use]
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    #[must_use]
    pub fn options(mut self, options: &[u8]) -> Self {
        assert!(
            options.len().is_multiple_of(4) && options.len() <= 40,
            "bad IPv4 options length"
        );
        self.options = options.to_vec();
        self
    }

    #[must_use]
    pub fn frag_off(mut self, frag_off: u16) -> Self {
        self.frag_off = frag_off;
        self
    }

    #[must_use]
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    #[must_use]
    pub fn id(mut self, id: u16) -> Self {
        self.id = id;
        self
    }

    #[must_use]
    pub fn seq_ack(mut self, new_seq: u32, new_ack: u32) -> Self {
        if let Transport::Tcp { seq, ack, .. } = &mut self.transport {
            *seq = new_seq;
            *ack = new_ack;
        }
        self
    }

    #[must_use]
    pub fn window(mut self, new_window: u16) -> Self {
        if let Transport::Tcp { window, .. } = &mut self.transport {
            *window = new_window;
        }
        self
    }

    #[must_use]
    pub fn without_udp_checksum(mut self) -> Self {
        if let Transport::Udp { checksum, .. } = &mut self.transport {
            *checksum = false;
        }
        self
    }

    /// Changes source and destination addresses and ports, as a translation would.
    #[must_use]
    pub fn addresses(mut self, src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        self.saddr = *src.ip();
        self.daddr = *dst.ip();
        match &mut self.transport {
            Transport::Tcp { sport, dport, .. } | Transport::Udp { sport, dport, .. } => {
                *sport = src.port();
                *dport = dst.port();
            }
            Transport::Icmp { .. } => {}
        }
        self
    }

    fn proto(&self) -> u8 {
        match self.transport {
            Transport::Tcp { .. } => IPPROTO_TCP,
            Transport::Udp { .. } => IPPROTO_UDP,
            Transport::Icmp { .. } => IPPROTO_ICMP,
        }
    }

    /// The frame's bytes with every checksum computed.
    pub fn build(&self) -> Vec<u8> {
        let l4 = self.transport_bytes();
        let ihl = 20 + self.options.len();
        let tot_len = u16::try_from(ihl + l4.len()).expect("frame too long");
        let mut ip = Vec::with_capacity(ihl);
        ip.push(0x40 | u8::try_from(ihl / 4).expect("IPv4 options too long"));
        ip.push(self.tos);
        ip.extend_from_slice(&tot_len.to_be_bytes());
        ip.extend_from_slice(&self.id.to_be_bytes());
        ip.extend_from_slice(&self.frag_off.to_be_bytes());
        ip.push(self.ttl);
        ip.push(self.proto());
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&self.saddr.octets());
        ip.extend_from_slice(&self.daddr.octets());
        ip.extend_from_slice(&self.options);
        let check = checksum::compute(&ip);
        ip[10..12].copy_from_slice(&check.to_ne_bytes());

        let mut out = Vec::with_capacity(ETH_HLEN + ip.len() + l4.len());
        out.extend_from_slice(&self.eth_dst);
        out.extend_from_slice(&self.eth_src);
        out.extend_from_slice(&ETH_P_IP.to_be_bytes());
        out.extend_from_slice(&ip);
        out.extend_from_slice(&l4);
        out
    }

    fn transport_bytes(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        let check_at = match self.transport {
            Transport::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                window,
            } => {
                l4.extend_from_slice(&sport.to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&seq.to_be_bytes());
                l4.extend_from_slice(&ack.to_be_bytes());
                l4.extend_from_slice(&[0x50, flags]);
                l4.extend_from_slice(&window.to_be_bytes());
                l4.extend_from_slice(&[0, 0, 0, 0]);
                Some(16)
            }
            Transport::Udp {
                sport,
                dport,
                checksum,
            } => {
                let len = u16::try_from(8 + self.payload.len()).expect("datagram too long");
                l4.extend_from_slice(&sport.to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&len.to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                checksum.then_some(6)
            }
            Transport::Icmp { kind, code, rest } => {
                l4.extend_from_slice(&[kind, code, 0, 0]);
                l4.extend_from_slice(&rest);
                None
            }
        };
        l4.extend_from_slice(&self.payload);
        match check_at {
            Some(at) => {
                let check = l4_checksum(self.saddr, self.daddr, self.proto(), &l4);
                let check = if self.proto() == IPPROTO_UDP {
                    checksum::udp_wire(check)
                } else {
                    check
                };
                l4[at..at + 2].copy_from_slice(&check.to_ne_bytes());
            }
            None if self.proto() == IPPROTO_ICMP => {
                let check = checksum::compute(&l4);
                l4[2..4].copy_from_slice(&check.to_ne_bytes());
            }
            None => {}
        }
        l4
    }
}

/// TCP/UDP checksum of `segment` (its checksum field zero or included, see [`parse`]).
fn l4_checksum(saddr: Ipv4Addr, daddr: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let sum = checksum::pseudo_header(
        u32::from_ne_bytes(saddr.octets()),
        u32::from_ne_bytes(daddr.octets()),
        proto,
        u16::try_from(segment.len()).expect("segment too long"),
    );
    checksum::finish(checksum::accumulate(sum, segment))
}

/// An ICMP destination unreachable (type 3) quoting `original`'s IP header and 8 bytes.
pub fn icmp_unreachable(src: Ipv4Addr, dst: Ipv4Addr, code: u8, original: &[u8]) -> Frame {
    let ihl = usize::from(original[ETH_HLEN] & 0x0f) * 4;
    let quoted = &original[ETH_HLEN..ETH_HLEN + ihl + 8];
    icmp(src, dst, 3, code).payload(quoted)
}

/// A non-IPv4 frame: an ARP request or an IPv6 header, for "not ours" cases.
pub fn ethernet(ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&NODE_MAC);
    out.extend_from_slice(&PEER_MAC);
    out.extend_from_slice(&ether_type.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// What [`parse`] found in a frame; every checksum was verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    pub saddr: Ipv4Addr,
    pub daddr: Ipv4Addr,
    pub ttl: u8,
    pub ihl: usize,
    pub transport: Transport,
    pub payload: Vec<u8>,
}

impl Parsed {
    pub fn source(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.saddr, self.ports().0)
    }

    pub fn destination(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.daddr, self.ports().1)
    }

    fn ports(&self) -> (u16, u16) {
        match self.transport {
            Transport::Tcp { sport, dport, .. } | Transport::Udp { sport, dport, .. } => {
                (sport, dport)
            }
            Transport::Icmp { .. } => (0, 0),
        }
    }
}

/// Parses an Ethernet + IPv4 + TCP/UDP/ICMP frame and recomputes the IPv4 and L4 checksums from
/// scratch; any mismatch or inconsistent length is an error naming the field.
#[expect(
    clippy::too_many_lines,
    reason = "the headers in wire order, each checked where it is read"
)]
pub fn parse(frame: &[u8]) -> Result<Parsed, String> {
    let need = |len: usize, what: &str| {
        if frame.len() < len {
            Err(format!(
                "frame of {} bytes too short for {what}",
                frame.len()
            ))
        } else {
            Ok(())
        }
    };
    need(ETH_HLEN + 20, "Ethernet + IPv4 headers")?;
    let ether_type = u16::from_be_bytes([frame[12], frame[13]]);
    if ether_type != ETH_P_IP {
        return Err(format!("ether type {ether_type:#06x} is not IPv4"));
    }
    let ip = &frame[ETH_HLEN..];
    if ip[0] >> 4 != 4 {
        return Err(format!("IP version {}", ip[0] >> 4));
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let tot_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    need(ETH_HLEN + ihl, "IPv4 options")?;
    if tot_len < ihl || ETH_HLEN + tot_len != frame.len() {
        return Err(format!(
            "IPv4 total length {tot_len} does not match a frame of {} bytes",
            frame.len()
        ));
    }
    let computed = checksum::fold(checksum::accumulate(0, &ip[..ihl]));
    if computed != 0xffff {
        return Err(format!(
            "IPv4 header checksum {:#06x} is wrong",
            u16::from_be_bytes([ip[10], ip[11]])
        ));
    }
    let saddr = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let daddr = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let l4 = &ip[ihl..tot_len];
    let be16 = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    let be32 = |at: usize| u32::from_be_bytes([l4[at], l4[at + 1], l4[at + 2], l4[at + 3]]);
    let (transport, header_len) = match ip[9] {
        IPPROTO_TCP => {
            if l4.len() < 20 {
                return Err("TCP header truncated".into());
            }
            if l4_checksum(saddr, daddr, IPPROTO_TCP, l4) != 0 {
                return Err(format!("TCP checksum {:#06x} is wrong", be16(16)));
            }
            let transport = Transport::Tcp {
                sport: be16(0),
                dport: be16(2),
                seq: be32(4),
                ack: be32(8),
                flags: l4[13],
                window: be16(14),
            };
            (transport, usize::from(l4[12] >> 4) * 4)
        }
        IPPROTO_UDP => {
            if l4.len() < 8 {
                return Err("UDP header truncated".into());
            }
            if usize::from(be16(4)) != l4.len() {
                return Err(format!("UDP length {} but {} bytes", be16(4), l4.len()));
            }
            let has_checksum = be16(6) != 0;
            if has_checksum && l4_checksum(saddr, daddr, IPPROTO_UDP, l4) != 0 {
                return Err(format!("UDP checksum {:#06x} is wrong", be16(6)));
            }
            let transport = Transport::Udp {
                sport: be16(0),
                dport: be16(2),
                checksum: has_checksum,
            };
            (transport, 8)
        }
        IPPROTO_ICMP => {
            if l4.len() < 8 {
                return Err("ICMP header truncated".into());
            }
            if checksum::fold(checksum::accumulate(0, l4)) != 0xffff {
                return Err(format!("ICMP checksum {:#06x} is wrong", be16(2)));
            }
            let transport = Transport::Icmp {
                kind: l4[0],
                code: l4[1],
                rest: [l4[4], l4[5], l4[6], l4[7]],
            };
            (transport, 8)
        }
        proto => return Err(format!("IP protocol {proto} not handled by the parser")),
    };
    // A mutated header may claim more TCP header than the segment has.
    let Some(payload) = l4.get(header_len..) else {
        return Err(format!(
            "TCP data offset {header_len} beyond a segment of {} bytes",
            l4.len()
        ));
    };
    Ok(Parsed {
        eth_dst: frame[0..6].try_into().expect("6 bytes"),
        eth_src: frame[6..12].try_into().expect("6 bytes"),
        saddr,
        daddr,
        ttl: ip[8],
        ihl,
        transport,
        payload: payload.to_vec(),
    })
}

pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_DSTOPTS: u8 = 60;
pub const IPV6_HLEN: usize = 40;

/// One IPv6 extension header: its type (the previous header's next-header value) and the
/// bytes after its next-header and length octets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtHeader {
    pub kind: u8,
    pub body: Vec<u8>,
}

impl ExtHeader {
    /// Hop-by-hop or destination options of `len` bytes in all (a multiple of 8), `PadN`.
    pub fn options(kind: u8, len: usize) -> Self {
        assert!(
            len >= 8 && len.is_multiple_of(8),
            "options header of {len} bytes"
        );
        let mut body = vec![0; len - 2];
        body[0] = 1; // `PadN`
        body[1] = u8::try_from(len - 4).expect("short options");
        Self { kind, body }
    }

    /// A Fragment header (offset in 8-byte units, more-fragments flag, identification).
    pub fn fragment(offset: u16, more: bool, id: u32) -> Self {
        let mut body = (offset << 3 | u16::from(more)).to_be_bytes().to_vec();
        body.extend_from_slice(&id.to_be_bytes());
        Self {
            kind: IPPROTO_FRAGMENT,
            body,
        }
    }

    /// The header's bytes with `next` as its next header.
    fn bytes(&self, next: u8) -> Vec<u8> {
        let total = self.body.len() + 2;
        let len = match self.kind {
            IPPROTO_FRAGMENT => 0,
            IPPROTO_AH => total / 4 - 2,
            _ => total / 8 - 1,
        };
        let mut out = vec![next, u8::try_from(len).expect("short extension header")];
        out.extend_from_slice(&self.body);
        out
    }
}

/// An IPv6 frame description; [`Frame6::build`] turns it into bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame6 {
    pub eth_src: Mac,
    pub eth_dst: Mac,
    pub saddr: Ipv6Addr,
    pub daddr: Ipv6Addr,
    pub flow_label: u32,
    pub hop_limit: u8,
    pub ext: Vec<ExtHeader>,
    /// `Transport::Icmp` is ICMPv6 here.
    pub transport: Transport,
    pub payload: Vec<u8>,
}

fn frame6(src: SocketAddrV6, dst: SocketAddrV6, transport: Transport) -> Frame6 {
    Frame6 {
        eth_src: PEER_MAC,
        eth_dst: NODE_MAC,
        saddr: *src.ip(),
        daddr: *dst.ip(),
        flow_label: 0x1_2345,
        hop_limit: 64,
        ext: Vec::new(),
        transport,
        payload: Vec::new(),
    }
}

/// An IPv6 TCP segment from `src` to `dst` with the given flags, seq 1000, ack 0, window 65535.
pub fn tcp6(src: SocketAddrV6, dst: SocketAddrV6, flags: u8) -> Frame6 {
    frame6(
        src,
        dst,
        Transport::Tcp {
            sport: src.port(),
            dport: dst.port(),
            seq: 1000,
            ack: 0,
            flags,
            window: 65535,
        },
    )
}

/// An IPv6 UDP datagram from `src` to `dst` (the checksum is mandatory in IPv6).
pub fn udp6(src: SocketAddrV6, dst: SocketAddrV6) -> Frame6 {
    frame6(
        src,
        dst,
        Transport::Udp {
            sport: src.port(),
            dport: dst.port(),
            checksum: true,
        },
    )
}

/// An ICMPv6 message from `src` to `dst`; `rest` is the 4 bytes after the checksum.
pub fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, kind: u8, code: u8, rest: [u8; 4]) -> Frame6 {
    frame6(
        SocketAddrV6::new(src, 0, 0, 0),
        SocketAddrV6::new(dst, 0, 0, 0),
        Transport::Icmp { kind, code, rest },
    )
}

/// An ICMPv6 destination unreachable (type 1) quoting as much of `original` (from its IPv6
/// header on) as fits in the minimum MTU of 1280 bytes (RFC 4443 §2.4 (c)).
pub fn icmp6_unreachable(src: Ipv6Addr, dst: Ipv6Addr, code: u8, original: &[u8]) -> Frame6 {
    let ip = &original[ETH_HLEN..];
    let quoted = ip.len().min(1280 - IPV6_HLEN - 8);
    icmp6(src, dst, 1, code, [0; 4]).payload(&ip[..quoted])
}

impl Frame6 {
    #[must_use]
    pub fn macs(mut self, src: Mac, dst: Mac) -> Self {
        self.eth_src = src;
        self.eth_dst = dst;
        self
    }

    #[must_use]
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    #[must_use]
    pub fn hop_limit(mut self, hop_limit: u8) -> Self {
        self.hop_limit = hop_limit;
        self
    }

    #[must_use]
    pub fn flow_label(mut self, flow_label: u32) -> Self {
        self.flow_label = flow_label;
        self
    }

    /// Appends an extension header (in order, before the transport header).
    #[must_use]
    pub fn ext(mut self, header: ExtHeader) -> Self {
        self.ext.push(header);
        self
    }

    #[must_use]
    pub fn seq_ack(mut self, new_seq: u32, new_ack: u32) -> Self {
        if let Transport::Tcp { seq, ack, .. } = &mut self.transport {
            *seq = new_seq;
            *ack = new_ack;
        }
        self
    }

    #[must_use]
    pub fn window(mut self, new_window: u16) -> Self {
        if let Transport::Tcp { window, .. } = &mut self.transport {
            *window = new_window;
        }
        self
    }

    /// Changes source and destination addresses and ports, as a translation would.
    #[must_use]
    pub fn addresses(mut self, src: SocketAddrV6, dst: SocketAddrV6) -> Self {
        self.saddr = *src.ip();
        self.daddr = *dst.ip();
        match &mut self.transport {
            Transport::Tcp { sport, dport, .. } | Transport::Udp { sport, dport, .. } => {
                *sport = src.port();
                *dport = dst.port();
            }
            Transport::Icmp { .. } => {}
        }
        self
    }

    fn proto(&self) -> u8 {
        match self.transport {
            Transport::Tcp { .. } => IPPROTO_TCP,
            Transport::Udp { .. } => IPPROTO_UDP,
            Transport::Icmp { .. } => IPPROTO_ICMPV6,
        }
    }

    /// The frame's bytes with the L4 checksum computed over the IPv6 pseudo-header.
    pub fn build(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        let check_at = match self.transport {
            Transport::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                window,
            } => {
                l4.extend_from_slice(&sport.to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&seq.to_be_bytes());
                l4.extend_from_slice(&ack.to_be_bytes());
                l4.extend_from_slice(&[0x50, flags]);
                l4.extend_from_slice(&window.to_be_bytes());
                l4.extend_from_slice(&[0, 0, 0, 0]);
                16
            }
            Transport::Udp { sport, dport, .. } => {
                let len = u16::try_from(8 + self.payload.len()).expect("datagram too long");
                l4.extend_from_slice(&sport.to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&len.to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                6
            }
            Transport::Icmp { kind, code, rest } => {
                l4.extend_from_slice(&[kind, code, 0, 0]);
                l4.extend_from_slice(&rest);
                2
            }
        };
        l4.extend_from_slice(&self.payload);
        let mut check = checksum6(self.saddr, self.daddr, self.proto(), &l4);
        if check == 0 && self.proto() == IPPROTO_UDP {
            check = 0xffff;
        }
        l4[check_at..check_at + 2].copy_from_slice(&check.to_be_bytes());

        let mut ext = Vec::new();
        for (i, header) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(self.proto(), |next| next.kind);
            ext.extend_from_slice(&header.bytes(next));
        }
        let first = self.ext.first().map_or(self.proto(), |header| header.kind);
        let payload_len = u16::try_from(ext.len() + l4.len()).expect("packet too long");
        let mut out = Vec::with_capacity(ETH_HLEN + IPV6_HLEN + ext.len() + l4.len());
        out.extend_from_slice(&self.eth_dst);
        out.extend_from_slice(&self.eth_src);
        out.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
        out.extend_from_slice(&(6 << 28 | self.flow_label).to_be_bytes());
        out.extend_from_slice(&payload_len.to_be_bytes());
        out.extend_from_slice(&[first, self.hop_limit]);
        out.extend_from_slice(&self.saddr.octets());
        out.extend_from_slice(&self.daddr.octets());
        out.extend_from_slice(&ext);
        out.extend_from_slice(&l4);
        out
    }
}

/// The one's complement sum of `data` as big-endian 16-bit words, folded (RFC 1071).
fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// The TCP/UDP/ICMPv6 checksum of `segment` over the IPv6 pseudo-header (RFC 8200 §8.1),
/// computed from scratch; 0 for a segment whose checksum field already holds the right value.
fn checksum6(saddr: Ipv6Addr, daddr: Ipv6Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&saddr.octets());
    pseudo.extend_from_slice(&daddr.octets());
    pseudo.extend_from_slice(&u32::try_from(segment.len()).expect("short").to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, proto]);
    let sum = sum16(sum16(0, &pseudo), segment);
    !u16::try_from(sum).expect("folded")
}

/// What [`parse6`] found in an IPv6 frame; the L4 checksum was verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed6 {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    pub saddr: Ipv6Addr,
    pub daddr: Ipv6Addr,
    pub hop_limit: u8,
    /// The extension headers' types, in order.
    pub ext: Vec<u8>,
    pub transport: Transport,
    pub payload: Vec<u8>,
}

impl Parsed6 {
    pub fn source(&self) -> SocketAddrV6 {
        SocketAddrV6::new(self.saddr, self.ports().0, 0, 0)
    }

    pub fn destination(&self) -> SocketAddrV6 {
        SocketAddrV6::new(self.daddr, self.ports().1, 0, 0)
    }

    fn ports(&self) -> (u16, u16) {
        match self.transport {
            Transport::Tcp { sport, dport, .. } | Transport::Udp { sport, dport, .. } => {
                (sport, dport)
            }
            Transport::Icmp { .. } => (0, 0),
        }
    }
}

/// Parses an Ethernet + IPv6 (+ extension headers) + TCP/UDP/ICMPv6 frame and recomputes the
/// L4 checksum from scratch; any mismatch, a UDP checksum of 0 or an inconsistent length is an
/// error naming the field.
#[expect(
    clippy::too_many_lines,
    reason = "the headers in wire order, each checked where it is read"
)]
pub fn parse6(frame: &[u8]) -> Result<Parsed6, String> {
    if frame.len() < ETH_HLEN + IPV6_HLEN {
        return Err(format!("frame of {} bytes too short for IPv6", frame.len()));
    }
    let ether_type = u16::from_be_bytes([frame[12], frame[13]]);
    if ether_type != ETH_P_IPV6 {
        return Err(format!("ether type {ether_type:#06x} is not IPv6"));
    }
    let ip = &frame[ETH_HLEN..];
    if ip[0] >> 4 != 6 {
        return Err(format!("IP version {}", ip[0] >> 4));
    }
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    if IPV6_HLEN + payload_len != ip.len() {
        return Err(format!(
            "IPv6 payload length {payload_len} does not match a frame of {} bytes",
            frame.len()
        ));
    }
    let octets = |at: usize| -> [u8; 16] { ip[at..at + 16].try_into().expect("16 bytes") };
    let saddr = Ipv6Addr::from(octets(8));
    let daddr = Ipv6Addr::from(octets(24));
    let mut next = ip[6];
    let mut at = IPV6_HLEN;
    let mut ext = Vec::new();
    while matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
    ) {
        if ip.len() < at + 8 {
            return Err(format!("extension header {next} truncated"));
        }
        let len = match next {
            IPPROTO_FRAGMENT => 8,
            IPPROTO_AH => (usize::from(ip[at + 1]) + 2) * 4,
            _ => (usize::from(ip[at + 1]) + 1) * 8,
        };
        ext.push(next);
        next = ip[at];
        at += len;
    }
    if ip.len() < at {
        return Err("extension headers longer than the packet".into());
    }
    let l4 = &ip[at..];
    let be16 = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    let be32 = |at: usize| u32::from_be_bytes([l4[at], l4[at + 1], l4[at + 2], l4[at + 3]]);
    let (min, name) = match next {
        IPPROTO_TCP => (20, "TCP"),
        IPPROTO_UDP => (8, "UDP"),
        IPPROTO_ICMPV6 => (8, "ICMPv6"),
        proto => return Err(format!("next header {proto} not handled by the parser")),
    };
    if l4.len() < min {
        return Err(format!("{name} header truncated"));
    }
    if checksum6(saddr, daddr, next, l4) != 0 {
        let at = match next {
            IPPROTO_TCP => 16,
            IPPROTO_UDP => 6,
            _ => 2,
        };
        return Err(format!("{name} checksum {:#06x} is wrong", be16(at)));
    }
    let (transport, header_len) = match next {
        IPPROTO_TCP => (
            Transport::Tcp {
                sport: be16(0),
                dport: be16(2),
                seq: be32(4),
                ack: be32(8),
                flags: l4[13],
                window: be16(14),
            },
            usize::from(l4[12] >> 4) * 4,
        ),
        IPPROTO_UDP => {
            if usize::from(be16(4)) != l4.len() {
                return Err(format!("UDP length {} but {} bytes", be16(4), l4.len()));
            }
            if be16(6) == 0 {
                return Err("UDP checksum 0 is invalid in IPv6".into());
            }
            let transport = Transport::Udp {
                sport: be16(0),
                dport: be16(2),
                checksum: true,
            };
            (transport, 8)
        }
        _ => (
            Transport::Icmp {
                kind: l4[0],
                code: l4[1],
                rest: [l4[4], l4[5], l4[6], l4[7]],
            },
            8,
        ),
    };
    // A mutated header may claim more TCP header than the segment has.
    let Some(payload) = l4.get(header_len..) else {
        return Err(format!(
            "TCP data offset {header_len} beyond a segment of {} bytes",
            l4.len()
        ));
    };
    Ok(Parsed6 {
        eth_dst: frame[0..6].try_into().expect("6 bytes"),
        eth_src: frame[6..12].try_into().expect("6 bytes"),
        saddr,
        daddr,
        hop_limit: ip[7],
        ext,
        transport,
        payload: payload.to_vec(),
    })
}

/// The IPv6 Fragment header's length.
const FRAG6_HLEN: usize = 8;

/// Splits a built IPv4 frame into fragments carrying `chunk` bytes of its IP payload each (a
/// multiple of 8), as a router does: the same header and identification in each, MF on all
/// but the last, offsets in 8-byte units, DF cleared, each header's checksum its own.
pub fn fragments(frame: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0, "fragment payloads are multiples of 8 bytes");
    let ihl = usize::from(frame[ETH_HLEN] & 0x0f) * 4;
    let (header, payload) = frame.split_at(ETH_HLEN + ihl);
    payload
        .chunks(chunk)
        .enumerate()
        .map(|(i, part)| {
            let mut out = header.to_vec();
            let ip = ETH_HLEN;
            let tot_len = u16::try_from(ihl + part.len()).expect("short fragment");
            out[ip + 2..ip + 4].copy_from_slice(&tot_len.to_be_bytes());
            let more = (i + 1) * chunk < payload.len();
            let offset = u16::try_from(i * chunk / 8).expect("offset fits 13 bits");
            let frag_off = offset | if more { IP_MF } else { 0 };
            out[ip + 6..ip + 8].copy_from_slice(&frag_off.to_be_bytes());
            out[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
            let check = checksum::compute(&out[ip..ip + ihl]);
            out[ip + 10..ip + 12].copy_from_slice(&check.to_ne_bytes());
            out.extend_from_slice(part);
            out
        })
        .collect()
}

/// Splits a built IPv6 frame without extension headers into fragments carrying `chunk` bytes
/// of its payload each (a multiple of 8), each behind a Fragment header with `id` (RFC 8200
/// §4.5).
pub fn fragments6(frame: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0, "fragment payloads are multiples of 8 bytes");
    let ip = ETH_HLEN;
    let (header, payload) = frame.split_at(ip + IPV6_HLEN);
    let next = header[ip + 6];
    payload
        .chunks(chunk)
        .enumerate()
        .map(|(i, part)| {
            let mut out = header.to_vec();
            let payload_len = u16::try_from(FRAG6_HLEN + part.len()).expect("short fragment");
            out[ip + 4..ip + 6].copy_from_slice(&payload_len.to_be_bytes());
            out[ip + 6] = IPPROTO_FRAGMENT;
            let more = (i + 1) * chunk < payload.len();
            let offset = u16::try_from(i * chunk / 8).expect("offset fits 13 bits");
            let offset_flags = offset << 3 | u16::from(more);
            out.extend_from_slice(&[next, 0]);
            out.extend_from_slice(&offset_flags.to_be_bytes());
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(part);
            out
        })
        .collect()
}

/// Whether a frame is an IPv4 fragment, or an IPv6 packet whose first extension header is a
/// Fragment header: its L4 checksum covers bytes of other frames.
pub fn is_fragment(frame: &[u8]) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x00]) => frame
            .get(ETH_HLEN + 6..ETH_HLEN + 8)
            .is_some_and(|f| u16::from_be_bytes([f[0], f[1]]) & (IP_MF | 0x1fff) != 0),
        Some([0x86, 0xdd]) => frame.get(ETH_HLEN + 6) == Some(&IPPROTO_FRAGMENT),
        _ => false,
    }
}

/// The frame `fragments` (of [`fragments`] or [`fragments6`], in order) were split from, with
/// the headers of the first: for checking the whole datagram's checksums from scratch.
pub fn reassemble(fragments: &[Vec<u8>]) -> Vec<u8> {
    let first = &fragments[0];
    let ip = ETH_HLEN;
    if first[12..14] == [0x86, 0xdd] {
        let mut out = first[..ip + IPV6_HLEN].to_vec();
        out[ip + 6] = first[ip + IPV6_HLEN];
        for fragment in fragments {
            out.extend_from_slice(&fragment[ip + IPV6_HLEN + FRAG6_HLEN..]);
        }
        let payload_len = u16::try_from(out.len() - ip - IPV6_HLEN).expect("short datagram");
        out[ip + 4..ip + 6].copy_from_slice(&payload_len.to_be_bytes());
        return out;
    }
    let ihl = usize::from(first[ip] & 0x0f) * 4;
    let mut out = first[..ip + ihl].to_vec();
    for fragment in fragments {
        out.extend_from_slice(&fragment[ip + ihl..]);
    }
    let tot_len = u16::try_from(out.len() - ip).expect("short datagram");
    out[ip + 2..ip + 4].copy_from_slice(&tot_len.to_be_bytes());
    out[ip + 6..ip + 12].fill(0);
    out[ip + 8] = first[ip + 8];
    out[ip + 9] = first[ip + 9];
    let check = checksum::compute(&out[ip..ip + ihl]);
    out[ip + 10..ip + 12].copy_from_slice(&check.to_ne_bytes());
    out
}

/// Parses a frame of either family (for failure messages and output checks).
pub fn parse_any(frame: &[u8]) -> Result<String, String> {
    match frame.get(12..14) {
        Some([0x86, 0xdd]) => parse6(frame).map(|parsed| format!("{parsed:?}")),
        _ => parse(frame).map(|parsed| format!("{parsed:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(a: [u8; 4], port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(a), port)
    }

    #[test]
    fn built_frames_parse_back_with_valid_checksums() {
        let (client, server) = (addr([198, 18, 0, 100], 40000), addr([198, 19, 0, 10], 80));
        let frames = [
            tcp(client, server, 0x02).payload(b"hello").build(),
            tcp(client, server, 0x10).options(&[1, 1, 1, 0]).build(),
            udp(client, server).payload(b"odd").build(),
            udp(client, server).without_udp_checksum().build(),
            icmp(*client.ip(), *server.ip(), 8, 0)
                .payload(b"ping")
                .build(),
        ];
        for frame in frames {
            let parsed = parse(&frame).unwrap_or_else(|err| panic!("{err}: {frame:02x?}"));
            assert_eq!(parsed.saddr, *client.ip());
        }
    }

    /// A TCP data offset past the segment (found by the packet fuzzing: the parser sliced
    /// past the end) is an error, checksum valid or not.
    #[test]
    fn a_tcp_data_offset_past_the_segment_is_an_error() {
        let (client, server) = (addr([198, 18, 0, 100], 40000), addr([198, 19, 0, 10], 80));
        let mut frame = tcp(client, server, 0x10).payload(b"abcd").build();
        let tcp_at = ETH_HLEN + 20;
        // Data offset 15 (60 bytes) over a 24-byte segment; the urgent pointer takes up the
        // checksum's difference (0x5000 -> 0xf000 adds 0xa000; 0x5fff makes it 0xffff).
        frame[tcp_at + 12] = 0xf0;
        frame[tcp_at + 18..tcp_at + 20].copy_from_slice(&[0x5f, 0xff]);
        let err = parse(&frame).expect_err("no TCP header of 60 bytes in 24");
        assert!(
            err.contains("data offset 60 beyond a segment of 24 bytes"),
            "{err}"
        );
    }

    #[test]
    fn a_flipped_bit_is_caught() {
        let (client, server) = (addr([198, 18, 0, 100], 40000), addr([198, 19, 0, 10], 53));
        let good = udp(client, server).payload(b"query").build();
        for at in [ETH_HLEN + 12, ETH_HLEN + 20, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            assert!(parse(&bad).is_err(), "flip at byte {at} not detected");
        }
    }

    #[test]
    fn known_tcp_checksum() {
        // A SYN 10.0.0.1:1234 -> 10.0.0.2:80, seq 0, window 0: checksum from a reference stack.
        let syn = tcp(addr([10, 0, 0, 1], 1234), addr([10, 0, 0, 2], 80), 0x02)
            .seq_ack(0, 0)
            .window(0)
            .build();
        let check = u16::from_be_bytes([syn[ETH_HLEN + 20 + 16], syn[ETH_HLEN + 20 + 17]]);
        // Pseudo header + header words, folded by hand: 0x0a00+0x0001+0x0a00+0x0002+0x0006
        // +0x0014 + 0x04d2+0x0050+0x5002 = 0x6941 -> complement 0x96be.
        assert_eq!(check, 0x96be);
    }

    fn addr6(last: u16, port: u16) -> SocketAddrV6 {
        SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, last), port, 0, 0)
    }

    #[test]
    fn built_ipv6_frames_parse_back_with_valid_checksums() {
        let (client, server) = (addr6(0x64, 40000), addr6(0x10, 80));
        let frames = [
            tcp6(client, server, 0x02).payload(b"hello").build(),
            tcp6(client, server, 0x10)
                .ext(ExtHeader::options(IPPROTO_HOPOPTS, 8))
                .ext(ExtHeader::options(IPPROTO_DSTOPTS, 16))
                .build(),
            udp6(client, server).payload(b"odd").build(),
            udp6(client, server)
                .ext(ExtHeader::fragment(0, true, 7))
                .build(),
            icmp6(*client.ip(), *server.ip(), 128, 0, [0, 1, 0, 1])
                .payload(b"ping")
                .build(),
        ];
        for frame in frames {
            let parsed = parse6(&frame).unwrap_or_else(|err| panic!("{err}: {frame:02x?}"));
            assert_eq!(parsed.saddr, *client.ip());
            let mut bad = frame.clone();
            let last = bad.len() - 1;
            bad[last] ^= 0x40;
            assert!(parse6(&bad).is_err(), "a flipped bit is caught");
        }
    }

    #[test]
    fn known_icmpv6_checksum() {
        // An echo request fe80::1 -> ff02::1, id 0, seq 0, no data, summed by hand: the
        // pseudo-header words 0xfe80+0x0001+0xff02+0x0001+0x0008+0x003a = 0x1fdc6, the message
        // word 0x8000: 0x27dc6 -> folded 0x7dc8 -> complement 0x8237.
        let echo = icmp6(
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            128,
            0,
            [0; 4],
        )
        .build();
        let at = ETH_HLEN + IPV6_HLEN + 2;
        assert_eq!(u16::from_be_bytes([echo[at], echo[at + 1]]), 0x8237);
    }
}
