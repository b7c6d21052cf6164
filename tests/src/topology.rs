//! The test cluster: an underlay bridge, two nodes with their pods, and an off-cluster client.
//!
//! ```text
//!  client 198.18.0.100   ─┐
//!         fd00:18::100    │
//!                         ├─ br0 (underlay ns) ─┬─ node1 198.18.0.11 ─┬─ pod-1a 198.18.1.10  fd00:18:1::10
//!                         │                     │       fd00:18::11   └─ pod-1b 198.18.1.11  fd00:18:1::11
//!                         │                     └─ node2 198.18.0.12 ─── pod-2a 198.18.2.10  fd00:18:2::10
//!                         │                             fd00:18::12
//! ```
//!
//! Every link carries both families, addressed as [`crate::addresses`] says. Pods are wired like a routed CNI (Calico style): a /32 and a /128 on the pod's eth0, default
//! routes via the link-local gateways `169.254.1.1` (onlink) and `fe80::1` (`dev eth0`: a
//! link-local gateway needs its interface), both owned by the node's end of the veth, and a
//! /32 and a /128 route per pod on the node. Nodes route each other's pod /24 and /64 over the
//! underlay. Duplicate address detection is off in every namespace (`accept_dad=0`, `nodad`),
//! so addresses are usable at once; [`Cluster::try_new`] still waits until no address is
//! tentative. Router advertisements and redirects are ignored everywhere.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

pub use crate::addresses::{
    CLIENT_IP, CLIENT_IP6, Family, POD_GATEWAY, POD_GATEWAY6, SERVICE_CIDR, SERVICE_CIDR6,
    UNDERLAY_PREFIX, UNDERLAY_PREFIX6,
};
use crate::{
    addresses::{NODES, NodePlan, PODS},
    bpffs::Bpffs,
    cgroup::Cgroup,
    netns::Netns,
    process::Child,
    tempdir::TempDir,
    unique,
    wiring::{self, base_sysctls},
};

/// A host on the underlay that is not a node (the off-cluster client).
#[derive(Debug)]
pub struct Host {
    pub name: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub netns: Netns,
    /// Its veth peer on the bridge, in the underlay namespace.
    pub underlay_port: String,
}

/// A node: its own netns, cgroup, pin dir and state dir.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub ip: Ipv4Addr,
    /// The node's IPv6 address on the underlay, e.g. `fd00:18::11`.
    pub ip6: Ipv6Addr,
    /// The pods' range on this node, e.g. `198.18.1.0/24`.
    pub pod_cidr: String,
    /// The pods' IPv6 range on this node, e.g. `fd00:18:1::/64`.
    pub pod_cidr6: String,
    pub netns: Netns,
    /// The node's cgroup v2 dir; its pods' processes and node-local test clients join it,
    /// and the daemon attaches its socket-LB programs there (`--cgroup`).
    pub cgroup: PathBuf,
    /// This node's `--pin-dir`, inside the cluster's private bpffs.
    pub pin_dir: PathBuf,
    /// This node's `--state-dir`; kept across daemon restarts, removed with the cluster.
    pub state_dir: PathBuf,
    /// The bridge-side end of the node's eth0, in the underlay namespace.
    pub underlay_port: String,
}

/// A pod: a netns with `eth0`, wired to its node.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address (a /128 on its eth0), e.g. `fd00:18:1::10`.
    pub ip6: Ipv6Addr,
    pub node: String,
    pub netns: Netns,
    /// The node-side end of the pod's veth, in the node's namespace.
    pub node_iface: String,
}

impl Host {
    /// The host's address of `family`.
    pub fn addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.ip.into(),
            Family::V6 => self.ip6.into(),
        }
    }
}

