//! Answers for connections to a service without endpoints: a TCP RST, or an ICMP (ICMPv6) port
//! unreachable for UDP, both from the frontend address, sent back the way the packet came;
//! written over an XDP frame (from the wire) or a socket buffer (from a pod) alike.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, xdp_action::XDP_DROP},
    programs::{TcContext, XdpContext},
};
use network_types::{
    bitfield::BitfieldU16,
    eth::EthHdr,
    icmp::Icmpv4Hdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};
use proxy_common::{Addr6, IPPROTO_ICMPV6, checksum, tcp};

use crate::{
    error::Error,
    family::{Family, V4, V6},
    forward::send,
    kernel,
    packet::{
        ETH_HLEN, IPPROTO_ICMP, IPV4_HLEN, IPV6_HLEN, Packet, TCP_HLEN, Tuple, load, ptr_at,
        tcp_flags, write_at,
    },
};

/// IPv4 "don't fragment", of the 3 flag bits.
const IP_DF: u8 = 0b010;
const TTL: u8 = 64;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
/// The L4 bytes an ICMP error quotes after the original IP header (RFC 792).
const ICMP_QUOTED_L4: usize = 8;
/// The most 16-bit words an ICMP error quotes: a 60-byte IP header and 8 bytes.
const ICMP_QUOTED_WORDS_MAX: usize = (60 + ICMP_QUOTED_L4) / size_of::<u16>();
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PORT_UNREACH: u8 = 4;
const ICMPV6_HLEN: usize = 8;
/// IPv6's minimum MTU: an ICMPv6 error quotes as much of the offending packet as fits in it
/// (RFC 4443 §2.4 (c)), as the kernel does.
const IPV6_MIN_MTU: usize = 1280;
const ICMPV6_QUOTED_MAX: usize = IPV6_MIN_MTU - IPV6_HLEN - ICMPV6_HLEN;

/// The packet an answer is written over, and how it goes back to where it came from.
pub trait Frame {
    /// The program's verdict type.
    type Verdict;
    /// The verdict that discards the packet.
    const DROP: Self::Verdict;
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Adds `len` bytes in front of the packet.
    fn grow_head(&self, len: usize) -> Result<(), Error>;
    /// Sets the packet's length to `len` bytes (shrinking it).
    fn set_len(&self, len: usize) -> Result<(), Error>;
    /// Makes the whole packet, up to `len` bytes, readable between `data` and `data_end`.
    fn make_readable(&self, len: usize);
    /// Sends the answer (headers written, addresses `reply`) back the way the packet came.
    fn send_back<F: Family>(
        &self,
        reply: &Tuple<F::Addr>,
        tot_len: u16,
    ) -> Result<Self::Verdict, Error>;
}

/// A frame from the wire: the answer is routed like any packet XDP sends.
impl Frame for XdpContext {
    type Verdict = u32;
    const DROP: u32 = XDP_DROP;

    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn grow_head(&self, len: usize) -> Result<(), Error> {
        kernel::xdp_adjust_head(self, -(len as i32))
            .then_some(())
            .ok_or(Error::Resize)
    }

    #[inline(always)]
    fn set_len(&self, len: usize) -> Result<(), Error> {
        let delta = len as i32 - kernel::xdp_len(self) as i32;
        kernel::xdp_adjust_tail(self, delta)
            .then_some(())
            .ok_or(Error::Resize)
    }

    #[inline(always)]
    fn make_readable(&self, _len: usize) {
        // An XDP frame's first buffer is all the program sees; answers quote from it only.
    }

    #[inline(always)]
    fn send_back<F: Family>(&self, reply: &Tuple<F::Addr>, tot_len: u16) -> Result<u32, Error> {
        send::<F>(self, reply, tot_len)
    }
}

/// A packet a pod sent, seen on its host-side interface: the answer goes back out of that
/// interface, into the pod.
impl Frame for TcContext {
    type Verdict = i32;
    const DROP: i32 = TC_ACT_SHOT;

    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn grow_head(&self, len: usize) -> Result<(), Error> {
        self.change_head(len as u32, 0).map_err(|_| Error::Resize)
    }

