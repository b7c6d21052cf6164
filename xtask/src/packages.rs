//! The Debian packages every task calls: one list, each with what needs it; installs the missing.

use std::{path::PathBuf, process::Command};

use anyhow::{Result, bail};

use crate::{cmd::has_command, toolchain::Toolchains};

/// What a package is for; each task asks for the uses it runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Use {
    /// Building bpf-linker, and running it (it links Debian's LLVM).
    Ebpf,
    /// The netns cluster of the tests, the demo and the benchmarks.
    Netns,
    /// The rule sets the benchmarks compare against, and the font of their plots.
    Bench,
    /// `deploy/validate.sh` (a Python venv), run by `.ci/run`.
    Ci,
    /// The container test: the image from `cargo xtask image` run by podman with runc.
    Container,
}

/// How to tell that a package is already there without asking dpkg (works on any distribution
/// where someone installed the tool another way).
enum Probe {
    Command(&'static str),
    File(PathBuf),
    Python(&'static str),
}

struct Package {
    name: String,
    probe: Probe,
    used_by: Use,
}

fn packages(toolchains: &Toolchains) -> Vec<Package> {
    let llvm = toolchains.ebpf.llvm;
    let prefix = toolchains.llvm_prefix();
    let package = |name: &str, probe, used_by| Package {
        name: name.to_owned(),
        probe,
        used_by,
    };
    vec![
        package(
            &format!("llvm-{llvm}-dev"),
            Probe::File(prefix.join("bin/llvm-config")),
            Use::Ebpf,
        ),
        // llvm-config lists Polly among the libraries to link.
        package(
            &format!("libpolly-{llvm}-dev"),
            Probe::File(prefix.join("lib/libPolly.a")),
            Use::Ebpf,
        ),
        package("iproute2", Probe::Command("ip"), Use::Netns),
        // Turns off checksum offload on the test underlay, so frames carry real checksums.
        package("ethtool", Probe::Command("ethtool"), Use::Netns),
        // The tests and the demo read pinned maps with it, as users are told to.
        package("bpftool", Probe::Command("bpftool"), Use::Netns),
        package("iptables", Probe::Command("iptables-restore"), Use::Bench),
        package("nftables", Probe::Command("nft"), Use::Bench),
        package(
            "fonts-dejavu-core",
            Probe::File("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into()),
            Use::Bench,
        ),
        package("python3-venv", Probe::Python("ensurepip, venv"), Use::Ci),
        package("podman", Probe::Command("podman"), Use::Container),
        // podman's default runtime, crun, refuses hybrid cgroup layouts.
        package("runc", Probe::Command("runc"), Use::Container),
    ]
}

impl Probe {
    fn present(&self) -> bool {
        match self {
            Probe::Command(name) => has_command(name),
            Probe::File(path) => path.exists(),
            Probe::Python(modules) => Command::new("python3")
                .args(["-c", &format!("import {modules}")])
                .output()
                .is_ok_and(|out| out.status.success()),
        }
    }
}

/// Installs, with apt-get, every package of `uses` that is missing. A failure is one line that
/// names the packages and what to do.
pub fn ensure(toolchains: &Toolchains, uses: &[Use]) -> Result<()> {
    let missing: Vec<String> = packages(toolchains)
        .into_iter()
        .filter(|p| uses.contains(&p.used_by) && !p.probe.present())
        .map(|p| p.name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !crate::cmd::is_root() {
        bail!("missing Debian packages: {list}; run as root, or `apt-get install -y {list}`");
    }
    if !has_command("apt-get") {
        bail!("missing packages {list} and no apt-get here: install them by hand, then run again");
    }
    eprintln!("xtask: installing {list}");
    let succeeded = |command: &mut Command| {
        command
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|status| status.success())
    };
    if !succeeded(Command::new("apt-get").args(["update", "-qq"])) {
        bail!("`apt-get update` failed (see above): fix the package sources, then run again");
    }
    if !succeeded(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    ) {
        bail!("`apt-get install {list}` failed (see above): install them by hand, then run again");
    }
    Ok(())
}