impl Node {
    /// Node `plan`: its namespace plugged into the underlay and routed, its cgroup, pin dir
    /// and state dir.
    fn create(
        plan: &NodePlan,
        prefix: &str,
        underlay: &Netns,
        cgroup: &Cgroup,
        bpffs: &Bpffs,
        state: &TempDir,
    ) -> Result<Node> {
        let name = plan.name;
        let netns = Netns::create(&format!("{prefix}-{name}"))?;
        base_sysctls(&netns, true)?;
        let underlay_port =
            wiring::plug_into_underlay(underlay, &netns, &format!("u-{name}"), plan.ip, plan.ip6)?;
        netns.sysctl("net/ipv4/conf/eth0/send_redirects", "0")?;
        wiring::route_node(&netns, name)?;
        let state_dir = state.path().join(name);
        std::fs::create_dir(&state_dir)?;
        Ok(Node {
            name: name.into(),
            ip: plan.ip,
            ip6: plan.ip6,
            pod_cidr: plan.pod_cidr.into(),
            pod_cidr6: plan.pod_cidr6.into(),
            netns,
            cgroup: cgroup.create_child(name)?,
            pin_dir: bpffs.subdir(name)?,
            state_dir,
            underlay_port,
        })
    }

    /// The node's underlay address of `family`.
    pub fn addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.ip.into(),
            Family::V6 => self.ip6.into(),
        }
    }

    /// The node's pod range of `family`.
    pub fn pod_cidr_of(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.pod_cidr,
            Family::V6 => &self.pod_cidr6,
        }
    }
}

impl Pod {
    /// The pod's address of `family`.
    pub fn addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.ip.into(),
            Family::V6 => self.ip6.into(),
        }
    }
}

/// The whole test topology. Dropping it stops the pods' servers and removes every namespace,
/// cgroup, mount and directory it made. Stop daemons (drop [`crate::SluiceDaemon`]) first:
/// declaring them after the cluster does that.
pub struct Cluster {
    // Field order is drop order: processes first, then namespaces (which take their
    // interfaces with them), then cgroups, the bpffs mount and the state dirs.
    pub(crate) servers: BTreeMap<String, Child>,
    prefix: String,
    pods: Vec<Pod>,
    nodes: Vec<Node>,
    client: Host,
    underlay: Netns,
    cgroup: Cgroup,
    bpffs: Bpffs,
    state: TempDir,
}

