//! `cargo xtask`: builds the eBPF object, runs the tests and the demo, installing what they need.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

/// The last bpf-linker line that loads rustc's own LLVM at run time (see shared TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.10.1";

#[derive(Parser)]
#[command(about = "Sluice's development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install nightly rust-src and bpf-linker if missing, then build the eBPF object.
    BuildEbpf,
    /// Build everything and run every test: unit, BPF_PROG_TEST_RUN and netns end-to-end.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Start a netns demo cluster from examples/, send traffic, show which pod answered.
    Demo,
    /// Run the benchmarks (release build) and write docs/BENCHMARKS.md with its plots.
    Bench {
        /// Tiny sizes, a few seconds: checks that the benchmarks run (CI); writes its report
        /// under target/bench-quick/ instead of docs/.
        #[arg(long)]
        quick: bool,
        /// Extra arguments for proxy-bench (e.g. `--only packet,sync`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let root = workspace_root();
    match Cli::parse().task {
        Task::BuildEbpf => {
            ensure_toolchain()?;
            cargo(&root, &["build", "--package", "proxy-user"])?;
            println!(
                "eBPF object: {}",
                root.join("target/bpf/bpfel-unknown-none/bpf/proxy-ebpf")
                    .display()
            );
        }
        Task::Test { args } => {
            ensure_toolchain()?;
            ensure_root("the tests load eBPF programs and create network namespaces")?;
            // The end-to-end tests run the real binaries.
            cargo(
                &root,
                &[
                    "build",
                    "--package",
                    "proxy-user",
                    "--package",
                    "proxy-tests",
                    "--bins",
                ],
            )?;
            // Leftovers of earlier runs that were killed (SIGKILL, CI timeout) go first; each
            // test process sweeps too, this just says what it found up front. A leftover
            // that cannot be removed is a warning, not a reason to skip the tests.
            if let Err(e) = run_test_bin(&root, "netns-harness", &["sweep"]) {
                eprintln!("warning: {e:#}");
            }
            cargo(
                &root,
                &["test", "--package", "proxy-common", "--features", "user"],
            )?;
            let mut test = vec!["test", "--workspace", "--exclude", "proxy-common"];
            test.extend(args.iter().map(String::as_str));
            cargo(&root, &test)?;
        }
        Task::Demo => {
            ensure_toolchain()?;
            ensure_root("the demo loads eBPF programs and creates network namespaces")?;
            cargo(&root, &["build", "--package", "proxy-user", "--bins"])?;
            run_test_bin(&root, "sluice-demo", &[])?;
        }
        Task::Bench { quick, args } => {
            ensure_toolchain()?;
            ensure_root("the benchmarks load eBPF programs and create network namespaces")?;
            ensure_bench_packages()?;
            // The connection benchmark runs the real daemon; both from the same profile.
            cargo(
                &root,
                &[
                    "build",
                    "--release",
                    "--package",
                    "proxy-user",
                    "--package",
                    "proxy-bench",
                    "--bins",
                ],
            )?;
            let out = if quick {
                "target/bench-quick/BENCHMARKS.md"
            } else {
                "docs/BENCHMARKS.md"
            };
            let mut bench = Command::new(root.join("target/release/proxy-bench"));
            bench.current_dir(&root).args(["--out", out]);
            if quick {
                bench.arg("--quick");
            }
            bench.args(&args);
            run(&mut bench)?;
        }
    }
    Ok(())
}

/// Installs the Debian packages the benchmarks call: iptables, nftables, bpftool, iproute2 and
/// the DejaVu font the plots are drawn with.
fn ensure_bench_packages() -> Result<()> {
    let wanted = [
        ("iptables-restore", "iptables"),
        ("nft", "nftables"),
        ("bpftool", "bpftool"),
        ("ip", "iproute2"),
    ];
    let mut missing: Vec<&str> = wanted
        .iter()
        .filter(|(binary, _)| !has_command(binary))
        .map(|(_, package)| *package)
        .collect();
    if !Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists() {
        missing.push("fonts-dejavu-core");
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq"])
        .args(&missing))?;
    Ok(())
}

fn has_command(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .any(|dir| dir.join(name).is_file())
    })
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    run(Command::new(env!("CARGO")).current_dir(root).args(args))
}

/// Runs one of the test crate's programs (debug profile, as the tests build it).
fn run_test_bin(root: &Path, bin: &str, args: &[&str]) -> Result<()> {
    let mut all = vec![
        "run",
        "--quiet",
        "--package",
        "proxy-tests",
        "--bin",
        bin,
        "--",
    ];
    all.extend_from_slice(args);
    cargo(root, &all)
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("could not start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn ensure_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("run as root: {why}");
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Installs the eBPF toolchain pieces that are missing: nightly's rust-src and bpf-linker.
fn ensure_toolchain() -> Result<()> {
    let components = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("rustup is needed to build the eBPF object (nightly + rust-src)")?;
    let installed = String::from_utf8_lossy(&components.stdout);
    if !components.status.success() || !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: installing nightly rust-src");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let linker = Command::new("bpf-linker").arg("--version").output();
    let has_linker = linker.is_ok_and(|out| {
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
    });
    if !has_linker {
        eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION}");
        run(Command::new(env!("CARGO")).args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
        ]))?;
    }
    Ok(())
}
