//! Self-test of the netns harness (no sluice needed): wiring, echo servers, daemon plumbing,
//! that everything is gone after drop, and after a SIGKILL of the test process plus a sweep.

use std::{
    net::{IpAddr, SocketAddr},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::ExitStatusExt,
    },
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use proxy_tests::{
    CLIENT_IP, CLIENT_IP6, Child, Cluster, Family, Place, Proto, Reply, SluiceDaemon, TCP_PORTS,
    UDP_PORTS,
    sluice::DaemonConfig,
    sweep::{self, SweepLock},
    unique::{self, Owner},
    wait_until,
};

const TIMEOUT: Duration = Duration::from_millis(1500);

/// What a cluster made, to check it is all gone after drop.
struct Footprint {
    prefix: String,
    netns: Vec<String>,
    dirs: Vec<PathBuf>,
    bpffs: PathBuf,
}

impl Footprint {
    fn of(cluster: &Cluster) -> Footprint {
        Footprint {
            prefix: cluster.prefix().to_owned(),
            netns: cluster.netns_names(),
            dirs: vec![
                cluster.cgroup_root().to_owned(),
                cluster.bpffs_dir().to_owned(),
                cluster.state_root().to_owned(),
            ],
            bpffs: cluster.bpffs_dir().to_owned(),
        }
    }

    fn assert_present(&self) {
        let listed = netns_list();
        for ns in &self.netns {
            assert!(
                listed.contains(ns),
                "netns {ns} missing from `ip netns list`"
            );
        }
        for dir in &self.dirs {
            assert!(dir.is_dir(), "{} missing", dir.display());
        }
        assert!(
            mounted(&self.bpffs),
            "bpffs not mounted at {}",
            self.bpffs.display()
        );
    }