    #[inline(always)]
    fn set_len(&self, len: usize) -> Result<(), Error> {
        self.change_tail(len as u32, 0).map_err(|_| Error::Resize)
    }

    #[inline(always)]
    fn make_readable(&self, len: usize) {
        // A failed pull leaves the answer to fail its bounds checks (and the packet dropped).
        let _ = self.pull_data((self.len() as usize).min(len) as u32);
    }

    #[inline(always)]
    fn send_back<F: Family>(&self, _reply: &Tuple<F::Addr>, _tot_len: u16) -> Result<i32, Error> {
        Ok(kernel::redirect(kernel::skb_ifindex(self)) as i32)
    }
}

/// Turns a TCP segment into the RST that answers it (RFC 793, "Reset Generation"), in place,
/// behind a bare IP header of the family (an IPv6 request's extension headers are not
/// repeated). A RST is never answered: it is dropped.
#[inline(always)]
pub fn tcp_reset<F: Answer, C: Frame>(ctx: &C, pkt: &Packet<F::Addr>) -> Result<C::Verdict, Error> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    // Fixed offsets first: the verifier cannot carry the variable-offset check of the segment
    // over to them, and the compiler would drop them as implied by it.
    let eth: *mut EthHdr = ptr_at(data, data_end, 0)?;
    let ip_out: *mut F::Header = ptr_at(data, data_end, ETH_HLEN)?;
    let tcp_ptr: *mut TcpHdr = ptr_at(data, data_end, ETH_HLEN + F::HEADER_LEN)?;
    let tcp_in: *const TcpHdr = ptr_at(data, data_end, pkt.l4)?;
    // SAFETY: ptr_at checked that these headers lie inside the packet; what is read of the
    // segment is copied out before the new headers overwrite it.
    let (eth_in, flags_in, doff, seq_in, ack_seq_in) = unsafe {
        (
            *eth,
            tcp_flags(&*tcp_in),
            (*tcp_in).doff(),
            load::<u32, 4>(&raw const (*tcp_in).seq),
            load::<u32, 4>(&raw const (*tcp_in).ack_seq),
        )
    };
    if flags_in & tcp::RST != 0 {
        return Ok(C::DROP);
    }
    let payload = usize::from(pkt.tot_len).saturating_sub(pkt.ihl + usize::from(doff) * 4);
    let (seq, ack_seq, ack) = rst_numbers(flags_in, seq_in, ack_seq_in, payload as u32);
    let reply = pkt.tuple.reversed();
    let ip = F::header(&reply, TCP_HLEN as u16);
    let mut tcp_out = TcpHdr {
        source: reply.sport.to_ne_bytes(),
        dest: reply.dport.to_ne_bytes(),
        seq: seq.to_ne_bytes(),
        ack_seq: ack_seq.to_ne_bytes(),
        _bitfield_align_1: [],
        _bitfield_1: BitfieldU16::default(),
        window: [0; 2],
        check: [0; 2],
        urg_ptr: [0; 2],
    };
    tcp_out.set_doff((TCP_HLEN / 4) as u16);
    tcp_out.set_rst(1);
    tcp_out.set_ack(u16::from(ack));
    let sum = F::pseudo_header(&reply, TCP_HLEN as u16);
    tcp_out.check = checksum::finish(checksum::accumulate(sum, bytes_of(&tcp_out))).to_ne_bytes();

    // The new headers go right after the Ethernet header, over the old ones.
    // SAFETY: ptr_at checked all three headers lie inside the packet; the inputs were copied.
    unsafe {
        (*eth).dst_addr = eth_in.src_addr;
        (*eth).src_addr = eth_in.dst_addr;
        *ip_out = ip;
        *tcp_ptr = tcp_out;
    }
    let tot_len = (F::HEADER_LEN + TCP_HLEN) as u16;
    ctx.set_len(ETH_HLEN + usize::from(tot_len))?;
    ctx.send_back::<F>(&reply, tot_len)
}

