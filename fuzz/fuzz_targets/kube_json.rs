//! Kubernetes API JSON as cluster mode's watches read it: decoded, converted, resolved and planned.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proxy_user::fuzz_input::kube_json(data));
