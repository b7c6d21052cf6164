//! The bpf(2) commands aya 0.16 does not expose as needed: an iterator link to open more than
//! one BPF iterator from (aya's `IterLink` gives no fd, and `into_file` consumes it; the kernel
//! binds each iterator to the opener's network namespace), and many map entries in one call
//! (read or written).
#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "bpf(2)'s attribute fields are u32 by its ABI: file descriptors are non-negative, \
              a batch chunk holds at most 16384 entries, the attribute's size is a constant"
)]

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
// enum bpf_cmd: BPF_LINK_CREATE is 28 (29 is BPF_LINK_UPDATE, 30 BPF_LINK_GET_FD_BY_ID).
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_attach_type`.
const BPF_TRACE_ITER: u32 = 28;

/// `union bpf_attr` is 144 bytes on 6.x kernels; the kernel requires unused bytes to be zero.
#[repr(C, align(8))]
struct BpfAttr([u8; 144]);

impl BpfAttr {
    fn zeroed() -> Self {
        Self([0; 144])
    }

    fn put_u32(&mut self, offset: usize, value: u32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    }

    fn put_u64(&mut self, offset: usize, value: u64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a zero-initialised bpf_attr of the size we pass.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<BpfAttr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Attaches a loaded iterator program (`iter/...`) as a link, from which iterators are opened.
pub fn iter_link_create(program: impl AsFd) -> io::Result<OwnedFd> {
    let mut attr = BpfAttr::zeroed();
    // struct { __u32 prog_fd; __u32 target_fd; __u32 attach_type; __u32 flags; ... }
    attr.put_u32(0, program.as_fd().as_raw_fd() as u32);
    attr.put_u32(8, BPF_TRACE_ITER);
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Opens a new iterator on an iterator link; reading it runs the program. Socket iterators walk
/// the network namespace of the calling thread at this call.
pub fn iter_create(link: impl AsFd) -> io::Result<OwnedFd> {
    let mut attr = BpfAttr::zeroed();
    // struct { __u32 link_fd; __u32 flags; }
    attr.put_u32(0, link.as_fd().as_raw_fd() as u32);
    let fd = bpf(BPF_ITER_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Entries per `BPF_MAP_UPDATE_BATCH` call: chunks bound the kernel's temporary copy of keys
/// and values.
const CHUNK: usize = 16_384;

/// A batch update that stopped at entry `index`.
#[derive(Debug)]
pub struct BatchError {
    pub index: usize,
    pub error: io::Error,
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "entry {}: {}", self.index, self.error)
    }
}

impl std::error::Error for BatchError {}

/// Writes `keys[i] -> values[i]` with one `BPF_MAP_UPDATE_BATCH` call per chunk, instead of one
/// call per entry. For a per-CPU map, `values` holds one value per CPU for each key, in order.
/// On failure, says which entry was not written (those before it were).
pub fn update_batch<K: bytemuck::Pod, V: bytemuck::Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchError> {
    if keys.is_empty() {
        return Ok(());
    }
    let per_key = values.len() / keys.len();
    if per_key == 0 || per_key * keys.len() != values.len() {
        let error = io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} values for {} keys", values.len(), keys.len()),
        );
        return Err(BatchError { index: 0, error });
    }
    for (chunk, (keys, values)) in keys
        .chunks(CHUNK)
        .zip(values.chunks(CHUNK * per_key))
        .enumerate()
    {
        let mut attr = BpfAttr::zeroed();
        // batch: { u64 in_batch, out_batch, keys, values; u32 count, map_fd; u64 elem_flags, flags }
        attr.put_u64(16, keys.as_ptr() as u64);
        attr.put_u64(24, values.as_ptr() as u64);
        attr.put_u32(32, keys.len() as u32);
        attr.put_u32(36, map.as_raw_fd() as u32);
        let result = bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
        // The kernel reports how many it wrote, also on error.
        let done = u32::from_ne_bytes(attr.0[32..36].try_into().expect("4 bytes")) as usize;
        let index = chunk * CHUNK + done;
        if let Err(error) = result {
            return Err(BatchError { index, error });
        }
        if done != keys.len() {
            let error = io::Error::other("the kernel stopped without an error");
            return Err(BatchError { index, error });
        }
    }
    Ok(())
}

/// Reads every entry of a hash map with one `BPF_MAP_LOOKUP_BATCH` call per chunk, instead of
/// two calls (next key, lookup) per entry. Not for per-CPU maps (their values are per CPU).
/// Entries written or removed meanwhile may or may not be seen, as with any walk of the map.
pub fn lookup_batch<K: bytemuck::Pod, V: bytemuck::Pod>(
    map: BorrowedFd<'_>,
) -> io::Result<Vec<(K, V)>> {
    let mut keys = vec![<K as bytemuck::Zeroable>::zeroed(); CHUNK];
    let mut values = vec![<V as bytemuck::Zeroable>::zeroed(); CHUNK];
    let mut entries = Vec::new();
    // The kernel's position in the map (a bucket index for hash maps), from one call to the
    // next; none before the first.
    let mut position = [0u64; 1];
    let mut next = [0u64; 1];
    let mut first = true;
    loop {
        let mut attr = BpfAttr::zeroed();
        // batch: { u64 in_batch, out_batch, keys, values; u32 count, map_fd; u64 elem_flags, flags }
        if !first {
            attr.put_u64(0, position.as_ptr() as u64);
        }
        attr.put_u64(8, next.as_mut_ptr() as u64);
        attr.put_u64(16, keys.as_mut_ptr() as u64);
        attr.put_u64(24, values.as_mut_ptr() as u64);
        attr.put_u32(32, CHUNK as u32);
        attr.put_u32(36, map.as_raw_fd() as u32);
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        // The kernel reports how many it read, also when it ends with ENOENT.
        let done = u32::from_ne_bytes(attr.0[32..36].try_into().expect("4 bytes")) as usize;
        let done = done.min(CHUNK);
        entries.extend(
            keys[..done]
                .iter()
                .copied()
                .zip(values[..done].iter().copied()),
        );
        match result {
            Ok(_) => {}
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(entries),
            Err(err) => return Err(err),
        }
        position = next;
        first = false;
    }
}
