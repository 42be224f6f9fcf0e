#![no_main]
//! libFuzzer entry for flownexus::fuzz::coap_exchange (its invariants are there).
libfuzzer_sys::fuzz_target!(|data: &[u8]| flownexus::fuzz::coap_exchange(data));
