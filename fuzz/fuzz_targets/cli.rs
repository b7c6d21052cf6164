//! The command line (argv split at NUL) through clap, and the allocation state sluice reads back.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proxy_user::fuzz_input::cli(data));
