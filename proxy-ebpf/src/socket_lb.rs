//! Socket-level load balancing: cgroup connect4/6 and sendmsg4/6 write a backend address into
//! the socket once, recvmsg4/6 and getpeername4/6 show the service address back. No per-packet
//! NAT.
//!
//! The two families share one path, generic over [`SockFamily`]; the `6` hooks only choose the
//! family per call: an `AF_INET6` socket to an IPv4-mapped address (`::ffff:a.b.c.d`) is served
//! from the IPv4 maps, gets `::ffff:` of an IPv4 backend, and sees `::ffff:` of the service
//! address back (see `sock_family`).

use aya_ebpf::{bindings::sk_action::SK_PASS, macros::cgroup_sock_addr, programs::SockAddrContext};
use proxy_common::{
    IPPROTO_TCP, IPPROTO_UDP,
    address::{ipv4_mapped, mapped_ipv4},
    stats::Hook,
};

use crate::{
    affinity::{self, Client},
    counters::{self, Direction},
    error::Error,
    family::{V4, V6},
    kernel::{self, SockKind},
    outcome::{Action, Path, outcome},
    service::{for_internal_clients, lookup_frontend, unserved},
    sock_family::SockFamily,
};

/// Returned from cgroup `sock_addr` programs to reject the call; the error is set with
/// `bpf_set_retval`.
const SK_REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    counted(Hook::Connect4, forward4(&ctx))
}

/// Also runs for an `AF_INET6` UDP socket sending to an IPv4-mapped address: the kernel hands
/// such a datagram to IPv4 (`udpv6_sendmsg` calls `udp_sendmsg`), with the IPv4 address.
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    counted(Hook::Sendmsg4, forward4(&ctx))
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse4(&ctx);
    // recvmsg and getpeername hooks must return 1.
    counted(Hook::Recvmsg4, SK_PASS as i32)
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse4(&ctx);
    counted(Hook::Getpeername4, SK_PASS as i32)
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    counted(Hook::Connect6, forward6(&ctx))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    counted(Hook::Sendmsg6, forward6(&ctx))
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse6(&ctx);
    counted(Hook::Recvmsg6, SK_PASS as i32)
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock_getpeername6(ctx: SockAddrContext) -> i32 {
    reverse6(&ctx);
    counted(Hook::Getpeername6, SK_PASS as i32)
}

#[inline(always)]
fn counted(hook: Hook, verdict: i32) -> i32 {
    counters::verdict(hook, verdict as u32);
    verdict
}

#[inline(always)]
fn forward4(ctx: &SockAddrContext) -> i32 {
    let Some(proto) = protocol(kernel::sock_kind(ctx)) else {
        return SK_PASS as i32;
    };
    let (addr, port) = kernel::sock_addr4(ctx);
    forward::<V4>(ctx, addr, port, proto, |addr, port| {
        kernel::set_sock_addr4(ctx, addr, port);
    })
}

#[inline(always)]
fn forward6(ctx: &SockAddrContext) -> i32 {
    let Some(proto) = protocol(kernel::sock_kind(ctx)) else {
        return SK_PASS as i32;
    };
    let (addr, port) = kernel::sock_addr6(ctx);
    if let Some(addr) = mapped_ipv4(&addr) {
        return forward::<V4>(ctx, addr, port, proto, |addr, port| {
            kernel::set_sock_addr6(ctx, ipv4_mapped(addr), port);
        });
    }
    forward::<V6>(ctx, addr, port, proto, |addr, port| {
        kernel::set_sock_addr6(ctx, addr, port);
    })
}

#[inline(always)]
fn reverse4(ctx: &SockAddrContext) {
    if protocol(kernel::sock_kind(ctx)).is_none() {
        return;
    }
    let (addr, port) = kernel::sock_addr4(ctx);
    reverse::<V4>(ctx, addr, port, |addr, port| {
        kernel::set_sock_addr4(ctx, addr, port);
    });
}

