#![no_main]
//! libFuzzer entry for flownexus::fuzz::dtls_session (its invariants are there).
libfuzzer_sys::fuzz_target!(|data: &[u8]| flownexus::fuzz::dtls_session(data));
