#![no_main]
//! See `baton::fuzz::response`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzz::response(data));
