//! The bpf(2) commands the benchmarks need and aya 0.16 does not offer in this form: a test run
//! by program fd (aya's `TestRun` takes only programs it loaded from an object) that returns the
//! kernel's own per-run duration with any flags, batched map updates, and a hand-assembled
//! `XDP_PASS` program (the floor every packet figure is compared against).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// `union bpf_attr`, zero-filled; the kernel requires unused bytes to be zero.
#[repr(C, align(8))]
struct Attr([u8; 144]);

impl Attr {
    fn new() -> Self {
        Self([0; 144])
    }
    fn u32(&mut self, offset: usize, value: u32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    }
    fn u64(&mut self, offset: usize, value: u64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
    }
    fn get_u32(&self, offset: usize) -> u32 {
        u32::from_ne_bytes(self.0[offset..offset + 4].try_into().expect("4 bytes"))
    }
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "`Attr` is a bpf_attr: a few hundred bytes"
)]
fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a zero-initialised bpf_attr of the size we pass, and every pointer in it
    // refers to memory that outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut::<Attr>(attr),
            size_of::<Attr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// What one `BPF_PROG_TEST_RUN` returned.
#[derive(Clone, Copy, Debug)]
pub struct TestRun {
    pub retval: u32,
    /// The kernel's mean time per run, in ns (its clock around the run loop).
    pub duration_ns: u32,
}

/// Runs `prog` `repeat` times on `data` with the XDP context `ctx` (may be empty).
#[expect(
    clippy::cast_possible_truncation,
    reason = "`data` and `ctx` are a test frame and its `xdp_md`: far below 4 GiB"
)]
pub fn test_run(
    prog: BorrowedFd<'_>,
    data: &[u8],
    ctx: &[u8],
    repeat: u32,
    flags: u32,
    batch_size: u32,
) -> io::Result<TestRun> {
    let mut attr = Attr::new();
    // struct { u32 prog_fd, retval, data_size_in, data_size_out; u64 data_in, data_out;
    //          u32 repeat, duration, ctx_size_in, ctx_size_out; u64 ctx_in, ctx_out;
    //          u32 flags, cpu, batch_size; }
    attr.u32(0, prog.as_raw_fd().cast_unsigned());
    attr.u32(8, data.len() as u32);
    attr.u64(16, data.as_ptr() as u64);
    attr.u32(32, repeat);
    if !ctx.is_empty() {
        attr.u32(40, ctx.len() as u32);
        attr.u64(48, ctx.as_ptr() as u64);
    }
    attr.u32(64, flags);
    attr.u32(72, batch_size);
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(TestRun {
        retval: attr.get_u32(4),
        duration_ns: attr.get_u32(36),
    })
}

/// The daemon's batched map update, which the bench also uses to fill maps fast.
pub use proxy_user::datapath::update_batch;

/// Loads `r0 = XDP_PASS; exit`: the cheapest XDP program there is.
pub fn load_xdp_pass() -> io::Result<OwnedFd> {
    load_returning(BPF_PROG_TYPE_XDP, 2, b"xdp_pass\0")
}

/// Loads `r0 = TC_ACT_OK; exit`: the cheapest TC program, the pod-side path's floor.
pub fn load_tc_ok() -> io::Result<OwnedFd> {
    load_returning(BPF_PROG_TYPE_SCHED_CLS, 0, b"tc_ok\0")
}

/// Loads a program of `prog_type` that only returns `verdict`.
#[expect(
    clippy::cast_possible_truncation,
    reason = "two instructions; bpf(2) returns the new descriptor, an int, as a long"
)]
fn load_returning(prog_type: u32, verdict: u8, name: &[u8]) -> io::Result<OwnedFd> {
    // mov64 r0, verdict; exit
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, verdict, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    let mut attr = Attr::new();
    // struct { u32 prog_type, insn_cnt; u64 insns, license; u32 log_level, log_size;
    //          u64 log_buf; u32 kern_version, prog_flags; char prog_name[16]; ... }
    attr.u32(0, prog_type);
    attr.u32(4, insns.len() as u32);
    attr.u64(8, insns.as_ptr() as u64);
    attr.u64(16, license.as_ptr() as u64);
    attr.0[48..48 + name.len()].copy_from_slice(name);
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The file descriptor of a map in a loaded object.
pub fn map_fd<'a>(ebpf: &'a aya::Ebpf, name: &str) -> anyhow::Result<BorrowedFd<'a>> {
    use aya::maps::Map;
    let map = ebpf
        .map(name)
        .ok_or_else(|| anyhow::anyhow!("the eBPF object has no map {name}"))?;
    let (Map::HashMap(data) | Map::LruHashMap(data) | Map::Array(data)) = map else {
        anyhow::bail!("map {name} has an unexpected type");
    };
    Ok(data.fd().as_fd())
}
