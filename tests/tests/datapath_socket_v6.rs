//! The IPv6 socket programs on their own, before any daemon programs IPv6 Services: the eBPF
//! object's eight `sock_addr` programs attached to both nodes' cgroups of the test cluster, and
//! its `iter/udp` program linked, with IPv6 frontends written straight into `SVC6_V1`,
//! `BACKEND6_V1` and `NODE_ADDR6_V1`; real sockets of processes in those cgroups (`netns-echo`
//! in pods and on a node) against the pods' IPv6 echo servers.

use std::{
    collections::BTreeSet,
    fs::File,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData},
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink},
};
use proxy_common::{
    Addr6, Backend6, IPPROTO_TCP, IPPROTO_UDP, NodeAddr, SVC_F_NODEPORT, ServiceKey6, ServiceValue,
    SockTermKey6, map_names,
    net::{ip6_from_net, ip6_to_net},
    program_names,
};
use proxy_tests::{
    Cluster, Place, Proto, Reply,
    scenario::{ALL_PODS, SPREAD_REQUESTS, SYNC_TIMEOUT, pods},
    workload::REQUEST_TIMEOUT,
};
use proxy_user::datapath::udp_sockets::{SockTermProgram, patch_object};

const SERVICE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x10);
const EMPTY: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x20);
const NODE_PORT: u16 = 30080;
/// The pods' echo servers (`Cluster::start_pods`).
const TCP_TARGET: u16 = 8080;
const UDP_TARGET: u16 = 8053;
/// ECONNABORTED, what `bpf_sock_destroy` reports to the socket's owner.
const ECONNABORTED: &str = "(os error 103)";

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

/// The object as the daemon loads it, with small maps, its socket programs attached to each of
/// `cgroups` (links kept in the returned list: dropping them detaches) and the socket
/// terminator loaded.
fn load(cgroups: &[&Path]) -> (Ebpf, Vec<FdLink>, SockTermProgram) {
    let object = patch_object(proxy_user::EBPF_OBJECT);
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(map_names::CONNTRACK, 1024)
        .map_max_entries(map_names::CONNTRACK_ESTABLISHED, 1024)
        .map_max_entries(map_names::CONNTRACK6, 1024)
        .map_max_entries(map_names::CONNTRACK_ESTABLISHED6, 1024)
        .load(object.bytes())
        .expect("load the eBPF object");
    let mut links = Vec::new();
    for name in SOCKET_PROGRAMS {
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("no program {name}"))
            .try_into()
            .expect("a cgroup sock_addr program");
        program
            .load()
            .unwrap_or_else(|err| panic!("verifier rejected {name}: {err:?}"));
        for cgroup in cgroups {
            let file = File::open(cgroup).expect("open a node's cgroup");
            let id = program
                .attach(&file, CgroupAttachMode::Single)
                .unwrap_or_else(|err| panic!("attach {name}: {err:?}"));
            let link = program.take_link(id).expect("the link just made");
            links.push(link.try_into().expect("a BPF link"));
        }
    }
    let terminator = SockTermProgram::load(&mut ebpf, &object).expect("load sock_term_udp");
    (ebpf, links, terminator)
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

/// Writes a frontend (`frontend == None`: a NodePort) with the given backend ids, slots first.
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
        addr: frontend.map(ip6_to_net).unwrap_or_default(),
        port: port.to_be(),
        slot,
        proto,
        scope: 0,
        _pad: 0,
    };
    let value = |backend_id: u32| ServiceValue {
        backend_id,
        count: u16::try_from(backends.len()).expect("a few backends"),
        flags: if frontend.is_none() {
            SVC_F_NODEPORT
        } else {
            0
        },
        service_id,
        affinity_timeout: 0,
    };
    for (slot, &backend_id) in (1..).zip(backends) {
        services
            .insert(&key(slot), &value(backend_id), 0)
            .expect("write a slot");
    }
    services
        .insert(&key(0), &value(0), 0)
        .expect("write a frontend");
}

/// Backend ids: TCP ones 1..=3, UDP ones 11..=13, in pod order.
fn add_backends(ebpf: &mut Ebpf, cluster: &Cluster) -> (Vec<u32>, Vec<u32>) {
    let mut backends = map::<u32, Backend6>(ebpf, map_names::BACKENDS6);
    let (mut tcp, mut udp) = (Vec::new(), Vec::new());
    for (i, pod) in (0..).zip(cluster.pods()) {
        for (id, port, ids) in [
            (1 + i, TCP_TARGET, &mut tcp),
            (11 + i, UDP_TARGET, &mut udp),
        ] {
            let backend = Backend6 {
                addr: ip6_to_net(pod.ip6),
                port: port.to_be(),
                flags: 0,
                _pad: 0,
            };
            backends.insert(&id, &backend, 0).expect("write a backend");
            ids.push(id);
        }
    }
    (tcp, udp)
}

