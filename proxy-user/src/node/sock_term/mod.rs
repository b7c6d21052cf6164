//! Socket termination: after a sync, destroys the connected UDP sockets the socket LB sent to a
//! backend that no frontend uses any more, so clients reconnect instead of sending into a void.
//!
//! A connected UDP socket is translated once, at `connect()`; its later sends pass no hook. When
//! its backend goes, kube-proxy would flush the UDP conntrack entries; Sluice has none to flush
//! on this path, so it does what Cilium's socket LB does: it walks the UDP sockets with a BPF
//! iterator and calls `bpf_sock_destroy` on the ones connected to the removed backend whose
//! translation it made (their cookie and backend are in `SOCK_RNAT_V1`, or `SOCK_RNAT6_V1` for
//! an IPv6 socket to an IPv6 backend). The application's next receive fails with ECONNABORTED,
//! a send with EDESTADDRREQ (the socket is no longer connected), and it reconnects. Removed
//! IPv4 backends go to `SOCK_TERM_V1`, IPv6 ones to `SOCK_TERM6_V1`; an `AF_INET6` socket
//! connected to an IPv4-mapped service address is matched by its IPv4 backend.

mod udp_backends;

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use proxy_common::{
    IPPROTO_UDP, ServiceKeyOf, ServiceValue, SockTermKey, SockTermKey6, SockTermRecord6, map_sizes,
    net::{ip_from_net, ip_to_net, ip6_from_net, ip6_to_net, port_from_net, port_to_net},
};
use tracing::{debug, info, warn};

use self::udp_backends::UdpBackends;
use crate::{
    datapath::{Maps, netns, udp_sockets::SockTermProgram},
    reconcile::{BackendAddr, Plan, PlanChanges, tables::Table},
};

/// Tracks which backends UDP frontends use and, after each sync, ends the sockets of those gone.
pub struct SockTerminator {
    program: Option<SockTermProgram>,
    /// Where the socket hooks are attached: the processes whose sockets may be translated.
    cgroup: PathBuf,
    /// The backends of every UDP frontend as of the last successful sync.
    serving: UdpBackends,
}

impl SockTerminator {
    /// Starts from what the maps hold, so a backend removed while the daemon was down still has
    /// its sockets ended after the first sync. Without `program` it only keeps track.
    pub fn new(program: Option<SockTermProgram>, maps: &Maps, cgroup: &Path) -> Result<Self> {
        Ok(Self {
            program,
            cgroup: cgroup.to_path_buf(),
            serving: UdpBackends::from_maps(udp_backends_in_maps(maps)?),
        })
    }

    /// Called once `plan` is in the maps: destroys the sockets connected to UDP backends that
    /// were in a frontend before and are in none now. `changes`: what changed since the plan
    /// of the last call (`None`: anything may have). Returns how many sockets it destroyed.
    /// Failures are logged, not returned: the sync itself succeeded.
    pub fn after_apply(&mut self, plan: &Plan, changes: Option<&PlanChanges>) -> u64 {
        let gone = self.serving.update(plan, changes);
        if gone.is_empty() {
            return 0;
        }
        let Some(program) = self.program.as_mut() else {
            debug!(
                backends = gone.len(),
                "UDP backends removed; socket termination is off"
            );
            return 0;
        };
        let mut destroyed = 0u64;
        for batch in gone.chunks(map_sizes::SOCK_TERM as usize) {
            match terminate(program, &self.cgroup, batch) {
                Ok(records) => destroyed += records,
                Err(err) => warn!("closing UDP sockets of removed backends: {err:#}"),
            }
        }
        destroyed
    }
}

