//! `NetlinkWatch`: wakes when an address is added to or removed from an interface of this
//! network namespace (rtnetlink's `RTMGRP_IPV4_IFADDR` and `RTMGRP_IPV6_IFADDR` groups), so the
//! NodePort addresses follow the node's; or when an interface comes or goes (`RTMGRP_LINK`),
//! so the pod-side path follows the pods. The messages are only a signal: the addresses or
//! interfaces are read again, so nothing of the netlink format is parsed here, which is why a
//! raw socket is enough and no netlink library is used.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use tokio::io::{Interest, unix::AsyncFd};

pub struct NetlinkWatch {
    socket: AsyncFd<OwnedFd>,
}

impl NetlinkWatch {
    /// Subscribes to address changes (needs a Tokio runtime).
    pub fn addresses() -> io::Result<Self> {
        Self::open(libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR)
    }

    /// Subscribes to interfaces appearing, going and changing (needs a Tokio runtime).
    pub fn links() -> io::Result<Self> {
        Self::open(libc::RTMGRP_LINK)
    }

    fn open(groups: i32) -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new socket nobody else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zero is a valid start.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = u16::try_from(libc::AF_NETLINK).expect("small");
        addr.nl_groups = u32::try_from(groups).expect("group bits");
        let len = u32::try_from(std::mem::size_of::<libc::sockaddr_nl>()).expect("small");
        // SAFETY: addr is a valid sockaddr_nl of `len` bytes.
        let bound = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                len,
            )
        };
        if bound != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the socket is owned by the AsyncFd and neither replaced nor closed while it
        // is registered.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE)? };
        Ok(Self { socket })
    }

    /// Waits for the next change; reads every message queued (a burst counts once).
    pub async fn changed(&mut self) -> io::Result<()> {
        loop {
            let mut guard = self.socket.readable().await?;
            let mut buf = [0u8; 8192];
            let mut got = false;
            loop {
                let fd = self.socket.get_ref().as_raw_fd();
                // SAFETY: buf is writable for its length.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    got = true;
                    continue;
                }
                if n == 0 {
                    break;
                }
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock => break,
                    // Messages were lost: something changed all the same.
                    _ if err.raw_os_error() == Some(libc::ENOBUFS) => {
                        got = true;
                    }
                    _ => return Err(err),
                }
            }
            guard.clear_ready();
            if got {
                return Ok(());
            }
        }
    }
}
