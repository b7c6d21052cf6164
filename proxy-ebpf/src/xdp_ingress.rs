//! `xdp_ingress`: north-south service translation for packets arriving from off-node.
//!
//! Order: replies of SNATed flows, then known forward flows, then new flows to a service.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use network_types::eth::EtherType;
use proxy_common::{
    BACKEND_F_LOCAL, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_LOCAL, CT_F_SNAT, stats::Hook,
};

use crate::{
    affinity::{self, Client},
    conntrack,
    counters::{self, Direction},
    error::Error,
    family::{Family, V4, V6},
    forward::forward,
    icmp::{self, IcmpFamily},
    kernel, klog,
    nat::{rewrite_in_place, rewritten},
    outcome::{Action, Outcome, Path, outcome},
    packet::{self, Packet, Tuple},
    service::{admit, lookup_frontend, unserved},
};

#[xdp]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    // The one per-packet decision between the families: each gets its own copy of the path.
    let verdict = match packet::ether_type(ctx.data(), ctx.data_end()) {
        Ok(ether_type) if ether_type == EtherType::Ipv4 as u16 => {
            answer::<V4>(&ctx, ingress::<V4>(&ctx))
        }
        Ok(ether_type) if ether_type == EtherType::Ipv6 as u16 => {
            answer::<V6>(&ctx, ingress::<V6>(&ctx))
        }
        Ok(_) => on_error(&ctx, Error::NotIp),
        Err(err) => on_error(&ctx, err),
    };
    counters::verdict(Hook::Xdp, verdict);
    verdict
}

/// What [`ingress`] returns for a flow to refuse, (with `Family::NEW_FLOWS_APART`) for a
/// packet of no known flow, and for a packet that is neither TCP nor UDP (perhaps an ICMP
/// error about a flow); no XDP action has these values.
const REFUSE: u32 = u32::MAX;
const NEW_FLOW: u32 = u32::MAX - 1;
const NOT_TCP_UDP: u32 = u32::MAX - 2;

/// One family's path, as a BPF subprogram of its own: inlined together, the two families'
/// keys and FIB requests would not fit in one 512-byte stack frame (the verifier sums the
/// frames of a call chain, so the refusal, [`answer`], is a sibling call, not a callee).
#[inline(never)]
fn ingress<F: Family>(ctx: &XdpContext) -> u32 {
    match try_xdp_ingress::<F>(ctx) {
        Ok(action) => action,
        Err(Error::NotTcpUdp) => NOT_TCP_UDP,
        Err(err) => on_error(ctx, err),
    }
}

/// `verdict`, or what the sibling subprograms make of [`NEW_FLOW`], [`NOT_TCP_UDP`] and
/// [`REFUSE`].
#[inline(always)]
fn answer<F: IcmpFamily>(ctx: &XdpContext, mut verdict: u32) -> u32 {
    if verdict == NOT_TCP_UDP {
        return icmp_error::<F>(ctx);
    }
    if F::NEW_FLOWS_APART && verdict == NEW_FLOW {
        verdict = new_flow_apart::<F>(ctx);
    }
    if verdict == REFUSE {
        return refused::<F>(ctx);
    }
    verdict
}

/// [`new_flow`] as a subprogram of its own, for a family whose known and new flows do not fit
/// in one stack frame (IPv6: its keys and addresses spill).
#[inline(never)]
fn new_flow_apart<F: Family>(ctx: &XdpContext) -> u32 {
    let now = kernel::coarse_now_ns();
    let result = F::parse(ctx.data(), ctx.data_end()).and_then(|pkt| new_flow::<F>(ctx, &pkt, now));
    match result {
        Ok(action) => action,
        Err(err) => on_error(ctx, err),
    }
}

/// An ICMP error about a flow of ours, translated back and sent on, as a subprogram of its
/// own; anything else that is not TCP or UDP passes.
#[inline(never)]
fn icmp_error<F: IcmpFamily>(ctx: &XdpContext) -> u32 {
    match icmp::from_wire::<F>(ctx) {
        Ok(action) => action,
        // Counted, not logged: the logger's frame does not fit beside this one.
        Err(err) => {
            let outcome = outcome(Path::Xdp, err);
            counters::outcome(outcome);
            action(outcome)
        }
    }
}

/// Carries out what `outcome` says `err` does here (a refusal: [`REFUSE`], for [`answer`]).
#[inline(always)]
fn on_error(ctx: &XdpContext, err: Error) -> u32 {
    let outcome = outcome(Path::Xdp, err);
    count_and_log(ctx, err, outcome);
    action(outcome)
}

#[inline(always)]
fn action(outcome: Outcome) -> u32 {
    match outcome.action {
        Action::Pass => XDP_PASS,
        Action::Drop => XDP_DROP,
        Action::Refuse => REFUSE,
    }
}

/// Answers a flow `outcome` refused, as a subprogram of its own (see [`ingress`]).
#[inline(never)]
fn refused<F: Family>(ctx: &XdpContext) -> u32 {
    match refuse::<F>(ctx) {
        Ok(verdict) => verdict,
        // The answer could not be written: the packet goes unanswered.
        Err(err) => {
            count_and_log(ctx, err, outcome(Path::Xdp, err));
            XDP_DROP
        }
    }
}

