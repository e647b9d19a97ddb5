#![no_main]
//! See `baton::fuzz::config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzz::config(data));
