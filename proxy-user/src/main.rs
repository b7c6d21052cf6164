//! `sluice`: the node daemon (`run`) and the commands that inspect and validate its state.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use proxy_user::{
    cli::{self, Output, log_level::KernelLogLevel},
    daemon::{self, DaemonOptions},
    datapath::{DatapathOptions, MapSizes, NodePortAddresses, XdpTx},
    node::{conntrack_gc::CtTimeouts, events::Events},
    source::{
        self,
        manifest::{ManifestOptions, NodePortRange},
    },
};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: an eBPF/XDP service proxy for Kubernetes nodes"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
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
struct PinArgs {
    /// Directory on bpffs where the maps and links are pinned.
    #[arg(long, default_value = "/sys/fs/bpf/sluice")]
    pin_dir: PathBuf,
}

#[derive(clap::Args)]
#[command(group(
    clap::ArgGroup::new("source")
        .required(true)
        .args(["manifests", "kubeconfig", "in_cluster"])
))]
struct RunArgs {
    /// Standalone mode: read Services, EndpointSlices, Endpoints and Pods from this directory
    /// (.yaml, .yml, .json; multi-document) and follow its changes.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Cluster mode: watch Services, EndpointSlices and this node's Node on the API server of
    /// this kubeconfig's current context.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Cluster mode from inside a pod: the service account and `KUBERNETES_SERVICE_HOST`.
    #[arg(long)]
    in_cluster: bool,
    /// Node interface for north-south traffic (XDP and TC); repeat for several. Without any,
    /// only the socket-level load balancer runs.
    #[arg(long = "iface")]
    ifaces: Vec<String>,
    /// Name prefix of the host-side interfaces of pods (as the CNI names them: `cali`, `lxc`,
    /// `veth`, ...; repeat, or comma-separated): their traffic to Services that no socket hook
    /// translated (a process outside --cgroup, a VM, a raw socket) is translated per packet
    /// there. Interfaces are followed as pods come and go.
    #[arg(long = "pod-iface-prefix", value_delimiter = ',')]
    pod_iface_prefixes: Vec<String>,
    /// This node's name: endpoints with this nodeName are local. Default: `$NODE_NAME`, else the
    /// hostname.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Address NodePorts answer on, of either family; repeat for several. The first of each
    /// family is that family's SNAT source for remote backends, and Services are served only
    /// in the families given. Default: every local address.
    #[arg(long = "node-ip")]
    node_ips: Vec<std::net::IpAddr>,
    /// Which node addresses NodePorts (and health check NodePorts) answer on, as kube-proxy's
    /// flag: CIDRs (repeat, or comma-separated; a family with none keeps all its addresses),
    /// or `primary` (the first `--node-ip`, or InternalIP, of each family). Default: all.
    #[arg(long = "nodeport-addresses", value_delimiter = ',')]
    nodeport_addresses: Vec<String>,
    /// cgroup v2 directory whose processes get socket-level load balancing.
    /// Default: the cgroup2 mount's root.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    #[command(flatten)]
    pins: PinArgs,
    #[command(flatten)]
    sizes: MapSizes,
    /// Directory for state that is not in maps (standalone mode: cluster IP and NodePort
    /// allocations).
    #[arg(long, default_value = "/var/lib/sluice")]
    state_dir: PathBuf,
    /// Range to allocate missing cluster IPs from (standalone mode), one per family (repeat,
    /// or `<v4>,<v6>` as kube-apiserver's --service-cluster-ip-range); the first one's family
    /// is the primary.
    #[arg(long = "service-cidr", value_delimiter = ',', default_value = DEFAULT_SERVICE_CIDR)]
    service_cidrs: Vec<ipnet::IpNet>,
    /// Range NodePorts must be in and are allocated from (standalone mode; `LOW-HIGH` as
    /// kube-apiserver's flag). Cluster mode takes the API server's word for every nodePort.
    #[arg(long, default_value_t = NodePortRange::DEFAULT)]
    service_node_port_range: NodePortRange,
    /// Serve /healthz and /livez here (kube-proxy's: 503 until the first sync, then 200; /healthz
    /// also 503 while the Node is being deleted or tainted for deletion).
    #[arg(long, default_value = "127.0.0.1:10256")]
    healthz_addr: SocketAddr,
    /// How often the maps are read back and anything changed or removed behind the daemon's
    /// back (bpftool, another process) is written again, like kube-proxy's periodic sync.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    resync_period: Duration,
    /// Serve Prometheus /metrics here.
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_addr: SocketAddr,
    /// Send rewritten packets straight back out from XDP (`XDP_TX`/redirect). `auto`: on unless
    /// an interface is a veth, whose peer drops `XDP_TX` frames unless it runs XDP itself.
    #[arg(long, value_enum, default_value_t = XdpTx::Auto)]
    xdp_tx: XdpTx,
    /// How long a closed TCP flow (FIN or RST seen) stays in conntrack.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    ct_tcp_closing_timeout: Duration,
    /// How long an idle established TCP flow stays in conntrack.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    ct_tcp_established_timeout: Duration,
    /// How long an idle UDP flow stays in conntrack.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    ct_udp_timeout: Duration,
    /// How often expired flows are removed from conntrack.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    ct_gc_interval: Duration,
    /// Do not count traffic, drops and verdicts in the datapath (to measure their cost).
    #[arg(long)]
    no_counters: bool,
    /// The most verbose log lines the kernel programs emit (into this daemon's log, target
    /// `kernel`). Change it while running with `sluice log-level`.
    #[arg(long, value_enum, default_value_t = KernelLogLevel::Off)]
    kernel_log_level: KernelLogLevel,
}

