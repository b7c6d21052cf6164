//! Socket termination: an `iter/udp` program that destroys connected UDP sockets the socket LB
//! translated to a backend that is gone, so the application sees an error and reconnects.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::seq_file,
    helpers::generated::{bpf_get_socket_cookie, bpf_seq_write},
};
use proxy_common::{SOCK_DESTROY_CALL_MARKER, SockRevNatKey, SockTermKey, SockTermRecord};

use crate::maps;

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

/// Offsets into `struct sock_common`, at the start of every `udp_sock`: this layout (addresses,
/// hash, ports, family, state) has not changed since Linux 2.6. Fixed because aya-ebpf has no
/// CO-RE relocations; the verifier checks against the kernel's BTF that each read stays inside
/// the socket's fields, not that it is the field meant.
const SKC_DADDR: usize = 0;
const SKC_DPORT: usize = 12;
const SKC_STATE: usize = 18;
/// A UDP socket with a connected peer is `TCP_ESTABLISHED`.
const TCP_ESTABLISHED: u8 = 1;

/// Called once per UDP socket of the network namespace the iterator was opened in (and once
/// more with a null socket at the end). Writes a `SockTermRecord` to the iterator's output for
/// each socket it destroys.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/udp")]
#[expect(
    clippy::cast_ptr_alignment,
    reason = "the kernel's struct sock_common keeps its fields at their natural alignment"
)]
pub extern "C" fn sock_term_udp(ctx: *mut IterUdpCtx) -> i32 {
    // SAFETY: the kernel passes its bpf_iter__udp context; the verifier checks the loads.
    let (meta, sk) = unsafe { ((*ctx).meta, (*ctx).udp_sk) };
    if sk.is_null() {
        return 0;
    }
    // SAFETY: sk is a non-null, kernel-trusted udp_sock; the offsets are sock_common fields
    // (see above) and the verifier checks the reads against BTF.
    let (state, addr, port) = unsafe {
        let base = sk.cast::<u8>();
        (
            *base.add(SKC_STATE),
            *base.add(SKC_DADDR).cast::<u32>(),
            *base.add(SKC_DPORT).cast::<u16>(),
        )
    };
    if state != TCP_ESTABLISHED {
        // Unconnected sockets pick their destination per sendmsg; the LB translates each one.
        return 0;
    }
    let target = SockTermKey {
        addr,
        port,
        _pad: 0,
    };
    if !maps::terminates(&target) {
        return 0;
    }
    // SAFETY: tracing programs may take the cookie of a trusted socket pointer.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    let key = SockRevNatKey {
        cookie,
        addr,
        port,
        _pad: 0,
    };
    // Only sockets the socket LB sent to this backend: a client that connected to the pod
    // address itself keeps its socket.
    let Some(service) = maps::sock_rev_nat(&key) else {
        return 0;
    };
    if sock_destroy(sk) == 0 {
        let record = SockTermRecord {
            cookie,
            backend_addr: addr,
            service_addr: service.addr,
            backend_port: port,
            service_port: service.port,
            _pad: 0,
        };
        // SAFETY: meta is the trusted iterator metadata; `record` lives on the stack for the
        // call. A failed write (output buffer full) only loses the report, not the destroy.
        unsafe {
            bpf_seq_write(
                (*meta).seq,
                core::ptr::from_ref(&record).cast(),
                size_of::<SockTermRecord>() as u32,
            );
        }
    }
    0
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
