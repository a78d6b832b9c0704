//! A hostile guest over the balloon device's whole life: the header picks the configuration,
//! the ring features offered and taken (EVENT_IDX, INDIRECT_DESC), PAGE_POISON, the queue size
//! (1 to 256) and where ring indices start (they wrap), the discard policy (all five), and a
//! script of resets and renegotiations, config-space and status writes and stats and hint
//! requests; the rest is the guest's RAM. Every invariant the harness checks must hold:
//! nothing outside guest RAM touched, every changed guest page logged as written, no write
//! while reset, the balloon's size matching the counters.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vballoon::rig::hostile_lifecycle::LifecycleHarness;

static HARNESS: OnceLock<LifecycleHarness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let h = HARNESS
        .get_or_init(|| LifecycleHarness::new().expect("canary pages placed around guest RAM"));
    if let Err(e) = h.run(data) {
        panic!("{e}");
    }
});
