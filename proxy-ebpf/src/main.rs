//! Sluice's kernel programs. Each packet path lives in its own module; the maps they share are
//! in `maps`, and the ABI (keys, values, names) in `proxy-common`. Every module also builds for
//! the host, where `cargo test -p proxy-ebpf` tests the pure logic (parsing, rewrites, the
//! RST's numbers, the error table); nothing there calls a kernel helper or a map.
#![cfg_attr(target_arch = "bpf", no_std)]
#![expect(
    clippy::inline_always,
    reason = "each program is verified as one function: inlined helpers keep packet bounds \
              checks in the caller's verifier state, and the per-packet path pays no calls"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand the entry functions their context by value"
)]
#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    reason = "the kernel's C ABI: helpers return longs that hold verdicts, sizes are ints, \
              `user_port` keeps a u16 in a u32, header fields have fixed widths and every \
              length is below the 64 KiB of an IPv4 packet; checked conversions would add \
              verifier branches to the per-packet path"
)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod affinity;
mod conntrack;
mod counters;
mod error;
mod family;
mod forward;
mod fragments;
mod icmp;
mod kernel;
mod klog;
mod maps;
mod nat;
mod outcome;
mod packet;
mod pod;
mod reject;
mod service;
mod sock_family;
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
