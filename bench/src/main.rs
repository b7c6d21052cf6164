//! `proxy-bench`: Sluice's benchmarks against kube-proxy's rule sets and the physical floor.
//! Writes BENCHMARKS.md and its PNG plots (`cargo xtask bench` puts them in docs/).
//!
//! Every figure is a ratio or difference against a baseline measured in the same invocation,
//! back to back, reported as the median and the spread (min–max) over repeated rounds.
//! Nothing here asserts a speed: the bench fails only when something does not work.
//! All traffic and all iptables/nftables rules live in network namespaces the bench creates.

mod client;
mod connrate;
mod fixture;
mod live;
mod memory;
mod packet_cost;
mod plot;
mod report;
mod rules;
mod stats;
mod sync;
mod sys;

use std::{net::SocketAddr, path::PathBuf, time::Instant};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Sluice's benchmarks")]
struct Cli {
    /// Tiny sizes and few repeats: checks that everything runs (CI); numbers mean nothing.
    #[arg(long)]
    quick: bool,
    /// Where BENCHMARKS.md goes; the plots go to its directory's `bench/`.
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    out: PathBuf,
    /// Run only these sections (comma separated: connrate, rate, packet, sync, memory); the
    /// report then shows the others as not run. For development.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Services counts of the sync section instead of its defaults (comma separated). For
    /// development, e.g. `--only sync --sync-services 100000 --sync-endpoints 2`.
    #[arg(long, value_delimiter = ',')]
    sync_services: Vec<usize>,
    /// Endpoints per service of the sync section instead of its defaults (comma separated).
    #[arg(long, value_delimiter = ',')]
    sync_endpoints: Vec<usize>,
    /// Sync section: measure Sluice only, not the iptables and nft rule sets (which take
    /// minutes at 100k). For development.
    #[arg(long)]
    sync_no_rules: bool,
    /// Milliseconds per connection-rate client run (default: 1500, quick: 300).
    #[arg(long)]
    conn_millis: Option<u64>,
    #[command(subcommand)]
    role: Option<Role>,
}

/// The halves of the connection benchmark, run by the bench itself inside the cluster.
#[derive(Subcommand)]
enum Role {
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        port: u16,
        /// Listen on `[::]` (IPv6) in place of `0.0.0.0`.
        #[arg(long)]
        ipv6: bool,
    },
    #[command(hide = true)]
    Client {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        millis: u64,
    },
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The per-packet section's sizes.
fn packet_params(quick: bool) -> packet_cost::Params {
    if quick {
        packet_cost::Params {
            services: &[1, 100],
            endpoints: &[2],
            repeat: 10_000,
            rounds: 2,
            flows: 500,
        }
    } else {
        packet_cost::Params {
            services: &[1, 1_000, 10_000, 100_000],
            endpoints: &[2, 100],
            repeat: 1_000_000,
            rounds: 5,
            flows: 20_000,
        }
    }
}

/// The sync section's sizes, with the command line's overrides.
fn sync_params(cli: &Cli) -> sync::Params {
    let mut params = if cli.quick {
        sync::Params {
            services: vec![100],
            endpoints: vec![2],
            rounds: 1,
            max_rules: 10_000,
            max_nft_chains: 10_000,
            big: 100_000,
            timeout: std::time::Duration::from_secs(60),
        }
    } else {
        sync::Params {
            services: vec![10_000, 100_000],
            endpoints: vec![2, 10],
            rounds: 3,
            max_rules: 1_200_000,
            max_nft_chains: 30_000,
            big: 100_000,
            timeout: std::time::Duration::from_secs(240),
        }
    };
    if !cli.sync_services.is_empty() {
        params.services.clone_from(&cli.sync_services);
    }
    if !cli.sync_endpoints.is_empty() {
        params.endpoints.clone_from(&cli.sync_endpoints);
    }
    if cli.sync_no_rules {
        params.max_rules = 0;
        params.max_nft_chains = 0;
    }
    params
}

/// The connection-rate section's sizes, with the command line's run length.
fn conn_params(cli: &Cli) -> connrate::Params {
    let mut params = if cli.quick {
        connrate::Params {
            services: &[10],
            rounds: 1,
            millis: 300,
        }
    } else {
        connrate::Params {
            services: &[1_000, 10_000],
            rounds: 3,
            millis: 1_500,
        }
    };
    if let Some(millis) = cli.conn_millis {
        params.millis = millis;
    }
    params
}

/// The packet-rate section's sizes.
fn live_params(quick: bool) -> live::Params {
    if quick {
        live::Params {
            services: 10,
            millis: 100,
            rounds: 2,
        }
    } else {
        live::Params {
            services: 10_000,
            millis: 1_000,
            rounds: 5,
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.role {
        Some(Role::Serve { port, ipv6 }) => return client::serve(port, ipv6),
        Some(Role::Client { target, millis }) => return client::client(target, millis),
        None => {}
    }
    let quick = cli.quick;
    let wall = Instant::now();
    let started = String::from_utf8_lossy(
        &std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()?
            .stdout,
    )
    .trim()
    .to_owned();
    let load_before = load();
    let mut log = |line: &str| eprintln!("bench: {line}");
    let mut failures = Vec::new();
    let packet_params = packet_params(quick);
    let sync_params = sync_params(&cli);
    let conn_params = conn_params(&cli);
    let live_params = live_params(quick);

    let wants = |name: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == name);
    let skipped = || Some("not selected (--only)".to_owned());
    let (connrate, connrate_error) =
        match wants("connrate").then(|| connrate::run(&conn_params, &mut log)) {
            None => (connrate::Outcome::default(), skipped()),
            Some(Ok(outcome)) => (outcome, None),
            Some(Err(err)) => {
                failures.push(format!("connection rate: {err:#}"));
                (connrate::Outcome::default(), Some(format!("{err:#}")))
            }
        };
    let (live, live_error) = match wants("rate").then(|| live::run(&live_params, &mut log)) {
        None => (Vec::new(), skipped()),
        Some(Ok(rows)) => (rows, None),
        Some(Err(err)) => {
            failures.push(format!("packet rate: {err:#}"));
            (Vec::new(), Some(format!("{err:#}")))
        }
    };
    let packet = if wants("packet") {
        packet_cost::run(&packet_params, &mut log)?
    } else {
        Vec::new()
    };
    let sync = if wants("sync") {
        sync::run(&sync_params, &mut log)?
    } else {
        Vec::new()
    };
    let mut memory = Vec::new();
    let mem_sizes: &[(usize, usize)] = if quick {
        &[(100, 2)]
    } else {
        &[(100_000, 2), (100_000, 10)]
    };
    if wants("memory") {
        for &(services, endpoints) in mem_sizes {
            memory.push(memory::run(services, endpoints)?);
        }
    }
    let results = report::Results {
        quick,
        command: if quick {
            "cargo xtask bench --quick".into()
        } else {
            "cargo xtask bench".into()
        },
        started,
        wall_secs: wall.elapsed().as_secs_f64(),
        load_before,
        load_after: load(),
        packet,
        packet_params,
        sync,
        memory,
        connrate,
        connrate_error,
        live,
        live_error,
    };
    let plots = cli
        .out
        .parent()
        .map_or_else(|| PathBuf::from("bench"), |dir| dir.join("bench"));
    report::write(&results, &cli.out, &plots)?;
    log(&format!(
        "wrote {} and plots in {} ({:.0} s)",
        cli.out.display(),
        plots.display(),
        wall.elapsed().as_secs_f64()
    ));
    if !failures.is_empty() {
        bail!("some benchmarks failed:\n{}", failures.join("\n"));
    }
    Ok(())
}
