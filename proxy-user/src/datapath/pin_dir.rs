//! The pin directory: where the maps and links outlive the daemon. Whoever can open a pin can
//! read or rewrite a map (the services, conntrack) or detach a program, so the directory must
//! be a real bpffs directory, reached through no symbolic link, `0700` and its pins `0600`,
//! owned by the daemon's user.

use std::{
    fs::{self, DirBuilder, Permissions},
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use tracing::info;

use super::fs_magic;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// The standard bpffs mount point: mounted there when nothing is (as systemd does), never
/// anywhere else.
const BPFFS_ROOT: &str = "/sys/fs/bpf";
const DIR_MODE: u32 = 0o700;

/// The directories under the pin directory.
#[derive(Debug)]
pub struct PinDirs {
    /// The hooks' links, one per hook (`PROGRAM@TARGET`).
    pub links: PathBuf,
    /// The verified programs, a directory per build.
    pub programs: PathBuf,
}

/// Checks `pin_dir` and creates it and its `links` and `programs` directories, `0700`.
///
/// Refused: a path through a symbolic link (pins could be redirected to where another user
/// reads them), and one whose nearest existing directory is not on a bpffs (pins would not
/// outlive the daemon, and a mount there would hide what the directory held). When
/// `/sys/fs/bpf` itself holds no bpffs, one is mounted there.
pub fn prepare(pin_dir: &Path) -> Result<PinDirs> {
    refuse_symlinks(pin_dir)?;
    let parent = pin_dir.parent().unwrap_or(pin_dir);
    if parent == Path::new(BPFFS_ROOT) {
        fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        if fs_magic(parent)? != BPF_FS_MAGIC {
            mount_bpffs(parent)?;
        }
    }
    let existing = pin_dir
        .ancestors()
        .find(|dir| dir.exists())
        .unwrap_or(Path::new("/"));
    if fs_magic(existing)? != BPF_FS_MAGIC {
        bail!(
            "--pin-dir {}: {} is not on a bpffs, so pins would not outlive sluice: use a \
             directory under {BPFFS_ROOT}, or mount one (`mount -t bpf bpf DIR`)",
            pin_dir.display(),
            existing.display()
        );
    }
    // The pins themselves are 0600 (or less): the kernel makes them S_IRUSR | S_IWUSR.
    let dirs = PinDirs {
        links: pin_dir.join("links"),
        programs: pin_dir.join("programs"),
    };
    for dir in [pin_dir, &dirs.links, &dirs.programs] {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .with_context(|| format!("create pin directory {}", dir.display()))?;
        // One made by an earlier version, or by hand, may be wider.
        fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
            .with_context(|| format!("make {} private (0700)", dir.display()))?;
    }
    Ok(dirs)
}

/// Fails on the first component of `path` that is a symbolic link.
fn refuse_symlinks(path: &Path) -> Result<()> {
    let mut ancestors: Vec<&Path> = path.ancestors().collect();
    ancestors.reverse();
    for dir in ancestors {
        if fs::symlink_metadata(dir).is_ok_and(|meta| meta.file_type().is_symlink()) {
            bail!(
                "--pin-dir {}: {} is a symbolic link; give the real path (the pins must stay \
                 where the path says)",
                path.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

fn mount_bpffs(at: &Path) -> Result<()> {
    info!(path = %at.display(), "mounting bpffs: nothing is mounted there");
    let target = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let ret = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        bail!(
            "mount bpffs at {}: {}: mount one there (`mount -t bpf bpf {}`)",
            at.display(),
            std::io::Error::last_os_error(),
            at.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_through_a_symlink_is_refused_and_a_real_one_is_not() {
        let dir = std::env::temp_dir().join(format!("sluice-pin-dir-{}", std::process::id()));
        let real = dir.join("real");
        fs::create_dir_all(&real).unwrap();
        let link = dir.join("link");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = refuse_symlinks(&link.join("pins")).unwrap_err().to_string();
        assert!(err.contains("is a symbolic link"), "{err}");
        assert!(err.contains(&link.display().to_string()), "{err}");
        refuse_symlinks(&real.join("pins")).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_pin_dir_off_bpffs_is_refused_naming_the_flag() {
        let dir = std::env::temp_dir().join(format!("sluice-off-bpffs-{}", std::process::id()));
        let err = prepare(&dir.join("pins")).unwrap_err().to_string();
        assert!(err.starts_with("--pin-dir "), "{err}");
        assert!(err.contains("is not on a bpffs"), "{err}");
        assert!(!dir.exists(), "nothing is created off bpffs");
    }
}
