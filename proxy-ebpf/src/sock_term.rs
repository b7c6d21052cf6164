//! Socket termination: an `iter/udp` program that destroys connected UDP sockets (`AF_INET` and
//! `AF_INET6`) the socket LB translated to a backend that is gone, so the application sees an
//! error and reconnects.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::seq_file,
    helpers::generated::{bpf_get_socket_cookie, bpf_seq_write},
};
use proxy_common::{
    Addr6, SOCK_DESTROY_CALL_MARKER, SockTermRecord6,
    address::mapped_ipv4,
    sock_common::{SKC_DADDR, SKC_DPORT, SKC_FAMILY, SKC_STATE, SKC_V6_DADDR},
};

use crate::{
    family::{V4, V6},
    sock_family::SockFamily,
};

/// `struct bpf_iter_meta`: only its first field is read.
#[repr(C)]
pub struct IterMeta {
    seq: *mut seq_file,
}

/// `struct bpf_iter__udp`, the iterator's context: one 8-byte slot per argument.
#[repr(C)]
pub struct IterUdpCtx {
    meta: *mut IterMeta,
    udp_sk: *mut c_void,
}

// The offsets into `struct sock_common` (`proxy_common::sock_common`), at the start of every
// `udp_sock` of either family, are fixed because aya-ebpf has no CO-RE relocations; the
// verifier checks against the kernel's BTF that each read stays inside the socket's fields,
// not that it is the field meant.
//
// The IPv4 destination, hash, ports, family and state (bytes 0..19) have not moved since
// Linux 2.6. The IPv6 destination `skc_v6_daddr` joined `sock_common` in Linux 3.13, after
// `skc_bound_dev_if` (20), the bind-hash node (24, two pointers), `skc_prot` (40) and
// `skc_net` (48, one pointer with `CONFIG_NET_NS`, which network namespaces and so this
// iterator need): 56 on every 64-bit kernel since, as `bpftool btf dump file
// /sys/kernel/btf/vmlinux` shows (`'skc_v6_daddr' ... bits_offset=448`). The daemon checks
// every offset against the running kernel's BTF before loading the program
// (`proxy-user/src/datapath/sock_btf.rs`) and runs without socket termination where one
// differs.

/// A UDP socket with a connected peer is `TCP_ESTABLISHED`.
const TCP_ESTABLISHED: u8 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Called once per UDP socket of the network namespace the iterator was opened in (and once
/// more with a null socket at the end), of both families. Writes a `SockTermRecord6` to the
/// iterator's output for each socket it destroys (IPv4 addresses mapped, `::ffff:a.b.c.d`).
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/udp")]
pub extern "C" fn sock_term_udp(ctx: *mut IterUdpCtx) -> i32 {
    // SAFETY: the kernel passes its bpf_iter__udp context; the verifier checks the loads.
    let (meta, sk) = unsafe { ((*ctx).meta, (*ctx).udp_sk) };
    if sk.is_null() {
        return 0;
    }
    let sock = Sock(sk);
    if sock.read::<u8>(SKC_STATE) != TCP_ESTABLISHED {
        // Unconnected sockets pick their destination per sendmsg; the LB translates each one.
        return 0;
    }
    let port = sock.read::<u16>(SKC_DPORT);
    let record = match sock.read::<u16>(SKC_FAMILY) {
        AF_INET => end_if_translated::<V4>(sock, sock.read::<u32>(SKC_DADDR), port),
        AF_INET6 => {
            let daddr: Addr6 = [
                sock.read::<u32>(SKC_V6_DADDR),
                sock.read::<u32>(SKC_V6_DADDR + 4),
                sock.read::<u32>(SKC_V6_DADDR + 8),
                sock.read::<u32>(SKC_V6_DADDR + 12),
            ];
            // Connected to `::ffff:a.b.c.d`, the socket talks IPv4: the socket LB translated
            // it in the IPv4 maps.
            match mapped_ipv4(&daddr) {
                Some(daddr) => end_if_translated::<V4>(sock, daddr, port),
                None => end_if_translated::<V6>(sock, daddr, port),
            }
        }
        _ => None,
    };
    if let Some(record) = record {
        // SAFETY: meta is the trusted iterator metadata; `record` lives on the stack for the
        // call. A failed write (output buffer full) only loses the report, not the destroy.
        unsafe {
            bpf_seq_write(
                (*meta).seq,
                core::ptr::from_ref(&record).cast(),
                size_of::<SockTermRecord6>() as u32,
            );
        }
    }
    0
}

/// The socket the iterator is at: a trusted `udp_sock` pointer.
#[derive(Clone, Copy)]
struct Sock(*mut c_void);

impl Sock {
    /// The `T` at `offset` of the socket's `sock_common` (one of the offsets above).
    #[inline(always)]
    fn read<T: Copy>(self, offset: usize) -> T {
        // SAFETY: the pointer is a non-null, kernel-trusted udp_sock; the offsets are
        // sock_common fields of `T`'s size at their natural alignment (see above), and the
        // verifier checks each read against BTF.
        unsafe { self.0.cast::<u8>().add(offset).cast::<T>().read() }
    }

    #[inline(always)]
    fn cookie(self) -> u64 {
        // SAFETY: tracing programs may take the cookie of a trusted socket pointer.
        unsafe { bpf_get_socket_cookie(self.0) }
    }
}

/// Destroys the socket when it is connected to a backend the daemon asked to end sockets of
/// (`SOCK_TERM_V1` / `SOCK_TERM6_V1`) and the socket LB sent it there (its cookie and backend
/// are in the family's reverse-NAT map): a client that connected to the pod address itself
/// keeps its socket. Returns what to report.
#[inline(always)]
fn end_if_translated<F: SockFamily>(
    sock: Sock,
    backend: F::Addr,
    port: u16,
) -> Option<SockTermRecord6> {
    if !F::terminates(backend, port) {
        return None;
    }
    let cookie = sock.cookie();
    let service = F::original(cookie, backend, port)?;
    (sock_destroy(sock.0) == 0).then(|| SockTermRecord6 {
        cookie,
        backend_addr: F::as_addr6(backend),
        service_addr: F::as_addr6(service.addr),
        backend_port: port,
        service_port: service.port,
        _pad: 0,
    })
}

/// `bpf_sock_destroy(struct sock_common *)` (Linux 6.5+), reached through a helper-call
/// placeholder the daemon turns into the kfunc call before loading.
#[inline(always)]
fn sock_destroy(sk: *mut c_void) -> i64 {
    // SAFETY: the daemon rewrites this call into the kfunc, whose one argument is the socket;
    // unrewritten, the verifier rejects the unknown helper number.
    unsafe {
        let fun: unsafe extern "C" fn(sk: *mut c_void) -> i64 =
            core::mem::transmute(SOCK_DESTROY_CALL_MARKER as usize);
        fun(sk)
    }
}
