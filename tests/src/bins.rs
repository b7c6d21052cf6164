//! Where the binaries under test live: an env override, else the test executable's target dir.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// `target/<profile>` derived from the running test executable
/// (`target/debug/deps/harness-1234` → `target/debug`).
pub fn target_profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let Some(dir) = exe.parent() else {
        bail!("test executable {} has no parent dir", exe.display());
    };
    // Integration tests live in `deps/`; binaries one level up.
    if dir.file_name().is_some_and(|n| n == "deps")
        && let Some(up) = dir.parent()
    {
        return Ok(up.to_path_buf());
    }
    Ok(dir.to_path_buf())
}

/// `$env_var` if set, else `<target-dir>/<profile>/<name>`. Does not check that it exists.
pub fn binary_path(env_var: &str, name: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        return Ok(PathBuf::from(path));
    }
    Ok(target_profile_dir()?.join(name))
}

/// Like [`binary_path`], but fails with a hint on how to build it when it is missing.
pub fn existing_binary(env_var: &str, name: &str, package: &str) -> Result<PathBuf> {
    let path = binary_path(env_var, name)?;
    if !path.is_file() {
        bail!(
            "{name} not found at {}: build it with `cargo build -p {package}` (same profile as \
             the tests) or point {env_var} at it",
            path.display()
        );
    }
    Ok(path)
}

/// The `netns-echo` helper of this crate (cargo builds it for integration tests).
pub fn echo_bin() -> Result<PathBuf> {
    existing_binary("NETNS_ECHO_BIN", "netns-echo", "proxy-tests")
}

/// The `sluice` daemon binary.
pub fn sluice_bin() -> Result<PathBuf> {
    existing_binary("SLUICE_BIN", "sluice", "proxy-user")
}

/// The commit of the previous release the upgrade test starts from (`tests/previous-release.txt`).
pub fn previous_release() -> &'static str {
    include_str!("../previous-release.txt")
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .expect("tests/previous-release.txt names a commit")
}

/// The previous release's `sluice` (see [`previous_release`]): `$SLUICE_PREVIOUS_BIN`, else
/// where `cargo xtask previous-release` caches it,
/// `<target-dir>/previous-release/<commit>/sluice`. Fails with that hint when missing.
pub fn previous_sluice_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_PREVIOUS_BIN") {
        return Ok(PathBuf::from(path));
    }
    let target = target_profile_dir()?
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow::anyhow!("the profile dir has no parent"))?;
    let path = target
        .join("previous-release")
        .join(previous_release())
        .join("sluice");
    if !path.is_file() {
        bail!(
            "the previous release's sluice is not at {}: build it with `cargo xtask \
             previous-release` (`cargo xtask test` does) or point SLUICE_PREVIOUS_BIN at it",
            path.display()
        );
    }
    Ok(path)
}
