#![no_main]
//! libFuzzer entry for flownexus::fuzz::http_range (its invariants are there).
libfuzzer_sys::fuzz_target!(|data: &[u8]| flownexus::fuzz::http_range(data));
