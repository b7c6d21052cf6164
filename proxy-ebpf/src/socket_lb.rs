//! Socket-level load balancing: cgroup connect4/sendmsg4 write a backend address into the
//! socket once, recvmsg4/getpeername4 show the service address back. No per-packet NAT.

use aya_ebpf::{bindings::sk_action::SK_PASS, macros::cgroup_sock_addr, programs::SockAddrContext};
use proxy_common::{IPPROTO_TCP, IPPROTO_UDP, SockRevNatKey, SockRevNatValue, stats::Hook};

use crate::{
    affinity::{self, Client},
    counters::{self, Direction},
    error::Error,
    family::V4,
    kernel::{self, SockAddr},
    klog,
    maps::{self, SOCK_REV_NAT},
    outcome::{Action, Path, outcome},
    service::{for_internal_clients, lookup_frontend},
};

/// Returned from cgroup `sock_addr` programs to reject the call; the error is set with
/// `bpf_set_retval`.
const SK_REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    counted(Hook::Connect4, forward(&ctx))
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    counted(Hook::Sendmsg4, forward(&ctx))
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    translate_reverse(&ctx);
    // recvmsg and getpeername hooks must return 1.
    counted(Hook::Recvmsg4, SK_PASS as i32)
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    translate_reverse(&ctx);
    counted(Hook::Getpeername4, SK_PASS as i32)
}

#[inline(always)]
fn counted(hook: Hook, verdict: i32) -> i32 {
    counters::verdict(hook, verdict as u32);
    verdict
}

#[inline(always)]
fn forward(ctx: &SockAddrContext) -> i32 {
    match try_translate_forward(ctx) {
        Ok(()) => SK_PASS as i32,
        Err(err) => on_error(ctx, err),
    }
}

/// Carries out what `outcome` says `err` does here: a refused call fails with ECONNREFUSED
/// at once instead of letting the client time out.
fn on_error(ctx: &SockAddrContext, err: Error) -> i32 {
    let outcome = outcome(Path::Socket, err);
    if let Some(reason) = outcome.counted {
        counters::drop(reason);
    }
    if outcome.logged {
        // Nothing was rewritten: the address is the one the application asked for.
        let sa = kernel::sock_addr(ctx);
        klog::debug!(
            ctx,
            "socket: connection refused ({}) frontend={:i}:{}",
            err.as_str(),
            sa.addr.to_ne_bytes(),
            u16::from_be(sa.port)
        );
    }
    match outcome.action {
        Action::Pass => SK_PASS as i32,
        Action::Refuse => {
            kernel::set_retval(ECONNREFUSED);
            SK_REJECT
        }
        // The call fails with the hook's default error (EPERM).
        Action::Drop => SK_REJECT,
    }
}

/// Rewrites a destination that is a service frontend to one of its backends.
#[inline(always)]
fn try_translate_forward(ctx: &SockAddrContext) -> Result<(), Error> {
    let sa = kernel::sock_addr(ctx);
    let Some(proto) = protocol(&sa) else {
        return Ok(());
    };
    let (dst_addr, dst_port) = (sa.addr, sa.port);

    // Local processes are in-cluster clients: the internal scope, where there is one.
    let Some((key, service)) = lookup_frontend::<V4>(dst_addr, dst_port, proto, true)
        .and_then(|(key, service)| for_internal_clients::<V4>(key, service))
    else {
        return Ok(());
    };
    if service.count == 0 {
        return Err(Error::NoEndpoints);
    }
    let client = Client::Netns(kernel::netns_cookie(ctx));
    let (backend_id, backend) =
        affinity::select_backend_for::<V4>(key, &service, client).ok_or(Error::NoBackend)?;
    // Sockets, not packets, are translated here: count the new connection only.
    counters::traffic(
        service.service_id,
        backend_id,
        Direction::In { new: true },
        0,
    );

    // Remember what the application asked for, so replies and getpeername show it back.
    let cookie = kernel::socket_cookie(ctx);
    let rev_key = SockRevNatKey {
        cookie,
        addr: backend.addr,
        port: backend.port,
        _pad: 0,
    };
    let rev_value = SockRevNatValue {
        addr: dst_addr,
        port: dst_port,
        _pad: 0,
    };
    // A full LRU map evicts the oldest entry; an error here only loses the reverse mapping.
    let _ = SOCK_REV_NAT.insert(&rev_key, &rev_value, 0);

    kernel::set_sock_addr(ctx, backend.addr, backend.port);
    Ok(())
}

/// Rewrites a backend source address back to the service address the socket used.
fn translate_reverse(ctx: &SockAddrContext) {
    let sa = kernel::sock_addr(ctx);
    if protocol(&sa).is_none() {
        return;
    }
    let cookie = kernel::socket_cookie(ctx);
    let key = SockRevNatKey {
        cookie,
        addr: sa.addr,
        port: sa.port,
        _pad: 0,
    };
    if let Some(original) = maps::sock_rev_nat(&key) {
        kernel::set_sock_addr(ctx, original.addr, original.port);
    }
}

fn protocol(sa: &SockAddr) -> Option<u8> {
    match sa.sock_type {
        SOCK_STREAM if sa.protocol == u32::from(IPPROTO_TCP) || sa.protocol == 0 => {
            Some(IPPROTO_TCP)
        }
        SOCK_DGRAM if sa.protocol == u32::from(IPPROTO_UDP) || sa.protocol == 0 => {
            Some(IPPROTO_UDP)
        }
        _ => None,
    }
}