    fn assert_gone(&self) {
        let listed = netns_list();
        let prefix = format!("{}-", self.prefix);
        let left: Vec<&String> = listed.iter().filter(|n| n.starts_with(&prefix)).collect();
        assert!(left.is_empty(), "namespaces left behind: {left:?}");
        for ns in &self.netns {
            assert!(
                !Path::new("/run/netns").join(ns).exists(),
                "/run/netns/{ns} left behind"
            );
        }
        for dir in &self.dirs {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
        assert!(
            !mounted(&self.bpffs),
            "bpffs still mounted at {}",
            self.bpffs.display()
        );
    }
}

fn netns_list() -> Vec<String> {
    proxy_tests::netns::ip(&["netns", "list"])
        .expect("ip netns list")
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn mounted(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("reading mounts");
    let dir = dir.to_str().unwrap();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(dir))
}

fn ip_of(addr: SocketAddr) -> IpAddr {
    addr.ip()
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
#[expect(
    clippy::similar_names,
    reason = "`pod_2a` and `pod_1b` are the pods of those names"
)]
fn cluster_wiring_echo_servers_and_cleanup() {
    let mut cluster = Cluster::new();
    let footprint = Footprint::of(&cluster);
    footprint.assert_present();
    cluster.start_pods();

    // Every server lives in its node's cgroup.
    for pod in cluster.pods() {
        let pid = cluster
            .pod_server_pid(&pod.name)
            .expect("server running")
            .cast_signed();
        let members = proxy_tests::cgroup::procs(&cluster.node(&pod.node).cgroup).unwrap();
        assert!(
            members.contains(&pid),
            "{}'s server {pid} not in {} cgroup",
            pod.name,
            pod.node
        );
    }

    // Client → every pod directly, TCP and UDP, every port: the right pod answers, on the
    // port asked, and it saw the client's own address.
    for pod in cluster.pods() {
        for (proto, ports) in [
            (Proto::Tcp, &TCP_PORTS),
            (Proto::Udp, &UDP_PORTS),
            (Proto::UdpConnected, &UDP_PORTS),
        ] {
            for &port in ports {
                let answers =
                    cluster.request_detailed(Place::Client, proto, pod.ip, port, 3, TIMEOUT);
                for answer in answers {
                    let reply = answer
                        .unwrap_or_else(|e| panic!("client -> {} {proto} {port}: {e}", pod.name));
                    assert_eq!(reply.name, pod.name);
                    assert_eq!(ip_of(reply.peer), IpAddr::from(CLIENT_IP));
                    assert_eq!(reply.local.port(), port);
                    assert_eq!(reply.remote, SocketAddr::new(pod.ip.into(), port));
                }
            }
        }
    }

    // The short form returns pod names.
    let pod_2a = cluster.pod("pod-2a").ip;
    assert_eq!(
        cluster.request(Place::Client, Proto::Tcp, pod_2a, 80, 2),
        vec![Ok("pod-2a".to_owned()), Ok("pod-2a".to_owned())]
    );

    // Pod → pod across nodes, both protocols: the backend sees the pod's address.
    for proto in [Proto::Tcp, Proto::Udp] {
        let port = if proto == Proto::Tcp { 80 } else { 53 };
        let answers =
            cluster.request_detailed(Place::Pod("pod-1a"), proto, pod_2a, port, 2, TIMEOUT);
        for answer in answers {
            let reply = answer.unwrap_or_else(|e| panic!("pod-1a -> pod-2a {proto}: {e}"));
            assert_eq!(reply.name, "pod-2a");
            assert_eq!(ip_of(reply.peer), IpAddr::from(cluster.pod("pod-1a").ip));
        }
    }

    // Pod → pod on the same node, and node → its own pod (from the node's address).
    let pod_1b = cluster.pod("pod-1b").ip;
    let reply = cluster.request_detailed(Place::Pod("pod-1a"), Proto::Tcp, pod_1b, 80, 1, TIMEOUT);
    assert_eq!(reply[0].as_ref().unwrap().name, "pod-1b");
    let reply =
        cluster.request_detailed(Place::Node("node1"), Proto::Tcp, pod_1b, 8080, 1, TIMEOUT);
    let reply = reply[0].as_ref().unwrap();
    assert_eq!(reply.name, "pod-1b");
    assert_eq!(ip_of(reply.peer), IpAddr::from(cluster.node("node1").ip));
    // Node → a pod on the other node.
    let reply = cluster.request_detailed(Place::Node("node2"), Proto::Udp, pod_1b, 53, 1, TIMEOUT);
    let reply = reply[0].as_ref().unwrap();
    assert_eq!(reply.name, "pod-1b");
    assert_eq!(ip_of(reply.peer), IpAddr::from(cluster.node("node2").ip));

    // Errors come back as values: a closed TCP port refuses, a closed UDP port times out
    // (unconnected) or is refused (connected, via ICMP).
    let pod_1a = cluster.pod("pod-1a").ip;
    let refused = cluster.request(Place::Client, Proto::Tcp, pod_1a, 81, 1);
    assert!(
        refused[0].as_ref().is_err_and(|e| e.starts_with("refused")),
        "{refused:?}"
    );
    let timeout = cluster.request_detailed(Place::Client, Proto::Udp, pod_1a, 54, 1, TIMEOUT / 3);
    assert!(
        timeout[0].as_ref().is_err_and(|e| e.starts_with("timeout")),
        "{timeout:?}"
    );
    let refused = cluster.request(Place::Client, Proto::UdpConnected, pod_1a, 54, 1);
    assert!(
        refused[0].as_ref().is_err_and(|e| e.starts_with("refused")),
        "{refused:?}"
    );

    // A held connection survives other traffic and answers each ping; it breaks when its
    // server goes away.
    let mut held = cluster
        .hold(Place::Client, pod_2a, 80)
        .expect("hold to pod-2a");
    assert_eq!(held.greeting().name, "pod-2a");
    for _ in 0..3 {
        assert_eq!(
            held.ping().expect("ping over held connection").name,
            "pod-2a"
        );
    }
    assert!(
        cluster
            .hold(Place::Client, pod_2a, 81)
            .is_err_and(|e| e.starts_with("refused"))
    );
    cluster.stop_pod("pod-2a");
    let broken = held.ping();
    assert!(
        broken.is_err(),
        "held connection still answers after its server died: {broken:?}"
    );
    drop(held);
    // And the pod is reachable again once restarted.
    cluster.start_pod("pod-2a", &TCP_PORTS, &UDP_PORTS);
    assert_eq!(
        cluster.request(Place::Client, Proto::Tcp, pod_2a, 80, 1),
        vec![Ok("pod-2a".to_owned())]
    );

    // Nodes forward but do not send redirects; the client routes the Service CIDR via node1.
    let node1 = &cluster.node("node1").netns;
    assert_eq!(node1.read_sysctl("net.ipv4.ip_forward").unwrap(), "1");
    assert_eq!(
        node1
            .read_sysctl("net.ipv4.conf.eth0.send_redirects")
            .unwrap(),
        "0"
    );
    let route = cluster
        .client()
        .netns
        .ip(&["route", "get", "198.19.0.1"])
        .unwrap();
    assert!(route.contains("via 198.18.0.11"), "{route}");

    let node_pids: Vec<i32> = cluster
        .pods()
        .iter()
        .map(|p| cluster.pod_server_pid(&p.name).unwrap().cast_signed())
        .collect();
    drop(cluster);
    footprint.assert_gone();
    for pid in node_pids {
        // SAFETY: kill with signal 0 only checks existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "echo server {pid} survived the cluster");
    }
}

