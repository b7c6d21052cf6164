//! `Allocator`: cluster IPs and nodePorts for Services that do not name one, stable across
//! restarts through a JSON state file written atomically.
//!
//! A service keeps what it was given as long as it exists and still needs it. New
//! allocations start probing at a hash of the service name, in the upper part of the range
//! first (the lower part is where people pick addresses by hand, as Kubernetes' KEP-3070 and
//! KEP-3668 do), so nodes reading the same manifests usually agree without talking. A manifest
//! that names an address explicitly always wins over an allocation.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{self, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{NodePortRange, ServiceCidrs};
use crate::model::{IpFamily, ServiceName};

const STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    #[error("{}: cannot read the allocation state: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{}: the allocation state is not valid ({source}): fix it, or delete it to start \
         afresh (services without an explicit clusterIP or nodePort then get new ones)",
        path.display()
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: cannot write the allocation state: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// The state file: `{"version":1,"cluster_ips":{"ns/name":"IPv4"},"cluster_ips6":{"ns/name":
/// "IPv6"},"node_ports":{"ns/name":{"http/TCP":30000}}}`. IPv6 allocations sit in a map of
/// their own, written only when there is one, so the IPv4 part reads as before dual-stack
/// (an upgrade keeps every IPv4 allocation, and a v4-only file does not change).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct AllocState {
    version: u32,
    #[serde(default)]
    cluster_ips: BTreeMap<String, Ipv4Addr>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    cluster_ips6: BTreeMap<String, Ipv6Addr>,
    #[serde(default)]
    node_ports: BTreeMap<String, BTreeMap<String, u16>>,
}

/// What one service needs allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AllocRequest {
    pub service: ServiceName,
    /// The families whose cluster IP must be allocated.
    pub cluster_ips: Vec<IpFamily>,
    /// Keys of the ports that need a nodePort (see `port_key`).
    pub node_ports: Vec<String>,
}

/// What was handed out, and what could not be.
#[derive(Clone, Debug, Default)]
pub(crate) struct Assignments {
    pub cluster_ips: BTreeMap<(ServiceName, IpFamily), IpAddr>,
    pub node_ports: BTreeMap<(ServiceName, String), u16>,
    /// Services whose request could not be met, with why.
    pub failures: BTreeMap<ServiceName, String>,
    /// Allocations taken back because a manifest now claims them explicitly.
    pub moved: Vec<(ServiceName, String)>,
}

#[derive(Debug)]
pub struct Allocator {
    path: Option<PathBuf>,
    cidrs: ServiceCidrs,
    /// Where nodePorts are handed out from (`--service-node-port-range`).
    node_ports: NodePortRange,
    state: AllocState,
    dirty: bool,
    /// Hands out nothing: cluster mode, where the API server assigns every address.
    disabled: bool,
}

