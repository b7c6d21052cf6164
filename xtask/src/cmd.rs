//! Running commands: the pinned cargo, plain processes, and checks of the host.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::toolchain::Toolchains;

/// `cargo` of the pinned stable, in the workspace root. The toolchain is named explicitly: xtask
/// itself may have been built by another one (the first run on a fresh machine), whose
/// `RUSTUP_TOOLCHAIN` its children would otherwise inherit.
pub fn cargo(root: &Path, toolchains: &Toolchains) -> Command {
    let mut command = Command::new("cargo");
    command
        .current_dir(root)
        .env("RUSTUP_TOOLCHAIN", &toolchains.stable);
    without_cargo_run_env(&mut command);
    command
}

/// Removes what `cargo run` set for xtask itself (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...):
/// build scripts that watch those variables (ring's does) would otherwise rebuild whenever a
/// build alternates between `cargo xtask` and a plain `cargo` in a shell.
pub fn without_cargo_run_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(
                key,
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
            )
        {
            command.env_remove(key);
        }
    }
}

/// Cargo's target directory as cargo picks it: `CARGO_TARGET_DIR`, else `target/`.
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => std::env::current_dir().unwrap_or_default().join(dir),
        None => root.join("target"),
    }
}

/// Runs `command` to the end; an error unless it succeeded.
pub fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("could not start {}", describe(command)))?;
    if !status.success() {
        bail!("{} failed: {status}", describe(command));
    }
    Ok(())
}

/// Runs `command` and returns its stdout; an error unless it succeeded.
pub fn output(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("could not start {}", describe(command)))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}: {}",
            describe(command),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    format!("`{}`", words.join(" "))
}

pub fn has_command(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .any(|dir| dir.join(name).is_file())
    })
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() == 0 }
}

pub fn ensure_root(why: &str) -> Result<()> {
    if !is_root() {
        bail!("run as root (sudo -E cargo xtask ...): {why}");
    }
    Ok(())
}

unsafe extern "C" {
    fn geteuid() -> u32;
}
