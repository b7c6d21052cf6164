//! The bpf(2) commands the benchmarks need and aya 0.16 does not offer in this form: a test run
//! by program fd (aya's `TestRun` takes only programs it loaded from an object) that returns the
//! kernel's own per-run duration with any flags, batched map updates, a hand-assembled
//! `XDP_PASS` program (the floor every packet figure is compared against), and a hand-assembled
//! program that restores a frame and tail-calls the program under test (see [`Restoring`]).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
/// `enum bpf_attach_type`: what aya loads XDP programs with; a tail call's programs must agree.
const BPF_XDP: u32 = 37;

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
    load(BPF_PROG_TYPE_XDP, &returning(2), b"xdp_pass\0")
}

/// Loads `r0 = TC_ACT_OK; exit`: the cheapest TC program, the pod-side path's floor.
pub fn load_tc_ok() -> io::Result<OwnedFd> {
    load(BPF_PROG_TYPE_SCHED_CLS, &returning(0), b"tc_ok\0")
}

/// `mov64 r0, verdict; exit`.
fn returning(verdict: u8) -> [u64; 2] {
    [
        u64::from_le_bytes([0xb7, 0, 0, 0, verdict, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ]
}

/// Loads `insns` as a program of `prog_type` (XDP ones with aya's expected attach type).
#[expect(
    clippy::cast_possible_truncation,
    reason = "a few dozen instructions; bpf(2) returns the new descriptor, an int, as a long"
)]
fn load(prog_type: u32, insns: &[u64], name: &[u8]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = Attr::new();
    // struct { u32 prog_type, insn_cnt; u64 insns, license; u32 log_level, log_size;
    //          u64 log_buf; u32 kern_version, prog_flags; char prog_name[16];
    //          u32 prog_ifindex, expected_attach_type; ... }
    attr.u32(0, prog_type);
    attr.u32(4, insns.len() as u32);
    attr.u64(8, insns.as_ptr() as u64);
    attr.u64(16, license.as_ptr() as u64);
    attr.0[48..48 + name.len()].copy_from_slice(name);
    if prog_type == BPF_PROG_TYPE_XDP {
        attr.u32(68, BPF_XDP);
    }
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// An XDP program that writes a template frame over the test run's buffer, then tail-calls
/// the program in its one-slot program array: every repetition of a test run then sees the
/// template, also when the program under test rewrites the frame (SNAT to a remote backend,
/// the TTL), which a plain repeat run does not undo. What the restore and the tail call cost
/// is measured by pointing it at the `XDP_PASS` program.
pub struct Restoring {
    pub program: OwnedFd,
    slots: OwnedFd,
}

impl Restoring {
    /// Loads the restorer of `frame` (its bytes become the program's immediates).
    pub fn new(frame: &[u8]) -> io::Result<Self> {
        let slots = create_prog_array()?;
        let program = load(
            BPF_PROG_TYPE_XDP,
            &restore_insns(frame, slots.as_raw_fd()),
            b"xdp_restore\0",
        )?;
        Ok(Self { program, slots })
    }

    /// Makes `program` the one the restorer tail-calls.
    pub fn point_at(&self, program: BorrowedFd<'_>) -> io::Result<()> {
        let key = 0u32;
        let value = program.as_raw_fd().cast_unsigned();
        let mut attr = Attr::new();
        // struct { u32 map_fd; u64 key, value, flags; } (key at 8: aligned)
        attr.u32(0, self.slots.as_raw_fd().cast_unsigned());
        attr.u64(8, (&raw const key) as u64);
        attr.u64(16, (&raw const value) as u64);
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr)?;
        Ok(())
    }
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "bpf(2) returns the new descriptor, an int, as a long"
)]
fn create_prog_array() -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    // struct { u32 map_type, key_size, value_size, max_entries; ... }
    attr.u32(0, BPF_MAP_TYPE_PROG_ARRAY);
    attr.u32(4, 4);
    attr.u32(8, 4);
    attr.u32(12, 1);
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One instruction: opcode, registers (`dst` low nibble, `src` high), offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[0] = code;
    bytes[1] = src << 4 | dst;
    bytes[2..4].copy_from_slice(&off.to_le_bytes());
    bytes[4..].copy_from_slice(&imm.to_le_bytes());
    u64::from_le_bytes(bytes)
}

/// The restorer: `r6 = ctx; r2 = data; if data + len > data_end: abort; store the frame's
/// bytes, 4 (then 2, then 1) at a time; tail_call(ctx, slots, 0); abort` (`XDP_ABORTED` also
/// when the slot is empty).
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "a test frame is a few dozen bytes; immediates are the frame's bytes as stored"
)]
fn restore_insns(frame: &[u8], slots_fd: i32) -> Vec<u64> {
    const MOV64_X: u8 = 0xbf;
    const MOV64_K: u8 = 0xb7;
    const ADD64_K: u8 = 0x07;
    const LDX_W: u8 = 0x61;
    const JGT_X: u8 = 0x2d;
    const ST_W: u8 = 0x62;
    const ST_H: u8 = 0x6a;
    const ST_B: u8 = 0x72;
    const LD_IMM64: u8 = 0x18;
    const CALL: u8 = 0x85;
    const EXIT: u8 = 0x95;
    const PSEUDO_MAP_FD: u8 = 1;
    const TAIL_CALL: i32 = 12;

    let mut stores = Vec::new();
    let mut at = 0;
    while at < frame.len() {
        let rest = &frame[at..];
        let (code, width, imm) = match rest.len() {
            4.. => (
                ST_W,
                4,
                i32::from_le_bytes(rest[..4].try_into().expect("4 bytes")),
            ),
            2 | 3 => (ST_H, 2, i32::from(u16::from_le_bytes([rest[0], rest[1]]))),
            _ => (ST_B, 1, i32::from(rest[0])),
        };
        stores.push(insn(code, 2, 0, at as i16, imm));
        at += width;
    }
    let mut insns = vec![
        insn(MOV64_X, 6, 1, 0, 0),
        insn(LDX_W, 2, 1, 0, 0), // xdp_md.data
        insn(LDX_W, 3, 1, 4, 0), // xdp_md.data_end
        insn(MOV64_X, 4, 2, 0, 0),
        insn(ADD64_K, 4, 0, 0, frame.len() as i32),
        // Past the stores and the five slots of the tail call, to the abort.
        insn(JGT_X, 4, 3, stores.len() as i16 + 5, 0),
    ];
    insns.extend(stores);
    insns.extend([
        insn(MOV64_X, 1, 6, 0, 0),
        insn(LD_IMM64, 2, PSEUDO_MAP_FD, 0, slots_fd),
        0, // the upper half of the 64-bit immediate
        insn(MOV64_K, 3, 0, 0, 0),
        insn(CALL, 0, 0, 0, TAIL_CALL),
        insn(MOV64_K, 0, 0, 0, 0), // XDP_ABORTED
        insn(EXIT, 0, 0, 0, 0),
    ]);
    insns
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
