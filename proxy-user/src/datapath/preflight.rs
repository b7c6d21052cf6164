//! Checks of the host before `sluice run` loads anything; each failure is one line that says
//! what to do (run as root, a kernel with BTF and TCX, a cgroup v2 directory).

use std::path::Path;

use anyhow::{Context as _, Result, bail};

/// Capabilities `sluice run` uses (docs/cluster-mode.md says why each), as bit numbers of
/// `CapEff` in /proc/self/status.
const CAPABILITIES: [(&str, u32); 4] = [
    ("CAP_NET_ADMIN", 12),
    ("CAP_SYS_ADMIN", 21),
    ("CAP_PERFMON", 38),
    ("CAP_BPF", 39),
];

/// TCX links, which the TC programs are attached with, came in Linux 6.6.
const MIN_KERNEL: (u32, u32) = (6, 6);

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Runs every check; the first failure is the error.
pub fn check(cgroup: &Path) -> Result<()> {
    privileges(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())?;
    kernel(&std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default())?;
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): Sluice needs a kernel \
             built with CONFIG_DEBUG_INFO_BTF=y, as every major distribution ships"
        );
    }
    cgroup2(cgroup)
}

fn privileges(status: &str) -> Result<()> {
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<&str> = CAPABILITIES
        .iter()
        .filter(|(_, bit)| effective & (1 << bit) == 0)
        .map(|(name, _)| *name)
        .collect();
    if !missing.is_empty() {
        bail!(
            "sluice run needs root (or {}): run it with sudo, or grant the capabilities; missing: \
             {}",
            CAPABILITIES.map(|(name, _)| name).join(", "),
            missing.join(", ")
        );
    }
    Ok(())
}

fn kernel(release: &str) -> Result<()> {
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    let version = (numbers.next().flatten(), numbers.next().flatten());
    let (Some(major), Some(minor)) = version else {
        // An unreadable release is no reason to refuse; attaching will tell.
        return Ok(());
    };
    if (major, minor) < MIN_KERNEL {
        bail!(
            "kernel {} is older than Linux {}.{}: Sluice attaches its TC programs with TCX \
             links; upgrade the kernel",
            release.trim(),
            MIN_KERNEL.0,
            MIN_KERNEL.1
        );
    }
    Ok(())
}

fn cgroup2(cgroup: &Path) -> Result<()> {
    let magic = super::fs_magic(cgroup).with_context(|| {
        format!(
            "--cgroup {}: pass a cgroup v2 directory (e.g. /sys/fs/cgroup)",
            cgroup.display()
        )
    })?;
    if magic != CGROUP2_SUPER_MAGIC {
        bail!(
            "--cgroup {} is not on a cgroup v2 file system: pass a cgroup v2 directory (mount \
             one with `mount -t cgroup2 none /sys/fs/cgroup` where the host has none)",
            cgroup.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_every_capability() {
        privileges("Name:\tsluice\nCapEff:\t000001ffffffffff\n").unwrap();
    }

    #[test]
    fn a_user_without_capabilities_is_told_to_run_as_root() {
        let err = privileges("CapEff:\t0000000000000000\n").unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("sluice run needs root"), "{message}");
        assert!(message.ends_with("missing: CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF"));
    }

    #[test]
    fn only_the_missing_capabilities_are_named() {
        // CAP_NET_ADMIN and CAP_SYS_ADMIN, not CAP_PERFMON and CAP_BPF.
        let err = privileges("CapEff:\t0000000000201000\n").unwrap_err();
        assert!(
            err.to_string().ends_with("missing: CAP_PERFMON, CAP_BPF"),
            "{err}"
        );
    }

    #[test]
    fn kernels_before_tcx_are_refused() {
        kernel("6.18.44-fc-v1045\n").unwrap();
        kernel("6.6.0").unwrap();
        kernel("7.0.1").unwrap();
        let err = kernel("6.1.0-28-amd64\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("kernel 6.1.0-28-amd64 is older than Linux 6.6")
        );
        kernel("unknown").unwrap();
    }

    #[test]
    fn a_directory_outside_cgroup2_is_refused() {
        let err = cgroup2(Path::new("/proc")).unwrap_err();
        assert!(
            err.to_string()
                .contains("is not on a cgroup v2 file system"),
            "{err}"
        );
        let err = format!("{:#}", cgroup2(Path::new("/no/such/cgroup")).unwrap_err());
        assert!(
            err.starts_with("--cgroup /no/such/cgroup: pass a cgroup v2"),
            "{err}"
        );
        assert!(
            err.ends_with("No such file or directory (os error 2)"),
            "{err}"
        );
    }
}
