//! The `iter/udp` program that destroys sockets: its kfunc call patched in before the object
//! loads, the program loaded and linked, and one run of it in one network namespace.

use std::{
    fs::File,
    io::Read as _,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Btf, Ebpf,
    maps::{HashMap, MapData},
    programs::Iter,
};
use aya_obj::btf::BtfKind;
use proxy_common::{
    SOCK_DESTROY_CALL_MARKER, SockTermKey, SockTermKey6, SockTermRecord6, map_names, program_names,
};

use crate::datapath::{sock_btf, sys};

/// The kfunc the program calls (Linux 6.5+).
const SOCK_DESTROY_KFUNC: &str = "bpf_sock_destroy";
/// `BPF_JMP | BPF_CALL`.
const CALL_OPCODE: u8 = 0x85;
/// `src_reg` of a call to a kernel function by BTF id (`BPF_PSEUDO_KFUNC_CALL`).
const PSEUDO_KFUNC_CALL: u8 = 2;

/// The eBPF object with the kfunc placeholder rewritten, in 8-byte-aligned memory as the ELF
/// parser wants it.
pub struct PatchedObject {
    words: Vec<u64>,
    len: usize,
    /// The kernel's BTF, which loading the program needs again; or why socket termination
    /// cannot be loaded from this object.
    btf: Result<Btf, String>,
}

impl PatchedObject {
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }
}

/// Rewrites each `call SOCK_DESTROY_CALL_MARKER` (a helper call with an unused number) into a
/// call of `bpf_sock_destroy` by its id in the running kernel's BTF. aya 0.16 does this for
/// externs listed in the object's `.ksyms` BTF, but a Rust object has no such entry: rustc
/// gives extern declarations no debug info, so LLVM writes no BTF for them (and bpf-linker 0.13
/// adds none); aya then refuses the object (`extern bpf_sock_destroy not found`).
pub fn patch_object(object: &[u8]) -> PatchedObject {
    let mut words = vec![0u64; object.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..object.len()].copy_from_slice(object);
    let (btf, btf_id) = match kfunc_btf_id(SOCK_DESTROY_KFUNC) {
        Ok(found) => found,
        Err(err) => {
            return PatchedObject {
                words,
                len: object.len(),
                btf: Err(format!("{err:#}")),
            };
        }
    };
    let placeholder = call_insn(0, SOCK_DESTROY_CALL_MARKER);
    let replacement = call_insn(PSEUDO_KFUNC_CALL, btf_id);
    let mut found = 0;
    // Instructions are 8-byte aligned in their section, and sections in the file.
    for word in &mut words {
        if *word == placeholder {
            *word = replacement;
            found += 1;
        }
    }
    PatchedObject {
        words,
        len: object.len(),
        btf: if found == 0 {
            Err("the eBPF object has no bpf_sock_destroy call to patch".into())
        } else {
            Ok(btf)
        },
    }
}

/// One BPF call instruction as the little-endian word it is stored as.
fn call_insn(src_reg: u8, imm: u32) -> u64 {
    let mut insn = [0u8; 8];
    insn[0] = CALL_OPCODE;
    insn[1] = src_reg << 4;
    insn[4..].copy_from_slice(&imm.to_le_bytes());
    u64::from_le_bytes(insn)
}

fn kfunc_btf_id(name: &str) -> Result<(Btf, u32)> {
    let btf = Btf::from_sys_fs().context("read the kernel's BTF (/sys/kernel/btf/vmlinux)")?;
    let id = btf
        .id_by_type_name_kind(name, BtfKind::Func)
        .with_context(|| format!("the kernel has no {name} kfunc (needs Linux 6.5+)"))?;
    Ok((btf, id))
}

/// The loaded program, linked as an iterator, and the maps of backends it acts on (one per
/// family).
pub struct SockTermProgram {
    link: OwnedFd,
    pub targets: HashMap<MapData, SockTermKey, u8>,
    pub targets6: HashMap<MapData, SockTermKey6, u8>,
}

