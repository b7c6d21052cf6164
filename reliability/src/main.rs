//! `proxy-reliability`: Sluice under stress, measured: the soak, packet fuzzing, input fuzzing
//! (figures from `cargo xtask reliability`, which runs cargo-fuzz), exhaustion and leaks.
//! Writes RELIABILITY.md (`cargo xtask reliability` puts it in docs/).
//!
//! Nothing here asserts a speed. A section fails when Sluice does not do what it must (a
//! broken invariant, a daemon that does not come back); the report then says so and the
//! command exits non-zero. Every figure that has a goal is shown against it.

mod exhaustion;
mod flows;
mod leaks;
mod report;
mod soak;

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;
use clap::{Parser, Subcommand};
use proxy_tests::packet_fuzz;

#[derive(Parser)]
#[command(about = "Sluice's reliability run")]
struct Cli {
    /// Small sizes, about two minutes: checks that everything runs and holds (CI).
    #[arg(long)]
    quick: bool,
    /// Where RELIABILITY.md goes.
    #[arg(long, default_value = "docs/RELIABILITY.md")]
    out: PathBuf,
    /// Run only these sections (comma separated: soak, packet, input, exhaustion, leaks; `input`
    /// is `cargo xtask reliability`'s); the report shows the others as not run. For development.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The input fuzzing figures (JSON) `cargo xtask reliability` measured: a file, or `-`
    /// for stdin, read once the sections are done (xtask fuzzes alongside them).
    #[arg(long)]
    input_fuzz: Option<PathBuf>,
    /// The packet fuzzing's seed (default: the time; the report names it).
    #[arg(long)]
    seed: Option<u64>,
    /// A step `cargo xtask reliability` took before this binary ran, as NAME=SECONDS
    /// (repeatable): the report's time is the whole command's.
    #[arg(long = "step-before", value_parser = parse_step)]
    steps_before: Vec<(String, Duration)>,
    #[command(subcommand)]
    role: Option<Role>,
}

/// The soak's traffic generators, run by this binary inside the cluster's namespaces.
#[derive(Subcommand)]
enum Role {
    #[command(hide = true)]
    Flows(flows::Spec),
    #[command(hide = true)]
    ConnectMany(flows::Many),
    #[command(hide = true)]
    AffinityClients(flows::AffinityClients),
}

/// One section's result: its figures, or why it failed.
pub type Section<T> = Option<Result<T, String>>;

