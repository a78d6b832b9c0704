//! Arbitrary bytes as a hostile migration source whose frames all pass the integrity checks:
//! the harness (`vballoon::migration::hostile`) turns them into frames with correct CRCs and,
//! for keyed inputs, correct HMACs after a real handshake, and feeds a destination with a
//! 2 MiB guest whose RAM has canary pages mapped right below and above it. The destination must
//! never panic, never touch the canaries, and never leave a page holding data that no data
//! record carried. The canaries (32 KiB compared byte by byte under coverage instrumentation)
//! cost more than a run, so they are checked every 64th run: a stray write is still caught,
//! at most 63 inputs late (and the canaries stay written, so the next check fails too).

#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vballoon::rig::hostile::GuardedMemory;
use vballoon::migration::hostile;

static MEM: OnceLock<GuardedMemory> = OnceLock::new();
static RUNS: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let g = MEM.get_or_init(|| GuardedMemory::new(2 << 20).expect("canary pages around guest RAM"));
    let o = hostile::run(data, g.memory());
    assert!(o.stray_pages.is_empty(), "pages written without a data record: {:?}", o.stray_pages);
    if RUNS.fetch_add(1, Ordering::Relaxed) % 64 == 0 {
        assert!(g.canaries_intact(), "destination touched memory outside guest RAM");
    }
});
