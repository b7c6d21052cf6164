//! TC programs on the node interfaces: `tc_ingress` finishes XDP's hand-off with
//! `bpf_redirect_neigh`; `tc_egress` reverse-translates replies of local backends.

use core::ptr::null_mut;

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_ktime_get_ns, generated::bpf_redirect_neigh},
    macros::classifier,
    programs::TcContext,
};
use proxy_common::{CT_DIR_REPLY, CT_F_LOCAL, XDP_META_MAGIC, XdpRedirectMeta, stats::Hook};

use crate::{
    conntrack,
    counters::{self, Direction},
    error::Error,
    klog,
    nat::{rewrite_skb, rewritten},
    outcome::{Action, Path, outcome},
    packet::{self, ETH_HLEN, IPV4_HLEN, TCP_HLEN, ptr_at},
};

/// The most header bytes the parser reads: Ethernet, IPv4 with options, TCP without options.
const MAX_HEADERS: u32 = (ETH_HLEN + 60 + TCP_HLEN) as u32;

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: `skb` is the kernel's __sk_buff for this call.
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
    let Ok(meta) = ptr_at::<XdpRedirectMeta>(meta, data, 0) else {
        return TC_ACT_OK;
    };
    // SAFETY: ptr_at checked that the metadata area holds a whole XdpRedirectMeta.
    let redirect = unsafe { *meta };
    if redirect.magic != XDP_META_MAGIC {
        return TC_ACT_OK;
    }
    // SAFETY: as above. Clear the mark so the packet is never redirected twice.
    unsafe { (*meta).magic = 0 };
    // SAFETY: a plain helper call; a null neighbour lets the kernel resolve the next hop.
    let verdict = unsafe { bpf_redirect_neigh(redirect.ifindex, null_mut(), 0, 0) as i32 };
    counters::verdict(Hook::TcIngress, verdict as u32);
    verdict
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    let verdict = match try_tc_egress(&ctx) {
        Ok(action) => action,
        Err(err) => on_error(&ctx, err),
    };
    counters::verdict(Hook::TcEgress, verdict as u32);
    verdict
}

/// Carries out what `outcome` says `err` does here: what is not ours leaves as it is; a reply
/// that could not be turned back would leave with the pod's address, and is dropped instead.
fn on_error(ctx: &TcContext, err: Error) -> i32 {
    let outcome = outcome(Path::TcEgress, err);
    if let Some(reason) = outcome.counted {
        counters::drop(reason);
    }
    if outcome.logged {
        klog::debug!(ctx, "tc: reply dropped: {}", err.as_str());
    }
    match outcome.action {
        Action::Pass => TC_ACT_OK,
        Action::Drop | Action::Refuse => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn try_tc_egress(ctx: &TcContext) -> Result<i32, Error> {
    let pkt = match packet::parse(ctx.data(), ctx.data_end()) {
        Err(Error::Truncated) if ctx.len() as usize > ETH_HLEN + IPV4_HLEN => {
            // The headers may sit in paged data: make them linear and look again.
            let _ = ctx.pull_data(MAX_HEADERS.min(ctx.len()));
            packet::parse(ctx.data(), ctx.data_end())?
        }
        parsed => parsed?,
    };
    let key = pkt.tuple.ct_key(CT_DIR_REPLY);
    let Some(entry) = conntrack::lookup(&key) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: `entry` points at a live map value; it is copied out at once.
    let reply = unsafe { *entry };
    // A closed flow's entry must not take over a new connection between the same endpoints.
    if reply.flags & CT_F_LOCAL == 0 || !conntrack::reply_belongs(&pkt, &key, &reply) {
        return Ok(TC_ACT_OK);
    }
    // SAFETY: a plain helper call with no arguments.
    conntrack::touch(entry, &pkt, unsafe { bpf_ktime_get_ns() });
    rewrite_skb(ctx, &pkt, &rewritten(&pkt.tuple, &reply))?;
    counters::traffic(
        reply.service_id,
        reply.backend_id,
        Direction::Out,
        pkt.tot_len,
    );
    Ok(TC_ACT_OK)
}
