//! RELIABILITY.md: the goals against what was measured, then one section per kind of stress.

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use serde::Deserialize;

use crate::{Results, Section, exhaustion, leaks};

/// One cargo-fuzz target's run, as `cargo xtask reliability` writes it.
#[derive(Deserialize, Debug, Clone)]
pub struct InputFuzz {
    pub target: String,
    pub runs: u64,
    pub seconds: f64,
    pub crashes: usize,
    pub peak_rss_mb: u64,
    pub corpus: usize,
    /// Inputs replayed by the regression test (seeds and every crash found so far).
    #[serde(default)]
    pub regressions: usize,
}

/// What `cargo xtask reliability` hands over about its input fuzzing (in a file, or on stdin
/// when it fuzzes alongside the sections).
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum InputFuzzing {
    Ran {
        /// The whole step: cargo-fuzz's build and every target's run.
        seconds: f64,
        targets: Vec<InputFuzz>,
    },
    Failed {
        error: String,
    },
}

impl InputFuzzing {
    /// Reads `path`, or stdin when it is `-` (until `cargo xtask` closes it: this waits for the
    /// fuzzing to finish).
    pub fn read(path: &Path) -> Result<InputFuzzing> {
        let text = if path == Path::new("-") {
            std::io::read_to_string(std::io::stdin()).context("reading stdin")?
        } else {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        };
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// Each exhaustion goal: (goal, measured, met).
fn exhaustion_goals(outcome: &exhaustion::Outcome) -> Vec<(String, String, bool)> {
    let mut goals = Vec::new();
    let failed = |e: &String| format!("**failed**: {}", e.lines().next().unwrap_or(""));
    match &outcome.conntrack {
        Ok(ct) => {
            let h = &ct.held;
            let broken = h.tcp_open_failed + h.udp_open_failed + h.tcp_broken + h.udp_broken;
            goals.push((
                format!(
                    "exhaustion: conntrack ({} entries of new flows, {} of established ones) \
                     flooded with {} new connections: no active flow broken",
                    ct.capacity, ct.capacity, ct.flood.made
                ),
                format!(
                    "{broken} of {} flows broken, {} of {} datagrams lost; the flood: {} failed; \
                     peak {} entries of new flows, {} of established ones; {} confirmations \
                     found the established map full (`ct_established_full`)",
                    h.tcp_flows + h.udp_flows,
                    h.datagrams_lost,
                    h.datagrams_sent,
                    ct.flood.failed,
                    ct.peak,
                    ct.peak_established,
                    ct.established_full
                ),
                broken == 0 && h.datagrams_lost == 0,
            ));
        }
        Err(e) => goals.push(("exhaustion: conntrack flooded".into(), failed(e), false)),
    }
    match &outcome.snat {
        Ok(snat) => goals.push((
            format!(
                "exhaustion: {} flows to one remote backend, more than its {} SNAT ports \
                 (`--snat-ports {}`): the overflow counted as a named drop, every other Service \
                 serving",
                snat.asked,
                snat.ports.clone().count(),
                proxy_user::datapath::snat_ports::text(&snat.ports)
            ),
            format!(
                "{} opened, {} refused; `no_snat_port` drops {}; the echo NodePort answered by {}",
                snat.opened,
                snat.failed,
                snat.no_snat_port,
                snat.others_answered_by.join(", ")
            ),
            (snat.failed == 0 || snat.no_snat_port > 0) && snat.others_answered_by.len() == 3,
        )),
        Err(e) => goals.push(("exhaustion: SNAT ports".into(), failed(e), false)),
    }
    match &outcome.services {
        Ok(full) => goals.push((
            "exhaustion: more Services than the maps hold: those left out named (and listed by \
             `sluice services`), everything else serving and following changes"
                .into(),
            format!(
                "`{}`; echo still served: {}; a later change to echo applied: {}",
                full.error, full.still_serving, full.later_change_applied
            ),
            full.still_serving && full.later_change_applied && full.error.contains("default/"),
        )),
        Err(e) => goals.push((
            "exhaustion: Services over capacity".into(),
            failed(e),
            false,
        )),
    }
    match &outcome.affinity {
        Ok(full) => {
            let c = &full.clients;
            goals.push((
                format!(
                    "exhaustion: affinity map ({} clients remembered) given {} clients: every \
                     connection answered, the oldest clients forgotten (LRU, as kube-proxy's \
                     `recent` list), the latest kept, everything else serving",
                    full.capacity,
                    c.connections - c.rechecked
                ),
                format!(
                    "{} of {} connections failed; {} entries after; {} of the last {} clients \
                     back at their first pod; echo still served: {}",
                    c.failed, c.connections, full.entries, c.kept, c.rechecked, full.still_serving
                ),
                c.failed == 0
                    && full.entries <= u64::from(full.capacity)
                    && c.kept == c.rechecked
                    && full.still_serving,
            ));
        }
        Err(e) => goals.push(("exhaustion: affinity map".into(), failed(e), false)),
    }
    goals
}

/// How much the daemon's RSS may grow over the second half of the rounds and still count as
/// flat: allocators keep some of what a round freed. The larger of a share and a few pages'
/// worth (a small run's RSS is a few MiB, where one arena's pages are 5 %); a leaked round of
/// Services, even the quick run's 1000, is several MiB.
const RSS_SLACK: f64 = 0.05;
const RSS_SLACK_KIB: u64 = 1024;

/// The RSS after the middle round and after the last. A leak grows with every round; what the
/// allocator keeps (the daemon trims glibc's arenas after large removals) does not: so flat
/// means no growth over the second half.
fn rss_second_half(rounds: &leaks::Rounds) -> (u64, u64) {
    let rss = &rounds.rss_kib;
    let middle = rss
        .get(rss.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0);
    (middle, rss.last().copied().unwrap_or(0))
}

/// Whether the RSS after the last round is within the slack of the middle round's.
fn rss_flat(rounds: &leaks::Rounds) -> bool {
    let (middle, last) = rss_second_half(rounds);
    #[expect(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "KiB counts far below 2^52"
    )]
    let share = (middle as f64 * RSS_SLACK) as u64;
    last <= middle + share.max(RSS_SLACK_KIB)
}

