#![no_main]
//! libFuzzer entry for flownexus::fuzz::ddf (its invariants are there).
libfuzzer_sys::fuzz_target!(|data: &[u8]| flownexus::fuzz::ddf(data));
