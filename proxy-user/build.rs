//! Builds the eBPF object (crate `proxy-ebpf`) so `sluice` can embed it: one binary per node.
//!
//! Uses the nightly pinned in `toolchains.toml` and bpf-linker; `cargo xtask build-ebpf`
//! installs both.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, exit},
};

#[derive(serde::Deserialize)]
struct Toolchains {
    ebpf: Ebpf,
}

#[derive(serde::Deserialize)]
struct Ebpf {
    nightly: String,
}

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.parent().expect("workspace root");
    for path in [
        "proxy-ebpf/src",
        "proxy-common/src",
        "proxy-ebpf/Cargo.toml",
        "toolchains.toml",
    ] {
        println!("cargo::rerun-if-changed={}", root.join(path).display());
    }
    println!("cargo::rerun-if-env-changed=CARGO_TARGET_DIR");
    let nightly = pinned_nightly(root);

    // Beside the host build's target directory (CARGO_TARGET_DIR is seen here when the user
    // set it), so a fresh target directory gets a fresh eBPF build too.
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("bpf");
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(root)
        .arg(format!("+{nightly}"))
        .args(["build", "--package", "proxy-ebpf"])
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
    let ok = cargo.status().is_ok_and(|status| status.success());
    if !ok {
        fail(&format!(
            "building the eBPF object with {nightly} failed (above). Run `cargo xtask \
             build-ebpf`: it installs {nightly} with rust-src and bpf-linker (toolchains.toml)"
        ));
    }
    copy_to_out_dir(&target_dir.join("bpfel-unknown-none/bpf/proxy-ebpf"));
}

fn pinned_nightly(root: &Path) -> String {
    let path = root.join("toolchains.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| fail(&format!("read {}: {err}", path.display())));
    let toolchains: Toolchains = toml::from_str(&text)
        .unwrap_or_else(|err| fail(&format!("parse {}: {err}", path.display())));
    toolchains.ebpf.nightly
}

fn copy_to_out_dir(object: &Path) {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("sluice.bpf.o");
    if let Err(err) = std::fs::copy(object, &out) {
        fail(&format!(
            "copy {} to {}: {err}",
            object.display(),
            out.display()
        ));
    }
}

/// One line for cargo to show under the build script's output, without a panic's backtrace.
fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    exit(1)
}
