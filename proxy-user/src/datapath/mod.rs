//! Loading the eBPF object, pinning its maps and links, and attaching (or atomically replacing)
//! every program, so a restart never drops established connections or the datapath.

pub mod clock;
mod maps;
pub mod netdev;
pub mod netlink_watch;
pub mod netns;
mod node_addrs;
mod pin_dir;
pub mod preflight;
mod programs;
mod sizes;
pub mod snat_ports;
mod sock_btf;
pub(crate) mod sys;
pub mod udp_sockets;
pub mod view;

use std::{
    collections::BTreeSet,
    ffi::CString,
    fs::{self, File},
    net::IpAddr,
    ops::RangeInclusive,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType, Xdp, XdpMode,
        cgroup_sock_addr::CgroupSockAddrLink,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use aya_log::EbpfLogger;
pub use maps::{MapFill, Maps, zero_traffic, zero_traffic_slots};
pub use node_addrs::{NodeAddrs, NodePortAddresses};
use proxy_common::{
    Addr6, CONFIG_F_COUNTERS, CONFIG_F_XDP_TX, Config, Config6, NODE_ADDR_F_PRIMARY, NodeAddr,
    map_names,
    net::{ip_to_net, ip6_to_net},
    program_names,
};
pub use sizes::MapSizes;
pub use sys::{BatchError, lookup_batch, update_batch};
use tracing::{info, warn};

pub use self::programs::ProgramCounts;
use self::{programs::Programs, snat_ports::SnatPorts, udp_sockets::SockTermProgram};
use crate::EBPF_OBJECT;

/// Whether XDP may send rewritten packets straight back out (`XDP_TX` / `XDP_REDIRECT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpTx {
    /// On unless an interface is a veth (whose peer drops `XDP_TX` frames without XDP of its own).
    Auto,
    On,
    Off,
}

/// Where and how to run the datapath.
#[derive(Clone, Debug)]
pub struct DatapathOptions {
    pub pin_dir: PathBuf,
    pub cgroup: PathBuf,
    pub ifaces: Vec<String>,
    /// `--pod-iface-prefix`: interfaces whose name starts with one of these are pods' host
    /// ends, and get the pod-side path (followed as pods come and go).
    pub pod_iface_prefixes: Vec<String>,
    pub xdp_tx: XdpTx,
    /// `--snat-ports`: the source ports of flows SNATed to remote backends.
    pub snat_ports: SnatPorts,
    /// Addresses a NodePort answers on, besides loopback, of either family (the first of each
    /// family is its SNAT source); empty means every local address.
    pub node_ips: Vec<IpAddr>,
    /// `--nodeport-addresses`: which of those NodePorts answer on.
    pub node_port_addresses: NodePortAddresses,
    /// Count traffic, drops and verdicts in the datapath.
    pub counters: bool,
    /// The most verbose kernel log level the programs emit (`LOG_LEVEL_*`; 0: none).
    pub kernel_log_level: u32,
    pub sizes: MapSizes,
}

/// Hooks whose program was swapped inside an existing pinned link, and hooks attached anew;
/// and how their programs were come by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookCounts {
    pub replaced: usize,
    pub attached: usize,
    pub programs: ProgramCounts,
}

/// The loaded datapath. Programs stay attached through their pinned links even after this is
/// dropped; the maps stay pinned too.
pub struct Datapath {
    pub maps: Maps,
    /// How the hooks were installed by this start.
    pub hooks: HookCounts,
    /// Reads the programs' aya-log records (kernel log lines); the daemon takes it.
    pub kernel_log: Option<EbpfLogger<&'static dyn log::Log>>,
    /// The socket-termination program; `None` where the kernel cannot run it.
    pub sock_term: Option<SockTermProgram>,
    /// The node addresses written to the maps: which families this node serves.
    pub node_addrs: NodeAddrs,
    /// The pod interfaces the pod-side path is attached to.
    pod_ifaces: BTreeSet<String>,
    /// `--snat-ports` as resolved at start (the node's sysctls read, an overlap warned about
    /// once), written again with every configuration.
    snat_ports: RangeInclusive<u16>,
    links_dir: PathBuf,
    /// The hook programs, kept open to attach them to new pods.
    programs: Programs,
    /// The loaded object, which [`Programs::get`] takes a program without a pin from (every
    /// hook's is open by the end of `start`, so later attaches only open their pins).
    ebpf: Ebpf,
}

