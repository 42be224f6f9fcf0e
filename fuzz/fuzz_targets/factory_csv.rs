#![no_main]
//! libFuzzer entry for flownexus::fuzz::factory_csv (its invariants are there).
libfuzzer_sys::fuzz_target!(|data: &[u8]| flownexus::fuzz::factory_csv(data));