/// The IP header of an answer, per family.
pub trait Answer: Family {
    type Header: Copy;
    const HEADER_LEN: usize;
    /// A header without options or extension headers for `reply`, carrying `l4_len` bytes.
    fn header(reply: &Tuple<Self::Addr>, l4_len: u16) -> Self::Header;
    /// The L4 checksum's pseudo-header sum for `reply`.
    fn pseudo_header(reply: &Tuple<Self::Addr>, l4_len: u16) -> u64;
}

impl Answer for V4 {
    type Header = Ipv4Hdr;
    const HEADER_LEN: usize = IPV4_HLEN;

    #[inline(always)]
    fn header(reply: &Tuple<u32>, l4_len: u16) -> Ipv4Hdr {
        ipv4_header(reply, IPV4_HLEN as u16 + l4_len, IP_DF)
    }

    #[inline(always)]
    fn pseudo_header(reply: &Tuple<u32>, l4_len: u16) -> u64 {
        checksum::pseudo_header(reply.saddr, reply.daddr, reply.proto, l4_len)
    }
}

impl Answer for V6 {
    type Header = Ipv6Hdr;
    const HEADER_LEN: usize = IPV6_HLEN;

    #[inline(always)]
    fn header(reply: &Tuple<Addr6>, l4_len: u16) -> Ipv6Hdr {
        ipv6_header(reply, l4_len)
    }

    #[inline(always)]
    fn pseudo_header(reply: &Tuple<Addr6>, l4_len: u16) -> u64 {
        checksum::pseudo_header6(&reply.saddr, &reply.daddr, reply.proto, u32::from(l4_len))
    }
}

/// The sequence and acknowledgment numbers (network byte order) of the RST answering a segment
/// with `flags` and `payload` bytes, and whether it acknowledges (RFC 793, "Reset Generation"):
/// a segment with ACK gets `seq = its ack`; any other one `seq = 0, ack = its seq + its
/// length`, where SYN and FIN count one each.
#[inline(always)]
pub fn rst_numbers(flags: u8, seq: u32, ack_seq: u32, payload: u32) -> (u32, u32, bool) {
    if flags & tcp::ACK != 0 {
        return (ack_seq, 0, false);
    }
    let mut len = payload;
    if flags & tcp::SYN != 0 {
        len += 1;
    }
    if flags & tcp::FIN != 0 {
        len += 1;
    }
    (0, u32::from_be(seq).wrapping_add(len).to_be(), true)
}

/// Turns a UDP datagram into an ICMP destination unreachable / port unreachable quoting its IP
/// header and first 8 bytes (RFC 792, RFC 1122 §3.2.2.1).
#[inline(always)]
pub fn icmp_port_unreachable<C: Frame>(ctx: &C, pkt: &Packet<u32>) -> Result<C::Verdict, Error> {
    let eth: *const EthHdr = ptr_at(ctx.data(), ctx.data_end(), 0)?;
    // SAFETY: ptr_at checked that the Ethernet header lies inside the packet.
    let eth_in = unsafe { *eth };
    let quoted = pkt.ihl + ICMP_QUOTED_L4;
    let added = IPV4_HLEN + Icmpv4Hdr::LEN;
    // Room for a new IP and ICMP header in front; the original IP header then follows them.
    ctx.grow_head(added)?;
    let quoted_at = ETH_HLEN + added;
    ctx.set_len(quoted_at + quoted)?;
    ctx.make_readable(quoted_at + quoted);

    let reply = Tuple {
        saddr: pkt.tuple.daddr,
        daddr: pkt.tuple.saddr,
        sport: 0,
        dport: 0,
        proto: IPPROTO_ICMP,
    };
    let tot_len = (added + quoted) as u16;
    let ip = ipv4_header(&reply, tot_len, 0);
    let mut icmp = Icmpv4Hdr {
        type_: ICMP_DEST_UNREACH,
        code: ICMP_PORT_UNREACH,
        check: [0; 2],
        data: [0; 4],
    };
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let mut sum = checksum::accumulate(0, bytes_of(&icmp));
    for word in 0..ICMP_QUOTED_WORDS_MAX {
        if word * 2 >= quoted {
            break;
        }
        let value: *const u16 = ptr_at(data, data_end, quoted_at + word * 2)?;
        // SAFETY: ptr_at checked that the word lies inside the packet.
        sum += u64::from(unsafe { *value });
    }
    icmp.check = checksum::finish(sum).to_ne_bytes();

    let eth: *mut EthHdr = ptr_at(data, data_end, 0)?;
    let ip_out: *mut Ipv4Hdr = ptr_at(data, data_end, ETH_HLEN)?;
    let icmp_out: *mut Icmpv4Hdr = ptr_at(data, data_end, ETH_HLEN + IPV4_HLEN)?;
    // SAFETY: ptr_at checked all three headers lie inside the packet.
    unsafe {
        *eth = EthHdr {
            dst_addr: eth_in.src_addr,
            src_addr: eth_in.dst_addr,
            ether_type: eth_in.ether_type,
        };
        *ip_out = ip;
        *icmp_out = icmp;
    }
    ctx.send_back::<V4>(&reply, tot_len)
}

