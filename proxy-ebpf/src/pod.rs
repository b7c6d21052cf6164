//! The pod-side path, on the host end of each pod interface (`--pod-iface-prefix`): service
//! traffic no socket hook translated (a process outside `--cgroup`, a VM in a pod, a raw
//! socket) is translated per packet, as kube-proxy's PREROUTING rules and Cilium's per-pod
//! programs do.
//!
//! `tc_from_pod` (TC ingress: what the pod sends) balances new flows to a frontend and
//! rewrites their destination to the backend, wherever it runs; `tc_to_pod` (TC egress: what
//! reaches the pod) turns the backend's replies back into the frontend's. Connections the
//! socket LB translated already carry a backend address: they match no frontend and no entry,
//! and pass untouched.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use network_types::eth::EtherType;
use proxy_common::{CT_DIR_FORWARD, CT_F_POD, stats::Hook};

use crate::{
    affinity::{self, Client},
    conntrack,
    counters::{self, Direction},
    error::Error,
    family::{Family, V4, V6},
    icmp::IcmpFamily,
    kernel, klog,
    nat::{rewrite_skb, rewritten},
    outcome::{Action, Path, outcome},
    packet,
    service::{admit, for_internal_clients, lookup_frontend, unserved},
    tc::{self, turn_back_reply},
};

/// What [`known_flow`] returns for a packet of no flow of ours; no TC action has this value.
const NEW_FLOW: i32 = i32::MIN;
/// What [`new_flow`] returns once it has tracked a new flow: [`known_flow`] then translates
/// its first packet as any other (a sibling call: the two frames together do not fit in the
/// 512 bytes the verifier allows a call chain).
const TRACKED: i32 = i32::MIN + 1;
/// What [`on_error`] returns for a flow to refuse, answered by [`refused`].
const REFUSE: i32 = i32::MIN + 2;

#[classifier]
pub fn tc_from_pod(ctx: TcContext) -> i32 {
    let verdict = match packet::ether_type(ctx.data(), ctx.data_end()) {
        Ok(ether_type) if ether_type == EtherType::Ipv4 as u16 => from_pod::<V4>(&ctx),
        Ok(ether_type) if ether_type == EtherType::Ipv6 as u16 => from_pod::<V6>(&ctx),
        Ok(_) => on_error(&ctx, Error::NotIp),
        Err(err) => on_error(&ctx, err),
    };
    counters::verdict(Hook::FromPod, verdict as u32);
    verdict
}

#[classifier]
pub fn tc_to_pod(ctx: TcContext) -> i32 {
    let verdict = match packet::ether_type(ctx.data(), ctx.data_end()) {
        Ok(ether_type) if ether_type == EtherType::Ipv4 as u16 => to_pod::<V4>(&ctx),
        Ok(ether_type) if ether_type == EtherType::Ipv6 as u16 => to_pod::<V6>(&ctx),
        Ok(_) => tc::on_error(&ctx, Error::NotIp),
        Err(err) => tc::on_error(&ctx, err),
    };
    counters::verdict(Hook::ToPod, verdict as u32);
    verdict
}

/// One family's replies, as a BPF subprogram of its own (see `xdp_ingress::ingress`).
#[inline(never)]
fn to_pod<F: IcmpFamily>(ctx: &TcContext) -> i32 {
    match turn_back_reply::<F>(ctx, CT_F_POD) {
        Ok(action) => action,
        Err(Error::NotTcpUdp) => tc::turn_back_icmp_error::<F>(ctx, CT_F_POD),
        Err(err) => tc::on_error(ctx, err),
    }
}

/// One family's packets from the pod: a known flow, else (a sibling subprogram, so the two
/// stack frames are not summed) a new one, tracked, then translated as a known one; a refused
/// flow is answered by a third sibling.
#[inline(always)]
fn from_pod<F: Family>(ctx: &TcContext) -> i32 {
    let verdict = match known_flow::<F>(ctx, false) {
        NEW_FLOW => match new_flow::<F>(ctx) {
            // The entry just written is gone again (a full table's eviction, a concurrent
            // reset).
            TRACKED => match known_flow::<F>(ctx, true) {
                NEW_FLOW => on_error(ctx, Error::ConntrackUpdate),
                verdict => verdict,
            },
            verdict => verdict,
        },
        verdict => verdict,
    };
    if verdict == REFUSE {
        return refused::<F>(ctx);
    }
    verdict
}

