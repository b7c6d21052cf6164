//! ICMP and ICMPv6 errors about translated flows (fragmentation needed / packet too big, port
//! unreachable, time exceeded, parameter problem). An error quotes the packet it is about as
//! that packet was sent, translated; it is translated back like a packet of the flow going the
//! error's way (its outer destination, the quoted addresses and ports, every checksum), as
//! netfilter does for RELATED packets. Without this a client never learns a smaller path MTU
//! through a NodePort, and waits for timeouts instead of seeing port unreachable.

use aya_ebpf::{
    bindings::{BPF_F_RECOMPUTE_CSUM, TC_ACT_OK, xdp_action::XDP_PASS},
    programs::{TcContext, XdpContext},
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use proxy_common::{
    Addr6, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_SNAT, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    checksum,
};

use crate::{
    conntrack,
    error::Error,
    family::{Family, V4, V6},
    forward::forward,
    nat::rewritten,
    packet::{ETH_HLEN, IPPROTO_ICMP, IPV4_HLEN, IPV6_HLEN, Tuple, read_at},
};

/// ICMP errors: destination unreachable, time exceeded, parameter problem.
const ICMP_ERRORS: [u8; 3] = [3, 11, 12];
/// ICMPv6 errors: destination unreachable, packet too big, time exceeded, parameter problem.
const ICMPV6_ERRORS: [u8; 4] = [1, 2, 3, 4];
/// Both ICMP headers are 8 bytes before the quoted packet.
const ICMP_HLEN: usize = 8;
/// Offset of the checksum in both ICMP headers, and in the quoted TCP and UDP headers.
const ICMP_CHECK: usize = 2;
const TCP_CHECK: usize = 16;
const UDP_CHECK: usize = 6;

/// A parsed ICMP or ICMPv6 error quoting a TCP or UDP packet.
#[derive(Clone, Copy)]
pub struct IcmpError<A> {
    pub saddr: A,
    pub daddr: A,
    /// The quoted packet's addresses, ports and protocol, as it was sent.
    pub quoted: Tuple<A>,
    /// Offsets of the ICMP header and of the quoted IP and L4 headers.
    pub icmp: usize,
    pub quoted_ip: usize,
    pub quoted_l4: usize,
    /// The outer IP packet's length.
    pub tot_len: u16,
}

/// What differs between ICMP and ICMPv6 errors.
pub trait IcmpFamily: Family {
    /// Parses an error message quoting a TCP or UDP packet; anything else is `NotTcpUdp`.
    fn parse_error(data: usize, data_end: usize) -> Result<IcmpError<Self::Addr>, Error>;
    /// `check` updated for an address that changes from `old` to `new`.
    fn update_check(check: u16, old: &Self::Addr, new: &Self::Addr) -> u16;
    /// Whether the ICMP checksum covers the outer addresses (ICMPv6's pseudo-header).
    const PSEUDO_HEADER: bool;
    /// Offsets in an IP header of the source and destination addresses, and of the header
    /// checksum (IPv4 only).
    const SADDR: usize;
    const DADDR: usize;
    const HEADER_CHECK: Option<usize>;
}

impl IcmpFamily for V4 {
    const PSEUDO_HEADER: bool = false;
    const SADDR: usize = core::mem::offset_of!(Ipv4Hdr, src_addr);
    const DADDR: usize = core::mem::offset_of!(Ipv4Hdr, dst_addr);
    const HEADER_CHECK: Option<usize> = Some(core::mem::offset_of!(Ipv4Hdr, check));

    #[inline(always)]
    fn parse_error(data: usize, data_end: usize) -> Result<IcmpError<u32>, Error> {
        let ip: Ipv4Hdr = read_at(data, data_end, ETH_HLEN)?;
        let ihl = usize::from(ip.ihl());
        // Only a whole (or first-fragment) error has the quote where the parser looks.
        if ip.proto != IPPROTO_ICMP || ihl < IPV4_HLEN || ip.frag_offset() != 0 {
            return Err(Error::NotTcpUdp);
        }
        let icmp = ETH_HLEN + ihl;
        // Type and code (a 1-byte read's bounds check compiles to a form the verifier rejects).
        let [kind, _]: [u8; 2] = read_at(data, data_end, icmp)?;
        if !ICMP_ERRORS.contains(&kind) {
            return Err(Error::NotTcpUdp);
        }
        let quoted_ip = icmp + ICMP_HLEN;
        let inner: Ipv4Hdr = read_at(data, data_end, quoted_ip)?;
        let inner_ihl = usize::from(inner.ihl());
        if inner.version() != 4
            || inner_ihl < IPV4_HLEN
            || inner.frag_offset() != 0
            || (inner.proto != IPPROTO_TCP && inner.proto != IPPROTO_UDP)
        {
            return Err(Error::NotTcpUdp);
        }
        let quoted_l4 = quoted_ip + inner_ihl;
        let ports: [u16; 2] = read_at(data, data_end, quoted_l4)?;
        Ok(IcmpError {
            saddr: u32::from_ne_bytes(ip.src_addr),
            daddr: u32::from_ne_bytes(ip.dst_addr),
            quoted: Tuple {
                saddr: u32::from_ne_bytes(inner.src_addr),
                daddr: u32::from_ne_bytes(inner.dst_addr),
                sport: ports[0],
                dport: ports[1],
                proto: inner.proto,
            },
            icmp,
            quoted_ip,
            quoted_l4,
            tot_len: ip.tot_len(),
        })
    }

    #[inline(always)]
    fn update_check(check: u16, old: &u32, new: &u32) -> u16 {
        checksum::update_u32(check, *old, *new)
    }
}

impl IcmpFamily for V6 {
    const PSEUDO_HEADER: bool = true;
    const SADDR: usize = core::mem::offset_of!(Ipv6Hdr, src_addr);
    const DADDR: usize = core::mem::offset_of!(Ipv6Hdr, dst_addr);
    const HEADER_CHECK: Option<usize> = None;

    #[inline(always)]
    fn parse_error(data: usize, data_end: usize) -> Result<IcmpError<Addr6>, Error> {
        // Field by field rather than whole headers: this path's stack frame is tight.
        // Errors carry no extension headers in practice, outside or in the quote; one that
        // does is passed as it is.
        let ip = ETH_HLEN;
        let [payload_len, next]: [u16; 2] = read_at(data, data_end, ip + 4)?;
        if next.to_ne_bytes()[0] != IPPROTO_ICMPV6 {
            return Err(Error::NotTcpUdp);
        }
        let icmp = ip + IPV6_HLEN;
        let [kind, _]: [u8; 2] = read_at(data, data_end, icmp)?;
        if !ICMPV6_ERRORS.contains(&kind) {
            return Err(Error::NotTcpUdp);
        }
        let quoted_ip = icmp + ICMP_HLEN;
        let [version, _, _, _, _, _, quoted_next, _]: [u8; 8] = read_at(data, data_end, quoted_ip)?;
        if version >> 4 != 6 || (quoted_next != IPPROTO_TCP && quoted_next != IPPROTO_UDP) {
            return Err(Error::NotTcpUdp);
        }
        let quoted_l4 = quoted_ip + IPV6_HLEN;
        let ports: [u16; 2] = read_at(data, data_end, quoted_l4)?;
        Ok(IcmpError {
            saddr: read_at(data, data_end, ip + Self::SADDR)?,
            daddr: read_at(data, data_end, ip + Self::DADDR)?,
            quoted: Tuple {
                saddr: read_at(data, data_end, quoted_ip + Self::SADDR)?,
                daddr: read_at(data, data_end, quoted_ip + Self::DADDR)?,
                sport: ports[0],
                dport: ports[1],
                proto: quoted_next,
            },
            icmp,
            quoted_ip,
            quoted_l4,
            tot_len: IPV6_HLEN as u16 + u16::from_be(payload_len),
        })
    }

    #[inline(always)]
    fn update_check(check: u16, old: &Addr6, new: &Addr6) -> u16 {
        checksum::update_addr6(check, old, new)
    }
}

/// Reading and writing a packet's bytes, in an XDP frame or an skb alike.
trait Bytes {
    fn load<T: Copy>(&self, offset: usize) -> Result<T, Error>;
    fn put<T: Copy>(&self, offset: usize, value: T) -> Result<(), Error>;
}

impl Bytes for XdpContext {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Result<T, Error> {
        read_at(self.data(), self.data_end(), offset)
    }

    #[inline(always)]
    fn put<T: Copy>(&self, offset: usize, value: T) -> Result<(), Error> {
        crate::packet::write_at(self.data(), self.data_end(), offset, value)
    }
}

impl Bytes for TcContext {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Result<T, Error> {
        TcContext::load(self, offset).map_err(|_| Error::Truncated)
    }

    #[inline(always)]
    fn put<T: Copy>(&self, offset: usize, value: T) -> Result<(), Error> {
        // The kernel keeps a received skb's checksum-complete value right.
        self.store(offset, &value, u64::from(BPF_F_RECOMPUTE_CSUM))
            .map_err(|_| Error::SkbRewrite)
    }
}

/// Rewrites the error for its quoted packet to read `quoted` and its outer destination
/// `daddr`: the quoted addresses and ports, the quoted IPv4 header checksum, the quoted L4
/// checksum when the quote reaches it (as netfilter does; an IPv4 error quotes only 8 bytes
/// of TCP), the outer destination with its IPv4 header checksum, and the ICMP checksum over
/// all of them, each incrementally.
#[inline(always)]
fn rewrite<F: IcmpFamily, B: Bytes>(
    packet: &B,
    err: &IcmpError<F::Addr>,
    quoted: &Tuple<F::Addr>,
    daddr: F::Addr,
) -> Result<(), Error> {
    let check_at = err.icmp + ICMP_CHECK;
    let mut check: u16 = packet.load(check_at)?;
    let from = &err.quoted;
    if let Some(header_check) = F::HEADER_CHECK {
        let at = err.quoted_ip + header_check;
        let old: u16 = packet.load(at)?;
        let new = F::update_check(
            F::update_check(old, &from.saddr, &quoted.saddr),
            &from.daddr,
            &quoted.daddr,
        );
        packet.put(at, new)?;
        check = checksum::update_u16(check, old, new);
    }
    if from.saddr != quoted.saddr {
        packet.put(err.quoted_ip + F::SADDR, quoted.saddr)?;
        check = F::update_check(check, &from.saddr, &quoted.saddr);
    }
    if from.daddr != quoted.daddr {
        packet.put(err.quoted_ip + F::DADDR, quoted.daddr)?;
        check = F::update_check(check, &from.daddr, &quoted.daddr);
    }
    if from.sport != quoted.sport {
        packet.put(err.quoted_l4, quoted.sport)?;
        check = checksum::update_u16(check, from.sport, quoted.sport);
    }
    if from.dport != quoted.dport {
        packet.put(err.quoted_l4 + 2, quoted.dport)?;
        check = checksum::update_u16(check, from.dport, quoted.dport);
    }
    let udp = from.proto == IPPROTO_UDP;
    let l4_check_at = err.quoted_l4 + if udp { UDP_CHECK } else { TCP_CHECK };
    if l4_check_at + 2 <= ETH_HLEN + usize::from(err.tot_len) {
        let old: u16 = packet.load(l4_check_at)?;
        // A UDP checksum of 0 is none (IPv4), and stays none.
        if !(udp && old == 0) {
            let mut new = F::update_check(old, &from.saddr, &quoted.saddr);
            new = F::update_check(new, &from.daddr, &quoted.daddr);
            new = checksum::update_u16(new, from.sport, quoted.sport);
            new = checksum::update_u16(new, from.dport, quoted.dport);
            if udp {
                new = checksum::udp_wire(new);
            }
            packet.put(l4_check_at, new)?;
            check = checksum::update_u16(check, old, new);
        }
    }
    if err.daddr != daddr {
        packet.put(ETH_HLEN + F::DADDR, daddr)?;
        if let Some(header_check) = F::HEADER_CHECK {
            let at = ETH_HLEN + header_check;
            let old: u16 = packet.load(at)?;
            packet.put(at, F::update_check(old, &err.daddr, &daddr))?;
        }
        if F::PSEUDO_HEADER {
            check = F::update_check(check, &err.daddr, &daddr);
        }
    }
    packet.put(check_at, check)
}

/// `err`, if it goes where errors go: to the source of the packet it quotes (RFC 792, RFC
/// 4443). One addressed elsewhere is no error of a flow's, whatever it quotes: passed as it is.
#[inline(always)]
fn to_sender<A: PartialEq>(err: IcmpError<A>) -> Result<IcmpError<A>, Error> {
    if err.daddr == err.quoted.saddr {
        Ok(err)
    } else {
        Err(Error::NotTcpUdp)
    }
}

/// An error arriving from the wire at `xdp_ingress`: about a packet a SNATed flow sent to its
/// backend (it comes to the SNAT address and goes on to the client), or about a reply a
/// client got (it goes on to the backend, past the SNAT when the flow has one). `NotTcpUdp`
/// for an error about no flow of ours.
#[inline(always)]
pub fn from_wire<F: IcmpFamily>(ctx: &XdpContext) -> Result<u32, Error> {
    let err = to_sender(F::parse_error(ctx.data(), ctx.data_end())?)?;
    // The packet of the flow that goes the error's way: the quoted one, reversed.
    let flow_way = err.quoted.reversed();
    if flow_way.daddr == F::snat_addr()
        && let Some(entry) = conntrack::lookup::<F>(&flow_way.ct_key(CT_DIR_REPLY))
        && entry.get().flags & CT_F_SNAT != 0
    {
        let to = rewritten(&flow_way, &entry.get());
        return forward_error::<F>(ctx, &err, &to);
    }
    let Some(entry) = conntrack::lookup::<F>(&flow_way.ct_key(CT_DIR_FORWARD)) else {
        return Err(Error::NotTcpUdp);
    };
    let flow = entry.get();
    let to = rewritten(&flow_way, &flow);
    if flow.flags & CT_F_SNAT != 0 {
        return forward_error::<F>(ctx, &err, &to);
    }
    // A local backend: the stack delivers it.
    rewrite::<F, _>(ctx, &err, &to.reversed(), to.daddr)?;
    Ok(XDP_PASS)
}

/// Rewrites the error for the flow's packet `to` and sends it on to `to`'s destination.
#[inline(always)]
fn forward_error<F: IcmpFamily>(
    ctx: &XdpContext,
    err: &IcmpError<F::Addr>,
    to: &Tuple<F::Addr>,
) -> Result<u32, Error> {
    rewrite::<F, _>(ctx, err, &to.reversed(), to.daddr)?;
    let outer = Tuple {
        saddr: err.saddr,
        daddr: to.daddr,
        sport: 0,
        dport: 0,
        proto: if F::PSEUDO_HEADER {
            IPPROTO_ICMPV6
        } else {
            IPPROTO_ICMP
        },
    };
    forward::<F>(ctx, &outer, err.tot_len)
}

/// An error on its way to a client (`tc_egress`: the node's own, about a packet it forwarded
/// to a local backend; `tc_to_pod`: any, about a packet of the pod's flow): turned back like
/// the flow's replies when the reply entry carries `owner`. `NotTcpUdp` for one about no flow
/// of ours.
#[inline(always)]
pub fn to_client<F: IcmpFamily>(ctx: &TcContext, owner: u8) -> Result<i32, Error> {
    let err = match F::parse_error(ctx.data(), ctx.data_end()) {
        Err(Error::Truncated) => {
            let _ = ctx.pull_data(ctx.len().min(F::MAX_HEADERS * 2));
            F::parse_error(ctx.data(), ctx.data_end())?
        }
        parsed => parsed?,
    };
    let err = to_sender(err)?;
    // The packet of the flow that goes the error's way: the quoted one, reversed.
    let flow_way = err.quoted.reversed();
    let Some(entry) = conntrack::lookup::<F>(&flow_way.ct_key(CT_DIR_REPLY)) else {
        return Err(Error::NotTcpUdp);
    };
    let reply = entry.get();
    if reply.flags & owner == 0 {
        return Err(Error::NotTcpUdp);
    }
    let to = rewritten(&flow_way, &reply);
    rewrite::<F, _>(ctx, &err, &to.reversed(), to.daddr)?;
    Ok(TC_ACT_OK)
}