pub fn write(results: &Results, doc: &Path) -> Result<()> {
    let mut md = String::new();
    let command = if results.quick {
        "cargo xtask reliability --quick"
    } else {
        "cargo xtask reliability"
    };
    let _ = write!(
        md,
        "# Reliability\n\nWritten by `{command}` (as root), which took {} min ({}), on:\n\n{}\n\
         Nothing here is a speed: every figure is a count of what went wrong (goal 0) or what \
         was run. A section that breaks an invariant fails the command.\n\n",
        fmt_minutes(results.elapsed),
        results
            .steps
            .iter()
            .map(|(name, took)| format!("{name} {}", fmt_minutes(*took)))
            .collect::<Vec<_>>()
            .join(", "),
        proxy_tests::machine::table(),
    );
    goals(&mut md, results);
    soak_section(&mut md, results);
    packet_section(&mut md, results);
    input_section(&mut md, results);
    leaks_section(&mut md, results);
    if let Some(dir) = doc.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(doc, md).with_context(|| format!("writing {}", doc.display()))
}

fn fmt_minutes(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() / 60.0)
}

/// The status of a section that did not produce figures.
#[expect(
    clippy::ref_option,
    reason = "every caller holds a `&Section`; one conversion here, not at each"
)]
fn missing<T>(section: &Section<T>) -> Option<String> {
    match section {
        None => Some("not run in this invocation".into()),
        Some(Err(e)) => Some(format!("**failed**: {}", e.lines().next().unwrap_or(""))),
        Some(Ok(_)) => None,
    }
}

/// One row of the goals table.
struct Goal {
    name: String,
    measured: String,
    met: Option<bool>,
}

/// Goals this run measures but Sluice does not meet yet, each with the reason the report
/// gives; the run still fails when any other goal is missed. Matched by the start of the goal.
const KNOWN_UNMET: &[(&str, &str)] = &[];

fn known_unmet(goal: &str) -> Option<&'static str> {
    KNOWN_UNMET
        .iter()
        .find(|(start, _)| goal.starts_with(start))
        .map(|(_, why)| *why)
}

/// The goals missed that are not known misses, each as "goal: measured" (empty: all passed).
pub fn missed(results: &Results) -> Vec<String> {
    goal_rows(results)
        .into_iter()
        .filter(|g| g.met == Some(false) && known_unmet(&g.name).is_none())
        .map(|g| format!("{}: {}", g.name, g.measured))
        .collect()
}

