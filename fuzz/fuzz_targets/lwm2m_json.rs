#![no_main]
//! libFuzzer entry for flownexus::fuzz::lwm2m_json (its invariants are there).
libfuzzer_sys::fuzz_target!(|data: &[u8]| flownexus::fuzz::lwm2m_json(data));