/// Every protocol `netns-echo request` speaks, with the ports the pods serve it on.
const PROTOCOLS: [(Proto, [u16; 2]); 3] = [
    (Proto::Tcp, TCP_PORTS),
    (Proto::Udp, UDP_PORTS),
    (Proto::UdpConnected, UDP_PORTS),
];

/// Sends 2 requests of every protocol to every port of `pod`'s `target` address from `from`,
/// and checks each answer: `pod` answered on that port, it saw the client as `peer`, and the
/// client saw the answer come from `target` itself.
fn assert_answers(cluster: &Cluster, from: Place<'_>, pod: &str, target: IpAddr, peer: IpAddr) {
    for (proto, ports) in PROTOCOLS {
        for port in ports {
            let to = SocketAddr::new(target, port);
            for answer in cluster.request_to(from, proto, to, 2, TIMEOUT) {
                let reply: Reply =
                    answer.unwrap_or_else(|e| panic!("{from:?} -> {pod} {to} {proto}: {e}"));
                let what = format!("{from:?} -> {to} {proto}: {reply:?}");
                assert_eq!(reply.name, pod, "{what}");
                assert_eq!(reply.peer.ip(), peer, "{what}");
                assert_eq!(reply.local.port(), port, "{what}");
                assert_eq!(reply.remote, to, "{what}");
            }
        }
    }
}

