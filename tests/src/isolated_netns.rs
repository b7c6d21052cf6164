//! A fresh network namespace for the calling thread, removed when the guard drops.
//!
//! The namespace is made with `unshare(CLONE_NEWNET)` on the current thread only; the guard
//! holds the thread's previous namespace and switches back on drop (also while unwinding from a
//! failed assertion). Nothing else refers to the new namespace, so the kernel destroys it, and
//! every interface in it, at that moment. Child processes started from the thread (`ip`) run in
//! the new namespace.

use std::{
    ffi::CString,
    fs::{self, File},
    io,
    os::fd::AsRawFd,
    process::Command,
};

pub struct IsolatedNetns {
    original: File,
}

impl IsolatedNetns {
    /// Moves the calling thread into a new, empty network namespace with loopback up.
    pub fn enter() -> io::Result<Self> {
        let original = File::open("/proc/thread-self/ns/net")?;
        // SAFETY: unshare has no memory-safety preconditions; it only changes this thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let netns = Self { original };
        netns.ip("link set lo up");
        Ok(netns)
    }

    /// Runs `ip ARGS` in the namespace; panics with its stderr when it fails.
    pub fn ip(&self, args: &str) {
        let output = Command::new("ip")
            .args(args.split_whitespace())
            .output()
            .unwrap_or_else(|err| panic!("cannot run `ip {args}` (is iproute2 installed?): {err}"));
        assert!(
            output.status.success(),
            "`ip {args}` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }

    /// Writes a sysctl under /proc/sys (`net.*` ones are this namespace's own).
    pub fn sysctl(&self, name: &str, value: &str) {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        fs::write(&path, value).unwrap_or_else(|err| panic!("write {value} to {path}: {err}"));
    }

    /// The index of interface `name` in this namespace.
    pub fn ifindex(&self, name: &str) -> u32 {
        let c_name = CString::new(name).expect("interface names have no NUL");
        // SAFETY: `c_name` is a valid NUL-terminated string for the duration of the call.
        let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        assert_ne!(index, 0, "no interface {name} in the test namespace");
        index
    }
}

impl Drop for IsolatedNetns {
    fn drop(&mut self) {
        // SAFETY: `original` is an open namespace file descriptor owned by this guard.
        if unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let err = io::Error::last_os_error();
            if std::thread::panicking() {
                eprintln!("cannot return to the original network namespace: {err}");
            } else {
                panic!("cannot return to the original network namespace: {err}");
            }
        }
    }
}
