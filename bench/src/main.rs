//! `proxy-bench`: Sluice's benchmarks. Writes docs/BENCHMARKS.md and its PNG plots.
//!
//! Every figure is a ratio or difference against a baseline measured in the same invocation,
//! back to back, reported as the median and the spread (min–max) over repeated rounds.
//! Nothing here asserts a speed: the bench fails only when something does not work.

mod fixture;
mod packet_cost;
mod rules;
mod sync;
mod stats;
mod sys;

use anyhow::Result;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Sluice's benchmarks")]
struct Cli {
    /// Tiny sizes and few repeats: checks that everything runs (CI).
    #[arg(long)]
    quick: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut log = |line: &str| eprintln!("bench: {line}");
    let params = if cli.quick {
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
    };
    let sync_params = if cli.quick {
        sync::Params {
            services: &[100],
            endpoints: &[2],
            rounds: 1,
            max_rules: 10_000,
            timeout: std::time::Duration::from_secs(60),
        }
    } else {
        sync::Params {
            services: &[10_000, 100_000],
            endpoints: &[2, 10],
            rounds: 3,
            max_rules: 1_200_000,
            timeout: std::time::Duration::from_secs(240),
        }
    };
    let sync_rows = sync::run(&sync_params, &mut log)?;
    for row in &sync_rows {
        println!("{row:?}");
    }
    let rows = packet_cost::run(&params, &mut log)?;
    for row in &rows {
        println!("{row:?}");
    }
    Ok(())
}