impl SockTermProgram {
    /// Loads and links the program from an object made by [`patch_object`].
    pub fn load(ebpf: &mut Ebpf, object: &PatchedObject) -> Result<Self> {
        let btf = object
            .btf
            .as_ref()
            .map_err(|why| anyhow::anyhow!("{why}"))?;
        // The program reads `struct sock_common` at fixed offsets: refuse to run it on a kernel
        // whose layout differs, where it would read other fields.
        sock_btf::check_sock_common_offsets()?;
        let name = program_names::SOCK_TERM_UDP;
        let program: &mut Iter = ebpf
            .program_mut(name)
            .with_context(|| format!("the eBPF object has no program {name}"))?
            .try_into()?;
        program
            .load("udp", btf)
            .with_context(|| format!("load program {name}"))?;
        let link = sys::iter_link_create(program.fd()?.as_fd())
            .with_context(|| format!("link program {name} as a UDP socket iterator"))?;
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
        };
        let targets = take(map_names::SOCK_TERM)?.try_into()?;
        let targets6 = take(map_names::SOCK_TERM6)?.try_into()?;
        Ok(Self {
            link,
            targets,
            targets6,
        })
    }

    /// Runs the program over the UDP sockets of network namespace `netns` (a `/proc/PID/ns/net`
    /// file); returns the sockets it destroyed. Runs on a thread of its own, which enters the
    /// namespace: the kernel binds a socket iterator to the opener's namespace. Sockets of both
    /// families are reported as IPv6 records (IPv4 addresses mapped, `::ffff:a.b.c.d`).
    pub fn run_in(&self, netns: &File) -> Result<Vec<SockTermRecord6>> {
        let link = self.link.as_fd();
        std::thread::scope(|scope| {
            scope
                .spawn(|| run_on_this_thread(link, netns.as_fd()))
                .join()
                .unwrap_or_else(|_| bail!("the socket iterator thread panicked"))
        })
    }
}

/// Enters `netns` and reads one iterator to its end. The thread must not be reused.
fn run_on_this_thread(link: BorrowedFd<'_>, netns: BorrowedFd<'_>) -> Result<Vec<SockTermRecord6>> {
    // SAFETY: setns only reads the fd; CLONE_NEWNET moves this thread alone.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("enter the network namespace");
    }
    let iter = sys::iter_create(link).context("open the UDP socket iterator")?;
    let mut out = Vec::new();
    File::from(iter)
        .read_to_end(&mut out)
        .context("run the UDP socket iterator")?;
    let (records, _) = out.as_chunks::<{ size_of::<SockTermRecord6>() }>();
    Ok(records
        .iter()
        .map(|record| bytemuck::pod_read_unaligned(record))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EBPF_OBJECT;

    fn count(object: &[u8], insn: u64) -> usize {
        let (words, _) = object.as_chunks::<8>();
        words
            .iter()
            .filter(|word| u64::from_le_bytes(**word) == insn)
            .count()
    }

    #[test]
    fn call_instructions_are_encoded_as_the_kernel_reads_them() {
        // code 0x85, dst_reg 0 / src_reg 2 in one byte, off 0, imm little-endian.
        assert_eq!(
            call_insn(PSEUDO_KFUNC_CALL, 0x0102_0304).to_le_bytes(),
            [0x85, 0x20, 0, 0, 0x04, 0x03, 0x02, 0x01]
        );
    }

    #[test]
    fn the_placeholder_becomes_a_call_of_the_kernels_bpf_sock_destroy() {
        let placeholder = call_insn(0, SOCK_DESTROY_CALL_MARKER);
        // One per inlined call site: IPv4 sockets, IPv6 ones, IPv6 ones to mapped addresses.
        let calls = count(EBPF_OBJECT, placeholder);
        assert_eq!(calls, 3, "the placeholders in the object");
        let patched = patch_object(EBPF_OBJECT);
        let btf = patched
            .btf
            .as_ref()
            .expect("this kernel has bpf_sock_destroy");
        let id = btf
            .id_by_type_name_kind(SOCK_DESTROY_KFUNC, BtfKind::Func)
            .expect("found once, found again");
        let bytes = patched.bytes();
        assert_eq!(bytes.len(), EBPF_OBJECT.len());
        assert_eq!(count(bytes, placeholder), 0);
        assert_eq!(count(bytes, call_insn(PSEUDO_KFUNC_CALL, id)), calls);
        // Nothing else changed: at most the source register and the four bytes of the
        // immediate of each call.
        let differing = bytes
            .iter()
            .zip(EBPF_OBJECT)
            .filter(|(a, b)| a != b)
            .count();
        assert!(differing <= 5 * calls, "{differing} bytes changed");
    }
}