impl Allocator {
    /// Opens the state file (a missing file is an empty state, created on first `save`).
    pub fn open(
        path: impl Into<PathBuf>,
        service_cidrs: ServiceCidrs,
    ) -> Result<Self, AllocatorError> {
        let path = path.into();
        let state = match fs::read(&path) {
            Ok(bytes) => AllocState::read(&bytes).map_err(|source| AllocatorError::Parse {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => AllocState::default(),
            Err(source) => return Err(AllocatorError::Read { path, source }),
        };
        Ok(Allocator {
            path: Some(path),
            cidrs: service_cidrs,
            node_ports: NodePortRange::DEFAULT,
            state,
            dirty: false,
            disabled: false,
        })
    }

    /// An allocator that remembers nothing (for `sluice validate` and tests).
    pub fn in_memory(service_cidrs: ServiceCidrs) -> Self {
        Allocator {
            path: None,
            cidrs: service_cidrs,
            node_ports: NodePortRange::DEFAULT,
            state: AllocState::default(),
            dirty: false,
            disabled: false,
        }
    }

    /// An in-memory allocator starting from a state file's `bytes`, read as [`Allocator::open`]
    /// reads them (the fuzz targets' way in, with no file).
    pub fn from_state(
        bytes: &[u8],
        service_cidrs: ServiceCidrs,
    ) -> Result<Self, serde_json::Error> {
        Ok(Allocator {
            state: AllocState::read(bytes)?,
            ..Allocator::in_memory(service_cidrs)
        })
    }

    /// An allocator that hands out nothing (cluster mode: the API server assigns cluster IPs
    /// and nodePorts). A Service that asks for one is listed but not programmed.
    pub fn disabled() -> Self {
        Allocator {
            disabled: true,
            ..Allocator::in_memory(ServiceCidrs::any())
        }
    }

    /// Hands out nodePorts from `range` instead of the default 30000-32767; allocations outside
    /// it are given new ones.
    #[must_use]
    pub fn with_node_port_range(self, range: NodePortRange) -> Self {
        Allocator {
            node_ports: range,
            ..self
        }
    }

    pub fn service_cidrs(&self) -> &ServiceCidrs {
        &self.cidrs
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The cluster IP of `family` allocated to `service`, if any.
    pub fn cluster_ip(&self, service: &ServiceName, family: IpFamily) -> Option<IpAddr> {
        self.state.get(&service.to_string(), family)
    }

    /// The nodePort allocated to a port of `service` (`port_key` names the port).
    pub fn node_port(&self, service: &ServiceName, port_key: &str) -> Option<u16> {
        self.state
            .node_ports
            .get(&service.to_string())
            .and_then(|ports| ports.get(port_key))
            .copied()
    }

    /// Whether the state changed since the last `save`.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Meets every request, keeping earlier allocations, never handing out a claimed
    /// address or port, and forgetting allocations nobody requests any more.
    #[expect(
        clippy::too_many_lines,
        reason = "two passes (keep, then hand out) filling the same sets; apart, each would \
                  take seven arguments"
    )]
    pub(crate) fn assign(
        &mut self,
        requests: &[AllocRequest],
        claimed_ips: &BTreeSet<IpAddr>,
        claimed_ports: &BTreeSet<u16>,
    ) -> Assignments {
        let mut out = Assignments::default();
        if self.disabled {
            for request in requests {
                out.failures.insert(
                    request.service.clone(),
                    "the API server gave it no cluster IP or nodePort (sluice allocates none in \
                     cluster mode)"
                        .into(),
                );
            }
            return out;
        }
        let mut next = AllocState {
            version: STATE_VERSION,
            ..AllocState::default()
        };
        let mut used_ips = claimed_ips.clone();
        let mut used_ports = claimed_ports.clone();

        // First keep what services already have, so a new service cannot take it.
        for request in requests {
            let service = request.service.to_string();
            for &family in &request.cluster_ips {
                let Some(ip) = self.state.get(&service, family) else {
                    continue;
                };
                if claimed_ips.contains(&ip) {
                    out.moved.push((
                        request.service.clone(),
                        format!("its allocated cluster IP {ip} is now claimed by a manifest"),
                    ));
                } else if self.usable_ip(ip) && used_ips.insert(ip) {
                    next.insert(service.clone(), ip);
                    out.cluster_ips
                        .insert((request.service.clone(), family), ip);
                }
            }
            for key in &request.node_ports {
                let Some(&port) = self
                    .state
                    .node_ports
                    .get(&service)
                    .and_then(|ports| ports.get(key))
                else {
                    continue;
                };
                if claimed_ports.contains(&port) {
                    out.moved.push((
                        request.service.clone(),
                        format!(
                            "its allocated nodePort {port} ({key}) is now claimed by a manifest"
                        ),
                    ));
                } else if self.node_ports.contains(port) && used_ports.insert(port) {
                    next.node_ports
                        .entry(service.clone())
                        .or_default()
                        .insert(key.clone(), port);
                    out.node_ports
                        .insert((request.service.clone(), key.clone()), port);
                }
            }
        }

        // Then hand out new ones.
        for request in requests {
            let service = request.service.to_string();
            for &family in &request.cluster_ips {
                let slot = (request.service.clone(), family);
                if out.cluster_ips.contains_key(&slot) {
                    continue;
                }
                let Some(cidr) = self.cidrs.of(family) else {
                    out.failures.insert(
                        request.service.clone(),
                        format!(
                            "no {family} service CIDR to allocate from: add one to --service-cidr"
                        ),
                    );
                    continue;
                };
                match pick_ip(cidr, &service, &used_ips) {
                    Some(ip) => {
                        used_ips.insert(ip);
                        next.insert(service.clone(), ip);
                        out.cluster_ips.insert(slot, ip);
                    }
                    None => {
                        out.failures.insert(
                            request.service.clone(),
                            format!(
                                "no free cluster IP left in the service CIDR {cidr}: widen \
                                 --service-cidr or set clusterIP explicitly"
                            ),
                        );
                    }
                }
            }
            for key in &request.node_ports {
                let slot = (request.service.clone(), key.clone());
                if out.node_ports.contains_key(&slot) {
                    continue;
                }
                match pick_node_port(self.node_ports, &format!("{service}/{key}"), &used_ports) {
                    Some(port) => {
                        used_ports.insert(port);
                        next.node_ports
                            .entry(service.clone())
                            .or_default()
                            .insert(key.clone(), port);
                        out.node_ports.insert(slot, port);
                    }
                    None => {
                        out.failures.insert(
                            request.service.clone(),
                            format!(
                                "no free nodePort left in {}: delete unused NodePort \
                                 Services or widen --service-node-port-range",
                                self.node_ports
                            ),
                        );
                    }
                }
            }
        }

        if next != self.state {
            self.state = next;
            self.dirty = true;
        }
        out
    }

    /// Writes the state file if it changed: a temporary file beside it, then a rename, so a
    /// crash leaves either the old or the new state, never half of one.
    pub fn save(&mut self) -> Result<(), AllocatorError> {
        let Some(path) = &self.path else {
            self.dirty = false;
            return Ok(());
        };
        if !self.dirty && path.exists() {
            return Ok(());
        }
        let write_error = |source| AllocatorError::Write {
            path: path.clone(),
            source,
        };
        let mut json = serde_json::to_vec_pretty(&AllocState {
            version: STATE_VERSION,
            ..self.state.clone()
        })
        .map_err(io::Error::other)
        .map_err(write_error)?;
        json.push(b'\n');
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir).map_err(write_error)?;
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = dir.join(tmp_name);
        let result = (|| {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&json)?;
            file.sync_all()?;
            fs::rename(&tmp, path)?;
            // Make the rename itself durable; not every filesystem allows syncing a directory.
            if let Ok(dir) = fs::File::open(&dir) {
                let _ = dir.sync_all();
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(write_error)?;
        self.dirty = false;
        Ok(())
    }

    /// Whether `ip` may be handed out: inside its family's CIDR and not its network (or IPv4
    /// broadcast) address.
    fn usable_ip(&self, ip: IpAddr) -> bool {
        let Some(cidr) = self.cidrs.of(IpFamily::of(ip)) else {
            return false;
        };
        let (first, last) = host_range(cidr);
        (first..=last).contains(&ip_number(ip))
    }
}

impl AllocState {
    /// The state file's content.
    fn read(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    fn get(&self, service: &str, family: IpFamily) -> Option<IpAddr> {
        match family {
            IpFamily::V4 => self.cluster_ips.get(service).copied().map(IpAddr::V4),
            IpFamily::V6 => self.cluster_ips6.get(service).copied().map(IpAddr::V6),
        }
    }

    fn insert(&mut self, service: String, ip: IpAddr) {
        match ip {
            IpAddr::V4(ip) => {
                self.cluster_ips.insert(service, ip);
            }
            IpAddr::V6(ip) => {
                self.cluster_ips6.insert(service, ip);
            }
        }
    }
}

/// An address as a number, so both families' ranges are probed alike.
fn ip_number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(ip) => u128::from(u32::from(ip)),
        IpAddr::V6(ip) => u128::from(ip),
    }
}

/// The address of number `n` in the family of `cidr`.
fn ip_of_number(cidr: IpNet, n: u128) -> Option<IpAddr> {
    Some(match cidr {
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(n).ok()?)),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    })
}

