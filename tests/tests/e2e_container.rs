//! The real image as the `DaemonSet` runs it: `cargo xtask image`'s OCI archive loaded into
//! podman and started in node1's network namespace with exactly the securityContext,
//! volumes, environment, resources and arguments of deploy/daemonset.yaml (read from it),
//! following the fake API server over HTTPS with a mounted service account, as
//! `--in-cluster` does in a Pod. Real traffic through ClusterIP (socket LB) and NodePort
//! (XDP), and a restart by killing the container with connections open.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use proxy_tests::{
    Cluster, Place, Proto,
    container::{DaemonSetContainer, NodeContext, Podman, image_archive},
    fake_apiserver::{
        self, FakeApiServer,
        objects::{self, ready},
    },
    http,
    scenario::{ALL_PODS, SPREAD_REQUESTS, pods},
    wait_for,
};

/// `objects::echo_service`'s cluster IP and nodePorts.
const ECHO_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const LATE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 50);
const NODE_PORT_TCP: u16 = 30080;
const NODE_PORT_UDP: u16 = 30053;
const CONTAINER: &str = "sluice-node1";
/// Image load, start, the first list from the API server and the maps filled.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const SYNC_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(200);

fn daemonset() -> DaemonSetContainer {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    DaemonSetContainer::read(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

/// The API server with the nodes and `echo` (NodePort; two pods on node1, one on node2).
fn start_api(cluster: &Cluster) -> FakeApiServer {
    let api = FakeApiServer::start_tls_in(&[&cluster.node("node1").netns]);
    for node in cluster.nodes() {
        api.apply(objects::node(&node.name, &[node.ip.into()]));
    }
    api.apply(objects::echo_service());
    let endpoints: Vec<_> = ALL_PODS
        .iter()
        .map(|pod| ready(cluster.pod(pod).ip, &cluster.pod(pod).node))
        .collect();
    api.apply(objects::endpoint_slice(
        "echo-1",
        "echo",
        &endpoints,
        &[("http", "TCP", 8080), ("dns", "UDP", 8053)],
    ));
    api
}

/// The capability names of a `CapEff:` mask (the ones the `DaemonSet` may add).
fn capability_names(mask: u64) -> Vec<&'static str> {
    const KNOWN: [(u32, &str); 5] = [
        (12, "NET_ADMIN"),
        (21, "SYS_ADMIN"),
        (38, "PERFMON"),
        (39, "BPF"),
        (13, "NET_RAW"),
    ];
    let mut names: Vec<_> = KNOWN
        .iter()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect();
    let known: u64 = KNOWN.iter().map(|(bit, _)| 1u64 << bit).sum();
    if mask & !known != 0 {
        names.push("OTHERS");
    }
    names.sort_unstable();
    names
}

struct Run<'a> {
    podman: &'a Podman,
    cluster: &'a Cluster,
    args: Vec<String>,
    readiness: (String, u16),
}

impl Run<'_> {
    fn start(&self) {
        let args: Vec<&str> = std::iter::once("run")
            .chain(self.args.iter().map(String::as_str))
            .collect();
        self.podman
            .run(&args)
            .unwrap_or_else(|e| panic!("start the container: {e:#}"));
        self.wait_ready();
    }

    /// As the kubelet's readiness probe: the manifest's `httpGet` answers 200.
    fn wait_ready(&self) {
        let (path, port) = &self.readiness;
        let netns = &self.cluster.node("node1").netns;
        wait_for(
            "the container to be ready",
            READY_TIMEOUT,
            POLL,
            || match http::try_get(netns, &format!("127.0.0.1:{port}"), path) {
                Ok((status, _)) if status.starts_with("HTTP/1.1 200") => Ok(()),
                other => Err(format!(
                    "{other:?}\nstate: {}\n{}",
                    self.state(),
                    self.podman.logs(CONTAINER)
                )),
            },
        );
    }

    /// The container's status, exit code and whether it was killed for memory.
    fn state(&self) -> String {
        self.podman
            .run(&[
                "inspect",
                "--format",
                "{{.State.Status}} exit={{.State.ExitCode}} oom={{.State.OOMKilled}}",
                CONTAINER,
            ])
            .map_or_else(|e| format!("{e:#}"), |out| out.stdout.trim().to_owned())
    }

    fn pid(&self) -> u32 {
        let out = self
            .podman
            .run(&["inspect", "--format", "{{.State.Pid}}", CONTAINER])
            .unwrap_or_else(|e| panic!("{e:#}"));
        out.stdout.trim().parse().expect("a pid")
    }

    fn answering(&self, from: Place<'_>, proto: Proto, addr: Ipv4Addr, port: u16) -> Vec<String> {
        let results = self
            .cluster
            .request(from, proto, addr, port, SPREAD_REQUESTS);
        let mut names: Vec<String> = results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|e| {
                    panic!(
                        "{proto} {addr}:{port} from {from:?}: {e}\n{}",
                        self.podman.logs(CONTAINER)
                    )
                })
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// ClusterIP from a node1 pod and NodePort from the client, TCP and UDP: every pod.
    fn assert_serving(&self, when: &str) {
        let node1_ip = self.cluster.node("node1").ip;
        let every: Vec<String> = pods(&ALL_PODS).into_iter().collect();
        for (from, addr, tcp, udp) in [
            (Place::Pod("pod-1b"), ECHO_IP, 80, 53),
            (Place::Client, node1_ip, NODE_PORT_TCP, NODE_PORT_UDP),
        ] {
            for (proto, port) in [(Proto::Tcp, tcp), (Proto::Udp, udp)] {
                assert_eq!(
                    self.answering(from, proto, addr, port),
                    every,
                    "{proto} {addr}:{port} from {from:?}, {when}"
                );
            }
        }
    }
}

