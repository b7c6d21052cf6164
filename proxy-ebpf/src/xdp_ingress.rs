//! `xdp_ingress`: north-south service translation for packets arriving from off-node.
//!
//! Order: replies of SNATed flows, then known forward flows, then new flows to a service.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::generated::bpf_ktime_get_coarse_ns,
    macros::xdp,
    programs::XdpContext,
};
use proxy_common::{
    BACKEND_F_LOCAL, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_SNAT, IPPROTO_TCP, SVC_F_NO_LOCAL_ENDPOINT,
    SVC_F_SOURCE_RANGES,
    stats::{DropReason, Hook},
};

use crate::{
    affinity::{self, Client},
    conntrack,
    counters::{self, Direction},
    error::Error,
    forward::forward,
    klog,
    maps::{BACKENDS, CONFIG},
    nat::{rewrite_in_place, rewritten},
    packet::{self, Packet, Tuple},
    reject,
    service::{lookup_frontend, source_allowed},
};

#[xdp]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    let verdict = match try_xdp_ingress(&ctx) {
        Ok(action) => action,
        Err(err) => action_for(&ctx, err),
    };
    counters::verdict(Hook::Xdp, verdict);
    verdict
}

/// The one place errors become verdicts: what we cannot parse is not ours and goes to the
/// stack untouched; a flow we cannot translate is dropped.
fn action_for(ctx: &XdpContext, err: Error) -> u32 {
    if let Some(reason) = drop_reason(err) {
        counters::drop(reason);
        klog::debug!(ctx, "xdp: packet dropped reason={}", reason.as_str());
    }
    match err {
        Error::NotIpv4
        | Error::NotTcpUdp
        | Error::Fragment
        | Error::Truncated
        | Error::Malformed
        // The packet is already translated; the stack can still route it.
        | Error::Metadata => XDP_PASS,
        Error::NoBackend
        | Error::NoSnatAddress
        | Error::NoSnatPort
        | Error::ConntrackUpdate
        | Error::Resize
        | Error::SkbRewrite
        // Policy drops: kube-proxy's DROP, not REJECT.
        | Error::SourceRangeDenied
        | Error::NoLocalEndpoint => XDP_DROP,
    }
}

/// The drop counter of an error that drops the packet.
fn drop_reason(err: Error) -> Option<DropReason> {
    match err {
        Error::NoBackend => Some(DropReason::NoBackend),
        Error::NoSnatAddress => Some(DropReason::NoSnatAddress),
        Error::NoSnatPort => Some(DropReason::NoSnatPort),
        Error::ConntrackUpdate => Some(DropReason::ConntrackFull),
        Error::Resize | Error::SkbRewrite => Some(DropReason::Rewrite),
        Error::SourceRangeDenied => Some(DropReason::SourceRange),
        Error::NoLocalEndpoint => Some(DropReason::NoLocalEndpoint),
        Error::NotIpv4
        | Error::NotTcpUdp
        | Error::Fragment
        | Error::Truncated
        | Error::Malformed
        | Error::Metadata => None,
    }
}

