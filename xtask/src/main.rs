//! `cargo xtask`: installs the pinned toolchains and Debian packages, builds, tests, demos, benches.

mod cmd;
mod fuzz;
mod image;
mod packages;
mod previous;
mod toolchain;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

use crate::{
    cmd::{cargo, ensure_root, run, target_dir},
    packages::Use,
    toolchain::Toolchains,
};

#[derive(Parser)]
#[command(about = "Sluice's development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install everything every task needs (toolchains, Debian packages); what CI runs first.
    Setup,
    /// Install the eBPF toolchain if missing, then build the eBPF object.
    BuildEbpf,
    /// Build everything and run every test: unit, `BPF_PROG_TEST_RUN` and netns end-to-end.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Build the previous release's `sluice` for the upgrade test (cached per commit; see
    /// tests/previous-release.txt) and print its path.
    PreviousRelease,
    /// Format the tree (rustfmt.toml, plus import grouping, which only a nightly rustfmt does).
    Fmt {
        /// Fail if anything is not formatted, changing nothing (CI).
        #[arg(long)]
        check: bool,
    },
    /// Start a netns demo cluster from examples/, send traffic, show which pod answered.
    Demo,
    /// Build the container image (release build) as an OCI archive, from the binary and the
    /// libraries it links: no base image is pulled.
    Image {
        /// Where to write it (default: image/sluice.oci.tar in the target directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run the benchmarks (release build) and write docs/BENCHMARKS.md with its plots.
    Bench {
        /// Tiny sizes, a few seconds: checks that the benchmarks run (CI); writes its report
        /// under target/proxy-bench-quick/ instead of docs/.
        #[arg(long)]
        quick: bool,
        /// Extra arguments for proxy-bench (e.g. `--only packet,sync`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// The reliability run (release build): soak, packet fuzzing, exhaustion, leaks; writes
    /// docs/RELIABILITY.md.
    Reliability {
        /// Small sizes, a few minutes: checks that everything runs and holds (CI); writes its
        /// report under target/proxy-reliability-quick/ instead of docs/.
        #[arg(long)]
        quick: bool,
        /// Extra arguments for proxy-reliability (e.g. `--only soak,leaks`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

/// rustfmt's unstable import options, given on the command line so that stable `cargo fmt`
/// (which leaves grouped imports as they are) reads a rustfmt.toml it accepts without warnings.
const IMPORT_STYLE: &str = "group_imports=StdExternalCrate,imports_granularity=Crate";

fn main() -> ExitCode {
    match run_task(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> Result<()> {
    let root = workspace_root();
    let toolchains = Toolchains::load(&root)?;
    let setup = |uses: &[Use]| -> Result<()> {
        packages::ensure(&toolchains, uses)?;
        toolchain::ensure_stable(&root, &toolchains)?;
        toolchain::ensure_ebpf(&root, &toolchains)
    };
    let cargo_run = |args: &[&str]| run(cargo(&root, &toolchains).args(args));
    match task {
        Task::Setup => {
            setup(&[Use::Ebpf, Use::Netns, Use::Bench, Use::Ci, Use::Container])?;
            fuzz::ensure_cargo_fuzz(&toolchains)?;
        }
        Task::BuildEbpf => {
            setup(&[Use::Ebpf])?;
            cargo_run(&["build", "--package", "proxy-user"])?;
            println!(
                "eBPF object: {}",
                target_dir(&root)
                    .join("bpf/bpfel-unknown-none/bpf/proxy-ebpf")
                    .display()
            );
        }
        Task::Test { args } => {
            ensure_root("the tests load eBPF programs and create network namespaces")?;
            setup(&[Use::Ebpf, Use::Netns, Use::Container])?;
            // The end-to-end tests run the real binaries, and the container test the image.
            cargo_run(&build_bins(&["proxy-user", "proxy-tests"], false))?;
            let image = target_dir(&root).join(image::DEFAULT_PATH);
            image::build(&build_image_binary(&root, &cargo_run)?, &image)?;
            // The upgrade test starts from the previous release (after the build above, whose
            // dependency artifacts it reuses).
            let previous = previous::build(&root)?;
            // Leftovers of earlier runs that were killed (SIGKILL, CI timeout) go first; each
            // test process sweeps too, this just says what it found up front. A leftover
            // that cannot be removed is a warning, not a reason to skip the tests.
            if let Err(e) = cargo_run(&run_test_bin("netns-harness", &["sweep"])) {
                eprintln!("warning: {e:#}");
            }
            cargo_run(&["test", "--package", "proxy-common", "--features", "user"])?;
            let mut test = vec!["test", "--workspace", "--exclude", "proxy-common"];
            test.extend(args.iter().map(String::as_str));
            run(cargo(&root, &toolchains)
                .env(previous::BIN_ENV, &previous)
                .env(image::ARCHIVE_ENV, &image)
                .args(&test))?;
        }
        Task::PreviousRelease => {
            setup(&[Use::Ebpf])?;
            // Its dependencies come from this tree's build.
            cargo_run(&build_bins(&["proxy-user", "proxy-tests"], false))?;
            println!("{}", previous::build(&root)?.display());
        }
        Task::Fmt { check } => {
            toolchain::ensure_nightly(&toolchains)?;
            let mut fmt = cargo(&root, &toolchains);
            fmt.env("RUSTUP_TOOLCHAIN", &toolchains.ebpf.nightly).args([
                "fmt",
                "--all",
                "--",
                "--config",
                IMPORT_STYLE,
            ]);
            if check {
                fmt.arg("--check");
            }
            run(&mut fmt)?;
        }
        Task::Demo => {
            ensure_root("the demo loads eBPF programs and creates network namespaces")?;
            setup(&[Use::Ebpf, Use::Netns])?;
            // The demo runs the daemon and the echo servers of the test crate.
            cargo_run(&build_bins(&["proxy-user", "proxy-tests"], false))?;
            cargo_run(&run_test_bin("sluice-demo", &[]))?;
        }
        Task::Image { out } => {
            setup(&[Use::Ebpf])?;
            let out = out.unwrap_or_else(|| target_dir(&root).join(image::DEFAULT_PATH));
            image::build(&build_image_binary(&root, &cargo_run)?, &out)?;
        }
        Task::Bench { quick, args } => {
            ensure_root("the benchmarks load eBPF programs and create network namespaces")?;
            setup(&[Use::Ebpf, Use::Netns, Use::Bench])?;
            // The connection benchmark runs the real daemon; both from the same profile.
            cargo_run(&build_bins(&["proxy-user", "proxy-bench"], true))?;
            run(&mut report_command(
                &root,
                "proxy-bench",
                "BENCHMARKS.md",
                quick,
                &args,
            ))?;
        }
        Task::Reliability { quick, args } => {
            ensure_root("the reliability run loads eBPF programs and creates network namespaces")?;
            let began = Instant::now();
            setup(&[Use::Ebpf, Use::Netns])?;
            // The daemon, the echo servers and the run itself, from one profile: the run finds
            // the others next to itself.
            let build = || {
                cargo_run(&build_bins(
                    &["proxy-user", "proxy-tests", "proxy-reliability"],
                    true,
                ))
            };
            reliability(&root, &toolchains, quick, began, build, args)?;
        }
    }
    Ok(())
}

/// `proxy-reliability`, with the input fuzzing it reports on run alongside the sections.
///
/// Input fuzzing is the command's longest path on a fresh machine: cargo-fuzz's install, the
/// sanitized build, then the run. The install goes at normal priority beside the workspace's
/// build, and the sections wait for both (niced, it ended only after the soak and delayed the
/// rest by minutes). The fuzz build and run then go at the lowest priority: the sections mostly
/// wait on traffic and timers, and must not wait on the fuzzing (their daemons restart against
/// deadlines). Its figures reach the run on stdin once it ends; the run reads them after its
/// sections.
fn reliability(
    root: &Path,
    toolchains: &Toolchains,
    quick: bool,
    began: Instant,
    build: impl FnOnce() -> Result<()>,
    mut args: Vec<String>,
) -> Result<()> {
    let fuzzing_wanted = fuzz::wanted(&args);
    let length = if quick { fuzz::QUICK } else { fuzz::FULL };
    std::thread::scope(|scope| {
        let install = fuzzing_wanted.then(|| scope.spawn(|| fuzz::ensure_cargo_fuzz(toolchains)));
        build()?;
        let fuzzing = install.map(|install| {
            let installed = install
                .join()
                .unwrap_or_else(|_| bail!("cargo-fuzz's install panicked"));
            scope.spawn(move || {
                let began = Instant::now();
                let fuzzed = installed.and_then(|()| fuzz::run(root, toolchains, length));
                let handover = fuzz::handover(&fuzzed, began.elapsed());
                (fuzzed, handover)
            })
        });
        args.push(format!(
            "--step-before=setup and build={:.1}",
            began.elapsed().as_secs_f64()
        ));
        if fuzzing.is_some() {
            args.push("--input-fuzz=-".to_owned());
        }
        let mut command = report_command(root, "proxy-reliability", "RELIABILITY.md", quick, &args);
        let Some(fuzzing) = fuzzing else {
            return run(&mut command);
        };
        let mut child = command
            .stdin(Stdio::piped())
            .spawn()
            .context("start proxy-reliability")?;
        let (fuzzed, handover) = fuzzing
            .join()
            .map_err(|_| anyhow::anyhow!("the input fuzzing thread panicked"))?;
        // Kept for a rerun of the binary by hand (`--input-fuzz FILE`).
        let kept = target_dir(root).join(if quick {
            "proxy-reliability-quick/input-fuzz.json"
        } else {
            "proxy-reliability/input-fuzz.json"
        });
        write_file(&kept, &handover)?;
        let mut stdin = child.stdin.take().context("proxy-reliability's stdin")?;
        // A run that already failed and exited has closed its end; its status says why.
        let _ = stdin.write_all(handover.as_bytes());
        drop(stdin);
        let status = child.wait()?;
        fuzz::fail_on_crashes(&fuzzed?)?;
        if !status.success() {
            bail!("proxy-reliability failed ({status})");
        }
        Ok(())
    })
}

/// The release `bin` that writes `report`: into docs/, or with `--quick` under
/// target/<bin>-quick/ (a CI check whose numbers mean nothing).
fn report_command(root: &Path, bin: &str, report: &str, quick: bool, args: &[String]) -> Command {
    let out = if quick {
        format!("target/{bin}-quick/{report}")
    } else {
        format!("docs/{report}")
    };
    let mut command = Command::new(target_dir(root).join("release").join(bin));
    command.current_dir(root).args(["--out", &out]);
    if quick {
        command.arg("--quick");
    }
    command.args(args);
    command
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

/// The release `sluice` that goes into the image, built.
fn build_image_binary(root: &Path, cargo_run: &dyn Fn(&[&str]) -> Result<()>) -> Result<PathBuf> {
    cargo_run(&[
        "build",
        "--release",
        "--package",
        "proxy-user",
        "--bin",
        "sluice",
    ])?;
    Ok(target_dir(root).join("release/sluice"))
}

/// `cargo build` of the binaries of `packages`.
fn build_bins<'a>(packages: &[&'a str], release: bool) -> Vec<&'a str> {
    let mut args = vec!["build", "--bins"];
    if release {
        args.push("--release");
    }
    for package in packages {
        args.extend(["--package", package]);
    }
    args
}

/// `cargo run` of one of the test crate's programs (debug profile, as the tests build it).
fn run_test_bin<'a>(bin: &'a str, args: &[&'a str]) -> Vec<&'a str> {
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
    all
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}
