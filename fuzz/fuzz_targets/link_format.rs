#![no_main]
//! libFuzzer entry for flownexus::fuzz::link_format (its invariants are there).
libfuzzer_sys::fuzz_target!(|data: &[u8]| flownexus::fuzz::link_format(data));
