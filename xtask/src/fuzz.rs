//! Input fuzzing (fuzz/): installs the pinned cargo-fuzz, runs every target, reads its figures.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::{
    cmd::{output, run as run_command, without_cargo_run_env},
    toolchain::{self, Toolchains},
};

/// How long each target runs (all at once), and with which sanitizer.
#[derive(Clone, Copy)]
pub struct Length {
    pub seconds_per_target: u64,
    /// `address` (the address sanitizer: memory errors in the unsafe code below, libyaml's port among it) or
    /// `none` (panics, hangs and memory only; builds in a fraction of the time).
    pub sanitizer: &'static str,
}

/// `cargo xtask reliability`'s run (the three targets at once for 180 s: on two cores, about
/// 120 s of a core each), and its `--quick` form (CI, on a cold checkout).
pub const FULL: Length = Length {
    seconds_per_target: 180,
    sanitizer: "address",
};
pub const QUICK: Length = Length {
    seconds_per_target: 15,
    sanitizer: "none",
};

/// Whole-process memory a target may use (libFuzzer reports an OOM past it): the goal is
/// bounded memory on any input, and the address sanitizer's overhead fits in this.
const RSS_LIMIT_MB: u64 = 1024;
/// One allocation larger than this is reported as a crash: no input of a few kilobytes
/// should make sluice ask for that much at once (a bomb expanding would).
const MALLOC_LIMIT_MB: u64 = 512;
/// One input running longer than this is reported as a hang (the slowest seed takes
/// milliseconds).
const TIMEOUT_S: u64 = 10;

/// What one target's run did, from libFuzzer's last stats line (`#N DONE cov: .. corp: N/..
/// exec/s: N rss: NMb`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FuzzFigure {
    pub target: String,
    /// Inputs executed.
    pub runs: u64,
    /// Wall time of the run (libFuzzer's start-up and corpus loading included).
    pub seconds: f64,
    pub exec_per_s: u64,
    /// Coverage points reached.
    pub cov: u64,
    /// Inputs in the corpus at the end (seeds and what the run added).
    pub corpus: usize,
    pub peak_rss_mb: u64,
    /// Crashes, OOMs and hangs found (libFuzzer stops at the first).
    pub crashes: usize,
    /// Inputs the regression test replays (`cargo test -p proxy-user fuzz_input`): the seeds
    /// and every crash found so far.
    pub regressions: usize,
    /// The files libFuzzer wrote for them (replay one with `cargo fuzz run TARGET FILE`).
    pub artifacts: Vec<PathBuf>,
    /// libFuzzer's whole output.
    pub log: PathBuf,
}