/// The container's `podman run` arguments on node1 of `cluster`: the manifest's, with this
/// node's stand-ins for the host paths, its service account and the API server's address.
fn node1_run_args(
    cluster: &Cluster,
    api: &FakeApiServer,
    spec: &DaemonSetContainer,
) -> Vec<String> {
    let node1 = cluster.node("node1");
    let service_account: PathBuf = cluster.state_root().join("serviceaccount");
    std::fs::create_dir_all(&service_account).expect("service account dir");
    api.write_service_account(&service_account, "kube-system");
    // This node's stand-ins for the host paths: its own bpffs directory and cgroup.
    let host_paths = BTreeMap::from([
        ("/sys/fs/bpf".to_owned(), node1.pin_dir.clone()),
        ("/sys/fs/cgroup".to_owned(), node1.cgroup.clone()),
    ]);
    // The two variables the manifest says to edit: the API server's address.
    let env_overrides = BTreeMap::from([
        ("KUBERNETES_SERVICE_HOST".to_owned(), "127.0.0.1".to_owned()),
        (
            "KUBERNETES_SERVICE_PORT".to_owned(),
            fake_apiserver::PORT.to_string(),
        ),
    ]);
    let context = NodeContext {
        netns: node1.netns.path(),
        node_name: "node1",
        host_paths,
        env_overrides,
        service_account: &service_account,
    };
    spec.podman_run_args(CONTAINER, &context)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The running container has exactly the capabilities the manifest adds, and no way to
/// gain more.
fn assert_capabilities(run: &Run, spec: &DaemonSetContainer) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", run.pid())).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {status}"))
            .trim()
            .to_owned()
    };
    let effective = u64::from_str_radix(&field("CapEff:"), 16).expect("hex");
    let mut expected = spec.security.cap_add.clone();
    expected.sort_unstable();
    assert_eq!(capability_names(effective), expected, "{status}");
    assert_eq!(field("NoNewPrivs:"), "1");
}

#[test]
fn the_image_runs_as_the_daemonset_says_and_survives_being_killed_with_connections_open() {
    let spec = daemonset();
    let mut cluster = Cluster::new();
    cluster.start_pods();
    let api = start_api(&cluster);
    let podman = Podman::new().unwrap_or_else(|e| panic!("{e:#}"));
    let archive = image_archive().unwrap_or_else(|e| panic!("{e:#}"));
    let reference = podman.load(&archive).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        reference, spec.image,
        "deploy/daemonset.yaml names the image `cargo xtask image` builds"
    );
    let run = Run {
        podman: &podman,
        cluster: &cluster,
        args: node1_run_args(&cluster, &api, &spec),
        readiness: spec.readiness.clone(),
    };
    run.start();
    run.assert_serving("after the first start");
    // For docs/cluster-mode.md: what the memory limit has to hold (the maps are charged too).
    let usage = podman.run(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.MemUsage}}",
        CONTAINER,
    ]);
    eprintln!(
        "container memory: {}",
        usage.map_or_else(|e| format!("{e:#}"), |o| o.stdout)
    );
    assert_capabilities(&run, &spec);

    // Connections through both paths, then the container is killed and comes back.
    let node1_ip = cluster.node("node1").ip;
    let mut via_xdp = cluster
        .hold(Place::Client, node1_ip, NODE_PORT_TCP)
        .expect("a connection through node1's NodePort");
    let mut via_socket = cluster
        .hold(Place::Pod("pod-1b"), ECHO_IP, 80)
        .expect("a connection to the ClusterIP");
    let mut udp = cluster.udp_session(Place::Client, node1_ip, NODE_PORT_UDP);
    let udp_pod = udp.ping().expect("a UDP flow through the NodePort").name;
    let (xdp_pod, socket_pod) = (
        via_xdp.greeting().name.clone(),
        via_socket.greeting().name.clone(),
    );
    let mut check_flows = |when: &str| {
        assert_eq!(via_xdp.ping().expect(when).name, xdp_pod, "XDP flow {when}");
        assert_eq!(
            via_socket.ping().expect(when).name,
            socket_pod,
            "socket flow {when}"
        );
        assert_eq!(udp.ping().expect(when).name, udp_pod, "UDP flow {when}");
    };
    podman
        .run(&["kill", "--signal=KILL", CONTAINER])
        .unwrap_or_else(|e| panic!("{e:#}"));
    wait_for("the container to stop", SYNC_TIMEOUT, POLL, || {
        let state = podman
            .run(&["inspect", "--format", "{{.State.Status}}", CONTAINER])
            .map(|out| out.stdout.trim().to_owned());
        match state {
            Ok(state) if state == "exited" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    check_flows("with the container killed");
    run.assert_serving("with the container killed");
    // A new container from the same spec, as the kubelet starts after a crash.
    podman
        .run(&["rm", CONTAINER])
        .unwrap_or_else(|e| panic!("{e:#}"));
    run.start();
    check_flows("after the new container is ready");
    run.assert_serving("after the restart");

    // And it follows the API server: a Service added now is served.
    api.simple_service(&cluster, "late", LATE_IP, &["pod-2a"], &[]);
    wait_for(
        "the new Service to be served",
        SYNC_TIMEOUT,
        POLL,
        || match cluster.request(Place::Pod("pod-1a"), Proto::Tcp, LATE_IP, 81, 1)[0].as_ref() {
            Ok(name) if name == "pod-2a" => Ok(()),
            other => Err(format!("{other:?}\n{}", podman.logs(CONTAINER))),
        },
    );
}