/// `--service-cidr`'s default (inside 198.18.0.0/15, reserved for testing).
const DEFAULT_SERVICE_CIDR: &str = "198.19.0.0/16";

/// `--service-cidr` checked: one range per family.
fn service_cidrs_of(
    cidrs: Vec<ipnet::IpNet>,
) -> Result<proxy_user::source::manifest::ServiceCidrs> {
    proxy_user::source::manifest::ServiceCidrs::new(cidrs).map_err(anyhow::Error::msg)
}

/// A failure is one line on stderr (the error and its causes), never a panic or a backtrace.
fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run_command(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sluice: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_command(command: Command) -> Result<()> {
    match command {
        Command::Run(args) => run(*args),
        Command::Services { pins, output } => cli::services::run(&pins.pin_dir, output),
        Command::LogLevel { level, pins } => cli::log_level::run(&pins.pin_dir, level.into()),
        Command::Stats { pins, output } => cli::stats::run(&pins.pin_dir, output),
        Command::Backends { pins, output } => cli::backends::run(&pins.pin_dir, output),
        Command::Conntrack {
            pins,
            output,
            service,
            client,
        } => cli::conntrack::run(
            &pins.pin_dir,
            output,
            &cli::conntrack::Filter { service, client },
        ),
        Command::Affinity { pins, output } => cli::affinity::run(&pins.pin_dir, output),
        Command::Validate {
            dir,
            service_cidrs,
            service_node_port_range,
        } => {
            let options = ManifestOptions {
                service_cidrs: service_cidrs_of(service_cidrs)?,
                node_port_range: service_node_port_range,
                node_name: None,
            };
            cli::validate::run(&dir, &options)
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    let node_name = match args.node_name {
        Some(name) => name,
        None => hostname()?,
    };
    let cgroup = match args.cgroup {
        Some(path) => path,
        None => cgroup2_root()?,
    };
    if args.pod_iface_prefixes.iter().any(String::is_empty) {
        bail!("--pod-iface-prefix: an empty prefix would match every interface; give the CNI's");
    }
    // Before anything is created: a user mistake is one line, not a failure half-way.
    proxy_user::datapath::preflight::check(&cgroup)?;
    let mut opts = DaemonOptions {
        datapath: DatapathOptions {
            pin_dir: args.pins.pin_dir,
            cgroup,
            ifaces: args.ifaces,
            pod_iface_prefixes: args.pod_iface_prefixes,
            xdp_tx: args.xdp_tx,
            node_ips: args.node_ips,
            node_port_addresses: NodePortAddresses::parse(&args.nodeport_addresses)
                .map_err(anyhow::Error::msg)?,
            counters: !args.no_counters,
            kernel_log_level: args.kernel_log_level.into(),
            sizes: args.sizes,
        },
        node_name: node_name.clone(),
        healthz_addr: Some(args.healthz_addr),
        metrics_addr: Some(args.metrics_addr),
        conntrack_timeouts: CtTimeouts {
            tcp_closing: args.ct_tcp_closing_timeout,
            tcp_established: args.ct_tcp_established_timeout,
            udp: args.ct_udp_timeout,
            ..CtTimeouts::default()
        },
        conntrack_gc_interval: args.ct_gc_interval,
        resync_period: args.resync_period,
        events: None,
        service_cidrs: Vec::new(),
    };
    let access = match (args.kubeconfig, args.in_cluster) {
        (Some(path), _) => Some(source::kube::ApiAccess::Kubeconfig(path)),
        (None, true) => Some(source::kube::ApiAccess::InCluster),
        (None, false) => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let desired = match (access, args.manifests) {
            (Some(access), _) => {
                let client = source::kube::connect(&access, &node_name).await?;
                opts.events = Some(Events::spawn(client.clone(), &node_name));
                if opts.datapath.node_ips.is_empty() {
                    // Cluster mode: the Node's InternalIPs act as `--node-ip`.
                    opts.datapath.node_ips =
                        source::kube::node_internal_ips(&client, &node_name).await;
                }
                source::kube::spawn(source::kube::KubeSourceOptions { client, node_name })
            }
            (None, Some(dir)) => {
                let service_cidrs = service_cidrs_of(args.service_cidrs)?;
                opts.service_cidrs = service_cidrs.iter().copied().collect();
                source::manifests::spawn(source::manifests::ManifestSourceOptions {
                    dir,
                    state_dir: args.state_dir,
                    manifest: ManifestOptions {
                        service_cidrs,
                        node_port_range: args.service_node_port_range,
                        node_name: Some(node_name.clone()),
                    },
                })?
            }
            (None, None) => unreachable!("clap requires one of the sources"),
        };
        daemon::run(opts, desired).await
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // Kernel log lines are only written when switched on (`sluice log-level`): let them in.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kernel=trace"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn hostname() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(name.trim().to_owned())
}

/// The cgroup v2 mount point: /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on
/// hybrid ones.
fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, path, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(path))
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no cgroup v2 mount in /proc/mounts: mount one (`mount -t cgroup2 none \
                 /sys/fs/cgroup`) or pass --cgroup DIR"
            )
        })
}
