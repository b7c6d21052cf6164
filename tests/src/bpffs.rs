//! A private bpffs mounted on a temp directory, unmounted (lazily if busy) and removed on drop.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// A bpffs instance of our own, so tests never touch /sys/fs/bpf (which may not even be
/// mounted) and parallel tests never see each other's pins. It is mounted in the root mount
/// namespace, so processes that only switched network namespace see it.
#[derive(Debug)]
pub struct Bpffs {
    dir: PathBuf,
}

impl Bpffs {
    /// Creates `<tmp>/<name>` and mounts bpffs on it.
    pub fn mount_temp(name: &str) -> Result<Bpffs> {
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let target = CString::new(dir.as_os_str().as_bytes())?;
        // SAFETY: mount(2) with valid NUL-terminated strings and no data.
        let r = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if r != 0 {
            let err = std::io::Error::last_os_error();
            let _ = std::fs::remove_dir(&dir);
            return Err(err).with_context(|| format!("mount -t bpf bpf {}", dir.display()));
        }
        Ok(Bpffs { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Creates (if needed) the directory `name` inside the mount and returns it.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let Ok(target) = CString::new(self.dir.as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: umount2(2) on the path we mounted.
        if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
            let err = std::io::Error::last_os_error();
            // Busy (a process still has a pinned object open): detach now, the kernel frees
            // it when the last user goes away.
            // SAFETY: as above.
            if err.raw_os_error() != Some(libc::EBUSY)
                || unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0
            {
                eprintln!(
                    "warning: unmounting bpffs {}: {}",
                    self.dir.display(),
                    std::io::Error::last_os_error()
                );
                return;
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("warning: removing {}: {e}", self.dir.display());
        }
    }
}
