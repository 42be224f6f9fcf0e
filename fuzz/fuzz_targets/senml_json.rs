#![no_main]
//! libFuzzer entry for flownexus::fuzz::senml_json (its invariants are there).
libfuzzer_sys::fuzz_target!(|data: &[u8]| flownexus::fuzz::senml_json(data));