/// Installs the pinned nightly and cargo-fuzz (toolchains.toml) when missing.
pub fn ensure_cargo_fuzz(toolchains: &Toolchains) -> Result<()> {
    let Some(fuzz) = &toolchains.fuzz else {
        bail!("toolchains.toml names no cargo-fuzz: add [fuzz] cargo-fuzz = \"x.y.z\"");
    };
    toolchain::ensure_nightly(toolchains)?;
    let version = &fuzz.cargo_fuzz;
    let installed = output(Command::new("cargo-fuzz").arg("--version"))
        .is_ok_and(|out| out.split_whitespace().any(|word| word == version));
    if installed {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {version} (toolchains.toml)");
    // The pinned stable builds it; it only runs on the nightly. A debug build: it only starts
    // cargo, and builds in a fraction of the release build's time on a fresh machine.
    let mut install = Command::new("cargo");
    install.env("RUSTUP_TOOLCHAIN", &toolchains.stable);
    without_cargo_run_env(&mut install);
    run_command(install.args([
        "install",
        "--debug",
        &format!("cargo-fuzz@{version}"),
        "--locked",
    ]))
}

/// Runs every target of fuzz/ for `seconds_per_target`, from its seeds (fuzz/seeds/TARGET,
/// read only) and a scratch corpus under fuzz/target that it grows, with cargo-fuzz installed
/// ([`ensure_cargo_fuzz`]). A crash is a figure, not an error: [`fail_on_crashes`] says what
/// to do with it once the report shows it.
pub fn run(root: &Path, toolchains: &Toolchains, length: Length) -> Result<Vec<FuzzFigure>> {
    let fuzz = root.join("fuzz");
    // One build for all targets, so no target's time is spent compiling.
    run_command(&mut cargo_fuzz(root, toolchains, "build", length))?;
    // All targets at once: on two cores each gets what a third of the run leaves idle, and the
    // step ends one run-length after the build instead of three.
    let targets = targets(&fuzz)?;
    let figures: Vec<Result<FuzzFigure>> = std::thread::scope(|scope| {
        let runs: Vec<_> = targets
            .iter()
            .map(|target| scope.spawn(|| run_target(root, toolchains, target, length)))
            .collect();
        runs.into_iter()
            .map(|run| {
                run.join()
                    .unwrap_or_else(|_| bail!("a fuzzing thread panicked"))
            })
            .collect()
    });
    let figures = figures.into_iter().collect::<Result<Vec<_>>>()?;
    for figure in &figures {
        eprintln!(
            "xtask: fuzz {}: {} runs in {:.0} s ({}/s), cov {}, corpus {}, peak rss {} MB, \
             {} crash(es)",
            figure.target,
            figure.runs,
            figure.seconds,
            figure.exec_per_s,
            figure.cov,
            figure.corpus,
            figure.peak_rss_mb,
            figure.crashes
        );
    }
    Ok(figures)
}

/// Whether `proxy-reliability`'s arguments leave the input section in (`--only` without
/// `input` leaves it out).
pub fn wanted(args: &[String]) -> bool {
    let mut only = None;
    for (i, arg) in args.iter().enumerate() {
        if let Some(list) = arg.strip_prefix("--only=") {
            only = Some(list.to_owned());
        } else if arg == "--only" {
            only = args.get(i + 1).cloned();
        }
    }
    only.is_none_or(|list| list.split(',').any(|name| name == "input"))
}

/// What `proxy-reliability --input-fuzz` reads: the step's time and every target's figures,
/// or why the step failed.
pub fn handover(result: &Result<Vec<FuzzFigure>>, took: Duration) -> String {
    let value = match result {
        Ok(targets) => serde_json::json!({ "seconds": took.as_secs_f64(), "targets": targets }),
        Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
    };
    serde_json::to_string_pretty(&value).expect("JSON of plain figures")
}

/// An error naming each crash's reproducing files, if any target crashed.
pub fn fail_on_crashes(figures: &[FuzzFigure]) -> Result<()> {
    let crashed: Vec<String> = figures
        .iter()
        .filter(|figure| figure.crashes > 0)
        .map(|figure| {
            let files: Vec<String> = figure
                .artifacts
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            format!(
                "{} crashed on {} (output in {}; once fixed, add the input to \
                 fuzz/regressions/{})",
                figure.target,
                files.join(", "),
                figure.log.display(),
                figure.target
            )
        })
        .collect();
    if !crashed.is_empty() {
        bail!("{}", crashed.join("; "));
    }
    Ok(())
}

/// `nice cargo +<nightly> fuzz <subcommand> --sanitizer ..` in the workspace root (`run` rebuilds
/// unless its options are the build's).
///
/// At the lowest CPU priority: it runs alongside the reliability sections, which must not wait
/// for it (their daemons restart against deadlines); it takes what they leave idle.
fn cargo_fuzz(root: &Path, toolchains: &Toolchains, subcommand: &str, length: Length) -> Command {
    let mut command = Command::new("nice");
    without_cargo_run_env(&mut command);
    command
        .current_dir(root)
        .env("RUSTUP_TOOLCHAIN", &toolchains.ebpf.nightly)
        .args([
            "-n",
            "19",
            "cargo",
            "fuzz",
            subcommand,
            "--sanitizer",
            length.sanitizer,
        ]);
    command
}

/// The targets, as `fuzz/fuzz_targets` names them.
fn targets(fuzz: &Path) -> Result<Vec<String>> {
    let dir = fuzz.join("fuzz_targets");
    let mut targets = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "rs")
            && let Some(stem) = path.file_stem().and_then(|stem| stem.to_str())
        {
            targets.push(stem.to_owned());
        }
    }
    targets.sort();
    Ok(targets)
}

