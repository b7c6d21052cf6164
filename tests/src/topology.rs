//! The test cluster: an underlay bridge, two nodes with their pods, and an off-cluster client.
//!
//! ```text
//!  client 198.18.0.100 ─┐
//!                       ├─ br0 (underlay ns) ─┬─ node1 198.18.0.11 ─┬─ pod-1a 198.18.1.10
//!                       │                     │                     └─ pod-1b 198.18.1.11
//!                       │                     └─ node2 198.18.0.12 ─── pod-2a 198.18.2.10
//! ```
//!
//! Pods are wired like a routed CNI (Calico style): a /32 on the pod's eth0, a default route
//! onlink via the link-local gateway 169.254.1.1 that the node's end of the veth owns, and a
//! /32 route per pod on the node. Nodes route each other's pod /24 over the underlay.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::{bpffs::Bpffs, cgroup::Cgroup, netns::Netns, process::Child, tempdir::TempDir, unique};

/// The Service CIDR: the client routes it via node1, so ClusterIPs are reachable off-node.
pub const SERVICE_CIDR: &str = "198.19.0.0/16";
/// The off-cluster client's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// The underlay's prefix length.
pub const UNDERLAY_PREFIX: u8 = 24;
/// The pods' gateway, owned by every node-side pod veth.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// (name, address, pod CIDR)
const NODES: [(&str, Ipv4Addr, &str); 2] = [
    ("node1", Ipv4Addr::new(198, 18, 0, 11), "198.18.1.0/24"),
    ("node2", Ipv4Addr::new(198, 18, 0, 12), "198.18.2.0/24"),
];
/// (name, address, node, node-side veth)
const PODS: [(&str, Ipv4Addr, &str, &str); 3] = [
    ("pod-1a", Ipv4Addr::new(198, 18, 1, 10), "node1", "v-1a"),
    ("pod-1b", Ipv4Addr::new(198, 18, 1, 11), "node1", "v-1b"),
    ("pod-2a", Ipv4Addr::new(198, 18, 2, 10), "node2", "v-2a"),
];

/// A host on the underlay that is not a node (the off-cluster client).
#[derive(Debug)]
pub struct Host {
    pub name: String,
    pub ip: Ipv4Addr,
    pub netns: Netns,
    /// Its veth peer on the bridge, in the underlay namespace.
    pub underlay_port: String,
}

