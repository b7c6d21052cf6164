//! The kernel helpers the programs call, as safe functions: each wrapper states once why its
//! call is sound, so the packet paths hold no `unsafe` of their own.

use core::{
    ffi::c_void,
    ptr::{addr_of, addr_of_mut, null_mut},
};

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, bpf_fib_lookup, bpf_sock_addr},
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_ns,
        generated::{
            bpf_fib_lookup as fib_lookup_helper, bpf_get_netns_cookie, bpf_get_socket_cookie,
            bpf_ktime_get_coarse_ns, bpf_loop, bpf_redirect, bpf_redirect_neigh, bpf_set_retval,
            bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len,
        },
    },
    programs::{SockAddrContext, TcContext, XdpContext},
};
use proxy_common::Addr6;

/// Monotonic time in nanoseconds.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments, allowed in every program type.
    unsafe { bpf_ktime_get_ns() }
}

/// Monotonic time at the resolution of a scheduler tick: cheaper, and enough for conntrack.
#[inline(always)]
pub fn coarse_now_ns() -> u64 {
    // SAFETY: as for `now_ns`.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
pub fn random() -> u32 {
    // SAFETY: as for `now_ns`.
    unsafe { bpf_get_prandom_u32() }
}

/// What one step of [`for_each`] tells the loop.
#[repr(i64)]
pub enum Step {
    Next = 0,
    Stop = 1,
}

/// Calls `step(i, state)` for `i` in `0..count` until one says [`Step::Stop`]. `bpf_loop`
/// (kernel 5.17): the verifier checks `step` once, however many times it runs, where a loop in
/// the program would be checked turn by turn.
#[inline(always)]
pub fn for_each<T>(count: u32, step: extern "C" fn(u64, &mut T) -> Step, state: &mut T) {
    // SAFETY: the helper calls `step` with the pointer it is given, `state`, borrowed for the
    // call; `step` is a function of this program with the signature the helper expects
    // (`long (*)(u64, void *)`: a reference is a pointer, `Step` an i64).
    unsafe {
        bpf_loop(
            count,
            step as *const () as *mut c_void,
            core::ptr::from_mut(state).cast(),
            0,
        )
    };
}

/// Moves the start of an XDP frame by `delta` bytes (negative: more room in front).
#[inline(always)]
pub fn xdp_adjust_head(ctx: &XdpContext, delta: i32) -> bool {
    // SAFETY: the context is this program's xdp_md; the helper checks the headroom itself.
    unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) == 0 }
}

/// Moves the end of an XDP frame by `delta` bytes.
#[inline(always)]
pub fn xdp_adjust_tail(ctx: &XdpContext, delta: i32) -> bool {
    // SAFETY: the context is this program's xdp_md; the helper checks the new length itself.
    unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) == 0 }
}

/// The frame's length. The helper rather than `data_end - data`: the compiler reorders that
/// subtraction into arithmetic on the packet end pointer, which the verifier refuses.
#[inline(always)]
pub fn xdp_len(ctx: &XdpContext) -> u64 {
    // SAFETY: the context is this program's xdp_md.
    unsafe { bpf_xdp_get_buff_len(ctx.ctx) }
}

/// The kernel's FIB lookup for `fib`, from an XDP frame; returns `BPF_FIB_LKUP_RET_*`.
#[inline(always)]
pub fn fib_lookup(ctx: &XdpContext, fib: &mut bpf_fib_lookup, flags: u32) -> i64 {
    // SAFETY: `fib` is a whole bpf_fib_lookup on the stack for the call; the context is ours.
    unsafe {
        fib_lookup_helper(
            ctx.as_ptr(),
            core::ptr::from_mut(fib),
            size_of::<bpf_fib_lookup>() as i32,
            flags,
        )
    }
}

/// The next hop's and this interface's MAC addresses a successful lookup filled in.
#[inline(always)]
pub fn fib_macs(fib: &bpf_fib_lookup) -> ([u8; 6], [u8; 6]) {
    // SAFETY: without BPF_FIB_LOOKUP_MARK (never passed) the lookup fills the union's MAC
    // member; both members are plain bytes, so reading it is defined either way.
    let macs = unsafe { fib.__bindgen_anon_6.__bindgen_anon_2 };
    (macs.dmac, macs.smac)
}

/// An all-zero FIB lookup request.
#[inline(always)]
pub fn fib_request() -> bpf_fib_lookup {
    // SAFETY: bpf_fib_lookup is plain integers and unions of them: all zeroes is a value.
    unsafe { core::mem::zeroed() }
}

/// Sends the packet out of `ifindex` (an `XDP_REDIRECT` or `TC_ACT_REDIRECT` verdict).
#[inline(always)]
pub fn redirect(ifindex: u32) -> u32 {
    // SAFETY: a helper taking plain integers.
    unsafe { bpf_redirect(ifindex, 0) as u32 }
}