#[test]
fn ipv6_on_every_link_without_sluice() {
    let mut cluster = Cluster::new();
    cluster.start_pods();
    let names: Vec<String> = cluster.pods().iter().map(|p| p.name.clone()).collect();

    for pod in &names {
        let pod_ip6 = IpAddr::from(cluster.pod(pod).ip6);
        // Client → each pod, routed via the pod's node.
        assert_answers(&cluster, Place::Client, pod, pod_ip6, CLIENT_IP6.into());
        // Every node → the pod, from the node's own address (local pod or across the underlay).
        for node in ["node1", "node2"] {
            let node_ip6 = cluster.node(node).ip6.into();
            assert_answers(&cluster, Place::Node(node), pod, pod_ip6, node_ip6);
        }
        // Every other pod → the pod, same node and across nodes.
        for other in names.iter().filter(|other| *other != pod) {
            let other_ip6 = cluster.pod(other).ip6.into();
            assert_answers(&cluster, Place::Pod(other), pod, pod_ip6, other_ip6);
        }
        // An AF_INET6 socket to the pod's IPv4-mapped address: IPv4 on the wire, so the pod
        // sees the IPv4 client; the client sees the mapped address answer.
        let mapped = IpAddr::from(cluster.pod(pod).ip.to_ipv6_mapped());
        assert_answers(&cluster, Place::Client, pod, mapped, CLIENT_IP.into());
        let pod_1a = cluster.pod("pod-1a").ip.into();
        if pod != "pod-1a" {
            assert_answers(&cluster, Place::Pod("pod-1a"), pod, mapped, pod_1a);
        }
    }

    // The per-family accessors name the same addresses as the fields.
    let pod_2a = cluster.pod("pod-2a");
    assert_eq!(pod_2a.addr(Family::V6), IpAddr::from(pod_2a.ip6));
    assert_eq!(pod_2a.addr(Family::V4), IpAddr::from(pod_2a.ip));
    assert_eq!(Family::of(pod_2a.addr(Family::V6)), Family::V6);
    assert_eq!(cluster.client().addr(Family::V6), IpAddr::from(CLIENT_IP6));
    assert_eq!(
        cluster.node("node2").pod_cidr_of(Family::V6),
        "fd00:18:2::/64"
    );

    // A held connection and a connected UDP socket work over IPv6 as over IPv4.
    let pod_2a_ip6 = pod_2a.ip6;
    let mut held = cluster
        .hold(Place::Pod("pod-1a"), pod_2a_ip6, 80)
        .expect("hold to pod-2a over IPv6");
    assert_eq!(held.greeting().name, "pod-2a");
    assert_eq!(
        held.greeting().peer.ip(),
        IpAddr::from(cluster.pod("pod-1a").ip6)
    );
    assert_eq!(held.ping().expect("ping over IPv6").name, "pod-2a");
    let mut session = cluster.udp_session(Place::Client, pod_2a_ip6, 53);
    let reply = session.ping().expect("UDP session over IPv6");
    assert_eq!(reply.name, "pod-2a");
    assert_eq!(reply.peer.ip(), IpAddr::from(CLIENT_IP6));
    assert_eq!(reply.remote, SocketAddr::new(pod_2a_ip6.into(), 53));
    // A closed port refuses over IPv6 too (TCP RST, ICMPv6 port unreachable).
    let refused = cluster.request(Place::Client, Proto::Tcp, pod_2a_ip6, 81, 1);
    assert!(
        refused[0].as_ref().is_err_and(|e| e.starts_with("refused")),
        "{refused:?}"
    );
    let refused = cluster.request(Place::Client, Proto::UdpConnected, pod_2a_ip6, 54, 1);
    assert!(
        refused[0].as_ref().is_err_and(|e| e.starts_with("refused")),
        "{refused:?}"
    );

    // Nodes forward IPv6; the client routes the IPv6 Service CIDR via node1, pods default via
    // the link-local gateway on their eth0.
    let node1 = &cluster.node("node1").netns;
    assert_eq!(
        node1.read_sysctl("net.ipv6.conf.all.forwarding").unwrap(),
        "1"
    );
    let route = cluster
        .client()
        .netns
        .ip(&["-6", "route", "get", "fd00:19::1"])
        .unwrap();
    assert!(route.contains("via fd00:18::11"), "{route}");
    let route = cluster
        .pod("pod-1b")
        .netns
        .ip(&["-6", "route", "get", "fd00:18::100"])
        .unwrap();
    assert!(route.contains("via fe80::1 dev eth0"), "{route}");
}

#[test]
fn underlay_xdp_pass_keeps_traffic_flowing() {
    let mut cluster = Cluster::new();
    cluster.start_pods();
    assert_eq!(
        cluster.underlay_node_ports(),
        vec![("node1", "u-node1"), ("node2", "u-node2")]
    );
    cluster
        .attach_underlay_xdp_pass()
        .expect("attaching XDP_PASS");
    cluster
        .attach_underlay_xdp_pass()
        .expect("attaching again is fine");
    for (_, port) in cluster.underlay_node_ports() {
        let link = cluster
            .underlay()
            .ip(&["-d", "link", "show", "dev", port])
            .unwrap();
        assert!(link.contains("xdp"), "no XDP on {port}: {link}");
    }
    let pod_2a = cluster.pod("pod-2a").ip;
    assert_eq!(
        cluster.request(Place::Client, Proto::Tcp, pod_2a, 80, 3),
        vec![Ok("pod-2a".to_owned()); 3]
    );
    cluster.detach_underlay_xdp().expect("detaching");
    for (_, port) in cluster.underlay_node_ports() {
        let link = cluster
            .underlay()
            .ip(&["-d", "link", "show", "dev", port])
            .unwrap();
        assert!(!link.contains("prog/xdp"), "XDP still on {port}: {link}");
    }
}

