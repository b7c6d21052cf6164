//! Address and port translation of a parsed packet, with its checksums: in place for XDP,
//! through the checksum helpers for TC (so `CHECKSUM_PARTIAL` skbs stay right).

use core::mem::offset_of;

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use proxy_common::{Addr6, Address, CtEntryOf, IPPROTO_UDP, checksum};

use crate::{
    error::Error,
    family::Family,
    packet::{ETH_HLEN, Packet, Tuple, load, ptr_at, store},
};

/// Offsets of the IPv4 checksum and addresses, and of the IPv6 addresses.
const IP_CHECK: usize = ETH_HLEN + offset_of!(Ipv4Hdr, check);
const IP_SADDR: usize = ETH_HLEN + offset_of!(Ipv4Hdr, src_addr);
const IP_DADDR: usize = ETH_HLEN + offset_of!(Ipv4Hdr, dst_addr);
const IP6_SADDR: usize = ETH_HLEN + offset_of!(Ipv6Hdr, src_addr);
const IP6_DADDR: usize = ETH_HLEN + offset_of!(Ipv6Hdr, dst_addr);

/// The tuple a packet carries after the rewrite `entry` describes (zero fields: unchanged).
#[inline(always)]
pub fn rewritten<A: Address>(tuple: &Tuple<A>, entry: &CtEntryOf<A>) -> Tuple<A> {
    Tuple {
        saddr: or_unchanged(entry.new_saddr, tuple.saddr),
        daddr: or_unchanged(entry.new_daddr, tuple.daddr),
        sport: or_unchanged(entry.new_sport, tuple.sport),
        dport: or_unchanged(entry.new_dport, tuple.dport),
        proto: tuple.proto,
    }
}

#[inline(always)]
fn or_unchanged<T: Copy + Default + PartialEq>(new: T, old: T) -> T {
    if new == T::default() { old } else { new }
}

/// Rewrites the packet in `[data, data_end)` from `pkt.tuple` to `to`, updating the IPv4 and
/// L4 checksums incrementally. An IPv4 UDP checksum of 0 (none) stays 0; IPv6 has none such
/// (the parser passes them), and a computed 0 goes out as all ones.
#[inline(always)]
pub fn rewrite_in_place<F: Family>(
    data: usize,
    data_end: usize,
    pkt: &Packet<F::Addr>,
    to: &Tuple<F::Addr>,
) -> Result<(), Error> {
    let from = &pkt.tuple;
    // The fixed-offset IP header first: the verifier cannot carry the variable-offset checks
    // below over to it, and the compiler would drop its check as implied by them.
    let _: *mut F::IpHdr = ptr_at(data, data_end, ETH_HLEN)?;
    if !pkt.has_l4() {
        // A later fragment: the addresses only (the ports and the L4 checksum, which covers
        // the whole datagram, were rewritten in its first fragment).
        F::rewrite_addresses(data, data_end, from, to, 0)?;
        return Ok(());
    }
    // Source and destination ports are the first two 16-bit words of TCP and UDP alike.
    let ports: *mut [u16; 2] = ptr_at(data, data_end, pkt.l4)?;
    let l4_check: *mut u16 = ptr_at(data, data_end, pkt.l4_check_offset())?;
    // SAFETY: ptr_at checked that both lie inside the packet, which is not resized here.
    let mut l4_sum = unsafe { *l4_check };
    let udp = from.proto == IPPROTO_UDP;
    let l4_sum_absent = udp && l4_sum == 0;
    l4_sum = F::rewrite_addresses(data, data_end, from, to, l4_sum)?;
    // SAFETY: as above; the address rewrite did not resize the packet either.
    unsafe {
        if from.sport != to.sport {
            l4_sum = checksum::update_u16(l4_sum, from.sport, to.sport);
            (*ports)[0] = to.sport;
        }
        if from.dport != to.dport {
            l4_sum = checksum::update_u16(l4_sum, from.dport, to.dport);
            (*ports)[1] = to.dport;
        }
        if !l4_sum_absent {
            *l4_check = if udp {
                checksum::udp_wire(l4_sum)
            } else {
                l4_sum
            };
        }
    }
    Ok(())
}