impl Datapath {
    pub fn start(opts: &DatapathOptions) -> Result<Self> {
        let dirs = pin_dir::prepare(&opts.pin_dir)?;

        opts.sizes.validate()?;
        opts.sizes.check_pins(&opts.pin_dir)?;
        let mut loader = EbpfLoader::new();
        opts.sizes.configure(&mut loader);
        let pin_paths: Vec<(&str, PathBuf)> = map_names::ALL
            .iter()
            .map(|&name| (name, opts.pin_dir.join(name)))
            .collect();
        for (name, path) in &pin_paths {
            // Reuses the map already pinned there: conntrack and services survive restarts.
            loader.map_pin_path(name, path.as_path());
        }
        let object = udp_sockets::patch_object(EBPF_OBJECT);
        let mut ebpf = loader
            .load(object.bytes())
            .context("load the eBPF object (needs root or CAP_BPF + CAP_NET_ADMIN)")?;

        let map_pins: Vec<PathBuf> = pin_paths.into_iter().map(|(_, path)| path).collect();
        let mut programs = Programs::new(&dirs.programs, object.bytes(), &map_pins)?;
        let mut hook = Hook {
            ebpf: &mut ebpf,
            programs: &mut programs,
            links: Links {
                dir: dirs.links,
                pinned: BTreeSet::new(),
                counts: HookCounts::default(),
            },
        };
        hook.attach_socket_programs(&opts.cgroup)?;
        for iface in &opts.ifaces {
            hook.attach_iface_programs(iface)?;
        }
        // Verifying them costs start-up time: only when the pod-side path is asked for.
        if !opts.pod_iface_prefixes.is_empty() {
            hook.load_pod_programs()?;
        }
        let pod_ifaces = pod_ifaces(opts)?;
        for iface in &pod_ifaces {
            hook.attach_pod_programs(iface)?;
        }
        let Hook { mut links, .. } = hook;
        links.counts.programs = programs.counts;
        remove_stale_links(&links.dir, &links.pinned)?;
        programs.remove_other_builds()?;
        remove_retired_map_pins(&opts.pin_dir)?;
        let sock_term = SockTermProgram::load(&mut ebpf, &object)
            .inspect_err(|err| {
                warn!("connected UDP sockets to removed backends will not be closed: {err:#}");
            })
            .ok();

        let kernel_log =
            EbpfLogger::init(&mut ebpf).context("read the programs' aya-log ring buffer")?;
        let mut maps = Maps::take_from(&mut ebpf)?;
        let (ephemeral, reserved) = snat_ports::kernel_ports(Path::new("/proc/sys/net/ipv4"))?;
        let (snat_ports, overlap) = opts.snat_ports.resolve(ephemeral, &reserved);
        if let Some(overlap) = overlap {
            warn!("{overlap}");
        }
        let node_addrs = configure(&mut maps, opts, &snat_ports)?;
        Ok(Self {
            maps,
            hooks: links.counts,
            kernel_log: Some(kernel_log),
            sock_term,
            node_addrs,
            pod_ifaces,
            snat_ports,
            links_dir: links.dir,
            programs,
            ebpf,
        })
    }

    /// Attaches the pod-side path to pod interfaces that appeared since the last call, and
    /// unpins the links of those that went away; returns how many of each.
    pub fn refresh_pod_ifaces(&mut self, opts: &DatapathOptions) -> Result<(usize, usize)> {
        let now = pod_ifaces(opts)?;
        let mut hook = Hook {
            ebpf: &mut self.ebpf,
            programs: &mut self.programs,
            links: Links {
                dir: self.links_dir.clone(),
                pinned: BTreeSet::new(),
                counts: HookCounts::default(),
            },
        };
        let mut added = 0;
        for iface in now.difference(&self.pod_ifaces) {
            // A pod deleted between the listing and the attach is not an error.
            match hook.attach_pod_programs(iface) {
                Ok(()) => added += 1,
                Err(err) if !netdev::exists(iface) => {
                    info!(%iface, "pod interface went away before its attach: {err:#}");
                }
                Err(err) => return Err(err),
            }
        }
        let gone: Vec<String> = self.pod_ifaces.difference(&now).cloned().collect();
        for iface in &gone {
            for name in POD_PROGRAMS.map(|(name, _)| name) {
                let path = self.links_dir.join(format!("{name}@{iface}"));
                if let Err(err) = fs::remove_file(&path)
                    && err.kind() != std::io::ErrorKind::NotFound
                {
                    return Err(err).with_context(|| format!("remove {}", path.display()));
                }
            }
        }
        self.pod_ifaces = now;
        Ok((added, gone.len()))
    }

