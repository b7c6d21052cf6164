//! TC programs on the node interfaces: `tc_ingress` finishes XDP's hand-off (see
//! `proxy_common::handoff`) with `bpf_redirect_neigh`; `tc_egress` reverse-translates replies of local backends. The reply
//! translation is shared with the pod-side path (`pod`).

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use network_types::eth::EtherType;
use proxy_common::{CT_DIR_REPLY, CT_F_LOCAL, handoff, stats::Hook};

use crate::{
    conntrack,
    counters::{self, Direction},
    error::Error,
    family::{Family, V4, V6},
    icmp::{self, IcmpFamily},
    kernel, klog,
    nat::{rewrite_skb, rewritten},
    outcome::{Action, Path, outcome},
    packet::{self, Packet},
};

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    // The Ethernet header is always in the skb's linear data.
    let Ok((destination, source)) = packet::eth_addresses(ctx.data(), ctx.data_end()) else {
        return TC_ACT_OK;
    };
    let Some(ifindex) = handoff::ifindex(destination, source) else {
        return TC_ACT_OK;
    };
    // The redirect writes the next hop's addresses over the mark.
    let verdict = kernel::redirect_neigh(ifindex);
    counters::verdict(Hook::TcIngress, verdict as u32);
    verdict
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    // The Ethernet header is always in the skb's linear data.
    let verdict = match packet::ether_type(ctx.data(), ctx.data_end()) {
        Ok(ether_type) if ether_type == EtherType::Ipv4 as u16 => egress::<V4>(&ctx),
        Ok(ether_type) if ether_type == EtherType::Ipv6 as u16 => egress::<V6>(&ctx),
        Ok(_) => on_error(&ctx, Error::NotIp),
        Err(err) => on_error(&ctx, err),
    };
    counters::verdict(Hook::TcEgress, verdict as u32);
    verdict
}

/// One family's path, as a BPF subprogram of its own (see `xdp_ingress::ingress`).
#[inline(never)]
fn egress<F: IcmpFamily>(ctx: &TcContext) -> i32 {
    match turn_back_reply::<F>(ctx, CT_F_LOCAL) {
        Ok(action) => action,
        Err(Error::NotTcpUdp) => turn_back_icmp_error::<F>(ctx, CT_F_LOCAL),
        Err(err) => on_error(ctx, err),
    }
}

/// An ICMP error on its way to a client, about a flow whose reply entry carries `owner`,
/// turned back like the flow's replies (see `icmp`); anything else passes.
#[inline(always)]
pub fn turn_back_icmp_error<F: IcmpFamily>(ctx: &TcContext, owner: u8) -> i32 {
    match icmp::to_client::<F>(ctx, owner) {
        Ok(action) => action,
        Err(err) => on_error(ctx, err),
    }
}

/// Carries out what `outcome` says `err` does to a reply: what is not ours leaves as it is;
/// a reply that could not be turned back would leave with the pod's address, and is dropped
/// instead.
#[inline(always)]
pub fn on_error(ctx: &TcContext, err: Error) -> i32 {
    let outcome = outcome(Path::TcEgress, err);
    counters::outcome(outcome);
    if outcome.logged {
        klog::debug!(ctx, "tc: reply dropped: {}", err.as_str());
    }
    match outcome.action {
        Action::Pass => TC_ACT_OK,
        Action::Drop | Action::Refuse => TC_ACT_SHOT,
    }
}

/// Parses the skb's headers, making them linear first when they sit in paged data.
#[inline(always)]
pub fn parse<F: Family>(ctx: &TcContext) -> Result<Packet<F::Addr>, Error> {
    match F::parse(ctx.data(), ctx.data_end()) {
        Err(Error::Truncated) if ctx.len() as usize > F::MIN_HEADERS => {
            let _ = ctx.pull_data(F::MAX_HEADERS.min(ctx.len()));
            F::parse(ctx.data(), ctx.data_end())
        }
        parsed => parsed,
    }
}

/// Turns a reply of a flow back to the service address, when its reply entry carries `owner`
/// (`CT_F_LOCAL`: a local backend's reply leaving the node; `CT_F_POD`: a reply reaching the
/// pod that sent the flow); anything else leaves untouched.
#[inline(always)]
pub fn turn_back_reply<F: Family>(ctx: &TcContext, owner: u8) -> Result<i32, Error> {
    let pkt = parse::<F>(ctx)?;
    let key = pkt.tuple.ct_key(CT_DIR_REPLY);
    let Some((entry, tier)) = conntrack::lookup_tier::<F>(&key) else {
        return Ok(TC_ACT_OK);
    };
    let reply = entry.get();
    // A closed flow's entry must not take over a new connection between the same endpoints.
    if reply.flags & owner == 0 || !conntrack::reply_belongs::<F>(&pkt, &key, &reply) {
        return Ok(TC_ACT_OK);
    }
    conntrack::touch_reply::<F>(entry, tier, &key, &reply, &pkt, kernel::now_ns());
    rewrite_skb::<F>(ctx, &pkt, &rewritten(&pkt.tuple, &reply))?;
    counters::traffic(
        reply.service_id,
        reply.backend_id,
        Direction::Out,
        pkt.tot_len,
    );
    Ok(TC_ACT_OK)
}
