//! libFuzzer target `handshake`: see `crates/peer/tests/fuzz_targets/mod.rs` for its properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    replikativ_fuzz::targets::handshake(data);
});