fn requests(
    cluster: &Cluster,
    from: Place<'_>,
    proto: Proto,
    ip: Ipv6Addr,
    port: u16,
    count: usize,
) -> Vec<Result<Reply, String>> {
    cluster.request_detailed(from, proto, ip, port, count, REQUEST_TIMEOUT)
}

/// The cluster with pods serving and the programs attached to both nodes' cgroups, with the
/// frontends: `SERVICE` TCP 80 and UDP 53 and a TCP NodePort (on node1's IPv6 address), each
/// to every pod; `EMPTY` TCP 80 and UDP 53 without endpoints.
fn programmed_cluster() -> (Cluster, Ebpf, Vec<FdLink>) {
    let mut cluster = Cluster::new();
    cluster.start_pods();
    let cgroups = [
        cluster.node("node1").cgroup.as_path(),
        cluster.node("node2").cgroup.as_path(),
    ];
    let (mut ebpf, links, _terminator) = load(&cgroups);
    let (tcp, udp) = add_backends(&mut ebpf, &cluster);
    let node1_ip6 = cluster.node("node1").ip6;
    map::<Addr6, NodeAddr>(&mut ebpf, map_names::NODE_ADDRS6)
        .insert(&ip6_to_net(node1_ip6), &NodeAddr { flags: 0 }, 0)
        .expect("write a node address");
    add_frontend(&mut ebpf, Some(SERVICE), 80, IPPROTO_TCP, 1, &tcp);
    add_frontend(&mut ebpf, Some(SERVICE), 53, IPPROTO_UDP, 2, &udp);
    add_frontend(&mut ebpf, None, NODE_PORT, IPPROTO_TCP, 3, &tcp);
    add_frontend(&mut ebpf, Some(EMPTY), 80, IPPROTO_TCP, 4, &[]);
    add_frontend(&mut ebpf, Some(EMPTY), 53, IPPROTO_UDP, 5, &[]);
    (cluster, ebpf, links)
}

#[test]
fn ipv6_frontends_are_translated_in_the_socket_and_shown_back() {
    // Dropped in reverse: the links (detached) first, the cluster last.
    let (cluster, _ebpf, _links) = programmed_cluster();
    let node1_ip6 = cluster.node("node1").ip6;
    let pod_cases = [
        // connect6 + getpeername6.
        (Proto::Tcp, SERVICE, 80, TCP_TARGET),
        // sendmsg6 + recvmsg6.
        (Proto::Udp, SERVICE, 53, UDP_TARGET),
        // connect6 + getpeername6 on a datagram socket.
        (Proto::UdpConnected, SERVICE, 53, UDP_TARGET),
        // A NodePort on a node's IPv6 address.
        (Proto::Tcp, node1_ip6, NODE_PORT, TCP_TARGET),
    ];
    for from in ["pod-1a", "pod-2a"] {
        let client = IpAddr::V6(cluster.pod(from).ip6);
        for (proto, ip, port, target) in pod_cases {
            let what = format!("{proto} [{ip}]:{port} from {from}");
            let mut answered = BTreeSet::new();
            for reply in requests(&cluster, Place::Pod(from), proto, ip, port, SPREAD_REQUESTS) {
                let reply = reply.unwrap_or_else(|err| panic!("{what}: {err}"));
                answered.insert(reply.name.clone());
                // The socket went to the answering pod's IPv6 address and port (a UDP server
                // reports the address it is bound to, `[::]`), without NAT: the pod sees the
                // client pod's own address.
                let pod_ip = IpAddr::V6(cluster.pod(&reply.name).ip6);
                let local_ip = if proto == Proto::Tcp {
                    pod_ip
                } else {
                    Ipv6Addr::UNSPECIFIED.into()
                };
                assert_eq!(
                    reply.local,
                    SocketAddr::new(local_ip, target),
                    "{what}: {reply:?}"
                );
                assert_eq!(reply.peer.ip(), client, "{what}: {reply:?}");
                // The application sees the address it asked for.
                assert_eq!(
                    reply.remote,
                    SocketAddr::new(ip.into(), port),
                    "{what}: {reply:?}"
                );
            }
            assert_eq!(answered, pods(&ALL_PODS), "{what}");
        }
    }

    // A node process: the ClusterIP, and the NodePort on `::1`.
    for (ip, port) in [(SERVICE, 80), (Ipv6Addr::LOCALHOST, NODE_PORT)] {
        let what = format!("TCP [{ip}]:{port} from node1");
        let mut answered = BTreeSet::new();
        for reply in requests(
            &cluster,
            Place::Node("node1"),
            Proto::Tcp,
            ip,
            port,
            SPREAD_REQUESTS,
        ) {
            let reply = reply.unwrap_or_else(|err| panic!("{what}: {err}"));
            answered.insert(reply.name.clone());
            assert_eq!(
                reply.local,
                SocketAddr::new(cluster.pod(&reply.name).ip6.into(), TCP_TARGET),
                "{what}: {reply:?}"
            );
            assert_eq!(
                reply.remote,
                SocketAddr::new(ip.into(), port),
                "{what}: {reply:?}"
            );
        }
        assert_eq!(answered, pods(&ALL_PODS), "{what}");
    }
}

