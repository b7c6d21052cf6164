//! Wiring the cluster's namespaces: sysctls, the underlay bridge and veths, pod veths, routes.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    addresses::{
        NODES, POD_GATEWAY, POD_GATEWAY6, PodPlan, SERVICE_CIDR, SERVICE_CIDR6, UNDERLAY_PREFIX,
        UNDERLAY_PREFIX6,
    },
    netns::Netns,
    topology::Node,
};

/// How long the addresses of a new cluster may stay tentative (DAD is off: they never should).
const ADDRESSES_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates `br0` in the underlay namespace.
pub(crate) fn underlay_bridge(underlay: &Netns) -> Result<()> {
    // A pure L2 switch: no addresses, no IPv6 chatter of its own. It forwards IPv6 frames
    // all the same; without multicast snooping it floods neighbour discovery to every port
    // instead of relying on MLD reports it may have missed.
    underlay.sysctl_if_present("net.ipv6.conf.all.disable_ipv6", "1")?;
    underlay.sysctl_if_present("net.ipv6.conf.default.disable_ipv6", "1")?;
    underlay.ip(&[
        "link",
        "add",
        "br0",
        "type",
        "bridge",
        "stp_state",
        "0",
        "mcast_snooping",
        "0",
    ])?;
    underlay.ip(&["link", "set", "br0", "up"]).map(drop)
}

/// The client's routes: both Service CIDRs via node1, each node's pod ranges via that node.
pub(crate) fn route_client(client: &Netns) -> Result<()> {
    let routes = [
        (SERVICE_CIDR, NODES[0].ip.to_string()),
        (SERVICE_CIDR6, NODES[0].ip6.to_string()),
    ]
    .into_iter()
    .chain(NODES.iter().flat_map(|node| {
        [
            (node.pod_cidr, node.ip.to_string()),
            (node.pod_cidr6, node.ip6.to_string()),
        ]
    }));
    for (cidr, via) in routes {
        client.ip(&["route", "add", cidr, "via", &via])?;
    }
    Ok(())
}

/// Node `name`'s routes to the other nodes' pod ranges, over the underlay.
pub(crate) fn route_node(netns: &Netns, name: &str) -> Result<()> {
    for other in NODES.iter().filter(|other| other.name != name) {
        netns.ip(&["route", "add", other.pod_cidr, "via", &other.ip.to_string()])?;
        netns.ip(&[
            "route",
            "add",
            other.pod_cidr6,
            "via",
            &other.ip6.to_string(),
        ])?;
    }
    Ok(())
}

/// Settings that must not depend on what the host's root namespace happens to use (new
/// namespaces inherit some IPv4 defaults from it).
pub(crate) fn base_sysctls(ns: &Netns, node: bool) -> Result<()> {
    // Forwarding first: changing it resets some per-device settings.
    let forwarding = if node { "1" } else { "0" };
    ns.sysctl("net.ipv4.ip_forward", forwarding)?;
    for scope in ["all", "default"] {
        ns.sysctl(&format!("net.ipv6.conf.{scope}.forwarding"), forwarding)?;
    }
    for scope in ["all", "default"] {
        ns.sysctl(&format!("net.ipv4.conf.{scope}.rp_filter"), "0")?;
        // Nodes forward client→node2-pod traffic out the interface it came in on; a
        // redirect would teach the client to bypass node1.
        ns.sysctl(&format!("net.ipv4.conf.{scope}.send_redirects"), "0")?;
        ns.sysctl(&format!("net.ipv4.conf.{scope}.accept_redirects"), "0")?;
        // IPv6 has no send_redirects: nobody takes one instead.
        ns.sysctl(&format!("net.ipv6.conf.{scope}.accept_redirects"), "0")?;
        // Addresses are usable at once: no duplicate address detection.
        ns.sysctl(&format!("net.ipv6.conf.{scope}.accept_dad"), "0")?;
        // Routes are the harness's alone: no router advertisements, no autoconfiguration.
        ns.sysctl(&format!("net.ipv6.conf.{scope}.accept_ra"), "0")?;
        ns.sysctl(&format!("net.ipv6.conf.{scope}.autoconf"), "0")?;
    }
    Ok(())
}

/// `ip -6 addr add ADDR dev IFACE nodad`.
fn add_address6(ns: &Netns, addr: &str, iface: &str) -> Result<()> {
    ns.ip(&["-6", "addr", "add", addr, "dev", iface, "nodad"])
        .map(drop)
}

/// Waits until no IPv6 address in `ns` is tentative; fails on one whose DAD failed.
pub(crate) fn wait_for_addresses(ns: &Netns) -> Result<()> {
    let deadline = Instant::now() + ADDRESSES_READY_TIMEOUT;
    loop {
        let failed = ns.ip(&["-6", "-o", "addr", "show", "dadfailed"])?;
        anyhow::ensure!(
            failed.trim().is_empty(),
            "duplicate address detection failed in {}: {failed}",
            ns.name()
        );
        let tentative = ns.ip(&["-6", "-o", "addr", "show", "tentative"])?;
        if tentative.trim().is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "IPv6 addresses in {} still tentative after {ADDRESSES_READY_TIMEOUT:?}: {tentative}",
            ns.name()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Creates veth `eth0` in `ns` with `ip/24` and `ip6/64`, its peer `port` enslaved to br0 in
/// the underlay.
pub(crate) fn plug_into_underlay(
    underlay: &Netns,
    ns: &Netns,
    port: &str,
    ip: Ipv4Addr,
    ip6: Ipv6Addr,
) -> Result<String> {
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
    add_address6(ns, &format!("{ip6}/{UNDERLAY_PREFIX6}"), "eth0")?;
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

pub(crate) fn wire_pod(node: &Node, pod_ns: &Netns, plan: &PodPlan) -> Result<()> {
    let node_iface = plan.node_iface;
    let (ip, ip6) = (plan.ip, plan.ip6);
    let gateway = POD_GATEWAY.to_string();
    let gateway6 = POD_GATEWAY6.to_string();
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
    // Beside the veth's own (generated) link-local address.
    add_address6(&node.netns, &format!("{gateway6}/64"), node_iface)?;
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
    node.netns.ip(&[
        "-6",
        "route",
        "add",
        &format!("{ip6}/128"),
        "dev",
        node_iface,
        "src",
        &node.ip6.to_string(),
    ])?;
    pod_ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
    add_address6(pod_ns, &format!("{ip6}/128"), "eth0")?;
    pod_ns.ip(&["link", "set", "eth0", "up"])?;
    pod_ns.ip(&[
        "route", "add", "default", "via", &gateway, "dev", "eth0", "onlink",
    ])?;
    // A link-local gateway only means something on one interface: `dev` is required.
    pod_ns.ip(&[
        "-6", "route", "add", "default", "via", &gateway6, "dev", "eth0",
    ])?;
    Ok(())
}
