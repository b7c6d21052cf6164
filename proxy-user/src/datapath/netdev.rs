//! What the daemon asks of the node's network devices: addresses and driver names.

use std::{
    ffi::CStr,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// Every IPv4 and IPv6 address of every interface in this network namespace, with its
/// interface name.
pub fn ip_addresses() -> io::Result<Vec<(String, IpAddr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: cursor walks the list getifaddrs returned, which stays valid until freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr whose family tells its real type.
        let addr: IpAddr = match i32::from(unsafe { (*entry.ifa_addr).sa_family }) {
            libc::AF_INET => {
                // SAFETY: an AF_INET ifa_addr is a sockaddr_in, allocated by libc with its
                // alignment.
                let sin = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in>() };
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()).into()
            }
            libc::AF_INET6 => {
                // SAFETY: an AF_INET6 ifa_addr is a sockaddr_in6, allocated by libc with its
                // alignment.
                let sin6 = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in6>() };
                Ipv6Addr::from(sin6.sin6_addr.s6_addr).into()
            }
            _ => continue,
        };
        // SAFETY: ifa_name is a NUL-terminated interface name.
        let name = unsafe { CStr::from_ptr(entry.ifa_name) }
            .to_string_lossy()
            .into_owned();
        found.push((name, addr));
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x3;

#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// The kernel driver behind an interface (`veth`, `mlx5_core`, ...), as `ethtool -i` shows.
pub fn driver_name(iface: &str) -> io::Result<String> {
    // SAFETY: a plain socket(2) call; the fd is closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both structs are plain C data for which all-zero is valid.
    let mut info: EthtoolDrvinfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req
        .ifr_name
        .iter_mut()
        .zip(iface.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src.cast_signed();
    }
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: SIOCETHTOOL with ETHTOOL_GDRVINFO writes into `info`, which outlives the call.
    let ret = unsafe { libc::ioctl(sock, SIOCETHTOOL, &mut req) };
    let err = io::Error::last_os_error();
    // SAFETY: sock is ours.
    unsafe { libc::close(sock) };
    if ret < 0 {
        return Err(err);
    }
    let end = info
        .driver
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(info.driver.len());
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// The names of every interface in this network namespace (`if_nameindex`, which asks the
/// kernel over netlink: right in any namespace, unlike a /sys mounted for another one).
pub fn interface_names() -> io::Result<Vec<String>> {
    // SAFETY: if_nameindex returns a list we free below, or null with errno set.
    let head = unsafe { libc::if_nameindex() };
    if head.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut names = Vec::new();
    let mut cursor = head;
    // SAFETY: the list ends with an entry whose index is 0; every name before it is a valid
    // NUL-terminated string until the list is freed.
    unsafe {
        while (*cursor).if_index != 0 {
            names.push(
                CStr::from_ptr((*cursor).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            cursor = cursor.add(1);
        }
        libc::if_freenameindex(head);
    }
    Ok(names)
}

/// Whether an interface of this name exists in this network namespace.
pub fn exists(iface: &str) -> bool {
    std::ffi::CString::new(iface)
        // SAFETY: the name is a valid NUL-terminated string for the call.
        .is_ok_and(|name| unsafe { libc::if_nametoindex(name.as_ptr()) } != 0)
}