/// The interface an skb is on (TC ingress: the one it arrived on).
#[inline(always)]
pub fn skb_ifindex(ctx: &TcContext) -> u32 {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: `skb` is the kernel's __sk_buff for this call; the verifier checks the load.
    unsafe { (*skb).ifindex }
}

/// Sends an skb out of `ifindex`, the kernel resolving the next hop's address.
#[inline(always)]
pub fn redirect_neigh(ifindex: u32) -> i32 {
    // SAFETY: a null neighbour is allowed: the kernel looks the next hop up itself.
    unsafe { bpf_redirect_neigh(ifindex, null_mut(), 0, 0) as i32 }
}

/// The socket a `sock_addr` hook runs for: its type (`SOCK_STREAM`, `SOCK_DGRAM`, ...) and
/// protocol (0: the type's default).
#[derive(Clone, Copy)]
pub struct SockKind {
    pub sock_type: u32,
    pub protocol: u32,
}

/// The fields of the call's `bpf_sock_addr` every `sock_addr` hook may read (the verifier
/// refuses others, such as `msg_src_ip4` outside sendmsg).
#[inline(always)]
pub fn sock_kind(ctx: &SockAddrContext) -> SockKind {
    // SAFETY: the context pointer is the kernel's bpf_sock_addr for this call.
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    SockKind {
        sock_type: sa.type_,
        protocol: sa.protocol,
    }
}

/// The IPv4 address and port (network byte order) an `AF_INET` call is going to (connect,
/// sendmsg) or coming from (recvmsg, getpeername).
#[inline(always)]
pub fn sock_addr4(ctx: &SockAddrContext) -> (u32, u16) {
    // SAFETY: as for `sock_kind`.
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    // user_port holds the port in network byte order in its low 16 bits.
    (sa.user_ip4, sa.user_port as u16)
}

/// Rewrites an `AF_INET` call's address to `addr:port` (network byte order).
#[inline(always)]
pub fn set_sock_addr4(ctx: &SockAddrContext, addr: u32, port: u16) {
    // SAFETY: as for `sock_kind`; these two fields are writable in every sock_addr hook, and
    // the kernel reads them back after the program returns.
    unsafe {
        (*ctx.sock_addr).user_ip4 = addr;
        (*ctx.sock_addr).user_port = u32::from(port);
    }
}

/// The IPv6 address and port of an `AF_INET6` call, as [`sock_addr4`]. Words in memory order,
/// as the `Addr6` map fields hold them.
#[inline(always)]
pub fn sock_addr6(ctx: &SockAddrContext) -> (Addr6, u16) {
    let sa = ctx.sock_addr;
    // SAFETY: as for `sock_kind`. One volatile 4-byte load per word, each at a constant
    // offset: the verifier allows loads of `user_ip6` only at word offsets with the size of a
    // word (or aligned 8-byte loads on newer kernels) and refuses variable context offsets, so
    // the compiler must neither merge nor loop over them.
    let addr = unsafe {
        [
            addr_of!((*sa).user_ip6[0]).read_volatile(),
            addr_of!((*sa).user_ip6[1]).read_volatile(),
            addr_of!((*sa).user_ip6[2]).read_volatile(),
            addr_of!((*sa).user_ip6[3]).read_volatile(),
        ]
    };
    // SAFETY: as for `sock_kind`.
    let port = unsafe { (*sa).user_port } as u16;
    (addr, port)
}

/// Rewrites an `AF_INET6` call's address to `addr:port`, as [`set_sock_addr4`].
#[inline(always)]
pub fn set_sock_addr6(ctx: &SockAddrContext, addr: Addr6, port: u16) {
    let sa = ctx.sock_addr;
    // SAFETY: as for `set_sock_addr4`. The kernel takes stores to `user_ip6` only as whole
    // 4-byte words at constant word offsets: one volatile store per word keeps them so.
    unsafe {
        addr_of_mut!((*sa).user_ip6[0]).write_volatile(addr[0]);
        addr_of_mut!((*sa).user_ip6[1]).write_volatile(addr[1]);
        addr_of_mut!((*sa).user_ip6[2]).write_volatile(addr[2]);
        addr_of_mut!((*sa).user_ip6[3]).write_volatile(addr[3]);
    }
    // SAFETY: as for `set_sock_addr4`.
    unsafe { (*sa).user_port = u32::from(port) };
}

/// Makes the refused socket call fail with `-errno`.
#[inline(always)]
pub fn set_retval(errno: i32) {
    // SAFETY: allowed in cgroup sock_addr programs, which are its only callers.
    unsafe { bpf_set_retval(-errno) };
}

/// The cookie of the socket a `sock_addr` program runs for.
#[inline(always)]
pub fn socket_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the context carries a socket.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The cookie of the network namespace the socket call comes from.
#[inline(always)]
pub fn netns_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: cgroup sock_addr programs may pass their context.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}