fn run_target(
    root: &Path,
    toolchains: &Toolchains,
    target: &str,
    length: Length,
) -> Result<FuzzFigure> {
    let seconds = length.seconds_per_target;
    let fuzz = root.join("fuzz");
    let corpus = fuzz.join("target/corpus").join(target);
    let logs = fuzz.join("target/logs");
    for dir in [&corpus, &logs] {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let mut command = cargo_fuzz(root, toolchains, "run", length);
    // New inputs go into the first directory: the scratch one, so the seeds stay as committed.
    command
        .arg(target)
        .arg(&corpus)
        .arg(fuzz.join("seeds").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
        .arg(format!("-timeout={TIMEOUT_S}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    eprintln!(
        "xtask: fuzzing {target} for {seconds} s (libFuzzer's output: {})",
        log_path.display()
    );
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("start cargo fuzz run {target}"))?;
    let stderr = child.stderr.take().context("libFuzzer's output")?;
    let mut log = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.context("read libFuzzer's output")?;
        log.push_str(&line);
        log.push('\n');
    }
    let status = child.wait()?;
    fs::write(&log_path, &log).with_context(|| format!("write {}", log_path.display()))?;
    let mut figure = parse_log(target, &log, root);
    figure.regressions = ["seeds", "regressions"]
        .iter()
        .filter_map(|kind| fs::read_dir(fuzz.join(kind).join(target)).ok())
        .map(Iterator::count)
        .sum();
    figure.seconds = started.elapsed().as_secs_f64();
    figure.log = log_path;
    if !status.success() && figure.crashes == 0 {
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "cargo fuzz run {target} failed ({status}) without a crash file:\n{}",
            tail.join("\n")
        );
    }
    Ok(figure)
}

/// The figures of libFuzzer's output: its last stats line, and the files it wrote for a crash
/// (`Test unit written to PATH`, relative to where cargo fuzz ran).
fn parse_log(target: &str, log: &str, root: &Path) -> FuzzFigure {
    let mut figure = FuzzFigure {
        target: target.to_owned(),
        ..FuzzFigure::default()
    };
    for line in log.lines() {
        if let Some(path) = line.split("Test unit written to ").nth(1) {
            figure.artifacts.push(root.join(path.trim()));
            continue;
        }
        let Some(stats) = line.strip_prefix('#') else {
            continue;
        };
        let mut words = stats.split_whitespace();
        let Some(runs) = words.next().and_then(|runs| runs.parse().ok()) else {
            continue;
        };
        figure.runs = runs;
        let words: Vec<&str> = words.collect();
        let after = |key: &str| {
            words
                .iter()
                .position(|word| *word == key)
                .and_then(|i| words.get(i + 1))
                .map(|value| value.trim_end_matches("Mb").trim_end_matches("MB"))
        };
        let number = |key: &str| after(key).and_then(|value| value.parse().ok());
        figure.cov = number("cov:").unwrap_or(figure.cov);
        figure.exec_per_s = number("exec/s:").unwrap_or(figure.exec_per_s);
        let rss = number("rss:").unwrap_or(0);
        figure.peak_rss_mb = figure.peak_rss_mb.max(rss);
        if let Some(corpus) = after("corp:").and_then(|value| value.split('/').next()?.parse().ok())
        {
            figure.corpus = corpus;
        }
    }
    figure.crashes = figure.artifacts.len();
    figure
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_last_stats_line_and_the_crash_file() {
        let log = "INFO: Seed: 1
#2\tINITED cov: 8009 ft: 17071 corp: 10/14Kb exec/s: 0 rss: 95Mb
#8192\tpulse  cov: 9667 ft: 26723 corp: 511/803Kb lim: 5256 exec/s: 455 rss: 330Mb
#14512\tDONE   cov: 10143 ft: 28580 corp: 716/1212Kb lim: 5256 exec/s: 468 rss: 359Mb
Done 14512 runs in 31 second(s)
";
        let figure = parse_log("manifests", log, Path::new("/w"));
        assert_eq!(
            (
                figure.runs,
                figure.cov,
                figure.corpus,
                figure.exec_per_s,
                figure.peak_rss_mb
            ),
            (14512, 10143, 716, 468, 359)
        );
        assert_eq!(figure.crashes, 0);

        let log =
            "#300\tNEW    cov: 9000 ft: 1 corp: 20/1Kb lim: 4 exec/s: 300 rss: 120Mb L: 3/3 MS: 1 \
                   ChangeBit-
==1== ERROR: libFuzzer: deadly signal
artifact_prefix='/w/fuzz/artifacts/cli/'; Test unit written to /w/fuzz/artifacts/cli/crash-ab12
";
        let figure = parse_log("cli", log, Path::new("/w"));
        assert_eq!(
            figure.artifacts,
            [PathBuf::from("/w/fuzz/artifacts/cli/crash-ab12")]
        );
        assert_eq!(
            (figure.crashes, figure.runs, figure.peak_rss_mb),
            (1, 300, 120)
        );
    }
}
