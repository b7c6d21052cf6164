//! A raw packet socket on one interface, to see the frames that really leave a program and to
//! send frames that really arrive at one.

use std::{
    io,
    mem::{size_of, size_of_val},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

/// Receives every frame arriving on one interface, and sends frames out of it (closed on drop).
pub struct Capture {
    fd: OwnedFd,
}

impl Capture {
    /// Opens an `AF_PACKET` socket bound to `ifindex` in the calling thread's namespace; each
    /// receive gives up after `timeout`.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "ETH_P_ALL and AF_PACKET are 16-bit numbers in a c_int; a sockaddr_ll is a few \
                  dozen bytes"
    )]
    pub fn open(ifindex: u32, timeout: Duration) -> io::Result<Self> {
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(protocol),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; all zeroes is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = i32::try_from(ifindex).expect("ifindex fits i32");
        // SAFETY: `addr` is a valid sockaddr_ll of the length passed.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if bound != 0 {
            return Err(io::Error::last_os_error());
        }
        let timeval = libc::timeval {
            tv_sec: i64::try_from(timeout.as_secs()).expect("short timeout"),
            tv_usec: i64::from(timeout.subsec_micros()),
        };
        set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeval)?;
        // What this socket sends is not a frame that arrived.
        set_option(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1_i32)?;
        Ok(Self { fd })
    }

    /// Sends `frame` out of the interface (on a veth, it arrives at the peer).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is readable for its whole length.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if usize::try_from(sent).ok() == Some(frame.len()) {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The next frame for which `wanted` holds, or `None` when none arrives within the timeout.
    pub fn next(&self, wanted: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: `buf` is writable for its whole length.
            let len =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(len) = usize::try_from(len) else {
                let err = io::Error::last_os_error();
                assert!(
                    matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ),
                    "capture failed: {err}"
                );
                if err.kind() == io::ErrorKind::WouldBlock {
                    return None;
                }
                continue;
            };
            if wanted(&buf[..len]) {
                return Some(buf[..len].to_vec());
            }
        }
    }
}

/// setsockopt(2) of a plain-data `value`.
#[expect(
    clippy::cast_possible_truncation,
    reason = "socket option values are a few bytes"
)]
fn set_option<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a valid option value of the length passed.
    let set = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            size_of_val(value) as u32,
        )
    };
    if set == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
