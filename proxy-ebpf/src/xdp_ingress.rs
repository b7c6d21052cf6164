//! `xdp_ingress`: north-south service translation for packets arriving from off-node.
//!
//! Order: replies of SNATed flows, then known forward flows, then new flows to a service.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use proxy_common::{
    BACKEND_F_LOCAL, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_SNAT, IPPROTO_TCP, SVC_F_NO_LOCAL_ENDPOINT,
    SVC_F_SOURCE_RANGES, stats::Hook,
};

use crate::{
    affinity::{self, Client},
    conntrack,
    counters::{self, Direction},
    error::Error,
    family::{Family, V4},
    forward::forward,
    kernel, klog,
    maps::CONFIG,
    nat::{rewrite_in_place, rewritten},
    outcome::{Action, Outcome, Path, outcome},
    packet::{self, Packet, Tuple},
    reject,
    service::{lookup_frontend, source_allowed},
};

#[xdp]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    let verdict = match try_xdp_ingress(&ctx) {
        Ok(action) => action,
        Err(err) => on_error(&ctx, err),
    };
    counters::verdict(Hook::Xdp, verdict);
    verdict
}

/// Carries out what `outcome` says `err` does here.
fn on_error(ctx: &XdpContext, err: Error) -> u32 {
    let outcome = outcome(Path::Xdp, err);
    count_and_log(ctx, err, outcome);
    match outcome.action {
        Action::Pass => XDP_PASS,
        Action::Drop => XDP_DROP,
        Action::Refuse => match refuse(ctx, outcome.logged) {
            Ok(verdict) => verdict,
            // The answer could not be written: the packet goes unanswered.
            Err(err) => {
                count_and_log(ctx, err, self::outcome(Path::Xdp, err));
                XDP_DROP
            }
        },
    }
}

#[inline(always)]
fn count_and_log(ctx: &XdpContext, err: Error, outcome: Outcome) {
    if let Some(reason) = outcome.counted {
        counters::drop(reason);
    }
    if !outcome.logged {
        return;
    }
    match (outcome.action, outcome.counted) {
        (Action::Drop, Some(reason)) => {
            klog::debug!(ctx, "xdp: packet dropped reason={}", reason.as_str());
        }
        (Action::Pass, _) => klog::debug!(ctx, "xdp: passed to the stack: {}", err.as_str()),
        // `refuse` says what it refused.
        _ => {}
    }
}

/// Answers a new flow to a service without endpoints: TCP RST, or ICMP port unreachable.
#[inline(always)]
fn refuse(ctx: &XdpContext, logged: bool) -> Result<u32, Error> {
    // The packet is as it arrived (nothing is rewritten before a refusal): parse it again
    // rather than carry it through every error.
    let pkt = packet::parse(ctx.data(), ctx.data_end())?;
    let tuple = &pkt.tuple;
    if logged {
        klog::debug!(
            ctx,
            "xdp: no endpoints, flow refused frontend={:i}:{} client={:i}:{}",
            tuple.daddr.to_ne_bytes(),
            u16::from_be(tuple.dport),
            tuple.saddr.to_ne_bytes(),
            u16::from_be(tuple.sport)
        );
    }
    if tuple.proto == IPPROTO_TCP {
        reject::tcp_reset(ctx, &pkt)
    } else {
        reject::icmp_port_unreachable(ctx, &pkt)
    }
}

#[inline(always)]
fn try_xdp_ingress(ctx: &XdpContext) -> Result<u32, Error> {
    let pkt = packet::parse(ctx.data(), ctx.data_end())?;
    // Conntrack times need no more than the tick's resolution, and the coarse clock is cheaper.
    let now = kernel::coarse_now_ns();

    // Only replies to the SNAT address can belong to a SNATed flow: other packets skip the
    // lookup (a hash lookup is most of a conntrack hit's cost).
    let snat_addr = CONFIG.get(0).map_or(0, |config| config.snat_addr);
    let reply_key = pkt.tuple.ct_key(CT_DIR_REPLY);
    if pkt.tuple.daddr == snat_addr
        && let Some(entry) = conntrack::lookup(&reply_key)
    {
        let reply = entry.get();
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
        let flow = entry.get();
        if V4::backend(flow.backend_id).is_some() {
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
    let Some((key, service)) = lookup_frontend::<V4>(tuple.daddr, tuple.dport, tuple.proto, false)
    else {
        return Ok(XDP_PASS);
    };
    if service.flags & SVC_F_SOURCE_RANGES != 0
        && !source_allowed::<V4>(service.service_id, tuple.saddr)
    {
        return Err(Error::SourceRangeDenied);
    }
    if service.count == 0 {
        return Err(if service.flags & SVC_F_NO_LOCAL_ENDPOINT != 0 {
            Error::NoLocalEndpoint
        } else {
            Error::NoEndpoints
        });
    }
    let (backend_id, backend) =
        affinity::select_backend_for::<V4>(key, &service, Client::Ip(tuple.saddr))
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