    /// Reads the node's addresses again and writes the NodePort addresses and SNAT sources
    /// they give (after an address change); returns whether they changed.
    pub fn refresh_node_addrs(&mut self, opts: &DatapathOptions) -> Result<bool> {
        let node_addrs = configure(&mut self.maps, opts, &self.snat_ports)?;
        let changed = node_addrs != self.node_addrs;
        self.node_addrs = node_addrs;
        Ok(changed)
    }
}

/// The file system type (`f_type` of statfs) that holds `path`.
fn fs_magic(path: &Path) -> Result<i64> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs only writes into `buf`.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and buf is a valid statfs.
    if unsafe { libc::statfs(c_path.as_ptr(), &raw mut buf) } != 0 {
        bail!(
            "statfs {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    #[allow(
        clippy::useless_conversion,
        reason = "f_type's width differs between targets"
    )]
    Ok(i64::from(buf.f_type))
}

/// The pinned links of this start: where they live, which were asked for, how they were made.
struct Links {
    dir: PathBuf,
    pinned: BTreeSet<String>,
    counts: HookCounts,
}

/// What attaching a hook takes: the programs and the links they run behind.
struct Hook<'a> {
    ebpf: &'a mut Ebpf,
    programs: &'a mut Programs,
    links: Links,
}

impl Hook<'_> {
    fn attach_socket_programs(&mut self, cgroup: &Path) -> Result<()> {
        let cgroup_file = File::open(cgroup)
            .with_context(|| format!("open cgroup {} (--cgroup)", cgroup.display()))?;
        for name in programs::socket_programs() {
            let program: &mut CgroupSockAddr = self.programs.get(self.ebpf, name)?.try_into()?;
            let link_name = format!("{name}@cgroup");
            attach_or_replace(&mut self.links, &link_name, program, |program| {
                // Links always coexist with other programs on the cgroup; the kernel refuses
                // the multi-attach flag on BPF_LINK_CREATE.
                let id = program.attach(&cgroup_file, CgroupAttachMode::Single)?;
                Ok(program.take_link(id)?.try_into()?)
            })
            .with_context(|| format!("attach {name} to cgroup {}", cgroup.display()))?;
            self.links.pinned.insert(link_name);
        }
        Ok(())
    }

    fn attach_iface_programs(&mut self, iface: &str) -> Result<()> {
        // aya takes the interface as a C string (or an index), looked up at each attach.
        let iface_name =
            CString::new(iface).with_context(|| format!("interface name {iface:?} (--iface)"))?;
        let name = program_names::XDP_INGRESS;
        let xdp: &mut Xdp = self.programs.get(self.ebpf, name)?.try_into()?;
        let link_name = format!("{name}@{iface}");
        attach_or_replace(&mut self.links, &link_name, xdp, |xdp| {
            let id = xdp.attach(&iface_name, XdpMode::default())?;
            Ok(xdp.take_link(id)?.try_into()?)
        })
        .with_context(|| format!("attach XDP to {iface} (--iface)"))?;
        self.links.pinned.insert(link_name);

        for (name, direction) in [
            (program_names::TC_INGRESS, TcAttachType::Ingress),
            (program_names::TC_EGRESS, TcAttachType::Egress),
        ] {
            let tc: &mut SchedClassifier = self.programs.get(self.ebpf, name)?.try_into()?;
            let link_name = format!("{name}@{iface}");
            attach_or_replace(&mut self.links, &link_name, tc, |tc| {
                let id = tc.attach(&iface_name, direction)?;
                Ok(tc.take_link(id)?.try_into()?)
            })
            .with_context(|| format!("attach {name} to {iface} (--iface; TCX needs Linux 6.6+)"))?;
            self.links.pinned.insert(link_name);
        }
        Ok(())
    }

    fn load_pod_programs(&mut self) -> Result<()> {
        for (name, _) in POD_PROGRAMS {
            self.programs.get(self.ebpf, name)?;
        }
        Ok(())
    }

    /// Attaches the pod-side path (loaded by [`Self::load_pod_programs`]) to a pod's host-side
    /// interface.
    fn attach_pod_programs(&mut self, iface: &str) -> Result<()> {
        let iface_name =
            CString::new(iface).with_context(|| format!("interface name {iface:?}"))?;
        for (name, direction) in POD_PROGRAMS {
            let tc: &mut SchedClassifier = self.programs.get(self.ebpf, name)?.try_into()?;
            let link_name = format!("{name}@{iface}");
            attach_or_replace(&mut self.links, &link_name, tc, |tc| {
                let id = tc.attach(&iface_name, direction)?;
                Ok(tc.take_link(id)?.try_into()?)
            })
            .with_context(|| {
                format!("attach {name} to pod interface {iface} (--pod-iface-prefix)")
            })?;
            self.links.pinned.insert(link_name);
        }
        Ok(())
    }
}