#[test]
fn cleanup_happens_when_a_test_panics() {
    let footprint = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut cluster = Cluster::new();
        cluster.start_pods();
        *footprint.lock().unwrap() = Some(Footprint::of(&cluster));
        panic!("deliberate failure with a live cluster");
    }));
    assert!(result.is_err());
    footprint
        .into_inner()
        .unwrap()
        .expect("cluster was built")
        .assert_gone();
}

/// A stand-in for `sluice` with the same lifecycle: logs to stderr, prints the ready line,
/// then waits for a signal. `services` prints JSON.
const FAKE_SLUICE: &str = r#"#!/bin/sh
if [ "$1" = services ]; then
  echo "[{\"args\": \"$*\"}]"
  exit 0
fi
echo "args: $*" >&2
ip -o -4 addr show dev eth0 >&2
echo "syncing"
[ -n "$FAKE_NEVER_READY" ] && exec sleep 1000
[ -n "$FAKE_DIE" ] && { echo "fatal: bad manifests" >&2; exit 3; }
echo "sluice ready: 0 services"
exec sleep 1000
"#;

/// Writes an executable script through a child process: if this process held it open for
/// writing, a concurrent test's fork could inherit that fd and make exec fail with ETXTBSY.
fn write_script(path: PathBuf, text: &str) -> PathBuf {
    use std::io::Write;
    let mut child = std::process::Command::new("sh")
        .args(["-c", "cat > \"$0\" && chmod 755 \"$0\""])
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("spawning sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "writing {}",
        path.display()
    );
    path
}

#[test]
fn daemon_plumbing_with_a_fake_sluice() {
    let cluster = Cluster::new();
    let manifests = cluster.state_root().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let mut config = DaemonConfig::new(
        &cluster,
        "node2",
        &manifests,
        &["--service-cidr", "198.19.0.0/16"],
    );
    config.bin = write_script(cluster.state_root().join("fake-sluice"), FAKE_SLUICE);

    let mut daemon = SluiceDaemon::launch(config.clone()).expect("fake daemon starts");
    assert_eq!(daemon.ready_line(), "sluice ready: 0 services");
    // stderr is drained on its own thread: it may lag behind the ready line on stdout.
    wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
        daemon.stderr().contains("inet ")
    });
    let stderr = daemon.stderr();
    // It runs in node2's netns with the standard command line.
    assert!(stderr.contains("inet 198.18.0.12/24"), "{stderr}");
    let node2 = cluster.node("node2");
    for expected in [
        format!(
            "--node-name node2 --node-ip 198.18.0.12 --cgroup {}",
            node2.cgroup.display()
        ),
        format!("--pin-dir {}", node2.pin_dir.display()),
        format!("--state-dir {}", node2.state_dir.display()),
        "--iface eth0".to_owned(),
        "--service-cidr 198.19.0.0/16".to_owned(),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in {stderr}"
        );
    }
    assert!(node2.pin_dir.starts_with(cluster.bpffs_dir()));

    let services = daemon.services_json();
    let args = services[0]["args"].as_str().unwrap();
    assert!(args.starts_with("services -o json --pin-dir "), "{args}");
    // Dual stack adds the node's IPv6 address and the IPv6 Service CIDR.
    let dual = config.clone().dual_stack(&cluster);
    let tail: Vec<&std::ffi::OsStr> = dual.args[config.args.len()..]
        .iter()
        .map(std::ffi::OsString::as_os_str)
        .collect();
    assert_eq!(
        tail,
        [
            "--node-ip",
            "fd00:18::12",
            "--service-cidr",
            "fd00:19::/108"
        ]
    );

    let first = daemon.pid().unwrap();
    daemon.restart();
    let second = daemon.pid().unwrap();
    assert_ne!(first, second);
    daemon.kill();
    assert!(!daemon.is_running());
    daemon.start_again();
    assert!(daemon.is_running());
    let status = daemon.stop();
    assert!(!status.success(), "sleep dies of SIGTERM: {status}");

    // Failures are reported with the daemon's output.
    let mut never = config.clone();
    never.ready_timeout = Duration::from_millis(300);
    never.env.push(("FAKE_NEVER_READY".into(), "1".into()));
    let err = format!(
        "{:#}",
        SluiceDaemon::launch(never).err().expect("never ready")
    );
    assert!(err.contains("did not print the expected line"), "{err}");
    assert!(err.contains("inet 198.18.0.12"), "{err}");

    let mut dies = config.clone();
    dies.env.push(("FAKE_DIE".into(), "1".into()));
    let err = format!("{:#}", SluiceDaemon::launch(dies).err().expect("dies"));
    assert!(err.contains("fatal: bad manifests"), "{err}");
    assert!(err.contains("exit status: 3"), "{err}");

    let mut missing = config;
    missing.bin = cluster.state_root().join("no-such-sluice");
    let err = format!(
        "{:#}",
        SluiceDaemon::launch(missing).err().expect("missing binary")
    );
    assert!(err.contains("cargo build -p proxy-user"), "{err}");
}

