#![no_main]
//! libFuzzer entry for flownexus::fuzz::senml_cbor (its invariants are there).
libfuzzer_sys::fuzz_target!(|data: &[u8]| flownexus::fuzz::senml_cbor(data));