/// A node: its own netns, cgroup, pin dir and state dir.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub ip: Ipv4Addr,
    /// The pods' range on this node, e.g. `198.18.1.0/24`.
    pub pod_cidr: String,
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
    pub node: String,
    pub netns: Netns,
    /// The node-side end of the pod's veth, in the node's namespace.
    pub node_iface: String,
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
        // A pure L2 switch: no addresses, no IPv6 chatter of its own.
        underlay.sysctl_if_present("net.ipv6.conf.all.disable_ipv6", "1")?;
        underlay.sysctl_if_present("net.ipv6.conf.default.disable_ipv6", "1")?;
        underlay.ip(&["link", "add", "br0", "type", "bridge", "stp_state", "0"])?;
        underlay.ip(&["link", "set", "br0", "up"])?;

        let client_ns = Netns::create(&format!("{prefix}-client"))?;
        base_sysctls(&client_ns, false)?;
        let client = Host {
            name: "client".into(),
            ip: CLIENT_IP,
            underlay_port: plug_into_underlay(&underlay, &client_ns, "u-client", CLIENT_IP)?,
            netns: client_ns,
        };
        let via_node1 = NODES[0].1.to_string();
        client
            .netns
            .ip(&["route", "add", SERVICE_CIDR, "via", &via_node1])?;
        for (_, node_ip, pod_cidr) in NODES {
            client
                .netns
                .ip(&["route", "add", pod_cidr, "via", &node_ip.to_string()])?;
        }

        let mut nodes = Vec::new();
        for (name, ip, pod_cidr) in NODES {
            let netns = Netns::create(&format!("{prefix}-{name}"))?;
            base_sysctls(&netns, true)?;
            let underlay_port = plug_into_underlay(&underlay, &netns, &format!("u-{name}"), ip)?;
            netns.sysctl("net/ipv4/conf/eth0/send_redirects", "0")?;
            for (other, other_ip, other_cidr) in NODES {
                if other != name {
                    netns.ip(&["route", "add", other_cidr, "via", &other_ip.to_string()])?;
                }
            }
            let state_dir = state.path().join(name);
            std::fs::create_dir(&state_dir)?;
            nodes.push(Node {
                name: name.into(),
                ip,
                pod_cidr: pod_cidr.into(),
                netns,
                cgroup: cgroup.create_child(name)?,
                pin_dir: bpffs.subdir(name)?,
                state_dir,
                underlay_port,
            });
        }

        let mut pods = Vec::new();
        for (name, ip, node_name, node_iface) in PODS {
            let node = nodes
                .iter()
                .find(|n| n.name == node_name)
                .expect("pod table names a known node");
            let netns = Netns::create(&format!("{prefix}-{name}"))?;
            base_sysctls(&netns, false)?;
            wire_pod(node, &netns, node_iface, ip)
                .with_context(|| format!("wiring {name} to {node_name}"))?;
            pods.push(Pod {
                name: name.into(),
                ip,
                node: node_name.into(),
                netns,
                node_iface: node_iface.into(),
            });
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

/// Settings that must not depend on what the host's root namespace happens to use (new
/// namespaces inherit some IPv4 defaults from it).
fn base_sysctls(ns: &Netns, node: bool) -> Result<()> {
    // Forwarding first: changing it resets some per-device settings.
    ns.sysctl("net.ipv4.ip_forward", if node { "1" } else { "0" })?;
    for scope in ["all", "default"] {
        ns.sysctl(&format!("net.ipv4.conf.{scope}.rp_filter"), "0")?;
        // Nodes forward client→node2-pod traffic out the interface it came in on; a
        // redirect would teach the client to bypass node1.
        ns.sysctl(&format!("net.ipv4.conf.{scope}.send_redirects"), "0")?;
        ns.sysctl(&format!("net.ipv4.conf.{scope}.accept_redirects"), "0")?;
        // No duplicate address detection delay for link-local IPv6 addresses.
        ns.sysctl_if_present(&format!("net.ipv6.conf.{scope}.accept_dad"), "0")?;
    }
    Ok(())
}

/// Creates veth `eth0` in `ns` with `ip/24`, its peer `port` enslaved to br0 in the underlay.
fn plug_into_underlay(underlay: &Netns, ns: &Netns, port: &str, ip: Ipv4Addr) -> Result<String> {
    underlay.ip(&[
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])?;
    underlay.ip(&["link", "set", port, "master", "br0", "up"])?;
    ns.ip(&[
        "addr",
        "add",
        &format!("{ip}/{UNDERLAY_PREFIX}"),
        "dev",
        "eth0",
    ])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    wire_checksums(ns)?;
    Ok(port.to_owned())
}

/// Makes `eth0` send complete checksums, as every packet on a real wire has. A veth would
/// otherwise hand partially checksummed packets (offload metadata) across the underlay, and a
/// node's `XDP_TX`, which carries no such metadata, would deliver them with bad checksums.
fn wire_checksums(ns: &Netns) -> Result<()> {
    let status = ns.run_in(|| {
        std::process::Command::new("ethtool")
            .args(["-K", "eth0", "tx", "off"])
            .stdout(std::process::Stdio::null())
            .status()
    })?;
    let status = status.context("run ethtool (Debian package ethtool)")?;
    anyhow::ensure!(status.success(), "ethtool -K eth0 tx off failed: {status}");
    Ok(())
}

fn wire_pod(node: &Node, pod_ns: &Netns, node_iface: &str, ip: Ipv4Addr) -> Result<()> {
    let gateway = POD_GATEWAY.to_string();
    node.netns.ip(&[
        "link",
        "add",
        node_iface,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod_ns.name(),
    ])?;
    node.netns
        .sysctl(&format!("net/ipv4/conf/{node_iface}/send_redirects"), "0")?;
    node.netns.ip(&[
        "addr",
        "add",
        &format!("{gateway}/32"),
        "dev",
        node_iface,
        "scope",
        "link",
    ])?;
    node.netns.ip(&["link", "set", node_iface, "up"])?;
    // `src` so the node talks to its pods from its own address, not from the gateway's.
    node.netns.ip(&[
        "route",
        "add",
        &format!("{ip}/32"),
        "dev",
        node_iface,
        "scope",
        "link",
        "src",
        &node.ip.to_string(),
    ])?;
    pod_ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
    pod_ns.ip(&["link", "set", "eth0", "up"])?;
    pod_ns.ip(&[
        "route", "add", "default", "via", &gateway, "dev", "eth0", "onlink",
    ])?;
    Ok(())
}