/// The pod-side programs and where each runs on a pod's host-side interface.
const POD_PROGRAMS: [(&str, TcAttachType); 2] = [
    (program_names::TC_FROM_POD, TcAttachType::Ingress),
    (program_names::TC_TO_POD, TcAttachType::Egress),
];

/// The interfaces of this namespace whose name starts with a `--pod-iface-prefix`, but for
/// the node's own (`--iface`).
fn pod_ifaces(opts: &DatapathOptions) -> Result<BTreeSet<String>> {
    let prefixes = &opts.pod_iface_prefixes;
    if prefixes.is_empty() {
        return Ok(BTreeSet::new());
    }
    let names = netdev::interface_names().context("list the network interfaces")?;
    Ok(names
        .into_iter()
        .filter(|name| {
            prefixes
                .iter()
                .any(|prefix| name.starts_with(prefix.as_str()))
        })
        .filter(|name| !opts.ifaces.contains(name))
        .collect())
}

/// The program types whose links are pinned: aya swaps the program behind such a link
/// atomically (`attach_to_link`, `BPF_LINK_UPDATE`).
trait PinnedHook {
    fn replace(&mut self, link: FdLink) -> Result<()>;
}

macro_rules! pinned_hook {
    ($($program:ty => $link:ty),* $(,)?) => {$(
        impl PinnedHook for $program {
            fn replace(&mut self, link: FdLink) -> Result<()> {
                // The link's type is checked here: another kind of link is an error.
                self.attach_to_link(<$link>::try_from(link)?)?;
                Ok(())
            }
        }
    )*};
}

pinned_hook!(
    Xdp => XdpLink,
    SchedClassifier => SchedClassifierLink,
    CgroupSockAddr => CgroupSockAddrLink,
);

/// Swaps `program` in behind an existing pinned link, so the hook never runs without one;
/// attaches it and pins a new link when there is none (or the old one's target is gone).
fn attach_or_replace<P: PinnedHook>(
    links: &mut Links,
    link_name: &str,
    program: &mut P,
    attach: impl FnOnce(&mut P) -> Result<FdLink>,
) -> Result<()> {
    let path = links.dir.join(link_name);
    if path.exists() {
        let replaced = PinnedLink::from_pin(&path)
            .map_err(anyhow::Error::from)
            .and_then(|link| program.replace(link.into()));
        match replaced {
            Ok(()) => {
                links.counts.replaced += 1;
                return Ok(());
            }
            Err(err) => {
                let err = format!("{err:#}");
                warn!(link = %path.display(), %err, "pinned link unusable; attaching anew");
                fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
            }
        }
    }
    attach(program)?
        .pin(&path)
        .with_context(|| format!("pin link at {}", path.display()))?;
    links.counts.attached += 1;
    Ok(())
}

