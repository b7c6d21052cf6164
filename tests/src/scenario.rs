//! The standard end-to-end setup: the two-node cluster with its pods serving, the standard
//! manifests, and `sluice run` on both nodes; plus the assertions the tests share.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use crate::{Cluster, Place, Proto, Reply, SluiceDaemon, manifests::ManifestDir, wait::wait_for};

/// How long the daemon gets to apply a manifest change.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// Every pod of the test cluster.
pub const ALL_PODS: [&str; 3] = ["pod-1a", "pod-1b", "pod-2a"];

/// Requests per check: with 3 backends chosen at random, 30 tries miss one with probability
/// 3 * (2/3)^30, about 1.6e-5.
pub const SPREAD_REQUESTS: usize = 30;

/// Fields drop in order: the daemons first, the cluster (namespaces, cgroups, pins) last.
pub struct Scenario {
    pub node1: SluiceDaemon,
    pub node2: SluiceDaemon,
    pub manifests: ManifestDir,
    pub cluster: Cluster,
}

impl Scenario {
    /// The cluster with pods serving, the standard manifests and both daemons ready.
    pub fn start(extra_args: &[&str]) -> Self {
        let mut cluster = Cluster::new();
        cluster.start_pods();
        Self::start_on(cluster, extra_args)
    }

    /// Like [`Scenario::start`] on a cluster the caller prepared.
    pub fn start_on(cluster: Cluster, extra_args: &[&str]) -> Self {
        let manifests = ManifestDir::standard(&cluster);
        let node1 = SluiceDaemon::start(&cluster, "node1", manifests.path(), extra_args);
        let node2 = SluiceDaemon::start(&cluster, "node2", manifests.path(), extra_args);
        Self {
            node1,
            node2,
            manifests,
            cluster,
        }
    }

    pub fn daemon(&self, node: &str) -> &SluiceDaemon {
        match node {
            "node1" => &self.node1,
            "node2" => &self.node2,
            other => panic!("no daemon on {other}"),
        }
    }

    /// Sends `count` requests and returns the answers; panics on any error, naming it.
    pub fn replies(
        &self,
        from: Place<'_>,
        proto: Proto,
        addr: impl Into<IpAddr>,
        port: u16,
        count: usize,
    ) -> Vec<Reply> {
        let addr = addr.into();
        let results = self.cluster.request_detailed(
            from,
            proto,
            addr,
            port,
            count,
            crate::workload::REQUEST_TIMEOUT,
        );
        results
            .into_iter()
            .enumerate()
            .map(|(i, result)| {
                result.unwrap_or_else(|err| {
                    panic!(
                        "request {i} {proto} {addr}:{port} from {from:?} failed: {err}\nnode1 \
                         stderr:\n{}\nnode2 stderr:\n{}",
                        self.node1.stderr(),
                        self.node2.stderr()
                    )
                })
            })
            .collect()
    }

    /// The set of pods that answered `count` requests (all must succeed).
    pub fn answering_pods(
        &self,
        from: Place<'_>,
        proto: Proto,
        addr: impl Into<IpAddr>,
        port: u16,
        count: usize,
    ) -> BTreeSet<String> {
        self.replies(from, proto, addr, port, count)
            .into_iter()
            .map(|reply| reply.name)
            .collect()
    }

    /// Waits until `node`'s maps give `frontend` exactly the backend addresses `expected`
    /// (of either family).
    pub fn wait_for_backends<A: Into<IpAddr> + Copy>(
        &self,
        node: &str,
        frontend: &str,
        expected: &[A],
    ) {
        let expected: BTreeSet<IpAddr> = expected.iter().map(|&a| a.into()).collect();
        let what = format!("{node}: {frontend} with backends {expected:?}");
        wait_for(&what, SYNC_TIMEOUT, POLL, || {
            let current = backend_ips_of(self.daemon(node), frontend);
            if current.as_ref() == Some(&expected) {
                return Ok(());
            }
            let stderr = self.daemon(node).stderr();
            Err(format!("backends {current:?}\nstderr:\n{stderr}"))
        });
    }
}

/// The IPv4 backend addresses `sluice services -o json` shows for `frontend` (`ADDR:PORT`,
/// or `*:PORT` for a NodePort); `None` when the frontend is not programmed. Panics on an IPv6
/// backend: see [`backend_ips_of`].
pub fn backends_of(daemon: &SluiceDaemon, frontend: &str) -> Option<BTreeSet<Ipv4Addr>> {
    let ips = backend_ips_of(daemon, frontend)?;
    let v4 = ips.iter().map(|ip| match ip {
        IpAddr::V4(v4) => *v4,
        IpAddr::V6(v6) => panic!("{frontend}: IPv6 backend {v6} (use backend_ips_of)"),
    });
    Some(v4.collect())
}

/// The backend addresses, of either family, `sluice services -o json` shows for `frontend`;
/// `None` when the frontend is not programmed.
pub fn backend_ips_of(daemon: &SluiceDaemon, frontend: &str) -> Option<BTreeSet<IpAddr>> {
    let services = daemon.services_json();
    let rows = services
        .as_array()
        .expect("services -o json prints an array");
    let row = rows.iter().find(|row| row["frontend"] == frontend)?;
    let backends = row["backends"].as_array().expect("backends is an array");
    Some(
        backends
            .iter()
            .map(|b| {
                b["addr"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .expect("backend addr is an IP address")
            })
            .collect(),
    )
}

/// A set of pod names, for comparisons.
pub fn pods(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}