/// [`Family::rewrite_addresses`] of IPv4: the addresses and the header checksum.
#[inline(always)]
pub fn rewrite_ipv4_addresses(
    data: usize,
    data_end: usize,
    from: &Tuple<u32>,
    to: &Tuple<u32>,
    mut l4_sum: u16,
) -> Result<u16, Error> {
    let ip: *mut Ipv4Hdr = ptr_at(data, data_end, ETH_HLEN)?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    unsafe {
        let mut ip_sum = load(&raw const (*ip).check);
        if from.saddr != to.saddr {
            ip_sum = checksum::update_u32(ip_sum, from.saddr, to.saddr);
            l4_sum = checksum::update_u32(l4_sum, from.saddr, to.saddr);
            store(&raw mut (*ip).src_addr, to.saddr);
        }
        if from.daddr != to.daddr {
            ip_sum = checksum::update_u32(ip_sum, from.daddr, to.daddr);
            l4_sum = checksum::update_u32(l4_sum, from.daddr, to.daddr);
            store(&raw mut (*ip).dst_addr, to.daddr);
        }
        store(&raw mut (*ip).check, ip_sum);
    }
    Ok(l4_sum)
}

/// [`Family::rewrite_addresses`] of IPv6: the addresses only (the header has no checksum;
/// the L4 one covers them through the pseudo-header).
#[inline(always)]
pub fn rewrite_ipv6_addresses(
    data: usize,
    data_end: usize,
    from: &Tuple<Addr6>,
    to: &Tuple<Addr6>,
    mut l4_sum: u16,
) -> Result<u16, Error> {
    let ip: *mut Ipv6Hdr = ptr_at(data, data_end, ETH_HLEN)?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    unsafe {
        if from.saddr != to.saddr {
            l4_sum = checksum::update_addr6(l4_sum, &from.saddr, &to.saddr);
            store(&raw mut (*ip).src_addr, to.saddr);
        }
        if from.daddr != to.daddr {
            l4_sum = checksum::update_addr6(l4_sum, &from.daddr, &to.daddr);
            store(&raw mut (*ip).dst_addr, to.daddr);
        }
    }
    Ok(l4_sum)
}

/// Rewrites an skb from `pkt.tuple` to `to` with the kernel's store and checksum helpers.
#[inline(always)]
pub fn rewrite_skb<F: Family>(
    ctx: &TcContext,
    pkt: &Packet<F::Addr>,
    to: &Tuple<F::Addr>,
) -> Result<(), Error> {
    let from = &pkt.tuple;
    // A later fragment has no L4 header: the addresses only (see `rewrite_in_place`).
    let l4_check = pkt.has_l4().then(|| pkt.l4_check_offset());
    // For UDP, leave a zero checksum alone and send a computed zero as all ones.
    let mangled = if from.proto == IPPROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let address = u64::from(BPF_F_PSEUDO_HDR) | mangled | 4;
    let port = mangled | 2;
    if from.saddr != to.saddr {
        F::skb_replace_address(ctx, true, l4_check, &from.saddr, &to.saddr, address)?;
    }
    if from.daddr != to.daddr {
        F::skb_replace_address(ctx, false, l4_check, &from.daddr, &to.daddr, address)?;
    }
    let Some(l4_check) = l4_check else {
        return Ok(());
    };
    if from.sport != to.sport {
        replace_port(ctx, pkt.l4, l4_check, from.sport, to.sport, port)?;
    }
    if from.dport != to.dport {
        replace_port(ctx, pkt.l4 + 2, l4_check, from.dport, to.dport, port)?;
    }
    Ok(())
}

/// [`Family::skb_replace_address`] of IPv4: L4 and IP header checksums, then the address.
#[inline(always)]
pub fn skb_replace_ipv4_address(
    ctx: &TcContext,
    source: bool,
    l4_check: Option<usize>,
    from: u32,
    to: u32,
    l4_flags: u64,
) -> Result<(), Error> {
    let offset = if source { IP_SADDR } else { IP_DADDR };
    if let Some(l4_check) = l4_check {
        ctx.l4_csum_replace(l4_check, u64::from(from), u64::from(to), l4_flags)
            .map_err(|_| Error::SkbRewrite)?;
    }
    ctx.l3_csum_replace(IP_CHECK, u64::from(from), u64::from(to), 4)
        .map_err(|_| Error::SkbRewrite)?;
    ctx.store(offset, &to, 0).map_err(|_| Error::SkbRewrite)
}