#[inline(always)]
fn count_and_log(ctx: &XdpContext, err: Error, outcome: Outcome) {
    counters::outcome(outcome);
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

/// Answers a flow `outcome` refuses (no endpoints, a port or address no Service serves): TCP
/// RST, or ICMP port unreachable.
#[inline(always)]
fn refuse<F: Family>(ctx: &XdpContext) -> Result<u32, Error> {
    // The packet is as it arrived (nothing is rewritten before a refusal): parse it again
    // rather than carry it through every error.
    let pkt = F::parse(ctx.data(), ctx.data_end())?;
    let tuple = &pkt.tuple;
    // Every refusal is logged (`outcome`).
    klog::debug!(
        ctx,
        "xdp: flow refused frontend={:i}:{} client={:i}:{}",
        F::log_ip(&tuple.daddr),
        u16::from_be(tuple.dport),
        F::log_ip(&tuple.saddr),
        u16::from_be(tuple.sport)
    );
    F::refuse(ctx, &pkt)
}

#[inline(always)]
fn try_xdp_ingress<F: Family>(ctx: &XdpContext) -> Result<u32, Error> {
    let pkt = F::parse(ctx.data(), ctx.data_end())?;
    // Conntrack times need no more than the tick's resolution, and the coarse clock is cheaper.
    let now = kernel::coarse_now_ns();

    // Only replies to the SNAT address can belong to a SNATed flow: other packets skip the
    // lookup (a hash lookup is most of a conntrack hit's cost).
    let snat_addr = F::snat_addr();
    let reply_key = pkt.tuple.ct_key(CT_DIR_REPLY);
    if pkt.tuple.daddr == snat_addr
        && let Some((entry, tier)) = conntrack::lookup_tier::<F>(&reply_key)
    {
        let reply = entry.get();
        // A stale entry (closed flow, the SNAT tuple reused by a node process) is deleted and
        // the packet is not a reply of ours.
        if reply.flags & CT_F_SNAT != 0 && conntrack::reply_belongs::<F>(&pkt, &reply_key, &reply) {
            conntrack::touch_reply::<F>(entry, tier, &reply_key, &reply, &pkt, now);
            counters::traffic(
                reply.service_id,
                reply.backend_id,
                Direction::Out,
                pkt.tot_len,
            );
            return translate_and_forward::<F>(ctx, &pkt, &rewritten(&pkt.tuple, &reply));
        }
    }

    let forward_key = pkt.tuple.ct_key(CT_DIR_FORWARD);
    if let Some(entry) = conntrack::lookup::<F>(&forward_key) {
        let flow = entry.get();
        if F::backend(flow.backend_id).is_some() {
            conntrack::touch(entry, &pkt, now);
            let direction = Direction::In { new: false };
            counters::traffic(flow.service_id, flow.backend_id, direction, pkt.tot_len);
            let to = rewritten(&pkt.tuple, &flow);
            if flow.flags & CT_F_SNAT != 0 {
                return translate_and_forward::<F>(ctx, &pkt, &to);
            }
            rewrite_in_place::<F>(ctx.data(), ctx.data_end(), &pkt, &to)?;
            return Ok(XDP_PASS);
        }
        // The backend is gone: the flow is balanced again as a new one.
        conntrack::remove_flow::<F>(&forward_key, &flow);
    }

    if F::NEW_FLOWS_APART {
        return Ok(NEW_FLOW);
    }
    new_flow::<F>(ctx, &pkt, now)
}

#[inline(always)]
fn new_flow<F: Family>(ctx: &XdpContext, pkt: &Packet<F::Addr>, now: u64) -> Result<u32, Error> {
    let tuple = &pkt.tuple;
    let Some((key, service)) = lookup_frontend::<F>(tuple.daddr, tuple.dport, tuple.proto, false)
    else {
        return unserved::<F>(tuple.daddr).map_or(Ok(XDP_PASS), |err| Err(pkt.unless_later(err)));
    };
    if !pkt.has_l4() {
        // A later fragment of a datagram its first fragment did not start a flow for.
        return Err(Error::Fragment);
    }
    admit::<F>(&service, tuple.saddr)?;
    let (backend_id, backend) =
        affinity::select_backend_for::<F>(key, &service, Client::Ip(tuple.saddr))
            .ok_or(Error::NoBackend)?;
    let direction = Direction::In { new: true };
    counters::traffic(service.service_id, backend_id, direction, pkt.tot_len);
    klog::trace!(
        ctx,
        "xdp: new flow client={:i}:{} frontend={:i}:{} backend={:i}:{}",
        F::log_ip(&tuple.saddr),
        u16::from_be(tuple.sport),
        F::log_ip(&tuple.daddr),
        u16::from_be(tuple.dport),
        F::log_ip(&backend.addr),
        u16::from_be(backend.port)
    );
    if backend.flags & BACKEND_F_LOCAL != 0 {
        let to = conntrack::create_dnat::<F>(
            pkt,
            backend_id,
            &backend,
            service.service_id,
            CT_F_LOCAL,
            now,
        )?;
        rewrite_in_place::<F>(ctx.data(), ctx.data_end(), pkt, &to)?;
        return Ok(XDP_PASS);
    }
    let to = conntrack::create_snat::<F>(pkt, backend_id, &backend, service.service_id, now)?;
    translate_and_forward::<F>(ctx, pkt, &to)
}

#[inline(always)]
fn translate_and_forward<F: Family>(
    ctx: &XdpContext,
    pkt: &Packet<F::Addr>,
    to: &Tuple<F::Addr>,
) -> Result<u32, Error> {
    rewrite_in_place::<F>(ctx.data(), ctx.data_end(), pkt, to)?;
    forward::<F>(ctx, to, pkt.tot_len)
}
