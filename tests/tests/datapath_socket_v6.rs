//! The IPv6 socket hooks on their own: the eBPF object's eight `sock_addr` programs attached to
//! one node's cgroup of a test cluster, IPv6 frontends and backends written straight into
//! `SVC6_V1` / `BACKEND6_V1` / `NODE_ADDR6_V1`, and real sockets of a process in that cgroup
//! (`netns-echo` in a pod) against IPv6 echo servers in the same pod. The addresses (`fd00::/8`)
//! exist only inside the pod's namespace.

use std::{
    collections::BTreeSet,
    fs::File,
    io::{ErrorKind, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData},
    programs::{CgroupAttachMode, CgroupSockAddr},
};
use proxy_common::{
    Addr6, Backend6, IPPROTO_TCP, IPPROTO_UDP, NodeAddr, SVC_F_NODEPORT, ServiceKey6, ServiceValue,
    map_names, net::ip6_to_net, program_names,
};
use proxy_tests::{Cluster, Place, Proto, Reply, netns::Netns, workload::REQUEST_TIMEOUT};

const SERVICE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x10);
const EMPTY: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x20);
/// The pod's own addresses: two backends, and one the datapath counts as a node address.
const BACKEND_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 1, 0, 0, 0, 0, 0x10);
const BACKEND_B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 1, 0, 0, 0, 0, 0x11);
const NODE_ADDR: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 1, 0, 0, 0, 0, 0x1);
const NODE_PORT: u16 = 30080;
const TCP_TARGET: u16 = 8080;
const UDP_TARGET: u16 = 8053;
const REQUESTS: usize = 30;

const SOCKET_PROGRAMS: [&str; 8] = [
    program_names::CONNECT4,
    program_names::SENDMSG4,
    program_names::RECVMSG4,
    program_names::GETPEERNAME4,
    program_names::CONNECT6,
    program_names::SENDMSG6,
    program_names::RECVMSG6,
    program_names::GETPEERNAME6,
];

/// The object loaded with small maps and its socket programs attached to `cgroup`; dropping
/// it detaches them (the links are not pinned).
fn attach_socket_programs(cgroup: &std::path::Path) -> Ebpf {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(map_names::CONNTRACK, 1024)
        .map_max_entries(map_names::CONNTRACK6, 1024)
        .load(proxy_user::EBPF_OBJECT)
        .expect("load the eBPF object");
    let cgroup_file = File::open(cgroup).expect("open the node's cgroup");
    for name in SOCKET_PROGRAMS {
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("no program {name}"))
            .try_into()
            .expect("a cgroup sock_addr program");
        program
            .load()
            .unwrap_or_else(|err| panic!("verifier rejected {name}: {err:?}"));
        program
            .attach(&cgroup_file, CgroupAttachMode::Single)
            .unwrap_or_else(|err| panic!("attach {name}: {err:?}"));
    }
    ebpf
}

fn map<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> HashMap<&'a mut MapData, K, V> {
    HashMap::try_from(
        ebpf.map_mut(name)
            .unwrap_or_else(|| panic!("no map {name}")),
    )
    .unwrap_or_else(|err| panic!("map {name}: {err:?}"))
}

fn addr(ip: Ipv6Addr) -> Addr6 {
    ip6_to_net(ip)
}

/// Writes a frontend (`addr == None`: a NodePort) with the given backend ids, slots first.
fn add_frontend(
    ebpf: &mut Ebpf,
    frontend: Option<Ipv6Addr>,
    port: u16,
    proto: u8,
    service_id: u32,
    backends: &[u32],
) {
    let mut services = map::<ServiceKey6, ServiceValue>(ebpf, map_names::SERVICES6);
    let key = |slot: u16| ServiceKey6 {
        addr: frontend.map(addr).unwrap_or_default(),
        port: port.to_be(),
        slot,
        proto,
        scope: 0,
        _pad: 0,
    };
    let flags = if frontend.is_none() {
        SVC_F_NODEPORT
    } else {
        0
    };
    let count = u16::try_from(backends.len()).expect("a few backends");
    for (slot, &backend_id) in (1..).zip(backends) {
        let value = ServiceValue {
            backend_id,
            count,
            flags,
            service_id,
            affinity_timeout: 0,
        };
        services
            .insert(&key(slot), &value, 0)
            .expect("write a slot");
    }
    let head = ServiceValue {
        backend_id: 0,
        count,
        flags,
        service_id,
        affinity_timeout: 0,
    };
    services
        .insert(&key(0), &head, 0)
        .expect("write a frontend");
}

