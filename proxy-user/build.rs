//! Builds the eBPF object (crate `proxy-ebpf`) so `sluice` can embed it: one binary per node.
//!
//! Needs nightly with rust-src and bpf-linker; `cargo xtask build-ebpf` installs both.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.parent().expect("workspace root");
    for dir in ["proxy-ebpf/src", "proxy-common/src"] {
        println!("cargo::rerun-if-changed={}", root.join(dir).display());
    }
    println!(
        "cargo::rerun-if-changed={}",
        root.join("proxy-ebpf/Cargo.toml").display()
    );

    let target_dir = root.join("target/bpf");
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(root)
        .args(["+nightly", "build", "--package", "proxy-ebpf"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--profile", "bpf", "--target-dir"])
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf");
    // The outer cargo's settings are for the host build; the inner build must not inherit them.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key.starts_with("RUSTC")
            || key == "RUSTUP_TOOLCHAIN"
            || key == "CARGO_ENCODED_RUSTFLAGS"
        {
            cargo.env_remove(key.as_ref());
        }
    }
    let status = cargo.status().unwrap_or_else(|err| {
        panic!("could not run cargo +nightly to build the eBPF object: {err}")
    });
    assert!(
        status.success(),
        "building the eBPF object failed; run `cargo xtask build-ebpf`, which installs rust-src \
         and bpf-linker, and see its output"
    );
    let object = target_dir.join("bpfel-unknown-none/bpf/proxy-ebpf");
    copy_to_out_dir(&object);
}

fn copy_to_out_dir(object: &Path) {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("sluice.bpf.o");
    std::fs::copy(object, &out)
        .unwrap_or_else(|err| panic!("copy {} to {}: {err}", object.display(), out.display()));
}