/// What `netns-harness leak` made and started, from its report lines.
#[derive(Debug, Default)]
struct Leak {
    owner: Option<Owner>,
    netns: Vec<String>,
    cgroup: PathBuf,
    mount: PathBuf,
    dirs: Vec<PathBuf>,
    /// Started through the harness: they must die with the leaking process.
    pids: Vec<u32>,
    /// Started around the harness: only the sweep ends them.
    escaped: Vec<u32>,
}

impl Leak {
    fn parse(lines: &[String]) -> Leak {
        let mut leak = Leak::default();
        for line in lines {
            let (kind, value) = line.split_once(' ').unwrap_or((line, ""));
            match kind {
                "owner" => {
                    let (pid, start) = value.split_once(' ').expect("owner PID START");
                    leak.owner = Some(Owner {
                        pid: pid.parse().unwrap(),
                        start: start.parse().unwrap(),
                    });
                }
                "netns" => leak.netns.push(value.to_owned()),
                "cgroup" => leak.cgroup = value.into(),
                "mount" => leak.mount = value.into(),
                "dir" => leak.dirs.push(value.into()),
                "pid" => leak.pids.push(value.parse().unwrap()),
                "escaped" => leak.escaped.push(value.parse().unwrap()),
                _ => {}
            }
        }
        assert!(
            leak.netns.len() >= 7 && leak.pids.len() >= 5 && leak.escaped.len() == 3,
            "incomplete report: {leak:?}"
        );
        leak
    }

    fn owner(&self) -> Owner {
        self.owner.expect("the report names its owner")
    }

    fn assert_present(&self) {
        for ns in &self.netns {
            let path = Path::new("/run/netns").join(ns);
            assert!(path.exists(), "{} is missing", path.display());
        }
        assert!(self.cgroup.is_dir(), "{} is missing", self.cgroup.display());
        assert!(
            mounted(&self.mount),
            "{} is not mounted",
            self.mount.display()
        );
        for dir in &self.dirs {
            assert!(dir.is_dir(), "{} is missing", dir.display());
        }
    }

