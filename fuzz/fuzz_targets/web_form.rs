#![no_main]
//! libFuzzer entry for flownexus::fuzz::web_form (its invariants are there).
libfuzzer_sys::fuzz_target!(|data: &[u8]| flownexus::fuzz::web_form(data));
