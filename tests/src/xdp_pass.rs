//! A minimal `XDP_PASS` program, loaded with bpf(2) and pinned, for the underlay's bridge ports.
//!
//! `XDP_TX` out of a veth only arrives when the peer veth has an XDP program (TOOLCHAIN.md), so
//! tests of the `XDP_TX` path put this one on the bridge side of the node's eth0.

use std::{
    ffi::CString,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use anyhow::{Context, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TYPE_XDP: u32 = 6;
const XDP_PASS: i32 = 2;

#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`; the kernel zero-fills the rest.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

#[repr(C)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "`T` is a bpf_attr prefix, a few dozen bytes; bpf(2) returns an fd, an int, as a long"
)]
fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<i32> {
    // SAFETY: bpf(2) with a properly sized, initialised attr that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref::<T>(attr),
            std::mem::size_of::<T>() as u32,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

/// Loads `r0 = XDP_PASS; exit` and pins it at `path` (inside a bpffs).
pub fn load_and_pin(path: &Path) -> Result<()> {
    let insns = [
        // mov64 r0, XDP_PASS
        Insn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: XDP_PASS,
        },
        // exit
        Insn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    prog_name[..9].copy_from_slice(b"xdp_pass\0");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: u32::try_from(insns.len()).expect("two instructions"),
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
    };
    let fd = bpf(BPF_PROG_LOAD, &attr).context("loading the XDP_PASS program")?;
    // SAFETY: bpf(2) returned a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let pathname = CString::new(path.as_os_str().as_bytes())?;
    let pin = ObjPinAttr {
        pathname: pathname.as_ptr() as u64,
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd).cast_unsigned(),
        file_flags: 0,
    };
    bpf(BPF_OBJ_PIN, &pin).with_context(|| format!("pinning XDP_PASS at {}", path.display()))?;
    Ok(())
}