/// [`Family::skb_replace_address`] of IPv6: the L4 checksum one word at a time (`l4_flags`
/// says 4 bytes, pseudo-header), then the 16 bytes.
#[inline(always)]
pub fn skb_replace_ipv6_address(
    ctx: &TcContext,
    source: bool,
    l4_check: Option<usize>,
    from: &Addr6,
    to: &Addr6,
    l4_flags: u64,
) -> Result<(), Error> {
    let offset = if source { IP6_SADDR } else { IP6_DADDR };
    let Some(l4_check) = l4_check else {
        return ctx.store(offset, to, 0).map_err(|_| Error::SkbRewrite);
    };
    for word in 0..4 {
        if from[word] != to[word] {
            ctx.l4_csum_replace(
                l4_check,
                u64::from(from[word]),
                u64::from(to[word]),
                l4_flags,
            )
            .map_err(|_| Error::SkbRewrite)?;
        }
    }
    ctx.store(offset, to, 0).map_err(|_| Error::SkbRewrite)
}

#[inline(always)]
fn replace_port(
    ctx: &TcContext,
    offset: usize,
    l4_check: usize,
    from: u16,
    to: u16,
    l4_flags: u64,
) -> Result<(), Error> {
    ctx.l4_csum_replace(l4_check, u64::from(from), u64::from(to), l4_flags)
        .map_err(|_| Error::SkbRewrite)?;
    ctx.store(offset, &to, 0).map_err(|_| Error::SkbRewrite)
}

#[cfg(test)]
mod tests {
    use proxy_common::{CtEntry, IPPROTO_TCP, tcp};

    use super::*;
    use crate::{
        family::V4,
        packet::{frames::*, parse_v4 as parse},
    };

    const CLIENT: [u8; 4] = [198, 18, 0, 100];
    const SERVICE: [u8; 4] = [198, 19, 0, 10];
    const POD: [u8; 4] = [198, 18, 1, 10];
    const NODE: [u8; 4] = [198, 18, 0, 2];

    /// DNAT to the pod and SNAT to the node, as a remote backend's flow is rewritten.
    fn translate(frame: &mut Frame) -> Tuple<u32> {
        let (data, end) = frame.data();
        let pkt = parse(data, end).expect("parses");
        let to = Tuple {
            saddr: u32::from_ne_bytes(NODE),
            daddr: u32::from_ne_bytes(POD),
            sport: 61000u16.to_be(),
            dport: 8080u16.to_be(),
            proto: pkt.tuple.proto,
        };
        rewrite_in_place::<V4>(data, end, &pkt, &to).expect("rewrites");
        let rewritten = parse(data, end).expect("still parses");
        assert_eq!(
            (rewritten.tuple.saddr, rewritten.tuple.daddr),
            (to.saddr, to.daddr)
        );
        assert_eq!(
            (rewritten.tuple.sport, rewritten.tuple.dport),
            (to.sport, to.dport)
        );
        to
    }

    #[test]
    fn a_rewritten_tcp_segment_keeps_valid_checksums() {
        let segment = tcp(40000, 80, tcp::ACK | tcp::PSH, b"GET / HTTP/1.1");
        let mut frame = ipv4(IPPROTO_TCP, CLIENT, SERVICE, &[], &segment, true);
        assert!(frame.checksums_hold());
        translate(&mut frame);
        assert!(frame.checksums_hold());
    }

    #[test]
    fn a_rewritten_udp_datagram_keeps_valid_checksums_and_a_missing_one_stays_missing() {
        let datagram = udp(5353, 53, b"query");
        let mut checked = ipv4(IPPROTO_UDP, CLIENT, SERVICE, &[1, 1, 1, 0], &datagram, true);
        translate(&mut checked);
        assert!(checked.checksums_hold());

        let mut unchecked = ipv4(IPPROTO_UDP, CLIENT, SERVICE, &[], &datagram, false);
        translate(&mut unchecked);
        let at = unchecked.l4() + 6;
        assert_eq!(
            unchecked.bytes[at..at + 2],
            [0, 0],
            "no checksum stays none"
        );
        assert!(unchecked.checksums_hold());
    }

