#![no_main]
//! See `baton::fuzz::request_head`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzz::request_head(data));
