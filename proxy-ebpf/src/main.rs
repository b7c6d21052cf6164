//! Sluice's kernel programs. Each packet path lives in its own module; the maps they share are
//! in `maps`, and the ABI (keys, values, names) in `proxy-common`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod affinity;
#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod error;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod klog;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod reject;
#[cfg(target_arch = "bpf")]
mod service;
#[cfg(target_arch = "bpf")]
mod sock_term;
#[cfg(target_arch = "bpf")]
mod socket_lb;
#[cfg(target_arch = "bpf")]
mod tc;
#[cfg(target_arch = "bpf")]
mod xdp_ingress;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves there are no panics reachable; this only satisfies the linker.
    loop {}
}

/// Lets `cargo clippy --workspace` build this crate for the host, where it has no programs.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
