#![no_main]
//! libFuzzer entry for flownexus::fuzz::config_toml (its invariants are there).
libfuzzer_sys::fuzz_target!(|data: &[u8]| flownexus::fuzz::config_toml(data));
