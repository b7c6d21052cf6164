//! Cluster mode in the netns cluster: the fake API server in both nodes' namespaces with the
//! nodes and the `echo` Service, and `sluice run --kubeconfig` on both nodes.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    Cluster, Place, Proto, SluiceDaemon,
    fake_apiserver::{
        FakeApiServer,
        objects::{self, ready},
    },
    scenario::{SPREAD_REQUESTS, pods},
    sluice::DaemonConfig,
};

/// How long a change on the API server may take to reach a node's maps.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(20);

pub fn pod_ip(cluster: &Cluster, name: &str) -> Ipv4Addr {
    cluster.pod(name).ip
}

/// Field order is drop order: daemons, then the API server, then the namespaces.
pub struct ClusterMode {
    pub node1: SluiceDaemon,
    pub node2: SluiceDaemon,
    pub api: FakeApiServer,
    pub cluster: Cluster,
}

/// The fake API server inside both node namespaces, with the nodes and the `echo` Service
/// (NodePort; its endpoints split over two slices) already there.
pub fn start_api(cluster: &Cluster) -> FakeApiServer {
    let api =
        FakeApiServer::start_in(&[&cluster.node("node1").netns, &cluster.node("node2").netns]);
    for node in cluster.nodes() {
        api.apply(objects::node(&node.name, &[node.ip.into()]));
    }
    api.apply(objects::echo_service());
    api.apply(echo_slice_a(cluster, &["pod-1a", "pod-1b"]));
    api.apply(objects::endpoint_slice(
        "echo-b",
        "echo",
        &[ready(pod_ip(cluster, "pod-2a"), "node2")],
        &[("http", "TCP", 8080), ("dns", "UDP", 8053)],
    ));
    api
}

/// Slice `echo-a` with the given node1 pods, ready.
pub fn echo_slice_a(cluster: &Cluster, pods: &[&str]) -> Value {
    let endpoints: Vec<_> = pods
        .iter()
        .map(|pod| ready(pod_ip(cluster, pod), "node1"))
        .collect();
    objects::endpoint_slice(
        "echo-a",
        "echo",
        &endpoints,
        &[("http", "TCP", 8080), ("dns", "UDP", 8053)],
    )
}

pub fn kubeconfig_path(cluster: &Cluster, node: &str) -> PathBuf {
    cluster.state_root().join(format!("{node}.kubeconfig"))
}

pub fn daemon_config(cluster: &Cluster, api: &FakeApiServer, node: &str) -> DaemonConfig {
    let kubeconfig = kubeconfig_path(cluster, node);
    api.write_kubeconfig(&kubeconfig);
    DaemonConfig::new(cluster, node, &PathBuf::from("/nonexistent"), &[])
        .with_kubeconfig(&kubeconfig)
}

pub fn start() -> ClusterMode {
    start_with(|_| {})
}

/// [`start`], with `prepare` changing the API server before the daemons start.
pub fn start_with(prepare: impl FnOnce(&FakeApiServer)) -> ClusterMode {
    let mut cluster = Cluster::new();
    cluster.start_pods();
    let api = start_api(&cluster);
    prepare(&api);
    let start = |node: &str| {
        SluiceDaemon::launch(daemon_config(&cluster, &api, node))
            .unwrap_or_else(|e| panic!("starting sluice on {node} in cluster mode: {e:#}"))
    };
    let node1 = start("node1");
    let node2 = start("node2");
    ClusterMode {
        node1,
        node2,
        api,
        cluster,
    }
}

impl ClusterMode {
    pub fn stderr(&self) -> String {
        format!(
            "node1 stderr:\n{}\nnode2 stderr:\n{}",
            self.node1.stderr(),
            self.node2.stderr()
        )
    }

    /// The pods that answered `count` requests; every request must be answered.
    pub fn answering(
        &self,
        from: Place<'_>,
        proto: Proto,
        addr: Ipv4Addr,
        port: u16,
        count: usize,
    ) -> BTreeSet<String> {
        self.cluster
            .request(from, proto, addr, port, count)
            .into_iter()
            .enumerate()
            .map(|(i, answer)| {
                answer.unwrap_or_else(|err| {
                    panic!(
                        "request {i} {proto} {addr}:{port} from {from:?}: {err}\n{}",
                        self.stderr()
                    )
                })
            })
            .collect()
    }

    /// Waits until requests from `from` are answered by exactly `expected` (each round sends
    /// [`SPREAD_REQUESTS`]); an empty `expected` waits for every request to fail.
    pub fn wait_for_answers(
        &self,
        from: Place<'_>,
        proto: Proto,
        addr: Ipv4Addr,
        port: u16,
        expected: &[&str],
    ) {
        let expected = pods(expected);
        // Unanswered requests may each wait for their timeout: a few tell enough.
        let count = if expected.is_empty() {
            3
        } else {
            SPREAD_REQUESTS
        };
        let start = Instant::now();
        loop {
            let answers = self.cluster.request(from, proto, addr, port, count);
            let answered: BTreeSet<String> = answers.iter().flatten().cloned().collect();
            let all_ok = answers.iter().all(Result::is_ok);
            let done = if expected.is_empty() {
                answered.is_empty()
            } else {
                all_ok && answered == expected
            };
            if done {
                return;
            }
            assert!(
                start.elapsed() < SYNC_TIMEOUT,
                "{proto} {addr}:{port} from {from:?}: answers {answers:?}, expected {expected:?}\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The frontends (`ADDR:PORT`) the node's maps hold for `name` (`ns/service:port`).
    pub fn frontends_of(&self, node: &str, name: &str) -> BTreeSet<String> {
        let daemon = if node == "node1" {
            &self.node1
        } else {
            &self.node2
        };
        daemon
            .services_json()
            .as_array()
            .expect("services -o json is an array")
            .iter()
            .filter(|row| row["name"] == name && row["programmed"] == true)
            .map(|row| row["frontend"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}