    #[test]
    fn rewritten_ipv6_segments_and_datagrams_keep_valid_checksums() {
        use crate::family::V6;
        let client = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64];
        let service = [0xfd, 0, 0, 0, 0, 0, 0, 0x19, 0, 0, 0, 0, 0, 0, 0, 0x0a];
        let pod = [0xfd, 0, 0, 0, 0, 0, 0, 0x18, 0, 1, 0, 0, 0, 0, 0, 0x0a];
        let node = [0xfd, 0, 0, 0, 0, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0x02];
        let hop_by_hop = [IPPROTO_TCP, 0, 1, 4, 0, 0, 0, 0];
        let cases = [
            (IPPROTO_TCP, &[][..], tcp(40000, 80, tcp::ACK, b"GET /")),
            (IPPROTO_TCP, &hop_by_hop[..], tcp(40000, 80, tcp::SYN, b"")),
            (IPPROTO_UDP, &[][..], udp(5353, 53, b"query")),
        ];
        for (proto, ext, l4) in cases {
            let first = if ext.is_empty() { proto } else { 0 };
            let mut frame = ipv6(first, proto, client, service, ext, &l4);
            let (data, end) = frame.data_mut();
            let pkt = crate::packet::parse_v6(data, end).expect("parses");
            let to = Tuple {
                saddr: addr6(node),
                daddr: addr6(pod),
                sport: 61000u16.to_be(),
                dport: 8080u16.to_be(),
                proto,
            };
            rewrite_in_place::<V6>(data, end, &pkt, &to).expect("rewrites");
            assert_eq!(frame.bytes[22..38], node, "source");
            assert_eq!(frame.bytes[38..54], pod, "destination");
            assert!(frame.checksum6_holds(pkt.l4, proto), "{proto} {ext:?}");
        }
    }

    #[test]
    fn an_ipv6_udp_checksum_that_comes_out_zero_is_sent_as_all_ones() {
        use crate::family::V6;
        let client = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64];
        let service = [0xfd, 0, 0, 0, 0, 0, 0, 0x19, 0, 0, 0, 0, 0, 0, 0, 0x0a];
        let mut frame = ipv6(
            IPPROTO_UDP,
            IPPROTO_UDP,
            client,
            service,
            &[],
            &udp(1, 53, b"ab"),
        );
        let (data, end) = frame.data_mut();
        let pkt = crate::packet::parse_v6(data, end).expect("parses");
        // Choose the new destination port so that the new checksum is exactly 0 (0xffff
        // before the complement): the sum must change by the checksum's own complement.
        let check = u16::from_ne_bytes([frame.bytes[60], frame.bytes[61]]);
        let old_port = pkt.tuple.dport;
        let new_port = (0..=u16::MAX)
            .find(|port| checksum::update_u16(check, old_port, *port) == 0)
            .expect("a port that zeroes the checksum");
        let to = Tuple {
            dport: new_port,
            ..pkt.tuple
        };
        rewrite_in_place::<V6>(data, end, &pkt, &to).expect("rewrites");
        assert_eq!(frame.bytes[60..62], [0xff, 0xff]);
        assert!(frame.checksum6_holds(54, IPPROTO_UDP));
    }

    #[test]
    fn zero_fields_of_a_conntrack_entry_leave_the_tuple_as_it_was() {
        let tuple = Tuple {
            saddr: 1,
            daddr: 2,
            sport: 3,
            dport: 4,
            proto: IPPROTO_TCP,
        };
        let entry = CtEntry {
            new_daddr: 9,
            new_dport: 10,
            ..CtEntry::default()
        };
        let to = rewritten(&tuple, &entry);
        assert_eq!((to.saddr, to.daddr, to.sport, to.dport), (1, 9, 3, 10));
    }
}
