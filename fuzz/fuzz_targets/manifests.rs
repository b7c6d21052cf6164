//! A manifest file's text: parsed, validated, resolved and planned (`validate`, `run --manifests`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proxy_user::fuzz_input::manifests(data));