/// Echo servers in a namespace, answering like `netns-echo serve` (`NAME PEER LOCAL`); stopped
/// and joined on drop.
struct EchoServers {
    stop: Arc<AtomicBool>,
    fds: Vec<i32>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServers {
    fn start(netns: &Netns, servers: &[(&'static str, SocketAddr)]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut fds = Vec::new();
        let mut threads = Vec::new();
        for &(name, addr) in servers {
            let (listener, socket) = netns
                .run_in(|| {
                    let listener = TcpListener::bind(addr)?;
                    let socket = UdpSocket::bind(SocketAddr::new(addr.ip(), UDP_TARGET))?;
                    Ok::<_, std::io::Error>((listener, socket))
                })
                .expect("enter the pod's namespace")
                .unwrap_or_else(|err| panic!("bind {addr}: {err}"));
            fds.extend([listener.as_raw_fd(), socket.as_raw_fd()]);
            let stopped = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopped.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(mut stream) = stream else { continue };
                    let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
                        continue;
                    };
                    let _ = stream.write_all(format!("{name} {peer} {local}\n").as_bytes());
                }
            }));
            let stopped = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                let local = socket.local_addr().expect("bound");
                let mut buf = [0u8; 512];
                while !stopped.load(Ordering::Relaxed) {
                    match socket.recv_from(&mut buf) {
                        Ok((_, peer)) => {
                            let answer = format!("{name} {peer} {local}\n");
                            let _ = socket.send_to(answer.as_bytes(), peer);
                        }
                        Err(err) if err.kind() == ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
            }));
        }
        Self { stop, fds, threads }
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for &fd in &self.fds {
            // SAFETY: the fds belong to sockets the threads own until they are joined below;
            // shutdown wakes a blocked accept or recv (which then ends its loop) and closes
            // nothing.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn requests(
    cluster: &Cluster,
    proto: Proto,
    ip: Ipv6Addr,
    port: u16,
    count: usize,
) -> Vec<Result<Reply, String>> {
    cluster.request_detailed(
        Place::Pod("pod-1a"),
        proto,
        ip,
        port,
        count,
        REQUEST_TIMEOUT,
    )
}