/// Turns a UDP datagram into an ICMPv6 destination unreachable / port unreachable (RFC 4443
/// §3.1) quoting as much of the datagram, from its IPv6 header on, as fits in the minimum MTU.
#[inline(always)]
pub fn icmp6_port_unreachable<C: Frame>(ctx: &C, pkt: &Packet<Addr6>) -> Result<C::Verdict, Error> {
    let eth: *const EthHdr = ptr_at(ctx.data(), ctx.data_end(), 0)?;
    // SAFETY: ptr_at checked that the Ethernet header lies inside the packet.
    let eth_in = unsafe { *eth };
    let quoted = usize::from(pkt.tot_len).min(ICMPV6_QUOTED_MAX);
    let added = IPV6_HLEN + ICMPV6_HLEN;
    // Room for a new IPv6 and ICMPv6 header in front; the original packet then follows them.
    ctx.grow_head(added)?;
    let quoted_at = ETH_HLEN + added;
    ctx.set_len(quoted_at + quoted)?;
    ctx.make_readable(quoted_at + quoted);

    let reply = Tuple {
        saddr: pkt.tuple.daddr,
        daddr: pkt.tuple.saddr,
        sport: 0,
        dport: 0,
        proto: IPPROTO_ICMPV6,
    };
    let icmp_len = ICMPV6_HLEN + quoted;
    let ip = ipv6_header(&reply, icmp_len as u16);
    let mut icmp = [0u8; ICMPV6_HLEN];
    icmp[0] = ICMPV6_DEST_UNREACH;
    icmp[1] = ICMPV6_PORT_UNREACH;
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let pseudo =
        checksum::pseudo_header6(&reply.saddr, &reply.daddr, IPPROTO_ICMPV6, icmp_len as u32);
    let mut sum = checksum::accumulate(pseudo, &icmp);
    for word in 0..ICMPV6_QUOTED_MAX / 2 {
        if word * 2 + 1 >= quoted {
            break;
        }
        let value: *const u16 = ptr_at(data, data_end, quoted_at + word * 2)?;
        // SAFETY: ptr_at checked that the word lies inside the packet.
        sum += u64::from(unsafe { *value });
    }
    if quoted % 2 == 1 {
        // The odd last byte, padded with a zero byte (RFC 1071).
        let last: *const u8 = ptr_at(data, data_end, quoted_at + quoted - 1)?;
        // SAFETY: ptr_at checked that the byte lies inside the packet.
        sum += u64::from(u16::from_ne_bytes([unsafe { *last }, 0]));
    }
    let check = checksum::finish(sum).to_ne_bytes();
    icmp[2] = check[0];
    icmp[3] = check[1];

    let eth: *mut EthHdr = ptr_at(data, data_end, 0)?;
    let ip_out: *mut Ipv6Hdr = ptr_at(data, data_end, ETH_HLEN)?;
    // SAFETY: ptr_at checked both headers lie inside the packet.
    unsafe {
        *eth = EthHdr {
            dst_addr: eth_in.src_addr,
            src_addr: eth_in.dst_addr,
            ether_type: eth_in.ether_type,
        };
        *ip_out = ip;
    }
    write_at(data, data_end, ETH_HLEN + IPV6_HLEN, icmp)?;
    ctx.send_back::<V6>(&reply, (IPV6_HLEN + icmp_len) as u16)
}