/// First and last assignable address of `cidr` (as numbers): not the network address, nor an
/// IPv4 broadcast address (as Kubernetes' allocator), unless the range is that small.
fn host_range(cidr: IpNet) -> (u128, u128) {
    let network = ip_number(cidr.network());
    let last = ip_number(cidr.broadcast());
    match cidr {
        IpNet::V4(net) if net.prefix_len() >= 31 => (network, last),
        IpNet::V4(_) => (network + 1, last - 1),
        IpNet::V6(net) if net.prefix_len() >= 127 => (network, last),
        IpNet::V6(_) => (network + 1, last),
    }
}

fn pick_ip(cidr: IpNet, key: &str, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    let (first, last) = host_range(cidr);
    let size = last - first + 1;
    // KEP-3070: the first min(max(16, size/16), 256) addresses are for static choices.
    let static_band = (size / 16).clamp(16, 256).min(size / 2);
    pick(key, first, size, static_band, |n| {
        let ip = ip_of_number(cidr, n)?;
        (!used.contains(&ip)).then_some(ip)
    })
}

fn pick_node_port(range: NodePortRange, key: &str, used: &BTreeSet<u16>) -> Option<u16> {
    let size = u128::from(range.size());
    // KEP-3668: the first min(max(16, size/32), 128) ports are for static choices.
    let static_band = (size / 32).clamp(16, 128).min(size / 2);
    pick(key, u128::from(range.min), size, static_band, |n| {
        let port = u16::try_from(n).ok()?;
        (!used.contains(&port)).then_some(port)
    })
}

