//! The datapath under test: the embedded eBPF object loaded with map sizes for the scale being
//! measured, inside a network namespace the bench created, and synthetic service tables
//! written with batched updates.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray},
    programs::{SchedClassifier, Xdp},
};
use proxy_common::{
    BACKEND_F_LOCAL, Backend, Backend6, CONFIG_F_COUNTERS, Config, NODE_ADDR_F_PRIMARY, NodeAddr,
    SVC_F_EXTERNAL, SVC_F_NODEPORT, ServiceKey, ServiceKey6, ServiceValue, map_names,
    net::ip6_to_net, program_names, stats::Traffic,
};
use proxy_tests::isolated_netns::IsolatedNetns;

use crate::sys;

pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 1);
pub const NODE_PORT: u16 = 30080;
/// The NodePort of the remote path: its one backend is a pod on another node, reached through
/// the gateway 198.18.0.2 on `sl0` (SNAT, FIB lookup, `XDP_TX`).
pub const REMOTE_NODE_PORT: u16 = 30081;
pub const REMOTE_BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 5, 2), 8080);
pub const IPPROTO_TCP: u8 = 6;

/// The measured NodePort is service 0; services 1.. are ClusterIPs that only fill the tables.
/// The cluster IP of service `i` (198.19.0.0/16, port 80 + i / 65536).
#[expect(
    clippy::cast_possible_truncation,
    reason = "the host part is `% 65_536`; the port part stays small for any table that fits"
)]
pub fn cluster_frontend(i: usize) -> SocketAddrV4 {
    let ip = u32::from(Ipv4Addr::new(198, 19, 0, 0)) + (i % 65_536) as u32;
    SocketAddrV4::new(Ipv4Addr::from(ip), 80 + (i / 65_536) as u16)
}

/// Pod address of backend `k` (198.18.128.0/17).
#[expect(
    clippy::cast_possible_truncation,
    reason = "the host part is `% 32_768`; the port part stays small for any table that fits"
)]
pub fn pod_addr(k: usize) -> SocketAddrV4 {
    let ip = u32::from(Ipv4Addr::new(198, 18, 128, 0)) + (k % 32_768) as u32;
    SocketAddrV4::new(Ipv4Addr::from(ip), 8080 + (k / 32_768) as u16)
}

/// Most distinct backends a table gets: pods are shared by services beyond this.
pub const BACKEND_POOL: usize = 1_000_000;

/// A network namespace with the node interface `sl0` (198.18.0.1/24) and the eBPF object.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub sl0: u32,
    // Dropped last: programs and maps first, then the namespace.
    _netns: IsolatedNetns,
}

