//! What the socket programs (`socket_lb`, `sock_term`) need of an address family beyond its
//! service maps: its socket-level reverse-NAT map and its socket-termination map.
//!
//! An `AF_INET6` socket to an IPv4-mapped address (`::ffff:a.b.c.d`) talks IPv4: the kernel
//! sends its packets as IPv4 and keeps the IPv4 address beside the mapped one. The programs
//! therefore handle it as [`V4`] (the IPv4 maps, keyed by the IPv4 addresses) and convert at the
//! edges with [`SockFamily::as_addr6`] and `proxy_common::address::mapped_ipv4`, as Cilium does
//! (`sock6_xlate_v4_in_v6`).

use aya_ebpf::programs::SockAddrContext;
use proxy_common::{
    Addr6, SockRevNatKey, SockRevNatKey6, SockRevNatValueOf, SockTermKeyOf, address::ipv4_mapped,
};

use crate::{
    error::Error,
    family::{Family, V4, V6},
    klog,
    maps::{self, Entry, SOCK_REV_NAT, SOCK_REV_NAT6, SOCK_TERM6},
};

pub trait SockFamily: Family {
    /// Remembers that the socket `cookie`, sent to `backend:backend_port`, asked for
    /// `service:service_port`. A full LRU map evicts its oldest entry; a failed write only
    /// loses the reverse translation.
    fn remember(
        cookie: u64,
        backend: Self::Addr,
        backend_port: u16,
        service: Self::Addr,
        service_port: u16,
    );
    /// The service address the socket `cookie` asked for when it was sent to `backend:port`.
    fn original(
        cookie: u64,
        backend: Self::Addr,
        port: u16,
    ) -> Option<SockRevNatValueOf<Self::Addr>>;
    /// Whether the daemon asked for sockets connected to `backend:port` to be terminated.
    fn terminates(backend: Self::Addr, port: u16) -> bool;
    /// The address as an `AF_INET6` socket holds it (IPv4: mapped).
    fn as_addr6(addr: Self::Addr) -> Addr6;
    /// Logs (at debug, when on) that a call to the frontend `addr:port` was refused.
    fn log_refused(ctx: &SockAddrContext, err: Error, addr: Self::Addr, port: u16);
}

impl SockFamily for V4 {
    #[inline(always)]
    fn remember(cookie: u64, backend: u32, backend_port: u16, service: u32, service_port: u16) {
        let key = SockRevNatKey {
            cookie,
            addr: backend,
            port: backend_port,
            _pad: 0,
        };
        let value = SockRevNatValueOf {
            addr: service,
            port: service_port,
            _pad: 0,
        };
        let _ = SOCK_REV_NAT.insert(&key, &value, 0);
    }

    #[inline(always)]
    fn original(cookie: u64, backend: u32, port: u16) -> Option<SockRevNatValueOf<u32>> {
        let key = SockRevNatKey {
            cookie,
            addr: backend,
            port,
            _pad: 0,
        };
        maps::sock_rev_nat(&key)
    }

    #[inline(always)]
    fn terminates(backend: u32, port: u16) -> bool {
        let key = SockTermKeyOf {
            addr: backend,
            port,
            _pad: 0,
        };
        maps::terminates(&key)
    }

    #[inline(always)]
    fn as_addr6(addr: u32) -> Addr6 {
        ipv4_mapped(addr)
    }

    #[inline(always)]
    fn log_refused(ctx: &SockAddrContext, err: Error, addr: u32, port: u16) {
        klog::debug!(
            ctx,
            "socket: connection refused ({}) frontend={:i}:{}",
            err.as_str(),
            addr.to_ne_bytes(),
            u16::from_be(port)
        );
    }
}

impl SockFamily for V6 {
    #[inline(always)]
    fn remember(cookie: u64, backend: Addr6, backend_port: u16, service: Addr6, service_port: u16) {
        let key = SockRevNatKey6 {
            cookie,
            addr: backend,
            port: backend_port,
            _pad: [0; 3],
        };
        let value = SockRevNatValueOf {
            addr: service,
            port: service_port,
            _pad: 0,
        };
        let _ = SOCK_REV_NAT6.insert(&key, &value, 0);
    }

    #[inline(always)]
    fn original(cookie: u64, backend: Addr6, port: u16) -> Option<SockRevNatValueOf<Addr6>> {
        let key = SockRevNatKey6 {
            cookie,
            addr: backend,
            port,
            _pad: [0; 3],
        };
        maps::found(SOCK_REV_NAT6.get_ptr_mut(&key)).map(Entry::get)
    }

    #[inline(always)]
    fn terminates(backend: Addr6, port: u16) -> bool {
        let key = SockTermKeyOf {
            addr: backend,
            port,
            _pad: 0,
        };
        SOCK_TERM6.get_ptr(&key).is_some()
    }

    #[inline(always)]
    fn as_addr6(addr: Addr6) -> Addr6 {
        addr
    }

    #[inline(always)]
    fn log_refused(ctx: &SockAddrContext, err: Error, addr: Addr6, port: u16) {
        let mut octets = [0u8; 16];
        for (chunk, word) in octets.as_chunks_mut::<4>().0.iter_mut().zip(addr) {
            *chunk = word.to_ne_bytes();
        }
        klog::debug!(
            ctx,
            "socket: connection refused ({}) frontend=[{:i}]:{}",
            err.as_str(),
            octets,
            u16::from_be(port)
        );
    }
}
