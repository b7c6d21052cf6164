//! cgroup v2 directories as guards: find the cgroup2 mount, create, and empty + remove on drop.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// How long drop waits for killed members to leave and for rmdir to succeed.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where cgroup v2 is mounted: /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on
/// hybrid ones. Read from /proc/mounts rather than guessed.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_source), Some(target), Some(fstype)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if fstype == "cgroup2" {
            return Ok(PathBuf::from(unescape_mount_path(target)));
        }
    }
    bail!("no cgroup2 filesystem in /proc/mounts")
}

/// /proc/mounts writes space, tab, newline and backslash as octal escapes (`\040`).
pub(crate) fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A cgroup v2 directory we created. On drop, the whole subtree is emptied (member
/// processes get SIGKILL by PID: only processes the tests put there can be members) and
/// removed, children before parents.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates the directory `path`; its parent must exist and it must not.
    pub fn create(path: impl Into<PathBuf>) -> Result<Cgroup> {
        let path = path.into();
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Cgroup { path })
    }

    /// Creates `<cgroup2 mount>/<name>`.
    pub fn create_top_level(name: &str) -> Result<Cgroup> {
        Self::create(cgroup2_mount()?.join(name))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the child cgroup `name` and returns its path. It is removed with this guard.
    pub fn create_child(&self, name: &str) -> Result<PathBuf> {
        let path = self.path.join(name);
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(path)
    }
}

/// The PIDs directly in cgroup `dir`.
pub fn procs(dir: &Path) -> Result<Vec<i32>> {
    let file = dir.join("cgroup.procs");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Whether any process is in `dir` or below (cgroup.events `populated`).
fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .is_ok_and(|t| t.lines().any(|l| l.trim() == "populated 1"))
}

/// Empties (SIGKILL to every member) and removes the cgroup `dir` and every cgroup below it.
pub(crate) fn remove_tree(dir: &Path) -> Result<()> {
    // Children first: a cgroup with child cgroups cannot be removed.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path())?;
            }
        }
    }
    let deadline = Instant::now() + REMOVE_TIMEOUT;
    loop {
        for pid in procs(dir).unwrap_or_default() {
            // SAFETY: kill(2). The PID is a live member of a cgroup only our tests use.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // EBUSY while killed members are still exiting.
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(if populated(dir) { 5 } else { 20 }));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "removing cgroup {} (members: {:?})",
                        dir.display(),
                        procs(dir).unwrap_or_default()
                    )
                });
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.path) {
            eprintln!("warning: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mount_paths() {
        assert_eq!(unescape_mount_path("/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
        assert_eq!(unescape_mount_path("/a\\"), "/a\\");
    }
}
