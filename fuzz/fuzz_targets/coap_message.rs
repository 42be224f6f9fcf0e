#![no_main]
//! libFuzzer entry for flownexus::fuzz::coap_message (its invariants are there).
libfuzzer_sys::fuzz_target!(|data: &[u8]| flownexus::fuzz::coap_message(data));