fn goals(md: &mut String, results: &Results) {
    md.push_str("## Goals\n\n| goal | measured | met |\n|---|---|---|\n");
    let mut why = Vec::new();
    for g in goal_rows(results) {
        let verdict = match (g.met, known_unmet(&g.name)) {
            (None, _) => "-".to_owned(),
            (Some(true), _) => "yes".to_owned(),
            (Some(false), None) => "**no**".to_owned(),
            (Some(false), Some(reason)) => {
                why.push(reason);
                format!("**no** ({})", why.len())
            }
        };
        let _ = writeln!(md, "| {} | {} | {verdict} |", g.name, g.measured);
    }
    md.push('\n');
    for (i, reason) in why.iter().enumerate() {
        let _ = writeln!(md, "({}) {reason}\n", i + 1);
    }
}

/// Every goal with what was measured; `met` is `None` for a section not run.
#[expect(
    clippy::too_many_lines,
    reason = "one arm per section, in the order of the table it fills"
)]
fn goal_rows(results: &Results) -> Vec<Goal> {
    let mut rows = Vec::new();
    // A section not run is shown as such, neither met nor missed.
    let mut row = |goal: &str, measured: String, yes: bool| {
        let met = (!measured.starts_with("not run")).then_some(yes);
        rows.push(Goal {
            name: goal.to_owned(),
            measured,
            met,
        });
    };
    match &results.soak {
        Some(Ok(outcome)) => {
            let sum = |f: fn(&crate::flows::Summary) -> u64| -> u64 {
                outcome.generators.iter().map(|g| f(&g.summary)).sum()
            };
            let broken = sum(|s| {
                (s.tcp_open_failed + s.udp_open_failed + s.tcp_broken + s.udp_broken) as u64
            });
            let flows = sum(|s| (s.tcp_flows + s.udp_flows) as u64);
            row(
                "soak: every long-lived flow opened and none broken",
                format!("{broken} of {flows}"),
                broken == 0,
            );
            let lost = sum(|s| s.datagrams_lost);
            row(
                "soak: no datagram lost",
                format!("{lost} of {}", sum(|s| s.datagrams_sent)),
                lost == 0,
            );
            let failed = sum(|s| s.new_failed);
            row(
                "soak: no new connection failed",
                format!("{failed} of {}", sum(|s| s.new_connections)),
                failed == 0,
            );
        }
        other => row("soak", missing(other).unwrap_or_default(), other.is_none()),
    }
    match &results.packet {
        Some(Ok(tallies)) => {
            let fewest = tallies.iter().map(|t| t.ran + t.refused).min().unwrap_or(0);
            row(
                &format!(
                    "packet fuzzing: {} frames through every XDP and TC program (a million in \
                     the full run), every invariant held",
                    results.packet_frames
                ),
                format!("{fewest} or more per program, all held"),
                fewest >= results.packet_frames as u64,
            );
        }
        other => row(
            "packet fuzzing",
            missing(other).unwrap_or_default(),
            other.is_none(),
        ),
    }
    match &results.input {
        Some(Ok(targets)) => {
            let crashes: usize = targets.iter().map(|t| t.crashes).sum();
            let peak = targets.iter().map(|t| t.peak_rss_mb).max().unwrap_or(0);
            row(
                "input fuzzing: no panic, bounded memory",
                format!(
                    "{crashes} crashes over {} targets, peak RSS {peak} MB",
                    targets.len()
                ),
                crashes == 0,
            );
        }
        other => row(
            "input fuzzing",
            missing(other).unwrap_or_default(),
            other.is_none(),
        ),
    }
    match &results.exhaustion {
        Some(outcome) => {
            for (goal, measured, yes) in exhaustion_goals(outcome) {
                row(&goal, measured, yes);
            }
        }
        None => row("exhaustion", "not run in this invocation".into(), true),
    }
    match &results.leaks {
        Some(Ok(outcome)) => {
            for rounds in [&outcome.services, &outcome.flows] {
                row(
                    &format!(
                        "leaks: {} x {}: every map back at its baseline after each round",
                        results.leak_params.rounds, rounds.what
                    ),
                    format!(
                        "{} of {} rounds",
                        rounds.drained_in.len(),
                        results.leak_params.rounds
                    ),
                    rounds.drained_in.len() == results.leak_params.rounds,
                );
                let first = rounds.rss_kib.first().copied().unwrap_or(0);
                let (middle, last) = rss_second_half(rounds);
                row(
                    &format!(
                        "leaks: {}: daemon RSS flat (no growth over the second half of the \
                         rounds: the last within 5 % or 1 MiB of the middle one)",
                        rounds.what
                    ),
                    format!(
                        "{} -> {} MiB over the second half ({} MiB after the first round)",
                        mib(middle),
                        mib(last),
                        mib(first)
                    ),
                    rss_flat(rounds),
                );
            }
        }
        other => row("leaks", missing(other).unwrap_or_default(), other.is_none()),
    }
    rows
}