/// One run over every namespace of the cgroup for up to `SOCK_TERM` backends; returns how many
/// sockets were destroyed.
fn terminate(
    program: &mut SockTermProgram,
    cgroup: &Path,
    backends: &[BackendAddr],
) -> Result<u64> {
    let mut keys = Vec::new();
    let mut keys6 = Vec::new();
    for backend in backends {
        let port = port_to_net(backend.port);
        match backend.addr {
            IpAddr::V4(addr) => keys.push(SockTermKey {
                addr: ip_to_net(addr),
                port,
                _pad: 0,
            }),
            IpAddr::V6(addr) => keys6.push(SockTermKey6 {
                addr: ip6_to_net(addr),
                port,
                _pad: 0,
            }),
        }
    }
    let written = write_targets(program, &keys, &keys6);
    let result = written.and_then(|()| run_everywhere(program, cgroup));
    for key in &keys {
        // Left behind, a key would only make a later run look at that backend again.
        let _ = program.targets.remove(key);
    }
    for key in &keys6 {
        let _ = program.targets6.remove(key);
    }
    result
}

fn write_targets(
    program: &mut SockTermProgram,
    keys: &[SockTermKey],
    keys6: &[SockTermKey6],
) -> Result<()> {
    for key in keys {
        program
            .targets
            .insert(key, &1, 0)
            .context("write the socket-termination map")?;
    }
    for key in keys6 {
        program
            .targets6
            .insert(key, &1, 0)
            .context("write the IPv6 socket-termination map")?;
    }
    Ok(())
}

fn run_everywhere(program: &SockTermProgram, cgroup: &Path) -> Result<u64> {
    let mut destroyed = 0;
    for ns in netns::namespaces_of(cgroup) {
        let records = program
            .run_in(&ns.file)
            .with_context(|| format!("in network namespace net:[{}]", ns.inode))?;
        // Counted by cookie: an iterator may visit a socket twice when it resumes a bucket.
        let mut seen = BTreeSet::new();
        for record in records.iter().filter(|r| seen.insert(r.cookie)) {
            log_destroyed(record, ns.inode);
        }
        destroyed += seen.len() as u64;
    }
    Ok(destroyed)
}

fn log_destroyed(record: &SockTermRecord6, netns: u64) {
    // IPv4 sockets, and IPv6 ones connected to a mapped IPv4 address, come as `::ffff:a.b.c.d`.
    let addr = |addr| IpAddr::V6(ip6_from_net(addr)).to_canonical();
    let backend = SocketAddr::new(
        addr(record.backend_addr),
        port_from_net(record.backend_port),
    );
    let service = SocketAddr::new(
        addr(record.service_addr),
        port_from_net(record.service_port),
    );
    info!(
        %service,
        %backend,
        cookie = record.cookie,
        netns = format!("net:[{netns}]"),
        "closed a connected UDP socket whose backend was removed"
    );
}

/// The backend ids in the backend slots of one family's UDP frontends.
fn udp_backend_ids<A>(
    services: &dyn Table<ServiceKeyOf<A>, ServiceValue>,
) -> Result<BTreeSet<u32>> {
    Ok(services
        .entries()?
        .into_iter()
        .filter(|(key, _)| key.proto == IPPROTO_UDP && key.slot != 0)
        .map(|(_, value)| value.backend_id)
        .collect())
}

/// The backends the maps' UDP frontends of both families use.
fn udp_backends_in_maps(maps: &Maps) -> Result<BTreeSet<BackendAddr>> {
    let ids = udp_backend_ids(&maps.services).context("read the services map")?;
    let ids6 = udp_backend_ids(&maps.services6).context("read the IPv6 services map")?;
    let mut backends = BTreeSet::new();
    for id in ids {
        if let Ok(backend) = maps.backends.get(&id, 0) {
            backends.insert(BackendAddr {
                addr: ip_from_net(backend.addr).into(),
                port: port_from_net(backend.port),
            });
        }
    }
    for id in ids6 {
        if let Ok(backend) = maps.backends6.get(&id, 0) {
            backends.insert(BackendAddr {
                addr: ip6_from_net(backend.addr).into(),
                port: port_from_net(backend.port),
            });
        }
    }
    Ok(backends)
}
