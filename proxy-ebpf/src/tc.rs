//! TC programs on the node interfaces: `tc_ingress` finishes XDP's hand-off with
//! `bpf_redirect_neigh`; `tc_egress` reverse-translates replies of local backends.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use proxy_common::{CT_DIR_REPLY, CT_F_LOCAL, XDP_META_MAGIC, XdpRedirectMeta, stats::Hook};

use crate::{
    conntrack,
    counters::{self, Direction},
    error::Error,
    kernel, klog,
    nat::{rewrite_skb, rewritten},
    outcome::{Action, Path, outcome},
    packet::{self, ETH_HLEN, IPV4_HLEN, TCP_HLEN, read_at, write_at},
};

/// The most header bytes the parser reads: Ethernet, IPv4 with options, TCP without options.
const MAX_HEADERS: u32 = (ETH_HLEN + 60 + TCP_HLEN) as u32;

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    let (meta, data) = kernel::skb_meta(&ctx);
    let Ok(redirect) = read_at::<XdpRedirectMeta>(meta, data, 0) else {
        return TC_ACT_OK;
    };
    if redirect.magic != XDP_META_MAGIC {
        return TC_ACT_OK;
    }
    // Clear the mark so the packet is never redirected twice.
    let cleared = XdpRedirectMeta {
        magic: 0,
        ..redirect
    };
    if write_at(meta, data, 0, cleared).is_err() {
        return TC_ACT_OK;
    }
    let verdict = kernel::redirect_neigh(redirect.ifindex);
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
    let reply = entry.get();
    // A closed flow's entry must not take over a new connection between the same endpoints.
    if reply.flags & CT_F_LOCAL == 0 || !conntrack::reply_belongs(&pkt, &key, &reply) {
        return Ok(TC_ACT_OK);
    }
    conntrack::touch(entry, &pkt, kernel::now_ns());
    rewrite_skb(ctx, &pkt, &rewritten(&pkt.tuple, &reply))?;
    counters::traffic(
        reply.service_id,
        reply.backend_id,
        Direction::Out,
        pkt.tot_len,
    );
    Ok(TC_ACT_OK)
}