/// Everything one run measured.
pub struct Results {
    pub quick: bool,
    /// The whole command's time: `cargo xtask reliability`'s steps before this binary and
    /// this binary's run.
    pub elapsed: Duration,
    /// How long each step took, in order: those of `cargo xtask reliability` before this
    /// binary, each section run here, then the input fuzzing that ran alongside them.
    pub steps: Vec<(String, Duration)>,
    pub soak: Section<soak::Outcome>,
    pub soak_params: soak::Params,
    pub packet: Section<Vec<packet_fuzz::Tally>>,
    pub packet_seed: u64,
    pub packet_frames: usize,
    pub input: Section<Vec<report::InputFuzz>>,
    pub exhaustion: Option<exhaustion::Outcome>,
    pub exhaustion_params: exhaustion::Params,
    pub leaks: Section<leaks::Outcome>,
    pub leak_params: leaks::Params,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(role) = &cli.role {
        let result = match role {
            Role::Flows(spec) => flows::run(spec),
            Role::ConnectMany(many) => flows::connect_many(many),
            Role::AffinityClients(args) => flows::affinity_clients(args),
        };
        return match result {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("flows: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match run(&cli) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("reliability: a section failed; see {}", cli.out.display());
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("reliability: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn soak_params(quick: bool) -> soak::Params {
    soak::Params {
        seconds: if quick { 20 } else { 120 },
        tcp_flows: if quick { 100 } else { 500 },
        udp_flows: if quick { 20 } else { 100 },
        restart_every: Duration::from_secs(5),
        churn_per_second: 10,
        scale_every: Duration::from_secs(3),
        api_outage: Duration::from_secs(if quick { 3 } else { 10 }),
    }
}

fn parse_step(arg: &str) -> Result<(String, Duration), String> {
    let (name, seconds) = arg
        .split_once('=')
        .ok_or_else(|| format!("`{arg}`: expected NAME=SECONDS"))?;
    let seconds: f64 = seconds
        .parse()
        .map_err(|e| format!("`{arg}`: SECONDS: {e}"))?;
    Ok((name.to_owned(), Duration::from_secs_f64(seconds)))
}

/// Runs the chosen sections and writes the report; false when one failed.
fn run(cli: &Cli) -> Result<bool> {
    let began = Instant::now();
    let mut steps = Steps(cli.steps_before.clone());
    let wanted = |name: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == name);
    let soak_params = soak_params(cli.quick);
    let packet_seed = cli.seed.unwrap_or_else(packet_fuzz::seed_from_clock);
    let frames = if cli.quick { 20_000 } else { 1_000_000 };

    let soak = wanted("soak").then(|| {
        eprintln!("soak: {} s", soak_params.seconds);
        steps.time("soak", || section(|| soak::run(&soak_params)))
    });
    let packet = wanted("packet").then(|| {
        eprintln!("packet fuzzing: {frames} frames per program, seed {packet_seed}");
        steps.time("packet fuzzing", || {
            section(|| Ok(packet_fuzz::run(frames, packet_seed)))
        })
    });
    let leak_params = leaks::Params {
        rounds: if cli.quick { 2 } else { 10 },
        services: if cli.quick { 1_000 } else { 10_000 },
        flows: if cli.quick { 1_000 } else { 10_000 },
    };
    let leaks = wanted("leaks").then(|| {
        eprintln!(
            "leaks: {} rounds of {} Services and {} flows",
            leak_params.rounds, leak_params.services, leak_params.flows
        );
        steps.time("leaks", || section(|| leaks::run(&leak_params)))
    });
    let exhaustion_params = exhaustion::Params {
        ct_entries: 4096,
        flood: if cli.quick { 5_000 } else { 50_000 },
        held: 100,
        snat_flows: 5_000,
        // Sluice's range before `--snat-ports`: the figures compare with earlier runs'.
        snat_ports: 61000..=65535,
        slots: 64,
        services: 60,
        affinity_entries: 256,
        affinity_clients: if cli.quick { 400 } else { 1000 },
    };
    let exhaustion = wanted("exhaustion").then(|| {
        eprintln!("exhaustion");
        steps.time("exhaustion", || exhaustion::run(&exhaustion_params))
    });
    // Read last: on stdin it arrives when xtask's fuzzing, run alongside the sections, ends.
    let input = cli.input_fuzz.as_ref().map(|path| {
        match report::InputFuzzing::read(path).map_err(|e| format!("{e:#}"))? {
            report::InputFuzzing::Ran { seconds, targets } => {
                steps.0.push((
                    "input fuzzing (alongside the sections)".to_owned(),
                    Duration::from_secs_f64(seconds),
                ));
                Ok(targets)
            }
            report::InputFuzzing::Failed { error } => Err(error),
        }
    });
    let results = Results {
        quick: cli.quick,
        elapsed: cli
            .steps_before
            .iter()
            .map(|(_, took)| *took)
            .sum::<Duration>()
            + began.elapsed(),
        steps: steps.0,
        soak,
        soak_params,
        packet,
        packet_seed,
        packet_frames: frames,
        input,
        exhaustion,
        exhaustion_params,
        leaks,
        leak_params,
    };
    report::write(&results, &cli.out)?;
    eprintln!("wrote {}", cli.out.display());
    // The report holds the detail; CI shows only this output, so name each miss here too.
    let missed = report::missed(&results);
    for miss in &missed {
        eprintln!("reliability: goal missed: {miss}");
    }
    Ok(missed.is_empty())
}

/// How long each step took, in order.
struct Steps(Vec<(String, Duration)>);

impl Steps {
    /// Runs one step, printing and keeping its time.
    fn time<T>(&mut self, name: &str, step: impl FnOnce() -> T) -> T {
        let began = Instant::now();
        let outcome = step();
        let took = began.elapsed();
        eprintln!("{name}: done in {:.0} s", took.as_secs_f64());
        self.0.push((name.to_owned(), took));
        outcome
    }
}

/// Runs one section; a panic of the harness (which asserts as it goes) is its failure.
pub(crate) fn section<T>(run: impl FnOnce() -> Result<T>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic with no message".into())),
    }
}