#[inline(always)]
fn reverse6(ctx: &SockAddrContext) {
    if protocol(kernel::sock_kind(ctx)).is_none() {
        return;
    }
    let (addr, port) = kernel::sock_addr6(ctx);
    if let Some(addr) = mapped_ipv4(&addr) {
        reverse::<V4>(ctx, addr, port, |addr, port| {
            kernel::set_sock_addr6(ctx, ipv4_mapped(addr), port);
        });
        return;
    }
    reverse::<V6>(ctx, addr, port, |addr, port| {
        kernel::set_sock_addr6(ctx, addr, port);
    });
}

/// Translates a call to `dst:port` of family `F` and writes the backend with `write` (which
/// puts it into the call's address as the socket holds it); returns the hook's verdict.
#[inline(always)]
fn forward<F: SockFamily>(
    ctx: &SockAddrContext,
    dst: F::Addr,
    port: u16,
    proto: u8,
    write: impl FnOnce(F::Addr, u16),
) -> i32 {
    match try_translate_forward::<F>(ctx, dst, port, proto) {
        Ok(Some((addr, port))) => {
            write(addr, port);
            SK_PASS as i32
        }
        Ok(None) => SK_PASS as i32,
        Err(err) => on_error::<F>(ctx, err, dst, port),
    }
}

/// Carries out what `outcome` says `err` does here: a refused call fails with ECONNREFUSED
/// at once instead of letting the client time out. `dst:port`: the frontend asked for.
#[inline(always)]
fn on_error<F: SockFamily>(ctx: &SockAddrContext, err: Error, dst: F::Addr, port: u16) -> i32 {
    let outcome = outcome(Path::Socket, err);
    if let Some(reason) = outcome.counted {
        counters::drop(reason);
    }
    if outcome.logged {
        // Nothing was rewritten: the address is the one the application asked for (IPv4 for
        // a mapped one).
        F::log_refused(ctx, err, dst, port);
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

/// The backend for a call to `dst:port`, when that is a service frontend; the service address
/// is remembered for the reverse translation.
#[inline(always)]
fn try_translate_forward<F: SockFamily>(
    ctx: &SockAddrContext,
    dst: F::Addr,
    port: u16,
    proto: u8,
) -> Result<Option<(F::Addr, u16)>, Error> {
    let Some(frontend) = lookup_frontend::<F>(dst, port, proto, true) else {
        return unserved::<F>(dst).map_or(Ok(None), Err);
    };
    // Local processes are in-cluster clients: the internal scope, where there is one.
    let Some((key, service)) = for_internal_clients::<F>(frontend.0, frontend.1) else {
        return Ok(None);
    };
    if service.count == 0 {
        return Err(Error::NoEndpoints);
    }
    let client = Client::Netns(kernel::netns_cookie(ctx));
    let (backend_id, backend) =
        affinity::select_backend_for::<F>(key, &service, client).ok_or(Error::NoBackend)?;
    // Sockets, not packets, are translated here: count the new connection only.
    counters::traffic(
        service.service_id,
        backend_id,
        Direction::In { new: true },
        0,
    );
    // Remember what the application asked for, so replies and getpeername show it back.
    F::remember(
        kernel::socket_cookie(ctx),
        backend.addr,
        backend.port,
        dst,
        port,
    );
    Ok(Some((backend.addr, backend.port)))
}

/// Rewrites a backend source address `src:port` back to the service address the socket used.
#[inline(always)]
fn reverse<F: SockFamily>(
    ctx: &SockAddrContext,
    src: F::Addr,
    port: u16,
    write: impl FnOnce(F::Addr, u16),
) {
    if let Some(original) = F::original(kernel::socket_cookie(ctx), src, port) {
        write(original.addr, original.port);
    }
}

fn protocol(kind: SockKind) -> Option<u8> {
    match kind.sock_type {
        SOCK_STREAM if kind.protocol == u32::from(IPPROTO_TCP) || kind.protocol == 0 => {
            Some(IPPROTO_TCP)
        }
        SOCK_DGRAM if kind.protocol == u32::from(IPPROTO_UDP) || kind.protocol == 0 => {
            Some(IPPROTO_UDP)
        }
        _ => None,
    }
}