#[test]
fn ipv6_frontends_are_translated_in_the_socket_and_shown_back() {
    let cluster = Cluster::new();
    let pod = cluster.pod("pod-1a");
    for ip in [BACKEND_A, BACKEND_B, NODE_ADDR] {
        pod.netns
            .ip(&[
                "-6",
                "addr",
                "add",
                &format!("{ip}/128"),
                "dev",
                "lo",
                "nodad",
            ])
            .expect("add an IPv6 address in the pod");
    }
    let _servers = EchoServers::start(
        &pod.netns,
        &[
            ("v6-a", SocketAddr::new(BACKEND_A.into(), TCP_TARGET)),
            ("v6-b", SocketAddr::new(BACKEND_B.into(), TCP_TARGET)),
        ],
    );
    // Declared after the servers and the cluster: dropped, so detached, first.
    let mut ebpf = attach_socket_programs(&cluster.node("node1").cgroup);

    let mut backends = map::<u32, Backend6>(&mut ebpf, map_names::BACKENDS6);
    for (id, ip, port) in [
        (1, BACKEND_A, TCP_TARGET),
        (2, BACKEND_B, TCP_TARGET),
        (3, BACKEND_A, UDP_TARGET),
        (4, BACKEND_B, UDP_TARGET),
    ] {
        let backend = Backend6 {
            addr: addr(ip),
            port: port.to_be(),
            flags: 0,
            _pad: 0,
        };
        backends.insert(&id, &backend, 0).expect("write a backend");
    }
    let mut node_addrs = map::<Addr6, NodeAddr>(&mut ebpf, map_names::NODE_ADDRS6);
    node_addrs
        .insert(&addr(NODE_ADDR), &NodeAddr { flags: 0 }, 0)
        .expect("write a node address");
    add_frontend(&mut ebpf, Some(SERVICE), 80, IPPROTO_TCP, 1, &[1, 2]);
    add_frontend(&mut ebpf, Some(SERVICE), 53, IPPROTO_UDP, 2, &[3, 4]);
    add_frontend(&mut ebpf, None, NODE_PORT, IPPROTO_TCP, 3, &[1, 2]);
    add_frontend(&mut ebpf, Some(EMPTY), 80, IPPROTO_TCP, 4, &[]);
    add_frontend(&mut ebpf, Some(EMPTY), 53, IPPROTO_UDP, 5, &[]);

    let backend_ips: BTreeSet<IpAddr> = [BACKEND_A.into(), BACKEND_B.into()].into();
    let cases = [
        // connect6 + getpeername6.
        (Proto::Tcp, SERVICE, 80, TCP_TARGET),
        // sendmsg6 + recvmsg6.
        (Proto::Udp, SERVICE, 53, UDP_TARGET),
        // connect6 + getpeername6 on a datagram socket.
        (Proto::UdpConnected, SERVICE, 53, UDP_TARGET),
        // NodePorts on ::1 and on a node address.
        (Proto::Tcp, Ipv6Addr::LOCALHOST, NODE_PORT, TCP_TARGET),
        (Proto::Tcp, NODE_ADDR, NODE_PORT, TCP_TARGET),
    ];
    for (proto, ip, port, target) in cases {
        let what = format!("{proto} [{ip}]:{port}");
        let mut answered = BTreeSet::new();
        for reply in requests(&cluster, proto, ip, port, REQUESTS) {
            let reply = reply.unwrap_or_else(|err| panic!("{what}: {err}"));
            answered.insert(reply.name.clone());
            // The socket went to a backend: the server's own address and port.
            assert!(backend_ips.contains(&reply.local.ip()), "{what}: {reply:?}");
            assert_eq!(reply.local.port(), target, "{what}: {reply:?}");
            // No NAT: the backend sees the client's own address (here, in the same pod, the
            // backend address it connected to is also its source).
            assert_eq!(reply.peer.ip(), reply.local.ip(), "{what}: {reply:?}");
            // The application sees the address it asked for.
            assert_eq!(
                reply.remote,
                SocketAddr::new(ip.into(), port),
                "{what}: {reply:?}"
            );
        }
        let both: BTreeSet<String> = ["v6-a".to_owned(), "v6-b".to_owned()].into();
        assert_eq!(answered, both, "{what}: both backends answer");
    }

    // Not a frontend: untouched.
    for reply in requests(&cluster, Proto::Tcp, BACKEND_B, TCP_TARGET, 3) {
        let reply = reply.expect("straight to a backend");
        assert_eq!(reply.name, "v6-b", "{reply:?}");
        assert_eq!(
            reply.remote,
            SocketAddr::new(BACKEND_B.into(), TCP_TARGET),
            "{reply:?}"
        );
    }

    // No endpoints: refused at once, by connect (TCP, connected UDP) or sendto.
    for (proto, port) in [
        (Proto::Tcp, 80),
        (Proto::UdpConnected, 53),
        (Proto::Udp, 53),
    ] {
        for result in requests(&cluster, proto, EMPTY, port, 3) {
            let err = result.expect_err("no endpoints");
            assert!(
                err.starts_with("refused"),
                "{proto} [{EMPTY}]:{port}: {err}"
            );
        }
    }
}