/// An IPv6 header without extension headers for `tuple`, carrying `payload_len` bytes.
#[inline(always)]
fn ipv6_header(tuple: &Tuple<Addr6>, payload_len: u16) -> Ipv6Hdr {
    let mut src_addr = [0; 16];
    let mut dst_addr = [0; 16];
    for word in 0..4 {
        src_addr[word * 4..word * 4 + 4].copy_from_slice(&tuple.saddr[word].to_ne_bytes());
        dst_addr[word * 4..word * 4 + 4].copy_from_slice(&tuple.daddr[word].to_ne_bytes());
    }
    Ipv6Hdr {
        vcf: [0x60, 0, 0, 0],
        payload_len: payload_len.to_be_bytes(),
        next_hdr: tuple.proto,
        hop_limit: TTL,
        src_addr,
        dst_addr,
    }
}

/// An IPv4 header without options for `tuple`, with its checksum.
#[inline(always)]
fn ipv4_header(tuple: &Tuple<u32>, tot_len: u16, frag_flags: u8) -> Ipv4Hdr {
    let mut ip = Ipv4Hdr {
        vihl: 0,
        tos: 0,
        tot_len: [0; 2],
        id: [0; 2],
        frags: [0; 2],
        ttl: TTL,
        proto: tuple.proto,
        check: [0; 2],
        src_addr: tuple.saddr.to_ne_bytes(),
        dst_addr: tuple.daddr.to_ne_bytes(),
    };
    ip.set_vihl(4, IPV4_HLEN as u8);
    ip.set_tot_len(tot_len);
    ip.set_frags(frag_flags, 0);
    ip.check = checksum::compute(bytes_of(&ip)).to_ne_bytes();
    ip
}

/// The bytes of a header built on the stack.
#[inline(always)]
fn bytes_of<T: Copy>(header: &T) -> &[u8] {
    // SAFETY: only used with network-types' `#[repr(C)]` header structs, which are byte arrays
    // without padding, so every byte is initialised; the slice borrows `header`.
    unsafe {
        core::slice::from_raw_parts(
            core::ptr::from_ref::<T>(header).cast::<u8>(),
            size_of::<T>(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rst_answers_an_acknowledging_segment_with_its_acknowledgment() {
        let (seq, ack_seq, ack) =
            rst_numbers(tcp::ACK | tcp::PSH, 1000u32.to_be(), 77u32.to_be(), 5);
        assert_eq!((u32::from_be(seq), ack_seq, ack), (77, 0, false));
    }

    #[test]
    fn a_rst_acknowledges_a_syn_and_the_payload_and_fin_of_other_segments() {
        let cases = [
            (tcp::SYN, 0, 1),
            (tcp::SYN, 10, 11),
            (tcp::FIN, 3, 4),
            (tcp::SYN | tcp::FIN, 0, 2),
            (0, 7, 7),
        ];
        for (flags, payload, acked) in cases {
            let (seq, ack_seq, ack) = rst_numbers(flags, 4000u32.to_be(), 0, payload);
            assert_eq!(
                (seq, u32::from_be(ack_seq), ack),
                (0, 4000 + acked, true),
                "flags {flags:#x} payload {payload}"
            );
        }
        // Sequence numbers wrap.
        let (_, ack_seq, _) = rst_numbers(tcp::SYN, u32::MAX.to_be(), 0, 0);
        assert_eq!(u32::from_be(ack_seq), 0);
    }
}
