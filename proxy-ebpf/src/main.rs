//! Sluice's kernel programs. Each packet path lives in its own module; the maps they share are
//! in `maps`, and the ABI (keys, values, names) in `proxy-common`. Every module also builds for
//! the host, where `cargo test -p proxy-ebpf` tests the pure logic (parsing, rewrites, the
//! RST's numbers, the error table); nothing there calls a kernel helper or a map.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod affinity;
mod conntrack;
mod counters;
mod error;
mod forward;
mod kernel;
mod klog;
mod maps;
mod nat;
mod outcome;
mod packet;
mod reject;
mod service;
mod sock_term;
mod socket_lb;
mod tc;
mod xdp_ingress;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves there are no panics reachable; this only satisfies the linker.
    loop {}
}

/// The host build (tests, clippy) has no programs to run.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
