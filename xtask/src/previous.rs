//! The previous release's `sluice`, built once per commit for the upgrade test.
//!
//! The commit is named in `tests/previous-release.txt`. Its tree is extracted with `git archive`
//! (the repository's worktrees and branches stay as they are), `tests/previous-release.patch`
//! applied to it (a point release's backport: what the release needs to run on today's
//! kernels), and built in a target directory
//! of its own, seeded with a copy of this tree's dependency artifacts: the dependencies are the
//! same crates at the same versions, so only the workspace's own crates compile (about a minute
//! in place of a full build). What stays is the binary,
//! `<target>/previous-release/<commit>/sluice` (rebuilt when the patch changes); the sources and
//! the build are removed.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::{run, target_dir, without_cargo_run_env},
    toolchain::{self, Toolchains},
};

/// Where the commit is named, relative to the workspace root.
const RELEASE_FILE: &str = "tests/previous-release.txt";
/// The backport applied to the commit's tree, relative to the workspace root.
const PATCH_FILE: &str = "tests/previous-release.patch";
/// The environment variable the upgrade test reads the binary's path from.
pub const BIN_ENV: &str = "SLUICE_PREVIOUS_BIN";

/// The commit of the previous release: the first line of [`RELEASE_FILE`] that is not a comment.
fn commit(root: &Path) -> Result<String> {
    let path = root.join(RELEASE_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let commit = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .with_context(|| format!("{} names no commit", path.display()))?;
    Ok(commit.to_owned())
}

/// Builds the previous release's `sluice` unless it is cached; returns its path.
pub fn build(root: &Path) -> Result<PathBuf> {
    let commit = commit(root)?;
    let patch = root.join(PATCH_FILE);
    let patch_text = std::fs::read(&patch).with_context(|| format!("read {}", patch.display()))?;
    let cache = target_dir(root).join("previous-release").join(&commit);
    let bin = cache.join("sluice");
    // The backport the binary was built with, kept beside it: a changed one rebuilds.
    let built_with = cache.join("previous-release.patch");
    if bin.is_file() && std::fs::read(&built_with).ok().as_ref() == Some(&patch_text) {
        return Ok(bin);
    }
    eprintln!("xtask: building sluice of {commit} (the upgrade test's previous release)");
    let src = cache.join("src");
    let target = cache.join("target");
    for dir in [&src, &target] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(&src)?;
    extract(root, &commit, &src)?;
    // Not inside this repository (the cache is under its target dir): there `git apply` would
    // skip every path outside the current directory, silently.
    run(Command::new("git")
        .current_dir(&src)
        .env("GIT_CEILING_DIRECTORIES", &cache)
        .args(["apply", "--verbose"])
        .arg(&patch))
    .with_context(|| format!("apply {} to {commit}", patch.display()))?;
    seed(&target_dir(root), &target)?;

    // Its own toolchains (the eBPF build script reads the nightly from its toolchains.toml).
    let toolchains = Toolchains::load(&src)?;
    toolchain::ensure_toolchain(&toolchains.stable, &[])?;
    toolchain::ensure_nightly(&toolchains)?;
    // The same packages as this tree's `cargo xtask test` build, so the features of every
    // dependency, hence the seeded artifacts, are the same.
    let mut cargo = Command::new("cargo");
    without_cargo_run_env(&mut cargo);
    run(cargo
        .current_dir(&src)
        .env("RUSTUP_TOOLCHAIN", &toolchains.stable)
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "build",
            "--package",
            "proxy-user",
            "--package",
            "proxy-tests",
        ])
        .args(["--bin", "sluice"]))?;

    let tmp = cache.join("sluice.tmp");
    std::fs::copy(target.join("debug/sluice"), &tmp).context("copy the built sluice")?;
    std::fs::rename(&tmp, &bin)?;
    std::fs::write(&built_with, &patch_text)?;
    for dir in [&src, &target] {
        std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    Ok(bin)
}

/// `git archive COMMIT | tar -x -C DEST`.
fn extract(root: &Path, commit: &str, dest: &Path) -> Result<()> {
    let mut archive = Command::new("git")
        .current_dir(root)
        .args(["archive", "--format=tar", commit])
        .stdout(Stdio::piped())
        .spawn()
        .context("run git archive")?;
    let stdout = archive.stdout.take().context("git archive's stdout")?;
    let untar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dest)
        .stdin(stdout)
        .status()
        .context("run tar")?;
    let archived = archive.wait()?;
    if !archived.success() || !untar.success() {
        bail!(
            "extracting {commit} failed (git archive: {archived}, tar: {untar}); a shallow \
             clone lacks it: fetch it"
        );
    }
    Ok(())
}

/// Copies this tree's dependency artifacts (host and eBPF builds) into `target`, where cargo
/// finds them fresh: its fingerprints do not depend on the target directory's path.
fn seed(ours: &Path, target: &Path) -> Result<()> {
    let debug = target.join("debug");
    std::fs::create_dir_all(&debug)?;
    let copies = [
        (ours.join("debug/deps"), debug.clone()),
        (ours.join("debug/build"), debug.clone()),
        (ours.join("debug/.fingerprint"), debug),
        (ours.join("bpf"), target.to_path_buf()),
    ];
    for (from, into) in copies {
        if from.is_dir() {
            run(Command::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(&from)
                .arg(&into))?;
        }
    }
    Ok(())
}
