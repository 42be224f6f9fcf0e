#![no_main]
//! libFuzzer entry for flownexus::fuzz::proxy_protocol (its invariants are there).
libfuzzer_sys::fuzz_target!(|data: &[u8]| flownexus::fuzz::proxy_protocol(data));
