#![no_main]
//! libFuzzer entry for flownexus::fuzz::download_token (its invariants are there).
libfuzzer_sys::fuzz_target!(|data: &[u8]| flownexus::fuzz::download_token(data));