impl Cluster {
    /// Builds the topology; panics with the reason if anything fails (after cleaning up).
    #[expect(
        clippy::new_without_default,
        reason = "building a cluster creates namespaces and mounts: keep that explicit"
    )]
    pub fn new() -> Cluster {
        Self::try_new().unwrap_or_else(|e| panic!("building the test cluster: {e:#}"))
    }

    /// Builds the topology. On error, whatever was already made is removed again.
    pub fn try_new() -> Result<Cluster> {
        let prefix = unique::next_prefix();
        // Created first so they are dropped last if a later step fails.
        let state = TempDir::new(&format!("{prefix}-state"))?;
        let bpffs = Bpffs::mount_temp(&format!("{prefix}-bpffs"))?;
        let cgroup = Cgroup::create_top_level(&format!("{}{prefix}", unique::CGROUP_PREFIX))?;

        let underlay = Netns::create(&format!("{prefix}-underlay"))?;
        wiring::underlay_bridge(&underlay)?;

        let client_ns = Netns::create(&format!("{prefix}-client"))?;
        base_sysctls(&client_ns, false)?;
        let client = Host {
            name: "client".into(),
            ip: CLIENT_IP,
            ip6: CLIENT_IP6,
            underlay_port: wiring::plug_into_underlay(
                &underlay, &client_ns, "u-client", CLIENT_IP, CLIENT_IP6,
            )?,
            netns: client_ns,
        };
        wiring::route_client(&client.netns)?;

        let mut nodes = Vec::new();
        for plan in &NODES {
            nodes.push(Node::create(
                plan, &prefix, &underlay, &cgroup, &bpffs, &state,
            )?);
        }

        let mut pods = Vec::new();
        for plan in &PODS {
            let node = nodes
                .iter()
                .find(|n| n.name == plan.node)
                .expect("pod table names a known node");
            let netns = Netns::create(&format!("{prefix}-{}", plan.name))?;
            base_sysctls(&netns, false)?;
            wiring::wire_pod(node, &netns, plan)
                .with_context(|| format!("wiring {} to {}", plan.name, plan.node))?;
            pods.push(Pod {
                name: plan.name.into(),
                ip: plan.ip,
                ip6: plan.ip6,
                node: plan.node.into(),
                netns,
                node_iface: plan.node_iface.into(),
            });
        }

        let hosts = [&client.netns]
            .into_iter()
            .chain(nodes.iter().map(|n| &n.netns))
            .chain(pods.iter().map(|p| &p.netns));
        for netns in hosts {
            wiring::wait_for_addresses(netns)?;
        }

        Ok(Cluster {
            servers: BTreeMap::new(),
            prefix,
            pods,
            nodes,
            client,
            underlay,
            cgroup,
            bpffs,
            state,
        })
    }

    /// The `sl-<pid>-<start>-<n>` prefix of every name this cluster made (see [`unique`]).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn underlay(&self) -> &Netns {
        &self.underlay
    }

    pub fn client(&self) -> &Host {
        &self.client
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node called `name` (`node1`, `node2`); panics if there is none.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name:?} in the test cluster"))
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The pod called `name` (`pod-1a`, `pod-1b`, `pod-2a`); panics if there is none.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name:?} in the test cluster"))
    }

    /// The pods on node `node`.
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods.iter().filter(move |p| p.node == node)
    }

    /// The node pod `pod` runs on.
    pub fn node_of(&self, pod: &str) -> &Node {
        self.node(&self.pod(pod).node)
    }

    /// Names of every namespace this cluster made.
    pub fn netns_names(&self) -> Vec<String> {
        let mut names = vec![
            self.underlay.name().to_owned(),
            self.client.netns.name().to_owned(),
        ];
        names.extend(self.nodes.iter().map(|n| n.netns.name().to_owned()));
        names.extend(self.pods.iter().map(|p| p.netns.name().to_owned()));
        names
    }

    /// The cluster's parent cgroup (the node cgroups are its children).
    pub fn cgroup_root(&self) -> &Path {
        self.cgroup.path()
    }

    /// Where the cluster's private bpffs is mounted (the node pin dirs are inside).
    pub fn bpffs_dir(&self) -> &Path {
        self.bpffs.path()
    }

    /// The parent of the nodes' state dirs.
    pub fn state_root(&self) -> &Path {
        self.state.path()
    }

    /// The bridge-side veth of each node's eth0, in the underlay namespace:
    /// `[("node1", "u-node1"), ("node2", "u-node2")]`. `XDP_TX` out of a node's eth0 only
    /// arrives if this interface has an XDP program (see [`Cluster::attach_underlay_xdp_pass`]).
    pub fn underlay_node_ports(&self) -> Vec<(&str, &str)> {
        self.nodes
            .iter()
            .map(|n| (n.name.as_str(), n.underlay_port.as_str()))
            .collect()
    }

    /// Puts an `XDP_PASS` program (native mode) on every node's bridge-side port, so `XDP_TX`
    /// from the nodes' eth0 reaches the bridge. Idempotent.
    pub fn attach_underlay_xdp_pass(&self) -> Result<()> {
        let pin = self.bpffs.path().join("underlay_xdp_pass");
        if !pin.exists() {
            crate::xdp_pass::load_and_pin(&pin)?;
        }
        let pin = pin.to_str().context("bpffs path is not UTF-8")?;
        for (_, port) in self.underlay_node_ports() {
            // -force: replace what is there, so this is idempotent.
            self.underlay.ip(&[
                "-force", "link", "set", "dev", port, "xdpdrv", "pinned", pin,
            ])?;
        }
        Ok(())
    }

    /// Removes the XDP programs from the nodes' bridge-side ports again.
    pub fn detach_underlay_xdp(&self) -> Result<()> {
        for (_, port) in self.underlay_node_ports() {
            self.underlay
                .ip(&["link", "set", "dev", port, "xdpdrv", "off"])?;
        }
        Ok(())
    }
}