/// Map sizes for `services` services of `endpoints` endpoints each, and `flows` conntrack flows.
pub fn sizes(services: usize, endpoints: usize, flows: usize) -> Result<[(&'static str, u32); 9]> {
    let entries = |n: usize| {
        u32::try_from(n).with_context(|| format!("{n} map entries: more than a map can hold"))
    };
    let slots = entries(services * (endpoints + 1) + 1024)?;
    let backends = entries((services * endpoints).min(BACKEND_POOL) + endpoints + 1024)?;
    let per_service = entries(services + 1024)?;
    Ok([
        (map_names::SERVICES, slots),
        (map_names::BACKENDS, backends),
        (map_names::SERVICE_META, per_service),
        // Counters exist per frontend and per backend, affinity members per slot.
        (map_names::SERVICE_STATS, per_service),
        (map_names::BACKEND_STATS, backends),
        (map_names::AFFINITY_MATCH, slots),
        (map_names::CONNTRACK, entries(2 * flows + 4096)?),
        (map_names::CONNTRACK_ESTABLISHED, entries(2 * flows + 4096)?),
        (map_names::SOCK_REV_NAT, 1024),
    ])
}

impl Loaded {
    /// Enters a fresh namespace, makes `sl0`, loads the object with `sizes` and configures it.
    pub fn new(sizes: &[(&str, u32)]) -> Result<Self> {
        let netns = IsolatedNetns::enter().context("create a network namespace (needs root)")?;
        // The frames are addressed to this MAC (proxy_tests::packet::NODE_MAC).
        netns.ip("link add sl0 address 02:00:00:00:00:01 type veth peer name sl1");
        netns.ip("link set sl0 up");
        netns.ip("link set sl1 up");
        netns.ip("addr add 198.18.0.1/24 dev sl0");
        netns.sysctl("net.ipv4.ip_forward", "1");
        // The remote backend's route, its next hop resolved (the FIB lookup succeeds).
        netns.ip("route add 198.18.5.0/24 via 198.18.0.2 dev sl0");
        netns.ip("neigh replace 198.18.0.2 lladdr 02:00:00:00:00:02 dev sl0 nud permanent");
        Self::with_netns(netns, sizes)
    }

    /// Loads into `netns` (the current thread's), which already has `sl0`.
    pub fn with_netns(netns: IsolatedNetns, sizes: &[(&str, u32)]) -> Result<Self> {
        let sl0 = netns.ifindex("sl0");
        let mut loader = EbpfLoader::new();
        for &(name, size) in sizes {
            loader.map_max_entries(name, size);
        }
        let mut ebpf = loader
            .load(proxy_user::EBPF_OBJECT)
            .context("load the eBPF object")?;
        let mut config: Array<_, Config> = Array::try_from(
            ebpf.map_mut(map_names::CONFIG)
                .context("the object has no config map")?,
        )?;
        config.set(
            0,
            &Config {
                snat_addr: u32::from_ne_bytes(NODE_IP.octets()),
                snat_port_min: 61_000,
                snat_port_max: 65_535,
                // As the daemon runs it: counting on.
                flags: CONFIG_F_COUNTERS,
                log_level: 0,
            },
            0,
        )?;
        let fd = sys::map_fd(&ebpf, map_names::NODE_ADDRS)?;
        sys::update_batch(
            fd,
            &[u32::from_ne_bytes(NODE_IP.octets())],
            &[NodeAddr {
                flags: NODE_ADDR_F_PRIMARY,
            }],
        )?;
        Ok(Self {
            ebpf,
            sl0,
            _netns: netns,
        })
    }

    /// Switches a `CONFIG_F_*` flag of the datapath on or off (the counters, to measure their
    /// cost; `XDP_TX`, for the remote path).
    pub fn set_flag(&mut self, flag: u32, on: bool) -> Result<()> {
        let mut config: Array<_, Config> = Array::try_from(
            self.ebpf
                .map_mut(map_names::CONFIG)
                .context("the object has no config map")?,
        )?;
        let mut value = config.get(&0, 0)?;
        value.flags = if on {
            value.flags | flag
        } else {
            value.flags & !flag
        };
        config.set(0, &value, 0)?;
        Ok(())
    }

    /// Zeroes the per-frontend and per-backend counter slots, as the daemon does for new ids.
    pub fn zero_counters(&mut self, service_id: u32, backend_id: u32) -> Result<()> {
        for (map, id) in [
            (map_names::SERVICE_STATS, service_id),
            (map_names::BACKEND_STATS, backend_id),
        ] {
            let mut stats: PerCpuArray<_, Traffic> = PerCpuArray::try_from(
                self.ebpf
                    .map_mut(map)
                    .context("the object has no counter map")?,
            )?;
            stats.set(id, proxy_user::datapath::zero_traffic()?, 0)?;
        }
        Ok(())
    }

    /// Packets counted into a backend's traffic, summed over CPUs.
    pub fn backend_packets_in(&self, backend_id: u32) -> Result<u64> {
        let stats: PerCpuArray<_, Traffic> = PerCpuArray::try_from(
            self.ebpf
                .map(map_names::BACKEND_STATS)
                .context("the object has no counter map")?,
        )?;
        Ok(stats
            .get(&backend_id, 0)?
            .iter()
            .map(|t| t.packets_in)
            .sum())
    }

    pub fn load_xdp(&mut self) -> Result<()> {
        let xdp: &mut Xdp = self
            .ebpf
            .program_mut(program_names::XDP_INGRESS)
            .context("no xdp_ingress")?
            .try_into()?;
        xdp.load().context("the verifier rejected xdp_ingress")?;
        Ok(())
    }

    /// Loads the pod-side path's `tc_from_pod` (run, not attached).
    pub fn load_from_pod(&mut self) -> Result<()> {
        let tc: &mut SchedClassifier = self
            .ebpf
            .program_mut(program_names::TC_FROM_POD)
            .context("no tc_from_pod")?
            .try_into()?;
        tc.load().context("the verifier rejected tc_from_pod")?;
        Ok(())
    }

    pub fn tc_from_pod_fd(&self) -> Result<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        let tc: &SchedClassifier = self
            .ebpf
            .program(program_names::TC_FROM_POD)
            .context("no tc_from_pod")?
            .try_into()?;
        Ok(tc.fd()?.as_fd())
    }

    pub fn xdp_fd(&self) -> Result<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        let xdp: &Xdp = self
            .ebpf
            .program(program_names::XDP_INGRESS)
            .context("no xdp_ingress")?
            .try_into()?;
        Ok(xdp.fd()?.as_fd())
    }

    /// Writes `services` services of `endpoints` endpoints: service 0 is the NodePort
    /// 198.18.0.1:30080 whose backends are `nodeport_backends`; the rest are ClusterIPs.
    pub fn fill(
        &mut self,
        services: usize,
        endpoints: usize,
        nodeport_backends: &[SocketAddrV4],
    ) -> Result<()> {
        let pool = (services * endpoints).clamp(1, BACKEND_POOL);
        let mut backend_ids = Vec::with_capacity(pool + endpoints);
        let mut backends = Vec::with_capacity(pool + endpoints);
        for k in 0..pool {
            backend_ids.push(pool_id(k));
            backends.push(backend(pod_addr(k), 0));
        }
        let nodeport_first = pool_id(pool);
        for (id, addr) in (nodeport_first..).zip(nodeport_backends) {
            backend_ids.push(id);
            backends.push(backend(*addr, BACKEND_F_LOCAL));
        }
        sys::update_batch(
            sys::map_fd(&self.ebpf, map_names::BACKENDS)?,
            &backend_ids,
            &backends,
        )
        .context("write the backends")?;

        let mut keys = Vec::with_capacity(services * (endpoints + 1));
        let mut values = Vec::with_capacity(services * (endpoints + 1));
        let mut heads = (Vec::with_capacity(services), Vec::with_capacity(services));
        for (i, service_id) in (0..services).zip(1..) {
            let (frontend, flags, ids): (SocketAddrV4, u16, Vec<u32>) = if i == 0 {
                let ids = (nodeport_first..).take(nodeport_backends.len()).collect();
                (
                    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, NODE_PORT),
                    SVC_F_NODEPORT | SVC_F_EXTERNAL,
                    ids,
                )
            } else {
                let ids = (0..endpoints)
                    .map(|j| pool_id((i * endpoints + j) % pool))
                    .collect();
                (cluster_frontend(i), SVC_F_EXTERNAL, ids)
            };
            let count = u16::try_from(ids.len()).context("more than 65535 endpoints")?;
            let head = ServiceValue::head(service_id, count, flags, 0);
            for (slot, id) in (1..).zip(&ids) {
                keys.push(service_key(frontend, slot));
                values.push(head.slot(*id));
            }
            heads.0.push(service_key(frontend, 0));
            heads.1.push(head);
        }
        let fd = sys::map_fd(&self.ebpf, map_names::SERVICES)?;
        // Slots before heads, as the daemon orders them.
        sys::update_batch(fd, &keys, &values).context("write the service slots")?;
        sys::update_batch(fd, &heads.0, &heads.1).context("write the service heads")?;
        Ok(())
    }
}