fn mib(kib: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "KiB counts far below 2^52")]
    let kib = kib as f64;
    format!("{:.1}", kib / 1024.0)
}

fn leaks_section(md: &mut String, results: &Results) {
    let p = &results.leak_params;
    let _ = write!(
        md,
        "## Leaks\n\nManifest mode, node1 of the netns cluster. {} rounds of {} Services \
         (selecting the three echo pods) written into the manifests and removed, then {} rounds \
         of {} TCP connections from off the cluster through node1's NodePort (XDP; local \
         backends and SNAT to node2), each connection closed. After each round the run waits \
         until every map on node1 holds exactly its baseline entry count (conntrack entries of \
         closed flows go after the closing timeout, {} here, the default 10 s shortened so a \
         round drains in seconds), then samples the daemon's RSS once it is stable (five \
         samples 100 ms apart within 1 %: the daemon gives freed memory back just after a \
         sync's writes).\n\n",
        p.rounds,
        p.services,
        p.rounds,
        p.flows,
        leaks::CLOSING_TIMEOUT
    );
    let outcome = match &results.leaks {
        Some(Ok(outcome)) => outcome,
        other => {
            let _ = writeln!(md, "{}\n", missing(other).unwrap_or_default());
            return;
        }
    };
    let baseline: Vec<String> = outcome
        .baseline
        .iter()
        .map(|(map, n)| format!("{map} {n}"))
        .collect();
    let _ = write!(
        md,
        "Baseline: {}; RSS {} MiB.\n\n| round | Services: back at baseline in | RSS (MiB) | \
         flows: back at baseline in | RSS (MiB) |\n|---|---|---|---|---|\n",
        baseline.join(", "),
        mib(outcome.baseline_rss_kib)
    );
    for round in 0..p.rounds {
        let cell = |rounds: &leaks::Rounds| {
            (
                rounds
                    .drained_in
                    .get(round)
                    .map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64())),
                rounds.rss_kib.get(round).map_or("-".into(), |&k| mib(k)),
            )
        };
        let (sd, sr) = cell(&outcome.services);
        let (fd, fr) = cell(&outcome.flows);
        let _ = writeln!(md, "| {} | {sd} | {sr} | {fd} | {fr} |", round + 1);
    }
    md.push('\n');
}