/// Unpins links of hooks no longer asked for (an interface dropped from --iface): detaches them.
fn remove_stale_links(links_dir: &Path, wanted: &BTreeSet<String>) -> Result<()> {
    for entry in fs::read_dir(links_dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !wanted.contains(&name) {
            info!(link = %name, "detaching a hook no longer configured");
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Unpins maps of an earlier version whose layout changed (a new `_V<n>` name replaced them), once
/// the programs that used them are replaced: nothing reads them any more. Only names shaped
/// like ours are touched.
fn remove_retired_map_pins(pin_dir: &Path) -> Result<()> {
    for entry in fs::read_dir(pin_dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_file()
            && is_map_pin_name(&name)
            && !map_names::ALL.contains(&name.as_str())
        {
            info!(map = %name, "unpinning a map this version no longer uses");
            fs::remove_file(entry.path())
                .with_context(|| format!("remove {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// `NAME_V<digits>` with NAME in capitals and underscores, as every Sluice map is called.
fn is_map_pin_name(name: &str) -> bool {
    let Some((base, version)) = name.rsplit_once("_V") else {
        return false;
    };
    !base.is_empty()
        && base.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        && !version.is_empty()
        && version.chars().all(|c| c.is_ascii_digit())
}

/// Writes the node addresses of both families and the datapath configuration; returns the
/// addresses written.
fn configure(
    maps: &mut Maps,
    opts: &DatapathOptions,
    snat_range: &RangeInclusive<u16>,
) -> Result<NodeAddrs> {
    let local = netdev::ip_addresses().context("list the node's addresses")?;
    let node_addrs = NodeAddrs::choose(
        &opts.node_ips,
        &local,
        opts.ifaces.first().map(String::as_str),
    )
    .with_node_ports(&opts.node_port_addresses);
    let flags = |addr: IpAddr| NodeAddr {
        flags: if node_addrs.is_primary(addr) {
            NODE_ADDR_F_PRIMARY
        } else {
            0
        },
    };
    let mut wanted4 = Vec::new();
    let mut wanted6 = Vec::new();
    for &addr in &node_addrs.addrs {
        match addr {
            IpAddr::V4(ip) => wanted4.push((ip_to_net(ip), flags(addr))),
            IpAddr::V6(ip) => wanted6.push((ip6_to_net(ip), flags(addr))),
        }
    }
    let existing: Vec<u32> = maps.node_addrs.keys().collect::<Result<_, _>>()?;
    for key in existing
        .iter()
        .filter(|key| !wanted4.iter().any(|(k, _)| k == *key))
    {
        maps.node_addrs.remove(key)?;
    }
    for (key, value) in &wanted4 {
        maps.node_addrs.insert(key, value, 0)?;
    }
    let existing: Vec<Addr6> = maps.node_addrs6.keys().collect::<Result<_, _>>()?;
    for key in existing
        .iter()
        .filter(|key| !wanted6.iter().any(|(k, _)| k == *key))
    {
        maps.node_addrs6.remove(key)?;
    }
    for (key, value) in &wanted6 {
        maps.node_addrs6.insert(key, value, 0)?;
    }

    let xdp_tx = match opts.xdp_tx {
        XdpTx::On => true,
        XdpTx::Off => false,
        XdpTx::Auto => opts
            .ifaces
            .iter()
            .all(|iface| netdev::driver_name(iface).is_ok_and(|driver| driver != "veth")),
    };
    let snat_addr = match node_addrs.primary_v4 {
        Some(IpAddr::V4(ip)) => ip_to_net(ip),
        _ => 0,
    };
    let config = Config {
        snat_addr,
        snat_port_min: *snat_range.start(),
        snat_port_max: *snat_range.end(),
        flags: if xdp_tx { CONFIG_F_XDP_TX } else { 0 }
            | if opts.counters { CONFIG_F_COUNTERS } else { 0 },
        log_level: opts.kernel_log_level,
    };
    maps.config.set(0, &config, 0)?;
    let config6 = Config6 {
        snat_addr: match node_addrs.primary_v6 {
            Some(IpAddr::V6(ip)) => ip6_to_net(ip),
            _ => Addr6::default(),
        },
    };
    maps.config6.set(0, &config6, 0)?;
    info!(
        node_ips = ?node_addrs.node_addrs,
        node_port_addrs = ?node_addrs.addrs,
        snat = ?node_addrs.primary_v4,
        snat6 = ?node_addrs.primary_v6,
        snat_ports = %snat_ports::text(snat_range),
        xdp_tx,
        "datapath configured"
    );
    Ok(node_addrs)
}

#[cfg(test)]
mod tests {
    use super::is_map_pin_name;

    #[test]
    fn only_names_shaped_like_our_maps_are_retired() {
        assert!(is_map_pin_name("SVC_STATS_V1"));
        assert!(is_map_pin_name("CT_V12"));
        assert!(!is_map_pin_name("links"));
        assert!(!is_map_pin_name("my_map_V1"));
        assert!(!is_map_pin_name("CT_V"));
        assert!(!is_map_pin_name("_V1"));
        assert!(!is_map_pin_name("CT_V1x"));
    }
}
