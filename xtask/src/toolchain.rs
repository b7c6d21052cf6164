//! The pinned toolchains (`toolchains.toml`): loads them, installs what is missing, checks fit.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use crate::cmd::{output, run};

/// `toolchains.toml` at the workspace root.
#[derive(Debug, Deserialize)]
pub struct Toolchains {
    pub stable: String,
    pub ebpf: Ebpf,
    /// `None` in the toolchains.toml of revisions before the fuzz targets (`previous.rs`
    /// loads those).
    pub fuzz: Option<Fuzz>,
}

#[derive(Debug, Deserialize)]
pub struct Ebpf {
    pub nightly: String,
    #[serde(rename = "bpf-linker")]
    pub bpf_linker: String,
    pub llvm: u32,
}

#[derive(Debug, Deserialize)]
pub struct Fuzz {
    #[serde(rename = "cargo-fuzz")]
    pub cargo_fuzz: String,
}

impl Toolchains {
    pub fn load(root: &Path) -> Result<Toolchains> {
        let path = root.join("toolchains.toml");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }

    /// Where Debian's llvm-<major>-dev installs LLVM.
    pub fn llvm_prefix(&self) -> PathBuf {
        PathBuf::from(format!("/usr/lib/llvm-{}", self.ebpf.llvm))
    }
}

/// Installs the pinned stable (with clippy and rustfmt) and pins the checkout to it, so plain
/// `cargo` there builds with it too. A directory override, not a `rust-toolchain.toml`: rustup
/// refuses to run anything under a toolchain file naming a toolchain it has not installed
/// (where auto-install is off), and then `cargo xtask` itself could not start to install it.
pub fn ensure_stable(root: &Path, toolchains: &Toolchains) -> Result<()> {
    let stable = &toolchains.stable;
    ensure_toolchain(stable, &["clippy", "rustfmt"])?;
    let active = output(
        Command::new("rustup")
            .args(["show", "active-toolchain"])
            .current_dir(root)
            .env_remove("RUSTUP_TOOLCHAIN"),
    )?;
    if !active.starts_with(&format!("{stable}-")) {
        eprintln!(
            "xtask: pinning {} to Rust {stable} (rustup override; toolchains.toml)",
            root.display()
        );
        run(Command::new("rustup")
            .args(["override", "set", stable, "--path"])
            .arg(root))?;
    }
    Ok(())
}

/// Installs the pinned nightly with rust-src (and rustfmt, for `cargo xtask fmt`) and
/// bpf-linker, and checks that the nightly's LLVM is the one bpf-linker is built against (rustc
/// hands the linker LLVM bitcode).
pub fn ensure_ebpf(root: &Path, toolchains: &Toolchains) -> Result<()> {
    let ebpf = &toolchains.ebpf;
    let nightly = &ebpf.nightly;
    ensure_nightly(toolchains)?;
    let version = output(Command::new("rustc").args([&format!("+{nightly}"), "-vV"]))?;
    let llvm_major = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next()?.parse::<u32>().ok());
    if llvm_major != Some(ebpf.llvm) {
        bail!(
            "toolchains.toml: {nightly} uses LLVM {}, but bpf-linker is built against LLVM {}: \
             pick a nightly whose `rustc -vV` says LLVM {}, or change both",
            llvm_major.map_or("(unknown)".to_owned(), |m| m.to_string()),
            ebpf.llvm,
            ebpf.llvm
        );
    }
    if !bpf_linker_is(&ebpf.bpf_linker) {
        install_bpf_linker(root, toolchains)?;
    }
    Ok(())
}

/// Installs the pinned nightly with rust-src (the eBPF build) and rustfmt (`cargo xtask fmt`,
/// whose import grouping only a nightly rustfmt does).
pub fn ensure_nightly(toolchains: &Toolchains) -> Result<()> {
    ensure_toolchain(&toolchains.ebpf.nightly, &["rust-src", "rustfmt"])
}

/// Installs `toolchain` (minimal profile) with `components`, or adds the components it lacks;
/// asks rustup nothing over the network when all are there.
pub fn ensure_toolchain(toolchain: &str, components: &[&str]) -> Result<()> {
    let list = ["component", "list", "--installed", "--toolchain", toolchain];
    let installed = output(Command::new("rustup").args(list)).unwrap_or_default();
    let has = |component: &str| installed.lines().any(|line| line.starts_with(component));
    let missing: Vec<&str> = components.iter().copied().filter(|c| !has(c)).collect();
    if !has("rustc") {
        eprintln!(
            "xtask: installing {toolchain} with {} (toolchains.toml)",
            components.join(", ")
        );
        let components = components.join(",");
        let install = ["toolchain", "install", toolchain, "--profile", "minimal"];
        run(Command::new("rustup")
            .args(install)
            .args(["--component", &components]))
    } else if !missing.is_empty() {
        run(Command::new("rustup")
            .args(["component", "add", "--toolchain", toolchain])
            .args(&missing))
    } else {
        Ok(())
    }
}

fn bpf_linker_is(version: &str) -> bool {
    output(Command::new("bpf-linker").arg("--version"))
        .is_ok_and(|out| out.split_whitespace().any(|word| word == version))
}

/// `cargo install bpf-linker` against Debian's LLVM: llvm-sys finds it through
/// `LLVM_SYS_<major><minor>_PREFIX` (named after the LLVM release it binds), bpf-linker's own
/// build script through `LLVM_PREFIX` (else the first `llvm-config` on PATH, which may be
/// another LLVM).
fn install_bpf_linker(root: &Path, toolchains: &Toolchains) -> Result<()> {
    let ebpf = &toolchains.ebpf;
    let prefix = toolchains.llvm_prefix();
    let llvm_config = prefix.join("bin/llvm-config");
    let release = output(Command::new(&llvm_config).arg("--version"))
        .with_context(|| format!("{} (Debian llvm-{}-dev)", llvm_config.display(), ebpf.llvm))?;
    let mut parts = release.trim().split('.');
    let (major, minor) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    eprintln!(
        "xtask: building bpf-linker {} against LLVM {} (about a minute)",
        ebpf.bpf_linker,
        release.trim()
    );
    run(crate::cmd::cargo(root, toolchains)
        .env(format!("LLVM_SYS_{major}{minor}_PREFIX"), &prefix)
        .env("LLVM_PREFIX", &prefix)
        .args([
            "install",
            &format!("bpf-linker@{}", ebpf.bpf_linker),
            "--locked",
            "--no-default-features",
            "--features",
            &format!("llvm-{}", ebpf.llvm),
        ]))?;
    if !bpf_linker_is(&ebpf.bpf_linker) {
        bail!(
            "bpf-linker {} was installed but `bpf-linker --version` does not say so: is \
             ~/.cargo/bin first on PATH?",
            ebpf.bpf_linker
        );
    }
    Ok(())
}
