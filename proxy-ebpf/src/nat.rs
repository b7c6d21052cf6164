//! Address and port translation of a parsed packet, with its checksums: in place for XDP,
//! through the checksum helpers for TC (so `CHECKSUM_PARTIAL` skbs stay right).

use core::mem::offset_of;

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use network_types::ip::Ipv4Hdr;
use proxy_common::{CtEntry, IPPROTO_UDP, checksum};

use crate::{
    error::Error,
    packet::{ETH_HLEN, Packet, Tuple, load, ptr_at, store},
};

/// Offsets of the IPv4 checksum and addresses.
const IP_CHECK: usize = ETH_HLEN + offset_of!(Ipv4Hdr, check);
const IP_SADDR: usize = ETH_HLEN + offset_of!(Ipv4Hdr, src_addr);
const IP_DADDR: usize = ETH_HLEN + offset_of!(Ipv4Hdr, dst_addr);

/// The tuple a packet carries after the rewrite `entry` describes (zero fields: unchanged).
#[inline(always)]
pub fn rewritten(tuple: &Tuple, entry: &CtEntry) -> Tuple {
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
/// L4 checksums incrementally. A UDP checksum of 0 (none) stays 0.
#[inline(always)]
pub fn rewrite_in_place(
    data: usize,
    data_end: usize,
    pkt: &Packet,
    to: &Tuple,
) -> Result<(), Error> {
    let from = &pkt.tuple;
    let ip: *mut Ipv4Hdr = ptr_at(data, data_end, ETH_HLEN)?;
    // Source and destination ports are the first two 16-bit words of TCP and UDP alike.
    let ports: *mut [u16; 2] = ptr_at(data, data_end, pkt.l4)?;
    let l4_check: *mut u16 = ptr_at(data, data_end, pkt.l4_check_offset())?;
    // SAFETY: ptr_at checked that all three lie inside the packet, which is not resized here.
    unsafe {
        let mut ip_sum = load(&raw const (*ip).check);
        let mut l4_sum = *l4_check;
        let udp = from.proto == IPPROTO_UDP;
        let l4_sum_absent = udp && l4_sum == 0;
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
        if from.sport != to.sport {
            l4_sum = checksum::update_u16(l4_sum, from.sport, to.sport);
            (*ports)[0] = to.sport;
        }
        if from.dport != to.dport {
            l4_sum = checksum::update_u16(l4_sum, from.dport, to.dport);
            (*ports)[1] = to.dport;
        }
        store(&raw mut (*ip).check, ip_sum);
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

/// Rewrites an skb from `pkt.tuple` to `to` with the kernel's store and checksum helpers.
#[inline(always)]
pub fn rewrite_skb(ctx: &TcContext, pkt: &Packet, to: &Tuple) -> Result<(), Error> {
    let from = &pkt.tuple;
    let l4_check = pkt.l4_check_offset();
    // For UDP, leave a zero checksum alone and send a computed zero as all ones.
    let mangled = if from.proto == IPPROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let address = u64::from(BPF_F_PSEUDO_HDR) | mangled | 4;
    let port = mangled | 2;
    if from.saddr != to.saddr {
        replace_address(ctx, IP_SADDR, l4_check, from.saddr, to.saddr, address)?;
    }
    if from.daddr != to.daddr {
        replace_address(ctx, IP_DADDR, l4_check, from.daddr, to.daddr, address)?;
    }
    if from.sport != to.sport {
        replace_port(ctx, pkt.l4, l4_check, from.sport, to.sport, port)?;
    }
    if from.dport != to.dport {
        replace_port(ctx, pkt.l4 + 2, l4_check, from.dport, to.dport, port)?;
    }
    Ok(())
}

#[inline(always)]
fn replace_address(
    ctx: &TcContext,
    offset: usize,
    l4_check: usize,
    from: u32,
    to: u32,
    l4_flags: u64,
) -> Result<(), Error> {
    ctx.l4_csum_replace(l4_check, u64::from(from), u64::from(to), l4_flags)
        .map_err(|_| Error::SkbRewrite)?;
    ctx.l3_csum_replace(IP_CHECK, u64::from(from), u64::from(to), 4)
        .map_err(|_| Error::SkbRewrite)?;
    ctx.store(offset, &to, 0).map_err(|_| Error::SkbRewrite)
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
    use proxy_common::{IPPROTO_TCP, tcp};

    use super::*;
    use crate::packet::{frames::*, parse};

    const CLIENT: [u8; 4] = [198, 18, 0, 100];
    const SERVICE: [u8; 4] = [198, 19, 0, 10];
    const POD: [u8; 4] = [198, 18, 1, 10];
    const NODE: [u8; 4] = [198, 18, 0, 2];

    /// DNAT to the pod and SNAT to the node, as a remote backend's flow is rewritten.
    fn translate(frame: &mut Frame) -> Tuple {
        let (data, end) = frame.data();
        let pkt = parse(data, end).expect("parses");
        let to = Tuple {
            saddr: u32::from_ne_bytes(NODE),
            daddr: u32::from_ne_bytes(POD),
            sport: 61000u16.to_be(),
            dport: 8080u16.to_be(),
            proto: pkt.tuple.proto,
        };
        rewrite_in_place(data, end, &pkt, &to).expect("rewrites");
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