#[test]
fn ipv6_addresses_that_are_no_frontend_pass_and_frontends_without_endpoints_refuse() {
    let (cluster, _ebpf, _links) = programmed_cluster();
    // Not a frontend: untouched.
    let pod_2a = cluster.pod("pod-2a").ip6;
    for reply in requests(&cluster, Place::Pod("pod-1a"), Proto::Tcp, pod_2a, 8080, 3) {
        let reply = reply.expect("straight to a pod");
        assert_eq!(reply.name, "pod-2a", "{reply:?}");
        assert_eq!(
            reply.remote,
            SocketAddr::new(pod_2a.into(), 8080),
            "{reply:?}"
        );
    }

    // No endpoints: refused at once, by connect (TCP, connected UDP) or sendto.
    for (proto, port) in [
        (Proto::Tcp, 80),
        (Proto::UdpConnected, 53),
        (Proto::Udp, 53),
    ] {
        for result in requests(&cluster, Place::Pod("pod-1a"), proto, EMPTY, port, 3) {
            let err = result.expect_err("no endpoints");
            assert!(
                err.starts_with("refused"),
                "{proto} [{EMPTY}]:{port}: {err}"
            );
        }
    }
}

#[test]
fn the_udp_iterator_closes_ipv6_sockets_connected_through_the_service_only() {
    let mut cluster = Cluster::new();
    cluster.start_pods();
    let (mut ebpf, _links, mut terminator) = load(&[cluster.node("node1").cgroup.as_path()]);
    let (_, udp) = add_backends(&mut ebpf, &cluster);
    add_frontend(&mut ebpf, Some(SERVICE), 53, IPPROTO_UDP, 2, &udp);

    let from = Place::Pod("pod-1a");
    let service = SocketAddr::new(SERVICE.into(), 53);
    let mut doomed = cluster.udp_session_to(from, service);
    let first = doomed.ping().expect("the first ping is answered");
    assert_eq!(first.remote, service, "{first:?}");
    let leaving = first.name;
    let leaving_ip = cluster.pod(&leaving).ip6;
    // Straight to the same pod, no service: not the socket LB's to close.
    let direct_addr = SocketAddr::new(leaving_ip.into(), UDP_TARGET);
    let mut direct = cluster.udp_session_to(from, direct_addr);
    assert_eq!(direct.ping().expect("direct ping").name, leaving);

    // What the daemon does for a removed IPv6 backend: its key in SOCK_TERM6_V1, one run in
    // the namespace of the sockets.
    let key = SockTermKey6 {
        addr: ip6_to_net(leaving_ip),
        port: UDP_TARGET.to_be(),
        _pad: 0,
    };
    terminator
        .targets6
        .insert(&key, &1, 0)
        .expect("write SOCK_TERM6_V1");
    let netns = File::open(cluster.pod("pod-1a").netns.path()).expect("the pod's namespace");
    let records = terminator.run_in(&netns).expect("run the iterator");
    let _ = terminator.targets6.remove(&key);
    let reported: Vec<(Ipv6Addr, u16, Ipv6Addr, u16)> = records
        .iter()
        .map(|r| {
            (
                ip6_from_net(r.backend_addr),
                u16::from_be(r.backend_port),
                ip6_from_net(r.service_addr),
                u16::from_be(r.service_port),
            )
        })
        .collect();
    assert_eq!(
        reported,
        [(leaving_ip, UDP_TARGET, SERVICE, 53)],
        "one socket closed: the one the service sent to {leaving}"
    );

    let err = doomed
        .recv(SYNC_TIMEOUT)
        .expect_err("the socket to the removed backend is closed");
    assert!(err.contains(ECONNABORTED), "expected ECONNABORTED: {err}");
    assert_eq!(direct.ping().expect("the direct socket").name, leaving);
}
