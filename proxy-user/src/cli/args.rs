//! `sluice`'s command line: the clap types `main.rs` parses argv into (here, for fuzzing too).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

use crate::{
    cli::{Output, log_level::KernelLogLevel},
    datapath::{MapSizes, XdpTx, snat_ports::SnatPorts},
    source::manifest::NodePortRange,
};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: an eBPF/XDP service proxy for Kubernetes nodes"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Program this node's datapath and keep it in sync with the service definitions.
    Run(Box<RunArgs>),
    /// List the frontends and backends the maps hold (from the pins; no daemon needed).
    Services {
        #[command(flatten)]
        pins: PinArgs,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Traffic per frontend and backend, drops and untranslated passes by reason, verdicts per
    /// hook (from the pins).
    Stats {
        #[command(flatten)]
        pins: PinArgs,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// List the session-affinity entries: service, client, backend, age (from the pins).
    Affinity {
        #[command(flatten)]
        pins: PinArgs,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Switch the kernel programs' log lines on or off while they run (no reload).
    LogLevel {
        level: KernelLogLevel,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// List every backend and the frontends that use it (from the pins).
    Backends {
        #[command(flatten)]
        pins: PinArgs,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// List the flows the packet path tracks (from the pins).
    Conntrack {
        #[command(flatten)]
        pins: PinArgs,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Only flows of this service (`namespace/name`, or `namespace/name:port`).
        #[arg(long)]
        service: Option<String>,
        /// Only flows from this client address.
        #[arg(long)]
        client: Option<std::net::IpAddr>,
    },
    /// Check a manifests directory and report every problem with file, document and field.
    Validate {
        dir: PathBuf,
        /// Range cluster IPs must come from, one per family (repeat, or `<v4>,<v6>`); the
        /// first one's family is the primary.
        #[arg(long = "service-cidr", value_delimiter = ',', default_value = DEFAULT_SERVICE_CIDR)]
        service_cidrs: Vec<ipnet::IpNet>,
        /// Range explicit nodePorts must be in (as kube-apiserver's flag).
        #[arg(long, default_value_t = NodePortRange::DEFAULT)]
        service_node_port_range: NodePortRange,
    },
}

#[derive(clap::Args)]
pub struct PinArgs {
    /// Directory on bpffs where the maps and links are pinned.
    #[arg(long, default_value = "/sys/fs/bpf/sluice")]
    pub pin_dir: PathBuf,
}

#[derive(clap::Args)]
#[command(group(
    clap::ArgGroup::new("source")
        .required(true)
        .args(["manifests", "kubeconfig", "in_cluster"])
))]
pub struct RunArgs {
    /// Standalone mode: read Services, EndpointSlices, Endpoints and Pods from this directory
    /// (.yaml, .yml, .json; multi-document) and follow its changes.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// Cluster mode: watch Services, EndpointSlices and this node's Node on the API server of
    /// this kubeconfig's current context.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Cluster mode from inside a pod: the service account and `KUBERNETES_SERVICE_HOST`.
    #[arg(long)]
    pub in_cluster: bool,
    /// Node interface for north-south traffic (XDP and TC); repeat for several. Without any,
    /// only the socket-level load balancer runs.
    #[arg(long = "iface")]
    pub ifaces: Vec<String>,
    /// Name prefix of the host-side interfaces of pods (as the CNI names them: `cali`, `lxc`,
    /// `veth`, ...; repeat, or comma-separated): their traffic to Services that no socket hook
    /// translated (a process outside --cgroup, a VM, a raw socket) is translated per packet
    /// there. Interfaces are followed as pods come and go.
    #[arg(long = "pod-iface-prefix", value_delimiter = ',')]
    pub pod_iface_prefixes: Vec<String>,
    /// This node's name: endpoints with this nodeName are local. Default: `$NODE_NAME`, else the
    /// hostname.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Address NodePorts answer on, of either family; repeat for several. The first of each
    /// family is that family's SNAT source for remote backends, and Services are served only
    /// in the families given. Default: every local address.
    #[arg(long = "node-ip")]
    pub node_ips: Vec<std::net::IpAddr>,
    /// Which node addresses NodePorts (and health check NodePorts) answer on, as kube-proxy's
    /// flag: CIDRs (repeat, or comma-separated; a family with none keeps all its addresses),
    /// or `primary` (the first `--node-ip`, or InternalIP, of each family). Default: all.
    #[arg(long = "nodeport-addresses", value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,
    /// cgroup v2 directory whose processes get socket-level load balancing.
    /// Default: the cgroup2 mount's root.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    #[command(flatten)]
    pub pins: PinArgs,
    #[command(flatten)]
    pub sizes: MapSizes,
    /// Directory for state that is not in maps (standalone mode: cluster IP and NodePort
    /// allocations).
    #[arg(long, default_value = "/var/lib/sluice")]
    pub state_dir: PathBuf,
    /// Range to allocate missing cluster IPs from (standalone mode), one per family (repeat,
    /// or `<v4>,<v6>` as kube-apiserver's --service-cluster-ip-range); the first one's family
    /// is the primary.
    #[arg(long = "service-cidr", value_delimiter = ',', default_value = DEFAULT_SERVICE_CIDR)]
    pub service_cidrs: Vec<ipnet::IpNet>,
    /// Range NodePorts must be in and are allocated from (standalone mode; `LOW-HIGH` as
    /// kube-apiserver's flag). Cluster mode takes the API server's word for every nodePort.
    #[arg(long, default_value_t = NodePortRange::DEFAULT)]
    pub service_node_port_range: NodePortRange,
    /// Serve /healthz and /livez here (kube-proxy's: 503 until the first sync, then 200; /healthz
    /// also 503 while the Node is being deleted or tainted for deletion).
    #[arg(long, default_value = "127.0.0.1:10256")]
    pub healthz_addr: SocketAddr,
    /// How often the maps are read back and anything changed or removed behind the daemon's
    /// back (bpftool, another process) is written again, like kube-proxy's periodic sync.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub resync_period: Duration,
    /// Serve Prometheus /metrics here.
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_addr: SocketAddr,
    /// Send rewritten packets straight back out from XDP (`XDP_TX`/redirect). `auto`: on unless
    /// an interface is a veth, whose peer drops `XDP_TX` frames unless it runs XDP itself.
    #[arg(long, value_enum, default_value_t = XdpTx::Auto)]
    pub xdp_tx: XdpTx,
    /// Source ports of flows SNATed to backends on other nodes, `LOW-HIGH` from 1024, per
    /// backend. `auto`: the largest run of ports outside the node's ephemeral range
    /// (`net.ipv4.ip_local_port_range`; 1024-32767 with Linux's default), which the kernel does
    /// not give its own connections; a range sharing unreserved ephemeral ports is warned about.
    #[arg(long, default_value_t = SnatPorts::Auto)]
    pub snat_ports: SnatPorts,
    /// How long a closed TCP flow (FIN or RST seen) stays in conntrack.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub ct_tcp_closing_timeout: Duration,
    /// How long an idle established TCP flow stays in conntrack.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub ct_tcp_established_timeout: Duration,
    /// How long an idle UDP flow stays in conntrack.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub ct_udp_timeout: Duration,
    /// How often expired flows are removed from conntrack.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub ct_gc_interval: Duration,
    /// Do not count traffic, drops and verdicts in the datapath (to measure their cost).
    #[arg(long)]
    pub no_counters: bool,
    /// The most verbose log lines the kernel programs emit (into this daemon's log, target
    /// `kernel`). Change it while running with `sluice log-level`.
    #[arg(long, value_enum, default_value_t = KernelLogLevel::Off)]
    pub kernel_log_level: KernelLogLevel,
}

/// `--service-cidr`'s default (inside 198.18.0.0/15, reserved for testing).
pub const DEFAULT_SERVICE_CIDR: &str = "198.19.0.0/16";
