//! Packet fuzzing (issue 16) in every run: `SLUICE_FUZZ_FRAMES` frames per program (default
//! 20 000) through every XDP and TC program, every invariant of [`proxy_tests::packet_fuzz`]
//! checked, from the seed in `SLUICE_FUZZ_SEED` (default: the time, printed, so a failure can
//! be replayed). Needs root.

use proxy_tests::packet_fuzz;

const DEFAULT_FRAMES: usize = 20_000;

#[test]
fn random_and_mutated_frames_keep_every_invariant_in_every_program() {
    let frames: usize = std::env::var("SLUICE_FUZZ_FRAMES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_FRAMES);
    let seed: u64 = std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(packet_fuzz::seed_from_clock);
    eprintln!("fuzzing with SLUICE_FUZZ_SEED={seed}, {frames} frames per program");
    for tally in packet_fuzz::run(frames, seed) {
        eprintln!(
            "{}: {} frames run, {} refused by the kernel",
            tally.program, tally.ran, tally.refused
        );
    }
}