#[inline(always)]
fn try_xdp_ingress(ctx: &XdpContext) -> Result<u32, Error> {
    let pkt = packet::parse(ctx.data(), ctx.data_end())?;
    // Conntrack times need no more than the tick's resolution, and the coarse clock is cheaper.
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };

    // Only replies to the SNAT address can belong to a SNATed flow: other packets skip the
    // lookup (a hash lookup is most of a conntrack hit's cost).
    let snat_addr = CONFIG.get(0).map_or(0, |config| config.snat_addr);
    let reply_key = pkt.tuple.ct_key(CT_DIR_REPLY);
    if pkt.tuple.daddr == snat_addr
        && let Some(entry) = conntrack::lookup(&reply_key)
    {
        // SAFETY: `entry` points at a live map value; it is copied out at once.
        let reply = unsafe { *entry };
        // A stale entry (closed flow, the SNAT tuple reused by a node process) is deleted and
        // the packet is not a reply of ours.
        if reply.flags & CT_F_SNAT != 0 && conntrack::reply_belongs(&pkt, &reply_key, &reply) {
            conntrack::touch(entry, &pkt, now);
            counters::traffic(
                reply.service_id,
                reply.backend_id,
                Direction::Out,
                pkt.tot_len,
            );
            return translate_and_forward(ctx, &pkt, &rewritten(&pkt.tuple, &reply));
        }
    }

    let forward_key = pkt.tuple.ct_key(CT_DIR_FORWARD);
    if let Some(entry) = conntrack::lookup(&forward_key) {
        // SAFETY: `entry` points at a live map value; it is copied out at once.
        let flow = unsafe { *entry };
        // SAFETY: only the presence of the key matters.
        if unsafe { BACKENDS.get(&flow.backend_id) }.is_some() {
            conntrack::touch(entry, &pkt, now);
            let direction = Direction::In { new: false };
            counters::traffic(flow.service_id, flow.backend_id, direction, pkt.tot_len);
            let to = rewritten(&pkt.tuple, &flow);
            if flow.flags & CT_F_SNAT != 0 {
                return translate_and_forward(ctx, &pkt, &to);
            }
            rewrite_in_place(ctx.data(), ctx.data_end(), &pkt, &to)?;
            return Ok(XDP_PASS);
        }
        // The backend is gone: the flow is balanced again as a new one.
        conntrack::remove_flow(&forward_key, &flow);
    }

    new_flow(ctx, &pkt, now)
}

#[inline(always)]
fn new_flow(ctx: &XdpContext, pkt: &Packet, now: u64) -> Result<u32, Error> {
    let tuple = &pkt.tuple;
    let Some((key, service)) = lookup_frontend(tuple.daddr, tuple.dport, tuple.proto, false) else {
        return Ok(XDP_PASS);
    };
    if service.flags & SVC_F_SOURCE_RANGES != 0 && !source_allowed(service.service_id, tuple.saddr)
    {
        return Err(Error::SourceRangeDenied);
    }
    if service.count == 0 {
        if service.flags & SVC_F_NO_LOCAL_ENDPOINT != 0 {
            return Err(Error::NoLocalEndpoint);
        }
        counters::drop(DropReason::NoEndpoints);
        klog::debug!(
            ctx,
            "xdp: no endpoints, flow refused frontend={:i}:{} client={:i}:{}",
            tuple.daddr.to_ne_bytes(),
            u16::from_be(tuple.dport),
            tuple.saddr.to_ne_bytes(),
            u16::from_be(tuple.sport)
        );
        return if tuple.proto == IPPROTO_TCP {
            reject::tcp_reset(ctx, pkt)
        } else {
            reject::icmp_port_unreachable(ctx, pkt)
        };
    }
    let (backend_id, backend) =
        affinity::select_backend_for(key, &service, Client::ip(tuple.saddr))
            .ok_or(Error::NoBackend)?;
    let direction = Direction::In { new: true };
    counters::traffic(service.service_id, backend_id, direction, pkt.tot_len);
    klog::trace!(
        ctx,
        "xdp: new flow client={:i}:{} frontend={:i}:{} backend={:i}:{}",
        tuple.saddr.to_ne_bytes(),
        u16::from_be(tuple.sport),
        tuple.daddr.to_ne_bytes(),
        u16::from_be(tuple.dport),
        backend.addr.to_ne_bytes(),
        u16::from_be(backend.port)
    );
    if backend.flags & BACKEND_F_LOCAL != 0 {
        let to = conntrack::create_local(pkt, backend_id, &backend, service.service_id, now)?;
        rewrite_in_place(ctx.data(), ctx.data_end(), pkt, &to)?;
        return Ok(XDP_PASS);
    }
    let to = conntrack::create_snat(pkt, backend_id, &backend, service.service_id, now)?;
    translate_and_forward(ctx, pkt, &to)
}

#[inline(always)]
fn translate_and_forward(ctx: &XdpContext, pkt: &Packet, to: &Tuple) -> Result<u32, Error> {
    rewrite_in_place(ctx.data(), ctx.data_end(), pkt, to)?;
    forward(ctx, to, pkt.tot_len)
}