fn soak_section(md: &mut String, results: &Results) {
    let p = &results.soak_params;
    let _ = write!(
        md,
        "## Soak\n\nCluster mode (the fake API server in both node namespaces), {} s. Long-lived \
         TCP flows (a ping every 200 ms each, answered by the pod that took the flow) and \
         connected-UDP flows (a datagram every 200 ms each, its answer matched by a hash of \
         it), and a stream of new TCP connections (about 40 a second per generator), through \
         XDP (an off-node client to node1's NodePort: backends on node1 and, SNATed, on node2) \
         and the socket LB (a pod on each node to the ClusterIP). Meanwhile: a daemon \
         SIGKILLed and restarted every {} s, node1 and node2 in turn; {} Service changes a \
         second (50 Services created and deleted with their slices); the flows' own Service \
         gaining and losing a third slice every {} s; the API server away for {} s halfway.\n\n",
        p.seconds,
        p.restart_every.as_secs(),
        p.churn_per_second,
        p.scale_every.as_secs(),
        p.api_outage.as_secs(),
    );
    let outcome = match &results.soak {
        Some(Ok(outcome)) => outcome,
        other => {
            let _ = writeln!(md, "{}\n", missing(other).unwrap_or_default());
            return;
        }
    };
    md.push_str(
        "| path | TCP flows | broken | UDP flows | broken | datagrams | lost | new connections \
         | failed | pods that took the TCP flows |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for g in &outcome.generators {
        let s = &g.summary;
        let pods: Vec<String> = s.tcp_pods.iter().map(|(p, n)| format!("{p} {n}")).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            g.path,
            s.tcp_flows,
            s.tcp_broken,
            s.udp_flows,
            s.udp_broken,
            s.datagrams_sent,
            s.datagrams_lost,
            s.new_connections,
            s.new_failed,
            pods.join(", ")
        );
    }
    let mut times: Vec<Duration> = outcome.restarts.iter().map(|(_, d)| *d).collect();
    times.sort();
    let ms = |d: Option<&Duration>| d.map_or("-".into(), |d| format!("{} ms", d.as_millis()));
    let _ = write!(
        md,
        "\n| disturbance | figure |\n|---|---|\n| restarts (SIGKILL, then start) | {} ({} on \
         node1, {} on node2; {} left out while the API server was away) |\n| restart to ready: \
         median | {} |\n| restart to ready: slowest | {} |\n| Service changes | {} |\n| \
         endpoint scale changes | {} |\n| API server away | {} s |\n| after the last change, \
         both nodes held exactly the API's Services within | {} ms |\n\n",
        times.len(),
        outcome
            .restarts
            .iter()
            .filter(|(n, _)| *n == "node1")
            .count(),
        outcome
            .restarts
            .iter()
            .filter(|(n, _)| *n == "node2")
            .count(),
        outcome.restarts_skipped,
        ms(times.get(times.len() / 2)),
        ms(times.last()),
        outcome.churn_changes,
        outcome.scale_changes,
        outcome.api_outage.as_secs(),
        outcome.converged_in.as_millis(),
    );
    let examples: Vec<&String> = outcome
        .generators
        .iter()
        .flat_map(|g| &g.summary.examples)
        .collect();
    if !examples.is_empty() {
        md.push_str("What went wrong (the first few of each generator):\n\n");
        for e in examples {
            let _ = writeln!(md, "- {e}");
        }
        md.push('\n');
    }
}

fn packet_section(md: &mut String, results: &Results) {
    let _ = write!(
        md,
        "## Packet fuzzing\n\nSeeded frames of every kind the packet tables test, and mutations \
         of them (bits flipped, bytes replaced, cut, extended, addresses and ports changed), \
         through every XDP and TC program with `BPF_PROG_TEST_RUN`, seed {} (replay: \
         `SLUICE_FUZZ_SEED={} SLUICE_FUZZ_FRAMES=N cargo xtask test -- --test datapath_fuzz`). \
         Checked on every run: the verdict is one the program may return; a frame to an \
         address Sluice has nothing at leaves byte for byte unchanged and passed; a spoofed \
         reply to a SNAT port no flow holds is never sent on and leaves unchanged; a valid \
         frame that comes out changed is valid (checksums and lengths computed from scratch); \
         the verdict counters add up to the runs.\n\n",
        results.packet_seed, results.packet_seed
    );
    let tallies = match &results.packet {
        Some(Ok(tallies)) => tallies,
        other => {
            let _ = writeln!(md, "{}\n", missing(other).unwrap_or_default());
            return;
        }
    };
    md.push_str(
        "| program | frames run and checked | refused by the kernel | redirected | seconds |\n\
         |---|---|---|---|---|\n",
    );
    for t in tallies {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.1} |",
            t.program,
            t.ran,
            t.refused,
            t.redirected,
            t.elapsed.as_secs_f64()
        );
    }
    md.push_str(
        "\nThe kernel refuses an skb program's test run on a frame shorter than its IP \
         header claims; those frames never reach the program.\n\n",
    );
}

fn input_section(md: &mut String, results: &Results) {
    md.push_str(
        "## Input fuzzing\n\ncargo-fuzz (libFuzzer) on what users and the API server hand \
         the daemon, each target from the seeds in fuzz/seeds/; every input that ever \
         crashed is kept in fuzz/regressions/ and replayed by `cargo test -p proxy-user \
         fuzz_input`.\n\n",
    );
    let targets = match &results.input {
        Some(Ok(targets)) => targets,
        other => {
            let _ = writeln!(md, "{}\n", missing(other).unwrap_or_default());
            return;
        }
    };
    md.push_str(
        "| target | runs | seconds | crashes | peak RSS | corpus | regression inputs |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for t in targets {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {} | {} MB | {} | {} |",
            t.target, t.runs, t.seconds, t.crashes, t.peak_rss_mb, t.corpus, t.regressions
        );
    }
    md.push('\n');
}
