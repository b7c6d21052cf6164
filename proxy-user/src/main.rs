//! `sluice`: the node daemon (`run`) and the commands that inspect and validate its state.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};
use proxy_user::{
    cli::{self, Output},
    daemon::{self, DaemonOptions},
    datapath::{DatapathOptions, XdpTx},
    source,
};

#[derive(Parser)]
#[command(
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
    /// Check a manifests directory and report every problem with file, document and field.
    Validate {
        dir: PathBuf,
        /// Range cluster IPs must come from.
        #[arg(long, default_value_t = proxy_user::manifest::DEFAULT_SERVICE_CIDR)]
        service_cidr: ipnet::Ipv4Net,
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
    /// Cluster mode from inside a pod: the service account and KUBERNETES_SERVICE_HOST.
    #[arg(long)]
    in_cluster: bool,
    /// Node interface for north-south traffic (XDP and TC); repeat for several. Without any,
    /// only the socket-level load balancer runs.
    #[arg(long = "iface")]
    ifaces: Vec<String>,
    /// This node's name: endpoints with this nodeName are local. Default: $NODE_NAME, else the
    /// hostname.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Address NodePorts answer on; repeat for several. The first is the SNAT source for
    /// remote backends. Default: every local address.
    #[arg(long = "node-ip")]
    node_ips: Vec<std::net::Ipv4Addr>,
    /// cgroup v2 directory whose processes get socket-level load balancing.
    /// Default: the cgroup2 mount's root.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    #[command(flatten)]
    pins: PinArgs,
    /// Directory for state that is not in maps (standalone mode: cluster IP and NodePort
    /// allocations).
    #[arg(long, default_value = "/var/lib/sluice")]
    state_dir: PathBuf,
    /// Range to allocate missing cluster IPs from (standalone mode).
    #[arg(long, default_value_t = proxy_user::manifest::DEFAULT_SERVICE_CIDR)]
    service_cidr: ipnet::Ipv4Net,
    /// Serve /healthz here (503 until the first sync, then 200).
    #[arg(long, default_value = "127.0.0.1:10256")]
    healthz_addr: SocketAddr,
    /// Send rewritten packets straight back out from XDP (XDP_TX/redirect). `auto`: on unless
    /// an interface is a veth, whose peer drops XDP_TX frames unless it runs XDP itself.
    #[arg(long, value_enum, default_value_t = XdpTx::Auto)]
    xdp_tx: XdpTx,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Services { pins, output } => cli::services::run(&pins.pin_dir, output),
        Command::Validate { dir, service_cidr } => cli::validate::run(&dir, service_cidr),
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
    let opts = DaemonOptions {
        datapath: DatapathOptions {
            pin_dir: args.pins.pin_dir,
            cgroup,
            ifaces: args.ifaces,
            xdp_tx: args.xdp_tx,
            node_ips: args.node_ips,
        },
        node_name: node_name.clone(),
        healthz_addr: Some(args.healthz_addr),
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
                source::kube::spawn(source::kube::KubeSourceOptions { access, node_name }).await?
            }
            (None, Some(dir)) => {
                source::manifests::spawn(source::manifests::ManifestSourceOptions {
                    dir,
                    state_dir: args.state_dir,
                    service_cidr: args.service_cidr,
                })?
            }
            (None, None) => unreachable!("clap requires one of the sources"),
        };
        daemon::run(opts, desired).await
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, path, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(path))
        })
        .next()
        .ok_or_else(|| anyhow::anyhow!("no cgroup2 mount found; pass --cgroup"))
}