/// Answers a flow `outcome` refuses (no endpoints, a port or address no Service serves) with
/// a TCP RST or an ICMP port unreachable, sent back into the pod.
#[inline(never)]
fn refused<F: Family>(ctx: &TcContext) -> i32 {
    // The packet is as the pod sent it (nothing is rewritten before a refusal).
    let answered = tc::parse::<F>(ctx).and_then(|pkt| {
        let tuple = &pkt.tuple;
        klog::debug!(
            ctx,
            "tc: flow from a pod refused frontend={:i}:{} client={:i}:{}",
            F::log_ip(&tuple.daddr),
            u16::from_be(tuple.dport),
            F::log_ip(&tuple.saddr),
            u16::from_be(tuple.sport)
        );
        F::refuse(ctx, &pkt)
    });
    match answered {
        Ok(verdict) => verdict,
        // The answer could not be written: the packet goes unanswered.
        Err(err) => match on_error(ctx, err) {
            REFUSE => TC_ACT_SHOT,
            verdict => verdict,
        },
    }
}

/// `first`: the packet [`new_flow`] just tracked (counted as a new flow's).
#[inline(never)]
fn known_flow<F: Family>(ctx: &TcContext, first: bool) -> i32 {
    match try_known_flow::<F>(ctx, first) {
        Ok(action) => action,
        Err(err) => on_error(ctx, err),
    }
}

#[inline(never)]
fn new_flow<F: Family>(ctx: &TcContext) -> i32 {
    match try_new_flow::<F>(ctx) {
        Ok(action) => action,
        Err(err) => on_error(ctx, err),
    }
}

/// Carries out what `outcome` says `err` does to a packet from a pod (a refusal: [`REFUSE`],
/// for [`from_pod`]).
#[inline(always)]
fn on_error(ctx: &TcContext, err: Error) -> i32 {
    let outcome = outcome(Path::FromPod, err);
    counters::outcome(outcome);
    if outcome.logged {
        klog::debug!(ctx, "tc: packet from a pod dropped: {}", err.as_str());
    }
    match outcome.action {
        Action::Pass => TC_ACT_OK,
        Action::Drop => TC_ACT_SHOT,
        Action::Refuse => REFUSE,
    }
}

#[inline(always)]
fn try_known_flow<F: Family>(ctx: &TcContext, first: bool) -> Result<i32, Error> {
    let pkt = tc::parse::<F>(ctx)?;
    let key = pkt.tuple.ct_key(CT_DIR_FORWARD);
    let Some(entry) = conntrack::lookup::<F>(&key) else {
        return Ok(NEW_FLOW);
    };
    let flow = entry.get();
    if flow.flags & CT_F_POD == 0 {
        return Ok(NEW_FLOW);
    }
    if F::backend(flow.backend_id).is_none() {
        // The backend is gone: the flow is balanced again as a new one.
        conntrack::remove_flow::<F>(&key, &flow);
        return Ok(NEW_FLOW);
    }
    conntrack::touch(entry, &pkt, kernel::now_ns());
    let direction = Direction::In { new: first };
    counters::traffic(flow.service_id, flow.backend_id, direction, pkt.tot_len);
    rewrite_skb::<F>(ctx, &pkt, &rewritten(&pkt.tuple, &flow))?;
    Ok(TC_ACT_OK)
}

#[inline(always)]
fn try_new_flow<F: Family>(ctx: &TcContext) -> Result<i32, Error> {
    let pkt = tc::parse::<F>(ctx)?;
    let tuple = &pkt.tuple;
    let Some((key, service)) = lookup_frontend::<F>(tuple.daddr, tuple.dport, tuple.proto, false)
    else {
        return unserved::<F>(tuple.daddr).map_or(Ok(TC_ACT_OK), |err| Err(pkt.unless_later(err)));
    };
    if !pkt.has_l4() {
        // A later fragment of a datagram its first fragment did not start a flow for.
        return Err(Error::Fragment);
    }
    // A pod is an in-cluster client, as a socket on the node is: the internal scope, where
    // there is one (kube-proxy sends pods' traffic to a Local external address to every
    // endpoint too).
    let Some((key, service)) = for_internal_clients::<F>(key, service) else {
        return Ok(TC_ACT_OK);
    };
    admit::<F>(&service, tuple.saddr)?;
    let (backend_id, backend) =
        affinity::select_backend_for::<F>(key, &service, Client::Ip(tuple.saddr))
            .ok_or(Error::NoBackend)?;
    klog::trace!(
        ctx,
        "tc: new flow from a pod client={:i}:{} frontend={:i}:{} backend={:i}:{}",
        F::log_ip(&tuple.saddr),
        u16::from_be(tuple.sport),
        F::log_ip(&tuple.daddr),
        u16::from_be(tuple.dport),
        F::log_ip(&backend.addr),
        u16::from_be(backend.port)
    );
    let now = kernel::now_ns();
    conntrack::create_dnat::<F>(
        &pkt,
        backend_id,
        &backend,
        service.service_id,
        CT_F_POD,
        now,
    )?;
    Ok(TRACKED)
}
