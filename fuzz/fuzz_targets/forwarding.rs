#![no_main]
//! See `baton::fuzz::forwarding`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton::fuzz::forwarding(data));