impl Loaded {
    /// Writes the NodePort `REMOTE_NODE_PORT` as frontend `service_id`, its one backend
    /// `REMOTE_BACKEND` (on another node) under `backend_id`.
    pub fn fill_remote_nodeport(&mut self, service_id: u32, backend_id: u32) -> Result<()> {
        sys::update_batch(
            sys::map_fd(&self.ebpf, map_names::BACKENDS)?,
            &[backend_id],
            &[backend(REMOTE_BACKEND, 0)],
        )
        .context("write the remote backend")?;
        let frontend = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, REMOTE_NODE_PORT);
        let head = ServiceValue::head(service_id, 1, SVC_F_NODEPORT | SVC_F_EXTERNAL, 0);
        let fd = sys::map_fd(&self.ebpf, map_names::SERVICES)?;
        sys::update_batch(fd, &[service_key(frontend, 1)], &[head.slot(backend_id)])
            .context("write the remote NodePort's slot")?;
        sys::update_batch(fd, &[service_key(frontend, 0)], &[head])
            .context("write the remote NodePort's head")?;
        Ok(())
    }

    /// Writes the IPv6 NodePort `[::]:30080` served on `NODE_IP6`, with `backends` (local) as
    /// its endpoints under backend ids `first_id..`, as frontend `service_id`: the IPv6
    /// counterpart of service 0 of [`Loaded::fill`].
    pub fn fill6_nodeport(
        &mut self,
        backends: &[SocketAddrV6],
        service_id: u32,
        first_id: u32,
    ) -> Result<()> {
        let fd = sys::map_fd(&self.ebpf, map_names::NODE_ADDRS6)?;
        let flags = NodeAddr {
            flags: NODE_ADDR_F_PRIMARY,
        };
        sys::update_batch(fd, &[ip6_to_net(NODE_IP6)], &[flags])?;
        let ids: Vec<u32> = (first_id..).take(backends.len()).collect();
        let values: Vec<Backend6> = backends
            .iter()
            .map(|addr| Backend6 {
                addr: ip6_to_net(*addr.ip()),
                port: addr.port().to_be(),
                flags: BACKEND_F_LOCAL,
                _pad: 0,
            })
            .collect();
        sys::update_batch(
            sys::map_fd(&self.ebpf, map_names::BACKENDS6)?,
            &ids,
            &values,
        )
        .context("write the IPv6 backends")?;
        let key = |slot: u16| ServiceKey6 {
            addr: [0; 4],
            port: NODE_PORT.to_be(),
            slot,
            proto: IPPROTO_TCP,
            scope: 0,
            _pad: 0,
        };
        let count = u16::try_from(ids.len()).context("more than 65535 endpoints")?;
        let head = ServiceValue::head(service_id, count, SVC_F_NODEPORT | SVC_F_EXTERNAL, 0);
        let keys: Vec<ServiceKey6> = (1..=count).map(key).collect();
        let slots: Vec<ServiceValue> = ids.iter().map(|id| head.slot(*id)).collect();
        let fd = sys::map_fd(&self.ebpf, map_names::SERVICES6)?;
        sys::update_batch(fd, &keys, &slots).context("write the IPv6 service slots")?;
        sys::update_batch(fd, &[key(0)], &[head]).context("write the IPv6 service head")?;
        Ok(())
    }
}

/// The backend id of pool member `k` (ids start at 1).
#[expect(
    clippy::cast_possible_truncation,
    reason = "`k` is at most `BACKEND_POOL` (a million)"
)]
fn pool_id(k: usize) -> u32 {
    k as u32 + 1
}

pub fn backend(addr: SocketAddrV4, flags: u8) -> Backend {
    Backend {
        addr: u32::from_ne_bytes(addr.ip().octets()),
        port: addr.port().to_be(),
        flags,
        _pad: 0,
    }
}

pub fn service_key(frontend: SocketAddrV4, slot: u16) -> ServiceKey {
    ServiceKey::new(frontend, IPPROTO_TCP, 0, slot)
}
