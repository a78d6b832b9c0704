//! Arbitrary bytes as the whole of a small guest's RAM: rings, descriptors and buffers of every
//! queue the balloon device serves, under every encoding and policy (byte 0 picks them).
//! The device must never panic, and never touch the canary pages mapped right below and above
//! guest RAM.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vballoon::rig::hostile::Harness;

static HARNESS: OnceLock<Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let h = HARNESS.get_or_init(|| Harness::new().expect("canary pages placed around guest RAM"));
    h.run(data);
    assert!(h.guarded().canaries_intact(), "device touched memory outside guest RAM");
});