    /// Nothing is left: neither what the report listed nor anything else named after the owner.
    fn assert_gone(&self) {
        let tag = format!("{}-", self.owner().tag());
        let named = |dir: &Path, prefix: &str| -> Vec<String> {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter_map(|e| e.file_name().into_string().ok())
                        .filter(|n| n.starts_with(prefix))
                        .collect()
                })
                .unwrap_or_default()
        };
        let netns = named(Path::new("/run/netns"), &tag);
        assert!(netns.is_empty(), "namespaces left: {netns:?}");
        let cgroup_root = self.cgroup.parent().unwrap();
        let cgroups = named(cgroup_root, &format!("{}{tag}", unique::CGROUP_PREFIX));
        assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
        let tmp = self.mount.parent().unwrap();
        let dirs = named(tmp, &tag);
        assert!(dirs.is_empty(), "temp dirs left: {dirs:?}");
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&tag)).collect();
        assert!(left.is_empty(), "mounts left: {left:?}");
        for path in self.dirs.iter().chain([&self.cgroup, &self.mount]) {
            assert!(!path.exists(), "{} left", path.display());
        }
    }
}

/// A pidfd for `pid`; it turns readable when that process exits.
fn pidfd(pid: u32) -> OwnedFd {
    // SAFETY: plain syscall.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(
        raw >= 0,
        "pidfd_open({pid}): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh fd nothing else owns.
    unsafe { OwnedFd::from_raw_fd(i32::try_from(raw).expect("pidfd_open returns an int")) }
}

/// Whether the process behind `pidfd` exits within `timeout` (zero: has exited).
fn exits_within(pidfd: &OwnedFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&raw mut pfd, 1, ms) };
    assert!(ready >= 0, "poll: {}", std::io::Error::last_os_error());
    ready == 1
}

/// If the test fails half-way, the leak must not stay: sweep (the victim is dead by then).
struct SweepAfterFailure;

impl Drop for SweepAfterFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            match sweep::sweep() {
                Ok(report) => eprintln!("{report}"),
                Err(e) => eprintln!("sweep after failure: {e:#}"),
            }
        }
    }
}

#[test]
fn a_killed_test_process_leaves_nothing_behind() {
    // Declared first, dropped last: after the victim's guard has killed it.
    let _cleanup = SweepAfterFailure;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_netns-harness"));
    cmd.arg("leak");
    let mut victim = Child::spawn_with_stdin("netns-harness leak", cmd).expect("spawning");
    victim
        .wait_for_stdout(Duration::from_secs(60), |l| l == "ready")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let leak = Leak::parse(&victim.stdout_lines());
    assert_eq!(leak.owner().pid, victim.pid());
    assert!(leak.owner().is_alive());
    // pidfds now, while each pid is still the process it names (the victim's unreaped child).
    let children: Vec<(u32, OwnedFd)> = leak.pids.iter().map(|&p| (p, pidfd(p))).collect();
    let escaped: Vec<(u32, OwnedFd)> = leak.escaped.iter().map(|&p| (p, pidfd(p))).collect();

    // No other sweep (another test process starting) may clean up before this test looks.
    let lock = SweepLock::acquire().expect("sweep lock");
    let status = victim.kill().expect("SIGKILL the victim");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert!(!leak.owner().is_alive());

    // Harness children die with it (parent-death signal), without any sweep.
    for (pid, fd) in &children {
        assert!(
            exits_within(fd, Duration::from_secs(10)),
            "harness child {pid} outlived the SIGKILLed test process"
        );
    }
    // What a SIGKILL leaves: the escapees run, and every resource is still there.
    for (pid, fd) in &escaped {
        assert!(
            !exits_within(fd, Duration::ZERO),
            "escapee {pid} died early"
        );
    }
    leak.assert_present();

    let report = sweep::sweep_locked(&lock);
    drop(lock);
    assert!(report.errors.is_empty(), "{report}");
    assert!(report.owners.contains(&leak.owner()), "{report}");
    for (pid, fd) in &escaped {
        assert!(report.killed.contains(pid), "{pid} not killed: {report}");
        assert!(
            exits_within(fd, Duration::ZERO),
            "escapee {pid} survived the sweep"
        );
    }
    leak.assert_gone();
    // And the sweep does not touch what a live owner holds.
    let cluster = Cluster::new();
    let mine = Footprint::of(&cluster);
    let report = sweep::sweep().expect("sweep");
    assert!(!report.owners.contains(&Owner::current()), "{report}");
    mine.assert_present();
}
