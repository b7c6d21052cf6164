//! `sluice`: the node daemon (`run`) and the commands that inspect and validate its state.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Result, bail};
use clap::Parser as _;
use proxy_user::{
    cli::{
        self,
        args::{Cli, Command, LogFormat, RunArgs},
    },
    daemon::{self, DaemonOptions},
    datapath::{DatapathOptions, NodePortAddresses},
    node::{conntrack_gc::CtTimeouts, events::Events},
    source::{self, manifest::ManifestOptions},
};

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
            snat_ports: args.snat_ports,
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
    daemon::memory::limit_arenas();
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
