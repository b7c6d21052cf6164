//! Sends a translated packet back out of XDP: FIB lookup, then `XDP_TX` / redirect, or a hand-off
//! (a mark in the Ethernet addresses) that `tc_ingress` turns into `bpf_redirect_neigh`.

use core::mem::offset_of;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        xdp_action::{XDP_PASS, XDP_TX},
    },
    programs::XdpContext,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use proxy_common::{CONFIG_F_XDP_TX, checksum, handoff};

use crate::{
    error::Error,
    family::Family,
    kernel,
    maps::CONFIG,
    packet::{ETH_HLEN, Tuple, load, ptr_at, store, write_at},
};

/// Forwards the packet (already carrying `tuple`, IP packet length `tot_len`) to its next hop.
///
/// With `CONFIG_F_XDP_TX` and a resolved neighbour, the MACs are rewritten and the packet leaves
/// through `XDP_TX` (same interface) or `bpf_redirect`. Otherwise (no flag, or the neighbour is
/// not resolved yet) it goes to the stack marked as a [`handoff`], and `tc_ingress` redirects
/// it with `bpf_redirect_neigh`. When the FIB has no usable route the stack routes it. Either
/// way out of XDP decrements the TTL (IPv6: the hop limit), as the stack's forwarding would.
#[inline(always)]
pub fn forward<F: Family>(
    ctx: &XdpContext,
    tuple: &Tuple<F::Addr>,
    tot_len: u16,
) -> Result<u32, Error> {
    route::<F>(ctx, tuple, tot_len, true)
}

/// Sends a packet this node made (a reset, an ICMP error) like [`forward`], TTL untouched.
#[inline(always)]
pub fn send<F: Family>(
    ctx: &XdpContext,
    tuple: &Tuple<F::Addr>,
    tot_len: u16,
) -> Result<u32, Error> {
    route::<F>(ctx, tuple, tot_len, false)
}

#[inline(always)]
fn route<F: Family>(
    ctx: &XdpContext,
    tuple: &Tuple<F::Addr>,
    tot_len: u16,
    forwarded: bool,
) -> Result<u32, Error> {
    let ingress = ctx.ingress_ifindex() as u32;
    let mut fib = kernel::fib_request();
    F::fib_addresses(&mut fib, tuple, tot_len);
    fib.l4_protocol = tuple.proto;
    fib.sport = tuple.sport;
    fib.dport = tuple.dport;
    fib.ifindex = ingress;
    let rc = kernel::fib_lookup(ctx, &mut fib, 0) as u32;

    let routed = rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH;
    // Both ways out below skip the stack's forwarding, so they must do its TTL decrement; a
    // packet whose TTL runs out goes to the stack, which answers ICMP time exceeded.
    if !routed || (forwarded && !F::decrement_hop_limit(ctx)?) {
        return Ok(XDP_PASS);
    }
    let xdp_tx = CONFIG
        .get(0)
        .is_some_and(|config| config.flags & CONFIG_F_XDP_TX != 0);
    if xdp_tx && rc == BPF_FIB_LKUP_RET_SUCCESS {
        let (dmac, smac) = kernel::fib_macs(&fib);
        let (data, data_end) = (ctx.data(), ctx.data_end());
        write_at(data, data_end, offset_of!(EthHdr, dst_addr), dmac)?;
        write_at(data, data_end, offset_of!(EthHdr, src_addr), smac)?;
        if fib.ifindex == ingress {
            return Ok(XDP_TX);
        }
        return Ok(kernel::redirect(fib.ifindex));
    }
    pass_for_redirect(ctx, fib.ifindex)
}

/// Decrements the IPv4 TTL with an incremental checksum update, as a router does; false (and
/// no change) when the TTL would reach zero.
#[inline(always)]
pub fn decrement_ttl(ctx: &XdpContext) -> Result<bool, Error> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx.data(), ctx.data_end(), ETH_HLEN)?;
    // SAFETY: ptr_at checked that the IPv4 header lies inside the packet.
    unsafe {
        let (ttl, proto) = ((*ip).ttl, (*ip).proto);
        if ttl <= 1 {
            return Ok(false);
        }
        // TTL and protocol share one 16-bit word of the header checksum.
        let old = u16::from_ne_bytes([ttl, proto]);
        let new = u16::from_ne_bytes([ttl - 1, proto]);
        (*ip).ttl = ttl - 1;
        let check = checksum::update_u16(load(&raw const (*ip).check), old, new);
        store(&raw mut (*ip).check, check);
    }
    Ok(true)
}

/// Decrements the IPv6 hop limit (no header checksum); false (and no change) when it would
/// reach zero, as for [`decrement_ttl`]: the stack then answers ICMPv6 time exceeded.
#[inline(always)]
pub fn decrement_hop_limit6(ctx: &XdpContext) -> Result<bool, Error> {
    let ip: *mut Ipv6Hdr = ptr_at(ctx.data(), ctx.data_end(), ETH_HLEN)?;
    // SAFETY: ptr_at checked that the IPv6 header lies inside the packet.
    unsafe {
        let hop_limit = (*ip).hop_limit;
        if hop_limit <= 1 {
            return Ok(false);
        }
        (*ip).hop_limit = hop_limit - 1;
    }
    Ok(true)
}

/// Marks the packet as a [`handoff`] to `ifindex` and passes it to the stack, where
/// `tc_ingress` finds the mark.
#[inline(always)]
fn pass_for_redirect(ctx: &XdpContext, ifindex: u32) -> Result<u32, Error> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    write_at(
        data,
        data_end,
        offset_of!(EthHdr, dst_addr),
        handoff::destination(ifindex),
    )?;
    write_at(
        data,
        data_end,
        offset_of!(EthHdr, src_addr),
        handoff::SOURCE,
    )?;
    Ok(XDP_PASS)
}
