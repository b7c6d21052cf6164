//! Named network namespaces (`ip netns add`) as guards, and entering them from child processes.

use std::{
    fs::{File, OpenOptions},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use anyhow::{Context, Result, bail};

use crate::process::Child;

/// The first `ip netns add` on a machine bind-mounts /run/netns; two of those racing can
/// fail, so netns creation and deletion within this process go one at a time.
static IP_NETNS_LOCK: Mutex<()> = Mutex::new(());

/// Runs `ip ARGS`, returning stdout; the error carries the command and its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace, deleted (`ip netns del`) on drop. Processes still inside keep
/// the namespace alive after that, so kill them first.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// `ip netns add NAME` and bring `lo` up.
    pub fn create(name: &str) -> Result<Netns> {
        {
            let _one_at_a_time = IP_NETNS_LOCK
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            ip(&["netns", "add", name])?;
        }
        let ns = Netns {
            name: name.to_owned(),
            path: Path::new(NETNS_DIR).join(name),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, for `nsenter --net=PATH` or setns(2).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `ip -n NAME ARGS`, returning stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Writes a sysctl inside this namespace (`net.ipv4.ip_forward`, or a `/`-separated path
    /// when a component contains dots). /proc/sys/net follows the writer's netns.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key);
        self.run_in(|| std::fs::write(&path, value))?
            .with_context(|| format!("sysctl {key}={value} in netns {}", self.name))
    }

    /// Like [`Netns::sysctl`], but a key the kernel does not have (say IPv6 is off) is skipped.
    pub fn sysctl_if_present(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key);
        match self.run_in(|| std::fs::write(&path, value))? {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r.with_context(|| format!("sysctl {key}={value} in netns {}", self.name)),
        }
    }

    /// Reads a sysctl inside this namespace.
    pub fn read_sysctl(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key);
        let value = self
            .run_in(|| std::fs::read_to_string(&path))?
            .with_context(|| format!("reading sysctl {key} in netns {}", self.name))?;
        Ok(value.trim().to_owned())
    }

    /// Runs `f` on a fresh thread that has joined this namespace, so sockets it opens live
    /// here. The thread stays in the test's cgroup: for socket-LB tests, spawn a process in
    /// the node's cgroup instead.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let ns =
            File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: setns on an fd we own; only this thread changes namespace.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
                    }
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Makes `cmd`'s child enter this namespace (and `cgroup`, if given) before exec.
    pub fn prepare(&self, cmd: &mut Command, cgroup: Option<&Path>) -> Result<()> {
        enter_on_exec(cmd, &self.path, cgroup)
    }

    /// Spawns `cmd` inside this namespace (and `cgroup`), as a [`Child`] guard.
    pub fn spawn(&self, name: &str, mut cmd: Command, cgroup: Option<&Path>) -> Result<Child> {
        self.prepare(&mut cmd, cgroup)?;
        Child::spawn(name, cmd)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = delete(&self.name) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// `ip netns del NAME`: removes the name; the namespace itself goes when its last process
/// does.
pub fn delete(name: &str) -> Result<()> {
    let _one_at_a_time = IP_NETNS_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    ip(&["netns", "del", name]).map(drop)
}

fn sysctl_path(key: &str) -> PathBuf {
    let rel = if key.contains('/') {
        key.to_owned()
    } else {
        key.replace('.', "/")
    };
    Path::new("/proc/sys").join(rel)
}

/// Makes `cmd`'s child join the network namespace at `netns` (setns) and, if given, the
/// cgroup v2 directory `cgroup` (writes "0" to its cgroup.procs) right before exec.
///
/// Only the network namespace changes: the child stays in our mount namespace, so it sees
/// the same /sys, /tmp and bpffs mounts (`ip netns exec` would remount /sys).
pub fn enter_on_exec(cmd: &mut Command, netns: &Path, cgroup: Option<&Path>) -> Result<()> {
    // Open everything here: between fork and exec only async-signal-safe calls are allowed.
    let ns: OwnedFd = File::open(netns)
        .with_context(|| format!("opening netns {}", netns.display()))?
        .into();
    let procs: Option<OwnedFd> = match cgroup {
        Some(dir) => {
            let file = dir.join("cgroup.procs");
            Some(
                OpenOptions::new()
                    .write(true)
                    .open(&file)
                    .with_context(|| format!("opening {}", file.display()))?
                    .into(),
            )
        }
        None => None,
    };
    // SAFETY: the closure only calls setns(2) and write(2), both async-signal-safe, on fds
    // it owns (opened O_CLOEXEC, so they vanish at exec).
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &procs {
                // "0" moves the writing process itself.
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}
