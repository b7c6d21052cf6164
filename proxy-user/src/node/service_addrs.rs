//! The service-address maps (`SVC_ADDR_V1`, `SVC_ADDR6_V1`): every cluster IP and every service
//! CIDR, so the datapath refuses a connection to a cluster IP on a port it does not serve, or
//! to a service CIDR address no Service holds, instead of letting it leak out or time out.
//!
//! Written after each apply, from the plan: a new cluster IP's entry goes in once its
//! frontends are in the maps (before, a call to it would be refused as unserved), a removed
//! one's after its frontends went (in between, a call is refused, which is right: nothing
//! serves it). Kept per frontend, so a sync costs what it changed.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use anyhow::{Context as _, Result};
use aya::maps::lpm_trie::Key;
use ipnet::IpNet;
use proxy_common::{
    SVC_ADDR_CLUSTER_IP, SVC_ADDR_SERVICE_CIDR, SVC_KIND_CLUSTER_IP, SVC_SCOPE_DEFAULT,
    net::{ip_from_net, ip_to_net, ip6_from_net, ip6_to_net},
};
use tracing::warn;

use crate::{
    datapath::Maps,
    reconcile::{Frontend, Plan, PlanChanges},
};

/// What the service-address maps should hold, and how to keep them so.
#[derive(Debug)]
pub struct ServiceAddrs {
    /// `--service-cidr` (standalone mode), or the `ServiceCIDR` objects' (cluster mode).
    cidrs: Vec<IpNet>,
    /// The cluster-IP frontends of the plan last written, by address.
    frontends: HashSet<Frontend>,
    cluster_ips: HashMap<IpAddr, u32>,
    /// False until a full write: the next call compares the whole plan with the maps.
    in_sync: bool,
}

impl ServiceAddrs {
    pub fn new(cidrs: Vec<IpNet>) -> Self {
        Self {
            cidrs,
            frontends: HashSet::new(),
            cluster_ips: HashMap::new(),
            in_sync: false,
        }
    }

    /// Takes the service CIDRs a source knows; a change is written at the next
    /// [`ServiceAddrs::after_apply`].
    pub fn set_cidrs(&mut self, cidrs: &[IpNet]) {
        if self.cidrs != cidrs {
            self.cidrs = cidrs.to_vec();
            self.in_sync = false;
        }
    }

    /// Called once `plan` is in the maps; `changes`: what differs from the last call's plan
    /// (`None`: anything may). Failures are logged: the services themselves are programmed.
    pub fn after_apply(&mut self, maps: &mut Maps, plan: &Plan, changes: Option<&PlanChanges>) {
        let result = match changes.filter(|_| self.in_sync) {
            Some(changes) => self.update(maps, plan, changes),
            None => self.rewrite(maps, plan),
        };
        self.in_sync = result.is_ok();
        if let Err(err) = result {
            warn!(
                "writing the service addresses: {err:#}; calls to unserved ports of cluster IPs \
                 may not be refused"
            );
        }
    }

    fn update(&mut self, maps: &mut Maps, plan: &Plan, changes: &PlanChanges) -> Result<()> {
        for frontend in &changes.frontends {
            let now = is_cluster_ip(plan, frontend);
            if now == self.frontends.contains(frontend) {
                continue;
            }
            if now {
                self.frontends.insert(*frontend);
                let count = self.cluster_ips.entry(frontend.addr).or_default();
                *count += 1;
                if *count == 1 {
                    write(maps, host(frontend.addr), SVC_ADDR_CLUSTER_IP)?;
                }
            } else {
                self.frontends.remove(frontend);
                let count = self.cluster_ips.get_mut(&frontend.addr).expect("counted");
                *count -= 1;
                if *count == 0 {
                    self.cluster_ips.remove(&frontend.addr);
                    remove(maps, host(frontend.addr))?;
                }
            }
        }
        Ok(())
    }

    /// Makes the maps hold exactly the plan's cluster IPs and the CIDRs.
    fn rewrite(&mut self, maps: &mut Maps, plan: &Plan) -> Result<()> {
        self.frontends = plan
            .frontends
            .keys()
            .filter(|frontend| is_cluster_ip(plan, frontend))
            .copied()
            .collect();
        self.cluster_ips.clear();
        for frontend in &self.frontends {
            *self.cluster_ips.entry(frontend.addr).or_default() += 1;
        }
        let mut wanted: BTreeMap<IpNet, u32> = self
            .cidrs
            .iter()
            .map(|cidr| (*cidr, SVC_ADDR_SERVICE_CIDR))
            .collect();
        // A cluster IP's own entry; it is a longer prefix than any CIDR holding it.
        wanted.extend(
            self.cluster_ips
                .keys()
                .map(|ip| (host(*ip), SVC_ADDR_CLUSTER_IP)),
        );
        let held = entries(maps)?;
        for (net, kind) in &wanted {
            if held.get(net) != Some(kind) {
                write(maps, *net, *kind)?;
            }
        }
        for net in held.keys().filter(|net| !wanted.contains_key(net)) {
            remove(maps, *net)?;
        }
        Ok(())
    }
}

fn is_cluster_ip(plan: &Plan, frontend: &Frontend) -> bool {
    frontend.scope == SVC_SCOPE_DEFAULT
        && plan
            .frontends
            .get(frontend)
            .is_some_and(|planned| planned.kind == SVC_KIND_CLUSTER_IP)
}

/// `ip` as a one-address prefix.
fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

fn write(maps: &mut Maps, net: IpNet, kind: u32) -> Result<()> {
    let prefix = u32::from(net.prefix_len());
    match net.network() {
        IpAddr::V4(addr) => maps
            .service_addrs
            .insert(&Key::new(prefix, ip_to_net(addr)), &kind, 0),
        IpAddr::V6(addr) => {
            maps.service_addrs6
                .insert(&Key::new(prefix, ip6_to_net(addr)), &kind, 0)
        }
    }
    .with_context(|| format!("write {net} (is --max-frontends large enough?)"))
}

fn remove(maps: &mut Maps, net: IpNet) -> Result<()> {
    let prefix = u32::from(net.prefix_len());
    match net.network() {
        IpAddr::V4(addr) => maps
            .service_addrs
            .remove(&Key::new(prefix, ip_to_net(addr))),
        IpAddr::V6(addr) => maps
            .service_addrs6
            .remove(&Key::new(prefix, ip6_to_net(addr))),
    }
    .with_context(|| format!("remove {net}"))
}

/// What both maps hold.
fn entries(maps: &Maps) -> Result<BTreeMap<IpNet, u32>> {
    let mut held = BTreeMap::new();
    for entry in &maps.service_addrs {
        let (key, kind) = entry.context("read the service-address map")?;
        let net = IpNet::new(ip_from_net(key.data()).into(), prefix_len(key.prefix_len()))?;
        held.insert(net, kind);
    }
    for entry in &maps.service_addrs6 {
        let (key, kind) = entry.context("read the IPv6 service-address map")?;
        let net = IpNet::new(
            ip6_from_net(key.data()).into(),
            prefix_len(key.prefix_len()),
        )?;
        held.insert(net, kind);
    }
    Ok(held)
}

fn prefix_len(len: u32) -> u8 {
    u8::try_from(len).unwrap_or(u8::MAX)
}