/// Probes `[start, start+size)` from a hash of `key`: the upper band (after `static_band`)
/// first, then the static band.
fn pick<T>(
    key: &str,
    start: u128,
    size: u128,
    static_band: u128,
    free: impl Fn(u128) -> Option<T>,
) -> Option<T> {
    let hash = u128::from(fnv1a(key));
    let bands = [
        (start + static_band, size - static_band),
        (start, static_band),
    ];
    for (band_start, band_size) in bands {
        if band_size == 0 {
            continue;
        }
        let offset = hash % band_size;
        for i in 0..band_size {
            if let Some(found) = free(band_start + (offset + i) % band_size) {
                return Some(found);
            }
        }
    }
    None
}

/// FNV-1a: a hash that stays the same across Rust releases and machines.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(name: &str) -> ServiceName {
        ServiceName {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn request(service: &str, ports: &[&str]) -> AllocRequest {
        AllocRequest {
            service: name(service),
            cluster_ips: vec![IpFamily::V4],
            node_ports: ports.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    fn cidr() -> ServiceCidrs {
        "198.19.0.0/16".parse().unwrap()
    }

    fn v4(name_: &str) -> (ServiceName, IpFamily) {
        (name(name_), IpFamily::V4)
    }

    #[test]
    fn allocations_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/allocations.json");
        let requests = [request("a", &["http/TCP"]), request("b", &[])];
        let mut allocator = Allocator::open(&path, cidr()).unwrap();
        let first = allocator.assign(&requests, &BTreeSet::new(), &BTreeSet::new());
        assert!(allocator.is_dirty());
        allocator.save().unwrap();
        assert!(!allocator.is_dirty());
        assert!(!dir.path().join("state/allocations.json.tmp").exists());

        // Reopen, and ask in another order with a newcomer first: same answers.
        let mut allocator = Allocator::open(&path, cidr()).unwrap();
        let requests = [
            request("0-new", &["http/TCP"]),
            request("b", &[]),
            request("a", &["http/TCP"]),
        ];
        let second = allocator.assign(&requests, &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(second.cluster_ips[&v4("a")], first.cluster_ips[&v4("a")]);
        assert_eq!(second.cluster_ips[&v4("b")], first.cluster_ips[&v4("b")]);
        let key = (name("a"), "http/TCP".to_owned());
        assert_eq!(second.node_ports[&key], first.node_ports[&key]);
        assert_ne!(
            second.cluster_ips[&v4("0-new")],
            first.cluster_ips[&v4("a")]
        );
    }

    #[test]
    fn allocations_are_in_range_and_avoid_the_static_band() {
        let mut allocator = Allocator::in_memory(cidr());
        let requests: Vec<_> = (0..50)
            .map(|i| request(&format!("s{i}"), &["p/TCP"]))
            .collect();
        let out = allocator.assign(&requests, &BTreeSet::new(), &BTreeSet::new());
        let ips: BTreeSet<_> = out.cluster_ips.values().collect();
        assert_eq!(ips.len(), 50, "all distinct");
        for ip in ips {
            assert!(cidr().of(IpFamily::V4).unwrap().contains(ip));
            let static_band_end = u128::from(u32::from(Ipv4Addr::new(198, 19, 1, 0)));
            assert!(ip_number(*ip) >= static_band_end, "{ip}");
        }
        for port in out.node_ports.values() {
            assert!((30_000 + 86..=32_767).contains(port), "{port}");
        }

        // Another range: every port from it, earlier ones outside it given new ones.
        let range = NodePortRange {
            min: 40_000,
            max: 40_999,
        };
        let mut allocator = allocator.with_node_port_range(range);
        let out = allocator.assign(&requests, &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(out.node_ports.len(), 50);
        for port in out.node_ports.values() {
            assert!((40_000 + 31..=40_999).contains(port), "{port}");
        }
    }

    #[test]
    fn claimed_addresses_are_never_handed_out_and_win_over_allocations() {
        let mut allocator = Allocator::in_memory("198.19.0.0/29".parse().unwrap());
        // /29: hosts .1-.6; claim all but one.
        let claimed: BTreeSet<IpAddr> = [1, 2, 3, 5, 6]
            .map(|n| Ipv4Addr::new(198, 19, 0, n).into())
            .into();
        let out = allocator.assign(&[request("a", &[])], &claimed, &BTreeSet::new());
        assert_eq!(out.cluster_ips[&v4("a")], Ipv4Addr::new(198, 19, 0, 4));

        // Now a manifest claims .4: `a` moves, and with nothing left it fails.
        let claimed: BTreeSet<IpAddr> = (1..=6)
            .map(|n| Ipv4Addr::new(198, 19, 0, n).into())
            .collect();
        let out = allocator.assign(&[request("a", &[])], &claimed, &BTreeSet::new());
        assert_eq!(out.moved.len(), 1);
        assert!(out.failures[&name("a")].contains("no free cluster IP"));
    }

    #[test]
    fn services_that_are_gone_free_their_allocations() {
        let mut allocator = Allocator::in_memory(cidr());
        allocator.assign(
            &[request("a", &["x/UDP"])],
            &BTreeSet::new(),
            &BTreeSet::new(),
        );
        assert!(allocator.cluster_ip(&name("a"), IpFamily::V4).is_some());
        assert!(allocator.node_port(&name("a"), "x/UDP").is_some());
        allocator.assign(&[], &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(allocator.cluster_ip(&name("a"), IpFamily::V4), None);
        assert_eq!(allocator.node_port(&name("a"), "x/UDP"), None);
    }

    #[test]
    fn a_changed_cidr_reallocates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allocations.json");
        let mut allocator = Allocator::open(&path, cidr()).unwrap();
        allocator.assign(&[request("a", &[])], &BTreeSet::new(), &BTreeSet::new());
        allocator.save().unwrap();
        let other: IpNet = "10.96.0.0/12".parse().unwrap();
        let mut allocator = Allocator::open(&path, ServiceCidrs::new([other]).unwrap()).unwrap();
        let out = allocator.assign(&[request("a", &[])], &BTreeSet::new(), &BTreeSet::new());
        assert!(other.contains(&out.cluster_ips[&v4("a")]));
    }

    /// An upgrade to dual-stack keeps every IPv4 allocation of an IPv4-only state file, adds
    /// IPv6 ones beside them, and a v4-only state is written as before.
    #[test]
    fn dual_stack_keeps_the_ipv4_allocations_and_adds_ipv6_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allocations.json");
        let mut allocator = Allocator::open(&path, cidr()).unwrap();
        let before = allocator.assign(&[request("a", &[])], &BTreeSet::new(), &BTreeSet::new());
        allocator.save().unwrap();
        let v4_only = fs::read_to_string(&path).unwrap();
        assert!(!v4_only.contains("cluster_ips6"), "{v4_only}");

        let dual: ServiceCidrs = "198.19.0.0/16,fd00:19::/108".parse().unwrap();
        let mut allocator = Allocator::open(&path, dual.clone()).unwrap();
        let both = AllocRequest {
            cluster_ips: vec![IpFamily::V6, IpFamily::V4],
            ..request("a", &[])
        };
        let after = allocator.assign(&[both], &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(after.cluster_ips[&v4("a")], before.cluster_ips[&v4("a")]);
        let v6 = after.cluster_ips[&(name("a"), IpFamily::V6)];
        assert!(dual.of(IpFamily::V6).unwrap().contains(&v6), "{v6}");
        allocator.save().unwrap();
        let reopened = Allocator::open(&path, dual).unwrap();
        assert_eq!(reopened.cluster_ip(&name("a"), IpFamily::V6), Some(v6));
    }

    #[test]
    fn a_corrupt_state_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allocations.json");
        fs::write(&path, "{not json").unwrap();
        let error = Allocator::open(&path, cidr()).unwrap_err().to_string();
        assert!(error.contains("allocations.json"), "{error}");
        assert!(error.contains("delete it"), "{error}");
    }
}
