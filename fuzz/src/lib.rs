//! The fuzz targets, shared with the proptest runner `crates/peer/tests/fuzz_decoders.rs`: the
//! one definition lives in `crates/peer/tests/fuzz_targets/mod.rs` and is included here by path.

#[path = "../../crates/peer/tests/fuzz_targets/mod.rs"]
pub mod targets;
